"""TFRecord shards: the per-dataset store (each image encoded once) and the per-split indexes over
it; every feature read back (eager and graph mode), atomicity, balance, determinism."""

import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf
from PIL import Image, ImageFile

from deepbc.data import splits
from deepbc.data.runs import SPLITS
from deepbc.jobs.errors import UserError, rebuild_store
from deepbc.shards import reader as shard_reader
from deepbc.shards import records
from deepbc.shards import writer as shard_writer
from tests import trainkit

REPO = Path(__file__).resolve().parents[1]
CLASSES = ["benign", "malignant"]


def _splits(n_train=9, n_val=3, n_test=4) -> pd.DataFrame:
    split = ["train"] * n_train + ["val"] * n_val + ["test"] * n_test
    rows = []
    for i, s in enumerate(split):
        label = CLASSES[i % 2]
        rows.append({"path": f"{label}/P{i % 5}/img{i:02d}.png", "patient": f"P{i % 5}", "slide": f"S{i % 5}",
                     "magnification": ["40X", "100X", "200X", "400X"][i % 4], "label": label,
                     "label_index": i % 2, "fold": 0, "split": s, "protocol": "patient"})
    other_fold = [dict(r, fold=1) for r in rows]
    return pd.DataFrame(rows + other_fold)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """Small RGB PNGs (random sizes around 40x30) laid out as the splits table says."""
    root = tmp_path_factory.mktemp("root")
    rng = np.random.default_rng(0)
    table = _splits()
    for path in table["path"].unique():
        h, w = int(rng.integers(24, 36)), int(rng.integers(36, 48))
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / path)
    return root, table


def _write(dataset, out, seed=3, workers=1, **shards):
    """The fold's indexes, with two images per store shard unless ``shards`` (config keys) says otherwise."""
    root, table = dataset
    return shard_writer.write_shards(table, 0, root, out, seed=seed, workers=workers,
                                     shards={"images_per_shard": 2, **shards})


def _records(index_path):
    """The split's members: parsed features, with the label the index gives them."""
    return [dict(records.parse_example(r), label=label)
            for r, label in shard_reader.member_records(index_path)]


def test_index_and_every_feature(dataset, tmp_path):
    root, table = dataset
    indexes = _write(dataset, tmp_path, format="png")
    fold = table[table["fold"] == 0]
    for split in SPLITS:
        index = json.loads((tmp_path / f"{split}.json").read_text())
        assert index == {k: v for k, v in shard_reader.read_index(tmp_path / f"{split}.json").items() if k != "paths"}
        assert index == indexes[split]
        rows = fold[fold["split"] == split].set_index("path")
        assert index["count"] == len(rows) == sum(index["shard_sizes"]) == len(index["members"])
        assert index["class_names"] == CLASSES
        assert index["count_per_class"] == {c: int((rows["label"] == c).sum()) for c in CLASSES}
        assert index["encoding"] == {"format": "png", "jpeg_quality": None, "max_shorter_side": 0}
        assert all(name.startswith("encoded/dataset/shard-") for name in index["shards"])
        assert {path: label for _, _, path, label in index["members"]} == rows["label_index"].to_dict()
        seen = []
        for f in _records(tmp_path / f"{split}.json"):
            name = f["image/filename"].numpy().decode()
            seen.append(name)
            row = rows.loc[name]
            source = (root / name).read_bytes()
            # PNG sources stored as PNG keep their bytes.
            assert f["image/encoded"].numpy() == source
            assert f["image/format"].numpy() == b"png"
            assert "image/class/label" not in f  # a store serves every task: the label is the index's
            assert f["label"].numpy() == row["label_index"]
            assert f["image/patient"].numpy().decode() == row["patient"]
            assert f["image/magnification"].numpy().decode() == row["magnification"]
            w, h = Image.open(root / name).size
            assert (f["image/height"].numpy(), f["image/width"].numpy()) == (h, w)
        assert sorted(seen) == sorted(rows.index)


def test_jpeg_resize_and_raw_pixels(dataset, tmp_path):
    root, _ = dataset
    _write(dataset, tmp_path / "jpeg", max_shorter_side=20, jpeg_quality=90)
    for f in _records(tmp_path / "jpeg" / "val.json"):
        h, w = int(f["image/height"]), int(f["image/width"])
        assert min(h, w) == 20 and f["image/format"].numpy() == b"jpeg"
        assert Image.open(io.BytesIO(f["image/encoded"].numpy())).format == "JPEG"
        assert records.decode(f, "jpeg").shape == (h, w, 3)
    _write(dataset, tmp_path / "raw", format="raw")
    for f in _records(tmp_path / "raw" / "test.json"):
        source = np.asarray(Image.open(root / f["image/filename"].numpy().decode()).convert("RGB"))
        np.testing.assert_array_equal(records.decode(f, "raw").numpy(), source)


