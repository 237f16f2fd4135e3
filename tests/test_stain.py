"""Stain normalization (deepbc.shards.stain): against torchstain and Macenko's published constants, the
fallbacks on tiles where a fit fails, the leakage refusal, and its use by the shard writer."""

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from deepbc.data import synthetic_he
from deepbc.jobs.errors import UserError
from deepbc.shards import records, stain
from tests import trainkit
from tests.conftest import validated_config

REPO = Path(__file__).resolve().parents[1]
H_VECTOR, E_VECTOR = np.array([0.5626, 0.7201, 0.4062]), np.array([0.2159, 0.8012, 0.5581])


def _tile(identity, patient, style="F", size=(96, 64)):
    return np.asarray(synthetic_he.paint(style, synthetic_he.MAG_SCALE[100], size, 1, identity, patient, supersample=1))


def _beer_lambert(h, e, seed=0):
    """uint8 RGB of haematoxylin/eosin optical densities, with sensor noise."""
    od = h[..., None] * H_VECTOR + e[..., None] * E_VECTOR
    noise = np.random.default_rng(seed).normal(0, 1, od.shape)
    return np.clip(240 * np.exp(-od) - 1 + noise, 0, 255).round().astype(np.uint8)


def _full_tissue(seed, size=(128, 128), eosin=1.0):
    """H&E everywhere (every pixel a tissue pixel): where deepbc.shards.stain equals torchstain."""
    rng = np.random.default_rng(seed)
    h = 0.35 + 1.2 * (rng.random(size) < 0.3) * rng.uniform(0.5, 1, size)  # nuclei on a haematoxylin wash
    tile = _beer_lambert(h, eosin * rng.uniform(0.3, 1.0, size), seed)
    assert stain._tissue(tile.reshape(-1, 3))[1].all()
    return tile


def _on_white(tile, fraction):
    """``tile``'s first ``fraction`` of pixels (raster order) on white background, and their count."""
    k = int(fraction * tile.shape[0] * tile.shape[1])
    out = np.full_like(tile, 245)
    out.reshape(-1, 3)[:k] = tile.reshape(-1, 3)[:k]
    return out, k


def test_methods_are_the_schema_enum():
    schema = yaml.safe_load((REPO / "config" / "schema.yaml").read_text())
    prop = schema["properties"]["shards"]["properties"]["stain_normalization"]
    assert prop["enum"] == ["none", *stain.METHODS] and prop["default"] == "none"


def test_published_macenko_reference():
    """Macenko's normalizeStaining.m: HERef = [0.5626 0.2159; 0.7201 0.8012; 0.4062 0.5581],
    maxCRef = [1.9705 1.0308]."""
    params = stain.published_macenko()
    assert params["HERef"] == [[0.5626, 0.2159], [0.7201, 0.8012], [0.4062, 0.5581]]
    assert params["maxCRef"] == [1.9705, 1.0308]
    assert (params["Io"], params["alpha"], params["beta"]) == (240, 1, 0.15)


def test_macenko_equals_torchstain():
    """On tiles that are tissue everywhere (elsewhere the statistics are over tissue pixels on purpose)."""
    from torchstain.numpy.normalizers import NumpyMacenkoNormalizer

    reference, image = _full_tissue(1), _full_tissue(2, (96, 64), eosin=1.8)
    params = stain.fit(reference, "macenko")
    expected = NumpyMacenkoNormalizer()
    expected.fit(reference)
    np.testing.assert_array_equal(params["HERef"], expected.HERef)
    np.testing.assert_array_equal(params["maxCRef"], expected.maxCRef)
    out, fallback = stain.apply(image, params)
    assert fallback is None
    np.testing.assert_array_equal(out, expected.normalize(image, stains=False)[0])
    # The published reference, too.
    np.testing.assert_array_equal(stain.normalize(image, stain.published_macenko()),
                                  NumpyMacenkoNormalizer().normalize(image, stains=False)[0])
    assert np.abs(out.astype(int) - image).mean() > 5  # it does change the colours


def test_reinhard_equals_torchstain():
    from torchstain.numpy.normalizers import NumpyReinhardNormalizer

    reference, image = _full_tissue(1), _full_tissue(2, (96, 64), eosin=1.8)
    params = stain.fit(reference, "reinhard")
    expected = NumpyReinhardNormalizer()
    expected.fit(reference)
    out, fallback = stain.apply(image, params)
    assert fallback is None
    np.testing.assert_array_equal(out, expected.normalize(image))


