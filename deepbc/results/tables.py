"""Result tables from the metrics JSONs: one per task, a summary, and the leakage table (each leaky
protocol against patient-wise, and the preprint's augment-then-split against the image-level split).

Headline figures are pooled: each comes from a run and architecture's pooled JSON
(deepbc.evaluation.pooled: the test predictions of every fold run, one confusion matrix over all
the task's classes, so a class missing from a fold's test set still counts), with its 95 %
interval and its n: Wilson for patient-level proportions (shown with k/n), the per-class Wilson
intervals combined (MOVER) for the patient-level balanced accuracy, a patient bootstrap for AUC,
macro specificity and every image-level figure (INTERVALS_NOTE). The per-fold metrics JSONs
(deepbc.evaluation.metrics.metrics_file) give the tables their meta (run, task, protocol,
grouping, arch, fold; optional ``notes``, shown under the task table) and the per-fold figures,
whose mean and sample sd over folds (ddof=1; none with one fold) the CSVs keep as
``{level}_{metric}_mean`` and ``_sd``.

With several trainings per fold (train.repeats), ``load_pooled`` gives a run and architecture's
repeats as one pooled dict (deepbc.evaluation.repeats): every table shows the mean over the
repeats, its test-patient interval, and the spread between the repeats (``_repeats_sd``,
``_repeats_min``, ``_repeats_max``; REPEATS_NOTE); the summary chooses on the mean over repeats.

A patient-protocol run whose groups are single images (no patient mapping) is labelled
"image-grouped (no patient mapping)", never patient-wise, and is left out of the leakage table
(both of its protocols can split a patient's images). "Patient level" is the mean-probability
aggregation of deepbc.evaluation.metrics; "image level" counts images. Sensitivity and specificity
are those of the positive (second) class for two classes; for more classes the macro sensitivity
is the balanced accuracy, so the task tables leave it out, and specificity is the macro mean.
The fold frame (``fold_frame``, ``_aggregate``) also serves deepbc.results.calibration, whose
figures stay per fold with the interval of the mean over folds (INTERVAL_NOTE).
"""

import json
import logging
import math
import re
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from deepbc.data.runs import (
    MODEL_FOLD,
    PROTOCOL_LABELS,
    PROTOCOLS,
    model_fold,
    model_label,
    parse_model_fold,
    parse_run,
)
from deepbc.evaluation import repeats
from deepbc.evaluation.intervals import percentile
from deepbc.evaluation.metrics import CONFIDENCE, GROUPING_LABELS, IMAGE_EXTRA, KEPT_DRAWS, PATIENT_EXTRA
from deepbc.jobs import atomic
from deepbc.jobs.errors import UserError, delete_and_rerun
from deepbc.training.model_dir import retrain

LOG = logging.getLogger("deepbc")

PREPRINT_FILE = Path(__file__).parent / "preprint.yaml"
TABLE_METRICS = ("accuracy", "balanced_accuracy", "sensitivity", "specificity", "auc", "fp", "fn")
# FP/FN counts scale with the test-set size, so the leakage table compares rates only.
LEAKAGE_METRICS = ("accuracy", "balanced_accuracy", "sensitivity", "specificity", "auc")
PREPRINT_METRICS = ("accuracy", "sensitivity", "auc")
LEVELS = ("patient", "image")
IMAGE_GROUPED = GROUPING_LABELS["image"]
IMAGE_GROUPED_NOTE = (
    f"{IMAGE_GROUPED}: the dataset maps no image to a patient, so each image is its own group: "
    "its patient-level figures are image-level ones, and images of one patient may sit on both "
    "sides of the split. Give the dataset a patients CSV (path, patient) to make it patient-wise.")
PREPRINT_ONLY = "preprint only (not run here)"
COPIES_NOTE = (
    f"{PROTOCOL_LABELS['augmented_image']}: each image made 8 images first (its rotations and mirror "
    "images), then split at random, so other copies of a test image were trained on; its images "
    "column and image-level figures count copies, its patient level averages a patient's test copies. "
    f"{PROTOCOL_LABELS['image']}: the original images split at random, augmented on the fly in "
    "training. Both put a patient's images on both sides of the split: results/tables/leakage.md.")
LABELS = {"accuracy": "acc.", "balanced_accuracy": "bal. acc.", "sensitivity": "sens.",
          "specificity": "spec.", "auc": "AUC", "fp": "FP", "fn": "FN",
          "patient_recognition_rate": "patient recognition rate", "ece": "ECE", "brier": "Brier",
          "precision": "prec."}
COUNT_METRICS = ("fp", "fn")
INTERVAL_METRICS = KEPT_DRAWS
RECOGNITION = "patient_recognition_rate"
# Figures of one level only, each with its interval: the patient recognition rate (made of the
# image predictions) and calibration; old metrics JSONs without them give NaN.
LEVEL_EXTRA = {"patient": PATIENT_EXTRA, "image": IMAGE_EXTRA}
# The pooled figures of each level (calibration stays per fold: deepbc.results.calibration).
POOLED_METRICS = {"patient": TABLE_METRICS, "image": TABLE_METRICS + (RECOGNITION,)}
# Marks a bootstrap interval of zero width (ZERO_WIDTH_NOTE).
ZERO_WIDTH = "‡"
RECOGNITION_NOTE = (
    "Patient recognition rate (Spanhol et al. 2016): for each test patient the fraction of its "
    "images classified right, then the mean over patients; unlike image-level accuracy, every "
    "patient weighs the same.")
POOLED_NOTE = (
    "Every figure is computed once on the test predictions of all folds pooled: one confusion "
    "matrix over all the task's classes, so a class missing from one fold's test set still "
    "counts (a mean of per-fold figures would average figures over different classes). Patients "
    "and images: distinct test patients and images. Per-fold figures are in "
    "results/metrics/{run}/{arch}/fold{k}.json; the CSV keeps their mean and sample sd over folds "
    "(*_mean, *_sd).")
ZERO_WIDTH_NOTE = (
    f"{ZERO_WIDTH} A bootstrap interval of zero width: every resample of these patients gave the "
    "same value (e.g. an AUC of 1 when every patient is separated). The bootstrap cannot measure "
    "the uncertainty there; it is not zero. Read the n beside it.")
MULTICLASS_NOTE = (
    "More than two classes: no sensitivity column, as the macro sensitivity is the balanced "
    "accuracy; spec. is the macro specificity (mean over classes, one-vs-rest); AUC the mean of "
    "the one-vs-rest AUCs; FP and FN are sums of the one-vs-rest counts (each equals the "
    "misclassified units). Per-class sensitivity, precision and AUC: results/tables/{task}_per_class.md.")
INTERVAL_NOTE = (
    "[low, high]: 95 % interval of the mean over folds. Each of the metrics' bootstrap draws "
    "resamples every test fold's patients with replacement (a drawn patient brings all its "
    "images), recomputes each fold's figure and averages the folds (a fold whose figure is "
    "undefined in a draw is left out of that draw's mean); the interval spans the 2.5th to 97.5th "
    "percentiles of these means. It covers the sampling of test patients only: each fold's trained "
    "model is held fixed, so the variation between the models of different folds or trainings is "
    "not in it. Under the leaky protocols a patient's images sit in several folds' test sets, "
    "and each fold resamples that patient on its own: the folds are not independent, and the "
    "interval is too narrow there.")