def test_make_dataset_eager_with_metadata(dataset, tmp_path):
    _, table = dataset
    _write(dataset, tmp_path)
    ds = shard_reader.make_dataset(tmp_path / "test.json", batch_size=3, is_training=False, image_size=16,
                             with_metadata=True)
    batches = list(ds)
    images = np.concatenate([b[0].numpy() for b in batches])
    assert images.shape == (4, 16, 16, 3) and images.dtype == np.float32 and images.max() > 1
    names = [n.decode() for b in batches for n in b[2]["filename"].numpy()]
    test = table[(table["fold"] == 0) & (table["split"] == "test")].set_index("path")
    assert sorted(names) == sorted(test.index)
    labels = np.concatenate([b[1].numpy() for b in batches])
    assert list(labels) == [test.loc[n, "label_index"] for n in names]
    patients = [p.decode() for b in batches for p in b[2]["patient"].numpy()]
    assert patients == [test.loc[n, "patient"] for n in names]
    mags = [m.decode() for b in batches for m in b[2]["magnification"].numpy()]
    assert mags == [test.loc[n, "magnification"] for n in names]
    # Evaluation order is deterministic.
    again = [n.decode() for b in ds for n in b[2]["filename"].numpy()]
    assert again == names


def _jpeg(height, width) -> bytes:
    """A smooth JPEG (a colour gradient), whose downscaled versions barely depend on the method."""
    yy, xx = np.mgrid[0:height, 0:width]
    pixels = np.stack([xx * 255 // width, yy * 255 // height, (xx + yy) * 127 // (height + width)], -1)
    out = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8)).save(out, format="JPEG", quality=95)
    return out.getvalue()


def test_decode_jpeg_at_the_smallest_scale_that_keeps_min_side():
    data = tf.constant(_jpeg(300, 400))
    full = records.decode_jpeg(data)
    assert full.shape == (300, 400, 3)
    for min_side, shape in [(301, (300, 400)), (151, (300, 400)), (140, (150, 200)), (75, (75, 100)),
                            (10, (38, 50))]:
        assert records.decode_jpeg(data, min_side).shape == (*shape, 3), min_side
    half = tf.cast(records.decode_jpeg(data, 140), tf.float32)
    area = tf.image.resize(full, [150, 200], method="area")
    assert float(tf.reduce_mean(tf.abs(half - area))) < 2.0  # the same picture, resampled


def test_make_dataset_decodes_only_as_much_as_the_preprocessing_needs(tmp_path):
    table = _splits(1, 1, 1).query("fold == 0")
    table = table.assign(path=[f"i{i}.jpg" for i in range(len(table))])
    for p in table["path"]:
        (tmp_path / p).write_bytes(_jpeg(460, 700))
    shard_writer.write_shards(table, 0, tmp_path, tmp_path / "shards", workers=1)

    def decoded_height(image, height, width):  # the "preprocessed" image holds the decoded height
        return tf.fill([height, width, 3], tf.cast(tf.shape(image)[0], tf.float32))

    for min_side, expected in [(100, 115), (200, 230), (None, 460)]:
        decoded_height.min_source_side = lambda h, w, m=min_side: m
        images, _ = next(iter(shard_reader.make_dataset(tmp_path / "shards" / "test.json", 1, False, decoded_height,
                                                  image_size=8)))
        assert float(images[0, 0, 0, 0]) == expected, min_side


def test_make_dataset_with_more_threads_than_shards(dataset, tmp_path):
    _write(dataset, tmp_path)  # one shard per split
    for is_training in (True, False):
        ds = shard_reader.make_dataset(tmp_path / "val.json", batch_size=3, is_training=is_training, image_size=8,
                                 num_parallel_calls=4)
        assert sum(int(b[0].shape[0]) for b in ds) == 3


def test_make_dataset_graph_mode_and_custom_preprocess(dataset, tmp_path):
    _write(dataset, tmp_path)
    calls = []

    def preprocess(image, height, width):
        calls.append((height, width))
        return tf.image.resize(tf.image.convert_image_dtype(image, tf.float32), [height, width]) - 0.5

    with tf.Graph().as_default():
        train = shard_reader.make_dataset(tmp_path / "train.json", batch_size=4, is_training=True, preprocess_fn=preprocess,
                                    image_size=8, shuffle_buffer=16, seed=1, repeat=True)
        images, labels = tf.compat.v1.data.make_one_shot_iterator(train).get_next()
        evaluation = shard_reader.make_dataset(tmp_path / "val.json", batch_size=2, is_training=False, image_size=8,
                                         with_metadata=True)
        iterator = tf.compat.v1.data.make_initializable_iterator(evaluation)
        eval_images, _, meta = iterator.get_next()
        with tf.compat.v1.Session() as sess:
            for _ in range(4):  # more batches than one epoch (9 images): repeat works
                x, y = sess.run([images, labels])
                assert x.shape == (4, 8, 8, 3) and -0.5 <= x.min() and x.max() <= 0.5
                assert set(y) <= {0, 1}
            for _ in range(2):  # an initializable iterator can be re-run for each evaluation
                sess.run(iterator.initializer)
                names = []
                while True:
                    try:
                        _, m = sess.run([eval_images, meta])
                    except tf.errors.OutOfRangeError:
                        break
                    names += list(m["filename"])
                assert len(names) == 3
    assert calls == [(8, 8)]