@pytest.mark.parametrize("method", stain.METHODS)
def test_deterministic_through_json(method):
    params = stain.fit(_tile("a", "p1"), method)
    again = json.loads(json.dumps(params))
    image = _tile("c", "p3", "PT")
    np.testing.assert_array_equal(stain.normalize(image, params), stain.normalize(image, again))
    assert again == stain.fit(_tile("a", "p1"), method)


def test_white_tile_is_unchanged():
    from torchstain.numpy.normalizers import NumpyMacenkoNormalizer

    white = np.full((32, 48, 3), 245, np.uint8)
    with pytest.raises(Exception), np.errstate(all="ignore"):  # torchstain's own failure
        NumpyMacenkoNormalizer().normalize(white, stains=False)
    out, fallback = stain.apply(white, stain.published_macenko())
    assert fallback == "no_tissue"
    np.testing.assert_array_equal(out, white)


def test_single_stain_tile_uses_the_reference_matrix():
    rng = np.random.default_rng(1)
    tile = _beer_lambert(rng.uniform(0.3, 1.5, (64, 64)), np.zeros((64, 64)))
    params = stain.published_macenko()
    out, fallback = stain.apply(tile, params)
    assert fallback == "one_stain"
    # Haematoxylin only in, haematoxylin only out: every pixel as the reference H vector renders the
    # tile's H concentration scaled onto the reference's. Per-stain scaling blew the noise of the
    # absent eosin up ~22x into pink (up to 174 grey levels off).
    h_ref = np.asarray(params["HERef"])[:, 0]
    c = np.linalg.lstsq(h_ref[:, None], -np.log((tile.reshape(-1, 3) + 1.0) / 240).T, rcond=None)[0][0]
    h_only = np.clip(240 * np.exp(-np.outer(c * params["maxCRef"][0] / np.percentile(c, 99), h_ref)), 0, 255)
    assert np.abs(out.reshape(-1, 3) - h_only).max() < 5  # 3.4: the 2-stain unmixing and rounding


def test_tiny_tissue_fraction_keeps_the_background():
    h, e = np.zeros((64, 64)), np.zeros((64, 64))
    h[:3, :3], e[3:6, :3] = 1.0, 1.0  # 18 of 4096 pixels
    tile = _beer_lambert(h, e)
    out, fallback = stain.apply(tile, stain.published_macenko())
    assert fallback == "few_tissue"
    background = np.ones((64, 64), bool)
    background[:6, :3] = False
    # Background stays background, tissue stays stained.
    assert np.abs(out[background].astype(int) - tile[background]).mean() < 2
    assert 60 < out[:6, :3].mean() < 200
    # torchstain scales by the 99th percentile of all pixels, the background's: the tissue turns black.
    from torchstain.numpy.normalizers import NumpyMacenkoNormalizer

    with np.errstate(all="ignore"):
        theirs = NumpyMacenkoNormalizer().normalize(tile, stains=False)[0]
    assert np.abs(theirs[background].astype(int) - tile[background]).mean() > 10 and theirs[:6, :3].max() < 20


@pytest.mark.parametrize("method", stain.METHODS)
def test_tissue_colours_do_not_depend_on_the_background(method):
    """Tissue on white (a TMA core) normalises as the same tissue without background: the
    statistics are over tissue pixels. torchstain's, over all pixels, moved the mean tissue pixel
    by up to 84 (Macenko, 2.1 % tissue) and 140 grey levels (Reinhard)."""
    tissue = _full_tissue(3)
    params = stain.fit(_tile("a", "p1"), method)
    everywhere = stain.normalize(tissue, params).reshape(-1, 3)
    for fraction in (0.019, 0.021, 0.3):
        tile, k = _on_white(tissue, fraction)
        out, fallback = stain.apply(tile, params)
        assert fallback is None
        diff = np.abs(out.reshape(-1, 3)[:k].astype(int) - everywhere[:k])
        # What is left: the statistics of 311 tissue pixels are not quite those of all 16384.
        assert diff.mean() < 3 and diff.max() <= 8, fraction


def test_reinhard_leaves_background_alone():
    rng = np.random.default_rng(2)
    white = np.clip(rng.normal(234.5, 1.5, (40, 60, 3)), 0, 255).round().astype(np.uint8)
    params = stain.fit(_tile("a", "p1"), "reinhard")
    out, fallback = stain.apply(white, params)
    assert fallback == "no_tissue"  # torchstain: mean 118, sd 33
    np.testing.assert_array_equal(out, white)
    few, _ = _on_white(_full_tissue(4, (40, 60)), 0.05)  # 120 tissue pixels
    assert stain.apply(few, params)[1] == "few_tissue"


