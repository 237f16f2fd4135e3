"""Encoding each image of a dataset once into a store of TFRecord shards, and the per-run indexes
that select a fold's split from it (both atomic and deterministic).

The store (``results/encoded/{dataset}``, rule encode_dataset, :func:`encode_store`)::

    shard-{i:05d}-of-{n:05d}.tfrecord     every usable image of the manifest, encoded once
    store.json                            its index: encoding, shards, their sizes and sha256,
                                          and each record's shard, position and file sha256

A split's index (``results/tfrecords/{run}/fold{k}/{split}.json``, rule write_shards,
:func:`write_split_indexes`; no TensorFlow) lists the store shards holding at least one of the
split's images (paths relative to the index, their sha256) and the members: which record of which
listed shard, its file name and its label index in this task. ``deepbc.shards.reader`` reads the
listed shards and keeps the members only, with their labels; docs/shards.md has the keys. Under the
augment-then-split protocol a member is an image copy: it carries its copy id (deepbc.data.runs.COPIES)
as a fifth item, and a store shard is listed once per copy id among its members, so that every
member is still one record of one listed shard (the reader then turns the decoded image by the copy).

Each record is a ``tf.train.Example`` with TF-Slim's keys (``image/encoded``, ``image/format``,
``image/height``, ``image/width``) plus ``image/filename`` (path relative to the dataset root),
``image/patient`` and ``image/magnification``, and no label: a store serves every task of its
dataset. ``deepbc.shards.records`` holds the format (features, encodings) for both sides.

Encodings (``image/format``): ``jpeg`` (default; see docs/shards.md for the measurements), ``png``
and ``raw`` (uint8 RGB pixels, row-major). An image already in the target format, 8-bit RGB and not
resized is stored byte for byte, without decoding; anything else is decoded by ``deepbc.data.imageio``
(16-bit and alpha images scaled and composited as documented there) and re-encoded with Pillow.
When the table carries the manifest's ``sha256``, every file is checked against it.

TensorFlow is imported inside the functions that need it, so that the encoding workers (separate
processes) and the index writer start without it.
"""

from __future__ import annotations

import collections
import concurrent.futures
import hashlib
import io
import logging
import math
import multiprocessing
import os
from pathlib import Path

import numpy as np
import pandas as pd

from deepbc.data.runs import COPY, SPLITS
from deepbc.jobs import schema
from deepbc.jobs.atomic import atomic_path, write_json
from deepbc.jobs.errors import UserError, delete_and_rerun, rebuild_store
from deepbc.jobs.logs import Progress
from deepbc.shards import records
from deepbc.shards.records import STORE_INDEX

LOG = logging.getLogger(__name__)

# 2: the split's index lists store shards and members (1: per-run shards, labels in the records).
INDEX_VERSION = 2
STORE_VERSION = 1
# Images sent to a worker at a time: large enough to amortise inter-process overhead, small
# enough to keep the memory of in-flight encoded images bounded.
_CHUNK = 16


def store_shard_name(i: int, n: int) -> str:
    return f"shard-{i:05d}-of-{n:05d}.tfrecord"


# --------------------------------------------------------------------------------------------
# Encoding (runs in worker processes: Pillow only)
# --------------------------------------------------------------------------------------------

_VERIFY_AGAIN = "rebuild the manifest with check_dataset.py, which verifies every file again, then encode again"


class ChangedSinceManifest(UserError):
    """An image file that is no longer what check_dataset verified (other bytes, or undecodable)."""


