#!/usr/bin/env python3
"""Leakage table: how much the preprint's image-level split inflates each metric.

For every task and architecture that ran both protocols, and every metric at patient and image
level: the image-level-protocol value, the patient-wise value (means over folds), their
difference and their ratio. Empty (header only) when no task ran both protocols.
"""

import argparse
import sys

from deepbc import logs


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--metrics", required=True, nargs="+", help="metrics JSONs of all runs")
    p.add_argument("--out-csv", required=True, help="results/tables/leakage.csv")
    p.add_argument("--out-md", help="results/tables/leakage.md")
    p.add_argument("--log", default=None, help="log file")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    logs.setup(args.log)
    from deepbc import tables

    tables.write_leakage(tables.leakage_table(args.metrics), args.out_csv, args.out_md)


if __name__ == "__main__":
    sys.exit(logs.run_main(main))
