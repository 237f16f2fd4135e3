#!/usr/bin/env python3
"""Measure shard reading throughput per core for each way of storing images at sharding time.

Makes BreakHis-sized synthetic H&E-like micrographs (700x460 RGB PNG), writes them into shards with
deepbc.shards.writer.write_shards as (a) the original PNG bytes, (b) JPEG q95 full size, (c) JPEG q95
with the shorter side resized to 256, (d) raw uint8 pixels (plus extra variants given with
--extra), then reads them back with deepbc.shards.reader.make_dataset pinned to one core (parse + decode +
resize to the network size) and prints one JSON line: per variant, images per CPU-second, images
per wall-second, bytes per image on disk and the pixel error against the source.

    .venv/bin/python bench/shard_encoding.py --images 48 --passes 4
"""

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

VARIANTS = {
    "png_original": ("png", 95, 0),
    "jpeg95_full": ("jpeg", 95, 0),
    "jpeg95_256": ("jpeg", 95, 256),
    "raw_full": ("raw", 95, 0),
}


def make_images(folder: Path, count: int, seed: int) -> list[str]:
    from deepbc.bench.common import write_he_images

    paths = [f"img{i:04d}.png" for i in range(count)]
    write_he_images(folder, paths, seed)
    return paths


def splits_table(paths: list[str]):
    import pandas as pd

    # write_shards needs all three splits; the benchmark reads train only.
    split = ["val", "test"] + ["train"] * (len(paths) - 2)
    return pd.DataFrame({"path": paths, "patient": [f"p{i % 7}" for i in range(len(paths))], "slide": "s",
                         "magnification": "200X", "label": ["benign", "malignant"] * (len(paths) // 2)
                         + ["benign"] * (len(paths) % 2), "fold": 0, "split": split, "protocol": "patient"}
                        ).assign(label_index=lambda d: (d["label"] == "malignant").astype("int64"))


def measure(index_path: Path, image_size: int, passes: int, batch_size: int) -> dict:
    import tensorflow as tf

    from deepbc.shards import reader as shard_reader

    index = shard_reader.read_index(index_path)
    dataset = shard_reader.make_dataset(index_path, batch_size=batch_size, is_training=False, image_size=image_size,
                                  num_parallel_calls=1)
    options = tf.data.Options()
    options.threading.private_threadpool_size = 1
    options.autotune.enabled = False
    dataset = dataset.with_options(options)
    for _ in dataset:  # warm-up: page cache, kernel compilation
        pass
    wall, cpu = time.perf_counter(), time.process_time()
    seen = 0
    for _ in range(passes):
        for images, _ in dataset:
            seen += int(images.shape[0])
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    # The store's bytes over its records: the listed shards also hold other splits' records.
    store_path = Path(index_path).parent / index["store"]
    store = json.loads(store_path.read_text(encoding="utf-8"))
    disk = sum(os.path.getsize(store_path.parent / name) for name in store["shards"])
    return {"images_per_cpu_s": round(seen / cpu, 1), "images_per_wall_s": round(seen / wall, 1),
            "bytes_per_image": int(disk / store["count"]), "images_read": seen}


def pixel_error(root: Path, index_path: Path, rels: list[str]) -> float:
    """Mean absolute error (0..255) of the stored pixels against the source, at the stored size."""
    import tensorflow as tf
    from PIL import Image

    from deepbc.shards import reader as shard_reader
    from deepbc.shards import records

    index = shard_reader.read_index(index_path)
    errors = []
    for record in tf.data.TFRecordDataset(index["paths"]).take(8):
        features = records.parse_example(record)
        stored = records.decode(features, index["encoding"]["format"]).numpy().astype(np.float32)
        source = Image.open(root / features["image/filename"].numpy().decode()).convert("RGB")
        if source.size != (stored.shape[1], stored.shape[0]):
            source = source.resize((stored.shape[1], stored.shape[0]), Image.Resampling.LANCZOS)
        errors.append(np.abs(stored - np.asarray(source, np.float32)).mean())
    return round(float(np.mean(errors)), 3)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=48, help="synthetic 700x460 images to shard (default 48)")
    parser.add_argument("--passes", type=int, default=4, help="timed reading passes over them (default 4)")
    parser.add_argument("--image-size", type=int, default=224, help="network input size to resize to (default 224)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--extra", action="append", default=[], metavar="NAME:FORMAT:QUALITY:MAX_SIDE",
                        help="another variant, e.g. jpeg95_342:jpeg:95:342 (repeatable)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    # One core: throughput per core is what the target (>= 250 images/s per core) is about.
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    import tensorflow as tf

    tf.config.threading.set_inter_op_parallelism_threads(1)
    tf.config.threading.set_intra_op_parallelism_threads(1)
    from deepbc.shards import writer as shard_writer

    variants = dict(VARIANTS)
    for spec in args.extra:
        name, fmt, quality, side = spec.split(":")
        variants[name] = (fmt, int(quality), int(side))
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "images"
        root.mkdir()
        rels = make_images(root, args.images + 2, args.seed)
        table = splits_table(rels)
        source_bytes = sum(os.path.getsize(root / r) for r in rels) / len(rels)
        for name, (fmt, quality, side) in variants.items():
            out = Path(tmp) / name
            start = time.process_time()
            shard_writer.write_shards(table, 0, root, out, seed=args.seed, workers=1, shards={"images_per_shard": 16, "format": fmt, "jpeg_quality": quality, "max_shorter_side": side})
            write_cpu = time.process_time() - start
            result = measure(out / "train.json", args.image_size, args.passes, args.batch_size)
            result["write_ms_per_image"] = round(1000 * write_cpu / len(rels), 2)
            result["mean_abs_pixel_error"] = pixel_error(root, out / "train.json", rels)
            result.update(format=fmt, jpeg_quality=quality if fmt == "jpeg" else None, max_shorter_side=side)
            results[name] = result
            print(f"{name}: {result}", file=sys.stderr)
    from deepbc.bench.common import emit

    emit("shard_encoding", {"image_size": args.image_size, "images": args.images,
                            "source_png_bytes_per_image": int(source_bytes), "tensorflow": tf.__version__,
                            "variants": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