def encode_image(path: str, image_format: str, jpeg_quality: int, max_shorter_side: int,
                 sha256: str | None = None, stain: dict | None = None) -> tuple:
    """Read one image file and return (encoded bytes, height, width, stain fallback) in ``image_format``.

    ``sha256``: the manifest's hash of the file; a file that no longer matches it is an error.
    An 8-bit RGB image already in the target format and not resized is stored as it is, without
    decoding (check_dataset decoded exactly these bytes); anything else is decoded by
    ``imageio`` (as check_dataset and predict_folder decode it) and re-encoded.
    ``stain``: stain normalization parameters (``deepbc.shards.stain.fit``): the decoded image is
    normalised at full size (as predict_folder normalises it) before resizing and encoding; the
    fourth item is the fit's fallback on this image (``deepbc.shards.stain.apply``), else None.
    """
    from deepbc.data import imageio

    with open(path, "rb") as f:
        data = f.read()
    if sha256 and hashlib.sha256(data).hexdigest() != sha256:
        raise ChangedSinceManifest("the file changed after the manifest was built (its sha256 differs)", path,
                                   _VERIFY_AGAIN)
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

                from deepbc.shards import stain as stain_mod

                pixels, fallback = stain_mod.apply(imageio.to_rgb(im), stain)
                return *records.encode(Image.fromarray(pixels, "RGB"), image_format, jpeg_quality, scale), fallback
            # Encoded inside the block: for an RGB image, rgb_image is im, which closing would empty.
            return *records.encode(imageio.rgb_image(im), image_format, jpeg_quality, scale), None
    except imageio.Rejected as err:
        raise ChangedSinceManifest(f"cannot decode image ({err.reason}: {err.detail})", path, _VERIFY_AGAIN) from err


def _stored_as_is(im, data: bytes, image_format: str) -> bool:
    """Whether the reader's decoder gives exactly ``imageio``'s pixels from the file's own bytes."""
    if im.mode != "RGB" or (im.format or "").lower() != image_format:
        return False
    # A 16-bit RGB PNG is also mode RGB to Pillow; byte 24 is the IHDR bit depth.
    return image_format != "png" or data[24] == 8


def _encode_job(job):
    path, sha256, encode_kwargs = job
    return encode_image(path, sha256=sha256, **encode_kwargs)


# --------------------------------------------------------------------------------------------
# The store: every image of a dataset, encoded once
# --------------------------------------------------------------------------------------------

def plan_shards(rows: pd.DataFrame, images_per_shard: int, seed: int) -> list[pd.DataFrame]:
    """Shuffle the rows deterministically and deal them round-robin into balanced shards, each
    magnification into shards of its own.

    With several values in a ``magnification`` column, each magnification's rows are shuffled and
    dealt into ``ceil(n_mag / images_per_shard)`` shards of their own (magnifications in sorted
    order): a per-magnification run then reads only its magnification's shards instead of about
    four times its members. Rows with one magnification (or none, e.g. TMA) form one group. A
    group's shuffle depends only on ``seed`` and its rows sorted by path; its shard sizes differ by
    at most one. Shuffling a whole group spreads every split of every task evenly over its shards.
    """
    if "magnification" in rows and rows["magnification"].nunique() > 1:
        groups = [group for _, group in rows.groupby(rows["magnification"].astype(str), sort=True)]
    else:
        groups = [rows]
    shards = []
    for group in groups:
        group = group.sort_values("path", kind="stable").reset_index(drop=True)
        # A fresh generator per group: one magnification's deal does not depend on the others.
        rng = np.random.default_rng([seed])
        group = group.iloc[rng.permutation(len(group))].reset_index(drop=True)
        n = max(1, math.ceil(len(group) / images_per_shard))
        shards += [group.iloc[i::n].reset_index(drop=True) for i in range(n)]
    return shards


