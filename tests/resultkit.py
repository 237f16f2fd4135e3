"""Synthetic test predictions and the metrics the workflow computes from them, for the table tests:
per-fold metrics (deepbc.evaluation.metrics) and the pooled figures (deepbc.evaluation.pooled),
with the meta their jobs write; no training."""

import json

import numpy as np
import pandas as pd

from deepbc.data.runs import COPIES, COPY, model_fold, run_name
from deepbc.evaluation import metrics, pooled
from tests.trainkit import split_settings

BM = ["benign", "malignant"]


def predictions(rows, classes=BM) -> pd.DataFrame:
    """rows: (patient, true class, predicted class, its probability), one per image; the other
    classes share the rest of the probability."""
    out = []
    for i, (patient, label, pred, p) in enumerate(rows):
        prob = np.full(len(classes), (1 - p) / (len(classes) - 1))
        prob[classes.index(pred)] = p
        out.append({"path": f"{patient}/{i}.png", "patient": patient, "label": label, "pred": pred,
                    **{f"prob_{c}": v for c, v in zip(classes, prob)}})
    return pd.DataFrame(out)


def with_copies(df: pd.DataFrame) -> pd.DataFrame:
    """Each prediction as the 8 image copies the augment-then-split protocol tests (column ``copy``
    after ``path``), all predicted alike."""
    out = df.loc[df.index.repeat(len(COPIES))].reset_index(drop=True)
    out.insert(1, COPY, np.tile(np.arange(len(COPIES), dtype=np.int64), len(df)))
    return out


def binary_fold(prefix, n_patients, n_wrong=0, images=2) -> pd.DataFrame:
    """``n_patients`` patients named {prefix}p{i}, alternately benign and malignant, ``images``
    images each, predicted with probability 0.8; the first ``n_wrong`` patients wrong."""
    rows = []
    for i in range(n_patients):
        label = BM[i % 2]
        pred = BM[1 - i % 2] if i < n_wrong else label
        rows += [(f"{prefix}p{i}", label, pred, 0.8)] * images
    return predictions(rows)


def run_results(task, folds, protocol="patient", arch="resnet_small", classes=BM, grouping="patient",
                test_dataset=None, magnification="all", n_boot=0, seed=0, repeat=0):
    """Per-fold metrics and the pooled metrics of one run and architecture (one training repeat).

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
                     "test_dataset": test_dataset, "arch": arch, "fold": fold, "repeat": repeat,
                     "magnification": magnification}
        fold_metrics.append(m)
    frames = [(fold, df, f"results/predictions/{run}/{arch}/fold{model_fold(fold, repeat)}.parquet")
              for fold, df in folds.items()]
    pooled_metrics = pooled.pooled_run(frames, classes, run, arch, grouping, magnification, n_boot=n_boot,
                                       seed=seed, test_dataset=test_dataset, repeat=repeat)
    return fold_metrics, pooled_metrics


def results(*runs):
    """The per-fold metrics and pooled metrics of several ``run_results``, as two lists."""
    return [m for fold_metrics, _ in runs for m in fold_metrics], [p for _, p in runs]


def split_audit(path, straddling=0, run="run", **settings):
    """``path``: a split audit JSON with the summary make_splits writes (deepbc.data.splits.audit)
    for the split ``settings`` make (tests.trainkit.split_settings, e.g. predefined="eva.csv" or
    scheme="repeated_holdout"), with ``straddling`` patients on two sides; its label and note are
    the workflow's own."""
    s = split_settings(**settings)
    sides = {side: {"images": 1, "patients": 1, "absent_classes": []} for side in ("train", "val", "test")}
    summary = {"run": run, "protocol": "patient", "scheme": s.kind, "unit": s.unit,
               "label": s.label("patient", straddling), "note": s.note("patient", straddling),
               "patients_on_two_sides": straddling,
               "folds": {str(f): {**sides, "patients_on_two_sides": straddling} for f in range(s.n_folds)}}
    path.write_text(json.dumps(summary))
    return path