def test_reinhard_flat_channel_is_shifted_not_divided():
    flat = np.full((16, 16, 3), (200, 120, 180), np.uint8)
    params = stain.fit(_tile("a", "p1"), "reinhard")
    out, fallback = stain.apply(flat, params)
    assert fallback == "flat_channel"
    assert out.reshape(-1, 3).std(axis=0).max() == 0 and out.min() > 0  # torchstain divides by zero: black


def test_fit_refuses_a_reference_without_tissue():
    with pytest.raises(UserError, match="too little tissue"):
        stain.fit(np.full((32, 32, 3), 250, np.uint8), "macenko", {"path": "white.png"})


def _manifest(tmp_path, images):
    rows = [{"path": p, "sha256": hashlib.sha256(Path(f).read_bytes()).hexdigest()} for p, f in images.items()]
    path = tmp_path / "breakhis.parquet"
    pd.DataFrame(rows).to_parquet(path)
    return path


def test_fit_reference_refuses_a_dataset_image(tmp_path):
    Image.fromarray(_tile("a", "p1")).save(tmp_path / "a.png")
    Image.fromarray(_tile("b", "p2")).save(tmp_path / "ref.png")
    manifest = _manifest(tmp_path, {"benign/a.png": tmp_path / "a.png"})
    with pytest.raises(UserError) as err:
        stain.fit_reference("macenko", str(tmp_path / "a.png"), [manifest], tmp_path / "out.json")
    assert "shards.stain_reference" in str(err.value) and "benign/a.png" in str(err.value)
    assert not (tmp_path / "out.json").exists()
    params = stain.fit_reference("reinhard", str(tmp_path / "ref.png"), [manifest], tmp_path / "out.json")
    assert stain.load(tmp_path / "out.json") == params
    assert params["source"]["sha256"] == hashlib.sha256((tmp_path / "ref.png").read_bytes()).hexdigest()


def test_fit_reference_refuses_a_reference_under_a_dataset_root(tmp_path):
    """A dataset image re-saved (other bytes) under the dataset's root is refused by its path."""
    root = tmp_path / "data"
    (root / "benign").mkdir(parents=True)
    Image.fromarray(_tile("a", "p1")).save(root / "benign" / "a.png")
    manifest = _manifest(tmp_path, {"benign/a.png": root / "benign" / "a.png"})
    Image.fromarray(_tile("a", "p1")[:40]).save(root / "benign" / "crop.png", compress_level=1)
    with pytest.raises(UserError, match="lies under the dataset root"):
        stain.fit_reference("macenko", str(root / "benign" / ".." / "benign" / "crop.png"), [manifest],
                            tmp_path / "out.json", roots=[str(root)])
    assert not (tmp_path / "out.json").exists()


def test_fit_reference_names_a_missing_reference(tmp_path):
    with pytest.raises(UserError) as err:
        stain.fit_reference("reinhard", str(tmp_path / "none.png"), [], tmp_path / "out.json")
    assert "cannot read the stain reference image" in str(err.value) and "shards.stain_reference" in str(err.value)


def test_reinhard_needs_a_reference_macenko_has_a_published_one(tmp_path):
    with pytest.raises(UserError, match="shards.stain_reference"):
        stain.fit_reference("reinhard", None, [], tmp_path / "out.json")
    assert stain.fit_reference("macenko", None, [], tmp_path / "out.json") == stain.published_macenko()




def test_fit_stain_script(tmp_path):
    from deepbc.jobs import logs

    Image.fromarray(_tile("a", "p1")).save(tmp_path / "a.png")
    manifest = _manifest(tmp_path, {"benign/a.png": tmp_path / "a.png"})
    log = tmp_path / "fit.log"
    code = logs.run_main(trainkit.script("fit_stain").main, [
        "--shards-json", json.dumps({"stain_normalization": "macenko", "stain_reference": str(tmp_path / "a.png")}),
        "--manifests", str(manifest), "--roots", str(tmp_path / "elsewhere"), "--out", str(tmp_path / "out.json"),
        "--log", str(log)])
    assert code != 0 and "would leak test data" in log.read_text()
    # The rule passes the dataset roots.
    Image.fromarray(_tile("b", "p2")).save(tmp_path / "b.png")
    code = logs.run_main(trainkit.script("fit_stain").main, [
        "--shards-json", json.dumps({"stain_normalization": "macenko", "stain_reference": str(tmp_path / "b.png")}),
        "--manifests", str(manifest), "--roots", str(tmp_path), "--out", str(tmp_path / "out.json"), "--log", str(log)])
    assert code != 0 and "lies under the dataset root" in log.read_text()


