#!/usr/bin/env python3
"""Write the TFRecord shards of one fold of a run: train, val and test, plus an index JSON for each.

Output in --out-dir: {split}-{i:05d}-of-{n:05d}.tfrecord and {split}.json (count, count_per_class,
class_names, shards, encoding). Images are shuffled deterministically with --seed and dealt into
shards of at most --images-per-shard images whose sizes differ by at most one. Every file is
written under a temporary name and renamed; the index JSONs come last. Same inputs and seed give
byte-identical files.
"""

import argparse
import sys

from deepbc import logs


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--splits", required=True, help="splits parquet written by make_splits.py")
    parser.add_argument("--root", required=True, help="dataset root the splits' paths are relative to")
    parser.add_argument("--test-root", default=None,
                        help="root of the external test dataset (a task's test_dataset), for the test rows")
    parser.add_argument("--fold", type=int, required=True, help="fold index to write")
    parser.add_argument("--out-dir", required=True, help="folder for the shards and index JSONs")
    parser.add_argument("--images-per-shard", type=int, default=256)
    parser.add_argument("--format", choices=["jpeg", "png", "raw"], default="jpeg",
                        help="how images are stored (default jpeg; see docs/shards.md)")
    parser.add_argument("--jpeg-quality", type=int, default=95)
    parser.add_argument("--max-shorter-side", type=int, default=0,
                        help="downscale so the shorter side is at most this many pixels (0: keep the size)")
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--workers", type=int, default=1, help="processes decoding/encoding images")
    parser.add_argument("--log", help="log file (appended)")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    logs.setup(args.log)
    from deepbc.shards import write_shards_file

    write_shards_file(args.splits, args.fold, args.root, args.out_dir, test_root=args.test_root,
                      images_per_shard=args.images_per_shard,
                      image_format=args.format, jpeg_quality=args.jpeg_quality,
                      max_shorter_side=args.max_shorter_side, seed=args.seed, workers=args.workers)


if __name__ == "__main__":
    sys.exit(logs.run_main(main))
