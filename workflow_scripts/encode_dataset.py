#!/usr/bin/env python3
"""Encode every image of a dataset's manifest once, into the dataset's store of TFRecord shards.

Output in --out-dir: shard-{i:05d}-of-{n:05d}.tfrecord and store.json (encoding, shards, their
sha256, each image's shard and position). Each file is checked against the manifest's sha256 and
encoded with the shards settings; the images are shuffled with --seed and dealt into shards of at
most images_per_shard images whose sizes differ by at most one. With shards.stain_normalization,
every image is normalised with the parameters of --stain-json (store.json records them). Every file is written under a
temporary name and renamed; store.json comes last. Same inputs and seed give byte-identical files.
"""

from deepbc.jobs import cli


def arguments(p):
    p.add_argument("--manifest", required=True, help="the dataset's manifest written by check_dataset.py")
    p.add_argument("--root", required=True, help="dataset root the manifest's paths are relative to")
    p.add_argument("--out-dir", required=True, help="folder for the store's shards and store.json")
    p.add_argument("--shards-json", required=True,
                   type=cli.config_section("shards"),
                   help='the config section shards as JSON, whole or in part (config/schema.yaml fills the rest), '
                        'e.g. \'{"format": "jpeg", "jpeg_quality": 95}\'')
    p.add_argument("--stain-json", default=None,
                   help="the stain normalization fitted by fit_stain.py (results/stain/reference.json); "
                        "required unless shards.stain_normalization is none")
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--workers", type=cli.job_cpus, required=True, help="processes decoding/encoding images")


def run(args):
    from deepbc.shards import stain
    from deepbc.shards.writer import encode_store_file

    settings = args.shards_json
    params = stain.params_for(settings["stain_normalization"], args.stain_json)
    encode_store_file(args.manifest, args.root, args.out_dir, shards=settings, seed=args.seed, workers=args.workers,
                      stain=params)


main = cli.script(__doc__, arguments, run)

if __name__ == "__main__":
    cli.run(main)
