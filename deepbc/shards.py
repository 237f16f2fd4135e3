"""TFRecord shards of one fold (atomic, balanced, deterministic), their index JSON, and the tf.data reader.

Layout of ``out_dir`` (``results/tfrecords/{run}/fold{k}``)::

    {split}-{i:05d}-of-{n:05d}.tfrecord   for split in train, val, test
    {split}.json                          the index: count, count_per_class, class_names, shards, encoding

Each record is a ``tf.train.Example`` with TF-Slim's keys (``image/encoded``, ``image/format``,
``image/class/label``, ``image/height``, ``image/width``) plus ``image/filename`` (path relative to
the dataset root), ``image/patient`` and ``image/magnification``.

Encodings (``image/format``): ``jpeg`` (default; see docs/shards.md for the measurements), ``png``
and ``raw`` (uint8 RGB pixels, row-major). An image already in the target format, 8-bit RGB and not
resized is stored byte for byte, without decoding; anything else is decoded by ``deepbc.imageio``
(16-bit and alpha images scaled and composited as documented there) and re-encoded with Pillow.
When the splits table carries the manifest's ``sha256``, every file is checked against it.

TensorFlow is imported inside the functions that need it, so that the encoding workers (separate
processes) start without it.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import hashlib
import io
import json
import logging
import math
import multiprocessing
import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from deepbc.atomic import atomic_path, write_json
from deepbc.layout import SPLITS
from deepbc.errors import UserError
from deepbc.logs import Progress

LOG = logging.getLogger(__name__)

# The schema's shards.format enum and jpeg_quality range (tests/test_schema.py checks they agree):
# write_shards also runs outside the workflow (bench/), where no schema checks its arguments.
FORMATS = ("jpeg", "png", "raw")
JPEG_QUALITY = (50, 100)
INDEX_VERSION = 1
# Images sent to a worker at a time: large enough to amortise inter-process overhead, small
# enough to keep the memory of in-flight encoded images bounded.
_CHUNK = 16


def shard_name(split: str, i: int, n: int) -> str:
    return f"{split}-{i:05d}-of-{n:05d}.tfrecord"


# --------------------------------------------------------------------------------------------
# Encoding (runs in worker processes: Pillow only)
# --------------------------------------------------------------------------------------------

def encode_image(path: str, image_format: str, jpeg_quality: int, max_shorter_side: int,
                 sha256: str | None = None) -> tuple[bytes, int, int]:
    """Read one image file and return (encoded bytes, height, width) in ``image_format``.

    ``sha256``: the manifest's hash of the file; a file that no longer matches it is an error.
    An 8-bit RGB image already in the target format and not resized is stored as it is, without
    decoding (check_dataset decoded exactly these bytes); anything else is decoded by
    ``imageio`` (as check_dataset and predict_folder decode it) and re-encoded.
    """
    from deepbc import imageio

    with open(path, "rb") as f:
        data = f.read()
    if sha256 and hashlib.sha256(data).hexdigest() != sha256:
        raise UserError("the file changed after the manifest was built (its sha256 differs)", path,
                        "rerun check_dataset (delete results/manifest/) so the file is verified again")
    try:
        with imageio.strict(), imageio.open_image(data) as im:
            width, height = im.size
            scale = 1.0
            if max_shorter_side and min(width, height) > max_shorter_side:
                scale = max_shorter_side / min(width, height)
            if scale == 1.0 and _stored_as_is(im, data, image_format):
                return data, height, width
            imageio.load(im, lambda: io.BytesIO(data))
            # Encoded inside the block: for an RGB image, rgb_image is im, which closing would empty.
            return _encode(imageio.rgb_image(im), image_format, jpeg_quality, scale)
    except imageio.Rejected as err:
        raise UserError(f"cannot decode image ({err.reason}: {err.detail})", path,
                        "rebuild the manifest (check_dataset verifies every file) and rerun") from err


def _encode(image, image_format: str, jpeg_quality: int, scale: float) -> tuple[bytes, int, int]:
    from PIL import Image

    if scale != 1.0:
        # Round so the shorter side is exactly max_shorter_side.
        size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        image = image.resize(size, Image.Resampling.LANCZOS)
    out = io.BytesIO()
    if image_format == "jpeg":
        image.save(out, format="JPEG", quality=jpeg_quality)
    elif image_format == "png":
        image.save(out, format="PNG")
    else:
        out.write(np.asarray(image, dtype=np.uint8).tobytes())
    return out.getvalue(), image.height, image.width


def _stored_as_is(im, data: bytes, image_format: str) -> bool:
    """Whether the reader's decoder gives exactly ``imageio``'s pixels from the file's own bytes."""
    if im.mode != "RGB" or (im.format or "").lower() != image_format:
        return False
    # A 16-bit RGB PNG is also mode RGB to Pillow; byte 24 is the IHDR bit depth.
    return image_format != "png" or data[24] == 8


