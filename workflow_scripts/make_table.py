#!/usr/bin/env python3
"""Result table of one task: one row per architecture and protocol, its folds' test predictions pooled.

Patient- and image-level accuracy, balanced accuracy, sensitivity and specificity (two classes;
macro specificity for more), AUC, FP and FN, each with its 95 % interval and n, with the
preprint's own figures (deepbc/results/preprint.yaml) beside ours and its ambiguities as
footnotes. CSV holds the numbers (and the per-fold mean and sd); Markdown and LaTeX are formatted.
"""

from deepbc.jobs import cli


def arguments(p):
    p.add_argument("--task", required=True, help="task name")
    p.add_argument("--metrics", required=True, nargs="+",
                   help="metrics JSONs of the task's runs (all architectures, protocols and folds)")
    p.add_argument("--pooled", required=True, nargs="+",
                   help="results/metrics/{run}/{arch}/pooled.json of the same runs and architectures")
    p.add_argument("--out-csv", required=True, help="results/tables/{task}.csv")
    p.add_argument("--out-md", required=True, help="results/tables/{task}.md")
    p.add_argument("--out-tex", required=True, help="results/tables/{task}.tex")


def run(args):
    from deepbc.results import tables

    tables.write_task_table(tables.task_table(args.metrics, args.pooled, args.task),
                            args.out_csv, args.out_md, args.out_tex)


main = cli.script(__doc__, arguments, run)

if __name__ == "__main__":
    cli.run(main)