# Columns of a pooled frame that no CSV keeps: the bootstrap draws and the repeats' own values.
IN_MEMORY = ("_draws", "_repeats_values")
REPEATS_NOTE = (
    "Trainings ({n} per fold): each fold's model was trained that many times on the same split, "
    "with different seeds (train.repeats: repeat 0 with the config's seed, the others with seeds "
    "derived from it). Each figure is the mean over these repeats of each repeat's pooled figure; "
    "\"sd s (min–max)\" after it is the spread between the repeats: the training variance "
    "(initialisation of the new layers, input order, augmentation draws) on the same test "
    "patients. [low, high] is the test-patient interval of that mean, the trained models held "
    "fixed: the patient bootstrap's draws averaged over the repeats (a draw weighs each patient "
    "alike in every repeat); for a patient-level proportion the Wilson interval of the mean "
    "proportion with n the patient units shown (the repeats test the same patients, so n is not "
    "multiplied), which for a mean over repeats errs, if at all, on the wide side; MOVER over "
    "those for the balanced accuracy. The interval covers which patients were tested, the spread "
    "how far another training moves the figure: neither covers the other. FP and FN are means "
    "over the repeats; the CSV's per-fold *_mean and *_sd are over every fold's repeats. The "
    "figures (ROC, calibration, confusion, training curves, Grad-CAM) show repeat 0.")
SELECTION_NOTE = (
    "Patient-wise k-fold reuses patients: fold k's validation patients are test patients of other "
    "folds, so the choice of architecture is not fully independent of those patients' labels, "
    "though never of the reported models' test predictions.")


def intervals_note(n_boot) -> str:
    """How the pooled tables' intervals are made (``n_boot``: the pooled JSONs' bootstrap draws)."""
    draws = f"{int(n_boot)} draws" if n_boot and not pd.isna(n_boot) else "no draws were made"
    return (
        "[low, high]: 95 % interval. (k/n): a patient-level proportion, k of n patient units (a "
        "patient with images of two classes is a unit per class), Wilson score interval, which "
        "stays inside [0, 1] without collapsing at 0/n or n/n. Patient-level balanced accuracy: "
        "the per-class sensitivities' Wilson intervals combined (MOVER, Zou & Donner 2008), as "
        "the classes' patients are independent. AUC, macro specificity and every image-level "
        "figure: patient bootstrap, percentile interval (" + draws + "; each draw weighs every "
        "test patient Poisson(1), seeded by its id, with all its images): a patient's images "
        "are not independent, so image counts would give intervals far too narrow. A class with "
        "one or two test patients barely moves when they are resampled, so bootstrap intervals "
        "over it (the image-level balanced accuracy, a per-class image-level figure) are too "
        "narrow: read its number of patients (results/tables/{task}_per_class.md). Every "
        "interval holds the trained models fixed: it covers which patients were tested, not "
        "the variation between trainings.")


def recompute(item, rule: str = "metrics") -> str:
    """What to do about a metrics file (``item``: its path, or the dict passed in memory) that is
    broken or of an older version; ``rule`` makes it (metrics, or pooled_metrics)."""
    if isinstance(item, dict):
        return ("pass the metrics that deepbc.evaluation.metrics.metrics_file writes" if rule == "metrics"
                else "pass the pooled metrics that deepbc.evaluation.pooled.pooled_file writes")
    return delete_and_rerun(item, remakes=f"the {rule} rule computes it again")


