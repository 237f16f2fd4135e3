#!/usr/bin/env python3
"""The calibration table: per task, protocol and architecture, the expected calibration error and
the Brier score at image and patient level, mean ± sd over folds with a 95 % interval. CSV holds
the numbers; Markdown and LaTeX are formatted. See deepbc/results/calibration.py.
"""

from deepbc.jobs import cli


def arguments(p):
    p.add_argument("--metrics", required=True, nargs="+",
                   help="metrics JSONs of every run, architecture and fold")
    p.add_argument("--out-csv", required=True, help="results/tables/calibration.csv")
    p.add_argument("--out-md", required=True, help="results/tables/calibration.md")
    p.add_argument("--out-tex", required=True, help="results/tables/calibration.tex")


def run(args):
    from deepbc.results import calibration

    calibration.write_calibration_table(calibration.calibration_table(args.metrics),
                                        args.out_csv, args.out_md, args.out_tex)


main = cli.script(__doc__, arguments, run)

if __name__ == "__main__":
    cli.run(main)
