#!/usr/bin/env python3
"""Export a fold's kept model as a TensorFlow SavedModel, served without this package.

Example:
  python workflow_scripts/export_model.py --model-dir results/models/benign_vs_malignant/resnet_small/fold0 \\
      --out results/export/benign_vs_malignant/resnet_small/fold0 --threads 0

Signature serving_default: images (a batch of encoded JPEG/PNG strings) -> probabilities
[batch, classes] and class_names; the network's evaluation preprocessing is inside.
"""

from deepbc.jobs import cli, gpu, locks


def arguments(p):
    p.add_argument("--model-dir", required=True, help="results/models/{run}/{arch}/fold{k}")
    p.add_argument("--out", required=True, help="the SavedModel folder, results/export/{run}/{arch}/fold{k}")
    p.add_argument("--threads", type=cli.job_cpus, required=True,
                   help="threads (0: every CPU given; capped at the job's CPUs and SLURM's allocation)")
    gpu.add_arguments(p)
    locks.add_arguments(p)


def run(args):
    # The lock comes before the GPU lease, so that a waiting job holds no GPU.
    with locks.exclusive(args.out, "this export", args.lock_timeout), gpu.lease_from_args(args):
        from deepbc.training import export

        export.export_saved_model(args.model_dir, args.out, args.threads)


main = cli.script(__doc__, arguments, run)

if __name__ == "__main__":
    cli.run(main)