def test_balanced_shards():
    rows = pd.DataFrame({"path": [f"x{i:04d}" for i in range(1000)]})
    plan = shard_writer.plan_shards(rows, images_per_shard=256, seed=0)
    assert [len(s) for s in plan] == [250] * 4
    plan = shard_writer.plan_shards(rows.head(10), images_per_shard=3, seed=0)
    assert [len(s) for s in plan] == [3, 3, 2, 2]
    assert sorted(pd.concat(plan)["path"]) == sorted(rows.head(10)["path"])
    # The shuffle depends on the seed, not on the input order.
    again = shard_writer.plan_shards(rows.head(10).iloc[::-1], images_per_shard=3, seed=0)
    assert all(a["path"].tolist() == b["path"].tolist() for a, b in zip(plan, again))
    other = shard_writer.plan_shards(rows.head(10), images_per_shard=3, seed=1)
    assert any(a["path"].tolist() != b["path"].tolist() for a, b in zip(plan, other))


def test_written_shard_sizes_are_balanced(dataset, tmp_path):
    indexes = _write(dataset, tmp_path, images_per_shard=5)
    store = json.loads((tmp_path / "encoded" / "dataset" / "store.json").read_text())
    assert store["count"] == 16 and sorted(store["shard_sizes"]) == [4, 4, 4, 4]  # 16 images, ceil(16 / 5) shards
    for name, size in zip(store["shards"], store["shard_sizes"]):
        assert sum(1 for _ in tf.data.TFRecordDataset(str(tmp_path / "encoded" / "dataset" / name))) == size
    for index in indexes.values():
        assert index["shard_records"] == [4] * len(index["shards"])
        assert sum(index["shard_sizes"]) == index["count"]


def test_each_image_is_encoded_once_per_dataset_whatever_the_folds(dataset, tmp_path, monkeypatch):
    root, table = dataset
    encoded = []
    real = shard_writer.encode_image
    monkeypatch.setattr(shard_writer, "encode_image", lambda path, **kw: encoded.append(path) or real(path, **kw))
    store = shard_writer.encode_store(table, root, tmp_path / "store", workers=1, shards={"images_per_shard": 2})
    assert sorted(encoded) == sorted(str(root / p) for p in table["path"].unique())  # 16 images, 2 folds
    for fold in (0, 1):
        indexes = shard_writer.write_split_indexes(table, fold, tmp_path / "store" / "store.json", tmp_path / f"f{fold}")
        # Only the store shards holding a member are listed, each with its members' records.
        for index in indexes.values():
            holding = sorted({store["records"][path][0] for _, _, path, _ in index["members"]})
            assert index["shards"] == [f"../store/{store['shards'][s]}" for s in holding]
            assert index["shard_sha256"] == [store["shard_sha256"][s] for s in holding]
            assert 0 < len(holding) < len(store["shards"]) or index["split"] == "train"
    assert len(encoded) == 16


