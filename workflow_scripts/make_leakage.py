#!/usr/bin/env python3
"""Leakage table: how much each leaky protocol (image-level; augment-then-split, the preprint's
leak) inflates each metric.

For every task and architecture that ran patient-wise and under a leaky protocol, and every metric
at patient and image level: each protocol's value (pooled over its test folds), and each leaky
protocol against patient-wise, and augment-then-split against image-level: the difference with a
paired bootstrap interval, and the ratio. Empty (header only) when no task ran patient-wise and
under a leaky protocol.
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
