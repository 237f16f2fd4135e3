#!/usr/bin/env python3
"""Split one task's images into folds of train/val/test: k folds or repeated holdouts, patient-wise,
image-level or augment-then-split (leaky), or a predefined split from a CSV; write the splits and
their audit.

Reads the dataset manifest, keeps the task's images (filter, magnification, classes; label-conflict
images left out if splits.exclude_label_conflicts), and writes the long splits table (one row per
image and fold; columns path, patient, slide, magnification, label, label_index, fold, split,
protocol; under augmented_image one row per image copy, with its copy id). Protocol 'patient' never
puts a patient on two sides of a fold (checked before writing; a predefined split may, with
splits.allow_straddling); protocol 'image' splits the images at random, 'augmented_image' their 8
rotations and mirror images (the preprint's leak), both kept only to measure the inflation. A training set without a class of the task is
refused. A task at one magnification is split as the same task at all magnifications. A task with a
test_dataset (--test-manifest) keeps train/val patient-wise on its dataset and tests every fold on
all of the test dataset's images (column dataset says which dataset a row is from). The audit
(JSON, CSV, Markdown) says what the split is, which classes each side lacks and which patients sit
on two sides.
"""

from deepbc.jobs import cli


def arguments(p):
    p.add_argument("--manifest", required=True, help="manifest parquet of the task's dataset")
    p.add_argument("--task", required=True, help="task name (config key tasks.NAME)")
    p.add_argument("--task-json", required=True,
                   type=cli.config_section("task_definitions.<task>",
                                           "/properties/task_definitions/additionalProperties"),
                   help='the task\'s config as JSON, e.g. \'{"dataset": "breakhis", "label": "tissue", '
                        '"classes": ["benign", "malignant"]}\'')
    p.add_argument("--protocol", required=True,
                   help="patient (patient-wise folds), image (images at random) or augmented_image (augment, then split)")
    p.add_argument("--splits-json", required=True,
                   type=cli.config_section("splits"),
                   help='the task\'s split settings (the config section splits, with the task\'s own '
                        'splits over it) as JSON, e.g. \'{"k": 5, "val_fraction": 0.2}\'')
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--test-manifest", default=None,
                   help="manifest parquet of the task's test_dataset (external validation only)")
    p.add_argument("--out", required=True, help="splits parquet to write")
    p.add_argument("--audit-json", required=True, help="the split's audit: summary JSON (scheme, label, per fold "
                                                       "sizes and absent classes), read by the metrics")
    p.add_argument("--audit-csv", required=True, help="the split's audit: patients with images on two sides")
    p.add_argument("--audit-md", required=True, help="the split's audit as a page to read")


def run(args):
    from deepbc.data.splits import SplitSettings, build_splits_file
    from deepbc.data.tasks import Task

    task = Task.from_config(args.task, args.task_json)
    build_splits_file(args.manifest, task, args.protocol, SplitSettings.from_config(args.splits_json), args.seed,
                      args.out, (args.audit_json, args.audit_csv, args.audit_md),
                      test_manifest_path=args.test_manifest)


main = cli.script(__doc__, arguments, run)

if __name__ == "__main__":
    cli.run(main)
