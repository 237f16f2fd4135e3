"""Splits of a task's images into test, validation and training: patient-wise (honest), image-level
or augment-then-split (leaky, run to measure the leak), or predefined (a published list), each audited.

``make_splits`` (and ``make_holdouts``, ``make_predefined_splits``) return the long table
``results/splits/{run}.parquet`` (one row per image and fold): ``path, patient, slide,
magnification, label, label_index, fold, split, protocol``, sorted by ``fold, split, path``; under
the augment-then-split protocol one row per image copy and fold, with the copy id (``copy``,
deepbc.data.runs.COPIES), sorted by ``fold, split, path, copy``. A repeat of a repeated holdout, and
the one split of a predefined list, is a fold like any other.

Schemes (``splits.scheme``, docs/methods.md):

- ``kfold``, protocol ``patient``: patients are dealt to k test folds by the greedy of scikit-learn's
  ``StratifiedGroupKFold`` (each patient to the fold whose class proportions it evens out most),
  largest patients first, but patients whose class-count spread lies within a factor of two of each
  other in a random order (``_assign_groups``): the exact largest-first order left the real
  BreakHis subtype folds nearly the same for every seed. The validation patients are
  round(val_fraction x n) of the fold's n training patients, drawn per class in proportion, never a
  class's last training patient (``_draw_patients``). An assignment whose training set lacks a
  class of the task is redrawn with seeds derived from the config's seed (``ATTEMPTS``); if none
  keeps every class, ``make_splits`` refuses, naming the fold and the class.
- ``repeated_holdout``, protocol ``patient``: each repeat draws round(test_fraction x patients)
  test patients per class in proportion (never a class's last patient), then its validation
  patients from the rest, as above (Spanhol et al. 2016: 5 repeats of 70/30).
- Protocol ``image``: the original images split at random (``StratifiedKFold`` over images, or
  ``StratifiedShuffleSplit`` for repeats; validation drawn at random from the training images). It
  puts images of one patient on both sides, so its scores are inflated; it is run only to measure
  by how much.
- Protocol ``augmented_image``: augment, then split (the preprint's leak): every image becomes its
  8 copies (``copies``: the rotations and mirror images of deepbc.data.runs.COPIES), and the copies
  are split as protocol ``image`` splits images, so other copies of a test image sit in training
  (``copy_leaks`` counts them).
- Predefined (``splits.predefined``): a CSV ``key,split`` mapped onto the manifest by image path,
  slide or patient (``make_predefined_splits``); one fold, 0.

Every table is checked before it is written (``check_splits``): a training set without an image of
one of the task's classes is refused; a validation set without one is a warning (the training
then selects its checkpoint on the validation loss of the classes present); ``assert_patient_safe``
proves no patient is on two sides (a predefined split may, with ``allow_straddling``). ``audit``
says what the split is (scheme, label, per fold its sizes and absent classes, the patients on two
sides); ``write_audit`` writes it as ``results/splits/{run}.audit.{json,csv,md}``, the metrics
copy its label into their ``meta.split`` for the tables, and the figures of a run of repeated
holdouts or a predefined split carry it in their title (``with_split_label``).

External validation (a task's ``test_dataset``): ``make_external_splits`` keeps the patient-wise
train/val of each fold (or, with k = 1, of all patients) and makes every usable image of the test
dataset the ``test`` rows of every fold; the internal test fold is left unused. Such tables have a
``dataset`` column naming each row's dataset (write_shards reads each row under that dataset's
root), and ``assert_external_disjoint`` refuses a test image (sha256) or patient id also in
training or validation (patient ids only where they are patients, not image paths).
"""

from __future__ import annotations

import dataclasses
import logging
import os

import numpy as np
import pandas as pd

from deepbc.data.runs import COPIES, COPY, LEAKY, PROTOCOL_LABELS, PROTOCOLS, SPLITS, run_name
from deepbc.jobs.errors import UserError, delete_and_rerun

LOG = logging.getLogger(__name__)

COLUMNS = ["path", "patient", "slide", "magnification", "label", "label_index", "fold", "split", "protocol"]
_INPUT_COLUMNS = COLUMNS[:6]
# Carried from the manifest when present, so that write_shards can check that each file is still
# the one check_dataset verified.
OPTIONAL_COLUMNS = ["sha256"]
# How a split's label names each protocol's side.
_SIDES = {"patient": "patient-wise", "image": "image-level", "augmented_image": "augment-then-split"}
SCHEMES = ("kfold", "repeated_holdout")
PREDEFINED = "predefined"
# What a predefined split's key is: the manifest column it is matched against.
PREDEFINED_KEYS = {"image": "path", "slide": "slide", "patient": "patient"}
# A predefined row's split: one of SPLITS, or left out of every split.
EXCLUDE = "exclude"
# Fold assignments tried (the config's seed, then seeds derived from it) before a fold whose
# training set lacks a class is refused; on the real BreakHis subtypes the first one almost always
# keeps every class.
ATTEMPTS = 100
AUDIT_COLUMNS = ["fold", "patient", "slide", "split", "images"]


