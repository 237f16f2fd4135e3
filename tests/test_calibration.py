"""deepbc.results.calibration: reliability bins by hand, the reliability diagram and the calibration table."""

import numpy as np
import pandas as pd
import pytest

from deepbc.evaluation import metrics
from deepbc.jobs.errors import UserError
from deepbc.results import calibration
from tests.test_figures import assert_images, legend, write_manifest, write_predictions
from tests.test_metrics import BM, binary_case
from tests.test_tables import real_metrics


def test_reliability_bins_by_hand():
    curve, ece = calibration.reliability(binary_case(), BM)
    # Confidences 0.8 0.7 0.9 | 0.8 0.6 | 0.6 | 0.7 0.6 (see tests/test_metrics.py).
    assert list(curve["bin"]) == [8, 10, 11, 13]
    assert list(curve["n"]) == [3, 2, 2, 1]
    assert curve["accuracy"].tolist() == pytest.approx([1 / 3, 0.5, 1.0, 0.0])
    assert curve["confidence"].tolist() == pytest.approx([0.6, 0.7, 0.8, 0.9])
    # The same ECE as the metrics JSON's.
    assert ece == pytest.approx(metrics.compute_metrics(binary_case(), BM, n_boot=0)["image_level"]["ece"])


def test_reliability_diagram_is_drawn_and_stable(tmp_path):
    paths = [write_predictions(tmp_path, run, "resnet_small", f, BM)
             for run in ("benign_vs_malignant", "benign_vs_malignant__image_level") for f in range(2)]
    manifest = write_manifest(tmp_path)
    out = [tmp_path / f"c{i}.png" for i in range(2)]
    fig = calibration.plot_reliability(paths, BM, "benign_vs_malignant", manifest, out[0],
                                       tmp_path / "c.pdf")
    calibration.plot_reliability(paths, BM, "benign_vs_malignant", manifest, out[1])
    assert_images(out[0], tmp_path / "c.pdf")
    assert out[0].read_bytes() == out[1].read_bytes()
    patient_ax, image_ax = fig.axes[0], fig.axes[1]
    _, ece = calibration.reliability(pd.concat(pd.read_parquet(p) for p in paths[:2]), BM)
    assert any("resnet_small, image-level (originals split at random)" in t for t in legend(image_ax))
    assert any(t.startswith("resnet_small, patient-wise: pooled ECE") for t in legend(patient_ax))
    assert f"resnet_small, patient-wise: pooled ECE {ece:.3f}, 2 folds" in legend(image_ax)
    with pytest.raises(UserError, match="other task"):
        calibration.plot_reliability(paths, BM, "benign_subtypes", manifest)


def test_calibration_table_means_and_intervals(tmp_path):
    ms = [real_metrics("benign_vs_malignant", "resnet_small", f) for f in range(3)]
    t = calibration.calibration_table(ms)
    row = t.iloc[0]
    assert (row["task"], row["protocol"], row["n_folds"]) == ("benign_vs_malignant", "patient-wise", 3)
    assert row["image_brier_mean"] == pytest.approx(np.mean([m["image_level"]["brier"] for m in ms]))
    patient = [m["patient_level"]["mean_probability"] for m in ms]
    assert row["patient_ece_mean"] == pytest.approx(np.mean([p["ece"] for p in patient]))
    draws = np.array([p["bootstrap_values"]["ece"] for p in patient])
    assert row["patient_ece_ci_high"] == pytest.approx(np.percentile(draws.mean(axis=0), 97.5))
    calibration.write_calibration_table(t, tmp_path / "c.csv", tmp_path / "c.md", tmp_path / "c.tex")
    md = (tmp_path / "c.md").read_text()
    assert "| image ECE | image Brier | patient ECE | patient Brier |" in md
    assert "15 equal-width bins" in md


def test_calibration_table_and_diagram_mark_an_external_test(tmp_path):
    ms = [real_metrics("benign_vs_malignant", "resnet_small", f) for f in range(3)]
    for m in ms:
        m["meta"]["test_dataset"] = "site_b"
    t = calibration.calibration_table(ms)
    assert t["test"].tolist() == ["external: site_b"] and t["n_patients"].tolist() == [ms[0]["n_patients"]]
    calibration.write_calibration_table(t, out_md=tmp_path / "c.md")
    assert "| benign_vs_malignant | external: site_b |" in (tmp_path / "c.md").read_text()
    paths = [write_predictions(tmp_path, "benign_vs_malignant", "resnet_small", f, BM) for f in range(2)]
    fig = calibration.plot_reliability(paths, BM, "benign_vs_malignant", write_manifest(tmp_path),
                                       test_dataset="site_b")
    assert "external test: site_b" in fig._suptitle.get_text()


