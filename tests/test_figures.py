"""deepbc.results.figures: ROC, confusion and training figures written as non-empty, stable PNG and PDF."""

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from deepbc.data.splits import with_split_label
from deepbc.evaluation import metrics
from deepbc.jobs.errors import UserError
from deepbc.results import calibration, figures
from deepbc.results.tables import PROTOCOL_LABELS
from tests.resultkit import split_audit

BM = ["benign", "malignant"]
ABC = ["a", "b", "c"]


def write_predictions(root, run, arch, fold, classes, n=40, seed=0):
    rng = np.random.default_rng(seed + fold)
    patients = rng.integers(0, 6, n)
    y = patients % len(classes)
    logits = rng.normal(size=(n, len(classes)))
    logits[np.arange(n), y] += 1.5
    prob = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    df = pd.DataFrame({"path": [f"i{i}.png" for i in range(n)],
                       "patient": [f"f{fold}p{p}" for p in patients],
                       "label": [classes[i] for i in y]})
    for j, c in enumerate(classes):
        df[f"prob_{c}"] = prob[:, j]
    df["pred"] = [classes[i] for i in prob.argmax(axis=1)]
    path = root / "predictions" / run / arch / f"fold{fold}.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    df.to_parquet(path)
    return path


def write_manifest(root, patient_source=None):
    """A dataset manifest: BreakHis-like (no patient_source column) or a folder dataset's."""
    df = pd.DataFrame({"path": ["a.png", "b.png"], "patient": ["a", "b"]})
    if patient_source:
        df["patient_source"] = patient_source
    path = root / f"manifest_{patient_source or 'breakhis'}.parquet"
    df.to_parquet(path)
    return path


def legend(ax):
    return [t.get_text() for t in ax.get_legend().get_texts()]


def assert_images(png, pdf):
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    assert pdf.read_bytes()[:5] == b"%PDF-" and pdf.stat().st_size > 5_000


def test_roc_binary_both_protocols_is_stable(tmp_path):
    paths = [write_predictions(tmp_path, run, "resnet_small", f, BM)
             for run in ("benign_vs_malignant", "benign_vs_malignant__image_level",
                         "benign_vs_malignant__augmented_image_level") for f in range(2)]
    outs = []
    for name in ("a", "b"):
        png, pdf = tmp_path / f"{name}.png", tmp_path / f"{name}.pdf"
        fig = figures.plot_roc(paths, BM, "benign_vs_malignant", write_manifest(tmp_path), png, pdf)
        outs.append((png, pdf))
    assert_images(*outs[0])
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    # The tables' labels, in one place (deepbc.data.runs.PROTOCOL_LABELS), every protocol's.
    for label in PROTOCOL_LABELS.values():
        assert any(label in t for t in labels), label
    assert outs[0][0].read_bytes() == outs[1][0].read_bytes()
    assert outs[0][1].read_bytes() == outs[1][1].read_bytes()


def test_roc_legend_gives_pooled_and_per_fold_mean_auc(tmp_path):
    # The tables show the mean of the folds' AUCs; the pooled curve's AUC differs and is named so.
    paths = [write_predictions(tmp_path, "cancer_types", "resnet_small", f, ABC, seed=7) for f in range(3)]
    fig = figures.plot_roc(paths, ABC, "cancer_types", write_manifest(tmp_path, "csv"))
    per_fold = [metrics.compute_metrics(pd.read_parquet(p), ABC, n_boot=0) for p in paths]
    for ax, level in zip(fig.axes, ("patient", "image")):
        [text] = legend(ax)
        assert text.startswith("resnet_small, patient-wise\npooled AUC ") and "over 3 folds" in text
        block = [m["patient_level"]["mean_probability"] if level == "patient" else m["image_level"]
                 for m in per_fold]
        assert f"per-fold mean {np.mean([b['auc'] for b in block]):.3f}" in text
    # The pooled figure is the AUC of all folds' images together (macro one-vs-rest).
    pooled = pd.concat([pd.read_parquet(p) for p in paths])
    auc = np.mean([roc_auc_score(pooled["label"] == c, pooled[f"prob_{c}"]) for c in ABC])
    assert f"pooled AUC {auc:.3f} over 3 folds" in text


