#!/usr/bin/env python3
"""Training images/s of the project's trainer (TFRecord shards through its own input pipeline) at
fp32, mixed precision and mixed + XLA, and without its determinism switch, against plain Keras
``model.fit`` of ``keras.applications.ResNet50(weights=None)`` at float32 and under ``mixed_bfloat16``,
and against the project's network fed from in-memory arrays (its upper bound) at each precision, on
the same images, image size and batch, in one run (variants interleaved over ``--repeats``). Prints
one JSON line; progress goes to stderr.

    .venv/bin/python bench/train_throughput.py --arch resnet_v1_50 --image-size 128 --batch-size 16 --repeats 2
    .venv/bin/python bench/train_throughput.py --variants trainer,trainer_nondeterministic --repeats 3
    .venv/bin/python bench/train_throughput.py --quick   # seconds: resnet_small, 32 px, one process (the smoke test)
"""

import argparse
import sys


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="resnet_v1_50", help="network of the registry (default resnet_v1_50)")
    parser.add_argument("--keras-model", default="ResNet50", help="keras.applications model (default ResNet50)")
    parser.add_argument("--image-size", type=int, default=128, help="network input size (default 128)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=30, help="timed steps per variant (default 30)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed first steps (default 5)")
    parser.add_argument("--images", type=int, default=64, help="distinct 700x460 training images (default 64)")
    parser.add_argument("--threads", type=int, default=2, help="TensorFlow threads, as rule train gives (default 2)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--variants", default=None,
                        help="comma-separated subset of trainer, trainer_mixed, trainer_mixed_xla, "
                             "trainer_nondeterministic, trainer_every_epoch, trainer_mixed_every_epoch, in_memory, "
                             "in_memory_mixed, keras, keras_mixed_bfloat16 (default all)")
    parser.add_argument("--repeats", type=int, default=1, help="measure each variant this many times, interleaved")
    parser.add_argument("--workdir", help="where temporary shards go (default: the system's temp folder)")
    parser.add_argument("--quick", action="store_true",
                        help="a check that every variant runs, not a measurement: resnet_small, 32 px, batch 2, "
                             "2 steps after 1, 4 images, 1 thread, Keras VGG16 (the quickest Keras application "
                             "to trace), every variant in one fresh process")
    args = parser.parse_args(argv)
    if args.quick:
        args.arch, args.keras_model, args.image_size, args.batch_size = "resnet_small", "VGG16", 32, 2
        args.steps, args.warmup, args.images, args.threads = 2, 1, 4, 1
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    from deepbc.bench import common, training

    common.log_to_stderr()

    result = training.run(arch=args.arch, image_size=args.image_size, batch_size=args.batch_size, steps=args.steps,
                          warmup=args.warmup, images=args.images, threads=args.threads, seed=args.seed,
                          keras_model=args.keras_model, workdir=args.workdir,
                          variants=tuple(args.variants.split(",")) if args.variants else training.VARIANTS,
                          repeats=args.repeats, one_process=args.quick)
    common.emit("train_throughput", result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
