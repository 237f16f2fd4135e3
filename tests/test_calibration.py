"""deepbc.calibration: reliability bins by hand, the reliability diagram and the calibration table."""

import numpy as np
import pandas as pd
import pytest

from deepbc import calibration, metrics
from deepbc.errors import UserError
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
    assert any("resnet_small, image-level (preprint's split)" in t for t in legend(image_ax))
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
