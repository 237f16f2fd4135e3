#!/usr/bin/env python3
"""Fit the workflow's stain normalization (shards.stain_normalization) on its reference image.

Writes the parameters (method, reference statistics, torchstain version) as JSON: the shard writer
applies them to every image and the trained models carry them. The reference image
(shards.stain_reference) must lie under no dataset root and have the bytes of no dataset manifest's
image (every dataset image is a test image in some fold); without one, macenko uses Macenko's published reference stain matrix.
"""

from deepbc.jobs import cli


def arguments(p):
    p.add_argument("--shards-json", required=True,
                   type=cli.config_section("shards"),
                   help='the config section shards as JSON (config/schema.yaml), e.g. '
                        '\'{"stain_normalization": "macenko", "stain_reference": "ref.png"}\'')
    p.add_argument("--manifests", required=True, nargs="+",
                   help="the manifests of all the workflow's datasets (the reference must be none of their images)")
    p.add_argument("--roots", nargs="*", required=True,
                   help="the root folders of all the workflow's datasets (the reference must lie under none)")
    p.add_argument("--out", required=True, help="results/stain/reference.json")


def run(args):
    from deepbc.shards import stain

    settings = args.shards_json
    stain.fit_reference(settings["stain_normalization"], settings["stain_reference"], args.manifests, args.out,
                        roots=args.roots)


main = cli.script(__doc__, arguments, run)

if __name__ == "__main__":
    cli.run(main)
