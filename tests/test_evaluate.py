"""Predictions of a trained model: on test shards and on a folder of new images."""

import logging
import os

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from deepbc.data import splits
from deepbc.evaluation import gradcam, inference, pooled, predict
from deepbc.jobs.errors import UserError
from deepbc.shards import reader as shard_reader
from deepbc.shards import records
from deepbc.shards import writer as shard_writer
from deepbc.training import train
from tests import trainkit
from tests.resultkit import split_audit


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    base = tmp_path_factory.mktemp("evaluate")
    shard_dir = trainkit.make_shards(base / "images", base / "shards")
    train.train(*trainkit.indexes(shard_dir), base / "model", base / "state", "resnet_small",
                trainkit.settings(max_number_of_steps=40), seed=3)
    return base


@pytest.mark.slow
def test_predicts_every_test_image(model):
    out = model / "pred.parquet"
    df = inference.predict_shards(model / "model", model / "shards" / "test.json", out)
    assert len(df) == 32 and df["path"].is_unique
    assert list(df.columns) == ["path", "patient", "magnification", "label", "label_index",
                                "prob_benign", "prob_malignant", "pred", "pred_index", "precision"]
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
    df = predict.predict_folder(model / "model", folder, tmp_path / "pred.csv", tmp_path / "patients.csv",
                                 tmp_path / "per_patient.csv")
    assert sorted(df["path"]) == [r["path"] for r in rows]
    per_patient = pd.read_csv(tmp_path / "per_patient.csv")
    assert list(per_patient["patient"]) == ["P0", "P1"] and list(per_patient["n_images"]) == [3, 3]
    assert list(per_patient["pred"]) == ["benign", "malignant"]


@pytest.mark.slow
def test_a_folder_of_the_test_images_gets_their_test_predictions(model, tmp_path):
    by_shards = inference.predict_shards(model / "model", model / "shards" / "test.json", tmp_path / "p.parquet")
    for record, _ in shard_reader.member_records(model / "shards" / "test.json"):  # the very bytes the shards hold
        features = records.parse_example(record)
        path = tmp_path / "folder" / features["image/filename"].numpy().decode()
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(features["image/encoded"].numpy())
    by_folder = predict.predict_folder(model / "model", tmp_path / "folder", tmp_path / "f.csv")
    both = by_shards.merge(by_folder, on="path", suffixes=("", "_folder"))
    assert len(both) == len(by_shards) == 32
    np.testing.assert_allclose(both["prob_malignant"], both["prob_malignant_folder"], atol=1e-5)


@pytest.mark.parametrize("content, said", [(b"path,patient\nimg\xe9.png,P1\n", "is not UTF-8 text"),
                                           (b"file,who\na.png,P1\n", "needs columns 'path' and 'patient'")])
def test_a_bad_patients_csv_is_refused_before_any_prediction(tmp_path, content, said):
    """A patients CSV that is not UTF-8 crashed predict_folder after every prediction had run."""
    (tmp_path / "patients.csv").write_bytes(content)
    with pytest.raises(UserError, match=said):  # the model folder is empty: the CSV is read first
        predict.predict_folder(tmp_path / "no model", tmp_path, tmp_path / "out.csv", tmp_path / "patients.csv",
                               tmp_path / "per_patient.csv")
    assert not (tmp_path / "out.csv").exists()


def test_missing_model_is_a_clear_error(tmp_path):
    with pytest.raises(UserError, match="settings.json"):
        predict.predict_folder(tmp_path, tmp_path, tmp_path / "out.csv")


