#!/usr/bin/env python3
"""The per-magnification BreakHis table: task x magnification x architecture.

Image accuracy, patient recognition rate, AUC and patient-level accuracy and AUC, pooled over
the test folds, with 95 % intervals, for models trained on all magnifications (evaluated on each magnification's test
images) and models trained on one. CSV holds the numbers; Markdown and LaTeX are formatted.
See deepbc/results/magnification.py.
"""

from deepbc.jobs import cli


def arguments(p):
    p.add_argument("--metrics", required=True, nargs="+",
                   help="metrics JSONs of the BreakHis tasks' runs (all architectures and folds)")
    p.add_argument("--pooled", required=True, nargs="+",
                   help="results/metrics/{run}/{arch}/pooled.json of the same runs and architectures")
    p.add_argument("--out-csv", required=True, help="results/tables/magnification.csv")
    p.add_argument("--out-md", required=True, help="results/tables/magnification.md")
    p.add_argument("--out-tex", required=True, help="results/tables/magnification.tex")


def run(args):
    from deepbc.results import magnification

    magnification.write_magnification_table(magnification.magnification_table(args.metrics, args.pooled),
                                            args.out_csv, args.out_md, args.out_tex)


main = cli.script(__doc__, arguments, run)

if __name__ == "__main__":
    cli.run(main)
