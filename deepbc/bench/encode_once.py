"""Encoding each image once per dataset against once per run x fold x split, at config/paper.yaml scale.

All BreakHis runs and folds of config/paper.yaml over 7,909 BreakHis-sized (700x460) synthetic
PNGs in the real BreakHis layout (``BreaKHis_v1_filelist.txt``), each design as the workflow runs it
(every job its own process, so start-up counts):

- ``old``: the design before the store: one write_shards job per run x fold decoding, checking and
  re-encoding every image of the fold into its own shards (a faithful copy of that loop,
  :func:`old_write_shards`, kept here only as the baseline). The whole takes ~14 min on 2 cores, so
  a sample of complete run x fold jobs is timed and scaled by the number of images encoded in all
  run x folds (counted exactly from the splits);
- ``new``: encode_dataset once (every usable image of the manifest), then write_shards for every
  run x fold (index JSONs only, no TensorFlow): all of it, timed for real.

Then training reads: one fold's train split through ``shard_reader.make_dataset`` (224 px, the
network's training preprocessing, shuffle, decode included) from the old per-run shards and from
the store through the new index, alternating in ``rounds`` so both see the same machine load.

The synthetic images are cached in ``images_dir``: 32 images painted by ``deepbc.data.synthetic_he``,
each file one of them rolled by a per-file offset (so every file has its own bytes and sha256),
saved as PNG (zlib level 1, ~0.65 MB each; BreakHis' are ~0.5 MB); the manifest (check_dataset) and splits (make_splits) are cached beside them.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import logging
import math
import multiprocessing
import shutil
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from deepbc.bench import common
from deepbc.bench.sharding import listing

LOG = logging.getLogger("deepbc.bench.encode_once")
REPO = Path(__file__).resolve().parents[2]
BASES = 32


# --------------------------------------------------------------------------------------------
# Inputs: images, manifest, the paper config's BreakHis splits
# --------------------------------------------------------------------------------------------

def _write_rolled(job) -> None:
    from PIL import Image

    path, base_file, i = job
    base = np.load(base_file)
    h, w = base.shape[:2]
    image = np.roll(base, ((i * 37) % h, (i * 101) % w), axis=(0, 1))
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    # Level 1: a third of the default's time to write, 10% larger; decoding costs about the same.
    Image.fromarray(image).save(path, format="PNG", compress_level=1)


def _paint(job) -> None:
    base_file, seed, i = job
    np.save(base_file, common.he_image(seed, i))


def prepare_images(images_dir: Path, filelist: Path, seed: int, workers: int, every: int = 1) -> tuple[Path, int]:
    rels, same_as = listing(filelist, every)
    root = images_dir / "BreaKHis_v1"
    done = images_dir / f".complete-{len(rels)}-{seed}"
    if not done.is_file():
        LOG.info("drawing %d base images and writing %d PNGs under %s", BASES, len(rels), root)
        shutil.rmtree(root, ignore_errors=True)
        bases = images_dir / "bases"
        bases.mkdir(parents=True, exist_ok=True)
        files = [bases / f"{i}.npy" for i in range(BASES)]
        drawn = [p for p in rels if p not in same_as]
        with concurrent.futures.ProcessPoolExecutor(workers) as pool:
            list(pool.map(_paint, [(f, seed, i) for i, f in enumerate(files)]))
            list(pool.map(_write_rolled, [(root / p, files[i % BASES], i) for i, p in enumerate(drawn)],
                          chunksize=16))
        for path, original in same_as.items():
            (root / path).parent.mkdir(parents=True, exist_ok=True)
            (root / path).write_bytes((root / original).read_bytes())
        done.touch()
    return root, len(rels)


def paper_runs(images_dir: Path, root: Path, seed: int, workers: int) -> tuple[Path, dict[str, Path], dict]:
    """The manifest and, for every BreakHis run of config/paper.yaml, its splits parquet."""
    import yaml

    from deepbc.data import manifest, splits
    from deepbc.data.runs import run_name
    from deepbc.data.tasks import Task
    from deepbc.jobs.schema import fill
    from deepbc.workflow import config as wfconfig

    config = yaml.safe_load((REPO / "config" / "paper.yaml").read_text())
    config["splits"] = fill(config.get("splits"), "/properties/splits")
    manifest_path = images_dir / "breakhis.parquet"
    if not manifest_path.is_file():
        LOG.info("check_dataset over %s", root)
        manifest.check_dataset("breakhis", "breakhis", root.parent, manifest_path, images_dir / "rejects.csv",
                               workers=workers)
    tasks = config["task_definitions"]
    runs = {}
    for task_name in config["tasks"]:
        spec = tasks[task_name]
        if spec["dataset"] != "breakhis":
            continue
        # The runs of the design this compares with, which had no augment-then-split protocol (its
        # indexes list copies of the store's records: nothing more to encode).
        for protocol in [p for p in spec.get("protocols", ["patient"]) if p != "augmented_image"]:
            run = run_name(task_name, protocol)
            out = images_dir / "splits" / f"{run}.parquet"
            if not out.is_file():
                out.parent.mkdir(exist_ok=True)
                settings = splits.SplitSettings.from_config(wfconfig.split_settings(config, task_name))
                splits.build_splits_file(manifest_path, Task.from_config(task_name, spec), protocol, settings, seed,
                                         out)
            runs[run] = out
    return manifest_path, runs, config["shards"]


# --------------------------------------------------------------------------------------------
# The old design, kept only as the baseline: write_shards as it was before the store
# --------------------------------------------------------------------------------------------

def _old_plan(rows: pd.DataFrame, images_per_shard: int, seed: int, fold: int, split: str) -> list[pd.DataFrame]:
    from deepbc.data.runs import SPLITS

    rows = rows.sort_values("path", kind="stable").reset_index(drop=True)
    rng = np.random.default_rng([seed, fold, SPLITS.index(split)])
    rows = rows.iloc[rng.permutation(len(rows))].reset_index(drop=True)
    n = max(1, math.ceil(len(rows) / images_per_shard))
    return [rows.iloc[i::n].reset_index(drop=True) for i in range(n)]


def _old_encode(args):
    from deepbc.shards.writer import encode_image

    path, image_format, quality, max_side, sha256 = args
    return encode_image(path, image_format, quality, max_side, sha256)


def _old_example(encoded: bytes, image_format: str, row, height: int, width: int) -> bytes:
    import tensorflow as tf

    def feature(kind, v):
        if kind == "int64":
            return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(v)]))
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=[v]))

    values = {"image/encoded": ("bytes", encoded), "image/format": ("bytes", image_format.encode()),
              "image/class/label": ("int64", row.label_index), "image/height": ("int64", height),
              "image/width": ("int64", width), "image/filename": ("bytes", str(row.path).encode()),
              "image/patient": ("bytes", str(row.patient).encode()),
              "image/magnification": ("bytes", str(row.magnification).encode())}
    example = tf.train.Example(features=tf.train.Features(
        feature={key: feature(kind, v) for key, (kind, v) in values.items()}))
    return example.SerializeToString(deterministic=True)


def old_write_shards(splits_path: Path, fold: int, root: Path, out_dir: Path, settings: dict, seed: int,
                     workers: int) -> dict:
    """One old write_shards job (TensorFlow imported, every image of the fold re-encoded); returns
    its encodes, bytes and, per split, the shards and their records' labels (for reading back)."""
    import tensorflow as tf

    from deepbc.data.runs import SPLITS

    table = pd.read_parquet(splits_path)
    rows = table[table["fold"] == fold]
    rows = rows.assign(file=[str(root / p) for p in rows["path"]])
    out_dir.mkdir(parents=True, exist_ok=True)
    fmt, quality, max_side = settings["format"], settings["jpeg_quality"], settings["max_shorter_side"]
    splits = {}
    ctx = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
        for split in SPLITS:
            shards = _old_plan(rows[rows["split"] == split], settings["images_per_shard"], seed, fold, split)
            names, sizes = [], []
            for i, shard in enumerate(shards):
                name = f"{split}-{i:05d}-of-{len(shards):05d}.tfrecord"
                jobs = [(f, fmt, quality, max_side, h) for f, h in zip(shard["file"], shard["sha256"])]
                with tf.io.TFRecordWriter(str(out_dir / name)) as writer:
                    for row, (encoded, height, width, _) in zip(shard.itertuples(index=False),
                                                             pool.map(_old_encode, jobs, chunksize=16)):
                        writer.write(_old_example(encoded, fmt, row, height, width))
                with open(out_dir / name, "rb") as fh:
                    hashlib.file_digest(fh, "sha256")
                names.append(name)
                sizes.append(len(shard))
            splits[split] = {"shards": names, "shard_records": sizes,
                             "labels": [[int(x) for x in s["label_index"]] for s in shards],
                             "paths": [list(s["path"]) for s in shards]}
    return {"encodes": int(len(rows)), "bytes": sum(p.stat().st_size for p in out_dir.glob("*.tfrecord")),
            "splits": splits}