def _read_json(item, rule: str) -> tuple[str, dict]:
    if isinstance(item, dict):
        return "metrics passed in memory", item
    try:
        return str(item), json.loads(Path(item).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError("metrics file not found", str(item),
                        f"run the {rule} rule for this run and architecture") from None
    except json.JSONDecodeError as err:
        raise UserError(f"metrics file is not valid JSON ({err})", str(item), recompute(item, rule)) from None


def load_metrics(items) -> list[dict]:
    """Metrics dicts from JSON paths or already-loaded dicts; checks meta and duplicates."""
    out, seen = [], {}
    for item in items:
        where, m = _read_json(item, "metrics")
        meta = m.get("meta") or {}
        missing = [k for k in ("run", "task", "protocol", "grouping", "arch", "fold") if k not in meta]
        if missing or "image_level" not in m or "patient_level" not in m:
            raise UserError(f"not a metrics JSON of deepbc.evaluation.metrics (meta lacks {missing})", where, recompute(item))
        key = (meta["task"], meta["protocol"], meta["arch"], meta["fold"], meta.get("repeat", 0))
        if key in seen:
            raise UserError(f"two metrics files for task {key[0]}, protocol {key[1]}, "
                            f"arch {key[2]}, fold {model_fold(*key[3:])}", f"{seen[key]} and {where}",
                            "pass each fold's metrics once")
        seen[key] = where
        out.append(m)
    if not out:
        raise UserError("no metrics files given", "command line", "pass at least one metrics JSON")
    return out


def load_pooled(items) -> list[dict]:
    """Pooled metrics dicts (deepbc.evaluation.pooled) from JSON paths or loaded dicts; checks meta,
    the intervals' presence (a JSON of an older version has none) and duplicates. The repeats of a
    run and architecture (train.repeats) come back as one dict, their mean with the spread between
    them (deepbc.evaluation.repeats)."""
    out, seen = [], {}
    for item in items:
        where, m = _read_json(item, "pooled_metrics")
        meta = m.get("meta") or {}
        missing = [k for k in ("run", "task", "protocol", "grouping", "arch", "folds") if k not in meta]
        block = (m.get("patient_level") or {}).get("mean_probability") or {}
        if missing or "image_level" not in m or "ci_method" not in block or "classes" not in m:
            raise UserError(f"not a pooled metrics JSON of deepbc.evaluation.pooled (meta lacks {missing})",
                            where, recompute(item, "pooled_metrics"))
        key = (meta["task"], meta["protocol"], meta["arch"], meta.get("repeat", 0))
        if key in seen:
            raise UserError(f"two pooled metrics files for task {key[0]}, protocol {key[1]}, arch {key[2]}"
                            + (f", repeat {key[3]}" if key[3] else ""), f"{seen[key]} and {where}",
                            "pass each run and architecture's pooled metrics once")
        seen[key] = where
        out.append({**m, "_where": where})
    if not out:
        raise UserError("no pooled metrics files given", "--pooled", "pass at least one pooled.json")
    return repeats.combine(out)


def load_preprint(path=PREPRINT_FILE) -> dict:
    return yaml.safe_load(Path(path).read_text(encoding="utf-8"))


# Where a run's test images come from (the tables' "test" column).
INTERNAL_TEST = "internal (held-out folds)"
EXTERNAL_NOTE = (
    "external: <dataset>: trained and validated patient-wise on the task's dataset, tested on every "
    "usable image of another dataset (none of whose images, by sha256, or patient ids is in training "
    "or validation). Every fold's model is tested on the same images: patients and images are "
    "counted once, pooled figures hold each image once per fold's model (k models x N "
    "predictions), and the intervals resample each patient jointly across the folds.")


def test_label(test_dataset) -> str:
    return f"external: {test_dataset}" if test_dataset else INTERNAL_TEST


def protocol_label(protocol: str, grouping: str) -> str:
    """What a run's split is: patient-wise only when images map to patients."""
    if protocol == "patient" and grouping == "image":
        return IMAGE_GROUPED
    return PROTOCOL_LABELS.get(protocol, protocol)


def fold_frame(metrics: list[dict]) -> pd.DataFrame:
    """One row per (task, protocol, arch, fold): ``{level}_{metric}`` columns, None as NaN."""
    rows = []
    for m in metrics:
        row = {"repeat": 0, **m["meta"]}
        row["test"] = test_label(row.pop("test_dataset", None))
        blocks = {"patient": m["patient_level"]["mean_probability"], "image": m["image_level"]}
        for level, block in blocks.items():
            for metric in TABLE_METRICS + LEVEL_EXTRA[level]:
                value = block.get(metric)
                row[f"{level}_{metric}"] = math.nan if value is None else float(value)
            draws = block.get("bootstrap_values") or {}
            for metric in INTERVAL_METRICS + LEVEL_EXTRA[level]:
                values = draws.get(metric)
                row[f"{level}_{metric}_draws"] = (
                    None if values is None else np.array(values, dtype=np.float64))
        row["n_patients"] = m["n_patients"]
        row["n_images"] = m["n_images"]
        rows.append(row)
    return pd.DataFrame(rows)


def _aggregate(folds: pd.DataFrame, keys: list[str], intervals: bool = True) -> pd.DataFrame:
    """Mean and sd over folds (and their repeats) of every ``{level}_{metric}`` column, per group
    of ``keys``; with ``intervals``, the interval of that mean of the headline and extra figures."""
    value_cols = [f"{lv}_{m}" for lv in LEVELS for m in TABLE_METRICS + LEVEL_EXTRA[lv]]
    grouped = folds.groupby(keys, sort=True)
    out = grouped["fold"].nunique().rename("n_folds").reset_index()
    # Folds of an external test all test the same images: count them once, not once per fold; a
    # fold's repeats test its images again.
    per_fold = folds.drop_duplicates([*keys, "fold"]).groupby(keys, sort=True)
    external = grouped["test"].agg(lambda s: (s != INTERNAL_TEST).any()).to_numpy()
    for n in ("n_patients", "n_images"):
        out[n] = np.where(external, per_fold[n].max().to_numpy(), per_fold[n].sum().to_numpy())
    mean = grouped[value_cols].mean().reset_index(drop=True)
    sd = grouped[value_cols].std(ddof=1).reset_index(drop=True)
    for col in value_cols:
        out[f"{col}_mean"] = mean[col].to_numpy()
        out[f"{col}_sd"] = sd[col].to_numpy()
    if intervals:
        for col in (f"{lv}_{m}" for lv in LEVELS for m in INTERVAL_METRICS + LEVEL_EXTRA[lv]):
            bounds = [_interval(list(g[f"{col}_draws"])) for _, g in grouped]
            out[f"{col}_ci_low"] = [b[0] for b in bounds]
            out[f"{col}_ci_high"] = [b[1] for b in bounds]
    # One block per column so far: consolidated, the merges that follow stay cheap (and quiet).
    return out.copy()


def _interval(draws: list) -> tuple[float, float]:
    """Percentile interval of the mean over folds, from each fold's bootstrap draws.

    Draw b of every fold resamples that fold's patients independently (deepbc.evaluation.metrics draws each
    fold from its own stream), so averaging the folds' draw b gives one draw of the mean over
    folds; a fold's training repeats share its stream (the same patients drawn alike), so with
    repeats it is a draw of the mean over every model. NaN when a fold has no draws (metrics
    computed without a bootstrap).
    """
    if any(d is None for d in draws) or len({len(d) for d in draws}) != 1:
        return math.nan, math.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # draws undefined in every fold
        means = np.nanmean(np.vstack(draws), axis=0)
    means = means[np.isfinite(means)]
    if len(means) < 2:
        return math.nan, math.nan
    alpha = (1 - CONFIDENCE) / 2 * 100
    low, high = np.percentile(means, [alpha, 100 - alpha])
    return float(low), float(high)


def pooled_row(block: dict, level: str, metrics=None) -> dict:
    """``{level}_{metric}`` (the pooled value), ``_ci_low``, ``_ci_high``, ``_ci_method``, ``_k``
    and ``_n`` (a proportion's counts, else NaN) and ``_draws`` (kept bootstrap draws or None) of a
    pooled block's ``metrics`` (default: POOLED_METRICS[level]); for a block of several repeats
    (deepbc.evaluation.repeats) also the spread between them, ``_repeats_sd``, ``_repeats_min``,
    ``_repeats_max`` and ``_repeats_values``."""
    row = {}
    ci = block.get("ci95") or {}
    methods = block.get("ci_method") or {}
    counts = block.get("counts") or {}
    draws = block.get("bootstrap_values") or {}
    spread = block.get("spread")
    for metric in POOLED_METRICS[level] if metrics is None else metrics:
        col = f"{level}_{metric}"
        value = block.get(metric)
        row[col] = math.nan if value is None else float(value)
        bounds = ci.get(metric) or (math.nan, math.nan)
        row[f"{col}_ci_low"], row[f"{col}_ci_high"] = (float(b) for b in bounds)
        row[f"{col}_ci_method"] = methods.get(metric, "")
        k, n = counts.get(metric) or (math.nan, math.nan)
        row[f"{col}_k"], row[f"{col}_n"] = k, n
        values = draws.get(metric)
        row[f"{col}_draws"] = None if values is None else np.array(values, dtype=np.float64)
        if spread is not None:
            between = spread.get(metric) or {}
            for stat in ("sd", "min", "max"):
                value = between.get(stat)
                row[f"{col}_repeats_{stat}"] = math.nan if value is None else float(value)
            row[f"{col}_repeats_values"] = tuple(between.get("values") or ())
    return row


def pooled_frame(pooled: list[dict], extra_keys=()) -> pd.DataFrame:
    """One row per pooled JSON: meta (task, protocol, arch, run, grouping, test, and ``extra_keys``),
    n_folds, n_patients and n_images (distinct), n_classes, n_boot, test_patients,
    test_images_sha256, where (its file), repeats (their indices) and ``pooled_row`` of both
    levels; n_repeats for the mean of several repeats."""
    rows = []
    for m in pooled:
        meta = m["meta"]
        row = {key: meta[key] for key in ("task", "protocol", "arch", "run", "grouping", *extra_keys)}
        if "repeats" in meta:
            row["n_repeats"] = len(meta["repeats"])
        row.update({"test": test_label(meta.get("test_dataset")), "folds": tuple(meta["folds"]),
                    "repeats": tuple(meta.get("repeats") or [meta.get("repeat", 0)]),
                    "n_folds": len(meta["folds"]), "n_patients": m["n_patients"],
                    "n_images": m.get("n_distinct_images", m["n_images"]), "n_classes": len(m["classes"]),
                    "n_boot": (m.get("bootstrap") or {}).get("n_boot", 0),
                    "test_patients": tuple(m.get("test_patients") or ()),
                    "test_images_sha256": meta.get("test_images_sha256"), "where": m.get("_where")})
        row.update(pooled_row(m["patient_level"]["mean_probability"], "patient"))
        row.update(pooled_row(m["image_level"], "image"))
        rows.append(row)
    return pd.DataFrame(rows)


def with_pooled(folds: pd.DataFrame, frame: pd.DataFrame, keys: list[str],
                on=("task", "protocol", "arch")) -> pd.DataFrame:
    """The per-fold aggregation of ``folds`` (mean, sd) per group of ``keys``, beside the pooled
    figures (``frame``, a ``pooled_frame``) of the same runs, matched on ``on``; a run and
    architecture with per-fold metrics but no pooled JSON, or one pooled over other folds or
    repeats, is refused."""
    on = list(on)
    if frame.empty:
        frame = pd.DataFrame(columns=[*on, "folds", "where"])
    table = _aggregate(folds, list(dict.fromkeys(on + keys)), intervals=False).drop(
        columns=["n_patients", "n_images"])
    merged = table.merge(frame.drop(columns=[c for c in frame.columns if c in table.columns and c not in on]),
                         on=on, how="left", indicator=True)
    lacking = merged[merged["_merge"] == "left_only"]
    if len(lacking):
        shown = ", ".join("/".join(str(r[c]) for c in on) for _, r in lacking.head(5).iterrows())
        raise UserError(f"no pooled metrics for {len(lacking)} run(s) and architecture(s) ({shown})",
                        "--pooled", "pass results/metrics/{run}/{arch}/pooled.json of every run and "
                                    "architecture in --metrics")
    fold_sets = folds.groupby(on)["fold"].agg(lambda s: tuple(sorted(set(s))))
    repeat_sets = folds.groupby(on)["repeat"].agg(lambda s: tuple(sorted(set(s))))
    for _, r in merged.iterrows():
        expected = fold_sets.loc[tuple(r[c] for c in on)]
        if tuple(r["folds"]) != expected:
            raise UserError(f"pooled over folds {list(r['folds'])}, but the metrics given are of folds "
                            f"{list(expected)}", r["where"], recompute(r["where"], "pooled_metrics"))
        expected = repeat_sets.loc[tuple(r[c] for c in on)]
        if tuple(r["repeats"]) != expected:
            raise UserError(f"pooled metrics of repeats {list(r['repeats'])} for {'/'.join(str(r[c]) for c in on)}, "
                            f"but the metrics given are of repeats {list(expected)}", "--pooled and --metrics",
                            "pass the pooled and the per-fold metrics of the same repeats (repeat 0: "
                            "pooled.json and fold{k}.json; repeat r: pooled_r{r}.json and fold{k}_r{r}.json)")
    return merged.drop(columns=["_merge"])


def fold_notes(metrics: list[dict]) -> list[str]:
    """The optional ``meta.notes`` (a text or a list) of per-fold metrics, as footnotes."""
    notes = []
    for m in metrics:
        meta = m["meta"]
        given = meta.get("notes") or []
        for note in [given] if isinstance(given, str) else given:
            where = model_label(model_fold(meta["fold"], meta.get("repeat", 0)))
            notes.append(f"{meta['run']} / {meta['arch']} / {where}: {' '.join(str(note).split())}")
    return list(dict.fromkeys(notes))


def _preprint_figures(preprint: dict, task: str) -> dict:
    """{arch: {metric: figure}} of the preprint's figures for one task."""
    out: dict = {}
    for fig in preprint.get("figures", []):
        if fig["task"] == task:
            out.setdefault(fig["architecture"], {})[fig["metric"]] = fig
    return out


def task_table(metrics, pooled, task: str, preprint: dict | None = None) -> pd.DataFrame:
    """One row per architecture and protocol of ``task``; the preprint's figures beside ours.

    Columns: architecture, protocol, run, test, n_folds, n_patients and n_images (distinct test
    patients and images), n_classes, ``pooled_row``'s columns of both levels, the per-fold
    ``{patient,image}_{metric}_{mean,sd}``, ``preprint_{metric}`` and ``preprint_note``; ``attrs``
    holds the folds' notes. An architecture the preprint reported for this task but that did not
    run here gets a row of its own, labelled ``preprint only (not run here)``.
    """
    metrics = load_metrics(metrics)
    pooled = [p for p in load_pooled(pooled) if p["meta"]["task"] == task]
    preprint = load_preprint() if preprint is None else preprint
    folds = fold_frame(metrics)
    folds = folds[folds["task"] == task]
    if folds.empty:
        tasks = sorted({m["meta"]["task"] for m in metrics})
        raise UserError(f"no metrics of task {task!r} among the files given (tasks: {tasks})",
                        "--metrics", f"pass the metrics JSONs of task {task}")
    table = with_pooled(folds, pooled_frame(pooled), ["arch", "protocol", "run", "grouping", "test"])
    table = table.drop(columns=[c for c in table.columns if c.endswith(IN_MEMORY)]
                       + ["where", "test_patients", "folds", "repeats"]).rename(columns={"arch": "architecture"})
    figures = _preprint_figures(preprint, task)
    for arch in sorted(set(figures) - set(table["architecture"])):
        table.loc[len(table), ["architecture", "protocol", "run", "n_folds"]] = [
            arch, PREPRINT_ONLY, "", None]
    # Patient-wise first, then the leaky protocols, then preprint-only rows.
    order = {**{p: i for i, p in enumerate(PROTOCOLS)}, PREPRINT_ONLY: len(PROTOCOLS)}
    table = table.sort_values(["architecture", "protocol"],
                              key=lambda s: s.map(order) if s.name == "protocol" else s)
    for metric in PREPRINT_METRICS:
        table[f"preprint_{metric}"] = [
            figures.get(a, {}).get(metric, {}).get("value") for a in table["architecture"]]
    table["preprint_note"] = [
        " ".join(dict.fromkeys(f["note"] for f in figures.get(a, {}).values() if f.get("note")))
        for a in table["architecture"]]
    table["protocol"] = [protocol_label(p, g) for p, g in zip(table["protocol"], table["grouping"])]
    table["task"] = task
    table = table.drop(columns="grouping")[["task", *(c for c in table.columns if c not in ("task", "grouping"))]]
    for col in ("n_folds", "n_patients", "n_images", "n_classes"):
        table[col] = table[col].astype("Int64")
    table = table.reset_index(drop=True)
    table.attrs["notes"] = fold_notes([m for m in metrics if m["meta"]["task"] == task])
    table.attrs["split_notes"] = split_notes(folds)
    return table


def _fmt(mean, sd, count: bool, low=math.nan, high=math.nan) -> str:
    if mean is None or pd.isna(mean):
        return "–"
    digits = 1 if count else 3
    text = f"{mean:.{digits}f}"
    text = text if pd.isna(sd) else f"{text} ± {sd:.{digits}f}"
    return text if pd.isna(low) else f"{text} [{low:.{digits}f}, {high:.{digits}f}]"


def _cell(r, level: str, metric: str) -> str:
    """mean ± sd [interval of the mean over folds] of one metric of a per-fold table row."""
    ci = (r[f"{level}_{metric}_ci_low"], r[f"{level}_{metric}_ci_high"]) if (
        f"{level}_{metric}_ci_low" in r.index) else (math.nan, math.nan)
    return _fmt(r[f"{level}_{metric}_mean"], r[f"{level}_{metric}_sd"], metric in COUNT_METRICS, *ci)


def pooled_cell(r, level: str, metric: str) -> str:
    """A pooled figure with its interval: "0.800 [0.376, 0.964] (4/5)" for a Wilson proportion,
    a ZERO_WIDTH mark on a bootstrap interval of zero width, counts as integers. The mean of
    several repeats shows n for k/n (k is no count there) and the spread between the repeats:
    "0.800 [0.376, 0.964] (n=5); sd 0.050 (0.750–0.850)" (REPEATS_NOTE)."""
    col = f"{level}_{metric}"
    value = r.get(col)
    if value is None or pd.isna(value):
        return "–"
    repeated = _n_repeats(r) > 1
    if metric in COUNT_METRICS:
        return f"{value:.1f}{_spread_text(r, col, 1)}" if repeated else f"{int(value)}"
    text = f"{value:.3f}"
    low, high = r.get(f"{col}_ci_low"), r.get(f"{col}_ci_high")
    if low is not None and not pd.isna(low):
        text += f" [{low:.3f}, {high:.3f}]"
        method = r.get(f"{col}_ci_method")
        if method == "bootstrap" and low == high:
            text += ZERO_WIDTH
        if method == "wilson" and not pd.isna(r.get(f"{col}_n")):
            text += f" (n={int(r[f'{col}_n'])})" if repeated else f" ({int(r[f'{col}_k'])}/{int(r[f'{col}_n'])})"
    return text + (_spread_text(r, col, 3) if repeated else "")


def _n_repeats(r) -> int:
    value = r.get("n_repeats")
    return 1 if value is None or pd.isna(value) else int(value)


def _spread_text(r, col: str, digits: int) -> str:
    """"; sd s (min–max)": the spread of a figure between repeats (nothing when it is undefined)."""
    sd, low, high = (r.get(f"{col}_repeats_{s}") for s in ("sd", "min", "max"))
    if sd is None or pd.isna(sd):
        return ""
    return f"; sd {sd:.{digits}f} ({low:.{digits}f}–{high:.{digits}f})"


def folds_cell(r) -> str:
    """The folds of a row, "5", or "5 × 3 trainings" for the mean of several training repeats
    (not splits.repeats, the repeated holdouts, which are the folds here)."""
    n = "" if pd.isna(r["n_folds"]) else str(r["n_folds"])
    return f"{n} × {_n_repeats(r)} trainings" if _n_repeats(r) > 1 else n


def spread_columns(table: pd.DataFrame, columns) -> list[str]:
    """n_repeats and the spread columns of ``columns`` ({level}_{metric}) a table has (none for one repeat)."""
    spread = [f"{c}_repeats_{s}" for c in columns for s in ("sd", "min", "max")]
    return [c for c in ["n_repeats", *spread] if c in table.columns]


def repeats_note(table: pd.DataFrame) -> list[str]:
    """REPEATS_NOTE for a table with the mean of several repeats, else nothing."""
    if "n_repeats" not in table.columns or not (table["n_repeats"] > 1).any():
        return []
    return [REPEATS_NOTE.format(n=", ".join(str(int(n)) for n in sorted(set(table["n_repeats"].dropna()))))]


def has_zero_width(table: pd.DataFrame, columns) -> bool:
    """Whether a cell of ``columns`` ({level}_{metric}) has a zero-width bootstrap interval."""
    return any(((table[f"{c}_ci_method"] == "bootstrap") & (table[f"{c}_ci_low"] == table[f"{c}_ci_high"])).any()
               for c in columns if f"{c}_ci_method" in table.columns)


def shown_metrics(n_classes) -> tuple[str, ...]:
    """The headline metrics a table shows: without sensitivity for more than two classes (it is
    the balanced accuracy there)."""
    return TABLE_METRICS if n_classes == 2 else tuple(m for m in TABLE_METRICS if m != "sensitivity")


def _metric_label(metric: str, n_classes) -> str:
    return "macro spec." if metric == "specificity" and n_classes != 2 else LABELS[metric]


def _n_boot(table: pd.DataFrame):
    return table["n_boot"].dropna().max() if "n_boot" in table.columns else 0


def _display(table: pd.DataFrame, preprint: dict) -> tuple[list[str], list[list[str]], list[str]]:
    """Header, formatted cells and footnotes shared by the Markdown and LaTeX writers."""
    n_classes = table["n_classes"].dropna().max()
    shown = shown_metrics(n_classes)
    header = ["architecture", "protocol", "test", "folds", "patients", "images"]
    header += [f"{lv} {_metric_label(m, n_classes)}" for lv in LEVELS for m in shown]
    header += [LABELS[RECOGNITION]]
    header += [f"preprint {LABELS[m]}" for m in PREPRINT_METRICS]
    notes: list[str] = []
    rows = []
    for _, r in table.iterrows():
        cells = [r["architecture"], r["protocol"], "" if pd.isna(r["test"]) else r["test"], folds_cell(r)]
        cells += ["" if pd.isna(r[c]) else str(r[c]) for c in ("n_patients", "n_images")]
        cells += [pooled_cell(r, lv, m) for lv in LEVELS for m in shown]
        cells.append(pooled_cell(r, "image", RECOGNITION))
        marker = ""
        if r["preprint_note"]:
            if r["preprint_note"] not in notes:
                notes.append(r["preprint_note"])
            marker = f" [{notes.index(r['preprint_note']) + 1}]"
        for m in PREPRINT_METRICS:
            v = r[f"preprint_{m}"]
            cells.append("" if v is None or pd.isna(v) else f"{v:.3f}{marker}")
        rows.append(cells)
    ranges = preprint.get("ranges", [])
    general = [
        POOLED_NOTE,
        intervals_note(_n_boot(table)),
        "Patient level: a patient's probabilities are the mean of its images'. Two classes: "
        "sensitivity and specificity of the second (positive) class, FP = first class predicted "
        "as second, FN = the reverse.",
        RECOGNITION_NOTE,
        "Preprint: " + " ".join(preprint["source"]["protocol_note"].split()),
    ]
    if n_classes != 2:
        general.insert(3, MULTICLASS_NOTE.replace("{task}", str(table["task"].iloc[0])))
    if has_zero_width(table, [f"{lv}_{m}" for lv in LEVELS for m in shown] + [f"image_{RECOGNITION}"]):
        general.insert(2, ZERO_WIDTH_NOTE)
    if (table["protocol"] == IMAGE_GROUPED).any():
        general.insert(0, IMAGE_GROUPED_NOTE)
    if (table["protocol"] == PROTOCOL_LABELS["augmented_image"]).any():
        general.insert(0, COPIES_NOTE)
    if table["test"].fillna("").str.startswith("external").any():
        general.insert(0, EXTERNAL_NOTE)
    after = general.index(intervals_note(_n_boot(table))) + 1
    general[after:after] = repeats_note(table)
    if ranges:
        counts = " and ".join(f"{r['metric'].upper()} {r['min']} to {r['max']}" for r in ranges)
        range_notes = " ".join(dict.fromkeys(" ".join(r["note"].split()) for r in ranges))
        general.append(f"Preprint, all tasks together: {counts} images. {range_notes}")
    general += [f"Note: {n}" for n in table.attrs.get("notes", [])]
    footnotes = [f"[{i + 1}] {' '.join(n.split())}" for i, n in enumerate(notes)] + general
    return header, rows, footnotes


def to_markdown(header: list[str], rows: list[list[str]], footnotes: list[str], title: str) -> str:
    lines = [f"# {title}", "", "| " + " | ".join(header) + " |",
             "| " + " | ".join("---" for _ in header) + " |"]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in rows]
    if footnotes:
        lines += [""] + [f"- {f}" for f in footnotes]
    return "\n".join(lines) + "\n"