def test_params_for_checks_the_method(tmp_path):
    assert stain.params_for("none", None) is None
    with pytest.raises(UserError, match="--stain-json"):
        stain.params_for("macenko", None)
    (tmp_path / "p.json").write_text(json.dumps(stain.published_macenko()))
    with pytest.raises(UserError, match="config asks for reinhard"):
        stain.params_for("reinhard", tmp_path / "p.json")


def _shard_dataset(tmp_path):
    root = tmp_path / "root"
    rows = []
    for i, split in enumerate(["train", "train", "val", "test"]):
        path = f"img{i}.png"
        root.mkdir(exist_ok=True)
        image = np.full((40, 60, 3), 250, np.uint8) if i == 1 else _tile(f"i{i}", f"p{i}", size=(60, 40))
        Image.fromarray(image).save(root / path)
        rows.append({"path": path, "patient": f"p{i}", "magnification": "100X", "label": "benign",
                     "label_index": 0, "fold": 0, "split": split, "protocol": "patient"})
    return root, pd.DataFrame(rows)


def test_write_shards_stores_normalised_pixels(tmp_path):
    from deepbc.shards import reader as shard_reader
    from deepbc.shards import writer as shard_writer

    root, table = _shard_dataset(tmp_path)
    params = stain.fit(_tile("ref", "pr"), "macenko")
    indexes = shard_writer.write_shards(table, 0, root, tmp_path / "out", seed=1, stain=params, shards={"format": "png"})
    assert indexes["train"]["encoding"]["stain"] == params
    assert indexes["train"]["stain_fallbacks"] == {"no_tissue": 1} and indexes["test"]["stain_fallbacks"] == {}
    import tensorflow as tf

    # The test split's one member (img3), read from the dataset's store through its index.
    [(serialized, _)] = list(shard_reader.member_records(tmp_path / "out" / "test.json"))
    record = records.parse_example(serialized)
    assert record["image/filename"].numpy() == b"img3.png"
    stored = tf.io.decode_png(record["image/encoded"]).numpy()
    original = np.asarray(Image.open(root / "img3.png"))
    np.testing.assert_array_equal(stored, stain.normalize(original, params))
    assert not np.array_equal(stored, original)
    # Same bytes from worker processes.
    again = shard_writer.write_shards(table, 0, root, tmp_path / "again", seed=1, stain=params,
                                      workers=2, shards={"format": "png"})
    assert [again[s]["shard_sha256"] for s in again] == [indexes[s]["shard_sha256"] for s in indexes]


def test_encode_dataset_script_with_stain(tmp_path):
    from deepbc.jobs.atomic import write_parquet
    from deepbc.shards import reader as shard_reader

    root, table = _shard_dataset(tmp_path)
    write_parquet(tmp_path / "s.parquet", table)
    (tmp_path / "p.json").write_text(json.dumps(stain.published_macenko()))
    # No stain_reference: the script reads the fitted parameters (--stain-json), not the reference.
    shards = {"images_per_shard": 4, "format": "jpeg", "jpeg_quality": 95, "max_shorter_side": 0,
              "stain_normalization": "macenko"}
    write_parquet(tmp_path / "m.parquet", table)
    trainkit.script("encode_dataset").main(["--manifest", str(tmp_path / "m.parquet"), "--root", str(root),
                                    "--out-dir", str(tmp_path / "store"), "--shards-json", json.dumps(shards),
                                    "--stain-json", str(tmp_path / "p.json"), "--seed", "1", "--workers", "1"])
    trainkit.script("write_shards").main(["--splits", str(tmp_path / "s.parquet"), "--fold", "0",
                                  "--store", str(tmp_path / "store" / "store.json"), "--out-dir", str(tmp_path / "out")])
    assert shard_reader.read_index(tmp_path / "out" / "val.json")["encoding"]["stain"] == stain.published_macenko()


