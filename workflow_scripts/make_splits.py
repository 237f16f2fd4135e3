#!/usr/bin/env python3
"""Split one task's images into k folds of train/val/test, patient-wise or image-level (leaky).

Reads the dataset manifest, keeps the task's images (filter, magnification, classes; label-conflict
images left out unless --include-label-conflicts), and writes the long splits table (one row per
image and fold; columns path, patient, slide, magnification, label, label_index, fold, split,
protocol). Protocol 'patient' never puts a patient on two sides of a fold (checked before writing);
protocol 'image' is the preprint's random image split, kept only to measure its inflation.
"""

import json

from deepbc import cli
from deepbc.errors import UserError


def arguments(p):
    p.add_argument("--manifest", required=True, help="manifest parquet of the task's dataset")
    p.add_argument("--task", required=True, help="task name (config key tasks.NAME)")
    p.add_argument("--task-json", required=True,
                   help='the task\'s config as JSON, e.g. \'{"dataset": "breakhis", "label": "tissue", '
                        '"classes": ["benign", "malignant"]}\'')
    p.add_argument("--protocol", required=True, help="patient (patient-wise folds) or image (the preprint's split)")
    p.add_argument("--k", type=int, required=True, help="number of folds")
    p.add_argument("--val-fraction", type=float, required=True,
                   help="share of each fold's training patients (or images) held out for validation")
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--include-label-conflicts", action="store_true",
                   help="keep images whose bytes appear under two labels (left out by default)")
    p.add_argument("--out", required=True, help="splits parquet to write")


def run(args):
    from deepbc.splits import build_splits_file
    from deepbc.tasks import Task

    try:
        spec = json.loads(args.task_json)
    except json.JSONDecodeError as err:
        raise UserError(f"--task-json is not valid JSON: {err}", "make_splits.py --task-json",
                        "pass the task's config mapping as JSON") from err
    task = Task.from_config(args.task, spec)
    build_splits_file(args.manifest, task, args.protocol, args.k, args.val_fraction, args.seed,
                      not args.include_label_conflicts, args.out)


main = cli.script(__doc__, arguments, run)

if __name__ == "__main__":
    cli.run(main)
