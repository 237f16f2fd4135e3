"""Synthetic test predictions and the metrics the workflow computes from them, for the table tests:
per-fold metrics (deepbc.evaluation.metrics) and the pooled figures (deepbc.evaluation.pooled),
with the meta their jobs write; no training."""

import numpy as np
import pandas as pd

from deepbc.data.runs import run_name
from deepbc.evaluation import metrics, pooled

BM = ["benign", "malignant"]


def predictions(patients, classes=BM, wrong=(), images=2, confidence=0.8, magnifications=None) -> pd.DataFrame:
    """``patients``: {patient: true class}; each has ``images`` images (per magnification, if
    given), predicted right with ``confidence`` unless the patient is in ``wrong`` (then the next
    class gets it)."""
    rows = []
    for patient, label in patients.items():
        for mag in magnifications or [None]:
            for i in range(images):
                j = classes.index(label)
                pred = classes[(j + 1) % len(classes)] if patient in wrong else label
                prob = np.full(len(classes), (1 - confidence) / (len(classes) - 1))
                prob[classes.index(pred)] = confidence
                row = {"path": f"{patient}/{mag or 'x'}_{i}.png", "patient": patient, "label": label,
                       "pred": pred, **{f"prob_{c}": v for c, v in zip(classes, prob)}}
                if mag:
                    row["magnification"] = mag
                rows.append(row)
    return pd.DataFrame(rows)


def binary_fold(prefix, n_patients, n_wrong=0, **kw) -> pd.DataFrame:
    """``n_patients`` patients named {prefix}p{i}, alternately benign and malignant; the first
    ``n_wrong`` are predicted wrong."""
    patients = {f"{prefix}p{i}": BM[i % 2] for i in range(n_patients)}
    return predictions(patients, BM, wrong=list(patients)[:n_wrong], **kw)


def run_results(task, folds, protocol="patient", arch="resnet_small", classes=BM, grouping="patient",
                test_dataset=None, magnification="all", n_boot=0, seed=0):
    """Per-fold metrics and the pooled metrics of one run and architecture.

    ``folds``: {fold: predictions DataFrame}. Returns (list of per-fold metrics, pooled dict), each
    with the meta its workflow job writes.
    """
    run = run_name(task, protocol)
    fold_metrics = []
    for fold, df in folds.items():
        stream = 0 if test_dataset else fold
        m = metrics.compute_metrics(df, classes, n_boot=n_boot, seed=seed, stream=stream)
        m["by_magnification"] = metrics.by_magnification(df, classes, n_boot=n_boot, seed=seed, stream=stream)
        m["meta"] = {"run": run, "task": task, "protocol": protocol, "grouping": grouping,
                     "test_dataset": test_dataset, "arch": arch, "fold": fold, "magnification": magnification}
        fold_metrics.append(m)
    frames = [(fold, df, f"results/predictions/{run}/{arch}/fold{fold}.parquet") for fold, df in folds.items()]
    pooled_metrics = pooled.pooled_run(frames, classes, run, arch, grouping, magnification, n_boot=n_boot,
                                       seed=seed, test_dataset=test_dataset)
    return fold_metrics, pooled_metrics


def results(*runs):
    """The per-fold metrics and pooled metrics of several ``run_results``, as two lists."""
    return [m for fold_metrics, _ in runs for m in fold_metrics], [p for _, p in runs]
