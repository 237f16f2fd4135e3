"""Sharding at BreakHis scale: the check + manifest, split and shard rules against a plain copy.

Synthetic 700x460 PNGs are written under the real BreakHis paths (``BreaKHis_v1_filelist.txt``,
with slide 14-13412's ductal and lobular copies byte-identical, as in the real archive). Then, each
as the workflow runs it (the rule's script in its own process, so start-up counts):

- ``copy``: ``shutil.copytree`` of the dataset, the baseline: what any tool must at least do;
- ``check_dataset``: decode and hash every file, write the manifest and the rejects;
- ``make_splits``: the patient-wise benign vs malignant folds (k = 5, as config/paper.yaml);
- ``encode_and_index``: the dataset's store (rule encode_dataset, every image of the manifest) and
  fold 0's train/val/test indexes over it (rule write_shards), as JPEG q95 (the default,
  re-encoded) and as PNG (the source bytes stored as they are), to show what re-encoding costs;
- reading both back through ``shard_reader.make_dataset`` at 224 px: what re-encoding buys at training
  (each in a fresh process; ``one_process``, the smoke test's: both in one, a check that they run).

The source files are in the page cache for every step (they were just written), so the copy and
the rules read them at memory speed alike.
"""

from __future__ import annotations

import gzip
import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

from deepbc.bench import common

LOG = logging.getLogger("deepbc.bench.sharding")

PAPER_K = 5
TASK = {"dataset": "breakhis", "label": "tissue", "classes": ["benign", "malignant"], "magnification": "all",
        "protocols": ["patient"]}


def listing(filelist: Path, every: int = 1) -> tuple[list[str], dict[str, str]]:
    """Paths relative to ``BreaKHis_v1`` (every ``every``-th) and the duplicates' originals, from the
    archive's listing (gzipped if its name ends in .gz)."""
    prefix = "BreaKHis_v1/"
    filelist = Path(filelist)
    text = gzip.decompress(filelist.read_bytes()).decode() if filelist.suffix == ".gz" else filelist.read_text()
    rels = [line.strip()[len(prefix):] for line in text.splitlines()
            if line.strip().startswith(prefix)]
    rels = rels[::every]
    present = set(rels)
    same_as = {}
    for rel in rels:
        if "SOB_M_LC_14-13412" in rel:
            original = (rel.replace("lobular_carcinoma/SOB_M_LC_14-13412", "ductal_carcinoma/SOB_M_DC_14-13412")
                        .replace("SOB_M_LC-14-13412", "SOB_M_DC-14-13412"))
            if original in present:
                same_as[rel] = original
    return rels, same_as


def run(filelist: Path, every: int = 1, workers: int = 2, read_images: int = 512, image_size: int = 224,
        seed: int = 0, workdir: str | None = None, images_dir: Path | None = None, one_process: bool = False) -> dict:
    """``images_dir``: keep the synthetic dataset there and reuse it on the next run (it takes
    ~6 min to draw at full size on 2 cores); by default it is drawn in the temporary folder."""
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        tmp = Path(tmp)
        rels, same_as = listing(filelist, every)
        root = Path(images_dir) / "BreaKHis_v1" if images_dir else tmp / "BreaKHis_v1"
        done = root.parent / f".complete-{len(rels)}-{seed}"
        if done.is_file():
            LOG.info("reusing the %d synthetic images in %s", len(rels), root)
            source_bytes = sum((root / p).stat().st_size for p in rels)
        else:
            LOG.info("writing %d synthetic 700x460 PNGs in the BreakHis layout", len(rels))
            if root.exists():
                shutil.rmtree(root)
            start = time.perf_counter()
            source_bytes = common.write_he_images(root, rels, seed, workers=workers, same_as=same_as)
            LOG.info("wrote %.0f MB in %.0f s", source_bytes / 1e6, time.perf_counter() - start)
            if images_dir:
                done.touch()
        steps = measure_steps(tmp, root, len(rels), source_bytes, workers, seed)
        with common.runner(one_process) as call:
            reading = read_rates(tmp, read_images, image_size, workers, call)
        jpeg_bytes, png_bytes = (_dir_bytes(tmp / name) for name in ("shards_jpeg", "shards_png"))
        # Slide 14-13412's images (the same bytes under two labels) are left out of the splits.
        in_shards = sum(json.loads((tmp / "shards_jpeg" / f"{s}.json").read_text())["count"]
                        for s in ("train", "val", "test"))
    pipeline = sum(steps[s]["seconds"] for s in ("check_dataset", "make_splits", "encode_and_index_jpeg"))
    return {
        "images": len(rels), "label_conflict_copies": len(same_as), "images_in_shards": in_shards, "workers": workers,
        "source_mb": round(source_bytes / 1e6, 1), "steps": steps,
        "pipeline_seconds": round(pipeline, 2),
        "pipeline_vs_copy": common.ratio(pipeline, steps["copy"]["seconds"]),
        "bytes_on_disk_mb": {"source_png": round(source_bytes / 1e6, 1), "shards_jpeg95": round(jpeg_bytes / 1e6, 1),
                             "shards_png": round(png_bytes / 1e6, 1)},
        "shards_jpeg_vs_source_bytes": common.ratio(jpeg_bytes, source_bytes),
        "read_images_per_s": reading, "read_jpeg_vs_png": common.ratio(reading["jpeg95"], reading["png"]),
        "read_image_size": image_size,
    }


