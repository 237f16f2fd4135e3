"""deepbc.evaluation.metrics against cases computed by hand, and the patient bootstrap."""

import json

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from deepbc.evaluation import metrics
from deepbc.jobs.errors import UserError

BM = ["benign", "malignant"]


def frame(rows, classes):
    """rows: (patient, label, [probabilities]); pred = arg-max, as deepbc.evaluation.evaluate writes it."""
    out = pd.DataFrame({
        "path": [f"img{i}.png" for i in range(len(rows))],
        "patient": [r[0] for r in rows],
        "label": [r[1] for r in rows],
    })
    prob = np.array([r[2] for r in rows], dtype=float)
    for j, c in enumerate(classes):
        out[f"prob_{c}"] = prob[:, j]
    out["label_index"] = [classes.index(r[1]) for r in rows]
    out["pred_index"] = prob.argmax(axis=1)
    out["pred"] = [classes[i] for i in out["pred_index"]]
    return out


def binary_case():
    # P(malignant) per image; benign patients P1, P4, malignant P2, P3.
    rows = [("P1", "benign", 0.2), ("P1", "benign", 0.3), ("P1", "benign", 0.9),
            ("P2", "malignant", 0.8), ("P2", "malignant", 0.4),
            ("P3", "malignant", 0.6),
            ("P4", "benign", 0.7), ("P4", "benign", 0.6)]
    return frame([(p, lab, [1 - m, m]) for p, lab, m in rows], BM)


def test_binary_image_level_by_hand():
    m = metrics.compute_metrics(binary_case(), BM, n_boot=0)
    img = m["image_level"]
    # True benign: 2 right (0.2, 0.3), 3 called malignant; true malignant: 2 right, 1 (0.4) missed.
    assert img["confusion_matrix"]["matrix"] == [[2, 3], [1, 2]]
    assert img["accuracy"] == pytest.approx(4 / 8)
    assert img["sensitivity"] == pytest.approx(2 / 3)
    assert img["specificity"] == pytest.approx(2 / 5)
    assert img["balanced_accuracy"] == pytest.approx((2 / 3 + 2 / 5) / 2)
    assert (img["fp"], img["fn"]) == (3, 1)
    assert img["per_class"]["malignant"]["precision"] == pytest.approx(2 / 5)
    assert img["per_class"]["malignant"]["f1"] == pytest.approx(0.5)
    # Pairs (malignant, benign) ranked right: 0.8 beats 4, 0.4 beats 2, 0.6 beats 2 and ties 1.
    assert img["auc"] == pytest.approx(8.5 / 15)
    assert m["positive_class"] == "malignant"
    assert (m["n_images"], m["n_patients"]) == (8, 4)
    assert m["class_counts"]["images"] == {"benign": 5, "malignant": 3}


def test_binary_patient_level_differs_from_image_level():
    m = metrics.compute_metrics(binary_case(), BM, n_boot=0)
    mean = m["patient_level"]["mean_probability"]
    # Mean P(malignant): P1 0.467 (benign, right), P2 0.6, P3 0.6 (right), P4 0.65 (wrong: FP).
    assert mean["confusion_matrix"]["matrix"] == [[1, 1], [0, 2]]
    assert mean["accuracy"] == pytest.approx(0.75) != m["image_level"]["accuracy"]
    assert (mean["fp"], mean["fn"]) == (1, 0)
    assert mean["auc"] == pytest.approx(0.5)
    vote = m["patient_level"]["majority_vote"]
    # P2 has one vote each: the tie goes to the higher mean probability, malignant (0.6).
    assert vote["confusion_matrix"]["matrix"] == [[1, 1], [0, 2]]
    # Vote shares of malignant: P1 1/3, P2 1/2 | P3 1, P4 1 -> 2.5 of 4 pairs ranked right.
    assert vote["auc"] == pytest.approx(2.5 / 4)


def test_vote_tie_with_equal_mean_goes_to_first_class():
    df = frame([("P1", "malignant", [0.25, 0.75]), ("P1", "malignant", [0.75, 0.25]),
                ("P2", "benign", [0.9, 0.1])], BM)
    m = metrics.compute_metrics(df, BM, n_boot=0)
    table = metrics.patient_table(df, BM)
    assert table.set_index("patient").loc["P1", "pred_vote"] == "benign"
    assert table.set_index("patient").loc["P1", "pred"] == "benign"  # arg-max tie: first class
    assert m["patient_level"]["majority_vote"]["fn"] == 1


ABC = ["a", "b", "c"]


