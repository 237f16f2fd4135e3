#!/usr/bin/env python3
"""The check + manifest, split and shard rules on synthetic 700x460 images laid out as the real
BreakHis (../shared/breakhis/BreaKHis_v1_filelist.txt), against a plain copy of the same files:
images/s, MB/s, bytes on disk, and what re-encoding to JPEG does to training input speed. Prints
one JSON line. The full run writes ~4 GB of PNGs into --workdir.

    .venv/bin/python bench/sharding.py --filelist ../shared/breakhis/BreaKHis_v1_filelist.txt
"""

import argparse
import sys
from pathlib import Path


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--filelist", type=Path, required=True, help="BreaKHis_v1_filelist.txt (7,909 paths)")
    parser.add_argument("--every", type=int, default=1, help="use every N-th path only (default 1: all)")
    parser.add_argument("--workers", type=int, default=2, help="--workers of the rules (default 2)")
    parser.add_argument("--read-images", type=int, default=512, help="images read back per encoding (default 512)")
    parser.add_argument("--image-size", type=int, default=224, help="network input size when reading (default 224)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", help="where the images and shards go (default: the system's temp folder)")
    parser.add_argument("--images-dir", type=Path,
                        help="keep the synthetic images here and reuse them next time (default: drawn each run)")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    from deepbc.bench import common, sharding

    common.log_to_stderr()

    if not args.filelist.is_file():
        sys.exit(f"error: {args.filelist}: file list not found; pass the shared BreakHis listing with --filelist")
    result = sharding.run(args.filelist, every=args.every, workers=args.workers, read_images=args.read_images,
                          image_size=args.image_size, seed=args.seed, workdir=args.workdir,
                          images_dir=args.images_dir)
    common.emit("sharding", result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