def _encode_star(args):
    return encode_image(*args)


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------

def plan_shards(rows: pd.DataFrame, images_per_shard: int, seed: int, fold: int, split: str) -> list[pd.DataFrame]:
    """Shuffle the split's rows deterministically and deal them round-robin into balanced shards.

    The shuffle depends only on (seed, fold, split) and the rows sorted by path. Shard sizes differ
    by at most one.
    """
    rows = rows.sort_values("path", kind="stable").reset_index(drop=True)
    rng = np.random.default_rng([seed, fold, SPLITS.index(split)])
    rows = rows.iloc[rng.permutation(len(rows))].reset_index(drop=True)
    n = max(1, math.ceil(len(rows) / images_per_shard))
    return [rows.iloc[i::n].reset_index(drop=True) for i in range(n)]


def _example(encoded: bytes, image_format: str, row, height: int, width: int):
    import tensorflow as tf

    def b(v):
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=[v]))

    def i(v):
        return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(v)]))

    return tf.train.Example(features=tf.train.Features(feature={
        "image/encoded": b(encoded),
        "image/format": b(image_format.encode()),
        "image/class/label": i(row.label_index),
        "image/height": i(height),
        "image/width": i(width),
        "image/filename": b(str(row.path).encode()),
        "image/patient": b(str(row.patient).encode()),
        "image/magnification": b(str(row.magnification).encode()),
    })).SerializeToString()