@dataclasses.dataclass(frozen=True)
class SplitSettings:
    """A task's split settings: the config section ``splits`` with ``task_definitions.<task>.splits``
    over it, defaults filled in by the schema (config/schema.yaml holds them; none here)."""

    scheme: str
    k: int
    repeats: int
    test_fraction: float
    val_fraction: float
    exclude_label_conflicts: bool
    predefined: str
    predefined_key: str
    allow_straddling: bool

    @classmethod
    def from_config(cls, values: dict) -> SplitSettings:
        missing = [f.name for f in dataclasses.fields(cls) if f.name not in values]
        if missing:
            raise UserError(f"the split settings lack {missing}", "config section splits",
                            "pass the splits section with the schema's defaults filled in (deepbc.jobs.schema.fill)")
        return cls(**{f.name: values[f.name] for f in dataclasses.fields(cls)})

    @property
    def kind(self) -> str:
        """kfold, repeated_holdout or predefined (which overrides the scheme)."""
        return PREDEFINED if self.predefined else self.scheme

    @property
    def n_folds(self) -> int:
        return {PREDEFINED: 1, "repeated_holdout": self.repeats}.get(self.kind, self.k)

    @property
    def unit(self) -> str:
        """What one fold is called in messages and notes."""
        return {PREDEFINED: "split", "repeated_holdout": "repeat"}.get(self.kind, "fold")

    def label(self, protocol: str, straddling: int = 0, external: str | None = None) -> str:
        """What the split is, in a few words (tables, figures, the audit); ``external``: the
        dataset every fold tests on (a task's test_dataset)."""
        side = _SIDES[protocol]
        copies = f" ({len(COPIES)} copies per image)" if protocol == "augmented_image" else ""
        if external:
            trained = f"{self.k} patient-wise folds" if self.k > 1 else "one model on all patients"
            return f"{trained} of training and validation, each tested on all of {external}"
        if self.kind == PREDEFINED:
            text = f"predefined split ({os.path.basename(self.predefined)}, by {self.predefined_key})"
            return f"predefined split, {straddling} patients on two sides" if straddling else text
        if self.kind == "repeated_holdout":
            test = round(100 * self.test_fraction)
            return f"{self.repeats} repeated {side} {100 - test}/{test} holdouts{copies}"
        return f"{self.k}-fold {side} cross-validation{copies}"

    def note(self, protocol: str, straddling: int = 0, external: str | None = None) -> str:
        """What a table's mean ± sd and interval are over, under this split (its footnote)."""
        label = self.label(protocol, straddling, external)
        if external:
            return f"{label}: mean ± sample sd over the folds' models, which test the same images."
        if self.kind == PREDEFINED:
            text = f"{label}: one split, so no sd over folds; the interval resamples its test patients."
            if straddling:
                text += (f" {straddling} of the workflow's patients (BreakHis: numeric ids) have images on two "
                         "sides of it (results/splits/<run>.audit.md): its figures are not patient-wise.")
            return text
        if self.kind == "repeated_holdout":
            return (f"{label}: mean ± sample sd over the repeats, as Spanhol et al. (2016) report. Repeats "
                    "draw their test patients independently, so a patient can be tested in several "
                    "repeats: the folds' bootstrap draws are not independent, and the interval of the "
                    "mean is too narrow.")
        unit = {"patient": "patient", "image": "image"}.get(protocol, "image copy")
        return f"{label}: mean ± sample sd over the test folds; each {unit} is tested once."


def _derived_seed(seed: int, attempt: int) -> int:
    """A seed for the ``attempt``-th draw, fixed by the config's seed (numpy's SeedSequence)."""
    return int(np.random.SeedSequence([int(seed), int(attempt)]).generate_state(1)[0])


def make_splits(df: pd.DataFrame, k: int, val_fraction: float, seed: int, protocol: str,
                keep=None) -> pd.DataFrame:
    """Split the labelled table of ``deepbc.data.tasks.select`` into k folds of train/val/test.

    ``keep``: the paths of the task's own images, when ``df`` is a larger pool split alike (a
    one-magnification task split as the same task at all magnifications, ``build_splits_file``);
    the result holds only those, and their classes must be in every training set."""
    _check_protocol(protocol)
    if not isinstance(k, (int, np.integer)) or k < 2:
        raise UserError(f"k must be an integer >= 2, got {k!r}", "config key splits.k", "set k to 2 or more")
    _check_val_fraction(val_fraction)
    data = _prepared(df, protocol)
    scored = _kept(data, keep)
    if protocol == "patient":
        assignments = _patient_folds(data, k, val_fraction, seed, scored)
    else:
        assignments = _image_splits(data, k, None, val_fraction, seed, protocol)
    return _finish(data, assignments, protocol, val_fraction, scored, "fold")


def make_holdouts(df: pd.DataFrame, repeats: int, test_fraction: float, val_fraction: float, seed: int,
                  protocol: str, keep=None) -> pd.DataFrame:
    """``repeats`` independent holdouts of test_fraction of the patients (protocol patient) or images
    (protocols image and augmented_image: of image copies), each a fold of the splits table; ``keep`` as
    in ``make_splits``."""
    _check_protocol(protocol)
    if not isinstance(repeats, (int, np.integer)) or repeats < 1:
        raise UserError(f"repeats must be an integer >= 1, got {repeats!r}", "config key splits.repeats",
                        "set repeats to 1 or more, e.g. 5")
    _check_fraction(test_fraction, "test_fraction", "0.3")
    _check_val_fraction(val_fraction)
    data = _prepared(df, protocol)
    scored = _kept(data, keep)
    if protocol == "patient":
        assignments = _patient_holdouts(data, repeats, test_fraction, val_fraction, seed, scored)
    else:
        assignments = _image_splits(data, repeats, test_fraction, val_fraction, seed, protocol)
    return _finish(data, assignments, protocol, val_fraction, scored, "repeat")


def split_by_settings(df: pd.DataFrame, settings: SplitSettings, seed: int, protocol: str,
                      keep=None) -> pd.DataFrame:
    """``make_splits`` or ``make_holdouts``, as ``settings.scheme`` says."""
    if settings.scheme == "repeated_holdout":
        return make_holdouts(df, settings.repeats, settings.test_fraction, settings.val_fraction, seed, protocol,
                             keep)
    return make_splits(df, settings.k, settings.val_fraction, seed, protocol, keep)


def _check_protocol(protocol: str) -> None:
    if protocol not in PROTOCOLS:
        raise UserError(f"unknown protocol {protocol!r}", "make_splits protocol", f"use one of {list(PROTOCOLS)}")


def _check_fraction(value: float, key: str, example: str) -> None:
    if not 0 < value < 1:
        raise UserError(f"{key} must be between 0 and 1 (exclusive), got {value!r}", f"config key splits.{key}",
                        f"use e.g. {example}")


def _check_val_fraction(val_fraction: float) -> None:
    _check_fraction(val_fraction, "val_fraction", "0.2")


def _prepared(df: pd.DataFrame, protocol: str = "patient") -> pd.DataFrame:
    """The input columns (and carried ones) of a ``deepbc.data.tasks.select`` table, typed, sorted by
    path; under the augment-then-split protocol each image's ``copies``."""
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
    data = data.astype({"label_index": "int64"}).sort_values("path", kind="stable").reset_index(drop=True)
    return copies(data) if protocol == "augmented_image" else data


