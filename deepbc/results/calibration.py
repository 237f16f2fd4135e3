"""Calibration: the calibration table and the reliability diagrams.

The figures themselves (expected calibration error over ECE_BINS equal-width bins of the
confidence, the highest class probability; multiclass Brier score) are computed per fold in
deepbc.evaluation.metrics, at image level and at patient level (a patient's probabilities are the mean of its
images'). ``calibration_table`` averages them over folds like the task tables, with the same 95 %
interval of the mean over folds, and the same after temperature scaling (fitted per model on its
validation images; deepbc.evaluation.metrics.temperature_scaling). ``plot_reliability`` draws, per task, the
accuracy against the mean confidence in each bin, pooled over the test folds, one line per
architecture and protocol.
"""

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from deepbc.data.runs import PROTOCOLS
from deepbc.data.splits import with_split_label
from deepbc.jobs import atomic
from deepbc.results.figures import PROTOCOL_STYLE, _external, _level_title, load_task_predictions
from deepbc.evaluation.metrics import (CALIBRATION_METRICS, ECE_BINS, TEMPERATURE_CAVEAT, confidence_bin, grouping_of,
                                       prob_column)
from deepbc.results.tables import (EXTERNAL_NOTE, INTERVAL_NOTE, LABELS, _aggregate, _cell, _fmt, fold_frame,
                           folds_cell, load_metrics, protocol_label, split_notes, write_formats)

# (level, metric) columns of the table, in display order.
COLUMNS = tuple((lv, m) for lv in ("image", "patient") for m in CALIBRATION_METRICS)
STATS = ("mean", "sd", "ci_low", "ci_high")
TEMPERATURE_NOTE = (
    "Scaled: after temperature scaling (Guo et al. 2017), one temperature T per model fitted on "
    "its fold's validation images only (minimum negative log-likelihood; never on test), test "
    "probabilities softmax(log p / T). T > 1 softens over-confident probabilities. The image "
    "predictions, and so image accuracy, do not change; a patient's mean probability can. " + TEMPERATURE_CAVEAT)
CALIBRATION_NOTE = (
    f"ECE: expected calibration error, {ECE_BINS} equal-width bins of the confidence (the highest "
    "class probability); the sum over bins of the bin's share of units times |accuracy - mean "
    "confidence|; 0 is perfectly calibrated. Brier: mean over units of the sum over classes of "
    "(probability - 1 for the true class, else 0)^2, 0 to 2 (for two classes twice the "
    "one-probability Brier score); lower is better. Patient level: a patient's probabilities are "
    "the mean of its images'. Mean ± sample sd over test folds.")
REPEATS_NOTE = (
    "Several trainings per fold (train.repeats, with different seeds): mean ± sample sd and the "
    "interval are over every model, the folds' trainings together (a fold's trainings are "
    "resampled alike in each bootstrap draw), so the sd holds the training variance as well as "
    "the folds'.")


def calibration_table(metrics) -> pd.DataFrame:
    """One row per task, protocol and architecture: ECE and Brier at image and patient level.

    Columns: task, test (internal or external, as in the task tables), architecture, protocol
    (labelled as in the task tables), n_folds, n_patients,
    n_images, ``{level}_{ece,brier}_{mean,sd,ci_low,ci_high}``, the same after temperature
    scaling (prefix ``scaled_``) and the fitted temperature's mean and sd over folds
    (``temperature_{mean,sd}``; NaN for a fold without validation images). With repeats
    (train.repeats), n_repeats, and every model counts: the folds' repeats together.
    """
    metrics = load_metrics(metrics)
    keys = ["task", "test", "arch", "protocol", "grouping"]
    folds = fold_frame(metrics)
    table = _aggregate(folds, keys)
    if folds["repeat"].max() > 0:
        table = table.merge(folds.groupby(keys)["repeat"].nunique().rename("n_repeats").reset_index(), on=keys)
    # The scaled figures go through the same aggregation, as blocks of look-alike metrics.
    scaled = []
    for m in metrics:
        ts = m.get("temperature_scaling") or {}
        scaled.append({**m, "image_level": ts.get("image_level", {}),
                       "patient_level": ts.get("patient_level", {"mean_probability": {}})})
    scaled = _aggregate(fold_frame(scaled), keys)
    table = table.merge(scaled[keys + [f"{lv}_{m}_{s}" for lv, m in COLUMNS for s in STATS]]
                        .rename(columns=lambda c: c if c in keys else f"scaled_{c}"), on=keys)
    folds["temperature"] = [(m.get("temperature_scaling") or {}).get("temperature") for m in metrics]
    folds["temperature"] = folds["temperature"].astype("float64")
    temperature = folds.groupby(keys)["temperature"].agg(["mean", "std"]).reset_index()
    table = table.merge(temperature.rename(columns={"mean": "temperature_mean",
                                                    "std": "temperature_sd"}), on=keys)
    order = {p: i for i, p in enumerate(PROTOCOLS)}
    table = table.sort_values(["task", "arch", "protocol"],
                              key=lambda s: s.map(order) if s.name == "protocol" else s)
    table["protocol"] = [protocol_label(p, g) for p, g in zip(table["protocol"], table["grouping"])]
    table = table.rename(columns={"arch": "architecture"})
    keep = ["task", "test", "architecture", "protocol", "n_folds", "n_patients", "n_images"]
    keep += [f"{lv}_{m}_{s}" for lv, m in COLUMNS for s in STATS]
    keep += ["temperature_mean", "temperature_sd"]
    keep += [f"scaled_{lv}_{m}_{s}" for lv, m in COLUMNS for s in STATS]
    if "n_repeats" in table.columns:
        keep.insert(keep.index("n_folds") + 1, "n_repeats")
    table = table[keep].reset_index(drop=True)
    table.attrs["split_notes"] = split_notes(folds)
    return table


