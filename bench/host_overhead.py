#!/usr/bin/env python3
"""Host overhead per step: the trainer (deepbc.training.train, as the train rule runs it) against a
bare session.run loop of the same training op, and predict_shards against a bare loop over the same
prediction graph, with a network whose compute is negligible (a 1x1 convolution at 32 px, batch 32).
Prints one JSON line.

    .venv/bin/python bench/host_overhead.py --repeats 5
    .venv/bin/python bench/host_overhead.py --quick   # the smoke test: a check, not a measurement
"""

import argparse
import sys


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default=None, help="network (default: the benchmark's 1x1-conv network)")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=400, help="timed training steps (default 400)")
    parser.add_argument("--warmup", type=int, default=20, help="untimed first steps (default 20)")
    parser.add_argument("--images", type=int, default=256, help="training images (default 256)")
    parser.add_argument("--predict-images", type=int, default=2048, help="images predicted (default 2048)")
    parser.add_argument("--threads", type=int, default=2, help="TensorFlow threads, as rule train gives (default 2)")
    parser.add_argument("--repeats", type=int, default=3, help="measure each variant this many times, interleaved")
    parser.add_argument("--variants", default=None, help="comma-separated subset of trainer, bare_train, loop, "
                                                          "predict, bare_predict (default all)")
    parser.add_argument("--input", choices=["memory", "shards"], default="memory",
                        help="training batches: the first one repeated from memory (default), or the shards "
                             "through the whole input pipeline")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", help="where temporary shards go (default: the system's temp folder)")
    parser.add_argument("--quick", action="store_true",
                        help="a check that every variant runs, not a measurement: 5 steps after 2, 64 images, "
                             "64 predicted, 1 repeat, all in one fresh process")
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.warmup, args.images, args.predict_images, args.repeats = 5, 2, 64, 64, 1
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    from deepbc.bench import common, host_overhead

    common.log_to_stderr()
    result = host_overhead.run(arch=args.arch or host_overhead.TINY, image_size=args.image_size,
                               batch_size=args.batch_size, steps=args.steps, warmup=args.warmup, images=args.images,
                               predict_images=args.predict_images, threads=args.threads, seed=args.seed,
                               repeats=args.repeats, workdir=args.workdir,
                               variants=tuple(args.variants.split(",")) if args.variants else host_overhead.VARIANTS,
                               input_from=args.input, one_process=args.quick)
    common.emit("host_overhead", result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
