#!/usr/bin/env python3
"""Leakage table: how much the preprint's image-level split inflates each metric.

For every task and architecture that ran both protocols, and every metric at patient and image
level: the image-level-protocol value, the patient-wise value (each pooled over its test folds),
their difference with a paired bootstrap interval, and their ratio. Empty (header only) when no
task ran both protocols.
"""

from deepbc.jobs import cli


def arguments(p):
    p.add_argument("--pooled", required=True, nargs="+",
                   help="results/metrics/{run}/{arch}/pooled.json of all runs and architectures")
    p.add_argument("--out-csv", required=True, help="results/tables/leakage.csv")
    p.add_argument("--out-md", required=True, help="results/tables/leakage.md")


def run(args):
    from deepbc.results import tables

    tables.write_leakage(tables.leakage_table(args.pooled), args.out_csv, args.out_md)


main = cli.script(__doc__, arguments, run)

if __name__ == "__main__":
    cli.run(main)