def _tex_escape(text: str) -> str:
    # Backslash first (the others add backslashes), braces before the replacements that write them.
    for a, b in (("\\", "\x00"), ("{", r"\{"), ("}", r"\}"), ("\x00", r"\textbackslash{}"), ("&", r"\&"),
                 ("%", r"\%"), ("_", r"\_"), ("#", r"\#"), ("±", r"$\pm$"), ("–", "--"), ("×", r"$\times$"),
                 (ZERO_WIDTH, r"$\ddagger$")):
        text = text.replace(a, b)
    return text


def to_latex(header: list[str], rows: list[list[str]], footnotes: list[str], caption: str) -> str:
    """A booktabs table (needs \\usepackage{booktabs}) with the footnotes under it."""
    esc = _tex_escape
    lines = [r"\begin{table}", r"\centering", rf"\caption{{{esc(caption)}}}",
             r"\begin{tabular}{" + "l" * 2 + "r" * (len(header) - 2) + "}", r"\toprule",
             " & ".join(esc(h) for h in header) + r" \\", r"\midrule"]
    lines += [" & ".join(esc(c) for c in row) + r" \\" for row in rows]
    lines += [r"\bottomrule", r"\end{tabular}"]
    lines += [r"\par\smallskip\footnotesize " + esc(f) for f in footnotes]
    lines += [r"\end{table}"]
    return "\n".join(lines) + "\n"