def test_image_grouped_run_is_not_called_patient_wise(tmp_path):
    paths = [write_predictions(tmp_path, "cancer_types", "resnet_small", f, ABC) for f in range(2)]
    manifest = write_manifest(tmp_path, "image")
    fig = figures.plot_roc(paths, ABC, "cancer_types", manifest)
    texts = legend(fig.axes[0]) + [fig.axes[0].get_title()]
    assert "image-grouped (no patient mapping)" in texts[0]
    assert texts[-1] == "one-image groups (no patient mapping)"
    assert not any("patient-wise" in t or "patient level" in t for t in texts)
    fig = figures.plot_confusion(paths, ABC, manifest)
    assert "image-grouped (no patient mapping)" in fig.texts[0].get_text()  # the suptitle
    assert fig.axes[2].get_title().startswith("one-image groups (n=")


def test_roc_multiclass(tmp_path):
    paths = [write_predictions(tmp_path, "benign_subtypes", arch, 0, ABC)
             for arch in ("resnet_small", "resnet_v1_50")]
    fig = figures.plot_roc(paths, ABC, "benign_subtypes", write_manifest(tmp_path),
                           tmp_path / "r.png", tmp_path / "r.pdf")
    assert_images(tmp_path / "r.png", tmp_path / "r.pdf")
    assert len(fig.axes[1].get_legend().get_texts()) == 2


def test_roc_refuses_another_tasks_predictions(tmp_path):
    path = write_predictions(tmp_path, "cancer_types", "resnet_small", 0, ABC)
    with pytest.raises(UserError, match="other task"):
        figures.plot_roc([path], ABC, "benign_subtypes", write_manifest(tmp_path), tmp_path / "r.png")


def test_confusion(tmp_path):
    paths = [write_predictions(tmp_path, "cancer_types", "resnet_small", f, ABC) for f in range(2)]
    fig = figures.plot_confusion(paths, ABC, write_manifest(tmp_path), tmp_path / "c.png",
                                 tmp_path / "c.pdf")
    assert_images(tmp_path / "c.png", tmp_path / "c.pdf")
    # Top-left panel: image counts pooled over both folds (40 images each).
    counts = [int(t.get_text()) for t in fig.axes[0].texts]
    assert sum(counts) == 80
    other = write_predictions(tmp_path, "cancer_types", "resnet_v1_50", 0, ABC)
    with pytest.raises(UserError, match="several runs"):
        figures.plot_confusion(paths + [other], ABC, write_manifest(tmp_path), tmp_path / "x.png")


def test_confusion_of_an_external_test_counts_models_times_images(tmp_path):
    # Both folds' models predict the same 40 external images: 2 x 40 predictions, not 80 images.
    paths = [write_predictions(tmp_path, "cancer_types", "resnet_small", f, ABC) for f in range(2)]
    fig = figures.plot_confusion(paths, ABC, write_manifest(tmp_path), test_dataset="site_b")
    assert fig.axes[0].get_title().endswith("(n=2 models x 40)")
    assert "external test: site_b" in fig._suptitle.get_text()


def write_training(root, run="run", arch="arch", folds=2):
    paths = []
    for fold in range(folds):
        steps = np.arange(1, 41)
        df = pd.DataFrame({"step": steps, "stage": np.where(steps <= 20, "logits", "all"),
                           "loss": 1 / steps, "accuracy": 1 - 1 / steps, "learning_rate": 0.01,
                           "images_per_sec": 10.0})
        df["val_loss"] = np.where(steps % 10 == 0, df["loss"] + 0.1, np.nan)
        df["val_accuracy"] = np.where(steps % 10 == 0, df["accuracy"] - 0.1, np.nan)
        path = root / "models" / run / arch / f"fold{fold}" / "training.csv"
        path.parent.mkdir(parents=True)
        df.to_csv(path, index=False)
        paths.append(path)
    return paths


