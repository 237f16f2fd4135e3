#!/usr/bin/env python3
"""The per-magnification BreakHis table: task x magnification x architecture.

Image accuracy, patient recognition rate, AUC and patient-level accuracy and AUC with 95 %
intervals, for models trained on all magnifications (evaluated on each magnification's test
images) and models trained on one. CSV holds the numbers; Markdown and LaTeX are formatted.
See deepbc/magnification.py.
"""

import argparse
import sys

from deepbc import logs


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--metrics", required=True, nargs="+",
                   help="metrics JSONs of the BreakHis tasks' runs (all architectures and folds)")
    p.add_argument("--out-csv", required=True, help="results/tables/magnification.csv")
    p.add_argument("--out-md", help="results/tables/magnification.md")
    p.add_argument("--out-tex", help="results/tables/magnification.tex")
    p.add_argument("--log", default=None, help="log file")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    logs.setup(args.log)
    from deepbc import magnification

    magnification.write_magnification_table(magnification.magnification_table(args.metrics),
                                            args.out_csv, args.out_md, args.out_tex)


if __name__ == "__main__":
    sys.exit(logs.run_main(main))