def copies(data: pd.DataFrame) -> pd.DataFrame:
    """Every row as its len(COPIES) copies, with their copy id (column ``copy``), in (path, copy)
    order: augment first, as the preprint did, so that the split deals copies, not images."""
    out = data.loc[data.index.repeat(len(COPIES))].reset_index(drop=True)
    return out.assign(**{COPY: np.tile(np.arange(len(COPIES), dtype=np.int64), len(data))})


def _kept(data: pd.DataFrame, keep) -> np.ndarray:
    """Which rows of the pool are the task's own (all without ``keep``)."""
    return np.ones(len(data), dtype=bool) if keep is None else data["path"].isin(set(keep)).to_numpy()


def _finish(data: pd.DataFrame, assignments: list[np.ndarray], protocol: str, val_fraction: float,
            scored: np.ndarray, unit: str, allow_straddling: bool = False) -> pd.DataFrame:
    """The long table of the assignments (one array of splits per fold), restricted to the kept
    rows, checked."""
    carried = [c for c in OPTIONAL_COLUMNS + [COPY] if c in data.columns]
    parts = [data[scored].assign(fold=np.int64(fold), split=split[scored], protocol=protocol)
             for fold, split in enumerate(assignments)]
    out = pd.concat(parts, ignore_index=True)
    out = out.astype({"fold": "int64"}).sort_values(["fold", "split", "path"], kind="stable")
    out = out[COLUMNS + carried].reset_index(drop=True)
    check_splits(out, val_fraction, unit, allow_straddling)
    return out


def check_splits(splits: pd.DataFrame, val_fraction: float | None, unit: str = "fold",
                 allow_straddling: bool = False) -> None:
    """Refuse a training set without a class of the task, or a patient on two sides (unless a
    predefined split allows it, ``allow_straddling``); warn of a validation set without a class;
    log the sizes and validation shares (and, under a leaky protocol, the leak)."""
    _refuse_training_gaps(splits, unit)
    _warn_missing_classes(splits, unit)
    if val_fraction is not None:
        _log_validation_shares(splits, val_fraction)
    # unique() first: iterating 300,000 strings (augment-then-split copies) takes seconds.
    protocols = set(splits["protocol"].unique())
    if protocols <= set(LEAKY):
        report_leaks(splits)
    elif allow_straddling:
        straddling = straddling_patients(splits)
        if len(straddling):
            LOG.warning("%d patient(s) have images on two sides of the split (allow_straddling): %s",
                        straddling["patient"].nunique(), _describe_straddling(straddling))
    else:
        assert_patient_safe(splits)


# --------------------------------------------------------------------------------------------
# k-fold and repeated holdouts
# --------------------------------------------------------------------------------------------


def _patient_folds(data: pd.DataFrame, k: int, val_fraction: float, seed: int,
                   scored: np.ndarray) -> list[np.ndarray]:
    groups = data["patient"].to_numpy()
    n_patients = len(np.unique(groups))
    if n_patients < k:
        raise UserError(f"{n_patients} patient(s) are too few for k={k} folds", "config key splits.k",
                        "lower k or use a dataset with more patients")
    per_class = data[scored].groupby("label")["patient"].nunique()
    for label, n in per_class.items():
        if n < k:
            LOG.warning("class %r has %d patient(s), fewer than k=%d: %d test fold(s) will have none of it",
                        label, n, k, k - n)
    # A class of one patient is missing from the training set of the fold testing that patient,
    # whatever the assignment: no redraw can help.
    attempts = 1 if (per_class < 2).any() else ATTEMPTS
    first = None
    for attempt in range(attempts):
        # The config's seed first, so that a split that already kept every class stays as it was.
        trial = seed if attempt == 0 else _derived_seed(seed, attempt)
        test_fold = _assign_groups(data["label_index"].to_numpy(), groups, k, trial)
        assignment = []
        for fold in range(k):
            train_val = np.flatnonzero(test_fold != fold)
            val_patients = _draw_patients(data.iloc[train_val], val_fraction, trial + fold, "validation",
                                          scored[train_val])
            split = np.full(len(groups), "train", dtype=object)
            split[test_fold == fold] = "test"
            split[train_val[np.isin(groups[train_val], val_patients)]] = "val"
            assignment.append(split)
        gap = _first_training_gap(data, assignment, scored)
        if gap is None:
            if attempt:
                LOG.info("fold assignment %d (seed %d, derived from seed %d) keeps every class in every training "
                         "set; the %d before it did not", attempt, trial, seed, attempt)
            return assignment
        LOG.info("fold assignment %d (seed %d): fold %d's training set has no image of class %r; redrawn",
                 attempt, trial, *gap)
        first = first or assignment
    # check_splits refuses it, naming the fold and the class.
    return first


def _first_training_gap(data: pd.DataFrame, assignment: list[np.ndarray], scored: np.ndarray):
    """(fold, class) of the first training set without an image of one of the kept rows' classes."""
    labels = data["label"].to_numpy()[scored]
    for fold, split in enumerate(assignment):
        present = set(labels[split[scored] == "train"])
        for c in pd.unique(labels):
            if c not in present:
                return fold, c
    return None


def _assign_groups(y: np.ndarray, groups: np.ndarray, k: int, seed: int) -> np.ndarray:
    """The test fold of each row: patients dealt to folds by the greedy of scikit-learn's
    ``StratifiedGroupKFold(shuffle=True)`` (1.9; the same permutation, criterion and tie-break),
    except for the order of placing. scikit-learn places patients by the spread (sd) of their class
    counts, largest first, and only exact ties in random order: real patients' image counts differ,
    so the order, hence the folds, hardly varied with the seed (2 partitions of the BreakHis
    subtypes over 40 seeds). Here patients in the same factor-of-two band of that spread are placed
    in random order (largest bands first, still evening out the image counts); with equal-sized
    patients (the demo) this is scikit-learn's result."""
    rng = np.random.RandomState(seed)
    _, y_inv, y_cnt = np.unique(y, return_inverse=True, return_counts=True)
    _, g_inv, g_cnt = np.unique(groups, return_inverse=True, return_counts=True)
    counts = np.zeros((len(g_cnt), len(y_cnt)))
    np.add.at(counts, (g_inv, y_inv), 1)
    perm = np.arange(len(g_cnt))
    rng.shuffle(perm)
    shuffled = counts[perm]
    with np.errstate(divide="ignore"):
        band = np.floor(np.log2(np.std(shuffled, axis=1)))
    per_fold = np.zeros((k, len(y_cnt)))
    fold_of = np.empty(len(g_cnt), dtype=np.int64)
    for group in np.argsort(-band, kind="stable"):
        best = _best_fold(per_fold, y_cnt, shuffled[group])
        per_fold[best] += shuffled[group]
        fold_of[perm[group]] = best
    return fold_of[g_inv]


