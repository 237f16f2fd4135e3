"""The BreakHis literature's per-magnification table (Spanhol et al. 2016, IEEE TBME).

BreakHis results are published per magnification (40X, 100X, 200X, 400X) with the image-level
accuracy and the patient recognition rate. ``magnification_table`` builds, from the metrics JSONs'
``by_magnification`` blocks (deepbc.evaluation.metrics), one row per task, magnification the model trained
on, magnification it was tested on, and architecture:

- models trained on all magnifications (task ``magnification: all``), evaluated on each
  magnification's test images: the magnification-independent protocol;
- models trained on one magnification (a task with ``magnification: 40X`` ...), tested on it.

Rows of tasks with the same classes sit together, by magnification tested on (40X ... 400X) and
the model trained on all first, so that a per-magnification task is read below the
all-magnification one tested on the same magnification; a one-magnification task is split as the
same task at all magnifications (deepbc.data.splits.build_splits_file), so the two rows are tested
on the same patients. Only patient-wise runs are shown (the leaky protocols run only to measure
the leak, and an image-grouped run is not patient-wise); folder datasets carry no
magnification, so the table covers BreakHis tasks only. Figures are pooled over the test folds, as
in the task tables: the pooled JSONs' ``by_magnification`` blocks (deepbc.evaluation.pooled), with
their intervals (Wilson with k/n for the patient accuracy, the patient bootstrap for the rest); the
CSV also keeps the per-fold mean and sd of the metrics JSONs' ``by_magnification`` blocks.
"""

import pandas as pd

from deepbc.data.breakhis import MAGNIFICATIONS
from deepbc.jobs.errors import UserError
from deepbc.results.tables import (EXTERNAL_NOTE, LABELS, RECOGNITION_NOTE, ZERO_WIDTH_NOTE, fold_frame, folds_cell,
                                   has_zero_width, intervals_note, load_metrics, load_pooled, pooled_cell, pooled_frame,
                                   recompute, repeats_note, split_notes, spread_columns, with_pooled, write_formats)

# (level, metric) columns of the table, in display order.
COLUMNS = (("image", "accuracy"), ("image", "patient_recognition_rate"), ("image", "auc"),
           ("patient", "accuracy"), ("patient", "auc"))
KEYS = ["family", "test", "tested_on", "trained_on", "task", "arch"]
# How the protocol differs from the one the BreakHis literature reports (checked against the real
# file list, tests/data/breakhis/).
SPANHOL_NOTE = (
    "Against Spanhol et al. (2016): they report image-level accuracy and the patient recognition "
    "rate per magnification as the mean over five random patient-wise 70/30 splits, one model per "
    "magnification, and count 82 patients, the dataset's slide folders (24 benign, 58 malignant). "
    "Here a patient is a numeric id (the 82 folders carry 70: sibling slides such as 14-22549AB, "
    "CD and G are one patient, so they never sit on two sides), the byte-identical slide 14-13412, "
    "filed under two subtypes, is left out (splits.exclude_label_conflicts; benign vs malignant "
    "then has 69 patients), and a task's split is k-fold cross-validation, each patient tested "
    "once, unless it sets splits.scheme: repeated_holdout (splits.repeats holdouts of "
    "splits.test_fraction of the patients; 5 x 0.3 is Spanhol's protocol).")


