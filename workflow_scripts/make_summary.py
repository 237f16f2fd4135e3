#!/usr/bin/env python3
"""Summary table: one row per task with the patient-wise test figures of the architecture chosen
on validation data.

Chosen = best validation metric (the models' keep_best_by) of the kept checkpoints, mean over
folds; the test figures never enter the choice (deepbc.results.tables.summary_table).
"""

from deepbc.jobs import cli


def arguments(p):
    p.add_argument("--metrics", required=True, nargs="+", help="metrics JSONs of all runs")
    p.add_argument("--pooled", required=True, nargs="+",
                   help="results/metrics/{run}/{arch}/pooled.json of the patient-wise runs")
    p.add_argument("--models", required=True, nargs="+",
                   help="results/models/{run}/{arch}/fold{k}/settings.json of the patient-wise runs "
                        "(training.csv is read beside each)")
    p.add_argument("--out-csv", required=True, help="results/tables/summary.csv")
    p.add_argument("--out-md", required=True, help="results/tables/summary.md")


def run(args):
    from deepbc.results import tables

    tables.write_summary(tables.summary_table(args.metrics, args.pooled, args.models), args.out_csv, args.out_md)


main = cli.script(__doc__, arguments, run)

if __name__ == "__main__":
    cli.run(main)
