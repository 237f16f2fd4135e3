"""Cross-validation splits: patient-wise (honest) and image-level (the preprint's, leaky).

``make_splits`` returns the long table ``results/splits/{run}.parquet`` (one row per image and fold):
``path, patient, slide, magnification, label, label_index, fold, split, protocol``, sorted by
``fold, split, path``.

Protocol ``patient``: scikit-learn ``StratifiedGroupKFold`` over patients gives each fold's test
patients; the validation patients are round(val_fraction x n) of the fold's n training patients,
drawn per class in proportion (``_validation_patients``), so the validation share follows the setting
to within one patient. ``assert_patient_safe`` then proves no patient is on two sides.

Protocol ``image``: the preprint's image-level random split (``StratifiedKFold`` over images,
validation drawn at random from the training images). It puts images of one patient on both
sides, so its scores are inflated; it is run only to measure by how much.

External validation (a task's ``test_dataset``): ``make_external_splits`` keeps the patient-wise
train/val of each fold (or, with k = 1, of all patients) and makes every usable image of the test
dataset the ``test`` rows of every fold; the internal test fold is left unused. Such tables have a
``dataset`` column naming each row's dataset (write_shards reads each row under that dataset's
root), and ``assert_external_disjoint`` refuses a test image (sha256) or patient id also in
training or validation (patient ids only where they are patients, not image paths).
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from deepbc.data.runs import SPLITS
from deepbc.jobs.errors import UserError, delete_and_rerun

LOG = logging.getLogger(__name__)

COLUMNS = ["path", "patient", "slide", "magnification", "label", "label_index", "fold", "split", "protocol"]
_INPUT_COLUMNS = COLUMNS[:6]
# Carried from the manifest when present, so that write_shards can check that each file is still
# the one check_dataset verified.
OPTIONAL_COLUMNS = ["sha256"]


def make_splits(df: pd.DataFrame, k: int, val_fraction: float, seed: int, protocol: str) -> pd.DataFrame:
    """Split the labelled table of ``deepbc.data.tasks.select`` into k folds of train/val/test."""
    if protocol not in ("patient", "image"):
        raise UserError(f"unknown protocol {protocol!r}", "make_splits protocol", "use 'patient' or 'image'")
    if not isinstance(k, (int, np.integer)) or k < 2:
        raise UserError(f"k must be an integer >= 2, got {k!r}", "config key splits.k", "set k to 2 or more")
    _check_val_fraction(val_fraction)
    data = _prepared(df)
    carried = [c for c in OPTIONAL_COLUMNS if c in data.columns]

    if protocol == "patient":
        assignments = _patient_folds(data, k, val_fraction, seed)
    else:
        assignments = _image_folds(data, k, val_fraction, seed)

    parts = []
    for fold, split_of_row in enumerate(assignments):
        parts.append(data.assign(fold=np.int64(fold), split=split_of_row, protocol=protocol))
    out = pd.concat(parts, ignore_index=True)
    out = out.astype({"fold": "int64"}).sort_values(["fold", "split", "path"], kind="stable")
    out = out[COLUMNS + carried].reset_index(drop=True)

    _warn_missing_classes(out)
    _log_validation_shares(out, val_fraction)
    if protocol == "patient":
        assert_patient_safe(out)
    else:
        report_leaks(out)
    return out


def _check_val_fraction(val_fraction: float) -> None:
    if not 0 < val_fraction < 1:
        raise UserError(f"val_fraction must be between 0 and 1 (exclusive), got {val_fraction!r}",
                        "config key splits.val_fraction", "use e.g. 0.2")


def _prepared(df: pd.DataFrame) -> pd.DataFrame:
    """The input columns (and carried ones) of a ``deepbc.data.tasks.select`` table, typed, sorted by path."""
    missing = [c for c in _INPUT_COLUMNS if c not in df.columns]
    if missing:
        raise UserError(f"the table to split has no column(s) {missing}", "make_splits input",
                        "pass the output of deepbc.data.tasks.select on a manifest")
    if df["path"].duplicated().any():
        dup = df.loc[df["path"].duplicated(), "path"].iloc[0]
        raise UserError(f"path {dup!r} appears twice in the table to split", "make_splits input",
                        "rebuild the manifest: every path must be listed once")
    # Splitting must not depend on the manifest's row order.
    carried = [c for c in OPTIONAL_COLUMNS if c in df.columns]
    data = df[_INPUT_COLUMNS + carried].astype({c: str for c in _INPUT_COLUMNS + carried if c != "label_index"})
    return data.astype({"label_index": "int64"}).sort_values("path", kind="stable").reset_index(drop=True)


def make_external_splits(train_df: pd.DataFrame, test_df: pd.DataFrame, k: int, val_fraction: float,
                         seed: int, dataset: str, test_dataset: str) -> pd.DataFrame:
    """Patient-wise train/val on ``train_df`` (k folds, or all patients once with k = 1), and all of
    ``test_df`` (the external dataset's selection) as every fold's test rows; checked disjoint."""
    if k == 1:
        _check_val_fraction(val_fraction)
        data = _prepared(train_df)
        split = np.where(data["patient"].isin(_validation_patients(data, val_fraction, seed)), "val", "train")
        internal = data.assign(fold=np.int64(0), split=split, protocol="patient")
        internal = internal[COLUMNS + [c for c in OPTIONAL_COLUMNS if c in data.columns]]
        _log_validation_shares(internal, val_fraction)
    else:
        internal = make_splits(train_df, k, val_fraction, seed, "patient")
        internal = internal[internal["split"] != "test"]
    columns = list(internal.columns)
    test = _prepared(test_df)
    missing = sorted(set(columns) - set(test.columns) - {"fold", "split", "protocol"})
    if missing:
        raise UserError(f"the external test table has no column(s) {missing} that the training table has",
                        "make_splits input", "rebuild both manifests with the same version of check_dataset")
    parts = [internal.assign(dataset=dataset)]
    for fold in sorted(internal["fold"].unique()):
        parts.append(test.assign(fold=np.int64(fold), split="test", protocol="patient", dataset=test_dataset))
    out = pd.concat(parts, ignore_index=True)[columns + ["dataset"]]
    out = out.astype({"fold": "int64"}).sort_values(["fold", "split", "path"], kind="stable")
    out = out.reset_index(drop=True)
    assert_external_disjoint(out.assign(patient_source=np.where(
        out["split"] == "test", out["path"].map(_patient_sources(test_df)),
        out["path"].map(_patient_sources(train_df)))))
    LOG.info("external test on %s: %d images of %d patients in every fold's test split",
             test_dataset, len(test), test["patient"].nunique())
    return out


def by_dataset(splits: pd.DataFrame, own_value, test_value) -> dict:
    """{dataset: value} of an external test's splits: ``own_value`` for the train/val rows'
    dataset, ``test_value`` for the test rows' (the ``dataset`` column of ``make_external_splits``). The shard
    writer maps the two datasets to their encoded stores (store.json paths) with it."""
    if "dataset" not in splits.columns:
        raise UserError("a test store was given but the splits table has no dataset column (not an external test)",
                        "write_shards --test-store", "remake the splits, or leave --test-store out")
    test = splits["split"] == "test"
    own, other = set(splits.loc[~test, "dataset"]), set(splits.loc[test, "dataset"])
    if len(own) != 1 or len(other) != 1 or own == other:
        raise UserError(f"the splits table's train/val rows come from {sorted(own)} and its test rows from "
                        f"{sorted(other)}: not one training and one external test dataset",
                        "write_shards input", "remake the splits with make_splits.py")
    return {own.pop(): str(own_value), other.pop(): str(test_value)}


def _patient_sources(df: pd.DataFrame) -> dict:
    """{path: patient_source} of a manifest-derived table; empty where the column is absent (BreakHis)."""
    return dict(zip(df["path"], df["patient_source"])) if "patient_source" in df.columns else {}


def assert_external_disjoint(splits: pd.DataFrame) -> None:
    """Raise UserError if an image (sha256) or patient id of the test rows is also in train or val.

    Rows whose ``patient_source`` is ``image`` (a folder dataset without patients CSV, where the
    patient id is the image's path) have no patient id to compare: two sites may both hold a
    ``benign/001.png``. Their sha256 is still checked."""
    test = splits[splits["split"] == "test"]
    seen = splits[splits["split"] != "test"]
    for column, what in (("sha256", "image(s) (same sha256)"), ("patient", "patient id(s)")):
        if column not in splits.columns:
            continue
        if column == "patient" and "patient_source" in splits.columns:
            test, seen = (t[t["patient_source"] != "image"] for t in (test, seen))
        shared = sorted(set(test[column].astype(str)) & set(seen[column].astype(str)))
        if shared:
            example = test[test[column].astype(str) == shared[0]]["path"].iloc[0]
            raise UserError(f"{len(shared)} {what} of the external test dataset are also in training or "
                            f"validation, e.g. {shared[0]!r} (test image {example})", "the splits table",
                            "remove the shared images/patients from one dataset; if the patient ids only "
                            "coincide, give one dataset distinct ids in its patients CSV")


def _patient_folds(data: pd.DataFrame, k: int, val_fraction: float, seed: int) -> list[np.ndarray]:
    y = data["label_index"].to_numpy()
    groups = data["patient"].to_numpy()
    n_patients = len(np.unique(groups))
    if n_patients < k:
        raise UserError(f"{n_patients} patient(s) are too few for k={k} folds", "config key splits.k",
                        "lower k or use a dataset with more patients")
    per_class = data.groupby("label")["patient"].nunique()
    for label, n in per_class.items():
        if n < k:
            LOG.warning("class %r has %d patient(s), fewer than k=%d: %d test fold(s) will have none of it",
                        label, n, k, k - n)
    # Imported here: scikit-learn takes seconds to import, and write_shards reads tables through this module.
    from sklearn.model_selection import StratifiedGroupKFold

    outer = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    result = []
    for fold, (train_val, test) in enumerate(outer.split(np.zeros(len(y)), y, groups)):
        val_patients = _validation_patients(data.iloc[train_val], val_fraction, seed + fold)
        split = np.full(len(y), "train", dtype=object)
        split[test] = "test"
        split[train_val[np.isin(groups[train_val], val_patients)]] = "val"
        result.append(split)
    return result


def _validation_patients(train_val: pd.DataFrame, val_fraction: float, seed: int) -> np.ndarray:
    """round(val_fraction x patients) of a fold's training patients, drawn per class in proportion.

    A patient counts under its most frequent label. Each class gets its share of the validation
    patients by largest remainder, so the whole-patient granularity is the only rounding.
    """
    labels = (train_val.groupby(["patient", "label_index"]).size().rename("n").reset_index()
              .sort_values(["patient", "n", "label_index"], ascending=[True, False, True])
              .drop_duplicates("patient"))
    n_patients = len(labels)
    n_val = int(round(val_fraction * n_patients))
    if n_val < 1 or n_val >= n_patients:
        raise UserError(f"a validation share of {val_fraction} of {n_patients} training patients is "
                        f"{val_fraction * n_patients:.2f} patients: too few training patients to draw a "
                        "validation split and keep a training split", "config key splits.val_fraction",
                        f"use a val_fraction between {1 / n_patients:.2f} and {1 - 1 / n_patients:.2f}, "
                        "or lower k")
    by_class = {c: g["patient"].to_numpy() for c, g in labels.groupby("label_index")}
    exact = {c: n_val * len(p) / n_patients for c, p in by_class.items()}
    quota = {c: int(np.floor(q)) for c, q in exact.items()}
    for c in sorted(exact, key=lambda c: (-(exact[c] - quota[c]), c))[: n_val - sum(quota.values())]:
        quota[c] += 1
    rng = np.random.default_rng(seed)
    return np.concatenate([rng.choice(by_class[c], quota[c], replace=False) for c in sorted(by_class)])


def _image_folds(data: pd.DataFrame, k: int, val_fraction: float, seed: int) -> list[np.ndarray]:
    LOG.warning("IMAGE-LEVEL PROTOCOL: images are split at random, so the same patients (and slides) sit in "
                "train and test. Its scores are inflated and are NOT an estimate of performance on new "
                "patients; it reproduces the preprint's protocol only to measure the inflation.")
    y = data["label_index"].to_numpy()
    smallest = int(np.bincount(y).min())
    if smallest < k:
        raise UserError(f"a class has only {smallest} image(s), fewer than k={k}", "config key splits.k",
                        "lower k or use a dataset with more images per class")
    from sklearn.model_selection import StratifiedKFold, train_test_split

    outer = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
    result = []
    for train_val, test in outer.split(np.zeros(len(y)), y):
        _, val_idx = train_test_split(train_val, test_size=val_fraction, random_state=seed,
                                      stratify=y[train_val])
        split = np.full(len(y), "train", dtype=object)
        split[test] = "test"
        split[val_idx] = "val"
        result.append(split)
    return result


def patient_leaks(splits: pd.DataFrame) -> pd.DataFrame:
    """Patients on more than one side of a fold: columns fold, patient, sides (e.g. 'test+train')."""
    sides = (splits.groupby(["fold", "patient"])["split"]
             .agg(lambda s: "+".join(sorted(set(s)))).reset_index(name="sides"))
    return sides[sides["sides"].str.contains("+", regex=False)].reset_index(drop=True)


def assert_patient_safe(splits: pd.DataFrame) -> None:
    """Raise UserError naming every patient that sits on two sides (train/val/test) of any fold."""
    leaks = patient_leaks(splits)
    if len(leaks):
        shown = "; ".join(f"patient {r.patient} in fold {r.fold} on {r.sides}"
                          for r in leaks.head(20).itertuples())
        more = f" (and {len(leaks) - 20} more)" if len(leaks) > 20 else ""
        raise UserError(f"patient leak: {len(leaks)} patient/fold pair(s) on more than one side: {shown}{more}",
                        "the splits table",
                        "split by patient (protocol patient) and check that the manifest's patient column "
                        "identifies patients, not slides or images")


def report_leaks(splits: pd.DataFrame) -> None:
    """Log, per fold, how many test patients also have images in train (the image protocol's leak)."""
    for fold, g in splits.groupby("fold"):
        train = set(g.loc[g["split"] == "train", "patient"])
        test = g[g["split"] == "test"]
        test_patients = set(test["patient"])
        shared = test_patients & train
        LOG.warning("fold %d (image-level): %d of %d test patients also appear in train; %.1f%% of test images "
                    "come from a patient seen in training", fold, len(shared), len(test_patients),
                    100.0 * test["patient"].isin(train).mean())


def _warn_missing_classes(splits: pd.DataFrame) -> None:
    labels = sorted(splits["label"].unique())
    for (fold, split), g in splits.groupby(["fold", "split"]):
        if split == "train":
            continue
        absent = sorted(set(labels) - set(g["label"]))
        if absent:
            LOG.warning("fold %d %s has no image of class(es) %s: per-class metrics there are undefined",
                        fold, split, absent)
    LOG.info("split sizes (images):\n%s",
             splits.groupby(["fold", "split"]).size().unstack("split").reindex(columns=list(SPLITS)).to_string())


def _log_validation_shares(splits: pd.DataFrame, val_fraction: float) -> None:
    """The validation share of each fold's training side obtained, in patients and in images."""
    for fold, g in splits[splits["split"] != "test"].groupby("fold"):
        val = g["split"] == "val"
        n_pat, n_val_pat = g["patient"].nunique(), g.loc[val, "patient"].nunique()
        LOG.info("fold %d validation share (setting %.3g): %d of %d patients (%.3f), %d of %d images (%.3f)",
                 fold, val_fraction, n_val_pat, n_pat, n_val_pat / n_pat, int(val.sum()), len(g), val.mean())


def read_table(path, what: str) -> pd.DataFrame:
    """Read a parquet table written by an earlier rule, or say clearly why it cannot be read."""
    import pyarrow

    try:
        return pd.read_parquet(path)
    except FileNotFoundError as err:
        raise UserError(f"{what} not found", str(path), f"run the rule that writes the {what} first") from err
    except (pyarrow.ArrowException, OSError) as err:
        raise UserError(f"{what} is not a readable parquet file: {err}", str(path), delete_and_rerun(path)) from err


def build_splits_file(manifest_path, task, protocol: str, k: int, val_fraction: float, seed: int,
                      exclude_label_conflicts: bool, out_path, test_manifest_path=None) -> pd.DataFrame:
    """Manifest parquet -> task selection -> splits parquet (atomic); returns the splits.

    A task with a ``test_dataset`` needs that dataset's manifest (``test_manifest_path``) and is split
    by ``make_external_splits``.
    """
    from deepbc.data.tasks import select
    from deepbc.jobs.atomic import write_parquet

    if protocol not in task.protocols:
        LOG.warning("protocol %r is not among the protocols of task %r (%s); splitting anyway",
                    protocol, task.name, list(task.protocols))
    if bool(task.test_dataset) != bool(test_manifest_path):
        raise UserError(f"task {task.name!r} has test_dataset {task.test_dataset!r} but the test manifest given "
                        f"is {test_manifest_path!r}", "make_splits --test-manifest",
                        "pass the test dataset's manifest exactly when the task has a test_dataset")
    manifest = read_table(manifest_path, "manifest")
    LOG.info("manifest %s: %d images", manifest_path, len(manifest))
    selected = select(manifest, task, exclude_label_conflicts)
    if task.test_dataset:
        if protocol != "patient":
            raise UserError(f"an external test runs under the patient protocol, not {protocol!r}",
                            f"config key task_definitions.{task.name}.protocols", "set protocols: [patient]")
        test_manifest = read_table(test_manifest_path, "manifest")
        LOG.info("test manifest %s (dataset %s): %d images", test_manifest_path, task.test_dataset,
                 len(test_manifest))
        test = select(test_manifest, task, exclude_label_conflicts, dataset=task.test_dataset)
        splits = make_external_splits(selected, test, k, val_fraction, seed, task.dataset, task.test_dataset)
    else:
        splits = make_splits(selected, k, val_fraction, seed, protocol)
    write_parquet(out_path, splits)
    LOG.info("wrote %s (%d rows, %d fold(s), protocol %s)", out_path, len(splits), splits["fold"].nunique(),
             protocol)
    return splits
