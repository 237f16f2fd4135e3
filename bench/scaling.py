#!/usr/bin/env python3
"""End-to-end time of the workflow at 1x, 2x and 4x the demo's images (config key demo_scale), and
the growth exponent of time in images (at most 1: no faster than linear). Prints one JSON line.

    .venv/bin/python bench/scaling.py --scales 1 2 4
    .venv/bin/python bench/scaling.py --scales 1 2 --targets manifests   # the dataset checks only
"""

import argparse
import sys


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scales", type=int, nargs="+", default=[1, 2, 4], help="demo_scale values (default 1 2 4)")
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--config", nargs="*", default=[], metavar="KEY=VALUE",
                        help="config overrides passed to snakemake --config")
    parser.add_argument("--configfile", nargs="*", default=[], metavar="YAML",
                        help="config overlays on config/config.yaml (snakemake --configfile)")
    parser.add_argument("--targets", nargs="*", default=[], metavar="TARGET",
                        help="Snakemake targets to run (default: the default target, the whole workflow)")
    parser.add_argument("--workdir", help="where the runs go (default: the system's temp folder)")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if len(args.scales) < 2 or sorted(set(args.scales)) != args.scales:
        sys.exit("error: --scales needs at least two increasing values, e.g. 1 2 4")
    from deepbc.bench import common, end_to_end

    common.log_to_stderr()

    common.emit("scaling", end_to_end.scaling(args.scales, cores=args.cores, config=args.config,
                                              configfiles=args.configfile, workdir=args.workdir,
                                              targets=args.targets))
    return 0


if __name__ == "__main__":
    sys.exit(main())