def write_shards(splits_df: pd.DataFrame, fold: int, root, out_dir, images_per_shard: int = 256,
                 image_format: str = "jpeg", jpeg_quality: int = 95, max_shorter_side: int = 0,
                 seed: int = 42, workers: int = 1) -> dict[str, dict]:
    """Write the train/val/test shards of ``fold`` and their index JSONs; return the indexes by split.

    Every shard is written under a temporary name and renamed; the three index JSONs are written
    last (after removing any old ones first), so an interrupted run leaves no index to trust.
    ``root``: the folder the table's paths are relative to, or {dataset: folder} for a table with a
    ``dataset`` column (an external test, deepbc.splits.make_external_splits).
    """
    import tensorflow as tf

    out_dir = Path(out_dir)
    if image_format not in FORMATS:
        raise UserError(f"unknown image format {image_format!r}", "config key shards.format",
                        f"use one of {list(FORMATS)}")
    if images_per_shard < 1:
        raise UserError(f"images_per_shard must be >= 1, got {images_per_shard}", "config key shards.images_per_shard",
                        "use e.g. 256")
    if not JPEG_QUALITY[0] <= jpeg_quality <= JPEG_QUALITY[1]:
        raise UserError(f"jpeg_quality must be {JPEG_QUALITY[0]}..{JPEG_QUALITY[1]}, got {jpeg_quality}",
                        "config key shards.jpeg_quality", "use e.g. 95")
    needed = ["path", "patient", "magnification", "label", "label_index", "fold", "split"]
    missing = [c for c in needed if c not in splits_df.columns]
    if missing:
        raise UserError(f"the splits table has no column(s) {missing}", "write_shards input",
                        "pass a splits parquet written by make_splits.py")
    rows = splits_df[splits_df["fold"] == fold]
    if rows.empty:
        raise UserError(f"fold {fold} is not in the splits table (folds: {sorted(splits_df['fold'].unique())})",
                        "write_shards --fold", "use one of the folds listed")
    class_names = _class_names(splits_df)
    for split in SPLITS:
        if not (rows["split"] == split).any():
            raise UserError(f"fold {fold} has no {split} images", "write_shards input",
                            "remake the splits with more data or a smaller k")
    rows = rows.assign(file=_image_files(rows, root))
    absent = sorted(rows.loc[[not Path(f).is_file() for f in rows["file"]], "path"].unique())
    if absent:
        raise UserError(f"{len(absent)} image(s) of the splits are missing under the dataset root, "
                        f"e.g. {absent[:3]}", str(root),
                        "point --root at the dataset the manifest was built from")

    out_dir.mkdir(parents=True, exist_ok=True)
    # An old index could otherwise describe a mix of old and new shards if this run dies midway.
    for split in SPLITS:
        (out_dir / f"{split}.json").unlink(missing_ok=True)

    encoding = {"format": image_format, "jpeg_quality": int(jpeg_quality) if image_format == "jpeg" else None,
                "max_shorter_side": int(max_shorter_side)}
    plans = {split: plan_shards(rows[rows["split"] == split], images_per_shard, seed, fold, split)
             for split in SPLITS}
    total = len(rows)
    LOG.info("fold %d: %d images (%s) -> %s as %s, %d per shard, %d worker(s)", fold, total,
             ", ".join(f"{s} {sum(map(len, p))}" for s, p in plans.items()), out_dir, encoding,
             images_per_shard, workers)
    progress = Progress(total, f"fold {fold} shards", unit="images")
    indexes = {}
    with _pool(workers) as pool:
        for split, shards in plans.items():
            names, hashes_written = [], []
            for i, shard in enumerate(shards):
                name = shard_name(split, i, len(shards))
                hashes = shard["sha256"] if "sha256" in shard else [None] * len(shard)
                jobs = [(f, image_format, jpeg_quality, max_shorter_side, h)
                        for f, h in zip(shard["file"], hashes)]
                results = pool.map(_encode_star, jobs, chunksize=_CHUNK) if pool else map(_encode_star, jobs)
                with atomic_path(out_dir / name) as tmp:
                    with tf.io.TFRecordWriter(str(tmp)) as writer:
                        for row, (encoded, height, width) in zip(shard.itertuples(index=False), results):
                            writer.write(_example(encoded, image_format, row, height, width))
                            progress.update(1, split=split)
                names.append(name)
                hashes_written.append(_file_sha256(out_dir / name))
            split_rows = pd.concat(shards)
            counts = split_rows["label"].value_counts()
            indexes[split] = {
                "version": INDEX_VERSION,
                "split": split,
                "fold": int(fold),
                "protocol": str(split_rows["protocol"].iloc[0]) if "protocol" in split_rows else None,
                "count": int(len(split_rows)),
                "count_per_class": {c: int(counts.get(c, 0)) for c in class_names},
                "class_names": class_names,
                "num_classes": len(class_names),
                "patients": int(split_rows["patient"].nunique()),
                "shards": names,
                "shard_sizes": [int(len(s)) for s in shards],
                # Content hashes: a trainer's resumable state is bound to exactly these shards.
                "shard_sha256": hashes_written,
                "encoding": encoding,
                "images_per_shard": int(images_per_shard),
                "seed": int(seed),
            }
    _remove_stale(out_dir, {n for idx in indexes.values() for n in idx["shards"]})
    for split in SPLITS:
        write_json(out_dir / f"{split}.json", indexes[split])
    LOG.info("fold %d: wrote %s", fold, ", ".join(f"{s}: {idx['count']} images in {len(idx['shards'])} shard(s)"
                                                   for s, idx in indexes.items()))
    return indexes


def write_shards_file(splits_path, fold: int, root, out_dir, test_root=None, **settings) -> dict[str, dict]:
    """``write_shards`` on a splits parquet written by make_splits.py; ``test_root``: the root of an
    external test dataset (the test rows' ``dataset``)."""
    from deepbc.splits import dataset_roots, read_table

    table = read_table(splits_path, "splits table")
    if test_root:
        root = dataset_roots(table, root, test_root)
    return write_shards(table, fold, root, out_dir, **settings)


