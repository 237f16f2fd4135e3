#!/usr/bin/env python3
"""Predict a fold's test split with the kept checkpoint of a trained model, and draw its Grad-CAM figure.

Writes one row per test image: path, patient, magnification, label, one probability column per
class (prob_<class>), and the predicted class; the same for the validation split (what
temperature scaling is fitted on); and the Grad-CAM maps of a seeded sample of the test images (up
to two correct and two wrong per true class, each shown as the network's input and the map over
it), all in the same job.
"""

from deepbc.jobs import cli, gpu, locks


def arguments(p):
    p.add_argument("--model-dir", required=True, help="results/models/{run}/{arch}/fold{k}")
    p.add_argument("--shard-index", required=True, help="the split's index, e.g. .../fold0/test.json")
    p.add_argument("--out", required=True, help="predictions parquet")
    p.add_argument("--val-shard-index", required=True, help="the fold's validation index, .../fold0/val.json")
    p.add_argument("--val-out", required=True, help="validation predictions parquet")
    p.add_argument("--gradcam-png", required=True, help="the Grad-CAM figure, results/figures/gradcam/.../fold{k}.png")
    p.add_argument("--classes", required=True, nargs="+", help="the task's classes, in config order")
    p.add_argument("--seed", required=True, type=int, help="chooses the Grad-CAM sample of images")
    p.add_argument("--title", required=True, help="Grad-CAM figure title, e.g. run / arch / fold k")
    p.add_argument("--split-audit", required=True, nargs="+",
                   help="results/splits/{run}.audit.json: a predefined split or repeated holdouts is named in the "
                        "Grad-CAM title")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--threads", type=cli.job_cpus, required=True,
                   help="threads (0: every CPU given; capped at the job's CPUs and SLURM's allocation)")
    gpu.add_arguments(p)
    locks.add_arguments(p)


def run(args):
    # One job per output; the lock comes before the GPU lease, so that a waiting job holds no GPU.
    with locks.exclusive(args.out, "these predictions", args.lock_timeout), gpu.lease_from_args(args):
        from deepbc.evaluation import evaluate

        evaluate.evaluate_fold(args.model_dir, args.shard_index, args.out, args.val_shard_index, args.val_out,
                               args.gradcam_png, args.classes, args.seed, args.title, args.batch_size, args.threads,
                               split_audits=args.split_audit)


main = cli.script(__doc__, arguments, run)

if __name__ == "__main__":
    cli.run(main)
