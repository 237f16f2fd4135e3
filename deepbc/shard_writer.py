"""Writing the TFRecord shards of one fold (atomic, balanced, deterministic) and their index JSON.

Layout of ``out_dir`` (``results/tfrecords/{run}/fold{k}``)::

    {split}-{i:05d}-of-{n:05d}.tfrecord   for split in train, val, test
    {split}.json                          the index: count, count_per_class, class_names, shards, encoding

Each record is a ``tf.train.Example`` with TF-Slim's keys (``image/encoded``, ``image/format``,
``image/class/label``, ``image/height``, ``image/width``) plus ``image/filename`` (path relative to
the dataset root), ``image/patient`` and ``image/magnification``; ``deepbc.shard_reader.FEATURES``
lists them with their types, for both sides.

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
import hashlib
import io
import logging
import math
import multiprocessing
from pathlib import Path

import numpy as np
import pandas as pd

from deepbc.atomic import atomic_path, write_json
from deepbc.errors import UserError
from deepbc.layout import SPLITS
from deepbc.logs import Progress
from deepbc.shard_reader import FEATURES, FORMATS

LOG = logging.getLogger(__name__)

# The schema's jpeg_quality range (tests/test_schema.py checks they agree): write_shards also runs
# outside the workflow (bench/), where no schema checks its arguments.
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
                 sha256: str | None = None, stain: dict | None = None) -> tuple:
    """Read one image file and return (encoded bytes, height, width, stain fallback) in ``image_format``.

    ``sha256``: the manifest's hash of the file; a file that no longer matches it is an error.
    An 8-bit RGB image already in the target format and not resized is stored as it is, without
    decoding (check_dataset decoded exactly these bytes); anything else is decoded by
    ``imageio`` (as check_dataset and predict_folder decode it) and re-encoded.
    ``stain``: stain normalization parameters (``deepbc.stain.fit``): the decoded image is
    normalised at full size (as predict_folder normalises it) before resizing and encoding; the
    fourth item is the fit's fallback on this image (``deepbc.stain.apply``), else None.
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
            if scale == 1.0 and not stain and _stored_as_is(im, data, image_format):
                return data, height, width, None
            imageio.load(im, lambda: io.BytesIO(data))
            if stain:
                from PIL import Image

                from deepbc import stain as stain_mod

                pixels, fallback = stain_mod.apply(imageio.to_rgb(im), stain)
                return *_encode(Image.fromarray(pixels, "RGB"), image_format, jpeg_quality, scale), fallback
            # Encoded inside the block: for an RGB image, rgb_image is im, which closing would empty.
            return *_encode(imageio.rgb_image(im), image_format, jpeg_quality, scale), None
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

    def feature(kind, v):
        if kind == "int64":
            return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(v)]))
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=[v]))

    values = {
        "image/encoded": encoded,
        "image/format": image_format.encode(),
        "image/class/label": row.label_index,
        "image/height": height,
        "image/width": width,
        "image/filename": str(row.path).encode(),
        "image/patient": str(row.patient).encode(),
        "image/magnification": str(row.magnification).encode(),
    }
    # Every feature the reader parses, typed as it parses it (one without a value here is a KeyError).
    # deterministic=True: protobuf otherwise orders the feature map by a per-process hash, so the
    # same shard would differ in bytes (and sha256) from one job to the next.
    example = tf.train.Example(features=tf.train.Features(
        feature={key: feature(kind, values[key]) for key, kind in FEATURES.items()}))
    return example.SerializeToString(deterministic=True)


def write_shards(splits_df: pd.DataFrame, fold: int, root, out_dir, images_per_shard: int = 256,
                 image_format: str = "jpeg", jpeg_quality: int = 95, max_shorter_side: int = 0,
                 seed: int = 42, workers: int = 1, stain: dict | None = None) -> dict[str, dict]:
    """Write the train/val/test shards of ``fold`` and their index JSONs; return the indexes by split.

    Every shard is written under a temporary name and renamed; the three index JSONs are written
    last (after removing any old ones first), so an interrupted run leaves no index to trust.
    ``root``: the folder the table's paths are relative to, or {dataset: folder} for a table with a
    ``dataset`` column (an external test, deepbc.splits.make_external_splits).
    ``stain``: stain normalization parameters applied to every image (``encode_image``), recorded
    in the index's encoding with the count of images per fallback (``stain_fallbacks``).
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
                "max_shorter_side": int(max_shorter_side), **({"stain": stain} if stain else {})}
    plans = {split: plan_shards(rows[rows["split"] == split], images_per_shard, seed, fold, split)
             for split in SPLITS}
    total = len(rows)
    LOG.info("fold %d: %d images (%s) -> %s as %s, %d per shard, %d worker(s)", fold, total,
             ", ".join(f"{s} {sum(map(len, p))}" for s, p in plans.items()), out_dir, encoding,
             images_per_shard, workers)
    progress = Progress(total, f"fold {fold} shards", unit="images")
    indexes = {}
    fallbacks = {split: {} for split in SPLITS}
    with _pool(workers) as pool:
        for split, shards in plans.items():
            names, hashes_written = [], []
            for i, shard in enumerate(shards):
                name = shard_name(split, i, len(shards))
                hashes = shard["sha256"] if "sha256" in shard else [None] * len(shard)
                jobs = [(f, image_format, jpeg_quality, max_shorter_side, h, stain)
                        for f, h in zip(shard["file"], hashes)]
                results = pool.map(_encode_star, jobs, chunksize=_CHUNK) if pool else map(_encode_star, jobs)
                with atomic_path(out_dir / name) as tmp:
                    with tf.io.TFRecordWriter(str(tmp)) as writer:
                        for row, (encoded, height, width, fallback) in zip(shard.itertuples(index=False), results):
                            writer.write(_example(encoded, image_format, row, height, width))
                            if fallback:
                                fallbacks[split][fallback] = fallbacks[split].get(fallback, 0) + 1
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
                **({"stain_fallbacks": dict(sorted(fallbacks[split].items()))} if stain else {}),
                "images_per_shard": int(images_per_shard),
                "seed": int(seed),
            }
    _remove_stale(out_dir, {n for idx in indexes.values() for n in idx["shards"]})
    for split in SPLITS:
        write_json(out_dir / f"{split}.json", indexes[split])
    for split in SPLITS:
        if fallbacks[split]:
            LOG.warning("fold %d %s: stain normalization fell back on %s image(s) (deepbc.stain): %s", fold, split,
                        sum(fallbacks[split].values()), fallbacks[split])
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
