"""Datasets to labelled tables and patient-wise splits (rules/data.smk: make_demo, check_dataset,
make_splits).

``datasets`` resolves the named datasets of a config; ``breakhis`` and ``folder_dataset`` read the
two layouts; ``imageio`` decodes any image file to RGB; ``manifest`` verifies every file into a
manifest and a rejects list; ``tasks`` turns a manifest into a task's labelled table; ``splits``
makes the folds; ``download`` and ``archives`` fetch and unpack; ``demo`` and ``synthetic_he``
paint the demo datasets.
"""