def old_index_for_reading(old: dict, split: str, out_dir: Path) -> Path:
    """An index over old per-run shards, every record a member, so the same reader times both."""
    info = old["splits"][split]
    members = [[k, pos, path, label] for k, (paths, labels) in enumerate(zip(info["paths"], info["labels"]))
               for pos, (path, label) in enumerate(zip(paths, labels))]
    index = {"count": len(members), "count_per_class": {}, "class_names": [], "shards": info["shards"],
             "shard_records": info["shard_records"], "members": members,
             "encoding": {"format": "jpeg", "jpeg_quality": 95, "max_shorter_side": 0}}
    path = out_dir / f"{split}.json"
    path.write_text(json.dumps(index))
    return path


# --------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------

def run(filelist: Path, images_dir: Path, workdir: Path, sample: int = 3, workers: int = 2, seed: int = 0,
        rounds: int = 3, batches: int = 40, image_size: int = 224, every: int = 1) -> dict:
    root, n_files = prepare_images(images_dir, filelist, seed, workers, every)
    manifest_path, runs, settings = paper_runs(images_dir, root, seed, workers)
    manifest = pd.read_parquet(manifest_path)
    source_bytes = int(manifest["bytes"].sum())
    run_folds = [(run, int(fold)) for run, path in runs.items()
                 for fold in sorted(pd.read_parquet(path, columns=["fold"])["fold"].unique())]
    fold_images = {(run, fold): int((pd.read_parquet(runs[run], columns=["fold"])["fold"] == fold).sum())
                   for run, fold in run_folds}
    old_encodes = sum(fold_images.values())
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)

    # New design, all of it.
    store = workdir / "encoded" / "breakhis"
    start = time.perf_counter()
    encode = common.timed_command(common.script_command(
        "encode_dataset.py", "--manifest", manifest_path, "--root", root.parent, "--out-dir", store,
        "--shards-json", json.dumps(settings), "--seed", seed, "--workers", workers),
        log_path=workdir / "encode_dataset.log")
    index_seconds = []
    for run, fold in run_folds:
        step = common.timed_command(common.script_command(
            "write_shards.py", "--splits", runs[run], "--store", store / "store.json", "--fold", fold,
            "--out-dir", workdir / "tfrecords" / run / f"fold{fold}"), log_path=workdir / "write_shards.log")
        index_seconds.append(step["seconds"])
    new_seconds = time.perf_counter() - start
    store_index = json.loads((store / "store.json").read_text())
    new_bytes = sum((store / n).stat().st_size for n in store_index["shards"])
    LOG.info("new: %.1f s (encode_dataset %.1f s), %d encodes, %.0f MB", new_seconds, encode["seconds"],
             store_index["count"], new_bytes / 1e6)

    # Old design: a sample of complete run x fold jobs, spread over the runs, the read fold first.
    read_run = "benign_vs_malignant" if "benign_vs_malignant" in runs else next(iter(runs))
    picks = [(read_run, 0)] + [run_folds[i] for i in np.linspace(0, len(run_folds) - 1, sample - 1 + 2, dtype=int)[1:-1]]
    picks = list(dict.fromkeys(picks))[:sample]
    old = []
    for run, fold in picks:
        out = workdir / "old" / run / f"fold{fold}"
        # Its own process, as the old rule's job: TensorFlow's start-up counts.
        seconds = common.timed_command([sys.executable, "-m", "deepbc.bench.encode_once", str(runs[run]), str(fold),
                                        str(root.parent), str(out), json.dumps(settings), str(seed), str(workers)],
                                       log_path=workdir / "old.log")["seconds"]
        result = json.loads((out / "result.json").read_text())
        old.append({"run": run, "fold": fold, "seconds": round(seconds, 2), "encodes": result["encodes"],
                    "bytes": result["bytes"], "seconds_per_encode": seconds / result["encodes"]})
        LOG.info("old %s fold %d: %.1f s for %d images", run, fold, seconds, result["encodes"])
        if (run, fold) == (read_run, 0):
            old_read = old_index_for_reading(result, "train", workdir / "old" / run / "fold0")
    per_encode = [o["seconds_per_encode"] for o in old]
    old_seconds = statistics.mean(per_encode) * old_encodes
    old_bytes = sum(o["bytes"] for o in old) / sum(o["encodes"] for o in old) * old_encodes

    new_read = workdir / "tfrecords" / read_run / "fold0" / "train.json"
    reading = common.in_fresh_process(_read_rates, {"old": old_read, "new": new_read}, image_size, workers,
                                      batches, seed, rounds)
    return {
        "files": n_files, "manifest_images": len(manifest), "run_folds": len(run_folds), "runs": sorted(runs),
        "workers": workers, "shards_settings": settings, "source_mb": round(source_bytes / 1e6, 1),
        "encodes": {"old": old_encodes, "new": store_index["count"]},
        "old_sample": [{k: v for k, v in o.items() if k != "seconds_per_encode"} for o in old],
        "old_ms_per_encode_range": [round(1000 * min(per_encode), 2), round(1000 * max(per_encode), 2)],
        "seconds": {"old_estimated": round(old_seconds, 1),
                    "old_estimated_range": [round(min(per_encode) * old_encodes, 1),
                                            round(max(per_encode) * old_encodes, 1)],
                    "new": round(new_seconds, 1), "new_encode_dataset": encode["seconds"],
                    "new_write_shards_total": round(sum(index_seconds), 1),
                    "new_write_shards_range": [min(index_seconds), max(index_seconds)]},
        "time_old_vs_new": common.ratio(old_seconds, new_seconds),
        "disk_mb": {"old_estimated": round(old_bytes / 1e6, 1), "new_store": round(new_bytes / 1e6, 1),
                    "new_indexes": round(sum(p.stat().st_size for p in (workdir / "tfrecords").rglob("*.json")) / 1e6, 1)},
        # Copies of the dataset in each design's shards, both by bytes: its shard bytes over one encoded
        # copy, which is the store's shard bytes (each image once): "new" is 1.0 by that definition.
        "disk_copies": {**{name: round(size / new_bytes, 2) for name, size in (("old", old_bytes), ("new", new_bytes))},
                        "one_copy": "the store's shard bytes"},
        "read_split": f"{read_run} fold 0 train", "read_images_per_s": reading,
        "goals": {"encodes_new": "= manifest images", "time_old_vs_new": ">= 5", "disk_copies_new": "<= 2"},
    }