@pytest.mark.slow
def test_a_folder_with_bad_small_16_bit_and_tiff_files_gets_a_row_for_each(model, tmp_path, monkeypatch):
    """No bad file stops the run: each gets its reason; 16-bit and 8-bit twins get the same probabilities."""
    import builtins
    import io

    rng = np.random.default_rng(4)
    folder = tmp_path / "mixed"
    folder.mkdir()
    pixels = trainkit.draw(rng, 1)
    Image.fromarray(pixels).save(folder / "a_8bit.png")
    Image.fromarray(pixels[..., 0].astype(np.uint16) * 257).save(folder / "a_16bit_grey.png")
    Image.fromarray(np.repeat(pixels[..., :1], 3, axis=2)).save(folder / "a_grey_8bit.png")
    Image.fromarray(trainkit.draw(rng, 0)).save(folder / "b.tif")
    Image.fromarray(trainkit.draw(rng, 0)).save(folder / "c.jpg", quality=95)
    Image.fromarray(trainkit.draw(rng, 1, size=12)).save(folder / "d_tiny.png")
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "text.png").write_text("not an image")
    whole = io.BytesIO()
    Image.fromarray(trainkit.draw(rng, 1)).save(whole, "PNG")
    (folder / "truncated.png").write_bytes(whole.getvalue()[:300])
    Image.fromarray(pixels).save(folder / "secret.png")
    real_open = builtins.open

    def guarded_open(file, *args, **kwargs):  # root ignores chmod 000: simulate the refusal
        if str(file).endswith("secret.png"):
            raise PermissionError(13, "Permission denied", str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", guarded_open)
    Image.fromarray(pixels).save(folder / "e_tf_fails.jpg", quality=95)
    read = predict._read_for_prediction

    def tensorflow_cannot_decode(path, *args):  # a JPEG Pillow accepts but TensorFlow does not
        result = read(path, *args)
        return (b"\xff\xd8\xff garbage", *result[1:]) if path.name == "e_tf_fails.jpg" else result

    monkeypatch.setattr(predict, "_read_for_prediction", tensorflow_cannot_decode)
    df = predict.predict_folder(model / "model", folder, tmp_path / "pred.csv").set_index("path")
    assert list(df.index) == sorted(p.name for p in folder.iterdir())
    assert df["reason"].to_dict() == {"a_16bit_grey.png": "", "a_8bit.png": "", "a_grey_8bit.png": "", "b.tif": "",
                                      "c.jpg": "", "d_tiny.png": "", "e_tf_fails.jpg": "undecodable",
                                      "empty.jpg": "zero_bytes",
                                      "secret.png": "unreadable", "text.png": "not_an_image",
                                      "truncated.png": "truncated"}
    assert "Permission denied" in df.loc["secret.png", "detail"]
    bad = df["reason"] != ""
    assert df.loc[bad, ["prob_benign", "prob_malignant"]].isna().all().all()
    assert df.loc[~bad, ["prob_benign", "prob_malignant"]].notna().all().all()
    assert (df.loc[bad, "pred"] == "").all() and (df.loc[~bad, "pred"] != "").all()
    # 16-bit grey is scaled, not clipped: the same network input as its 8-bit twin.
    np.testing.assert_allclose(df.loc["a_16bit_grey.png", "prob_malignant"],
                               df.loc["a_grey_8bit.png", "prob_malignant"], atol=1e-6)
    # image_size 32: a 12 px image is far smaller than the network's input, a 40 px one is not.
    assert "shorter side 12 px" in df.loc["d_tiny.png", "warning"]
    assert (df.drop(index="d_tiny.png")["warning"] == "").all()
    assert (df.loc["b.tif", "width"], df.loc["b.tif", "height"]) == (40, 40)
    written = pd.read_csv(tmp_path / "pred.csv", keep_default_na=False)
    assert len(written) == len(df) and set(written["reason"]) == set(df["reason"])


@pytest.mark.slow
def test_a_name_that_is_not_utf8_gets_its_row_and_prediction(model, tmp_path, caplog):
    """Its path is shown as the logs and the dataset check's rejects show it; a patients CSV names it so."""
    rng = np.random.default_rng(6)
    folder = tmp_path / "names"
    folder.mkdir()
    pixels = trainkit.draw(rng, 1)
    Image.fromarray(pixels).save(folder / "ok.png")
    Image.fromarray(pixels).save(folder / os.fsdecode(b"zero_\xe9.png"))  # the same image under a Latin-1 name
    (folder / os.fsdecode(b"text_\xff.png")).write_text("not an image")
    pd.DataFrame({"path": ["zero_\\xe9.png", "ok.png"], "patient": "P1"}).to_csv(tmp_path / "p.csv", index=False)
    caplog.set_level(logging.INFO)
    df = predict.predict_folder(model / "model", folder, tmp_path / "pred.csv", tmp_path / "p.csv",
                                 tmp_path / "per_patient.csv").set_index("path")
    rows = ["ok.png", "text_\\xff.png", "zero_\\xe9.png"]
    assert list(df.index) == rows
    written = pd.read_csv(tmp_path / "pred.csv", keep_default_na=False).set_index("path")
    assert list(written.index) == rows and list(written["warning"]) == list(df["warning"])
    assert df["reason"].to_list() == ["", "not_an_image", ""]
    np.testing.assert_allclose(df.loc["zero_\\xe9.png", "prob_malignant"], df.loc["ok.png", "prob_malignant"],
                               atol=1e-6)
    assert df.loc["zero_\\xe9.png", "patient"] == "P1"
    assert pd.read_csv(tmp_path / "per_patient.csv").set_index("patient").loc["P1", "n_images"] == 2
    name = "the file name is not valid UTF-8: path shows its undecodable bytes as \\xNN"
    assert df["warning"].to_list() == ["", name, name]
    assert "2 file name(s) are not valid UTF-8: the CSV shows their undecodable bytes as \\xNN, and so must a " \
           "patients CSV: text_\\xff.png, zero_\\xe9.png" in caplog.text
    assert "not predicted: text_\\xff.png: not_an_image" in caplog.text


@pytest.mark.slow
def test_blank_images_are_predicted_with_a_warning(model, tmp_path, caplog):
    """Fully transparent (composited on white) or one flat colour, even as a JPEG: warned about, and the
    warning joins the small-image one; noise of a couple of levels, as on empty glass, is no blank."""
    rng = np.random.default_rng(7)
    folder = tmp_path / "blank"
    folder.mkdir()
    Image.fromarray(trainkit.draw(rng, 1)).save(folder / "ok.png")
    Image.fromarray(np.dstack([trainkit.draw(rng, 1), np.zeros((40, 40), np.uint8)])).save(folder / "clear.png")
    Image.fromarray(np.full((40, 40, 3), (230, 180, 200), np.uint8)).save(folder / "pink.jpg", quality=90)
    Image.fromarray(np.full((12, 12, 3), 255, np.uint8)).save(folder / "tiny_white.png")
    glass = np.clip(np.round(rng.normal(240, 2, (40, 40, 3))), 0, 255).astype(np.uint8)
    Image.fromarray(glass).save(folder / "glass.png")
    caplog.set_level(logging.INFO)
    df = predict.predict_folder(model / "model", folder, tmp_path / "pred.csv").set_index("path")
    assert (df["reason"] == "").all() and df["prob_malignant"].notna().all()
    blank = ("blank: no channel's standard deviation reaches 1 level (largest 0.00), e.g. a fully transparent "
             "image, composited on white; the prediction says nothing")
    assert df["warning"].to_dict() == {
        "clear.png": blank, "glass.png": "", "ok.png": "", "pink.jpg": blank,
        "tiny_white.png": "shorter side 12 px is below half the network input (32 px): enlarged 2.7x; " + blank}
    assert pd.read_csv(tmp_path / "pred.csv", keep_default_na=False)["warning"].to_list() == df["warning"].to_list()
    assert "3 image(s) are blank (no channel's standard deviation reaches 1 level), so their predictions say " \
           "nothing: clear.png, pink.jpg, tiny_white.png" in caplog.text
    assert "1 image(s) have a shorter side below 16 px" in caplog.text


@pytest.mark.slow
def test_evaluate_script_predicts_validation_and_draws_gradcam_in_the_same_job(model, tmp_path):
    audit = split_audit(tmp_path / "spanhol.audit.json", scheme="repeated_holdout")
    trainkit.script("evaluate_model").main(["--model-dir", str(model / "model"), "--shard-index", str(model / "shards" / "test.json"),
                 "--out", str(tmp_path / "test.parquet"), "--val-shard-index",
                 str(model / "shards" / "val.json"), "--val-out", str(tmp_path / "val.parquet"),
                 "--gradcam-png", str(tmp_path / "fold0.png"), "--classes", *trainkit.CLASSES, "--seed", "1",
                 "--title", "t / resnet_small / fold 0", "--split-audit", str(audit), "--threads", "1"])
    val = pd.read_parquet(tmp_path / "val.parquet")
    assert len(val) == 32 and val["path"].str.contains("/val_").all()
    pd.testing.assert_frame_equal(val, inference.predict_shards(model / "model", model / "shards" / "val.json",
                                                               tmp_path / "again.parquet"))
    assert pd.read_parquet(tmp_path / "test.parquet")["path"].str.contains("/test_").all()
    # The figure of the sample that the test predictions and the seed choose.
    _, sample = gradcam.plot_gradcam(model / "model", model / "shards" / "test.json", tmp_path / "test.parquet",
                                     trainkit.CLASSES, 1, "t / resnet_small / fold 0", tmp_path / "again.png",
                                     split_audits=[audit])
    assert (tmp_path / "fold0.png").read_bytes() == (tmp_path / "again.png").read_bytes() and len(sample) > 0


def test_gradcam_maps_and_figure(model, tmp_path):
    index = model / "shards" / "test.json"
    df = inference.predict_shards(model / "model", index, tmp_path / "pred.parquet")
    sample = gradcam.select_samples(df, trainkit.CLASSES, seed=1)
    maps = gradcam.gradcam_maps(model / "model", index, list(zip(sample["path"], sample["copy"])))
    assert set(maps) == set(zip(sample["path"], sample["copy"]))
    for shown in maps.values():
        assert shown["image"].shape == (32, 32, 3) and shown["map"].shape == (32, 32)
        assert shown["map"].min() >= 0 and shown["map"].max() == pytest.approx(1.0)
        assert shown["map"].std() > 0.01  # a map, not a constant
    assert 0 <= min(s["image"].min() for s in maps.values()) and max(s["image"].max() for s in maps.values()) <= 1
    out = tmp_path / "fold0.png"
    # A run of a predefined split says so in every figure, Grad-CAM's too.
    audit = split_audit(tmp_path / "eva.audit.json", 4, predefined="eva.csv", allow_straddling=True)
    fig, figure_sample = gradcam.plot_gradcam(model / "model", index, tmp_path / "pred.parquet", trainkit.CLASSES,
                                              seed=1, title="t / resnet_small / fold 0", out_png=out,
                                              split_audits=[audit])
    pd.testing.assert_frame_equal(figure_sample, sample)
    assert Image.open(out).size[0] > 400
    assert fig._suptitle.get_text().endswith("\nsplit: predefined split, 4 patients on two sides")


@pytest.mark.slow
def test_image_copies_are_predicted_a_row_each(model, tmp_path):
    """Augment-then-split (issue 23.5): a prediction per tested copy, keyed by path and copy id;
    copy 0 is the image as stored (its probabilities are the ordinary prediction's), the others
    are turned images; the pooled figures count copies; Grad-CAM keeps copies of one image apart."""
    index = shard_reader.read_index(model / "shards" / "test.json")
    test = pd.DataFrame([{"path": path, "patient": f"p{i // 4}", "label": trainkit.CLASSES[label],
                          "label_index": label} for i, (_, _, path, label) in enumerate(index["members"])])
    table = splits.copies(test).assign(fold=0, split="test", protocol="augmented_image")
    table = pd.concat([table, table.iloc[[0, 8]].assign(split=["train", "val"])])
    store = model / "shards" / "encoded" / "dataset" / "store.json"
    shard_writer.write_split_indexes(table, 0, store, tmp_path / "copies")
    df = inference.predict_shards(model / "model", tmp_path / "copies" / "test.json", tmp_path / "copies.parquet")
    assert len(df) == 8 * 32 and list(df.columns[:2]) == ["path", "copy"]
    assert not df.duplicated(["path", "copy"]).any() and df["copy"].dtype == "int64"
    plain = inference.predict_shards(model / "model", model / "shards" / "test.json", tmp_path / "plain.parquet")
    as_stored = df[df["copy"] == 0].merge(plain, on="path", suffixes=("", "_plain"))
    assert len(as_stored) == 32
    np.testing.assert_allclose(as_stored["prob_malignant"], as_stored["prob_malignant_plain"], atol=1e-5)
    turned = df[df["copy"] == 5].set_index("path")["prob_malignant"]
    assert not np.allclose(turned[plain["path"]].to_numpy(), plain["prob_malignant"].to_numpy(), atol=1e-4)
    result = pooled.pooled_metrics([(0, df, "copies")], trainkit.CLASSES, n_boot=0, seed=0)
    assert (result["n_images"], result["n_distinct_images"], result["n_patients"]) == (256, 256, 8)
    _, sample = gradcam.plot_gradcam(model / "model", tmp_path / "copies" / "test.json", tmp_path / "copies.parquet",
                                     trainkit.CLASSES, 1, "copies", tmp_path / "copies.png")
    assert len(sample) > 0 and set(sample["copy"]) <= set(range(8))
