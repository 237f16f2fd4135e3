"""deepbc.evaluation.pooled and intervals: the headline figures over all folds, with intervals that
do not collapse at the boundary, on synthetic predictions."""

import json

import numpy as np
import pandas as pd
import pytest
from scipy.stats import binomtest

from deepbc.evaluation import intervals, metrics, pooled
from deepbc.jobs.errors import UserError
from tests.resultkit import BM, predictions, with_copies

BENIGN = ["A", "F", "PT", "TA"]
# Five folds of a benign-subtype task, each missing one class in its test set, as BreakHis' 2
# adenosis (A) patients make happen: A is in folds 0 and 1 only.
FOLD_CLASSES = [["A", "F", "PT"], ["A", "F", "TA"], ["F", "PT", "TA"], ["F", "PT", "TA"], ["F", "PT", "TA"]]


def never_adenosis_folds():
    """Every fold's predictions: each patient has two images; adenosis is always called fibroadenoma,
    every other class is right."""
    frames = []
    for fold, present in enumerate(FOLD_CLASSES):
        rows = [(f"f{fold}{c}", c, "F" if c == "A" else c, 0.7) for c in present for _ in range(2)]
        frames.append((fold, predictions(rows, BENIGN), f"fold{fold}.parquet"))
    return frames


def test_a_class_never_recognised_counts_in_the_pooled_balanced_accuracy():
    frames = never_adenosis_folds()
    per_fold = [metrics.compute_metrics(df, BENIGN, n_boot=0)["patient_level"]["mean_probability"]
                for _, df, _ in frames]
    # Each fold's figure is over the 3 classes it holds: averaged, 0.867 (what the tables showed).
    assert np.mean([m["balanced_accuracy"] for m in per_fold]) == pytest.approx(13 / 15)
    result = pooled.pooled_metrics(frames, BENIGN, n_boot=200, seed=0)
    for block in (result["patient_level"]["mean_probability"], result["image_level"]):
        # One 4-class figure: sensitivities 0, 1, 1, 1.
        assert block["balanced_accuracy"] == pytest.approx(0.75)
        assert block["confusion_matrix"]["matrix"][0] == [0, block["per_class"]["A"]["support"], 0, 0]
        assert block["auc_classes"] == BENIGN and block["auc_absent_classes"] == []
    # A resample without both adenosis patients is no draw of the 4-class figure: it is left out,
    # and every draw with all four classes gives 0.75 (the model errs on every adenosis image).
    image = result["image_level"]
    assert image["ci95"]["balanced_accuracy"] == [0.75, 0.75]
    assert 120 < image["ci_n_valid"]["balanced_accuracy"] < 200 == image["ci_n_valid"]["accuracy"]
    patient = result["patient_level"]["mean_probability"]
    assert patient["per_class"]["A"]["sensitivity"] == 0 and patient["per_class"]["A"]["counts"][
        "sensitivity"] == [0, 2]
    assert result["class_counts"]["patients"] == {"A": 2, "F": 5, "PT": 4, "TA": 4}
    assert result["class_counts"]["images"] == {"A": 4, "F": 10, "PT": 8, "TA": 8}
    assert (result["n_patients"], result["n_images"]) == (15, 30)


def test_a_perfect_score_of_5_patients_gets_a_wilson_interval_not_a_point():
    rows = [(f"P{i}", ["benign", "malignant"][i % 2], ["benign", "malignant"][i % 2], 0.9) for i in range(5)]
    df = predictions(rows, ["benign", "malignant"])
    # The per-fold percentile bootstrap: every resample of 5 right patients is right.
    fold = metrics.compute_metrics(df, ["benign", "malignant"], n_boot=200, seed=0)
    assert fold["patient_level"]["mean_probability"]["ci95"]["accuracy"] == [1.0, 1.0]
    patient = pooled.pooled_metrics([(0, df, "p")], ["benign", "malignant"], n_boot=200, seed=0)[
        "patient_level"]["mean_probability"]
    assert patient["accuracy"] == 1.0 and patient["counts"]["accuracy"] == [5, 5]
    assert patient["ci_method"]["accuracy"] == "wilson"
    assert patient["ci95"]["accuracy"] == pytest.approx([0.5655, 1.0], abs=1e-4)
    # Sensitivity of the positive class: 2 of 2 malignant patients.
    assert patient["counts"]["sensitivity"] == [2, 2]
    assert patient["ci95"]["sensitivity"] == pytest.approx(intervals.wilson(2, 2, 0.95))
    # Balanced accuracy: Wilson of 3/3 (0.439) and 2/2 (0.342) combined: 1 - sqrt(0.561^2 + 0.658^2) / 2.
    assert patient["ci95"]["balanced_accuracy"] == pytest.approx([0.5676, 1.0], abs=1e-4)
    # AUC is no proportion: its bootstrap interval may still be of zero width (said so in the tables).
    assert patient["ci_method"]["auc"] == "bootstrap"


