#!/usr/bin/env python3
"""Pooled metrics of a run and architecture: the test predictions of every fold run (of one repeat), pooled.

Writes a JSON with one confusion matrix over all the task's classes, accuracy, balanced accuracy,
sensitivity, specificity, precision and AUC (macro and per class, one-vs-rest) at image and
patient level, the patient recognition rate, the same per magnification (BreakHis), and 95 %
intervals: Wilson for patient-level proportions, MOVER-Wilson for the balanced accuracy, a patient
bootstrap (Poisson weights keyed by patient id) for the rest; plus ``meta`` for the tables.
Conventions: see deepbc/evaluation/pooled.py.
"""

from deepbc.jobs import cli


def arguments(p):
    p.add_argument("--predictions", required=True, nargs="+",
                   help="results/predictions/{run}/{arch}/fold{k}.parquet of every fold run (repeat r > 0: "
                        "fold{k}_r{r}.parquet)")
    p.add_argument("--classes", required=True, nargs="+", help="the task's classes, in config order")
    p.add_argument("--run", required=True, help="run name: {task}, {task}__image_level or {task}__augmented_image_level")
    p.add_argument("--arch", required=True, help="architecture name")
    p.add_argument("--manifest", required=True,
                   help="results/manifest/{dataset}.parquet: tells whether images map to patients")
    p.add_argument("--magnification", required=True,
                   help="the magnification the task trained on (all, 40X, ...), recorded in meta")
    p.add_argument("--external-test", default=None,
                   help="the task's test_dataset, when the test images are an external dataset's")
    p.add_argument("--evaluation-json", required=True, type=cli.config_section("evaluation"),
                   help='the config section evaluation as JSON, e.g. \'{"n_bootstrap": 1000}\' '
                        "(bootstrap draws of patients; 0: only the closed-form intervals)")
    p.add_argument("--seed", type=int, required=True, help="seed of the bootstrap draws")
    p.add_argument("--out", required=True, help="results/metrics/{run}/{arch}/pooled.json (repeat r > 0: pooled_r{r}.json)")


def run(args):
    from deepbc.evaluation import pooled

    pooled.pooled_file(args.predictions, args.classes, args.out, args.run, args.arch, args.manifest,
                       args.magnification, n_boot=args.evaluation_json["n_bootstrap"], seed=args.seed,
                       test_dataset=args.external_test)


main = cli.script(__doc__, arguments, run)

if __name__ == "__main__":
    cli.run(main)
