#!/usr/bin/env python3
"""Write the index of each split (train, val, test) of one fold of a run over its dataset's store.

Output in --out-dir: {split}.json (count, count_per_class, class_names, the store shards holding the
split's images and their sha256, the members with their labels, encoding). No image is read or
encoded here (encode_dataset did that once per dataset), and TensorFlow is not imported. The index
JSONs are removed first and written last. Same inputs give byte-identical files.
"""

from deepbc.jobs import cli


def arguments(p):
    p.add_argument("--splits", required=True, help="splits parquet written by make_splits.py")
    p.add_argument("--store", required=True, help="store.json of the run's dataset, written by encode_dataset.py")
    p.add_argument("--test-store", default=None,
                   help="store.json of the external test dataset (a task's test_dataset), for the test rows")
    p.add_argument("--fold", type=int, required=True, help="fold index to write")
    p.add_argument("--out-dir", required=True, help="folder for the index JSONs")


def run(args):
    from deepbc.shards.writer import write_split_indexes_file

    write_split_indexes_file(args.splits, args.fold, args.store, args.out_dir, test_store=args.test_store)


main = cli.script(__doc__, arguments, run)

if __name__ == "__main__":
    cli.run(main)