@pytest.mark.parametrize("k, n", [(0, 5), (3, 5), (5, 5), (17, 40), (1, 1)])
def test_wilson_matches_scipy(k, n):
    low, high = binomtest(k, n).proportion_ci(0.95, method="wilson")
    assert intervals.wilson(k, n, 0.95) == pytest.approx([low, high], abs=1e-12)
    assert intervals.wilson(0, 0, 0.95) is None


def test_balanced_accuracy_interval_combines_the_class_intervals_by_mover():
    frames = never_adenosis_folds()
    patient = pooled.pooled_metrics(frames, BENIGN, n_boot=0, seed=0)["patient_level"]["mean_probability"]
    sens = {c: patient["per_class"][c]["sensitivity"] for c in BENIGN}
    ci = {c: patient["per_class"][c]["ci95"]["sensitivity"] for c in BENIGN}
    low = 0.75 - np.sqrt(sum((sens[c] - ci[c][0]) ** 2 for c in BENIGN)) / 4
    high = 0.75 + np.sqrt(sum((ci[c][1] - sens[c]) ** 2 for c in BENIGN)) / 4
    assert patient["ci95"]["balanced_accuracy"] == pytest.approx([low, high])
    assert patient["ci_method"]["balanced_accuracy"] == "mover_wilson"
    # Multiclass: the macro sensitivity is the balanced accuracy, and has its interval.
    assert patient["ci95"]["sensitivity"] == patient["ci95"]["balanced_accuracy"]
    # Without draws only the closed-form intervals exist.
    assert "auc" not in patient["ci95"]


def test_a_patients_bootstrap_weight_depends_on_its_id_alone():
    a = intervals.poisson_weights(["P1", "P2"], 300, seed=4)
    b = intervals.poisson_weights(["P9", "P2", "P7"], 300, seed=4)
    np.testing.assert_array_equal(a[:, 1], b[:, 1])
    assert not np.array_equal(a[:, 0], a[:, 1])
    assert a.mean() == pytest.approx(1, abs=0.15)
    assert not np.array_equal(intervals.poisson_weights(["P1"], 300, seed=5)[:, 0], a[:, 0])