def test_a_one_magnification_split_lists_only_its_magnifications_shards(dataset, tmp_path):
    """A store of several magnifications deals each into shards of its own: a per-magnification
    run's split reads its magnification's records only, not ~4x its members."""
    root, table = dataset
    number = table["path"].str.extract(r"img(\d+)", expand=False).astype(int)
    table = table.assign(magnification=np.where(number // 2 % 2 == 0, "40X", "100X"))
    store = shard_writer.encode_store(table, root, tmp_path / "store", seed=3, workers=1, shards={"images_per_shard": 3})
    magnification = dict(zip(table["path"], table["magnification"]))
    shard_mags = [{magnification[p] for p, (s, *_) in store["records"].items() if s == k}
                  for k in range(len(store["shards"]))]
    # 8 images per magnification -> ceil(8 / 3) shards each, magnifications in sorted order.
    assert shard_mags == [{"100X"}] * 3 + [{"40X"}] * 3 and store["shard_sizes"] == [3, 3, 2] * 2
    indexes = shard_writer.write_split_indexes(table[table["magnification"] == "40X"], 0,
                                               tmp_path / "store" / "store.json", tmp_path / "run")
    for index in indexes.values():
        assert all(shard_mags[store["shards"].index(Path(s).name)] == {"40X"} for s in index["shards"])
    assert {s for index in indexes.values() for s in index["shards"]} == {f"../store/{n}" for n in store["shards"][3:]}


def test_the_index_writer_does_not_import_tensorflow(dataset, tmp_path):
    """write_shards runs once per run x fold: without TensorFlow it starts in a fraction of a second."""
    root, table = dataset
    shard_writer.encode_store(table, root, tmp_path / "store", workers=1)
    table.to_parquet(tmp_path / "s.parquet")
    script = REPO / "workflow_scripts" / "write_shards.py"
    code = ("import runpy, sys\n"
            f"sys.argv = ['write_shards.py', '--splits', {str(tmp_path / 's.parquet')!r}, '--store', "
            f"{str(tmp_path / 'store' / 'store.json')!r}, '--fold', '1', '--out-dir', {str(tmp_path / 'out')!r}]\n"
            "try:\n"
            f"    runpy.run_path({str(script)!r}, run_name='__main__')\n"
            "except SystemExit as exit:\n"
            "    assert not exit.code, exit.code\n"
            "print('tensorflow' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.stdout.strip() == "False", done.stderr[-2000:]
    assert shard_reader.read_index(tmp_path / "out" / "test.json")["count"] == 4


def test_a_stale_index_over_a_rebuilt_store_is_an_error(dataset, tmp_path):
    """Records are matched by position: a store rebuilt in another order must not pass its images
    off under the old index's labels."""
    root, table = dataset
    shard_writer.write_shards(table, 0, root, tmp_path, workers=1, shards={"images_per_shard": 4})
    shard_writer.encode_store(table, root, tmp_path / "encoded" / "dataset", seed=9, workers=1, shards={"images_per_shard": 4})
    with pytest.raises(UserError, match="shard index is stale: .* differ from the store's") as err:
        shard_reader.make_dataset(tmp_path / "train.json", batch_size=3, is_training=False, image_size=8)
    assert err.value.where == str(tmp_path / "train.json")
    assert err.value.fix.startswith(f"delete the folder {tmp_path.parent}/ and rerun the same snakemake command")


def test_an_index_over_a_store_re_encoded_in_the_same_layout_is_an_error(dataset, tmp_path):
    """Same seed and count, another jpeg_quality: the same shard names and sizes, other bytes. The
    index must not pass off the old encoding (settings.json, predict_folder) and shard hashes (resume)."""
    root, table = dataset
    _write(dataset, tmp_path)
    shard_writer.encode_store(table, root, tmp_path / "encoded" / "dataset", seed=3, workers=1, shards={"images_per_shard": 2, "format": "jpeg", "jpeg_quality": 50, "max_shorter_side": 0})
    with pytest.raises(UserError, match="shard index is stale") as err:
        shard_reader.read_index(tmp_path / "val.json")
    assert err.value.fix.startswith(f"delete the folder {tmp_path.parent}/ and rerun the same snakemake command")
    # Hashes made to agree, the encoding alone still differs.
    index = json.loads((tmp_path / "val.json").read_text())
    store = json.loads((tmp_path / "encoded" / "dataset" / "store.json").read_text())
    index["shard_sha256"] = [store["shard_sha256"][store["shards"].index(n.split("/")[-1])] for n in index["shards"]]
    (tmp_path / "val.json").write_text(json.dumps(index))
    with pytest.raises(UserError, match="its encoding .*'jpeg_quality': 95.* differs from the store's"):
        shard_reader.read_index(tmp_path / "val.json")


def _read_all(index_path):
    with shard_reader.naming_corrupt_shards([index_path]):
        list(shard_reader.make_dataset(index_path, batch_size=3, is_training=False, image_size=8))


def test_a_record_that_is_not_the_listed_member_is_a_user_error(dataset, tmp_path):
    """Shards swapped after the index was checked: TensorFlow's InvalidArgumentError reaches the user
    as a UserError naming the index."""
    root, table = dataset
    _write(dataset, tmp_path)
    index = shard_reader.read_index(tmp_path / "train.json")
    first, second = index["paths"][:2]
    a, b = Path(first).read_bytes(), Path(second).read_bytes()
    Path(first).write_bytes(b)
    Path(second).write_bytes(a)
    with pytest.raises(UserError, match="a store record is not the member") as err:
        _read_all(tmp_path / "train.json")
    # The index agrees with store.json: the shard files changed, and the store is rebuilt.
    assert err.value.where == str(tmp_path / "train.json")
    assert err.value.fix == rebuild_store(tmp_path / "encoded" / "dataset")


def test_a_shard_with_more_records_than_listed_is_a_user_error(dataset, tmp_path):
    _write(dataset, tmp_path)
    index = shard_reader.read_index(tmp_path / "train.json")
    last = Path(index["paths"][-1])
    last.write_bytes(last.read_bytes() * 2)  # TFRecord files concatenate
    with pytest.raises(UserError, match="a shard has more records than") as err:
        _read_all(tmp_path / "train.json")
    # The index agrees with store.json: the shard files changed, and the store is rebuilt.
    assert err.value.where == str(tmp_path / "train.json")
    assert err.value.fix == rebuild_store(tmp_path / "encoded" / "dataset")


def _unlink_first_shard(index, folder):
    (folder / index["shards"][0]).unlink()
    return index


@pytest.mark.parametrize("damage, what, remedy", [
    (lambda index, folder: "{", "shard index is not valid JSON", "fold"),
    (lambda index, folder: {k: v for k, v in index.items() if k not in ("members", "shard_records")},
     "before the per-dataset store", "fold"),
    (lambda index, folder: {**index, "count": index["count"] + 1}, "members for a count of", "fold"),
    (_unlink_first_shard, "shard(s) listed in the index are missing", "store"),
], ids=["not_json", "per_run_shards", "count", "shard_missing"])
def test_a_broken_index_names_what_to_delete(dataset, tmp_path, damage, what, remedy):
    """A broken index: delete the fold's indexes (write_shards writes them together); a store shard
    missing: delete the store. tests/test_recovery.py follows such advice in the workflow."""
    _write(dataset, tmp_path / "fold0")
    index_path = tmp_path / "fold0" / "val.json"
    damaged = damage(json.loads(index_path.read_text()), tmp_path / "fold0")
    index_path.write_text(damaged if isinstance(damaged, str) else json.dumps(damaged))
    with pytest.raises(UserError, match=re.escape(what)) as err:
        shard_reader.read_index(index_path)
    assert err.value.where == str(index_path)
    expected = {"fold": f"delete the folder {tmp_path / 'fold0'}/ and rerun the same snakemake command",
                "store": rebuild_store(tmp_path / "fold0" / "encoded" / "dataset")}[remedy]
    assert err.value.fix.startswith(expected)


def test_a_member_beyond_its_shard_names_the_fold_to_rewrite(dataset, tmp_path):
    _write(dataset, tmp_path / "fold0")
    index_path = tmp_path / "fold0" / "train.json"
    index = json.loads(index_path.read_text())
    shard = index["members"][0][0]
    index["members"][0][1] = index["shard_records"][shard]
    index_path.write_text(json.dumps(index))
    with pytest.raises(UserError, match="is record .* of a shard of") as err:
        shard_reader.make_dataset(index_path, batch_size=2, is_training=False, image_size=8)
    assert err.value.fix.startswith(f"delete the folder {tmp_path / 'fold0'}/ and rerun the same snakemake command")


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_rerun_is_byte_identical_with_any_worker_count(dataset, tmp_path):
    _write(dataset, tmp_path / "a", workers=1, max_shorter_side=20)
    _write(dataset, tmp_path / "b", workers=2, max_shorter_side=20)
    a, b = _tree(tmp_path / "a"), _tree(tmp_path / "b")
    assert a == b and len(a) == 3 + 8 + 1  # the indexes, the store's 16 images in 8 shards, its index
    _write(dataset, tmp_path / "c", seed=4, max_shorter_side=20)
    assert _tree(tmp_path / "c") != a


def test_failure_midway_leaves_nothing_that_looks_complete(dataset, tmp_path, monkeypatch):
    _write(dataset, tmp_path, images_per_shard=4)  # an earlier complete run, with other shard names
    (tmp_path / "train-00000-of-00001.tfrecord").write_bytes(b"")  # a per-run shard of the old design
    store = tmp_path / "encoded" / "dataset"
    real = records.example
    calls = []

    def failing(*args):
        calls.append(1)
        if len(calls) == 4:  # second image of the second store shard (2 per shard)
            raise RuntimeError("disk full")
        return real(*args)

    monkeypatch.setattr(records, "example", failing)
    with pytest.raises(RuntimeError, match="disk full"):
        _write(dataset, tmp_path, images_per_shard=2)
    names = sorted(p.name for p in store.iterdir())
    assert not (store / "store.json").exists()
    assert not any(n.endswith(".tmp") for n in names)
    assert "shard-00001-of-00008.tfrecord" not in names and "shard-00000-of-00008.tfrecord" in names
    # The next run completes and removes the shards the store does not list, and old per-run shards.
    monkeypatch.setattr(records, "example", real)
    _write(dataset, tmp_path, images_per_shard=2)
    listed = json.loads((store / "store.json").read_text())["shards"]
    assert sorted(p.name for p in store.glob("*.tfrecord")) == listed
    assert not list(tmp_path.glob("*.tfrecord"))


def _hashed(root, table):
    return table.assign(sha256=[hashlib.sha256((root / p).read_bytes()).hexdigest() for p in table["path"]])


def test_a_file_changed_since_the_manifest_is_an_error(dataset, tmp_path):
    root, table = dataset
    copy = tmp_path / "root"
    shutil.copytree(root, copy)
    hashed = _hashed(copy, table)
    shard_writer.write_shards(hashed, 0, copy, tmp_path / "ok", workers=1, shards={"images_per_shard": 4})
    victim = hashed.loc[hashed["split"] == "val", "path"].iloc[0]
    Image.new("RGB", (40, 30), "white").save(copy / victim)  # still a valid image, but not the checked one
    with pytest.raises(UserError, match="changed after the manifest") as err:
        shard_writer.write_shards(hashed, 0, copy, tmp_path / "bad", workers=1, shards={"images_per_shard": 4})
    assert victim in str(err.value)
    # From the manifest's file, as the workflow encodes (the error crosses from a worker process):
    # delete the manifest, which check_dataset writes again.
    manifest = tmp_path / "manifest.parquet"
    hashed.to_parquet(manifest)
    with pytest.raises(UserError, match="changed after the manifest") as err:
        shard_writer.encode_store_file(manifest, copy, tmp_path / "bad", shards={"images_per_shard": 4}, workers=2)
    assert err.value.where == str(copy / victim)
    assert err.value.fix.startswith(f"delete {manifest} and rerun the same snakemake command")
    # A store encoded from other bytes than the splits' manifest says is refused by the index writer.
    stale = hashed.assign(sha256=hashed["sha256"].where(hashed["path"] != victim, "0" * 64))
    store = tmp_path / "ok" / "encoded" / "dataset"
    with pytest.raises(UserError, match="encoded from other bytes") as err:
        shard_writer.write_split_indexes(stale, 0, store / "store.json", tmp_path / "ok")
    assert victim in str(err.value) and err.value.fix == rebuild_store(store)


def test_a_16_bit_png_is_scaled_not_clipped(dataset, tmp_path):
    """A mid-grey 16-bit gradient keeps its mean (Pillow's convert("RGB") clipped it to white)."""
    root, table = dataset
    copy = tmp_path / "root"
    shutil.copytree(root, copy)
    victim = table.loc[table["split"] == "test", "path"].iloc[0]
    gradient = np.linspace(64 * 257, 191 * 257, 40 * 30).reshape(30, 40).astype(np.uint16)
    Image.fromarray(gradient).save(copy / victim)
    assert Image.open(copy / victim).mode == "I;16"
    for fmt in ("jpeg", "png"):
        shard_writer.write_shards(table, 0, copy, tmp_path / fmt, workers=1, shards={"images_per_shard": 4, "format": fmt})
        record = next(r for r in _records(tmp_path / fmt / "test.json") if r["image/filename"] == victim.encode())
        pixels = records.decode(record, fmt).numpy().astype(np.float64)
        assert abs(pixels.mean() - gradient.mean() / 257) < 1.0, fmt  # JPEG q95 moves the mean a little
        assert (pixels >= 254).mean() < 0.01


def test_images_stored_as_they_are_are_not_decoded(dataset, tmp_path, monkeypatch):
    root, table = dataset

    def no_decoding(self):
        raise AssertionError("decoded an image that is stored as it is")

    monkeypatch.setattr(Image.Image, "load", no_decoding)
    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    shard_writer.write_shards(_hashed(root, table), 0, root, tmp_path, workers=1, shards={"images_per_shard": 4, "format": "png"})
    stored = {r["image/filename"].numpy().decode(): r["image/encoded"].numpy() for r in _records(tmp_path / "train.json")}
    assert all(data == (root / path).read_bytes() for path, data in stored.items())


def test_bad_inputs_are_user_errors(dataset, tmp_path):
    root, table = dataset
    with pytest.raises(UserError, match="fold 7 is not in the splits table"):
        shard_writer.write_shards(table, 7, root, tmp_path)
    with pytest.raises(UserError, match="missing under the dataset root"):
        shard_writer.write_shards(table, 0, tmp_path / "elsewhere", tmp_path / "out")
    with pytest.raises(UserError, match="encoded store index not found"):
        shard_writer.write_split_indexes(table, 0, tmp_path / "none" / "store.json", tmp_path / "out")
    broken = tmp_path / "broken"
    broken.mkdir()
    for path in table["path"].unique():
        (broken / path).parent.mkdir(parents=True, exist_ok=True)
        (broken / path).write_bytes(b"not an image")
    with pytest.raises(UserError, match="cannot decode image"):
        shard_writer.write_shards(table, 0, broken, tmp_path / "out")
    with pytest.raises(UserError, match="shard index not found"):
        shard_reader.read_index(tmp_path / "nope.json")


def test_encode_dataset_and_write_shards_scripts(dataset, tmp_path):
    root, table = dataset
    from deepbc.jobs.atomic import write_parquet

    write_parquet(tmp_path / "m.parquet", table.drop_duplicates("path"))
    write_parquet(tmp_path / "s.parquet", table)
    trainkit.run_script("encode_dataset", "--manifest", tmp_path / "m.parquet", "--root", root, "--out-dir",
                        tmp_path / "store", "--shards-json", json.dumps({"images_per_shard": 4}), "--seed", "1",
                        "--workers", "1", check=True)
    out = tmp_path / "fold1"
    trainkit.run_script("write_shards", "--splits", tmp_path / "s.parquet", "--store", tmp_path / "store" / "store.json",
                        "--fold", "1", "--out-dir", out, check=True)
    assert shard_reader.read_index(out / "test.json")["count"] == 4


@pytest.mark.slow
def test_training_stream_depends_on_seed_and_position_only(dataset, tmp_path):
    """The same seed gives the same batches and augmentations whatever the parallelism; a stream
    started ``first_record`` in is the tail of the full one (exact resume); epochs differ."""
    from deepbc.training import preprocessing

    _write(dataset, tmp_path)  # 9 training images among 16 in 8 store shards
    augment = preprocessing.get_preprocessing("vgg", is_training=True)  # random flips and rotations

    def stream(first_record=0, calls=None, seed=1):
        ds = shard_reader.make_dataset(tmp_path / "train.json", batch_size=3, is_training=True, preprocess_fn=augment,
                                 image_size=8, seed=seed, repeat=True, first_record=first_record,
                                 num_parallel_calls=calls, shuffle_buffer=4)
        batches = [b for _, b in zip(range(9), ds)]  # three epochs
        return np.concatenate([b[0].numpy() for b in batches]), np.concatenate([b[1].numpy() for b in batches])

    images, labels = stream(calls=1)
    again, again_labels = stream(calls=4)
    np.testing.assert_array_equal(images, again)
    np.testing.assert_array_equal(labels, again_labels)
    resumed, _ = stream(first_record=7)
    np.testing.assert_array_equal(images[7:], resumed[:len(images) - 7])
    assert not np.array_equal(images[:9], images[9:18])  # each epoch its own order and augmentation
    assert not np.array_equal(images, stream(seed=2)[0])


def test_each_use_of_the_seed_has_its_own_keys(dataset, tmp_path):
    """File order, record shuffle and augmentation never share a key (the epoch key [seed, e] was
    once also the shuffle key and the augmentation key of the element at position e)."""
    keys = [tuple(shard_reader.stream_key(seed, use, n).numpy()) for seed in (0, 1) for n in range(12)
            for use in ("file_order", "shuffle", "augment")]
    assert len(set(keys)) == len(keys)
    _write(dataset, tmp_path)  # 9 training images

    def seed_as_image(image, height, width, seed):  # the element's key, carried bit for bit
        return tf.bitcast(seed, tf.float64)

    ds = shard_reader.make_dataset(tmp_path / "train.json", batch_size=3, is_training=True, preprocess_fn=seed_as_image,
                             seed=1, repeat=True, first_record=2)
    seen = np.concatenate([b[0].numpy() for _, b in zip(range(4), ds)]).view(np.int64)
    expected = np.stack([shard_reader.stream_key(1, "augment", n).numpy() for n in range(2, 14)])
    np.testing.assert_array_equal(seen, expected)


def test_a_record_has_the_same_bytes_in_every_process():
    """The same image gives the same record in every job (protobuf's map order follows a
    per-process hash unless serialised deterministically), so rewritten shards keep their sha256."""
    code = ("import hashlib, types\n"
            "from deepbc.shards import records\n"
            "row = types.SimpleNamespace(label_index=1, path='a/b.png', patient='p1', magnification='40X')\n"
            "print(hashlib.sha256(records.example(b'x' * 100, 'jpeg', row, 10, 12)).hexdigest())")
    root = Path(__file__).resolve().parents[1]
    digests = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                              env={**os.environ, "PYTHONHASHSEED": str(seed), "PYTHONPATH": str(root)}).stdout
               for seed in (1, 2)}  # two hash seeds show it: each process imports TensorFlow (~10 s)
    assert len(digests) == 1, digests


def test_a_fold_with_an_empty_split_is_refused(dataset, tmp_path):
    """What lets evaluation and temperature scaling assume every split has images."""
    root, table = dataset
    no_val = table[~((table["fold"] == 0) & (table["split"] == "val"))]
    with pytest.raises(UserError, match="fold 0 has no val images"):
        shard_writer.write_shards(no_val, 0, root, tmp_path / "shards", workers=1)
    assert not list((tmp_path / "shards").glob("*.json"))


def test_an_image_listed_twice_in_a_split_is_refused(dataset, tmp_path):
    """The index writer checks it itself rather than trusting deepbc.data.splits: it would count twice."""
    root, table = dataset
    shard_writer.encode_store(table, root, tmp_path / "store", workers=1)
    twice = pd.concat([table, table[(table["fold"] == 0) & (table["split"] == "val")].iloc[:1]])
    with pytest.raises(UserError, match="listed more than once in fold 0's val split") as err:
        shard_writer.write_split_indexes(twice, 0, tmp_path / "store" / "store.json", tmp_path / "out")
    assert "make_splits.py" in str(err.value)


def _copies_written(tmp_path):
    """Four 6x6 images (two classes) as augment-then-split copies, written as fold 0's indexes
    under tmp_path/out: img0 and img1 tested, img2 validated, img3 trained on (its 8 copies)."""
    rng = np.random.default_rng(1)
    root, rows = tmp_path / "root", []
    for i in range(4):
        path = f"{CLASSES[i % 2]}/img{i}.png"
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)).save(root / path)
        rows.append({"path": path, "patient": f"P{i}", "slide": f"S{i}", "magnification": "40X",
                     "label": CLASSES[i % 2], "label_index": i % 2})
    table = splits.copies(pd.DataFrame(rows)).assign(fold=0, protocol="augmented_image")
    side = {"benign/img0.png": "test", "malignant/img1.png": "test", "benign/img2.png": "val"}
    table["split"] = table["path"].map(side).fillna("train")
    indexes = shard_writer.write_shards(table, 0, root, tmp_path / "out", seed=0,
                                        shards={"images_per_shard": 2, "format": "png"})
    return root, table, indexes