def three_class_case():
    return frame([("Q1", "a", [0.6, 0.3, 0.1]), ("Q1", "a", [0.2, 0.5, 0.3]),
                  ("Q2", "b", [0.1, 0.8, 0.1]), ("Q2", "b", [0.3, 0.4, 0.3]),
                  ("Q3", "c", [0.5, 0.2, 0.3]), ("Q3", "c", [0.1, 0.2, 0.7])], ABC)


def test_three_classes_by_hand():
    m = metrics.compute_metrics(three_class_case(), ABC, n_boot=0)
    img = m["image_level"]
    assert img["confusion_matrix"]["matrix"] == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    assert img["accuracy"] == pytest.approx(4 / 6)
    assert img["balanced_accuracy"] == pytest.approx((0.5 + 1 + 0.5) / 3)
    spec = {c: img["per_class"][c]["specificity"] for c in ABC}
    assert spec == pytest.approx({"a": 3 / 4, "b": 3 / 4, "c": 1.0})
    assert img["specificity"] == pytest.approx(2.5 / 3)
    # One-vs-rest: each error is an FP of one class and an FN of another.
    assert [img["per_class"][c]["fp"] for c in ABC] == [1, 1, 0]
    assert [img["per_class"][c]["fn"] for c in ABC] == [1, 0, 1]
    assert (img["fp"], img["fn"]) == (2, 2)
    assert img["per_class"]["b"]["precision"] == pytest.approx(2 / 3)
    aucs = {c: img["per_class"][c]["auc"] for c in ABC}
    assert aucs == pytest.approx({"a": 6 / 8, "b": 7 / 8, "c": 7 / 8})
    assert img["auc"] == pytest.approx(2.5 / 3)
    assert img["auc_absent_classes"] == []
    # Patient means: Q1 (0.4, 0.4, 0.2) -> a, Q2 -> b, Q3 (0.3, 0.2, 0.5) -> c: all right.
    pat = m["patient_level"]["mean_probability"]
    assert pat["accuracy"] == pytest.approx(1.0)
    assert pat["auc"] == pytest.approx(1.0)


def test_absent_class_auc_over_present_classes():
    df = three_class_case()
    df = df[df["label"] != "c"]
    m = metrics.compute_metrics(df, ABC, n_boot=0)
    img = m["image_level"]
    assert img["auc_classes"] == ["a", "b"]
    assert img["auc_absent_classes"] == ["c"]
    assert img["per_class"]["c"]["sensitivity"] is None
    expected = np.mean([roc_auc_score(df["label"] == c, df[f"prob_{c}"]) for c in ("a", "b")])
    assert img["auc"] == pytest.approx(expected)


def test_patient_with_two_classes_counts_once_per_class():
    # BreakHis 14-29960 carries adenosis and fibroadenoma slides under one numeric id.
    df = frame([("14-29960", "a", [0.8, 0.1, 0.1]), ("14-29960", "b", [0.1, 0.8, 0.1]),
                ("X", "c", [0.1, 0.1, 0.8])], ABC)
    m = metrics.compute_metrics(df, ABC, n_boot=50, seed=1)
    assert (m["n_patients"], m["n_patient_units"], m["n_patients_with_several_classes"]) == (2, 3, 1)
    assert m["patient_level"]["mean_probability"]["accuracy"] == 1.0


def test_bootstrap_moves_in_patient_sized_steps(monkeypatch):
    # A: three images, all right; B: one image, wrong. Resampling patients, a draw's image-level
    # accuracy can only be 1 (A, A), 3/4 (A, B) or 0 (B, B).
    df = frame([("A", "benign", [0.9, 0.1])] * 3 + [("B", "malignant", [0.8, 0.2])], BM)
    seen = []

    def fixed_draws(rng, n_patients, n_boot):
        seen.append((n_patients, n_boot))
        return np.array([[0, 0], [0, 1], [1, 1]])

    monkeypatch.setattr(metrics, "draw_patients", fixed_draws)
    m = metrics.compute_metrics(df, BM, n_boot=3, seed=0)
    assert seen == [(2, 3)]  # patients are drawn, not the four images
    # Percentiles 2.5 and 97.5 of {0, 0.75, 1}, linearly interpolated.
    assert m["image_level"]["ci95"]["accuracy"] == pytest.approx([0.0375, 0.9875])
    assert m["patient_level"]["mean_probability"]["ci95"]["accuracy"] == pytest.approx(
        [0.025, 0.975])
    assert m["bootstrap"]["n_boot"] == 3


