#!/usr/bin/env python3
"""Generate the synthetic demo datasets: BreakHis layout and a 4-class TMA-like folder layout.

The images imitate H&E staining (pink stroma, purple nuclei) with class-specific tissue
architecture, per-patient stain variation and magnification-dependent scale. The same seed gives
byte-identical files. The BreakHis demo (396 PNG, 112x74) has the official folder layout and two of
the real dataset's traps: two slide folders of one patient (14-22549AB, 14-22549CD) and slide
14-13412 filed under ductal and lobular carcinoma with byte-identical images. The TMA demo (96
images, 96x96, PNG and JPEG) has folders breast/, bladder/, lung/, lymphoma/ and patients.csv
(path,patient). Each output folder is replaced atomically when its generation finishes.
"""

import argparse
import sys

from deepbc import logs


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--breakhis-out", required=True,
                        help="the BreakHis demo folder to write (named BreaKHis_v1, e.g. results/demo/BreaKHis_v1)")
    parser.add_argument("--tma-out", required=True, help="the TMA demo folder to write (e.g. results/demo/tma)")
    parser.add_argument("--seed", type=int, required=True, help="random seed (non-negative integer)")
    parser.add_argument("--scale", type=int, default=1,
                        help="multiply the images per slide and magnification and per TMA patient (default 1)")
    parser.add_argument("--workers", type=int, default=1, help="processes drawing images (default: 1)")
    parser.add_argument("--log", help="log file (appended)")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    logs.setup(args.log)
    from deepbc.demo import make_demos

    make_demos(args.breakhis_out, args.tma_out, args.seed, scale=args.scale, workers=args.workers)


if __name__ == "__main__":
    sys.exit(logs.run_main(main))