def test_image_copies_are_members_the_reader_turns(tmp_path):
    """The augment-then-split protocol (issue 23.5): the store holds each image once; an index of
    copies lists a store shard once per copy id of its members, and the reader turns each decoded
    image by its member's copy (mirrored when copy >= 4, then copy % 4 quarter turns, as numpy's
    fliplr and rot90), in evaluation and training alike; the metadata carries the copy id."""
    root, table, indexes = _copies_written(tmp_path)
    store = records.read_store(tmp_path / "out" / "encoded" / "dataset" / "store.json")
    assert store["count"] == 4  # each image encoded once
    test = indexes["test"]
    assert test["count"] == 16 and sorted((m[2], m[4]) for m in test["members"]) == sorted(
        (p, c) for p in ("benign/img0.png", "malignant/img1.png") for c in range(8))
    # One listed slot per (store shard, copy id): every member is one record of one listed shard.
    slots = {(test["shards"][m[0]], m[4]) for m in test["members"]}
    assert len(slots) == len(test["shards"]) and len({tuple(m[:2]) for m in test["members"]}) == 16

    def expected(name, copy):
        original = np.asarray(Image.open(root / name))
        return np.rot90(np.fliplr(original) if copy >= 4 else original, copy % 4)

    ds = shard_reader.make_dataset(tmp_path / "out" / "test.json", batch_size=16, is_training=False,
                                   preprocess_fn=lambda image, h, w: image, image_size=6, with_metadata=True)
    [(images, labels, meta)] = list(ds)
    seen = []
    for image, label, name, copy in zip(images.numpy(), labels.numpy(), meta["filename"].numpy(), meta["copy"].numpy()):
        name = name.decode()
        np.testing.assert_array_equal(image, expected(name, int(copy)))
        assert label == CLASSES.index(name.split("/")[0])
        seen.append((name, int(copy)))
    assert sorted(seen) == sorted((m[2], m[4]) for m in test["members"])
    # The copies are distinct images (the square's 8 symmetries of a random image).
    assert len({expected("benign/img0.png", c).tobytes() for c in range(8)}) == 8
    # Training reads its 8 copies per epoch, each turned likewise.
    train = shard_reader.make_dataset(tmp_path / "out" / "train.json", batch_size=1, is_training=True,
                                      preprocess_fn=lambda image, h, w: image, image_size=6, seed=0)
    got = sorted(image.numpy()[0].tobytes() for image, _ in train)
    assert got == sorted(expected("malignant/img3.png", c).tobytes() for c in range(8))
    # A copy listed twice would count twice: refused, as an image listed twice is.
    with pytest.raises(UserError, match="listed more than once in fold 0's test split"):
        shard_writer.write_split_indexes(pd.concat([table, table.iloc[:1]]), 0,
                                         tmp_path / "out" / "encoded" / "dataset" / "store.json", tmp_path / "again")


