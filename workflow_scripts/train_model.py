#!/usr/bin/env python3
"""Fine-tune one network on one run's fold: TF-Slim style, two stages from ImageNet, resumable.

Reads the fold's TFRecord shards (--train-index, --val-index), keeps its state in --state-dir so that a
killed job rerun with the same command continues from its last saved step, and writes the kept
checkpoint, training.csv and settings.json to --out-dir only at the end.
"""

import json

from deepbc.jobs import cli, gpu, locks
from deepbc.training import settings


def arguments(p):
    p.add_argument("--train-index", required=True, help="the fold's training shard index, e.g. .../fold0/train.json")
    p.add_argument("--val-index", required=True, help="the fold's validation shard index, e.g. .../fold0/val.json")
    p.add_argument("--arch", required=True, help="network name, e.g. resnet_v1_50 or resnet_small")
    p.add_argument("--settings-json", required=True,
                   type=cli.config_section("train.defaults", settings.DEFAULTS_POINTER),
                   help="training settings (the merged train.defaults/per_architecture/per_task config)")
    p.add_argument("--checkpoint-json", default=None,
                   help="ImageNet checkpoint record written by get_checkpoint.py (init: imagenet)")
    p.add_argument("--out-dir", required=True, help="where the kept model, training.csv, settings.json go")
    p.add_argument("--state-dir", required=True, help="resumable training state")
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--threads", type=cli.job_cpus, required=True,
                   help="threads (0: every CPU given; capped at the job's CPUs and SLURM's allocation)")
    p.add_argument("--memory-mb", type=int, required=True,
                   help="the job's memory (the rule's mem_mb): half of it may hold the training images decoded "
                        "once, the rest go to local disk (TMPDIR)")
    gpu.add_arguments(p)
    locks.add_arguments(p)


def run(args):
    trained_with = settings.build(args.settings_json, args.arch)  # checked before any lock, lease or TensorFlow
    checkpoint = None
    if args.checkpoint_json:
        with open(args.checkpoint_json) as fh:
            checkpoint = json.load(fh)["checkpoint"]
    # One trainer per state folder, publishing under the lock: the rerun after a killed Snakemake
    # waits for the orphaned trainer, so its own model is the one published last. The lock comes
    # before the GPU lease, so that a waiting job holds no GPU.
    # The lease sets CUDA_VISIBLE_DEVICES, so TensorFlow is imported only inside it.
    with locks.exclusive(args.state_dir, "this model's training state", args.lock_timeout), \
            gpu.lease_from_args(args):
        from deepbc.shards import reader as shard_reader
        from deepbc.training import train

        with shard_reader.naming_corrupt_shards([args.train_index, args.val_index]):
            train.train(args.train_index, args.val_index, args.out_dir, args.state_dir, args.arch,
                        trained_with, seed=args.seed, checkpoint=checkpoint, threads=args.threads,
                        memory_mb=args.memory_mb)


main = cli.script(__doc__, arguments, run)

if __name__ == "__main__":
    cli.run(main)