def write_task_table(table: pd.DataFrame, out_csv=None, out_md=None, out_tex=None,
                     preprint: dict | None = None) -> None:
    """Write the task table as CSV (numbers), Markdown and LaTeX (formatted, with footnotes)."""
    preprint = load_preprint() if preprint is None else preprint
    task = table["task"].iloc[0]
    header, rows, footnotes = _display(table, preprint)
    write_formats(table, header, rows, footnotes, f"Results: {task}", out_csv, out_md, out_tex)


def write_formats(table: pd.DataFrame, header, rows, footnotes, title, out_csv=None, out_md=None,
                  out_tex=None) -> None:
    """A table's numbers as CSV, and its formatted rows with footnotes (and the split notes) as
    Markdown and LaTeX."""
    footnotes = _with_split_notes(table, footnotes)
    if out_csv:
        atomic.write_csv(out_csv, table)
    if out_md:
        atomic.write_text(out_md, to_markdown(header, rows, footnotes, title))
    if out_tex:
        atomic.write_text(out_tex, to_latex(header, rows, footnotes, title))


# --------------------------------------------------------------------------------------------
# Split notes: which split produced a table's figures (deepbc.data.splits.audit, copied into the
# metrics' meta.split), and the folds whose validation set lacked a class. Every table builder
# keeps them in ``table.attrs["split_notes"]``; every writer prints them as footnotes.
# --------------------------------------------------------------------------------------------


