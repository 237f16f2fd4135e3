#!/usr/bin/env python3
"""Per-class table of one task: one row per architecture, protocol and class.

Patients and images of the class, and at patient and image level its sensitivity, precision and
one-vs-rest AUC over the test predictions pooled over folds, each with its 95 % interval and n
(deepbc/results/per_class.py). CSV holds the numbers; Markdown is formatted.
"""

from deepbc.jobs import cli


def arguments(p):
    p.add_argument("--task", required=True, help="task name")
    p.add_argument("--pooled", required=True, nargs="+",
                   help="results/metrics/{run}/{arch}/pooled.json of the task's runs and architectures")
    p.add_argument("--out-csv", required=True, help="results/tables/{task}_per_class.csv")
    p.add_argument("--out-md", required=True, help="results/tables/{task}_per_class.md")


def run(args):
    from deepbc.results import per_class

    per_class.write_per_class_table(per_class.per_class_table(args.pooled, args.task), args.out_csv, args.out_md)


main = cli.script(__doc__, arguments, run)

if __name__ == "__main__":
    cli.run(main)
