#!/usr/bin/env python3
"""bfloat16 parity: precision: mixed against fp32 on the demo's patient-wise tasks (fold 0), several
seeds each: validation loss and patient-level accuracy, balanced accuracy and AUC, with the
seed-to-seed spread and the CPU's bfloat16 flags. Prints one JSON line.

    .venv/bin/python bench/parity.py --seeds 1 2 3 4
    .venv/bin/python bench/parity.py --quick   # the smoke test: a check, not a measurement
"""

import argparse
import sys


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3, 4])
    parser.add_argument("--runs", nargs="*", default=None, help="runs (default: the demo's patient-wise runs)")
    parser.add_argument("--steps", type=int, default=None, help="training steps (default: the demo's)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--emulate", action="store_true",
                        help="pretend the CPU has bfloat16 instructions: oneDNN's rewrite runs in emulation "
                             "(needs AVX512F; refused on an AVX2-only CPU)")
    parser.add_argument("--workdir", help="where the demo's run goes (default: the system's temp folder)")
    parser.add_argument("--quick", action="store_true",
                        help="a check, not a measurement: one run (cancer_types), 2 seeds, 4 steps")
    args = parser.parse_args(argv)
    if args.quick:
        args.seeds, args.runs, args.steps = [1, 2], ["cancer_types"], 4
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    from deepbc.bench import common, parity

    common.log_to_stderr()
    common.emit("parity", parity.run(seeds=tuple(args.seeds), runs=args.runs, steps=args.steps, threads=args.threads,
                                     workdir=args.workdir, emulate=args.emulate))
    return 0


if __name__ == "__main__":
    sys.exit(main())