def split_notes(folds: pd.DataFrame) -> list[str]:
    """Footnotes from the fold frame's ``split`` meta (absent from metrics written before it)."""
    if "split" not in folds.columns:
        return []
    by_note: dict[str, list[str]] = {}
    lacking = []
    for run, g in folds.groupby("run", sort=True):
        metas = [(int(f), m) for f, m in zip(g["fold"], g["split"]) if isinstance(m, dict)]
        if not metas:
            continue
        by_note.setdefault(metas[0][1]["note"], []).append(run)
        absent = sorted({(f, m["unit"], tuple(m["validation_absent_classes"])) for f, m in metas
                         if m["validation_absent_classes"]})
        if absent:
            lacking.append(f"{run}: " + ", ".join(f"{unit} {f} ({', '.join(c)})" for f, unit, c in absent))
    notes = [f"Split of {', '.join(runs)}: {note}" for note, runs in by_note.items()]
    if lacking:
        notes.append("Validation sets without a class: " + "; ".join(lacking) + ". Their checkpoint choice, "
                     "early stopping and temperature scaling used the validation loss over the classes "
                     "present.")
    return notes


def _with_split_notes(table: pd.DataFrame, footnotes: list[str]) -> list[str]:
    return list(footnotes) + list(table.attrs.get("split_notes", []))


_MODEL_PATH = re.compile(rf"(?P<run>[^/]+)/(?P<arch>[^/]+)/fold(?P<fold>{MODEL_FOLD})/settings\.json$")
# Validation metrics a choice can rest on, as (column, lower is better).
VALIDATION_METRICS = {"val_loss": True, "val_accuracy": False}
VALIDATION_LABELS = {"val_loss": "val. loss", "val_accuracy": "val. acc."}


def validation_figures(settings_paths) -> pd.DataFrame:
    """Validation figures of each kept checkpoint: one row per ``{run}/{arch}/fold{k}/settings.json``
    (or ``fold{k}_r{r}``, repeat r of fold k).

    Columns run, task, protocol, arch, fold, repeat, kept (the model's keep_best_by), kept_step, val_loss
    and val_accuracy: the training.csv row (beside settings.json) of the kept step; for ``last``,
    the last evaluated row. NaN when no validation ran (an empty validation split).
    """
    rows = []
    for path in settings_paths:
        path = Path(path)
        match = _MODEL_PATH.search(path.as_posix())
        if not match:
            raise UserError("model settings path does not end in {run}/{arch}/fold{k}/settings.json "
                            "(or fold{k}_r{r}/ for a repeat)",
                            str(path), "pass files from results/models/{run}/{arch}/fold{k}/")
        curve_path = path.with_name("training.csv")
        try:
            settings = json.loads(path.read_text(encoding="utf-8"))
            curve = pd.read_csv(curve_path)
        except FileNotFoundError as err:
            raise UserError(f"model file not found ({Path(err.filename).name})", str(err.filename),
                            "run the train rule for this run, architecture and fold") from None
        except json.JSONDecodeError as err:
            raise UserError(f"settings.json is not valid JSON ({err})", str(path), retrain(path.parent)) from None
        missing = [c for c in ("step", "val_loss", "val_accuracy") if c not in curve.columns]
        if missing or "kept" not in settings or "best_step" not in settings:
            raise UserError(f"training.csv lacks {missing} or settings.json lacks kept/best_step",
                            str(path.parent), retrain(path.parent))
        evaluated = curve.dropna(subset=["val_loss"])
        kept = settings["kept"]
        if kept == "last":
            row = evaluated.iloc[-1] if len(evaluated) else None
        else:
            at_step = evaluated[evaluated["step"] == settings["best_step"]]
            if evaluated.empty:
                row = None
            elif at_step.empty:
                raise UserError(f"the kept step {settings['best_step']} has no validation row in "
                                "training.csv", str(curve_path), retrain(path.parent))
            else:
                row = at_step.iloc[0]
        task, protocol = parse_run(match["run"])
        fold, repeat = parse_model_fold(match["fold"])
        rows.append({"run": match["run"], "task": task, "protocol": protocol, "arch": match["arch"],
                     "fold": fold, "repeat": repeat, "kept": kept,
                     "kept_step": int(row["step"]) if row is not None else None,
                     "val_loss": math.nan if row is None else float(row["val_loss"]),
                     "val_accuracy": math.nan if row is None else float(row["val_accuracy"])})
    return pd.DataFrame(rows, columns=["run", "task", "protocol", "arch", "fold", "repeat", "kept", "kept_step",
                                       "val_loss", "val_accuracy"])


def _selection_metric(kept: set, task: str) -> str:
    """The task's models' own keep_best_by when they share one; else the validation loss."""
    if len(kept) == 1 and next(iter(kept)) in VALIDATION_METRICS:
        return next(iter(kept))
    LOG.info("task %s: models kept by %s; the architecture is chosen on the validation loss of the "
             "kept checkpoints", task, sorted(kept))
    return "val_loss"


def summary_table(metrics, pooled, models, preprint: dict | None = None) -> pd.DataFrame:
    """One row per task: the architecture chosen on validation data, and its pooled test figures.

    ``pooled``: the pooled JSONs of the patient-protocol runs and architectures in ``metrics``;
    ``models``: the settings.json of every patient-protocol (run, arch, fold, repeat) in ``metrics``.
    The choice uses only validation data (see ``validation_figures``): the models' keep_best_by
    metric (lower val_loss or higher val_accuracy; val_loss when the models of a task differ or keep
    the last step), mean over folds and their repeats (every fold has as many: the mean over
    repeats of the mean over folds); ties go to the other validation metric, then to the
    architecture name.
    The test metrics never enter the choice, so the reported test figures are not inflated by it;
    but fold k's validation patients are test patients of other folds (SELECTION_NOTE).
    The preprint's accuracy for the task is shown for context.
    """
    metrics = load_metrics(metrics)
    preprint = load_preprint() if preprint is None else preprint
    folds = fold_frame(metrics)
    patient = folds[folds["protocol"] == "patient"]
    for task in sorted(set(folds["task"]) - set(patient["task"])):
        LOG.warning("task %s ran only leaky protocols: left out of the summary", task)
    if patient.empty:
        raise UserError("no patient-wise metrics among the files given", "--metrics",
                        "pass the metrics JSONs of the patient-wise runs")
    keys = ["task", "arch", "fold", "repeat"]
    val = validation_figures(models)
    val = patient[keys].merge(val[val["protocol"] == "patient"], on=keys, how="left", indicator=True)
    lacking = val[val["_merge"] == "left_only"]
    if len(lacking):
        shown = ", ".join(f"{r.task}/{r.arch}/fold{model_fold(r.fold, r.repeat)}" for r in lacking.head(5).itertuples())
        raise UserError(f"no model settings for {len(lacking)} patient-wise metrics file(s) ({shown})",
                        "--models", "pass results/models/{run}/{arch}/fold{k}/settings.json of "
                                    "every run, architecture and fold in --metrics")
    grouped = val.groupby(["task", "arch"], sort=True)
    choice = grouped[["val_loss", "val_accuracy"]].mean()
    choice_sd = grouped[["val_loss", "val_accuracy"]].std(ddof=1)
    kept = grouped["kept"].agg(set)
    n_repeats = val["repeat"].nunique()

    pooled = [p for p in load_pooled(pooled) if p["meta"]["protocol"] == "patient"]
    agg = with_pooled(patient, pooled_frame(pooled), ["task", "protocol", "arch", "grouping", "test"]).set_index(
        ["task", "arch"])
    rows = []
    for task, task_rows in choice.groupby(level="task", sort=True):
        metric = _selection_metric(set().union(*kept.loc[task]), task)
        other = next(m for m in VALIDATION_METRICS if m != metric)
        # Lower is better after the sign flip; a missing figure never wins.
        order = task_rows.reset_index().assign(
            _primary=lambda d: (d[metric] if VALIDATION_METRICS[metric] else -d[metric]).fillna(math.inf),
            _secondary=lambda d: (d[other] if VALIDATION_METRICS[other] else -d[other]).fillna(math.inf),
        ).sort_values(["_primary", "_secondary", "arch"])
        arch = order.iloc[0]["arch"]
        n_archs = len(order)
        word = "lowest" if VALIDATION_METRICS[metric] else "highest"
        name = "loss" if metric == "val_loss" else "accuracy"
        over = "folds" if n_repeats == 1 else f"folds and their {n_repeats} trainings"
        chosen_by = (f"{word} validation {name} of the kept checkpoints (mean over {over})"
                     if n_archs > 1 else "the only architecture run")
        row = {"task": task, "split": protocol_label("patient", agg.loc[(task, arch), "grouping"]),
               "test": agg.loc[(task, arch), "test"],
               "chosen_architecture": arch, "chosen_by": chosen_by,
               "architectures_compared": n_archs, "validation_metric": metric,
               "validation_mean": choice.loc[(task, arch), metric],
               "validation_sd": choice_sd.loc[(task, arch), metric]}
        row.update(agg.loc[(task, arch)].to_dict())
        rows.append(row)
    best = pd.DataFrame(rows)
    keep = ["task", "split", "test", "chosen_architecture", "chosen_by", "architectures_compared",
            "validation_metric", "validation_mean", "validation_sd", "n_folds", "n_patients", "n_images",
            "n_classes", "n_boot"]
    keep += [f"patient_{m}{s}" for m in TABLE_METRICS
             for s in ("", "_ci_low", "_ci_high", "_ci_method", "_k", "_n", "_mean", "_sd")]
    keep += spread_columns(best, [f"patient_{m}" for m in TABLE_METRICS])
    best = best[keep].astype({"n_folds": "int64", "n_patients": "int64", "n_images": "int64",
                              "n_classes": "int64"})
    acc = {f["task"]: f for f in preprint.get("figures", []) if f["metric"] == "accuracy"}
    best["preprint_accuracy"] = [acc.get(t, {}).get("value") for t in best["task"]]
    best["preprint_architecture"] = [acc.get(t, {}).get("architecture") for t in best["task"]]
    best.attrs["split_notes"] = split_notes(patient)
    return best


