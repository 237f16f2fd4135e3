#!/usr/bin/env python3
"""Training curves of one run and architecture: loss and accuracy against step, training and
validation, one colour per fold, stage changes marked.
"""

import argparse
import sys

from deepbc import logs


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--training", required=True, nargs="+",
                   help="results/models/{run}/{arch}/fold{k}/training.csv, all folds of one model")
    p.add_argument("--title", required=True, help="figure title, e.g. '{run} / {arch}'")
    p.add_argument("--out-png", required=True, help="PNG output")
    p.add_argument("--out-pdf", help="PDF output")
    p.add_argument("--log", default=None, help="log file")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    logs.setup(args.log)
    from deepbc import figures

    figures.plot_training(args.training, args.title, args.out_png, args.out_pdf)


if __name__ == "__main__":
    sys.exit(logs.run_main(main))
