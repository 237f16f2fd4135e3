#!/usr/bin/env python3
"""Summary table: one row per task with the best architecture's patient-wise figures.

Best = highest patient-level balanced accuracy (mean over folds) among the patient-wise runs;
ties go to the higher patient-level AUC, then to the architecture name.
"""

import argparse
import sys

from deepbc import logs


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--metrics", required=True, nargs="+", help="metrics JSONs of all runs")
    p.add_argument("--out-csv", required=True, help="results/tables/summary.csv")
    p.add_argument("--out-md", help="results/tables/summary.md")
    p.add_argument("--log", default=None, help="log file")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    logs.setup(args.log)
    from deepbc import tables

    tables.write_summary(tables.summary_table(args.metrics), args.out_csv, args.out_md)


if __name__ == "__main__":
    sys.exit(logs.run_main(main))