def overconfident(n, temperature, seed):
    """Predictions whose labels follow softmax(z) but whose probabilities are softmax(z * T)."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 1.5, size=(n, 2))
    truth = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    y = (rng.random(n) < truth[:, 1]).astype(int)
    prob = np.exp(z * temperature) / np.exp(z * temperature).sum(axis=1, keepdims=True)
    return pd.DataFrame({"patient": [f"s{seed}p{i % 20}" for i in range(n)],
                         "label": [BM[i] for i in y], "prob_benign": prob[:, 0],
                         "prob_malignant": prob[:, 1], "pred": [BM[i] for i in prob.argmax(axis=1)]})


def test_temperature_recovers_the_overconfidence():
    val = overconfident(4000, 2.5, seed=1)
    y = (val["label"] == "malignant").to_numpy().astype(int)
    t = metrics.fit_temperature(val[["prob_benign", "prob_malignant"]].to_numpy(), y)
    assert t == pytest.approx(2.5, rel=0.1)
    # Scaling by T undoes it: softmax(log softmax(2.5 z) / 2.5) = softmax(z).
    scaled = metrics.apply_temperature(val[["prob_benign", "prob_malignant"]].to_numpy(), 2.5)
    assert scaled.sum(axis=1) == pytest.approx(1)
    assert scaled.max(axis=1).mean() < val[["prob_benign", "prob_malignant"]].max(axis=1).mean()


def test_temperature_is_fitted_on_validation_only():
    test, val = overconfident(400, 3.0, seed=2), overconfident(400, 3.0, seed=3)
    out = metrics.temperature_scaling(test, val, BM, n_boot=20, seed=0, where="p", stream=0)
    y_val = (val["label"] == "malignant").to_numpy().astype(int)
    assert out["temperature"] == metrics.fit_temperature(
        val[["prob_benign", "prob_malignant"]].to_numpy(), y_val)
    # Another test set, same validation: same temperature (the test labels play no part).
    other = metrics.temperature_scaling(overconfident(400, 1.0, seed=4), val, BM, n_boot=0,
                                        seed=0, where="p", stream=0)
    assert other["temperature"] == out["temperature"]
    before = metrics.compute_metrics(test, BM, n_boot=0)["image_level"]
    after = out["image_level"]
    assert after["ece"] < before["ece"] and after["brier"] < before["brier"]
    assert after["accuracy"] == before["accuracy"]  # T > 0 keeps every image's arg-max
    assert len(after["bootstrap_values"]["ece"]) == 20


def test_calibration_table_shows_the_scaled_figures_beside(tmp_path):
    ms = [real_metrics("benign_vs_malignant", "resnet_small", f) for f in range(2)]
    for f, m in enumerate(ms):
        test, val = overconfident(60, 3.0, seed=10 + f), overconfident(200, 3.0, seed=20 + f)
        m["temperature_scaling"] = metrics.temperature_scaling(test, val, BM, n_boot=0, seed=0,
                                                               where="p", stream=f)
    row = calibration.calibration_table(ms).iloc[0]
    temps = [m["temperature_scaling"]["temperature"] for m in ms]
    assert row["temperature_mean"] == pytest.approx(np.mean(temps))
    assert row["scaled_image_ece_mean"] == pytest.approx(
        np.mean([m["temperature_scaling"]["image_level"]["ece"] for m in ms]))
    assert np.isnan(row["scaled_image_ece_ci_low"])  # no bootstrap draws given
    calibration.write_calibration_table(calibration.calibration_table(ms), out_md=tmp_path / "c.md")
    md = (tmp_path / "c.md").read_text()
    assert "| temperature | scaled image ECE |" in md and "never on test" in md


def test_the_scaled_figures_say_what_t_was_fitted_on_and_what_was_scaled(tmp_path):
    """T is fitted on the validation patients that also chose the checkpoint, on image
    probabilities, and the scaled patient figures are of the mean of scaled image probabilities:
    the table and the metrics JSON now say so where the scaled figures are."""
    ms = [real_metrics("benign_vs_malignant", "resnet_small", 0)]
    test, val = overconfident(60, 3.0, seed=10), overconfident(200, 3.0, seed=20)
    ms[0]["temperature_scaling"] = metrics.temperature_scaling(test, val, BM, n_boot=0, seed=0, where="p", stream=0)
    assert ms[0]["temperature_scaling"]["n_validation_patients"] == 20
    calibration.write_calibration_table(calibration.calibration_table(ms), out_md=tmp_path / "c.md")
    for text in ((tmp_path / "c.md").read_text(),
                 metrics.compute_metrics(test, BM, n_boot=0)["conventions"]["temperature_scaling"]):
        text = " ".join(text.split())
        assert "the validation patients that also chose the kept checkpoint" in text
        assert "Scaled patient level: the mean of a patient's temperature-scaled image probabilities" in text
