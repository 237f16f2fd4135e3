#!/usr/bin/env python3
"""Provide the ImageNet checkpoint of one TF-Slim network and record it for the training rules.

Looks for the official TF-Slim checkpoint of --arch (e.g. resnet_v1_50.ckpt) in --checkpoint-dir
(or its <arch>/ subfolder); with --allow-download, fetches and safely extracts the official archive
when it is missing. The checkpoint is then checked against the network built in a graph: every
variable but the logits must be present with the right shape, else the job fails listing what does
not match. Writes --out (JSON, atomically): arch, checkpoint prefix, variable counts, excluded
scopes and the checkpoint's number of classes.
"""

from deepbc.jobs import cli


def arguments(p):
    p.add_argument("--arch", required=True, help="TF-Slim network name, e.g. resnet_v1_50, inception_v3")
    p.add_argument("--checkpoint-dir", required=True, help="folder holding (or to receive) the checkpoints")
    p.add_argument("--allow-download", action="store_true",
                   help="download the official TF-Slim archive if the checkpoint is missing")
    p.add_argument("--out", required=True, help="JSON record to write, e.g. results/checkpoints/ARCH.json")


def run(args):
    from deepbc.training.checkpoints import prepare_checkpoint

    prepare_checkpoint(args.arch, args.checkpoint_dir, args.allow_download, args.out)


main = cli.script(__doc__, arguments, run)

if __name__ == "__main__":
    cli.run(main)