def encode_store(table: pd.DataFrame, root, out_dir, shards: dict | None = None, seed: int = 42, workers: int = 1,
                 stain: dict | None = None) -> dict:
    """Encode every image of ``table`` (a manifest: path, patient, magnification, sha256) once into
    the store ``out_dir``: shards, then ``store.json``; return the store index.

    ``shards``: the config section shards, whole or in part (the schema's defaults fill the rest and
    check it: the workflow, benchmarks and tests encode with the same defaults).

    ``stain``: stain normalization parameters (``deepbc.shards.stain.fit``) applied to every image
    (``encode_image``); they are part of the encoding, and the store counts the images per
    fallback (``stain_fallbacks``).

    Every shard is written under a temporary name and renamed; ``store.json`` is removed first and
    written last, so an interrupted run leaves no index to trust.
    """
    import tensorflow as tf

    out_dir = Path(out_dir)
    shards = schema.fill(shards, "/properties/shards")
    images_per_shard, image_format = shards["images_per_shard"], shards["format"]
    jpeg_quality, max_shorter_side = shards["jpeg_quality"], shards["max_shorter_side"]
    needed = ["path", "patient", "magnification"]
    missing = [c for c in needed if c not in table.columns]
    if missing:
        raise UserError(f"the manifest has no column(s) {missing}", "encode_dataset input",
                        "pass a manifest written by check_dataset.py")
    rows = table.drop_duplicates("path").reset_index(drop=True)
    if rows.empty:
        raise UserError("the manifest lists no image", "encode_dataset input", "rebuild it with check_dataset.py")
    rows = rows.assign(file=[str(Path(root) / p) for p in rows["path"]])
    absent = sorted(rows.loc[[not Path(f).is_file() for f in rows["file"]], "path"])
    if absent:
        raise UserError(f"{len(absent)} image(s) of the manifest are missing under the dataset root, "
                        f"e.g. {absent[:3]}", str(root), "point --root at the dataset the manifest was built from")

    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / STORE_INDEX).unlink(missing_ok=True)
    encoding = {"format": image_format, "jpeg_quality": int(jpeg_quality) if image_format == "jpeg" else None,
                "max_shorter_side": int(max_shorter_side), **({"stain": stain} if stain else {})}
    # encode_image's keyword arguments, one dict from the encoding settings to every worker.
    encode_kwargs = {"image_format": image_format, "jpeg_quality": int(jpeg_quality),
                     "max_shorter_side": int(max_shorter_side), "stain": stain}
    planned = plan_shards(rows, images_per_shard, seed)
    LOG.info("%d images -> %s as %s, %d shard(s) of <= %d, %d worker(s)", len(rows), out_dir, encoding,
             len(planned), images_per_shard, workers)
    progress = Progress(len(rows), "encoded images", unit="images")
    names, hashes_written, placed, fallbacks = [], [], {}, {}
    with _pool(workers) as pool:
        for i, shard in enumerate(planned):
            name = store_shard_name(i, len(planned))
            hashes = shard["sha256"] if "sha256" in shard else [None] * len(shard)
            jobs = [(f, h, encode_kwargs) for f, h in zip(shard["file"], hashes)]
            results = pool.map(_encode_job, jobs, chunksize=_CHUNK) if pool else map(_encode_job, jobs)
            with atomic_path(out_dir / name) as tmp:
                with tf.io.TFRecordWriter(str(tmp)) as writer:
                    for position, (row, (encoded, height, width, fallback)) in enumerate(
                            zip(shard.itertuples(index=False), results)):
                        writer.write(records.example(encoded, image_format, row, height, width))
                        if fallback:
                            fallbacks[str(row.path)] = fallback
                        placed[str(row.path)] = [i, position, getattr(row, "sha256", None)]
                        progress.update(1)
            names.append(name)
            hashes_written.append(_file_sha256(out_dir / name))
    store = {
        "version": STORE_VERSION,
        "count": len(rows),
        "shards": names,
        "shard_sizes": [int(len(s)) for s in planned],
        "shard_sha256": hashes_written,
        "encoding": encoding,
        # path -> the stain fallback taken on it (deepbc.shards.stain.apply), for the images that took one.
        **({"stain_fallbacks": dict(sorted(fallbacks.items()))} if stain else {}),
        "images_per_shard": int(images_per_shard),
        "seed": int(seed),
        # path -> [shard number, position in the shard, the file's sha256 when encoded]
        "records": dict(sorted(placed.items())),
    }
    _remove_stale(out_dir, set(names))
    write_json(out_dir / STORE_INDEX, store)
    if fallbacks:
        LOG.warning("stain normalization fell back on %d image(s) (deepbc.shards.stain): %s", len(fallbacks),
                    _fallback_counts(fallbacks.values()))
    LOG.info("wrote %d images in %d shard(s), %.1f MB", len(rows), len(names),
             sum((out_dir / n).stat().st_size for n in names) / 1e6)
    return store


def encode_store_file(manifest_path, root, out_dir, **options) -> dict:
    """``encode_store`` on a manifest parquet written by check_dataset.py."""
    from deepbc.data.splits import read_table

    try:
        return encode_store(read_table(manifest_path, "manifest"), root, out_dir, **options)
    except ChangedSinceManifest as err:
        raise UserError(err.what, err.where, delete_and_rerun(
            manifest_path, remakes="check_dataset verifies the dataset's files again")) from err


