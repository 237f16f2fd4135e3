#!/usr/bin/env python3
"""A paper-scale rehearsal: config/paper.yaml's whole DAG on a generated BreakHis-sized (7,909
images, 700x460, the real archive's paths) and TMA-sized (6,400 images, 4 classes, patients CSV)
dataset, training cut to a few steps on small images by an overlay (--configfile config/paper.yaml
overlay.yaml), at 1/8, 1/4, 1/2 and full size: wall and CPU time per rule, peak memory, disk,
Snakemake's own CPU time and dry run, the no-op rerun, and each rule's growth exponent in images.
Prints one JSON line.

    .venv/bin/python bench/paper_rehearsal.py --fractions 8 4 2 1
    .venv/bin/python bench/paper_rehearsal.py --fractions 8 4 --archs resnet_v1_50 --folds 0
    .venv/bin/python bench/paper_rehearsal.py --quick   # the smoke test: a check, not a measurement
"""

import argparse
import sys


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fractions", type=int, nargs="+", default=[8, 4, 2, 1],
                        help="sizes as 1/F of the study's (default 8 4 2 1)")
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--archs", nargs="*", default=None, help="architectures (default: paper.yaml's seven)")
    parser.add_argument("--folds", type=int, nargs="*", default=None, help="folds (default: paper.yaml's, all)")
    parser.add_argument("--targets", nargs="*", default=[], metavar="TARGET",
                        help="Snakemake targets (default: the default target, the whole DAG)")
    parser.add_argument("--data-dir", help="keep the generated datasets here and reuse them")
    parser.add_argument("--workdir", help="where the runs go (default: the system's temp folder)")
    parser.add_argument("--quick", action="store_true",
                        help="a check, not a measurement: 1/128 and 1/64 up to the manifests, small images")
    args = parser.parse_args(argv)
    if args.quick:
        args.fractions, args.targets = [128, 64], ["manifests"]
    if sorted(set(args.fractions), reverse=True) != args.fractions or len(args.fractions) < 2:
        parser.error("--fractions needs at least two values, largest F (smallest dataset) first, e.g. 8 4 2 1")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    from deepbc.bench import common, rehearsal

    common.log_to_stderr()
    common.emit("paper_rehearsal", rehearsal.run(fractions=tuple(args.fractions), cores=args.cores, archs=args.archs,
                                                 folds=args.folds, workdir=args.workdir, data_dir=args.data_dir,
                                                 targets=args.targets, small_images=args.quick))
    return 0


if __name__ == "__main__":
    sys.exit(main())
