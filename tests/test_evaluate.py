"""Predictions of a trained model: on test shards and on a folder of new images."""

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf
from PIL import Image

from deepbc import evaluate, shards, train
from deepbc.errors import UserError
from tests import trainkit


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    base = tmp_path_factory.mktemp("evaluate")
    shard_dir = trainkit.make_shards(base / "images", base / "shards")
    train.train(shard_dir, base / "model", base / "state", "resnet_small",
                trainkit.settings(max_number_of_steps=40), seed=3)
    return base


@pytest.mark.slow
def test_predicts_every_test_image(model):
    out = model / "pred.parquet"
    df = evaluate.predict_shards(model / "model", model / "shards" / "test.json", out)
    assert len(df) == 32 and df["path"].is_unique
    assert list(df.columns) == ["path", "patient", "magnification", "label", "label_index",
                                "prob_benign", "prob_malignant", "pred", "pred_index"]
    assert np.allclose(df[["prob_benign", "prob_malignant"]].sum(axis=1), 1.0, atol=1e-5)
    assert (df["pred_index"] == df["label_index"]).mean() > 0.75
    pd.testing.assert_frame_equal(pd.read_parquet(out), df)


@pytest.mark.slow
def test_predicts_a_folder_with_patients(model, tmp_path):
    rng = np.random.default_rng(9)
    folder = tmp_path / "new slides"
    rows = []
    for i in range(6):
        (folder / "sub").mkdir(parents=True, exist_ok=True)
        rel = f"sub/img{i}.png"
        Image.fromarray(trainkit.draw(rng, i % 2)).save(folder / rel)
        rows.append({"path": rel, "patient": f"P{i % 2}"})
    (folder / "notes.txt").write_text("not an image")
    pd.DataFrame(rows).to_csv(tmp_path / "patients.csv", index=False)
    df = evaluate.predict_folder(model / "model", folder, tmp_path / "pred.csv", tmp_path / "patients.csv",
                                 tmp_path / "per_patient.csv")
    assert sorted(df["path"]) == [r["path"] for r in rows]
    per_patient = pd.read_csv(tmp_path / "per_patient.csv")
    assert list(per_patient["patient"]) == ["P0", "P1"] and list(per_patient["n_images"]) == [3, 3]
    assert list(per_patient["pred"]) == ["benign", "malignant"]


@pytest.mark.slow
def test_a_folder_of_the_test_images_gets_their_test_predictions(model, tmp_path):
    by_shards = evaluate.predict_shards(model / "model", model / "shards" / "test.json", tmp_path / "p.parquet")
    index = shards.read_index(model / "shards" / "test.json")
    for record in tf.data.TFRecordDataset(index["paths"]):  # the very bytes the shards hold
        features = shards.parse_example(record)
        path = tmp_path / "folder" / features["image/filename"].numpy().decode()
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(features["image/encoded"].numpy())
    by_folder = evaluate.predict_folder(model / "model", tmp_path / "folder", tmp_path / "f.csv")
    both = by_shards.merge(by_folder, on="path", suffixes=("", "_folder"))
    assert len(both) == len(by_shards) == 32
    np.testing.assert_allclose(both["prob_malignant"], both["prob_malignant_folder"], atol=1e-5)


def test_missing_model_is_a_clear_error(tmp_path):
    with pytest.raises(UserError, match="settings.json"):
        evaluate.predict_folder(tmp_path, tmp_path, tmp_path / "out.csv")