def write_calibration_table(table: pd.DataFrame, out_csv=None, out_md=None, out_tex=None) -> None:
    header = ["task", "test", "architecture", "protocol", "folds", "patients"]
    header += [f"{lv} {LABELS[m]}" for lv, m in COLUMNS]
    header += ["temperature"] + [f"scaled {lv} {LABELS[m]}" for lv, m in COLUMNS]
    rows = []
    for _, r in table.iterrows():
        cells = [r["task"], r["test"], r["architecture"], r["protocol"], folds_cell(r), str(r["n_patients"])]
        cells += [_cell(r, lv, m) for lv, m in COLUMNS]
        cells.append(_fmt(r["temperature_mean"], r["temperature_sd"], False))
        cells += [_cell(r, f"scaled_{lv}", m) for lv, m in COLUMNS]
        rows.append(cells)
    footnotes = [CALIBRATION_NOTE, TEMPERATURE_NOTE,
                 "Reliability diagrams: results/figures/calibration/{task}.png."]
    if table["test"].str.startswith("external").any():
        footnotes.insert(0, EXTERNAL_NOTE)
    if any(table[f"{lv}_{m}_ci_low"].notna().any() for lv, m in COLUMNS):
        footnotes.append(INTERVAL_NOTE)
    if "n_repeats" in table.columns:
        footnotes.append(REPEATS_NOTE)
    write_formats(table, header, rows, footnotes,
                  "Calibration of the test probabilities", out_csv, out_md, out_tex)


def reliability(df: pd.DataFrame, classes: list[str]) -> tuple[pd.DataFrame, float]:
    """Per non-empty confidence bin: n, mean confidence and accuracy; and the ECE of ``df``.

    ``df``: predictions (or patient units) with ``label`` and ``prob_<class>`` columns. The
    predicted class is the most probable one, as in deepbc.evaluation.metrics.
    """
    prob = df[[prob_column(c) for c in classes]].to_numpy(dtype=np.float64)
    y = df["label"].map({c: i for i, c in enumerate(classes)}).to_numpy()
    confidence = prob.max(axis=1)
    correct = (prob.argmax(axis=1) == y).astype(np.float64)
    bins = pd.DataFrame({"bin": confidence_bin(confidence), "confidence": confidence,
                         "correct": correct}).groupby("bin", sort=True)
    out = pd.DataFrame({"n": bins.size(), "confidence": bins["confidence"].mean(),
                        "accuracy": bins["correct"].mean()}).reset_index()
    ece = float((out["n"] * (out["accuracy"] - out["confidence"]).abs()).sum() / len(df))
    return out, ece


def plot_reliability(pred_paths, classes: list[str], task: str, manifest, out_png=None,
                     out_pdf=None, test_dataset: str | None = None, split_audits=()) -> Figure:
    """Reliability diagrams of one task: patient level (left) and image level (right), one line
    per architecture and protocol, the test predictions of all folds pooled; the bars below show
    how many units each bin holds. ``manifest``: the task's test dataset manifest, for the grouping;
    ``test_dataset``: an external test dataset, named in the title; ``split_audits``: the runs'
    split audits (a predefined split or repeated holdouts is named in the title)."""
    grouping = grouping_of(manifest)
    images, patients = load_task_predictions(pred_paths, classes, task, "the calibration")
    fig = Figure(figsize=(10, 6.4))
    axes = fig.subplots(2, 2, sharex="col", gridspec_kw={"height_ratios": [3, 1]})
    archs = sorted(images["arch"].unique())
    colors = {a: f"C{i % 10}" for i, a in enumerate(archs)}
    width = 1 / ECE_BINS
    for col, (level, df) in enumerate((("patient", patients), ("image", images))):
        ax, hist = axes[0, col], axes[1, col]
        ax.plot([0, 1], [0, 1], color="0.75", lw=0.8, ls=":", label="perfect calibration")
        groups = list(df.groupby(["arch", "protocol"], sort=True))
        for i, ((arch, protocol), group) in enumerate(groups):
            curve, ece = reliability(group, classes)
            n_folds = group["fold"].nunique()
            ax.plot(curve["confidence"], curve["accuracy"], color=colors[arch],
                    ls=PROTOCOL_STYLE[protocol], marker="o", ms=3, lw=1.2,
                    label=f"{arch}, {protocol_label(protocol, grouping)}: pooled ECE {ece:.3f}, "
                          f"{n_folds} fold{'s' if n_folds != 1 else ''}")
            # Side-by-side bars, one per line, inside each bin.
            step = width / (len(groups) + 1)
            hist.bar(curve["bin"] * width + (i + 1) * step, curve["n"], width=step,
                     color=colors[arch], alpha=0.6 if protocol == "patient" else 0.3)
        ax.set(xlim=(0, 1), ylim=(-0.02, 1.02), ylabel="accuracy in the bin",
               title=_level_title(level, grouping, detail=True))
        ax.legend(loc="best", fontsize=6)
        hist.set(xlabel="confidence (highest class probability)", ylabel="units")
    fig.suptitle(with_split_label(f"Reliability, {task}: {ECE_BINS} equal-width confidence bins, test "
                                  f"predictions of all folds pooled{_external(test_dataset)}", split_audits))
    fig.tight_layout()
    atomic.write_figure(fig, out_png, out_pdf)
    return fig
