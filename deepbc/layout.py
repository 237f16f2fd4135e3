"""The splits of every fold, in one place and without dependencies (the Snakefile imports it)."""

SPLITS = ("train", "val", "test")
