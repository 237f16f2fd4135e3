"""The SavedModel export: served without this package, with evaluation's probabilities."""

import os

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf
from PIL import Image

from deepbc.evaluation import inference, predict
from deepbc.jobs.errors import UserError
from deepbc.shards import reader as shard_reader
from deepbc.training import export, train
from tests import trainkit


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    base = tmp_path_factory.mktemp("export")
    shard_dir = trainkit.make_shards(base / "images", base / "shards", per_split=(32, 16, 16))
    train.train(*trainkit.indexes(shard_dir), base / "model", base / "state", "resnet_small",
                trainkit.settings(max_number_of_steps=20, eval_every_steps=10, save_every_steps=10), seed=3)
    # Through the workflow's script, as the export_model rule runs it.
    trainkit.script("export_model").main(["--model-dir", str(base / "model"), "--out", str(base / "export"), "--threads", "1"])
    assert export.load_info(base / "export")["class_names"] == trainkit.CLASSES
    return base


def _test_records(base):
    names, encoded = [], []
    for record, _ in shard_reader.member_records(base / "shards" / "test.json"):
        example = tf.train.Example.FromString(record.numpy())
        names.append(example.features.feature["image/filename"].bytes_list.value[0].decode())
        encoded.append(example.features.feature["image/encoded"].bytes_list.value[0])
    return names, encoded


@pytest.mark.slow
def test_saved_model_serves_evaluations_probabilities_without_the_package(exported, tmp_path):
    expected = inference.predict_shards(exported / "model", exported / "shards" / "test.json", tmp_path / "p.parquet")
    names, encoded = _test_records(exported)
    probs, class_names = trainkit.serve_without_the_package(exported / "export", encoded, tmp_path)
    assert class_names == trainkit.CLASSES
    probs = pd.DataFrame(probs, columns=[f"prob_{c}" for c in class_names])
    probs["path"] = names
    merged = expected.merge(probs, on="path", suffixes=("", "_served"))
    assert len(merged) == len(expected) == 16
    for c in class_names:
        np.testing.assert_allclose(merged[f"prob_{c}_served"], merged[f"prob_{c}"], atol=1e-5)


@pytest.mark.slow
def test_predict_folder_with_the_export_matches_the_checkpoint(exported, tmp_path):
    folder = tmp_path / "new"
    folder.mkdir()
    rng = np.random.default_rng(1)
    for i in range(3):
        pixels = trainkit.draw(rng, i % 2, size=120)
        Image.fromarray(pixels).save(folder / f"{i}.png")
        Image.fromarray(pixels).save(folder / f"{i}.jpg", quality=90)  # decoded at a reduced scale
        Image.fromarray(pixels).save(folder / f"{i}.tif")  # re-encoded as PNG for the export
    Image.fromarray(pixels).save(folder / os.fsdecode(b"2_\xe9.png"))  # a name that is not UTF-8
    by_checkpoint = predict.predict_folder(exported / "model", folder, tmp_path / "a.csv")
    by_export = predict.predict_folder(exported / "export", folder, tmp_path / "b.csv")
    assert list(by_export["path"]) == list(by_checkpoint["path"]) and (by_export["reason"] == "").all()
    assert "2_\\xe9.png" in set(by_export["path"])
    prob_cols = [f"prob_{c}" for c in trainkit.CLASSES]
    np.testing.assert_allclose(by_export[prob_cols].to_numpy(float), by_checkpoint[prob_cols].to_numpy(float),
                               atol=1e-5)
    assert list(by_export["pred"]) == list(by_checkpoint["pred"])


def test_a_foreign_saved_model_is_refused_with_the_fix(tmp_path):
    (tmp_path / "saved_model.pb").write_bytes(b"")
    with pytest.raises(UserError, match="not an export of this workflow"):
        predict.predict_folder(tmp_path, tmp_path, tmp_path / "out.csv")