def test_patient_recognition_rate_by_hand(monkeypatch):
    # Images right per patient: P1 2 of 3, P2 1 of 2, P3 1 of 1, P4 0 of 2.
    draws = np.array([[0, 0, 2, 3], [0, 1, 2, 3]])  # P1 twice with P3 and P4; each once
    monkeypatch.setattr(metrics, "draw_patients", lambda rng, n, b: draws)
    m = metrics.compute_metrics(binary_case(), BM, n_boot=2, seed=0)
    image = m["image_level"]
    assert image["patient_recognition_rate"] == pytest.approx((2 / 3 + 1 / 2 + 1 + 0) / 4)
    assert image["accuracy"] == pytest.approx(4 / 8)  # each image once: not the same figure
    # A patient drawn twice counts twice: (2 * 2/3 + 1 + 0) / 4.
    assert image["bootstrap_values"]["patient_recognition_rate"] == pytest.approx(
        [7 / 12, 13 / 24], abs=1e-6)
    assert "patient_recognition_rate" not in m["patient_level"]["mean_probability"]


def test_brier_and_ece_by_hand():
    m = metrics.compute_metrics(binary_case(), BM, n_boot=0)
    image, patient = m["image_level"], m["patient_level"]["mean_probability"]
    # Brier: sum over both classes of (p - truth)^2 = 2 (1 - p_true)^2; p_true per image:
    # 0.8 0.7 0.1 | 0.8 0.4 | 0.6 | 0.3 0.4.
    assert image["brier"] == pytest.approx(2 * (0.04 + 0.09 + 0.81 + 0.04 + 0.36 + 0.16 + 0.49
                                                 + 0.36) / 8)
    # ECE, 15 bins of the confidence: (11/15, 12/15] holds 0.8 right twice (gap +0.4);
    # (10/15, 11/15] 0.7 right and 0.7 wrong (+0.3 - 0.7: they partly cancel); (13/15, 14/15]
    # 0.9 wrong (-0.9); (8/15, 9/15] 0.6 wrong, right, wrong (-0.8).
    assert image["ece"] == pytest.approx((0.4 + 0.4 + 0.9 + 0.8) / 8)
    # Patients (mean probability of the true class): P1 0.5333 and P2, P3 0.6 right, P4 0.35
    # wrong (confidence 0.65).
    assert patient["brier"] == pytest.approx(
        2 * ((1 - 1.6 / 3) ** 2 + 0.4 ** 2 + 0.4 ** 2 + 0.65 ** 2) / 4)
    assert patient["ece"] == pytest.approx(((1 - 1.6 / 3) + 0.4 + 0.4 + 0.65) / 4)
    # Perfectly confident and right: both are 0.
    sure = metrics.compute_metrics(frame([("A", "benign", [1.0, 0.0]),
                                          ("B", "malignant", [0.0, 1.0])], BM), BM, n_boot=0)
    assert sure["image_level"]["ece"] == 0 and sure["image_level"]["brier"] == 0


def test_by_magnification_splits_the_test_images():
    df = binary_case().assign(magnification=["40X", "100X", "40X", "40X", "100X", "100X", "40X",
                                             "100X"])
    m = metrics.by_magnification(df, BM, n_boot=10, seed=0)
    assert list(m) == ["40X", "100X"]  # in the order of magnification, not of the text
    # 40X: P1 0.2, 0.9 (1 of 2 right), P2 0.8 (right), P4 0.7 (wrong).
    assert m["40X"]["n_images"] == 4 and m["40X"]["n_patients"] == 3
    assert m["40X"]["image_level"]["patient_recognition_rate"] == pytest.approx((0.5 + 1 + 0) / 3)
    assert set(m["40X"]["image_level"]["bootstrap_values"]) == {
        "accuracy", "patient_recognition_rate", "auc"}
    assert len(m["40X"]["patient_level"]["mean_probability"]["bootstrap_values"]["accuracy"]) == 10
    # With one magnification, its lean bootstrap gives the full bootstrap's intervals.
    one = metrics.by_magnification(df.assign(magnification="200X"), BM, n_boot=50, seed=3,
                                   stream=2)["200X"]
    full = metrics.compute_metrics(df, BM, n_boot=50, seed=3, stream=2)
    for level, block in (("image_level", full["image_level"]),
                         ("patient_level", full["patient_level"]["mean_probability"])):
        mine = one["image_level"] if level == "image_level" else one["patient_level"]["mean_probability"]
        for name, ci in mine["ci95"].items():
            assert ci == pytest.approx(block["ci95"][name]), (level, name)
    # A folder dataset's predictions have no magnification.
    assert metrics.by_magnification(df.assign(magnification="NA"), BM, n_boot=0) == {}