@pytest.mark.parametrize("stain_params", [None, stain.published_macenko()], ids=["none", "macenko"])
def test_encode_image_always_returns_the_fallback(tmp_path, stain_params):
    from deepbc.shards import writer as shard_writer

    Image.fromarray(np.full((20, 30, 3), 250, np.uint8)).save(tmp_path / "white.png")
    for image_format in ("png", "jpeg"):  # stored as it is, and re-encoded
        result = shard_writer.encode_image(str(tmp_path / "white.png"), image_format, 95, 0, stain=stain_params)
        assert len(result) == 4 and result[1:] == (20, 30, stain_params and "no_tissue")


def test_macenko_port_computes_each_fallback_only_when_taken():
    """The unmixing (matrix products) and the percentiles (sorts) run inside tf.cond branches only:
    tf.where would compute the reference-matrix fallback on every image."""
    import tensorflow as tf

    port = tf.function(lambda x: stain.normalize_tf(x, stain.published_macenko()), autograph=False)
    graph = port.get_concrete_function(tf.TensorSpec([None, None, 3], tf.uint8)).graph
    top = {op.type for op in graph.get_operations()}
    assert {"If", "StatelessIf"} & top and not top & {"MatMul", "BatchMatMulV2", "TopKV2", "MatrixInverse"}


@pytest.mark.parametrize("image_format", ["jpeg", "png", "raw"])
def test_stored_as_the_shards_store_it(tmp_path, image_format):
    """predict_folder's and the export's ``as_stored`` give the shard reader's pixels of what the
    shard writer stored; tf.io.encode_jpeg reproduces Pillow's JPEG pixels exactly, the resize
    (max_shorter_side) is TensorFlow's Lanczos, within 2 grey levels (JPEG: 11) of Pillow's."""
    import tensorflow as tf

    from deepbc.shards import writer as shard_writer

    pixels = _tile("a", "p1", "DC", size=(140, 92))
    params = stain.published_macenko()
    Image.fromarray(pixels).save(tmp_path / "a.png")
    for limit, tolerance in ((0, 0), (46, 2 if image_format != "jpeg" else 11)):
        encoding = {"format": image_format, "jpeg_quality": 95, "max_shorter_side": limit}
        data, height, width, _ = shard_writer.encode_image(str(tmp_path / "a.png"), image_format, 95, limit,
                                                           stain=params)
        stored = records.decode({"image/encoded": data, "image/height": height, "image/width": width},
                                     image_format, 24).numpy()
        jpeg, as_stored = records.as_stored(stain.normalize(pixels, params), encoding)
        if image_format == "jpeg":
            assert as_stored is None
            as_stored = records.decode_jpeg(jpeg, 24).numpy()
        np.testing.assert_array_equal(as_stored, stored)
        port = records.as_stored_tf(stain.normalize_tf(tf.constant(pixels), params), encoding, 24).numpy()
        assert port.shape == stored.shape and np.abs(port.astype(int) - stored).max() <= tolerance, limit


def _parity_tiles():
    rng = np.random.default_rng(1)
    h, e = np.zeros((64, 64)), np.zeros((64, 64))
    h[:3, :3], e[3:6, :3] = 1.0, 1.0
    return {"F": _tile("b", "p2"), "DC": _tile("c", "p3", "DC", size=(140, 92)), "PT": _tile("d", "p4", "PT"),
            "white": np.full((32, 48, 3), 245, np.uint8), "tiny": _beer_lambert(h, e),
            "one_stain": _beer_lambert(rng.uniform(0.3, 1.5, (64, 64)), np.zeros((64, 64))),
            "flat": np.full((16, 16, 3), (200, 120, 180), np.uint8)}


@pytest.mark.parametrize("method", stain.METHODS)
def test_tensorflow_port_equals_numpy(method):
    """The export's normalization: Macenko identical; Reinhard (float32 sums in another order) within
    one grey level on at most 0.1 % of the pixels."""
    import tensorflow as tf

    params = stain.fit(_tile("a", "p1"), method)
    port = tf.function(lambda x: stain.normalize_tf(x, params), autograph=False,
                       input_signature=[tf.TensorSpec([None, None, 3], tf.uint8)])
    fallbacks = set()
    for name, tile in _parity_tiles().items():
        expected, fallback = stain.apply(tile, params)
        fallbacks.add(fallback)
        diff = np.abs(port(tf.constant(tile)).numpy().astype(int) - expected)
        assert diff.max() <= (0 if method == "macenko" else 1) and (diff > 0).mean() <= 1e-3, name
    assert len(fallbacks) >= (4 if method == "macenko" else 2)  # the fallbacks are exercised, not only the fit