def _best_fold(per_fold: np.ndarray, total: np.ndarray, group: np.ndarray) -> int:
    """The fold whose class proportions the group evens out most (mean over classes of the sd over
    folds of the fold's share of the class); ties to the fold with fewer images."""
    best, min_eval, min_images = 0, np.inf, np.inf
    for fold in range(len(per_fold)):
        per_fold[fold] += group
        evaluation = np.mean(np.std(per_fold / total.reshape(1, -1), axis=0))
        per_fold[fold] -= group
        images = np.sum(per_fold[fold])
        if evaluation < min_eval or (np.isclose(evaluation, min_eval) and images < min_images):
            best, min_eval, min_images = fold, evaluation, images
    return best


def _patient_holdouts(data: pd.DataFrame, repeats: int, test_fraction: float, val_fraction: float, seed: int,
                      scored: np.ndarray) -> list[np.ndarray]:
    groups = data["patient"].to_numpy()
    result = []
    for repeat in range(repeats):
        trial = _derived_seed(seed, repeat)
        test = np.isin(groups, _draw_patients(data, test_fraction, trial, "test", scored))
        rest = np.flatnonzero(~test)
        val_patients = _draw_patients(data.iloc[rest], val_fraction, trial + 1, "validation", scored[rest])
        split = np.full(len(groups), "train", dtype=object)
        split[test] = "test"
        split[rest[np.isin(groups[rest], val_patients)]] = "val"
        result.append(split)
    return result


def _draw_patients(rows: pd.DataFrame, fraction: float, seed: int, what: str, scored=None) -> np.ndarray:
    """round(fraction x patients) of ``rows``' patients, drawn per class in proportion, for the
    ``what`` split (validation or test); the rest stay on the training side.

    A patient counts under its most frequent label. Each class gets its share of the patients by
    largest remainder, so the whole-patient granularity is the only rounding. A patient who is the
    last on the training side with images of some class (among the ``scored`` rows) is never drawn,
    so that every class keeps a training image; its class's share is then one patient short.
    """
    labels = (rows.groupby(["patient", "label_index"]).size().rename("n").reset_index()
              .sort_values(["patient", "n", "label_index"], ascending=[True, False, True])
              .drop_duplicates("patient"))
    n_patients = len(labels)
    n_draw = int(round(fraction * n_patients))
    key = "val_fraction" if what == "validation" else "test_fraction"
    if n_draw < 1 or n_draw >= n_patients:
        raise UserError(f"a {what} share of {fraction} of {n_patients} patients is "
                        f"{fraction * n_patients:.2f} patients: too few patients to draw a {what} split and "
                        "keep a training split", f"config key splits.{key}",
                        f"use a {key} between {1 / n_patients:.2f} and {1 - 1 / n_patients:.2f}"
                        + (", or lower k" if what == "validation" else ""))
    by_class = {c: g["patient"].to_numpy() for c, g in labels.groupby("label_index")}
    quota = _quotas({c: len(p) for c, p in by_class.items()}, n_draw)
    kept = np.ones(len(rows), dtype=bool) if scored is None else np.asarray(scored, dtype=bool)
    carriers = set(zip(rows["patient"].to_numpy()[kept], rows["label"].to_numpy()[kept]))
    rng = np.random.default_rng(seed)
    drawn: list[np.ndarray] = []
    for c in sorted(by_class):
        gone = set(np.concatenate(drawn)) if drawn else set()
        per_label: dict = {}
        for patient, label in carriers:
            if patient not in gone:
                per_label.setdefault(label, []).append(patient)
        last = {p[0] for p in per_label.values() if len(p) == 1}
        pool = by_class[c][~np.isin(by_class[c], list(last))]
        take = min(quota[c], len(pool))
        if take < quota[c]:
            LOG.info("%s draw: %d patient(s) of class index %d kept in training, the last with images of "
                     "their class(es) there", what, quota[c] - take, c)
        drawn.append(rng.choice(pool, take, replace=False))
    return np.concatenate(drawn)


def _quotas(sizes: dict, n_draw: int) -> dict:
    """Patients to draw per class (``sizes``: patients per class): the largest-remainder share of
    ``n_draw``, then, when the draw has room for every class of two patients or more, at least one
    of each such class (taken from the class most over its share that keeps one, or from a class of
    one patient, whose patient is kept in training anyway): a validation set without a class
    cannot select for it."""
    total = sum(sizes.values())
    exact = {c: n_draw * n / total for c, n in sizes.items()}
    quota = {c: int(np.floor(q)) for c, q in exact.items()}
    for c in sorted(exact, key=lambda c: (-(exact[c] - quota[c]), c))[: n_draw - sum(quota.values())]:
        quota[c] += 1
    several = [c for c, n in sizes.items() if n >= 2]
    if n_draw >= len(several):
        for c in sorted(c for c in several if quota[c] == 0):
            donors = [d for d in quota if quota[d] >= (2 if d in several else 1)]
            donor = max(donors, key=lambda d: (quota[d] - exact[d], -d))
            quota[donor] -= 1
            quota[c] += 1
    return quota


