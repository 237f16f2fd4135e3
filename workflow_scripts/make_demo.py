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

from deepbc import cli


def arguments(p):
    p.add_argument("--breakhis-out", required=True,
                   help="the BreakHis demo folder to write (named BreaKHis_v1, e.g. results/demo/BreaKHis_v1)")
    p.add_argument("--tma-out", required=True, help="the TMA demo folder to write (e.g. results/demo/tma)")
    p.add_argument("--seed", type=int, required=True, help="random seed (non-negative integer)")
    p.add_argument("--scale", type=cli.positive_int, required=True,
                   help="multiply the images per slide and magnification and per TMA patient")
    p.add_argument("--workers", type=cli.positive_int, required=True, help="processes drawing images")


def run(args):
    from deepbc.demo import make_demos

    make_demos(args.breakhis_out, args.tma_out, args.seed, scale=args.scale, workers=args.workers)


main = cli.script(__doc__, arguments, run)

if __name__ == "__main__":
    cli.run(main)
