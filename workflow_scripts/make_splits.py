#!/usr/bin/env python3
"""Split one task's images into k folds of train/val/test, patient-wise or image-level (leaky).

Reads the dataset manifest, keeps the task's images (filter, magnification, classes; label-conflict
images left out unless --include-label-conflicts), and writes the long splits table (one row per
image and fold; columns path, patient, slide, magnification, label, label_index, fold, split,
protocol). Protocol 'patient' never puts a patient on two sides of a fold (checked before writing);
protocol 'image' is the preprint's random image split, kept only to measure its inflation.
A task with a test_dataset (--test-manifest) keeps train/val patient-wise on its dataset and tests
every fold on all of the test dataset's images (column dataset says which dataset a row is from).
"""

import argparse
import json
import sys

from deepbc import logs
from deepbc.errors import UserError


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--manifest", required=True, help="manifest parquet of the task's dataset")
    parser.add_argument("--task", required=True, help="task name (config key tasks.NAME)")
    parser.add_argument("--task-json", required=True,
                        help='the task\'s config as JSON, e.g. \'{"dataset": "breakhis", "label": "tissue", '
                             '"classes": ["benign", "malignant"]}\'')
    parser.add_argument("--protocol", required=True, choices=["patient", "image"])
    parser.add_argument("--k", type=int, required=True, help="number of folds")
    parser.add_argument("--val-fraction", type=float, required=True,
                        help="share of each fold's training patients (or images) held out for validation")
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--include-label-conflicts", action="store_true",
                        help="keep images whose bytes appear under two labels (left out by default)")
    parser.add_argument("--test-manifest", default=None,
                        help="manifest parquet of the task's test_dataset (external validation only)")
    parser.add_argument("--out", required=True, help="splits parquet to write")
    parser.add_argument("--log", help="log file (appended)")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    logs.setup(args.log)
    from deepbc.splits import build_splits_file
    from deepbc.tasks import Task

    try:
        spec = json.loads(args.task_json)
    except json.JSONDecodeError as err:
        raise UserError(f"--task-json is not valid JSON: {err}", "make_splits.py --task-json",
                        "pass the task's config mapping as JSON") from err
    task = Task.from_config(args.task, spec)
    build_splits_file(args.manifest, task, args.protocol, args.k, args.val_fraction, args.seed,
                      not args.include_label_conflicts, args.out, test_manifest_path=args.test_manifest)


if __name__ == "__main__":
    sys.exit(logs.run_main(main))
