"""The headline figures of a run and architecture: its test predictions pooled over the folds run.

Why pooled (docs/methods.md, "Metrics and tables", has the long form): a fold's test set can lack
a class (BreakHis has 2 adenosis patients), so a fold's balanced accuracy or macro AUC is over the
classes that fold happens to hold, and averaging such figures over folds mixes different
questions: a model that never recognises adenosis scored 0.867 "balanced accuracy" as the mean of
five 3-class figures, against 0.75 as the 4-class figure it is. Pooled, every patient is tested
once (patient-wise k-fold), one confusion matrix holds every class, and a class missing from one
fold still counts. The per-fold figures stay in the metrics JSONs (deepbc.evaluation.metrics).

Conventions (also in every pooled JSON under ``conventions``):

- Units as in deepbc.evaluation.metrics, each fold's own: a patient-level unit is (fold, patient,
  true class), its probabilities the mean of its images' in that fold. Under patient-wise k-fold
  every patient is in one test fold; under the leaky protocols a patient's images can sit in
  several folds' test sets (one unit per fold); with an external test every fold's model tests the
  same patients (one unit per fold and patient: k models x N). Under the augment-then-split
  protocol an image is each of its copies: image-level figures count copies, and a patient-level
  unit's probabilities are the mean over its test copies.
- Figures: deepbc.evaluation.metrics' formulas on the pooled units; balanced accuracy, macro
  figures and macro AUC over every class present in the pooled truth (all the task's classes when
  every fold runs); a class absent from all of it is listed in ``auc_absent_classes``.
- Intervals (95 %; deepbc.evaluation.intervals), ``ci_method`` names each one's:
  ``wilson`` for the patient-level proportions (accuracy, per-class and binary sensitivity,
  specificity and precision; ``counts`` gives k and n), ``mover_wilson`` for the patient-level
  balanced accuracy (the per-class sensitivities' Wilson intervals combined), ``bootstrap`` for
  everything else: AUC, macro specificity, precision and F1, and every image-level figure, whose
  images are not independent (a patient's images resemble each other), so only resampling
  patients is honest for them.
- Bootstrap: draw b weights each test patient (by id, across folds) Poisson(1) from a stream
  seeded by (seed, patient id); a unit or image weighs its patient's weight; the percentile
  interval over the draws where the figure is defined (``ci_n_valid``): a macro figure (balanced
  accuracy, macro means, macro AUC) only in draws that hold every class of the pooled truth, a
  class's own figures only in draws that hold it. A drawn patient brings its units of every fold.
  A class of one or two patients barely moves under resampling (one patient's share of right
  images is the same however often it is drawn), so image-level intervals over such classes are
  too narrow: the tables say so, and give each class's patients. The trained models are held fixed: the interval covers which patients
  were tested, not the variation between trainings. The headline draws are kept
  (``bootstrap_values``, also per magnification), and each class's (in its ``per_class`` entry):
  the same patient has the same weight in every run, so the leakage table's differences between
  protocols are paired, and the mean over a fold's repeats (train.repeats) has draws of its own
  (deepbc.evaluation.repeats).
- Repeats: a pooled JSON is of one repeat (``meta.repeat``), its folds' models trained with that
  repeat's seed; repeat r > 0 reads fold{k}_r{r}.parquet and is written to pooled_r{r}.json.
"""

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd

from deepbc.data.runs import COPIES, COPY, parse_model_fold, parse_run
from deepbc.evaluation import intervals
from deepbc.evaluation.metrics import (CI_METRICS, CONFIDENCE, KEPT_DRAWS, NO_MAGNIFICATION, _full_block,
                                       _kept_draws, _patient_units, _recognition_rate, _scalars, _validated,
                                       _WeightedAuc, grouping_of, magnification_order)
from deepbc.jobs import atomic
from deepbc.jobs.errors import UserError, delete_and_rerun
from deepbc.jobs.logs import LOG

RECOGNITION = "patient_recognition_rate"
# Per-class parts of deepbc.evaluation.metrics._scalars, by the name their figure has in ``per_class``.
PER_CLASS = {"sensitivity": "sens", "specificity": "spec", "precision": "prec", "auc": "auc"}
# Means over classes (MULTICLASS_MACRO: only for more than two classes, else of the positive class).
MACRO_METRICS = ("balanced_accuracy", "macro_sensitivity", "macro_specificity", "macro_precision", "macro_f1", "auc")
MULTICLASS_MACRO = ("sensitivity", "specificity")
# Draws computed at once: (DRAW_CHUNK x images) weights, a few MB for BreakHis' 1,600 test images per fold.
DRAW_CHUNK = 100