# --------------------------------------------------------------------------------------------
# A fold's split indexes: which store records, with which labels (no TensorFlow)
# --------------------------------------------------------------------------------------------

def write_split_indexes(splits_df: pd.DataFrame, fold: int, stores, out_dir) -> dict[str, dict]:
    """Write the train/val/test index JSONs of ``fold`` into ``out_dir``; return them by split.

    ``stores``: the ``store.json`` of the table's dataset, or {dataset: store.json} for a table
    with a ``dataset`` column (an external test, deepbc.data.splits.make_external_splits). Each image of
    the split must be in its store with the manifest's sha256 (the store is then of this manifest).
    The old index JSONs are removed first and the new ones written together at the end.
    """
    out_dir = Path(out_dir)
    needed = ["path", "patient", "label", "label_index", "fold", "split"]
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
    if isinstance(stores, dict):
        if "dataset" not in rows:
            raise UserError("stores given by dataset but the splits table has no dataset column",
                            "write_shards input", "pass the one store of the table's dataset")
        unknown = sorted(set(rows["dataset"]) - set(stores))
        if unknown:
            raise UserError(f"no encoded store given for dataset(s) {unknown} of the splits table",
                            "write_shards input", f"give a store for every dataset (given: {sorted(stores)})")
        store_of = list(rows["dataset"])
    else:
        stores, store_of = {None: stores}, [None] * len(rows)
    loaded = {d: records.read_store(p) for d, p in stores.items()}

    out_dir.mkdir(parents=True, exist_ok=True)
    for split in SPLITS:
        (out_dir / f"{split}.json").unlink(missing_ok=True)
    rows = rows.assign(store=store_of)
    # Image copies (the augment-then-split protocol): a member is (path, copy).
    copied = COPY in rows.columns
    key = ["path", COPY] if copied else ["path"]
    indexes = {}
    for split in SPLITS:
        split_rows = rows[rows["split"] == split].sort_values(key, kind="stable")
        # Checked here too, not only by deepbc.data.splits: a twice-listed image would count twice.
        twice = sorted(set(split_rows.loc[split_rows.duplicated(key), "path"]))
        if twice:
            raise UserError(f"{len(twice)} image(s) are listed more than once in fold {fold}'s {split} split, "
                            f"e.g. {twice[:3]}", "write_shards input (splits table)",
                            "remake the splits with make_splits.py")
        datasets = split_rows["store"].unique()
        if len(datasets) != 1:
            raise UserError(f"fold {fold}'s {split} split mixes datasets {sorted(map(str, datasets))}",
                            "write_shards input", "remake the splits with make_splits.py")
        dataset = datasets[0]
        indexes[split] = _split_index(split_rows, split, fold, class_names, loaded[dataset],
                                      Path(stores[dataset]), out_dir)
    _remove_stale(out_dir, set())  # per-run shards of the design before the store: now unread
    for split in SPLITS:
        write_json(out_dir / f"{split}.json", indexes[split])
    LOG.info("fold %d: %s", fold, ", ".join(f"{s}: {idx['count']} images in {len(idx['shards'])} store shard(s)"
                                            for s, idx in indexes.items()))
    return indexes