def _image_splits(data: pd.DataFrame, n: int, test_fraction: float | None, val_fraction: float,
                  seed: int, protocol: str) -> list[np.ndarray]:
    """n stratified folds of the rows (images, or image copies) (``test_fraction`` None) or n
    stratified holdouts of test_fraction of them, validation drawn at random from each training side."""
    if protocol == "augmented_image":
        LOG.warning("AUGMENT-THEN-SPLIT PROTOCOL (the preprint's leak): each image's %d rotations and mirror "
                    "images are split at random as separate images, so other copies of a test image, and the "
                    "same patients, sit in training. Its scores are inflated and are NOT an estimate of "
                    "performance on new patients; it runs only to measure the inflation.", len(COPIES))
    else:
        LOG.warning("IMAGE-LEVEL PROTOCOL: images are split at random, so the same patients (and slides) sit "
                    "in train and test. Its scores are inflated and are NOT an estimate of performance on new "
                    "patients; it runs only to measure the inflation (the preprint's leak, which also put "
                    "copies of test images in training, is protocol augmented_image).")
    y = data["label_index"].to_numpy()
    smallest = int(np.bincount(y).min())
    if test_fraction is None and smallest < n:
        raise UserError(f"a class has only {smallest} image(s){' (copies)' if protocol != 'image' else ''}, fewer "
                        f"than k={n}", "config key splits.k",
                        "lower k or use a dataset with more images per class")
    from sklearn.model_selection import StratifiedKFold, StratifiedShuffleSplit, train_test_split

    outer = (StratifiedKFold(n_splits=n, shuffle=True, random_state=seed) if test_fraction is None
             else StratifiedShuffleSplit(n_splits=n, test_size=test_fraction, random_state=seed))
    result = []
    for train_val, test in outer.split(np.zeros(len(y)), y):
        _, val_idx = train_test_split(train_val, test_size=val_fraction, random_state=seed,
                                      stratify=y[train_val])
        split = np.full(len(y), "train", dtype=object)
        split[test] = "test"
        split[val_idx] = "val"
        result.append(split)
    return result


# --------------------------------------------------------------------------------------------
# Predefined splits
# --------------------------------------------------------------------------------------------


def read_predefined(path) -> pd.DataFrame:
    """A predefined split file: a CSV with the header ``key,split``, each key once, each split one
    of train, val, test or exclude. Returns its rows (strings) with their ``line`` numbers."""
    where = str(path)
    try:
        # utf-8-sig: a spreadsheet's byte-order mark is not part of the first column's name.
        table = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8-sig")
    except FileNotFoundError:
        raise UserError("the predefined split file does not exist", where,
                        "set splits.predefined to an existing CSV (a path relative to the working directory), "
                        "or to \"\" for no predefined split") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise UserError(f"the predefined split is not a readable CSV ({err})", where,
                        "write it as a UTF-8 CSV with the header key,split and one row per key") from None
    if list(table.columns) != ["key", "split"]:
        raise UserError(f"the predefined split's columns are {list(table.columns)}, not key,split", where,
                        "give it exactly the header key,split (key: an image path, slide or patient, as "
                        "splits.predefined_key says; split: train, val, test or exclude)")
    table = table.assign(line=np.arange(len(table)) + 2)
    if table.empty:
        raise UserError("the predefined split has no rows", where, "list a key,split row for each image, slide or patient")
    allowed = (*SPLITS, EXCLUDE)
    bad = table[~table["split"].isin(allowed) | (table["key"] == "")]
    if len(bad):
        shown = "; ".join(f"line {r.line}: {r.key!r},{r.split!r}" for r in bad.head(5).itertuples())
        raise UserError(f"{len(bad)} row(s) of the predefined split have an empty key or a split that is not one of "
                        f"{list(allowed)}: {shown}", where,
                        f"give every row a key and one of {', '.join(allowed)} as its split")
    twice = table[table["key"].duplicated(keep=False)]
    if len(twice):
        shown = "; ".join(f"{key!r} on lines {', '.join(map(str, g['line']))}"
                          for key, g in list(twice.groupby("key", sort=True))[:5])
        raise UserError(f"{twice['key'].nunique()} key(s) appear more than once in the predefined split: {shown}",
                        where, "list each key once, with the one split it belongs to")
    return table


def make_predefined_splits(df: pd.DataFrame, manifest: pd.DataFrame, table: pd.DataFrame, key: str,
                           val_fraction: float, seed: int, allow_straddling: bool, source: str) -> pd.DataFrame:
    """The task's images (``df``, from ``deepbc.data.tasks.select``) placed by a predefined split
    (``read_predefined``'s ``table``; ``source`` its file), as fold 0 of a splits table.

    ``key`` (image, slide or patient) says which manifest column (``PREDEFINED_KEYS``) a key is
    matched against; every key must match a row of the whole ``manifest`` (a key of an image the
    task leaves out is fine), every image of the task must be placed, and images placed
    ``exclude`` are left out (logged). Without val rows the validation patients are drawn from the
    training side by ``val_fraction``. A patient with images on two sides is refused (listed with
    its slides and image counts) unless ``allow_straddling``.
    """
    if key not in PREDEFINED_KEYS:
        raise UserError(f"unknown predefined_key {key!r}", "config key splits.predefined_key",
                        f"use one of {sorted(PREDEFINED_KEYS)}")
    column = PREDEFINED_KEYS[key]
    _check_val_fraction(val_fraction)
    known = set(manifest[column].astype(str))
    unknown = table[~table["key"].isin(known)]
    if len(unknown):
        shown = "; ".join(f"line {r.line}: {r.key!r}" for r in unknown.head(5).itertuples())
        example = manifest[column].astype(str).iloc[0]
        raise UserError(f"{len(unknown)} key(s) of the predefined split match no {key} of the dataset's manifest: "
                        f"{shown}", source,
                        f"correct or remove these rows; with predefined_key {key} a key is the manifest's {column!r} "
                        f"column, e.g. {example!r} (image: the path relative to the dataset root; slide: "
                        "BreakHis 14-16184CD; patient: BreakHis 14-16184)")
    data = _prepared(df)
    side = data[column].map(dict(zip(table["key"], table["split"])))
    unplaced = data[side.isna()]
    if len(unplaced):
        keys = list(pd.unique(unplaced[column]))
        raise UserError(f"{len(unplaced)} image(s) of the task ({len(keys)} {key}(s), e.g. "
                        f"{', '.join(map(repr, keys[:5]))}) are placed by no row of the predefined split", source,
                        f"add a row for each of these {key}s with split train, val or test, or {EXCLUDE} to leave "
                        "its images out of every split")
    # The file's own placement is audited, before a validation draw moves training patients.
    placed = straddling_patients(data.assign(fold=np.int64(0), split=side)[side != EXCLUDE])
    if len(placed) and not allow_straddling:
        n = placed["patient"].nunique()
        raise UserError(f"the predefined split puts images of {n} patient(s) on two sides (the workflow's patient: "
                        f"for BreakHis the numeric id, shared by sibling slides): {_describe_straddling(placed)}",
                        source,
                        f"put all the images of each listed patient on one side in {source}, or set "
                        f"splits.allow_straddling: true to run it anyway (every table and figure then says \"predefined split, "
                        f"{n} patients on two sides\")")
    excluded = (side == EXCLUDE).to_numpy()
    if excluded.any():
        left_out = data[excluded].groupby(column).size()
        LOG.warning("the predefined split leaves out (split %s) %d image(s) of the task, by %s: %s", EXCLUDE,
                    int(excluded.sum()), key, left_out.to_dict())
    data = data[~excluded].reset_index(drop=True)
    split = side[~excluded].to_numpy(dtype=object)
    for needed in ("train", "test"):
        if not (split == needed).any():
            raise UserError(f"the predefined split puts no image of the task in {needed}", source,
                            f"give some of the task's {key}s the split {needed}")
    if not (split == "val").any():
        train = np.flatnonzero(split == "train")
        val_patients = _draw_patients(data.iloc[train], val_fraction, seed, "validation")
        split[train[np.isin(data["patient"].to_numpy()[train], val_patients)]] = "val"
        LOG.info("the predefined split has no val rows: %d validation patient(s) drawn from its training side "
                 "(val_fraction %.3g)", len(val_patients), val_fraction)
    return _finish(data, [split], "patient", val_fraction, np.ones(len(data), dtype=bool), "split", allow_straddling)