def write_summary(table: pd.DataFrame, out_csv=None, out_md=None) -> None:
    header = ["task", "split", "test", "architecture", "chosen by", "validation (chosen on)", "folds",
              "patients"]
    header += [f"patient {LABELS[m]}" for m in TABLE_METRICS]
    header += ["preprint acc. (image-level, leaky split)"]
    rows = []
    for _, r in table.iterrows():
        validation = (f"{VALIDATION_LABELS[r['validation_metric']]} "
                      f"{_fmt(r['validation_mean'], r['validation_sd'], False)}")
        cells = [r["task"], r["split"], r["test"], r["chosen_architecture"], r["chosen_by"], validation,
                 folds_cell(r), str(r["n_patients"])]
        shown = shown_metrics(r["n_classes"])
        cells += [pooled_cell(r, "patient", m) if m in shown else "–" for m in TABLE_METRICS]
        v = r["preprint_accuracy"]
        cells.append("" if v is None or pd.isna(v) else f"{v:.3f} ({r['preprint_architecture']})")
        rows.append(cells)
    footnotes = [
        "Chosen on validation data, never on the test folds: per architecture, the validation "
        "metric of each fold's kept checkpoint (the models' keep_best_by: lowest validation loss "
        "or highest validation accuracy; the validation loss when they differ or keep the last "
        "step), mean over folds. The test figures shown played no part in the choice; "
        "results/tables/{task}.md shows every architecture's test figures. " + SELECTION_NOTE,
        "Patient level: a patient's probabilities are the mean of its images'. " + POOLED_NOTE,
        intervals_note(_n_boot(table)),
        "The preprint's figures are image-level accuracies under a split of images with leakage (its "
        "images augmented, then split at random: our reading, docs/methods.md), not comparable with "
        "patient-wise figures; see results/tables/leakage.md.",
    ]
    if (table["n_classes"] != 2).any():
        footnotes.insert(2, "More than two classes: sens. is left out (the macro sensitivity is the "
                            "balanced accuracy), spec. is the macro specificity; per-class figures: "
                            "results/tables/{task}_per_class.md.")
    if has_zero_width(table, [f"patient_{m}" for m in TABLE_METRICS]):
        footnotes.insert(-1, ZERO_WIDTH_NOTE)
    if (table["split"] == IMAGE_GROUPED).any():
        footnotes.insert(1, IMAGE_GROUPED_NOTE)
    if table["test"].str.startswith("external").any():
        footnotes.insert(1, EXTERNAL_NOTE)
    if repeats_note(table):
        footnotes[0] += (" With several trainings per fold (train.repeats), the validation figure is "
                         "the mean (± sd) over every fold's trainings: the choice rests on the mean "
                         "over the repeats, not on one training.")
        after = footnotes.index(intervals_note(_n_boot(table))) + 1
        footnotes[after:after] = repeats_note(table)
    footnotes = _with_split_notes(table, footnotes)
    if out_csv:
        atomic.write_csv(out_csv, table)
    if out_md:
        atomic.write_text(out_md, to_markdown(
            header, rows, footnotes,
            "Summary: per task, the architecture chosen on validation data, and its test figures"))


# Each comparison of the leakage table: (protocol, the protocol it is compared with). The first two
# measure each leaky protocol's inflation; the third how much more the preprint's leak inflates than
# the image-level split of the originals, whose leak is smaller by design (no copy of a test image
# trained on): measured, not assumed, as the two runs' models also differ.
COMPARISONS = (("image", "patient"), ("augmented_image", "patient"), ("augmented_image", "image"))
LEAKAGE_COLUMNS = ["task", "architecture", "level", "metric", "protocol", "compared_with", "value", "reference",
                   "difference", "difference_ci_low", "difference_ci_high", "ratio", "n_patients",
                   "n_patients_reference", "n_patients_shared", "n_images", "n_images_reference",
                   "same_test_images", "n_folds", "n_folds_reference"]
PAIRING_NOTE = (
    "[low, high]: 95 % paired bootstrap interval of the difference: draw b of the pooled "
    "bootstrap weighs each patient alike (Poisson(1), seeded by the patient's id) under every "
    "protocol, and the interval spans the 2.5th to 97.5th percentiles of the draws' "
    "differences. Paired: the test patients. When every fold runs, every protocol tests every "
    "patient of the task (patient-wise and image-level each image once, augment-then-split each "
    "of an image's 8 copies once), so each draw resamples the same patients under both sides. Not "
    "paired: the images within a patient between augment-then-split and the others (it tests a "
    "patient's copies, they its originals; a patient weighs the same, its figure is over its own "
    "test images), and the models: each protocol's are trained on other data and held fixed, so "
    "the interval says how much the patients tested move the difference, not how much retraining "
    "would. With some folds only, the protocols test different images (same test images: no), and "
    "partly other patients: the shared patients are paired, the others resampled on their own "
    "side, and the difference also reflects which images each protocol tested.")