CONVENTIONS = {
    "pooling": "the test predictions of every fold run, one confusion matrix; a patient-level unit "
               "is (fold, patient, true class) with the mean of its images' probabilities",
    "macro": "over every class present in the pooled truth",
    "wilson": "patient-level proportions: Wilson score interval of k of n units (counts)",
    "mover_wilson": "patient-level balanced accuracy: the per-class sensitivities' Wilson intervals "
                    "combined by MOVER (Zou & Donner 2008) for the mean of independent proportions",
    "bootstrap": "AUC, macro specificity/precision/F1 and every image-level figure: percentile "
                 "interval; draw b weights each patient Poisson(1), seeded by (seed, patient id), "
                 "the same weight in every run and fold (paired across runs); a macro figure counts "
                 "only in draws holding every class of the pooled truth",
    "models_fixed": "every interval holds the trained models fixed",
}


def pooled_metrics(frames, classes: list[str], n_boot: int, seed: int, keep_draws: bool = True) -> dict:
    """The pooled figures of ``frames`` ([(fold, predictions DataFrame, where)]), with intervals.

    ``by_magnification`` is added when the predictions carry magnifications (BreakHis).
    """
    classes = list(classes)
    out = {"classes": classes, "positive_class": classes[1] if len(classes) == 2 else None,
           **_pool(frames, classes, n_boot, seed, keep_draws, class_draws=keep_draws)}
    present = set()
    for _, df, _ in frames:
        if "magnification" in df.columns:
            present |= set(df["magnification"].astype(str)) - {NO_MAGNIFICATION}
    out["by_magnification"] = {}
    for mag in magnification_order(present):
        subset = [(fold, df[df["magnification"].astype(str) == mag], f"{where} ({mag} images)")
                  for fold, df, where in frames if "magnification" in df.columns]
        block = _pool([s for s in subset if len(s[1])], classes, n_boot, seed, keep_draws, class_draws=False)
        del block["test_patients"]
        out["by_magnification"][mag] = block
    out["bootstrap"] = {"n_boot": int(n_boot), "seed": int(seed), "unit": "patient id",
                        "weights": "poisson", "confidence": CONFIDENCE, "method": "percentile"}
    out["conventions"] = CONVENTIONS
    return out


def _pool(frames, classes, n_boot, seed, keep_draws, class_draws) -> dict:
    k = len(classes)
    images = {"y": [], "pred": [], "prob": [], "patient": [], "group": []}
    units = {"y": [], "pred": [], "prob": [], "patient": []}
    offset = 0
    for _, df, where in frames:
        if "path" not in df.columns:
            raise UserError("the predictions lack column 'path'", where,
                            delete_and_rerun(where, remakes="the evaluate rule predicts again"))
        y, pred, prob, codes, patients = _validated(df, classes, where)
        ids = np.asarray(patients, dtype=object)
        u = _patient_units(y, pred, prob, codes, k)
        images["y"].append(y)
        images["pred"].append(pred)
        images["prob"].append(prob)
        images["patient"].append(ids[codes])
        # The recognition rate's groups: a patient in one fold's test set (Spanhol's test patient).
        images["group"].append(codes + offset)
        offset += len(patients)
        units["y"].append(u["y"])
        units["pred"].append(u["pred_mean"])
        units["prob"].append(u["prob_mean"])
        units["patient"].append(ids[u["patient"]])
    images = {key: np.concatenate(v) for key, v in images.items()}
    units = {key: np.concatenate(v) for key, v in units.items()}
    # Clusters: patients by id, across folds (a patient tested by several folds is drawn once).
    patients = sorted(set(images["patient"]))
    index = {p: i for i, p in enumerate(patients)}
    image_cluster = np.array([index[p] for p in images["patient"]], dtype=np.int64)
    unit_cluster = np.array([index[p] for p in units["patient"]], dtype=np.int64)
    weights = intervals.poisson_weights(patients, n_boot, seed) if n_boot > 0 else None

    image = _level(images["y"], images["pred"], images["prob"], image_cluster, classes, weights,
                   proportions=False, group=images["group"], keep_draws=keep_draws, class_draws=class_draws)
    patient = _level(units["y"], units["pred"], units["prob"], unit_cluster, classes, weights,
                     proportions=True, keep_draws=keep_draws, class_draws=class_draws)
    patients_per_class = [len(set(units["patient"][units["y"] == c])) for c in range(k)]
    return {
        "n_images": int(len(images["y"])),
        # An external test's folds predict the same images: each counts once here.
        "n_distinct_images": len({p for _, df, _ in frames for p in tested_images(df)}),
        "n_patients": len(patients),
        "n_patient_units": int(len(units["y"])),
        "class_counts": {
            "images": {c: int(n) for c, n in zip(classes, np.bincount(images["y"], minlength=k))},
            "patients": dict(zip(classes, patients_per_class)),
            "patient_units": {c: int(n) for c, n in zip(classes, np.bincount(units["y"], minlength=k))},
        },
        "image_level": image,
        "patient_level": {"mean_probability": patient},
        "test_patients": patients,
    }