def test_decoding_once_decodes_each_copied_image_once(tmp_path):
    """The 8 copies of a training image share one decoded source (decoding them as 8 images would
    take 8 times the memory, or the local disk, of a paper run); the batches are those of decoding
    at every epoch, each copy turned likewise."""
    import tensorflow as tf

    _copies_written(tmp_path)
    index = tmp_path / "out" / "train.json"

    def as_is(image, h, w):
        return image

    every_epoch = [image.numpy()[0].tobytes() for image, _ in shard_reader.make_dataset(
        index, batch_size=1, is_training=True, preprocess_fn=as_is, image_size=6, seed=0)]
    graph = tf.Graph()
    with graph.as_default():
        decoded = shard_reader.DecodedImages(index, as_is, 6, 0, tmp_path / "spill")  # no memory: all on disk
        batches = tf.compat.v1.data.make_initializable_iterator(shard_reader.make_dataset(
            index, batch_size=1, is_training=True, preprocess_fn=as_is, image_size=6, seed=0, decoded=decoded))
        image = batches.get_next()[0]
    (tmp_path / "spill").mkdir()
    with tf.compat.v1.Session(graph=graph) as sess:
        in_memory, on_disk = sess.run(decoded.fill)
        sess.run(batches.initializer)
        once = [sess.run(image)[0].tobytes() for _ in every_epoch]
    assert len(list((tmp_path / "spill").iterdir())) == 1 and in_memory == 0
    assert on_disk == len(tf.io.serialize_tensor(np.zeros((6, 6, 3), np.uint8)).numpy())
    assert once == every_epoch and len(set(once)) == 8