def _split_index(rows: pd.DataFrame, split: str, fold: int, class_names: list[str], store: dict, store_path: Path,
                 out_dir: Path) -> dict:
    records = store["records"]
    absent = [p for p in rows["path"] if p not in records]
    if absent:
        raise UserError(f"{len(absent)} image(s) of fold {fold}'s {split} split are not in the encoded store, "
                        f"e.g. {absent[:3]}", str(store_path), rebuild_store(store_path.parent))
    if "sha256" in rows:
        changed = [p for p, h in zip(rows["path"], rows["sha256"]) if records[p][2] not in (None, h)]
        if changed:
            raise UserError(f"{len(changed)} image(s) were encoded from other bytes than the manifest's, "
                            f"e.g. {changed[:3]}", str(store_path), rebuild_store(store_path.parent))
    # A slot: a store shard read for one copy id (0, the image as stored, without copies).
    copied = COPY in rows.columns
    copies = rows[COPY].astype(int) if copied else [0] * len(rows)
    placed = sorted(((records[p][0], copy), records[p][1], p, int(label))
                    for p, label, copy in zip(rows["path"], rows["label_index"], copies))
    slots = sorted({s for s, *_ in placed})
    slot = {s: k for k, s in enumerate(slots)}
    listed = [shard for shard, _ in slots]
    counts = rows["label"].value_counts()
    rel = os.path.relpath(store_path.parent, out_dir)
    return {
        "version": INDEX_VERSION,
        "split": split,
        "fold": int(fold),
        "protocol": str(rows["protocol"].iloc[0]) if "protocol" in rows else None,
        "count": int(len(rows)),
        "count_per_class": {c: int(counts.get(c, 0)) for c in class_names},
        "class_names": class_names,
        "num_classes": len(class_names),
        "patients": int(rows["patient"].nunique()),
        "store": f"{rel}/{STORE_INDEX}",
        # The store shards holding a member, relative to this index; the readers read only these.
        "shards": [f"{rel}/{store['shards'][s]}" for s in listed],
        "shard_sizes": [sum(1 for s, *_ in placed if s == listed_slot) for listed_slot in slots],
        "shard_records": [int(store["shard_sizes"][s]) for s in listed],
        # Content hashes: a trainer's resumable state is bound to exactly these shards.
        "shard_sha256": [store["shard_sha256"][s] for s in listed],
        "encoding": store["encoding"],
        # fallback -> the split's images that took it (docs/methods.md, "Stain normalization").
        **({"stain_fallbacks": _fallback_counts(store["stain_fallbacks"][p] for p in rows["path"]
                                                if p in store["stain_fallbacks"])}
           if "stain_fallbacks" in store else {}),
        "images_per_shard": int(store["images_per_shard"]),
        "seed": int(store["seed"]),
        # In reading order: [listed shard, record position in it, file name, label index(, copy id)].
        "members": [[slot[s], position, path, label, *([s[1]] if copied else [])]
                    for s, position, path, label in placed],
    }


def write_split_indexes_file(splits_path, fold: int, store, out_dir, test_store=None) -> dict[str, dict]:
    """``write_split_indexes`` on a splits parquet written by make_splits.py; ``test_store``: the
    store of an external test dataset (the test rows' ``dataset``)."""
    from deepbc.data.splits import by_dataset, read_table

    table = read_table(splits_path, "splits table")
    if test_store:
        store = by_dataset(table, store, test_store)
    return write_split_indexes(table, fold, store, out_dir)


def write_shards(splits_df: pd.DataFrame, fold: int, root, out_dir, store_dir=None, workers: int = 1,
                 **options) -> dict[str, dict]:
    """Both steps at once, outside the workflow (tests, benchmarks): encode the table's images into
    a store per dataset under ``store_dir`` (default ``out_dir/encoded/{dataset}``), then write the
    fold's indexes into ``out_dir``. ``root``: as for the table's paths, or {dataset: root}.
    ``options``: :func:`encode_store`'s (``shards``, ``seed``, ``stain``)."""
    store_dir = Path(store_dir) if store_dir else Path(out_dir) / "encoded"
    if isinstance(root, dict):
        stores = {}
        for dataset, rows in splits_df.groupby("dataset", sort=True):
            if dataset not in root:
                raise UserError(f"no root folder given for dataset {dataset!r} of the splits table",
                                "write_shards input", f"give a root for every dataset (given: {sorted(root)})")
            encode_store(rows, root[dataset], store_dir / dataset, workers=workers, **options)
            stores[dataset] = store_dir / dataset / STORE_INDEX
    else:
        encode_store(splits_df, root, store_dir / "dataset", workers=workers, **options)
        stores = store_dir / "dataset" / STORE_INDEX
    return write_split_indexes(splits_df, fold, stores, out_dir)


def _fallback_counts(fallbacks) -> dict[str, int]:
    return dict(sorted(collections.Counter(fallbacks).items()))


def _file_sha256(path: Path) -> str:
    with open(path, "rb") as fh:  # streamed, as deepbc.data.manifest hashes images
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