@pytest.fixture(scope="module")
def stain_model(tmp_path_factory):
    """A tiny model trained on JPEG shards (the default) normalised with Macenko's published
    reference, and its export."""
    from deepbc.training import export, train
    from tests import trainkit

    base = tmp_path_factory.mktemp("stain_model")
    params = stain.published_macenko()
    shard_dir = trainkit.make_shards(base / "images", base / "shards", per_split=(32, 16, 16), stain=params,
                                   image_format="jpeg")
    train.train(*trainkit.indexes(shard_dir), base / "model", base / "state", "resnet_small",
                trainkit.settings(max_number_of_steps=20, eval_every_steps=10, save_every_steps=10), seed=3)
    export.export_saved_model(base / "model", base / "export", threads=1)
    return base, params


@pytest.mark.slow
def test_model_carries_the_stain_and_predict_folder_applies_it(stain_model, tmp_path):
    import shutil

    from deepbc.evaluation import predict
    from deepbc.training import model_dir
    from tests import trainkit

    base, params = stain_model
    assert model_dir.load_settings(base / "model")["stain"] == params
    raw, normalised = tmp_path / "raw", tmp_path / "normalised"
    raw.mkdir(), normalised.mkdir()
    rng = np.random.default_rng(5)
    encoding = model_dir.load_settings(base / "model")["shard_encoding"]
    assert encoding["format"] == "jpeg"
    for i in range(4):
        pixels = trainkit.draw(rng, i % 2, size=48)
        Image.fromarray(pixels).save(raw / f"{i}.png")
        # Normalised and stored as the JPEG shards store it: what the network was trained on.
        (normalised / f"{i}.jpg").write_bytes(records.as_stored(stain.normalize(pixels, params), encoding)[0])
    # The same network without the stain in its settings, given images normalised beforehand.
    plain = tmp_path / "plain"
    shutil.copytree(base / "model", plain)
    settings = json.loads((plain / "settings.json").read_text())
    (plain / "settings.json").write_text(json.dumps(dict(settings, stain=None)))
    cols = [f"prob_{c}" for c in trainkit.CLASSES]
    by_model = predict.predict_folder(base / "model", raw, tmp_path / "a.csv")[cols].to_numpy(float)
    by_hand = predict.predict_folder(plain, normalised, tmp_path / "b.csv")[cols].to_numpy(float)
    unnormalised = predict.predict_folder(plain, raw, tmp_path / "c.csv")[cols].to_numpy(float)
    np.testing.assert_allclose(by_model, by_hand, atol=1e-6)
    assert np.abs(unnormalised - by_model).max() > 1e-4
    # Normalised but lossless (as before settings.json had shard_encoding): not what training saw.
    lossless = dict(model_dir.load_settings(base / "model"), shard_encoding=None)
    (plain / "settings.json").write_text(json.dumps(lossless))
    old = predict.predict_folder(plain, raw, tmp_path / "d.csv")[cols].to_numpy(float)
    assert np.abs(old - by_model).max() > 1e-4


@pytest.mark.slow
def test_export_normalises_inside_without_the_package(stain_model, tmp_path):
    """The export, given the original images, gives predict_shards' probabilities on the normalised shards."""
    from deepbc.evaluation import inference
    from deepbc.shards import reader as shard_reader
    from tests import trainkit

    base, _ = stain_model
    expected = inference.predict_shards(base / "model", base / "shards" / "test.json", tmp_path / "p.parquet")
    names = [records.parse_example(record)["image/filename"].numpy().decode()
             for record, _ in shard_reader.member_records(base / "shards" / "test.json")]
    originals = [(base / "images" / n).read_bytes() for n in names]
    probs, class_names = trainkit.serve_without_the_package(base / "export", originals, tmp_path)
    served = pd.DataFrame(probs, columns=[f"prob_{c}" for c in class_names])
    served["path"] = names
    merged = expected.merge(served, on="path", suffixes=("", "_served"))
    assert len(merged) == len(expected) == 16
    for c in ("benign", "malignant"):
        np.testing.assert_allclose(merged[f"prob_{c}_served"], merged[f"prob_{c}"], atol=1e-5)


def test_workflow_refuses_reinhard_without_a_reference_at_start():
    from deepbc.workflow import config as workflow_config

    config = validated_config("config.yaml")
    config["shards"] = {"stain_normalization": "reinhard", "stain_reference": None}
    with pytest.raises(UserError, match="set shards.stain_reference"):
        workflow_config.check(config)
    config["shards"]["stain_normalization"] = "macenko"  # Macenko's published reference
    workflow_config.check(config)