def _image_files(rows: pd.DataFrame, root) -> list[str]:
    """Each row's image file: under ``root``, or under the root of its ``dataset`` given {dataset: root}."""
    if not isinstance(root, dict):
        return [str(Path(root) / p) for p in rows["path"]]
    unknown = sorted(set(rows["dataset"]) - set(root))
    if unknown:
        raise UserError(f"no root folder given for dataset(s) {unknown} of the splits table", "write_shards input",
                        f"give a root for every dataset (given: {sorted(root)})")
    return [str(Path(root[d]) / p) for d, p in zip(rows["dataset"], rows["path"])]


def _file_sha256(path: Path) -> str:
    with open(path, "rb") as fh:  # streamed, as deepbc.manifest hashes images
        return hashlib.file_digest(fh, "sha256").hexdigest()


class _NoPool:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def _pool(workers: int):
    if workers <= 1:
        return _NoPool()
    # spawn, not fork: the parent has TensorFlow loaded, whose threads do not survive a fork.
    return concurrent.futures.ProcessPoolExecutor(max_workers=workers,
                                                  mp_context=multiprocessing.get_context("spawn"))


def _class_names(splits_df: pd.DataFrame) -> list[str]:
    pairs = splits_df[["label_index", "label"]].drop_duplicates().sort_values("label_index")
    if pairs["label_index"].duplicated().any() or pairs["label"].duplicated().any():
        raise UserError("label and label_index do not correspond one to one in the splits table",
                        "write_shards input", "remake the splits with make_splits.py")
    names = pairs["label"].astype(str).tolist()
    if pairs["label_index"].tolist() != list(range(len(names))):
        raise UserError(f"label_index values {pairs['label_index'].tolist()} are not 0..{len(names) - 1}",
                        "write_shards input", "remake the splits with make_splits.py")
    return names


def _remove_stale(out_dir: Path, keep: set[str]) -> None:
    """Drop shard files of an earlier run (e.g. another images_per_shard or a killed one) that no index lists."""
    leftovers = sorted(out_dir.glob(".*.tfrecord.*.tmp"))  # temporary files of a killed run
    for path in sorted(out_dir.glob("*.tfrecord")) + leftovers:
        if path.name not in keep:
            LOG.info("removing stale shard %s", path)
            path.unlink()


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------

def read_index(path) -> dict:
    """Load a ``{split}.json`` index and check it; ``paths`` (absolute shard paths) is added."""
    path = Path(path)
    if not path.is_file():
        raise UserError("shard index not found", str(path), "run the workflow's write_shards rule for this run and fold")
    try:
        index = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise UserError(f"shard index is not valid JSON: {err}", str(path), "delete it and rerun write_shards") from err
    keys = ["count", "count_per_class", "class_names", "shards", "encoding"]
    missing = [k for k in keys if k not in index]
    if missing:
        raise UserError(f"shard index lacks key(s) {missing}", str(path), "delete it and rerun write_shards")
    index["paths"] = [str(path.parent / name) for name in index["shards"]]
    absent = [p for p in index["paths"] if not os.path.isfile(p)]
    if absent:
        raise UserError(f"{len(absent)} shard(s) listed in the index are missing, e.g. {absent[0]}", str(path),
                        "delete the folder and rerun write_shards")
    if index["encoding"]["format"] not in FORMATS:
        raise UserError(f"unknown image format {index['encoding']['format']!r}", str(path),
                        f"rewrite the shards with one of {list(FORMATS)}")
    return index


def _features():
    import tensorflow as tf

    return {
        "image/encoded": tf.io.FixedLenFeature([], tf.string),
        "image/format": tf.io.FixedLenFeature([], tf.string),
        "image/class/label": tf.io.FixedLenFeature([], tf.int64),
        "image/height": tf.io.FixedLenFeature([], tf.int64),
        "image/width": tf.io.FixedLenFeature([], tf.int64),
        "image/filename": tf.io.FixedLenFeature([], tf.string),
        "image/patient": tf.io.FixedLenFeature([], tf.string),
        "image/magnification": tf.io.FixedLenFeature([], tf.string),
    }


def parse_example(serialized):
    """Parse one serialized Example into a dict of scalar tensors keyed as in the record."""
    import tensorflow as tf

    return tf.io.parse_single_example(serialized, _features())


