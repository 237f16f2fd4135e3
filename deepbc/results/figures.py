"""Figures (PNG and PDF): ROC curves per task, confusion matrices and training curves per model.

Pooling: ROC curves and confusion matrices pool the test predictions of all folds of a run and
architecture (each image, or under the augment-then-split protocol each image copy, is in one test
fold, so the pool covers the whole dataset once). The
patient level aggregates within each fold exactly as deepbc.evaluation.metrics does (mean probability), then
pools the folds' patients. For more than two classes the ROC curve is the macro average of the
one-vs-rest curves (true positive rates averaged on the union of their false positive rates), and
an AUC is the mean of the per-class AUCs. The ROC legend gives both the AUC of the pooled
predictions ("pooled AUC over k folds"), the tables' figure (deepbc.evaluation.pooled), and the
mean of the per-fold AUCs (each over the classes its fold holds; the metrics JSONs' figures).

Protocols are labelled as in the tables (deepbc.results.tables.protocol_label): a run whose dataset maps
no image to a patient (deepbc.evaluation.metrics.grouping_of) is "image-grouped (no patient mapping)", never
patient-wise, and its patient level is named for what it is: one image per group.

Files are byte-identical for equal inputs: figures are built without pyplot, and the PNG
``Software`` and PDF ``CreationDate`` metadata are left out.
"""

import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from deepbc.jobs import atomic  # noqa: E402
from deepbc.jobs.errors import UserError  # noqa: E402
from deepbc.evaluation.metrics import grouping_of, patient_table, prob_column  # noqa: E402
from deepbc.training.model_dir import retrain  # noqa: E402
from deepbc.results.tables import protocol_label  # noqa: E402
from deepbc.data.runs import parse_run  # noqa: E402
from deepbc.data.splits import with_split_label  # noqa: E402

PROTOCOL_STYLE = {"patient": "-", "image": "--", "augmented_image": ":"}
_PRED_PATH = re.compile(r"(?P<run>[^/]+)/(?P<arch>[^/]+)/fold(?P<fold>\d+)\.parquet$")
_TRAIN_PATH = re.compile(r"fold(?P<fold>\d+)/training\.csv$")
TRAINING_COLUMNS = ["step", "stage", "loss", "accuracy", "val_loss", "val_accuracy"]


def parse_prediction_path(path) -> dict:
    """run, task, protocol, arch and fold of ``.../{run}/{arch}/fold{k}.parquet``."""
    match = _PRED_PATH.search(Path(path).as_posix())
    if not match:
        raise UserError("predictions path does not end in {run}/{arch}/fold{k}.parquet", str(path),
                        "pass files from results/predictions/{run}/{arch}/")
    task, protocol = parse_run(match["run"])
    return {"run": match["run"], "task": task, "protocol": protocol, "arch": match["arch"],
            "fold": int(match["fold"])}