def test_bootstrap_with_the_real_generator_resamples_patients():
    df = frame([("A", "benign", [0.9, 0.1])] * 3 + [("B", "malignant", [0.8, 0.2])], BM)
    m = metrics.compute_metrics(df, BM, n_boot=400, seed=3)
    img = m["image_level"]
    # Both (B, B) and (A, A) are drawn a quarter of the time: the CI spans [0, 1]. Resampling
    # images instead would almost never draw four times the one wrong image.
    assert img["ci95"]["accuracy"] == [0.0, 1.0]
    # AUC is defined only in draws holding both patients (about half of them).
    assert 120 < img["ci_n_valid"]["auc"] < 280
    assert m["bootstrap"] == {"n_boot": 400, "seed": 3, "stream": 0, "unit": "patient",
                              "confidence": 0.95, "method": "percentile"}


def test_kept_draws_give_the_ci_and_folds_draw_independently():
    df = binary_case()
    m = metrics.compute_metrics(df, BM, n_boot=200, seed=5)
    draws = m["patient_level"]["mean_probability"]["bootstrap_values"]
    assert set(draws) == {*metrics.KEPT_DRAWS, "ece", "brier"} and len(draws["accuracy"]) == 200
    acc = np.array(draws["accuracy"])
    assert m["patient_level"]["mean_probability"]["ci95"]["accuracy"] == pytest.approx(
        list(np.percentile(acc, [2.5, 97.5])), abs=1e-6)
    # Same seed, another fold: other draws (one shared stream would pair the folds' patients).
    other = metrics.compute_metrics(df, BM, n_boot=200, seed=5, stream=1)
    assert other["image_level"]["bootstrap_values"] != m["image_level"]["bootstrap_values"]


def test_weighted_auc_matches_scikit_learn():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 60)
    score = np.round(rng.random((60, 3)), 1)  # rounded: many ties
    w = rng.integers(0, 4, 60).astype(float)
    auc = metrics._WeightedAuc(y, score, 3)(w)
    for c in range(3):
        assert auc[c] == pytest.approx(roc_auc_score(y == c, score[:, c], sample_weight=w))


def test_same_seed_same_json_and_strict_json():
    df = binary_case()
    a = json.dumps(metrics.compute_metrics(df, BM, n_boot=100, seed=5), sort_keys=True)
    b = json.dumps(metrics.compute_metrics(df, BM, n_boot=100, seed=5), sort_keys=True)
    c = json.dumps(metrics.compute_metrics(df, BM, n_boot=100, seed=6), sort_keys=True)
    assert a == b != c
    json.loads(a, parse_constant=lambda name: pytest.fail(f"{name} in metrics JSON"))


@pytest.mark.parametrize("sources, grouping", [
    (None, "patient"),  # BreakHis manifests have no patient_source column
    (["csv", "csv"], "patient"),
    (["image", "image"], "image"),  # a folder dataset without a patients CSV
])
def test_metrics_file_records_meta_and_grouping(tmp_path, sources, grouping):
    pred = tmp_path / "fold1.parquet"
    binary_case().assign(precision="fp32").to_parquet(pred)  # what the evaluation computed in
    manifest = pd.DataFrame({"path": ["a.png", "b.png"], "patient": ["a", "b"]})
    if sources:
        manifest["patient_source"] = sources
    manifest.to_parquet(tmp_path / "manifest.parquet")
    out = tmp_path / "m" / "fold1.json"
    metrics.metrics_file(pred, BM, out, "benign_vs_malignant__image_level", "resnet_small", 1,
                         tmp_path / "manifest.parquet", "all", n_boot=20, seed=0)
    meta = json.loads(out.read_text())["meta"]
    assert meta["task"] == "benign_vs_malignant" and meta["protocol"] == "image"
    assert (meta["arch"], meta["fold"], meta["grouping"]) == ("resnet_small", 1, grouping)
    assert meta["magnification"] == "all" and meta["precision"] == "fp32"


@pytest.mark.parametrize("change, message", [
    (lambda d: d.drop(columns=["prob_malignant"]), "lack column"),
    (lambda d: d.assign(label="lobular"), "not among the classes"),
    (lambda d: d.assign(label_index=1 - d["label_index"]), "order of the classes"),
    (lambda d: d.assign(prob_benign=0.9), "not a distribution"),
    (lambda d: d.iloc[:0], "empty"),
])
def test_bad_predictions_are_user_errors(change, message):
    with pytest.raises(UserError, match=message):
        metrics.compute_metrics(change(binary_case()), BM, n_boot=0, where="p.parquet")