def leakage_table(pooled) -> pd.DataFrame:
    """How much each leaky protocol inflates each metric, per task and architecture (COMPARISONS).

    Only tasks and architectures that ran both protocols of a comparison, and only tasks whose
    groups are patients: without a patient mapping every protocol can split a patient's images, so
    differences are no measure of leakage (such tasks are logged and listed in ``attrs["left_out"]``).
    One row per comparison, level and metric (no sensitivity for more than two classes: it is the
    balanced accuracy there): the pooled figure under ``protocol`` (``value``) and under
    ``compared_with`` (``reference``; both as the tables label them), the difference with its
    paired bootstrap interval (PAIRING_NOTE), the ratio (empty when the reference is 0), the test
    patients and images of each and the patients shared, and whether both tested the same images.
    With repeats: the means over the repeats, and the spread between the repeats of each repeat's
    difference (``difference_repeats_{sd,min,max}``, repeat r of one protocol against repeat r of
    the other, both independent trainings).
    """
    frame = pooled_frame(load_pooled(pooled))
    left_out = sorted(set(frame.loc[frame["grouping"] == "image", "task"]))
    for task in left_out:
        LOG.warning("task %s left out of the leakage table: its dataset has no patient mapping, so "
                    "every protocol can put one patient's images on both sides of the split", task)
    frame = frame[~frame["task"].isin(left_out)]
    rows = []
    for (task, arch), group in frame.groupby(["task", "arch"], sort=True):
        by_protocol = {r["protocol"]: r for _, r in group.iterrows()}
        for protocol, reference in COMPARISONS:
            if not {protocol, reference} <= set(by_protocol):
                continue
            ours, theirs = by_protocol[protocol], by_protocol[reference]
            shared = len(set(ours["test_patients"]) & set(theirs["test_patients"]))
            for level in LEVELS:
                for metric in LEAKAGE_METRICS:
                    if metric not in shown_metrics(theirs["n_classes"]):
                        continue
                    col = f"{level}_{metric}"
                    a, b = ours[col], theirs[col]
                    low, high = _paired_interval(ours[f"{col}_draws"], theirs[f"{col}_draws"])
                    rows.append({
                        **_difference_spread(ours, theirs, col),
                        "task": task, "architecture": arch, "level": level, "metric": metric,
                        "protocol": PROTOCOL_LABELS[protocol], "compared_with": PROTOCOL_LABELS[reference],
                        "value": a, "reference": b, "difference": a - b,
                        "difference_ci_low": low, "difference_ci_high": high,
                        "ratio": a / b if b and not pd.isna(b) else math.nan,
                        "n_patients": int(ours["n_patients"]), "n_patients_reference": int(theirs["n_patients"]),
                        "n_patients_shared": shared, "n_images": int(ours["n_images"]),
                        "n_images_reference": int(theirs["n_images"]),
                        "same_test_images": ours["test_images_sha256"] == theirs["test_images_sha256"],
                        "n_folds": int(ours["n_folds"]), "n_folds_reference": int(theirs["n_folds"]),
                    })
    if not rows:
        LOG.warning("no task with a patient mapping ran patient-wise and under a leaky protocol: the leakage "
                    "table is empty")
    spread = [c for c in ("n_repeats", *(f"difference_repeats_{s}" for s in ("sd", "min", "max")))
              if any(c in r for r in rows)]
    table = pd.DataFrame(rows, columns=LEAKAGE_COLUMNS + spread)
    table.attrs["left_out"] = left_out
    return table


def _difference_spread(leaky, honest, col: str) -> dict:
    """n_repeats and the sd, min and max over the repeats of the difference of ``col`` (nothing for
    one repeat, or when a repeat leaves the figure undefined)."""
    a, b = (r.get(f"{col}_repeats_values") or () for r in (leaky, honest))
    if len(a) < 2 or len(a) != len(b) or any(v is None for v in (*a, *b)):
        return {}
    d = np.array(a, dtype=np.float64) - np.array(b, dtype=np.float64)
    return {"n_repeats": len(d), "difference_repeats_sd": float(np.std(d, ddof=1)),
            "difference_repeats_min": float(d.min()), "difference_repeats_max": float(d.max())}


def _paired_interval(leaky, honest) -> tuple[float, float]:
    """Percentile interval of draw-by-draw differences (NaN without draws, or draws of another
    number: made with other bootstrap settings, so not paired)."""
    if leaky is None or honest is None or len(leaky) != len(honest):
        return math.nan, math.nan
    bounds, _ = percentile(leaky - honest, CONFIDENCE)
    return (math.nan, math.nan) if bounds is None else tuple(bounds)


def write_leakage(table: pd.DataFrame, out_csv=None, out_md=None) -> None:
    """The leakage table as CSV (one row per comparison, level and metric) and Markdown (one row per
    level and metric, every protocol's figure and each comparison's difference side by side)."""
    labels = [PROTOCOL_LABELS[p] for p in PROTOCOLS]
    compared = [(PROTOCOL_LABELS[p], PROTOCOL_LABELS[r]) for p, r in COMPARISONS]
    short = {label: label.split(" (")[0] for label in labels}
    header = ["task", "architecture", "level", "metric", *labels,
              *(f"{short[p]} − {short[r]} [95 % paired interval]" for p, r in compared),
              "test patients (" + " / ".join(short[label] for label in labels) + "; shared, per comparison)",
              "test images (" + " / ".join(short[label] for label in labels) + ")"]

    def num(v, digits=3):
        return "–" if pd.isna(v) else f"{v:.{digits}f}"

    def difference(r) -> str:
        text = f"{r['difference']:+.3f}" if not pd.isna(r["difference"]) else "–"
        if not pd.isna(r["difference_ci_low"]):
            text += f" [{r['difference_ci_low']:+.3f}, {r['difference_ci_high']:+.3f}]"
            text += ZERO_WIDTH if r["difference_ci_low"] == r["difference_ci_high"] else ""
        return text + _spread_text(r, "difference", 3)

    rows, different = [], []
    for (task, arch, level, metric), g in table.groupby(["task", "architecture", "level", "metric"], sort=False):
        value, patients, images, shared = {}, {}, {}, {}
        for r in g.to_dict("records"):
            for label, key in ((r["protocol"], ""), (r["compared_with"], "_reference")):
                value[label] = r["value" if not key else "reference"]
                patients[label], images[label] = r[f"n_patients{key}"], r[f"n_images{key}"]
            shared[(r["protocol"], r["compared_with"])] = r["n_patients_shared"]
            if not r["same_test_images"] and r["compared_with"] == PROTOCOL_LABELS["patient"] and \
                    r["protocol"] == PROTOCOL_LABELS["image"]:
                different.append(f"{task} / {arch}")
        by_comparison = {(r["protocol"], r["compared_with"]): difference(r) for r in g.to_dict("records")}
        rows.append([task, arch, level, metric, *(num(value.get(label)) for label in labels),
                     *(by_comparison.get(c, "–") for c in compared),
                     " / ".join(str(patients.get(label, "–")) for label in labels) + "; "
                     + ", ".join(str(shared.get(c, "–")) for c in compared),
                     " / ".join(str(images.get(label, "–")) for label in labels)])
    footnotes = [
        "Pooled figures over the test folds of each protocol. Patient-wise: no patient in two splits. "
        f"{labels[1]}: the original images split at random, augmented on the fly in training; patients sit on "
        f"both sides, but no copy of a test image is trained on. {labels[2]}: each image's 8 rotations and "
        "mirror images made separate images first, then split at random, so other copies of a test image "
        "are in training, as in the preprint (our reading of it, docs/methods.md); its images are the "
        "copies (8 per original image). A difference is the first protocol's figure minus the second's; "
        "the last compares the two leaks: how much more (if positive) the preprint's leak inflates a "
        "figure than the image-level split of the originals does. More than two classes: no "
        "sensitivity row (the macro sensitivity is the balanced accuracy).",
        PAIRING_NOTE,
        *repeats_note(table),
    ]
    if different:
        footnotes.append("Image-level and patient-wise tested different images (some folds only) for: "
                         f"{', '.join(dict.fromkeys(different))}.")
    if (table["difference_ci_low"] == table["difference_ci_high"]).any():
        footnotes.append(ZERO_WIDTH_NOTE)
    left_out = table.attrs.get("left_out", [])
    if left_out:
        footnotes.append(f"Left out: {', '.join(left_out)}, whose dataset has no patient mapping "
                         f"({IMAGE_GROUPED}): every protocol can put one patient's images on both "
                         "sides, so their difference measures no leakage.")
    if table.empty:
        footnotes.insert(0, "No task with a patient mapping ran patient-wise and under a leaky protocol (set "
                            "protocols: [patient, image, augmented_image] for a task).")
    footnotes = _with_split_notes(table, footnotes)
    if out_csv:
        atomic.write_csv(out_csv, table)
    if out_md:
        atomic.write_text(out_md, to_markdown(
            header, rows, footnotes, f"Leakage: {labels[2]} and {labels[1]} vs {labels[0]}"))