def straddling_patients(splits: pd.DataFrame) -> pd.DataFrame:
    """Patients with images on more than one side of a fold, one row per (fold, patient, slide,
    split) with its image count (``AUDIT_COLUMNS``)."""
    sides = splits.groupby(["fold", "patient"])["split"].nunique()
    two = sides[sides > 1].reset_index()[["fold", "patient"]]
    rows = splits.merge(two, on=["fold", "patient"])
    out = rows.groupby(["fold", "patient", "slide", "split"]).size().rename("images").reset_index()
    return out[AUDIT_COLUMNS].astype({"fold": "int64", "images": "int64"})


def _describe_straddling(straddling: pd.DataFrame, limit: int = 30) -> str:
    """'14-16184 (14-16184: train 39; 14-16184CD: test 35); ...' (with the fold if there are several)."""
    several = straddling["fold"].nunique() > 1
    parts = []
    for (fold, patient), g in straddling.groupby(["fold", "patient"], sort=True):
        slides = "; ".join(f"{r.slide}: {r.split} {r.images}" for r in g.itertuples())
        parts.append(f"{f'fold {fold} ' if several else ''}{patient} ({slides})")
    more = f" (and {len(parts) - limit} more)" if len(parts) > limit else ""
    return ", ".join(parts[:limit]) + more


# --------------------------------------------------------------------------------------------
# The audit: what a split is
# --------------------------------------------------------------------------------------------


def audit(splits: pd.DataFrame, settings: SplitSettings, protocol: str, run: str,
          folds_from: str | None = None, external: str | None = None) -> tuple[dict, pd.DataFrame, str]:
    """What the split is, for ``results/splits/{run}.audit.{json,csv,md}``: the summary (scheme,
    label, the tables' note, per fold the images, patients and absent classes of each side and the
    patients on two sides), the patients on two sides (``straddling_patients``), and a Markdown
    page. ``folds_from``: where the folds come from when not from the task's own images;
    ``external``: the test dataset of an external test (its patients are told apart from the
    training dataset's by the ``dataset`` column)."""
    if "dataset" in splits.columns:
        splits = splits.assign(patient=splits["dataset"].astype(str) + ":" + splits["patient"].astype(str))
    straddling = straddling_patients(splits)
    per_fold = straddling.groupby("fold")["patient"].nunique()
    n_two_sides = int(per_fold.max()) if len(per_fold) else 0
    classes = (splits[["label_index", "label"]].drop_duplicates().sort_values("label_index")["label"].tolist())
    folds = {}
    for fold, g in splits.groupby("fold"):
        entry = {}
        for split in SPLITS:
            rows = g[g["split"] == split]
            present = set(rows["label"].unique())
            entry[split] = {"images": len(rows), "patients": int(rows["patient"].nunique()),
                            "absent_classes": [c for c in classes if c not in present]}
        entry["patients_on_two_sides"] = int(per_fold.get(fold, 0))
        folds[str(int(fold))] = entry
    for fold, n in copy_leaks(splits).items():
        folds[str(int(fold))]["test_copies_with_a_copy_in_train"] = n
    straddled = n_two_sides if protocol == "patient" else 0
    summary = {"run": run, "protocol": protocol, "scheme": settings.kind, "unit": settings.unit,
               "label": settings.label(protocol, straddled, external),
               "note": settings.note(protocol, straddled, external),
               "settings": dataclasses.asdict(settings), "folds_from": folds_from, "classes": classes,
               "patients_on_two_sides": n_two_sides, "folds": folds}
    if COPY in splits.columns:
        summary["copies_per_image"] = list(COPIES)
    return summary, straddling, _audit_markdown(summary, straddling)


