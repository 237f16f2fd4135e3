#!/usr/bin/env python3
"""The check + manifest, split and shard rules on synthetic 700x460 images laid out as the real
BreakHis (../shared/breakhis/BreaKHis_v1_filelist.txt), against a plain copy of the same files:
images/s, MB/s, bytes on disk, and what re-encoding to JPEG does to training input speed. Prints
one JSON line. The full run writes ~4 GB of PNGs into --workdir.

    .venv/bin/python bench/sharding.py --filelist ../shared/breakhis/BreaKHis_v1_filelist.txt

With --compare-designs (issue 14 item 5): every BreakHis run and fold of config/paper.yaml, encoded
once per run x fold x split (the design before the store, on a sample of --sample complete run x
fold jobs, scaled by the images encoded in all of them) against once per dataset (the store and all
the indexes, for real): encodes, time, disk, and training-read images/s of one fold's train split
(deepbc/bench/encode_once.py):

    .venv/bin/python bench/sharding.py --filelist ../shared/breakhis/BreaKHis_v1_filelist.txt \
        --compare-designs --images-dir /tmp/encode_bench --sample 3 --rounds 3
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
    parser.add_argument("--one-process", action="store_true",
                        help="a check that reading runs, not a measurement: both reads in one fresh process "
                             "instead of one each (one TensorFlow import)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", help="where the images and shards go (default: the system's temp folder)")
    parser.add_argument("--images-dir", type=Path,
                        help="keep the synthetic images here and reuse them next time (default: drawn each run)")
    parser.add_argument("--compare-designs", action="store_true",
                        help="old (per run x fold) against new (per dataset) encoding at config/paper.yaml scale; "
                             "needs --images-dir")
    parser.add_argument("--sample", type=int, default=3, help="old design: complete run x fold jobs timed (default 3)")
    parser.add_argument("--rounds", type=int, default=3, help="reading: alternating rounds per design (default 3)")
    parser.add_argument("--batches", type=int, default=40, help="reading: batches of 16 timed per round (default 40)")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    from deepbc.bench import common, sharding

    common.log_to_stderr()

    if not args.filelist.is_file():
        sys.exit(f"error: {args.filelist}: file list not found; pass the shared BreakHis listing with --filelist")
    if args.compare_designs:
        if not args.images_dir:
            sys.exit("error: --compare-designs needs --images-dir (the images are cached there)")
        from deepbc.bench import encode_once

        workdir = Path(args.workdir or args.images_dir) / "designs"
        result = encode_once.run(args.filelist, args.images_dir, workdir, sample=args.sample, workers=args.workers,
                                 seed=args.seed, rounds=args.rounds, batches=args.batches, image_size=args.image_size,
                                 every=args.every)
        common.emit("sharding_designs", result)
        return 0
    result = sharding.run(args.filelist, every=args.every, workers=args.workers, read_images=args.read_images,
                          image_size=args.image_size, seed=args.seed, workdir=args.workdir,
                          images_dir=args.images_dir, one_process=args.one_process)
    common.emit("sharding", result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