def test_training_curves(tmp_path):
    paths = write_training(tmp_path)
    fig = figures.plot_training(paths, "run / arch", tmp_path / "t.png", tmp_path / "t.pdf")
    assert_images(tmp_path / "t.png", tmp_path / "t.pdf")
    # Two folds x (train, validation) per panel, and one stage boundary per fold.
    assert len(fig.axes[0].get_lines()) == 2 * 2 + 2


def test_bad_paths(tmp_path):
    with pytest.raises(UserError, match="fold"):
        figures.parse_prediction_path(tmp_path / "preds.parquet")
    bad = tmp_path / "fold0" / "training.csv"
    bad.parent.mkdir()
    pd.DataFrame({"step": [1], "loss": [1.0]}).to_csv(bad, index=False)
    with pytest.raises(UserError, match="lacks column") as err:
        figures.plot_training([bad], "t", tmp_path / "t.png")
    assert err.value.fix.startswith(f"delete the folder {bad.parent}/ and rerun the same snakemake command")


EVA_LABEL = "predefined split, 4 patients on two sides"


def split_audits(root) -> dict:
    """Audits of eva's split (4 patients on two sides), Spanhol's repeated holdouts and k folds."""
    return {"predefined": split_audit(root / "eva.audit.json", 4, predefined="eva.csv", predefined_key="slide",
                                      allow_straddling=True),
            "repeated": split_audit(root / "spanhol.audit.json", scheme="repeated_holdout"),
            "kfold": split_audit(root / "kfold.audit.json")}


def test_a_figures_split_label(tmp_path):
    audits = split_audits(tmp_path)
    assert with_split_label("T", []) == with_split_label("T", [audits["kfold"]]) == "T"
    assert with_split_label("T", [audits["predefined"]]) == f"T\nsplit: {EVA_LABEL}"
    # A task's runs: each label once, in the runs' order.
    assert with_split_label("T", [audits["repeated"], audits["kfold"], audits["predefined"], audits["repeated"]]) == (
        f"T\nsplit: 5 repeated patient-wise 70/30 holdouts; {EVA_LABEL}")
    with pytest.raises(UserError, match="split audit not found"):
        with_split_label("T", [tmp_path / "missing.audit.json"])


def draw(kind, root, audits):
    """A figure of each kind the results rules draw, of synthetic predictions or curves."""
    if kind == "training":
        return figures.plot_training(write_training(root), "run / arch", root / "t.png", split_audits=audits)
    task = "breakhis_eva"
    paths = [write_predictions(root, task, "resnet_v1_50", 0, ABC)]
    manifest = write_manifest(root)
    if kind == "roc":
        return figures.plot_roc(paths, ABC, task, manifest, root / "r.png", split_audits=audits)
    if kind == "calibration":
        return calibration.plot_reliability(paths, ABC, task, manifest, root / "c.png", split_audits=audits)
    return figures.plot_confusion(paths, ABC, manifest, root / "m.png", split_audits=audits)


@pytest.mark.parametrize("kind", ["roc", "calibration", "confusion", "training"])
def test_every_figure_of_a_predefined_or_repeated_split_names_it(tmp_path, kind):
    """Every table of a run said "predefined split, 4 patients on two sides"; its figures said
    nothing of the split."""
    audits = split_audits(tmp_path)
    for scheme, shown in (("predefined", EVA_LABEL), ("repeated", "5 repeated patient-wise 70/30 holdouts")):
        title = draw(kind, tmp_path / scheme, [audits[scheme]])._suptitle.get_text()
        assert title.endswith(f"\nsplit: {shown}"), title
    title = draw(kind, tmp_path / "kfold", [audits["kfold"]])._suptitle.get_text()
    assert "split:" not in title and title == draw(kind, tmp_path / "none", [])._suptitle.get_text()