def _level(y, pred, score, cluster, classes, weights, proportions: bool, group=None,
           keep_draws: bool = True, class_draws: bool = False) -> dict:
    """deepbc.evaluation.metrics' block of the pooled units, with the intervals of the conventions;
    ``keep_draws``: the headline figures' draws, ``class_draws``: each class's."""
    k = len(classes)
    block = _full_block(y, pred, score, classes)
    block["n_patients"] = int(len(np.unique(cluster)))
    extra = {}
    if group is not None:
        extra[RECOGNITION] = _recognition_rate(y, pred, group)
        block[RECOGNITION] = extra[RECOGNITION](None)
    ci, method, n_valid = {}, {}, {}
    per_ci = {c: {} for c in classes}
    per_method = {c: {} for c in classes}
    if weights is not None:
        values, per_class = _draws(weights, cluster, y, pred, score, k, extra)
        for m, v in values.items():
            ci[m], n_valid[m] = intervals.percentile(v, CONFIDENCE)
            method[m] = "bootstrap"
        for name, part in PER_CLASS.items():
            for j, c in enumerate(classes):
                per_ci[c][name], _ = intervals.percentile(per_class[part][:, j], CONFIDENCE)
                per_method[c][name] = "bootstrap"
        if keep_draws:
            block["bootstrap_values"] = _kept_draws(values, KEPT_DRAWS + tuple(extra))
        if class_draws:
            for j, c in enumerate(classes):
                kept = {name: per_class[part][:, j] for name, part in PER_CLASS.items()}
                block["per_class"][c]["bootstrap_values"] = _kept_draws(kept, PER_CLASS)
    cm = np.asarray(block["confusion_matrix"]["matrix"], dtype=np.int64)
    total, support, predicted, tp = cm.sum(), cm.sum(axis=1), cm.sum(axis=0), np.diag(cm)
    counts = {c: {"sensitivity": [int(tp[j]), int(support[j])],
                  "specificity": [int(total - support[j] - predicted[j] + tp[j]), int(total - support[j])],
                  "precision": [int(tp[j]), int(predicted[j])]} for j, c in enumerate(classes)}
    block_counts = {"accuracy": [int(tp.sum()), int(total)]}
    if proportions:
        ci["accuracy"], method["accuracy"] = intervals.wilson(tp.sum(), total, CONFIDENCE), "wilson"
        for c in classes:
            for name, (hits, n) in counts[c].items():
                per_ci[c][name], per_method[c][name] = intervals.wilson(hits, n, CONFIDENCE), "wilson"
        present = [c for j, c in enumerate(classes) if support[j] > 0]
        balanced = intervals.mover_mean([block["per_class"][c]["sensitivity"] for c in present],
                                        [per_ci[c]["sensitivity"] for c in present])
        for m in ("balanced_accuracy", "macro_sensitivity") + (() if k == 2 else ("sensitivity",)):
            ci[m], method[m] = balanced, "mover_wilson"
        if k == 2:
            positive = classes[1]
            for m in ("sensitivity", "specificity"):
                ci[m], method[m] = per_ci[positive][m], "wilson"
                block_counts[m] = counts[positive][m]
    for c in classes:
        block["per_class"][c].update({"ci95": per_ci[c], "ci_method": per_method[c], "counts": counts[c]})
    block.update({"ci95": ci or None, "ci_method": method, "ci_n_valid": n_valid or None,
                  "counts": block_counts})
    return block


def _draws(weights, cluster, y, pred, score, k, extra):
    """Each draw's CI_METRICS, ``extra`` figures and per-class parts (NaN where undefined, e.g. in
    the rare draw that weighs every patient 0), computed DRAW_CHUNK draws at a time."""
    weighted_auc = _WeightedAuc(y, score, k)
    cells = np.eye(k * k)[y * k + pred]
    classes = np.eye(k)[y]
    present = classes.sum(axis=0) > 0
    macro_metrics = [m for m in CI_METRICS if m in MACRO_METRICS or (k > 2 and m in MULTICLASS_MACRO)]
    values = {m: [] for m in (*CI_METRICS, *extra)}
    per_class = {part: [] for part in PER_CLASS.values()}
    for start in range(0, len(weights), DRAW_CHUNK):
        w = weights[start:start + DRAW_CHUNK][:, cluster].astype(np.float64)
        macro, parts = _scalars((w @ cells).reshape(-1, k, k), weighted_auc(w))
        # A draw without a class of the pooled truth leaves a macro figure undefined (over the
        # remaining classes it would be another figure: the very error pooling corrects).
        # A class's own figures likewise count only in draws that hold it.
        drawn = w @ classes > 0
        lacking = (~drawn & present).any(axis=1)
        for m in macro_metrics:
            macro[m] = np.where(lacking, np.nan, macro[m])
        for m in CI_METRICS:
            values[m].append(macro[m])
        for m, f in extra.items():
            values[m].append(f(w))
        for part in per_class:
            per_class[part].append(np.where(drawn, parts[part], np.nan))
    return ({m: np.concatenate(v) for m, v in values.items()},
            {part: np.concatenate(v) for part, v in per_class.items()})


