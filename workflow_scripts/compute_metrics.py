#!/usr/bin/env python3
"""Metrics of one fold's test predictions: image and patient level, bootstrap CIs over patients.

Writes a JSON with accuracy, balanced accuracy, per-class sensitivity, specificity, precision, F1,
FP/FN, ROC AUC, the patient recognition rate, calibration (ECE, Brier; also after temperature
scaling fitted on the validation predictions), the same per magnification (BreakHis), confusion
matrices and 95% CIs from resampling patients, plus ``meta`` (run, task, protocol, grouping, arch,
fold, repeat, magnification trained on, and with --split-audit the split's scheme and label) for the
tables; the grouping (patient, or image when the dataset has no patient mapping) comes from the
manifest. Conventions: see deepbc/evaluation/metrics.py.
"""

from deepbc.data.runs import parse_model_fold
from deepbc.jobs import cli


def arguments(p):
    p.add_argument("--predictions", required=True, help="results/predictions/{run}/{arch}/fold{k}.parquet")
    p.add_argument("--classes", required=True, nargs="+", help="the task's classes, in config order")
    p.add_argument("--run", required=True, help="run name: {task}, {task}__image_level or {task}__augmented_image_level")
    p.add_argument("--arch", required=True, help="architecture name")
    p.add_argument("--fold", required=True, type=parse_model_fold,
                   help="the model's fold: k, or k_r<r> for repeat r of fold k (train.repeats)")
    p.add_argument("--manifest", required=True,
                   help="results/manifest/{dataset}.parquet: tells whether images map to patients")
    p.add_argument("--validation-predictions", required=True,
                   help="results/validation_predictions/{run}/{arch}/fold{k}.parquet: the "
                        "temperature scaling is fitted on them")
    p.add_argument("--magnification", required=True,
                   help="the magnification the task trained on (all, 40X, ...), recorded in meta")
    p.add_argument("--external-test", default=None,
                   help="the task's test_dataset, when the test images are an external dataset's")
    p.add_argument("--evaluation-json", required=True, type=cli.config_section("evaluation"),
                   help='the config section evaluation as JSON, e.g. \'{"n_bootstrap": 1000}\' '
                        "(bootstrap draws of patients; 0: no CIs)")
    p.add_argument("--split-audit", required=True,
                   help="results/splits/{run}.audit.json: the split's scheme and label, and the classes this "
                        "fold's validation set lacks, recorded in meta.split for the tables")
    p.add_argument("--seed", type=int, required=True, help="seed of the bootstrap draws")
    p.add_argument("--out", required=True, help="metrics JSON")


def run(args):
    from deepbc.evaluation import metrics

    fold, repeat = args.fold
    metrics.metrics_file(args.predictions, args.classes, args.out, args.run, args.arch, fold,
                         args.manifest, args.magnification, n_boot=args.evaluation_json["n_bootstrap"],
                         seed=args.seed, validation_predictions=args.validation_predictions,
                         test_dataset=args.external_test, split_audit=args.split_audit, repeat=repeat)


main = cli.script(__doc__, arguments, run)

if __name__ == "__main__":
    cli.run(main)