def decode_jpeg(data, min_side: int | None = None):
    """Decode a JPEG to uint8 RGB, at the smallest of libjpeg's scales (1, 1/2, 1/4, 1/8) whose
    shorter side is still at least ``min_side`` (None: full size).

    Scaling happens inside the inverse DCT, so a reduced decode costs a fraction of a full one; for
    a network input much smaller than the stored image this is most of the reading time.
    """
    import tensorflow as tf

    if not min_side:
        return tf.io.decode_jpeg(data, channels=3)
    shape = tf.image.extract_jpeg_shape(data)
    shorter = tf.minimum(shape[0], shape[1])
    # libjpeg rounds scaled sizes up; the conditions hold for a prefix of the ratios.
    halvings = tf.add_n([tf.cast((shorter + r - 1) // r >= min_side, tf.int32) for r in (2, 4, 8)])
    return tf.switch_case(halvings, [lambda r=r: tf.io.decode_jpeg(data, channels=3, ratio=r) for r in (1, 2, 4, 8)])


def decode(features: dict, image_format: str, min_side: int | None = None):
    """The uint8 RGB image [height, width, 3] of parsed ``features`` stored as ``image_format``.

    ``min_side``: a JPEG may be decoded at a reduced scale, keeping its shorter side >= min_side.
    """
    import tensorflow as tf

    encoded = features["image/encoded"]
    if image_format == "jpeg":
        image = decode_jpeg(encoded, min_side)
    elif image_format == "png":
        image = tf.io.decode_png(encoded, channels=3, dtype=tf.uint8)
    else:
        shape = tf.stack([features["image/height"], features["image/width"], 3])
        image = tf.reshape(tf.io.decode_raw(encoded, tf.uint8), tf.cast(shape, tf.int32))
    image.set_shape([None, None, 3])
    return image


def default_preprocess(image, height: int, width: int, seed=None):
    """Cast to float32 (0..255) and resize to (height, width); no cropping, no augmentation (``seed`` unused)."""
    import tensorflow as tf

    return tf.image.resize(tf.cast(image, tf.float32), [height, width])


# Each use of the run seed in the training stream has its own tag, so no two uses share a key.
_STREAM_TAGS = {"file_order": 1, "shuffle": 2, "augment": 3}


def stream_key(seed, use: str, counter):
    """The stateless key (int64 [2]) of one use of randomness in the training stream: ``use`` is
    "file_order" or "shuffle" (``counter``: the epoch) or "augment" (``counter``: the element's
    position in the stream); keys of different uses never coincide by construction of their tags."""
    import tensorflow as tf

    base = tf.constant([int(seed), _STREAM_TAGS[use]], tf.int64)
    return tf.random.experimental.stateless_fold_in(base, tf.cast(counter, tf.int64))


def make_dataset(index_json_path, batch_size: int, is_training: bool, preprocess_fn=None, image_size: int = 224,
                 shuffle_buffer: int = 1024, seed: int = 0, num_parallel_calls=None,
                 repeat: bool = False, with_metadata: bool = False, first_record: int = 0,
                 deterministic: bool = True):
    """A tf.data pipeline over the shards of one index JSON.

    Yields ``(images, labels)`` batches (float images from ``preprocess_fn(image_uint8, image_size,
    image_size[, seed])``, int64 labels), or ``(images, labels, metadata)`` with ``with_metadata``,
    where metadata is a dict of string tensors ``filename``, ``patient``, ``magnification``.

    Training: a stream of epochs (one, or endless with ``repeat``); in each, the shard order and
    the records (buffer ``shuffle_buffer``) are shuffled by seeds that depend only on (``seed``,
    epoch), and each image gets a stateless augmentation seed from (``seed``, its position in the
    stream), each use with its own key (:func:`stream_key`), so the stream is the same whatever the
    parallelism. ``first_record`` starts the stream that many records in (a resumed run passes the records its restored steps consumed);
    the skipped records are read but not decoded. The last partial batch is dropped.
    Evaluation: index order, every image once per pass.
    ``deterministic=False`` lets parallel stages deliver out of order (faster, not reproducible).
    Works eagerly and in tf.compat.v1 graph mode (one-shot or initializable iterators).
    """
    import inspect

    import tensorflow as tf

    index = read_index(index_json_path)
    count = index["count"]
    if count == 0:
        raise UserError("the shard index lists no images", str(index_json_path), "remake the splits and shards")
    autotune = tf.data.AUTOTUNE
    calls = autotune if num_parallel_calls is None else num_parallel_calls
    preprocess = preprocess_fn or default_preprocess
    takes_seed = "seed" in inspect.signature(preprocess).parameters
    image_format = index["encoding"]["format"]
    # A preprocessing that says how large a source it needs lets JPEGs decode at a reduced scale.
    needs = getattr(preprocess, "min_source_side", None)
    min_side = needs(image_size, image_size) if needs else None
    paths = index["paths"]
    cycle = min(len(paths), 8)
    # tf.data refuses more parallel calls than the cycle length (e.g. 2 threads over 1 shard).
    interleave_calls = calls if calls == autotune else min(calls, cycle)

    def read(files):
        return files.interleave(tf.data.TFRecordDataset, cycle_length=cycle, num_parallel_calls=interleave_calls,
                                deterministic=deterministic)

    if is_training:
        def epoch_records(epoch):
            order = tf.argsort(tf.random.stateless_uniform([len(paths)], stream_key(seed, "file_order", epoch)))
            files = tf.data.Dataset.from_tensor_slices(tf.gather(tf.constant(paths), order))
            # Shuffle serialized records, not decoded images: a tenth of the memory per buffered element.
            shuffle_seed = tf.random.stateless_uniform([], stream_key(seed, "shuffle", epoch), minval=None,
                                                       maxval=None, dtype=tf.int64)
            records = read(files).shuffle(shuffle_buffer, seed=shuffle_seed, reshuffle_each_iteration=False)
            return records.enumerate().map(lambda i, record: (stream_key(seed, "augment", epoch * count + i), record))

        first_epoch, offset = divmod(int(first_record), count)
        last_epoch = 2**62 if repeat else first_epoch + 1
        records = tf.data.Dataset.range(first_epoch, last_epoch).flat_map(epoch_records).skip(offset)
    else:
        records = read(tf.data.Dataset.from_tensor_slices(paths))
        records = records.map(lambda record: (tf.zeros([2], tf.int64), record))
        if repeat:
            records = records.repeat()

    def load(element_seed, serialized):
        features = parse_example(serialized)
        image = decode(features, image_format, min_side)
        if takes_seed:
            image = preprocess(image, image_size, image_size, seed=element_seed)
        else:
            image = preprocess(image, image_size, image_size)
        label = features["image/class/label"]
        if with_metadata:
            return image, label, {"filename": features["image/filename"], "patient": features["image/patient"],
                                  "magnification": features["image/magnification"]}
        return image, label

    dataset = records.map(load, num_parallel_calls=calls, deterministic=deterministic)
    dataset = dataset.batch(batch_size, drop_remainder=is_training)
    return dataset.prefetch(autotune)


def find_corrupt_shards(index_paths) -> list[tuple[str, str]]:
    """(shard path, reader's message) of every shard of these indexes that does not read to the end."""
    import tensorflow as tf

    corrupt = []
    for index_path in index_paths:
        for path in read_index(index_path)["paths"]:
            try:
                for _ in tf.compat.v1.io.tf_record_iterator(path):
                    pass
            except tf.errors.DataLossError as err:
                corrupt.append((path, err.message))
    return corrupt


@contextlib.contextmanager
def naming_corrupt_shards(index_paths):
    """Turn TensorFlow's 'corrupted record at N', which names no file, into a UserError naming the
    shard and how to rebuild it."""
    try:
        yield
    except Exception as err:
        # Without TensorFlow imported, the error cannot be one of its own.
        tf = sys.modules.get("tensorflow")
        if tf is None or not isinstance(err, tf.errors.DataLossError):
            raise
        corrupt = find_corrupt_shards(index_paths)
        if not corrupt:
            raise
        path, detail = corrupt[0]
        others = f" (and {len(corrupt) - 1} more shard(s) of this fold)" if len(corrupt) > 1 else ""
        folder = Path(path).parent
        raise UserError(f"corrupt shard: {detail}{others}", path,
                        f"delete the folder {folder}/ and rerun the workflow, which rebuilds its shards "
                        "from the dataset") from err
