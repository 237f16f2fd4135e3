#!/usr/bin/env python3
"""Write the TFRecord shards of one fold of a run: train, val and test, plus an index JSON for each.

Output in --out-dir: {split}-{i:05d}-of-{n:05d}.tfrecord and {split}.json (count, count_per_class,
class_names, shards, encoding). With shards.stain_normalization, every image is normalised with
the parameters of --stain-json (the index records them). Images are shuffled deterministically with --seed and dealt into
shards of at most images_per_shard images whose sizes differ by at most one. Every file is
written under a temporary name and renamed; the index JSONs come last. Same inputs and seed give
byte-identical files.
"""

from deepbc import cli


def arguments(p):
    p.add_argument("--splits", required=True, help="splits parquet written by make_splits.py")
    p.add_argument("--root", required=True, help="dataset root the splits' paths are relative to")
    p.add_argument("--test-root", default=None,
                   help="root of the external test dataset (a task's test_dataset), for the test rows")
    p.add_argument("--fold", type=int, required=True, help="fold index to write")
    p.add_argument("--out-dir", required=True, help="folder for the shards and index JSONs")
    p.add_argument("--shards-json", required=True,
                   type=cli.config_section("shards", ["images_per_shard", "format", "jpeg_quality", "max_shorter_side",
                                                       "stain_normalization"]),
                   help='the config section shards as JSON (config/schema.yaml), e.g. \'{"images_per_shard": 256, '
                        '"format": "jpeg", "jpeg_quality": 95, "max_shorter_side": 0}\'')
    p.add_argument("--stain-json", default=None,
                   help="the stain normalization fitted by fit_stain.py (results/stain/reference.json); "
                        "required unless shards.stain_normalization is none")
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--workers", type=cli.positive_int, required=True, help="processes decoding/encoding images")


def run(args):
    from deepbc import stain
    from deepbc.shard_writer import write_shards_file

    settings = args.shards_json
    params = stain.params_for(settings["stain_normalization"], args.stain_json)
    write_shards_file(args.splits, args.fold, args.root, args.out_dir, test_root=args.test_root,
                      images_per_shard=settings["images_per_shard"],
                      image_format=settings["format"], jpeg_quality=settings["jpeg_quality"],
                      max_shorter_side=settings["max_shorter_side"], seed=args.seed, workers=args.workers,
                      stain=params)


main = cli.script(__doc__, arguments, run)

if __name__ == "__main__":
    cli.run(main)