def test_the_same_patients_in_several_folds_are_resampled_jointly():
    """An external test: every fold's model tests the same patients. Two identical folds weigh each
    patient twice, in every draw alike, so every figure and every draw is the single fold's."""
    rng = np.random.default_rng(1)
    rows = [(f"P{i // 3}", ["benign", "malignant"][(i // 3) % 2], ["benign", "malignant"][int(rng.random() < 0.4)],
             0.8) for i in range(24)]
    df = predictions(rows, ["benign", "malignant"])
    one = pooled.pooled_metrics([(0, df, "a")], ["benign", "malignant"], n_boot=100, seed=2)
    two = pooled.pooled_metrics([(0, df, "a"), (1, df, "b")], ["benign", "malignant"], n_boot=100, seed=2)
    for level in ("image_level", "patient_level"):
        a = one[level] if level == "image_level" else one[level]["mean_probability"]
        b = two[level] if level == "image_level" else two[level]["mean_probability"]
        assert b["accuracy"] == pytest.approx(a["accuracy"])
        assert b["bootstrap_values"]["accuracy"] == pytest.approx(a["bootstrap_values"]["accuracy"], nan_ok=True)
        assert b["bootstrap_values"]["auc"] == pytest.approx(a["bootstrap_values"]["auc"], nan_ok=True)
    assert two["n_patients"] == one["n_patients"] == 8 and two["n_patient_units"] == 16


def test_batched_draws_equal_the_one_draw_functions():
    """The pooled bootstrap computes draws in stacks; each must equal the per-fold code's draw."""
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 40)
    score = np.round(rng.dirichlet(np.ones(3), 40), 1)
    pred = score.argmax(axis=1)
    w = rng.poisson(1.0, (5, 40)).astype(float)
    auc = metrics._WeightedAuc(y, score, 3)
    cells = np.eye(9)[y * 3 + pred]
    stacked, _ = metrics._scalars((w @ cells).reshape(-1, 3, 3), auc(w))
    for b in range(5):
        one, _ = metrics._scalars(np.bincount(y * 3 + pred, weights=w[b], minlength=9).reshape(3, 3), auc(w[b]))
        for m in metrics.CI_METRICS:
            assert stacked[m][b] == pytest.approx(one[m], nan_ok=True), m


def test_by_magnification_pools_each_magnification(tmp_path):
    frames = never_adenosis_folds()
    for i, (_, df, _) in enumerate(frames):
        df["magnification"] = np.where(np.arange(len(df)) % 2, "400X", "40X")
    result = pooled.pooled_metrics(frames, BENIGN, n_boot=20, seed=0)
    assert list(result["by_magnification"]) == ["40X", "400X"]
    forty = result["by_magnification"]["40X"]
    assert forty["n_images"] == 15 and forty["patient_level"]["mean_probability"]["balanced_accuracy"] == 0.75
    # The headline draws are kept per magnification (a mean over repeats has intervals from them);
    # each class's only for all magnifications together (the per-class table).
    assert len(forty["image_level"]["bootstrap_values"]["accuracy"]) == 20
    assert "bootstrap_values" not in forty["image_level"]["per_class"]["A"]
    assert len(result["image_level"]["per_class"]["A"]["bootstrap_values"]["auc"]) == 20


def test_pooled_file_writes_meta_and_refuses_a_fold_twice(tmp_path):
    paths = []
    for fold, df, _ in never_adenosis_folds():
        paths.append(tmp_path / "p" / f"fold{fold}.parquet")
        paths[-1].parent.mkdir(exist_ok=True)
        df.to_parquet(paths[-1])
    pd.DataFrame({"path": ["x"], "patient": ["x"]}).to_parquet(tmp_path / "manifest.parquet")
    out = tmp_path / "pooled.json"
    pooled.pooled_file(paths, BENIGN, out, "benign_subtypes", "resnet_small", tmp_path / "manifest.parquet", "all",
                       n_boot=10, seed=0)
    saved = json.loads(out.read_text())
    assert saved["meta"]["folds"] == [0, 1, 2, 3, 4] and saved["meta"]["task"] == "benign_subtypes"
    assert saved["meta"]["grouping"] == "patient" and len(saved["meta"]["test_images_sha256"]) == 64
    assert saved["test_patients"][:2] == ["f0A", "f0F"]
    with pytest.raises(UserError, match="a fold is given twice"):
        pooled.pooled_file(paths + paths[:1], BENIGN, out, "benign_subtypes", "resnet_small",
                           tmp_path / "manifest.parquet", "all", n_boot=0, seed=0)
    with pytest.raises(UserError, match="does not end in fold"):
        pooled.pooled_file([tmp_path / "manifest.parquet"], BENIGN, out, "benign_subtypes", "resnet_small",
                           tmp_path / "manifest.parquet", "all", n_boot=0, seed=0)


def test_image_copies_count_as_the_images_tested():
    """Augment-then-split predictions (issue 23.5): a row per copy of a path; each copy is an image
    tested, and the digest that tells runs' test images apart names the copies."""
    df = predictions([("p0", "benign", "benign", 0.8), ("p1", "malignant", "malignant", 0.8)])
    copies = with_copies(df)
    result = pooled.pooled_metrics([(0, copies, "copies")], BM, n_boot=0, seed=0)
    assert (result["n_images"], result["n_distinct_images"], result["n_patients"]) == (16, 16, 2)
    assert pooled.tested_images(copies)[:3] == ["p0/0.png@original", "p0/0.png@rot90", "p0/0.png@rot180"]
    assert pooled.tested_images(df) == ["p0/0.png", "p1/1.png"]
    assert pooled.images_digest([(0, copies, "x")]) != pooled.images_digest([(0, df, "x")])