def _read_rates(indexes: dict, image_size: int, parallel: int, batches: int, seed: int, rounds: int) -> dict:
    import tensorflow as tf

    from deepbc.shards import reader as shard_reader
    from deepbc.training import preprocessing

    pre = preprocessing.get_preprocessing("vgg", is_training=True)
    options = tf.data.Options()
    options.threading.private_threadpool_size = parallel
    datasets = {name: shard_reader.make_dataset(path, batch_size=16, is_training=True, preprocess_fn=pre,
                                                image_size=image_size, seed=seed, num_parallel_calls=parallel,
                                                repeat=True).with_options(options)
                for name, path in indexes.items()}
    rates = {name: [] for name in datasets}
    for _ in range(rounds):
        for name, dataset in datasets.items():
            iterator = iter(dataset)
            for _ in range(3):
                next(iterator)
            start = time.perf_counter()
            for _ in range(batches):
                next(iterator)
            rates[name].append(batches * 16 / (time.perf_counter() - start))
            LOG.info("read %s: %.1f images/s", name, rates[name][-1])
    return {name: {"median": round(statistics.median(v), 1), "range": [round(min(v), 1), round(max(v), 1)]}
            for name, v in rates.items()} | {"new_vs_old": common.ratio(statistics.median(rates["new"]),
                                                                        statistics.median(rates["old"]))}


if __name__ == "__main__":  # one old write_shards job: splits fold root out_dir settings seed workers
    splits_path, fold, root, out_dir, settings, seed, workers = sys.argv[1:]
    result = old_write_shards(Path(splits_path), int(fold), Path(root), Path(out_dir), json.loads(settings),
                              int(seed), int(workers))
    (Path(out_dir) / "result.json").write_text(json.dumps(result))