def _audit_markdown(summary: dict, straddling: pd.DataFrame) -> str:
    unit = summary["unit"]
    lines = [f"# Split audit: {summary['run']}", "",
             (f"{summary['label']} (scheme {summary['scheme']}, protocol {summary['protocol']}); classes "
              f"{', '.join(summary['classes'])}.")]
    if summary["folds_from"]:
        lines += ["", f"Folds: those of {summary['folds_from']}, restricted to this task's images."]
    copies = summary.get("copies_per_image")
    if copies:
        leaked = ", ".join(f"{unit} {fold}: {entry['test_copies_with_a_copy_in_train']} of {entry['test']['images']}"
                           for fold, entry in summary["folds"].items())
        lines += ["", (f"Images are copies: each original image is {len(copies)} images ({', '.join(copies)}), "
                       f"split at random as separate images. Test copies with another copy of their image in "
                       f"training: {leaked}.")]
    lines += ["", (f"| {unit} | train images (patients) | val images (patients) | test images (patients) | "
                   "absent from train | absent from val | absent from test | patients on two sides |"),
              "| " + " | ".join("---" for _ in range(8)) + " |"]
    for fold, entry in summary["folds"].items():
        sides = [f"{entry[s]['images']} ({entry[s]['patients']})" for s in SPLITS]
        absent = [", ".join(entry[s]["absent_classes"]) or "–" for s in SPLITS]
        lines.append(f"| {fold} | " + " | ".join(sides + absent + [str(entry["patients_on_two_sides"])]) + " |")
    lines += ["", "## Patients on two sides", ""]
    if straddling.empty:
        lines.append(f"None: no patient has images on two sides of any {unit}.")
    elif summary["protocol"] in LEAKY:
        lines.append(f"The {PROTOCOL_LABELS[summary['protocol']]} split puts up to {summary['patients_on_two_sides']} "
                     f"patients on two sides of a {unit}, by design (it measures the leak); each is listed in the "
                     "audit CSV.")
    else:
        lines += [(f"{straddling['patient'].nunique()} patient(s) (for BreakHis the numeric id, shared by "
                   "sibling slides) have images on two sides:"), "",
                  f"| {unit} | patient | slide | side | images |", "| --- | --- | --- | --- | --- |"]
        lines += [f"| {r.fold} | {r.patient} | {r.slide} | {r.split} | {r.images} |" for r in straddling.itertuples()]
    lines += ["", summary["note"]]
    return "\n".join(lines) + "\n"


def write_audit(summary: dict, straddling: pd.DataFrame, markdown: str, json_path, csv_path, md_path) -> None:
    from deepbc.jobs.atomic import write_csv, write_json, write_text

    write_json(json_path, summary)
    write_csv(csv_path, straddling)
    write_text(md_path, markdown)


def read_audit(path) -> dict:
    """A split audit JSON written by make_splits, or say clearly why it cannot be read."""
    import json

    try:
        with open(path, encoding="utf-8") as fh:
            summary = json.load(fh)
    except FileNotFoundError:
        raise UserError("split audit not found", str(path), "run the make_splits rule for this run first") from None
    except (OSError, ValueError) as err:
        raise UserError(f"split audit is not readable JSON ({err})", str(path), delete_and_rerun(path)) from None
    missing = [k for k in ("scheme", "label", "note", "folds") if k not in summary]
    if missing:
        raise UserError(f"split audit without {missing}", str(path), delete_and_rerun(path))
    return summary


# The schemes whose figures name their split: a k-fold split's figures already say "folds ...
# pooled", but a repeat tests some patients twice, and a predefined split may not be patient-wise.
LABELLED_SCHEMES = ("repeated_holdout", PREDEFINED)


def with_split_label(title: str, audits=()) -> str:
    """A figure's title with a line naming the split of each of its runs whose split is repeated
    holdouts or predefined: the audit's label (e.g. "predefined split, 4 patients on two sides"),
    the one the tables print. ``audits``: the runs' audit JSONs (``write_audit``); every figure
    (deepbc.results.figures, deepbc.results.calibration, deepbc.evaluation.gradcam) titles itself
    through here."""
    labels = [summary["label"] for summary in map(read_audit, audits or ())
              if summary["scheme"] in LABELLED_SCHEMES]
    return f"{title}\nsplit: {'; '.join(dict.fromkeys(labels))}" if labels else title


# --------------------------------------------------------------------------------------------
# External tests, checks, reading
# --------------------------------------------------------------------------------------------


def make_external_splits(train_df: pd.DataFrame, test_df: pd.DataFrame, k: int, val_fraction: float,
                         seed: int, dataset: str, test_dataset: str) -> pd.DataFrame:
    """Patient-wise train/val on ``train_df`` (k folds, or all patients once with k = 1), and all of
    ``test_df`` (the external dataset's selection) as every fold's test rows; checked disjoint."""
    if k == 1:
        _check_val_fraction(val_fraction)
        data = _prepared(train_df)
        split = np.where(data["patient"].isin(_draw_patients(data, val_fraction, seed, "validation")), "val",
                         "train")
        internal = data.assign(fold=np.int64(0), split=split, protocol="patient")
        internal = internal[COLUMNS + [c for c in OPTIONAL_COLUMNS if c in data.columns]]
        check_splits(internal, val_fraction)
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
    """Log, per fold, how many test patients also have images in train (a leaky protocol's leak)
    and, under the augment-then-split protocol, how many test copies have a copy in train."""
    leaked = copy_leaks(splits)
    for fold, g in splits.groupby("fold"):
        train = set(g.loc[g["split"] == "train", "patient"].unique())
        test = g[g["split"] == "test"]
        test_patients = set(test["patient"].unique())
        shared = test_patients & train
        label = PROTOCOL_LABELS[str(g["protocol"].iloc[0])]
        LOG.warning("fold %d (%s): %d of %d test patients also appear in train; %.1f%% of test images come from "
                    "a patient seen in training", fold, label, len(shared), len(test_patients),
                    100.0 * test["patient"].isin(train).mean())
        if fold in leaked:
            LOG.warning("fold %d (%s): %d of %d test copies (%.1f%%) have another copy of their image in training",
                        fold, label, leaked[fold], len(test), 100.0 * leaked[fold] / len(test))


def copy_leaks(splits: pd.DataFrame) -> dict:
    """{fold: test rows whose image has a copy in that fold's training split}; empty for a table
    without copies (every protocol but augmented_image)."""
    if COPY not in splits.columns:
        return {}
    out = {}
    for fold, g in splits.groupby("fold"):
        trained = g.loc[g["split"] == "train", "path"].unique()
        out[fold] = int(g.loc[g["split"] == "test", "path"].isin(trained).sum())
    return out


