#!/usr/bin/env python3
"""ROC curves of one task: patient level and image level, one curve per architecture and
protocol, test predictions pooled over folds (macro one-vs-rest for more than two classes). The
legend gives the pooled AUC and the mean of the per-fold AUCs (the tables' figure).
"""

from deepbc.jobs import cli


def arguments(p):
    p.add_argument("--task", required=True, help="task name")
    p.add_argument("--classes", required=True, nargs="+", help="the task's classes, in config order")
    p.add_argument("--predictions", required=True, nargs="+",
                   help="results/predictions/{run}/{arch}/fold{k}.parquet of the task's runs")
    p.add_argument("--manifest", required=True,
                   help="results/manifest/{dataset}.parquet: tells whether images map to patients")
    p.add_argument("--external-test", default=None,
                   help="the task's test_dataset, when the test images are an external dataset's")
    p.add_argument("--split-audit", required=True, nargs="+",
                   help="results/splits/{run}.audit.json of the task's runs: a predefined split or repeated "
                        "holdouts is named in the title")
    p.add_argument("--out-png", required=True, help="PNG output")
    p.add_argument("--out-pdf", required=True, help="PDF output")


def run(args):
    from deepbc.results import figures

    figures.plot_roc(args.predictions, args.classes, args.task, args.manifest, args.out_png,
                     args.out_pdf, test_dataset=args.external_test, split_audits=args.split_audit)


main = cli.script(__doc__, arguments, run)

if __name__ == "__main__":
    cli.run(main)