def tested_images(df: pd.DataFrame) -> list[str]:
    """What each prediction tested: its image's path, or, for an image copy (the augment-then-split
    protocol), the path and the copy's name (``benign/x.png@rot90``, deepbc.data.runs.COPIES)."""
    if COPY not in df.columns:
        return [str(p) for p in df["path"]]
    return [f"{p}@{COPIES[int(c)]}" for p, c in zip(df["path"], df[COPY])]


def images_digest(frames) -> str:
    """sha256 of the sorted test images (``tested_images``): two runs with the same digest tested the
    same images (or copies)."""
    paths = sorted(p for _, df, _ in frames for p in tested_images(df))
    return hashlib.sha256("\n".join(paths).encode("utf-8")).hexdigest()


def pooled_run(frames, classes: list[str], run: str, arch: str, grouping: str, magnification: str, *,
               n_boot: int, seed: int, test_dataset: str | None = None, repeat: int = 0) -> dict:
    """``pooled_metrics`` of a run and architecture's ``frames`` ([(fold, predictions, where)]) of
    one ``repeat``, with ``meta``: as the per-fold metrics' (deepbc.evaluation.metrics.metrics_file),
    ``folds`` for ``fold``, ``predictions`` (where each fold's came from) and ``test_images_sha256``."""
    task, protocol = parse_run(run)
    result = pooled_metrics(frames, classes, n_boot, seed)
    result["meta"] = {"run": run, "task": task, "protocol": protocol, "grouping": grouping,
                      "test_dataset": test_dataset or None, "arch": arch,
                      "folds": sorted(fold for fold, _, _ in frames), "repeat": int(repeat),
                      "magnification": magnification,
                      "test_images_sha256": images_digest(frames),
                      "predictions": [where for _, _, where in frames]}
    return result


def pooled_file(predictions, classes: list[str], out, run: str, arch: str, manifest, magnification: str, *,
                n_boot: int, seed: int, test_dataset: str | None = None) -> dict:
    """The pooled figures of a run and architecture's test predictions (one parquet per fold, all of
    one repeat), as JSON.

    ``meta`` names what they are of (as the per-fold metrics' meta, with ``folds`` for ``fold``),
    ``test_patients`` and ``meta.test_images_sha256`` what was tested (the leakage table compares them).
    """
    frames, folds, repeats = [], [], set()
    for path in predictions:
        name = Path(path).name
        try:
            if not (name.startswith("fold") and name.endswith(".parquet")):
                raise ValueError(name)
            fold, repeat = parse_model_fold(name[len("fold"):-len(".parquet")])
        except ValueError:
            raise UserError("predictions path does not end in fold{k}.parquet (or fold{k}_r{r}.parquet "
                            "for a repeat)", str(path), "pass files from results/predictions/{run}/{arch}/") from None
        try:
            df = pd.read_parquet(path)
        except FileNotFoundError:
            raise UserError("predictions file not found", str(path),
                            "run the evaluate rule for this run, architecture and fold") from None
        folds.append(fold)
        repeats.add(repeat)
        frames.append((fold, df, str(path)))
    if not frames:
        raise UserError("no predictions files given", "--predictions", "pass every fold's predictions")
    if len(repeats) > 1:
        raise UserError(f"predictions of several repeats given (repeats {sorted(repeats)}): a pooled file "
                        "is of one repeat", "--predictions", "pass the predictions of one repeat, "
                        "fold{k}.parquet for repeat 0 or fold{k}_r{r}.parquet for repeat r")
    if len(set(folds)) != len(folds):
        raise UserError(f"a fold is given twice (folds {sorted(folds)})", "--predictions",
                        "pass each fold's predictions once")
    repeat = repeats.pop()
    result = pooled_run(frames, classes, run, arch, grouping_of(manifest), magnification, n_boot=n_boot,
                        seed=seed, test_dataset=test_dataset, repeat=repeat)
    atomic.write_json(out, result)
    pat = result["patient_level"]["mean_probability"]
    LOG.info("%s %s%s, %d fold(s) pooled: %d images, %d patients; patient balanced accuracy %.3f %s "
             "(%d bootstrap draws)", run, arch, f" repeat {repeat}" if repeat else "", len(folds),
             result["n_images"], result["n_patients"],
             pat["balanced_accuracy"], (pat["ci95"] or {}).get("balanced_accuracy"), n_boot)
    return result