def _refuse_training_gaps(splits: pd.DataFrame, unit: str) -> None:
    """Refuse a training set without an image of one of the task's classes (those of the table),
    naming the fold, the class, where its patients are, and what to do."""
    classes = splits[["label_index", "label"]].drop_duplicates().sort_values("label_index")["label"].tolist()
    for fold, g in splits.groupby("fold"):
        present = set(g.loc[g["split"] == "train", "label"].unique())
        absent = [c for c in classes if c not in present]
        if not absent:
            continue
        c = absent[0]
        carriers = g[g["label"] == c].groupby("patient")["split"].agg(lambda s: "+".join(sorted(set(s))))
        placed = ", ".join(f"{p} in {s}" for p, s in carriers.items())
        others = f" (nor of {absent[1:]})" if len(absent) > 1 else ""
        if unit == "split":
            fix = f"give some images of class {c!r} the split train in the predefined split file"
        elif splits.loc[splits["label"] == c, "patient"].nunique() == 1:
            fix = (f"class {c!r} has images of one patient only, so the {unit} testing that patient cannot train on "
                   "it: remove the class from the task's classes (and filter its images out), or use "
                   "splits.scheme: repeated_holdout, whose holdouts never draw a class's last patient")
        else:
            fix = ("use fewer folds (a lower splits.k), another seed, or splits.scheme: repeated_holdout (its "
                   "holdouts never draw a class's last patient)")
        raise UserError(f"{unit} {fold}'s training set has no image of class {c!r}{others}: the class's patients "
                        f"are {placed}. A model trained without a class can never predict it, and class weights "
                        "would give it weight 0", "the splits of this task (config section splits, or "
                        "task_definitions.<task>.splits)", fix)


def _warn_missing_classes(splits: pd.DataFrame, unit: str = "fold") -> None:
    labels = splits[["label_index", "label"]].drop_duplicates().sort_values("label_index")["label"].tolist()
    for (fold, split), g in splits.groupby(["fold", "split"]):
        present = set(g["label"].unique())
        absent = [c for c in labels if c not in present]
        if not absent or split == "train":
            continue
        if split == "val":
            LOG.warning("%s %d val has no image of class(es) %s: checkpoint choice, early stopping and temperature "
                        "scaling use the validation loss over the classes present (docs/methods.md)", unit, fold,
                        absent)
        else:
            LOG.warning("%s %d %s has no image of class(es) %s: per-class metrics there are undefined", unit, fold,
                        split, absent)
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


def _check_combination(task, protocol: str, settings: SplitSettings) -> None:
    """A predefined split is patient-wise and tested internally; a repeated holdout draws internal test
    patients (deepbc.workflow.config checks the same before anything runs)."""
    if settings.kind == PREDEFINED and (task.test_dataset or protocol != "patient"):
        what = "an external test (test_dataset)" if task.test_dataset else f"the {PROTOCOL_LABELS[protocol]} protocol"
    elif settings.kind == "repeated_holdout" and task.test_dataset:
        what = "an external test (test_dataset)"
    else:
        return
    raise UserError(f"task {task.name!r}: a {settings.kind} split cannot be combined with {what}",
                    f"config key task_definitions.{task.name}",
                    "remove the task's test_dataset (or its leaky protocols: set protocols: [patient]), or split it "
                    "with splits.scheme: kfold and no splits.predefined")


def build_splits_file(manifest_path, task, protocol: str, settings: SplitSettings, seed: int, out_path,
                      audit_paths=None, test_manifest_path=None) -> pd.DataFrame:
    """Manifest parquet -> task selection -> splits parquet (atomic), and its audit
    (``audit_paths``: the JSON, CSV and Markdown files, ``write_audit``); returns the splits.

    A task with a ``test_dataset`` needs that dataset's manifest (``test_manifest_path``) and is split
    by ``make_external_splits``. A task at one magnification, tested on held-out patients, is split
    as the same task at all magnifications and keeps its own images: every magnification's rows of
    the magnification table are tested on the same patients. A predefined split is mapped onto the
    task's own images (``make_predefined_splits``).
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
    _check_combination(task, protocol, settings)
    manifest = read_table(manifest_path, "manifest")
    LOG.info("manifest %s: %d images", manifest_path, len(manifest))
    selected = select(manifest, task, settings.exclude_label_conflicts)
    folds_from = None
    if settings.kind == PREDEFINED:
        LOG.info("predefined split %s, keyed by %s", settings.predefined, settings.predefined_key)
        table = read_predefined(settings.predefined)
        splits = make_predefined_splits(selected, manifest, table, settings.predefined_key, settings.val_fraction,
                                        seed, settings.allow_straddling, settings.predefined)
    elif task.test_dataset:
        if protocol != "patient":
            raise UserError(f"an external test runs under the patient protocol, not {protocol!r}",
                            f"config key task_definitions.{task.name}.protocols", "set protocols: [patient]")
        test_manifest = read_table(test_manifest_path, "manifest")
        LOG.info("test manifest %s (dataset %s): %d images", test_manifest_path, task.test_dataset,
                 len(test_manifest))
        test = select(test_manifest, task, settings.exclude_label_conflicts, dataset=task.test_dataset)
        splits = make_external_splits(selected, test, settings.k, settings.val_fraction, seed, task.dataset,
                                      task.test_dataset)
    elif task.magnification != "all":
        folds_from = "the same task at all magnifications"
        pool = select(manifest, dataclasses.replace(task, magnification="all"), settings.exclude_label_conflicts)
        LOG.info("%s: split as %s (%d images), keeping its %d images at %s", task.name, folds_from, len(pool),
                 len(selected), task.magnification)
        splits = split_by_settings(pool, settings, seed, protocol, keep=selected["path"])
    else:
        splits = split_by_settings(selected, settings, seed, protocol)
    write_parquet(out_path, splits)
    LOG.info("wrote %s (%d rows, %d fold(s), protocol %s)", out_path, len(splits), splits["fold"].nunique(),
             protocol)
    if audit_paths is not None:
        summary, straddling, markdown = audit(splits, settings, protocol, run_name(task.name, protocol), folds_from,
                                              task.test_dataset)
        write_audit(summary, straddling, markdown, *audit_paths)
        LOG.info("split: %s; audit %s", summary["label"], ", ".join(map(str, audit_paths)))
    return splits