def magnification_table(metrics, pooled) -> pd.DataFrame:
    """One row per (task, tested_on, trained_on, architecture) of the patient-wise BreakHis runs.

    Columns: task, trained_on (all or one magnification), tested_on, architecture, n_folds,
    n_patients, n_images (distinct test patients and images of that magnification) and, as in the
    task tables, the pooled ``{level}_{metric}`` with ``_ci_low``, ``_ci_high``, ``_ci_method``,
    ``_k``, ``_n``, and the per-fold ``_mean`` and ``_sd``; with repeats, n_repeats and the spread
    between them (tables.spread_columns). Empty (with a log line) when no run has magnifications.
    """
    items = list(metrics)
    pseudo = []
    for item, m in zip(items, load_metrics(items)):
        meta = m["meta"]
        if meta["protocol"] != "patient" or meta["grouping"] != "patient":
            continue
        if "by_magnification" not in m or "magnification" not in meta:
            raise UserError("metrics JSON without by_magnification or meta.magnification",
                            "metrics passed in memory" if isinstance(item, dict) else str(item), recompute(item))
        for mag, block in m["by_magnification"].items():
            pseudo.append({**block, "meta": {**meta, "family": " ".join(m["classes"]),
                                             "trained_on": meta["magnification"], "tested_on": mag}})
    pooled_pseudo = []
    for m in load_pooled(pooled):
        meta = m["meta"]
        if meta["protocol"] != "patient" or meta["grouping"] != "patient":
            continue
        for mag, block in (m.get("by_magnification") or {}).items():
            pooled_pseudo.append({**block, "classes": m["classes"], "bootstrap": m.get("bootstrap"),
                                  "_where": m["_where"],
                                  "meta": {**meta, "family": " ".join(m["classes"]),
                                           "trained_on": meta["magnification"], "tested_on": mag}})
    if not pseudo:
        return pd.DataFrame(columns=["task", "test", "trained_on", "tested_on", "architecture", "n_folds"])
    folds = fold_frame(pseudo)
    frame = pooled_frame(pooled_pseudo, extra_keys=("family", "trained_on", "tested_on"))
    table = with_pooled(folds, frame, KEYS, on=KEYS)
    # Magnifications in their optical order (a text sort puts 400X before 40X), "all" first, so a
    # one-magnification model sits right below the all-magnification model tested on the same one.
    order = {m: i for i, m in enumerate(("all", *MAGNIFICATIONS))}
    table = table.sort_values(KEYS, key=lambda s: s.map(order) if s.name in ("tested_on", "trained_on")
                              else s, kind="stable")
    table = table.drop(columns="family").rename(columns={"arch": "architecture"})
    keep = ["task", "test", "trained_on", "tested_on", "architecture", "n_folds", "n_patients", "n_images",
            "n_boot"]
    keep += [f"{lv}_{m}{s}" for lv, m in COLUMNS
             for s in ("", "_ci_low", "_ci_high", "_ci_method", "_k", "_n", "_mean", "_sd")]
    keep += spread_columns(table, [f"{lv}_{m}" for lv, m in COLUMNS])
    table = table[keep].reset_index(drop=True)
    table.attrs["split_notes"] = split_notes(folds)
    return table


def write_magnification_table(table: pd.DataFrame, out_csv=None, out_md=None, out_tex=None) -> None:
    header = ["task", "test", "trained on", "tested on", "architecture", "folds", "patients", "images"]
    # The recognition rate is a patient figure made of image predictions: no level prefix.
    header += [LABELS[m] if m == "patient_recognition_rate" else f"{lv} {LABELS[m]}" for lv, m in COLUMNS]
    rows = [[r["task"], r["test"], r["trained_on"], r["tested_on"], r["architecture"], folds_cell(r),
             str(r["n_patients"]), str(r["n_images"])]
            + [pooled_cell(r, lv, m) for lv, m in COLUMNS] for _, r in table.iterrows()]
    footnotes = [
        "Per magnification, as BreakHis results are published (Spanhol et al. 2016): trained on "
        "all = one model for all magnifications, evaluated on the test images of each "
        "(magnification-independent); trained on 40X etc. = a task trained and tested on that "
        "magnification only. A one-magnification task is split as the same task at all "
        "magnifications (the same patient folds, or repeats), so each of its rows is tested on the "
        "same patients as the all-magnification row above it. Patient-wise runs tested on "
        "BreakHis-kind datasets only: folder datasets have no magnification.",
        "Pooled over the test folds (or repeats): the figures of all their test images of that "
        "magnification together (the CSV also has the per-fold mean and sd, *_mean and *_sd). Patient "
        "level: a patient's probabilities are the mean of its images at that magnification. AUC: for "
        "two classes of the second class's probability, for more the mean of the one-vs-rest AUCs.",
        RECOGNITION_NOTE,
        SPANHOL_NOTE,
    ]
    if table.empty:
        footnotes.insert(0, "No patient-wise run of a BreakHis task: nothing to show.")
    elif table["test"].str.startswith("external").any():
        footnotes.insert(0, EXTERNAL_NOTE)
    if not table.empty:
        footnotes.append(intervals_note(table["n_boot"].max()))
        footnotes += repeats_note(table)
        if has_zero_width(table, [f"{lv}_{m}" for lv, m in COLUMNS]):
            footnotes.append(ZERO_WIDTH_NOTE)
    write_formats(table, header, rows, footnotes,
                  "Results per magnification (BreakHis)", out_csv, out_md, out_tex)
