#!/usr/bin/env python3
"""Grad-CAM maps of one fold's model for a seeded sample of its test images: up to two correct and
two wrong per true class, each shown as the network's input and the map over it.
"""

from deepbc import cli, gpu, locks


def arguments(p):
    p.add_argument("--model-dir", required=True, help="results/models/{run}/{arch}/fold{k}")
    p.add_argument("--shard-index", required=True, help="the fold's test index, .../fold{k}/test.json")
    p.add_argument("--predictions", required=True, help="results/predictions/{run}/{arch}/fold{k}.parquet")
    p.add_argument("--classes", required=True, nargs="+", help="the task's classes, in config order")
    p.add_argument("--seed", required=True, type=int, help="chooses the sample of images")
    p.add_argument("--title", required=True, help="figure title, e.g. run / arch / fold k")
    p.add_argument("--out-png", required=True, help="PNG output")
    p.add_argument("--threads", type=int, required=True, help="TensorFlow threads (0: all cores)")
    gpu.add_arguments(p)
    locks.add_arguments(p)


def run(args):
    # The lock comes before the GPU lease, so that a waiting job holds no GPU.
    with locks.exclusive(args.out_png, "this Grad-CAM figure", args.lock_timeout), gpu.lease_from_args(args):
        from deepbc import gradcam, shard_reader

        with shard_reader.naming_corrupt_shards([args.shard_index]):
            gradcam.plot_gradcam(args.model_dir, args.shard_index, args.predictions, args.classes, args.seed,
                                 args.title, args.out_png, args.threads)


main = cli.script(__doc__, arguments, run)

if __name__ == "__main__":
    cli.run(main)
