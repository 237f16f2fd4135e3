#!/usr/bin/env python3
"""Generate one synthetic demo dataset: the BreakHis layout, or a 4-class TMA-like folder layout.

The images imitate H&E staining (pink stroma, purple nuclei) with class-specific tissue
architecture, per-patient stain variation and magnification-dependent scale. The same seed gives
byte-identical files. The BreakHis demo (396 PNG, 112x74) has the official folder layout and two of
the real dataset's traps: two slide folders of one patient (14-22549AB, 14-22549CD) and slide
14-13412 filed under ductal and lobular carcinoma with byte-identical images. The TMA demo (96
images, 96x96, PNG and JPEG) has folders breast/, bladder/, lung/, lymphoma/ under images/, and
patients.csv (path,patient) beside images/, outside the dataset root. Each output folder is replaced
atomically when its generation finishes.
"""

from deepbc.jobs import cli


def arguments(p):
    from deepbc.data.datasets import DEMO_ROOT_FOLDERS

    p.add_argument("--demo", required=True, choices=sorted(DEMO_ROOT_FOLDERS), help="which demo dataset to draw")
    p.add_argument("--out", required=True,
                   help="the folder to write it into (e.g. results/demo/breakhis, which gets BreaKHis_v1/)")
    p.add_argument("--seed", type=int, required=True, help="random seed (non-negative integer)")
    p.add_argument("--scale", type=cli.positive_int, required=True,
                   help="multiply the images per slide and magnification, or per TMA patient")
    p.add_argument("--workers", type=cli.job_cpus, required=True, help="processes drawing images")


def run(args):
    from deepbc.data.demo import make_demo

    make_demo(args.demo, args.out, args.seed, scale=args.scale, workers=args.workers)


main = cli.script(__doc__, arguments, run)

if __name__ == "__main__":
    cli.run(main)
