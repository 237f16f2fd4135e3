#!/usr/bin/env python3
"""Verify every file of a dataset and write its manifest (usable images) and rejects.

Each file under the root is identified from its header, decoded in full with Pillow (deepbc.data.imageio) and
hashed; each lands in
exactly one of the manifest (parquet, sorted by path) and the rejects (CSV: path, reason, detail).
With --url, the dataset is first fetched and extracted into the root if it is not there yet.
"""

from deepbc.data.manifest import KINDS, check_dataset
from deepbc.jobs import cli


def arguments(p):
    p.add_argument("--dataset", required=True, help="dataset name from the config (used in messages)")
    p.add_argument("--kind", required=True, choices=KINDS,
                   help="breakhis: the official BreakHis layout; folder: one subfolder per class")
    p.add_argument("--root", required=True,
                   help="dataset folder (breakhis: the folder holding BreaKHis_v1/, or any folder down to "
                        "BreaKHis_v1/histology_slides/breast); manifest paths are relative to it")
    p.add_argument("--classes", nargs="+", default=None, help="class folder names (folder datasets only)")
    p.add_argument("--patients-csv", default="",
                   help="CSV with columns path (relative to the root) and patient (folder datasets only; "
                        "empty: every image is its own patient)")
    p.add_argument("--url", default="", help="download URL of the dataset archive (empty: no download)")
    p.add_argument("--sha256", default="", help="expected sha256 of the archive")
    p.add_argument("--allow-download", action="store_true", help="allow fetching --url if the root is missing")
    p.add_argument("--download-dir", default=None, help="where the archive is downloaded (needed with --url)")
    p.add_argument("--max-extracted-gb", type=float, default=None,
                   help="refuse an archive unpacking to more than this (needed with --url)")
    p.add_argument("--max-compression-ratio", type=float, default=None,
                   help="refuse an archive member unpacking to more than this times its compressed size "
                        "(needed with --url)")
    p.add_argument("--workers", type=cli.job_cpus, required=True, help="processes decoding and hashing images")
    p.add_argument("--manifest", required=True, help="output manifest (.parquet)")
    p.add_argument("--rejects", required=True, help="output rejects (.csv)")


def run(args):
    check_dataset(args.dataset, args.kind, args.root, args.manifest, args.rejects, classes=args.classes,
                  patients_csv=args.patients_csv, workers=args.workers, url=args.url, sha256=args.sha256,
                  allow_download=args.allow_download, download_dir=args.download_dir,
                  max_extracted_gb=args.max_extracted_gb, max_compression_ratio=args.max_compression_ratio)


main = cli.script(__doc__, arguments, run)

if __name__ == "__main__":
    cli.run(main)
