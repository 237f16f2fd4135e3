#!/usr/bin/env python3
"""The calibration table: per task, protocol and architecture, the expected calibration error and
the Brier score at image and patient level, mean ± sd over folds with a 95 % interval. CSV holds
the numbers; Markdown and LaTeX are formatted. See deepbc/calibration.py.
"""

import argparse
import sys

from deepbc import logs


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--metrics", required=True, nargs="+",
                   help="metrics JSONs of every run, architecture and fold")
    p.add_argument("--out-csv", required=True, help="results/tables/calibration.csv")
    p.add_argument("--out-md", help="results/tables/calibration.md")
    p.add_argument("--out-tex", help="results/tables/calibration.tex")
    p.add_argument("--log", default=None, help="log file")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    logs.setup(args.log)
    from deepbc import calibration

    calibration.write_calibration_table(calibration.calibration_table(args.metrics),
                                        args.out_csv, args.out_md, args.out_tex)


if __name__ == "__main__":
    sys.exit(logs.run_main(main))