def load_predictions(paths, classes: list[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Pooled image-level and patient-level predictions of many folds, labelled by their path.

    Returns (images, patients); both carry run, task, protocol, arch and fold columns.
    """
    images, patients = [], []
    for path in paths:
        meta = parse_prediction_path(path)
        try:
            df = pd.read_parquet(path)
        except FileNotFoundError:
            raise UserError("predictions file not found", str(path),
                            "run the evaluate rule for this run, architecture and fold") from None
        units = patient_table(df, classes, where=str(path))
        images.append(df.assign(**meta))
        patients.append(units.assign(**meta))
    if not images:
        raise UserError("no predictions files given", "--predictions", "pass at least one file")
    return pd.concat(images, ignore_index=True), pd.concat(patients, ignore_index=True)


def _level_title(level: str, grouping: str, detail: bool = False) -> str:
    if level == "patient" and grouping == "image":
        return "one-image groups (no patient mapping)" if detail else "one-image groups"
    return f"{level} level"


def _external(test_dataset) -> str:
    """A title's mark of an external test (each fold's model on the same images)."""
    return f"\nexternal test: {test_dataset} (every fold's model on all its images)" if test_dataset else ""


def _roc(df: pd.DataFrame, classes: list[str]):
    """(fpr, tpr, auc) pooled over ``df``; macro average of one-vs-rest curves for >2 classes."""
    # Imported here (as in deepbc.evaluation.metrics): the other figure jobs need no scikit-learn.
    from sklearn.metrics import roc_auc_score, roc_curve

    y = df["label"].map({c: i for i, c in enumerate(classes)}).to_numpy()
    present = [i for i in range(len(classes)) if (y == i).any()]
    if len(present) < 2:
        return None
    if len(classes) == 2:
        score = df[prob_column(classes[1])].to_numpy()
        fpr, tpr, _ = roc_curve(y == 1, score)
        return fpr, tpr, roc_auc_score(y == 1, score)
    curves = [roc_curve(y == c, df[prob_column(classes[c])].to_numpy())[:2] for c in present]
    grid = np.unique(np.concatenate([fpr for fpr, _ in curves]))
    tpr = np.mean([np.interp(grid, fpr, t) for fpr, t in curves], axis=0)
    auc = np.mean([roc_auc_score(y == c, df[prob_column(classes[c])].to_numpy()) for c in present])
    return grid, tpr, auc


def load_task_predictions(paths, classes: list[str], task: str, purpose: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``load_predictions`` of the runs of one ``task``; another task's files are refused (``purpose``,
    e.g. "the ROC", names the figure in the error)."""
    images, patients = load_predictions(paths, classes)
    other = sorted(set(images["task"]) - {task})
    if other:
        raise UserError(f"predictions of other task(s) {other} given for {purpose} of {task}",
                        "--predictions", f"pass only predictions of runs of task {task}")
    return images, patients


def plot_roc(pred_paths, classes: list[str], task: str, manifest, out_png=None, out_pdf=None,
             test_dataset: str | None = None, split_audits=()) -> Figure:
    """ROC curves of one task: patient level (left) and image level (right), one curve per
    architecture and protocol, pooled over folds; the legend gives the pooled AUC and the mean of
    the per-fold AUCs. ``manifest``: the test dataset's manifest, for the grouping;
    ``test_dataset``: an external test dataset, named in the title; ``split_audits``: the runs'
    split audits (a predefined split or repeated holdouts is named in the title)."""
    grouping = grouping_of(manifest)
    images, patients = load_task_predictions(pred_paths, classes, task, "the ROC")
    fig = Figure(figsize=(10, 5.2))
    kind = "binary, positive: " + classes[1] if len(classes) == 2 else "macro one-vs-rest"
    archs = sorted(images["arch"].unique())
    colors = {a: f"C{i % 10}" for i, a in enumerate(archs)}
    for ax, (level, df) in zip(fig.subplots(1, 2), (("patient", patients), ("image", images))):
        ax.plot([0, 1], [0, 1], color="0.75", lw=0.8, ls=":")
        for (arch, protocol), group in df.groupby(["arch", "protocol"], sort=True):
            roc = _roc(group, classes)
            style, label = PROTOCOL_STYLE[protocol], protocol_label(protocol, grouping)
            if roc is None:
                ax.plot([], [], color=colors[arch], ls=style,
                        label=f"{arch}, {label}: AUC undefined (one class)")
                continue
            fpr, tpr, auc = roc
            n_folds = group["fold"].nunique()
            # The per-fold metrics' AUCs, for comparison (folds with one class have none).
            per_fold = [r[2] for _, d in group.groupby("fold") if (r := _roc(d, classes)) is not None]
            fold_mean = f"{np.mean(per_fold):.3f}" if per_fold else "undefined"
            ax.plot(fpr, tpr, color=colors[arch], ls=style, lw=1.5,
                    label=f"{arch}, {label}\npooled AUC {auc:.3f} over {n_folds} folds, "
                          f"per-fold mean {fold_mean}")
        ax.set(xlim=(-0.01, 1.01), ylim=(-0.01, 1.01), aspect="equal",
               xlabel="false positive rate (1 - specificity)", ylabel="true positive rate (sensitivity)",
               title=_level_title(level, grouping, detail=True))
        ax.legend(loc="lower right", fontsize=6)
    fig.suptitle(with_split_label(
        f"ROC, {task} ({kind}): test predictions of all folds pooled{_external(test_dataset)}", split_audits))
    fig.tight_layout()
    atomic.write_figure(fig, out_png, out_pdf)
    return fig


def _draw_matrix(ax, cm: np.ndarray, classes: list[str], title: str, normalised: bool) -> None:
    with np.errstate(divide="ignore", invalid="ignore"):
        shown = cm / cm.sum(axis=1, keepdims=True) if normalised else cm.astype(float)
    ax.imshow(shown, cmap="Blues", vmin=0, vmax=1 if normalised else max(cm.max(), 1))
    n = len(classes)
    ax.set(xticks=range(n), yticks=range(n), xlabel="predicted", ylabel="true", title=title)
    ax.set_xticklabels(classes, rotation=45, ha="right")
    ax.set_yticklabels(classes)
    top = np.nanmax(shown) if np.isfinite(shown).any() else 1
    for i in range(n):
        for j in range(n):
            v = shown[i, j]
            text = "–" if not np.isfinite(v) else (f"{v:.2f}" if normalised else f"{int(v)}")
            ax.text(j, i, text, ha="center", va="center", fontsize=8,
                    color="white" if np.isfinite(v) and v > 0.6 * top else "black")


def plot_confusion(pred_paths, classes: list[str], manifest, out_png=None, out_pdf=None,
                   test_dataset: str | None = None, split_audits=()) -> Figure:
    """Confusion matrices of one run and architecture pooled over folds: image level (top) and
    patient level (bottom), counts (left) and row-normalised (right). Rows true, columns predicted.
    ``manifest``: the run's test dataset manifest, for the grouping; ``test_dataset``: an external
    test dataset, named in the title; ``split_audits``: the run's split audit (as plot_roc)."""
    from sklearn.metrics import confusion_matrix

    grouping = grouping_of(manifest)
    images, patients = load_predictions(pred_paths, classes)
    groups = images[["run", "arch"]].drop_duplicates()
    if len(groups) != 1:
        raise UserError(f"predictions of several runs/architectures given: "
                        f"{groups.to_dict('records')}", "--predictions",
                        "pass the folds of one run and architecture")
    run, arch = groups.iloc[0]
    fig = Figure(figsize=(9, 8.5))
    axes = fig.subplots(2, 2)
    folds = sorted(images["fold"].unique())
    protocol = parse_run(run)[1]
    for row, (level, df) in enumerate((("image", images), ("patient", patients))):
        cm = confusion_matrix(df["label"], df["pred"], labels=classes)
        title = _level_title(level, grouping)
        copies = protocol == "augmented_image"
        unit = {"image": ", image copies" if copies else ", images", "patient": ", patients"}[level] \
            if title.endswith("level") else ""
        # An external test's folds all predict the same units: the counts are k models x N units.
        n = f"{len(folds)} models x {cm.sum() // len(folds)}" if test_dataset else f"{cm.sum()}"
        _draw_matrix(axes[row, 0], cm, classes, f"{title}{unit} (n={n})", False)
        _draw_matrix(axes[row, 1], cm, classes, f"{title}, row-normalised", True)
    fig.suptitle(with_split_label(f"{run} / {arch}: {protocol_label(protocol, grouping)}, "
                                  f"folds {', '.join(map(str, folds))} pooled{_external(test_dataset)}",
                                  split_audits))
    fig.tight_layout()
    atomic.write_figure(fig, out_png, out_pdf)
    return fig


def load_training(paths) -> pd.DataFrame:
    """Training curves of several folds (``.../fold{k}/training.csv``) with a fold column."""
    frames = []
    for path in paths:
        match = _TRAIN_PATH.search(Path(path).as_posix())
        if not match:
            raise UserError("training curve path does not end in fold{k}/training.csv", str(path),
                            "pass files from results/models/{run}/{arch}/fold{k}/")
        try:
            df = pd.read_csv(path)
        except FileNotFoundError:
            raise UserError("training curve file not found", str(path),
                            "run the training rule for this fold") from None
        missing = [c for c in TRAINING_COLUMNS if c not in df.columns]
        if missing:
            raise UserError(f"training curve lacks column(s) {missing}", str(path), retrain(Path(path).parent))
        frames.append(df.assign(fold=int(match["fold"])))
    if not frames:
        raise UserError("no training curve files given", "--training", "pass at least one file")
    return pd.concat(frames, ignore_index=True)


def plot_training(paths, title: str, out_png=None, out_pdf=None, split_audits=()) -> Figure:
    """Loss and accuracy against step, training (thin line) and validation (markers), one colour
    per fold; dotted vertical lines where a later training stage begins. ``split_audits``: the
    run's split audit (as plot_roc)."""
    df = load_training(paths)
    fig = Figure(figsize=(10, 4.2))
    axes = fig.subplots(1, 2)
    for i, (fold, d) in enumerate(df.groupby("fold", sort=True)):
        d = d.sort_values("step")
        val = d.dropna(subset=["val_loss"])
        for ax, metric in zip(axes, ("loss", "accuracy")):
            ax.plot(d["step"], d[metric], color=f"C{i % 10}", lw=0.8, alpha=0.7,
                    label=f"fold {fold} train")
            ax.plot(val["step"], val[f"val_{metric}"], color=f"C{i % 10}", ls="--", marker="o",
                    ms=3, label=f"fold {fold} validation")
        starts = d.loc[d["stage"].ne(d["stage"].shift()), "step"].iloc[1:]
        for ax in axes:
            for step in starts:
                ax.axvline(step, color=f"C{i % 10}", ls=":", lw=0.8)
    axes[0].set(xlabel="step", ylabel="loss", title="loss")
    axes[1].set(xlabel="step", ylabel="accuracy", title="accuracy", ylim=(-0.02, 1.02))
    axes[1].legend(fontsize=7, loc="lower right")
    fig.suptitle(with_split_label(title, split_audits))
    fig.tight_layout()
    atomic.write_figure(fig, out_png, out_pdf)
    return fig