def measure_steps(tmp: Path, root: Path, count: int, source_bytes: int, workers: int, seed: int) -> dict:
    logs = tmp / "logs"
    logs.mkdir()
    manifest, rejects, splits = tmp / "manifest.parquet", tmp / "rejects.csv", tmp / "splits.parquet"
    steps = {}

    start = time.perf_counter()
    shutil.copytree(root, tmp / "copy")
    steps["copy"] = {"seconds": round(time.perf_counter() - start, 2)}
    shutil.rmtree(tmp / "copy")

    commands = {
        "check_dataset": common.script_command(
            "check_dataset.py", "--dataset", "breakhis", "--kind", "breakhis", "--root", root, "--workers", workers,
            "--manifest", manifest, "--rejects", rejects),
        "make_splits": common.script_command(
            "make_splits.py", "--manifest", manifest, "--task", "benign_vs_malignant", "--task-json", json.dumps(TASK),
            "--protocol", "patient", "--splits-json",
            json.dumps({"k": PAPER_K, "val_fraction": 0.2, "exclude_label_conflicts": True}), "--seed", seed,
            "--out", splits, *[a for part in ("json", "csv", "md")
                               for a in (f"--audit-{part}", tmp / f"splits.audit.{part}")]),
    }
    for fmt in ("jpeg", "png"):
        # The dataset's store (every image encoded once), then fold 0's indexes over it.
        commands[f"encode_and_index_{fmt}"] = [common.script_command(
            "encode_dataset.py", "--manifest", manifest, "--root", root, "--out-dir", tmp / f"shards_{fmt}" / "store",
            "--shards-json", json.dumps({"format": fmt}),  # the schema's defaults for the rest
            "--seed", seed, "--workers", workers),
            common.script_command("write_shards.py", "--splits", splits, "--store",
                                  tmp / f"shards_{fmt}" / "store" / "store.json", "--fold", 0,
                                  "--out-dir", tmp / f"shards_{fmt}")]
    for name, cmd in commands.items():
        LOG.info("running %s", name)
        parts = [common.timed_command(c, log_path=logs / f"{name}.{i}.log")
                 for i, c in enumerate(cmd if isinstance(cmd[0], list) else [cmd])]
        steps[name] = {"seconds": round(sum(p["seconds"] for p in parts), 2),
                       "peak_rss_mb": max(p["peak_rss_mb"] for p in parts)}
    for name, step in steps.items():
        step["images_per_s"] = round(count / step["seconds"], 1)
        step["source_mb_per_s"] = round(source_bytes / 1e6 / step["seconds"], 1)
        LOG.info("%s: %s", name, step)
    return steps


def read_rates(tmp: Path, images: int, image_size: int, parallel: int, call=common.in_fresh_process) -> dict:
    return {name: call(_read_rate, tmp / f"shards_{fmt}" / "train.json", images, image_size, parallel)
            for name, fmt in (("jpeg95", "jpeg"), ("png", "png"))}


def _read_rate(index_json: Path, images: int, image_size: int, parallel: int) -> float:
    import tensorflow as tf

    from deepbc.shards import reader as shard_reader
    from deepbc.training import preprocessing

    pre = preprocessing.get_preprocessing("vgg", is_training=True)
    options = tf.data.Options()
    options.threading.private_threadpool_size = parallel
    dataset = shard_reader.make_dataset(index_json, batch_size=16, is_training=True, preprocess_fn=pre,
                                  image_size=image_size, seed=0, num_parallel_calls=parallel,
                                  repeat=True).with_options(options)
    iterator = iter(dataset)
    next(iterator)
    batches = max(1, images // 16)
    start = time.perf_counter()
    for _ in range(batches):
        next(iterator)
    return round(batches * 16 / (time.perf_counter() - start), 1)


def _dir_bytes(folder: Path) -> int:
    return sum(os.path.getsize(p) for p in folder.rglob("*") if p.is_file())
