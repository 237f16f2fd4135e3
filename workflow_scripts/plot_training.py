#!/usr/bin/env python3
"""Training curves of one run and architecture: loss and accuracy against step, training and
validation, one colour per fold, stage changes marked.
"""

from deepbc.jobs import cli


def arguments(p):
    p.add_argument("--training", required=True, nargs="+",
                   help="results/models/{run}/{arch}/fold{k}/training.csv, all folds of one model")
    p.add_argument("--title", required=True, help="figure title, e.g. '{run} / {arch}'")
    p.add_argument("--split-audit", required=True, nargs="+",
                   help="results/splits/{run}.audit.json: a predefined split or repeated holdouts is named in the "
                        "title")
    p.add_argument("--out-png", required=True, help="PNG output")
    p.add_argument("--out-pdf", required=True, help="PDF output")


def run(args):
    from deepbc.results import figures

    figures.plot_training(args.training, args.title, args.out_png, args.out_pdf, split_audits=args.split_audit)


main = cli.script(__doc__, arguments, run)

if __name__ == "__main__":
    cli.run(main)
