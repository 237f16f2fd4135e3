#!/usr/bin/env python3
"""Wall time and peak memory of the default workflow (``snakemake --cores 2`` on the embedded demo)
from an empty results directory, then the time of a no-op rerun. Where the time went comes from
the usage line each job's log ends with, summed per rule. Prints one JSON line.

    .venv/bin/python bench/end_to_end.py --cores 2
    .venv/bin/python bench/end_to_end.py --config "tasks=[cancer_types]" "folds=[0]"   # a smaller run
    .venv/bin/python bench/end_to_end.py --targets models   # part of the workflow
"""

import argparse
import sys


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--config", nargs="*", default=[], metavar="KEY=VALUE",
                        help="config overrides passed to snakemake --config")
    parser.add_argument("--configfile", nargs="*", default=[], metavar="YAML",
                        help="config overlays on config/config.yaml (snakemake --configfile)")
    parser.add_argument("--targets", nargs="*", default=[], metavar="TARGET",
                        help="Snakemake targets to run (default: the default target, the whole workflow)")
    parser.add_argument("--workdir", help="where the run's directory goes (default: the system's temp folder)")
    parser.add_argument("--keep", action="store_true", help="keep the run (copied to WORKDIR/end_to_end_run)")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    from deepbc.bench import common, end_to_end

    common.log_to_stderr()

    common.emit("end_to_end", end_to_end.run(cores=args.cores, config=args.config, configfiles=args.configfile,
                                             workdir=args.workdir, keep=args.keep, targets=args.targets))
    return 0


if __name__ == "__main__":
    sys.exit(main())
