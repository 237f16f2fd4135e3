#!/usr/bin/env python3
"""Images/s of shard read + decode + preprocess + batch (the trainer's input pipeline) against
decoding the same encoded images from memory with the same parallelism (the limit), against
what the project's network consumes in training on this CPU, with HED stain augmentation added
(its cost), and with every image decoded once (the trainer's pipeline for runs that read their
images more than once); the cores each needs per ~4,000 images/s. Prints one JSON line.

    .venv/bin/python bench/input_pipeline.py --images 128 --batches 150 --image-size 224
    .venv/bin/python bench/input_pipeline.py --images 4 --batches 2 --batch-size 2 --image-size 32 \
        --arch resnet_small --trainer-steps 1 --trainer-batch-size 2 --rounds 1 --one-process   # the smoke test
"""

import argparse
import sys


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=128, help="distinct 700x460 images in the shards (default 128)")
    parser.add_argument("--batches", type=int, default=150, help="timed batches per pipeline (default 150)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--image-size", type=int, default=224, help="network input size (default 224)")
    parser.add_argument("--parallel", type=int, default=2, help="threads of both pipelines (default 2)")
    parser.add_argument("--arch", default="resnet_v1_50", help="network whose preprocessing and appetite count")
    parser.add_argument("--trainer-steps", type=int, default=4,
                        help="timed training steps to measure what the network consumes (0: skip; default 4)")
    parser.add_argument("--trainer-batch-size", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3,
                        help="alternating timings of the shard pipeline without and with HED augmentation (default 3)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", help="where temporary shards go (default: the system's temp folder)")
    parser.add_argument("--one-process", action="store_true",
                        help="a check that every measurement runs, not a measurement: all in one fresh process "
                             "instead of one each (one TensorFlow import)")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    from deepbc.bench import common, input_pipeline

    common.log_to_stderr()

    result = input_pipeline.run(images=args.images, batches=args.batches, batch_size=args.batch_size,
                                image_size=args.image_size, parallel=args.parallel, arch=args.arch,
                                trainer_steps=args.trainer_steps, trainer_batch_size=args.trainer_batch_size,
                                seed=args.seed, workdir=args.workdir, rounds=args.rounds,
                                one_process=args.one_process)
    common.emit("input_pipeline", result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
