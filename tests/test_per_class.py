"""deepbc.results.per_class: per class, the pooled patients, images, sensitivity, precision and AUC."""

import pandas as pd
import pytest

from deepbc.jobs.errors import UserError
from deepbc.results import per_class, tables
from tests.resultkit import binary_fold, results, run_results
from tests.test_pooled import BENIGN, never_adenosis_folds


def test_per_class_rows_counts_and_intervals(tmp_path):
    ms, ps = results(run_results("benign_subtypes", {f: df for f, df, _ in never_adenosis_folds()},
                                 classes=BENIGN, n_boot=50))
    t = per_class.per_class_table(ps, "benign_subtypes")
    assert list(t["class"]) == BENIGN
    a = t.set_index("class").loc["A"]
    assert (a["n_patients"], a["n_images"]) == (2, 4)
    assert a["patient_sensitivity"] == 0 and (a["patient_sensitivity_k"], a["patient_sensitivity_n"]) == (0, 2)
    assert a["patient_sensitivity_ci_high"] == pytest.approx(0.6576, abs=1e-4)  # Wilson 0/2
    assert pd.isna(a["patient_precision"])  # nothing was called adenosis
    f = t.set_index("class").loc["F"]
    # Fibroadenoma: its 5 patients right, and the 2 adenosis patients called it: precision 5/7.
    assert (f["patient_precision_k"], f["patient_precision_n"]) == (5, 7)
    assert f["image_sensitivity_ci_method"] == "bootstrap"
    per_class.write_per_class_table(t, tmp_path / "p.csv", tmp_path / "p.md")
    md = (tmp_path / "p.md").read_text()
    assert "| resnet_small | patient-wise | internal (held-out folds) | A | 2 | 4 | 0.000 [0.000, 0.658] (0/2) | – |" in md
    assert "0.714 [0.359, 0.918] (5/7)" in md and "Wilson score interval" in md
    assert len(pd.read_csv(tmp_path / "p.csv")) == 4


def test_two_classes_share_the_task_auc():
    _, ps = results(run_results("benign_vs_malignant", {0: binary_fold("a", 6, 1)}, n_boot=20))
    t = per_class.per_class_table(ps, "benign_vs_malignant").set_index("class")
    block = ps[0]["patient_level"]["mean_probability"]
    assert t.loc["benign", "patient_auc"] == t.loc["malignant", "patient_auc"] == block["auc"]
    assert [t.loc["benign", "patient_auc_ci_low"], t.loc["benign", "patient_auc_ci_high"]] == block["ci95"]["auc"]


def test_no_pooled_metrics_of_the_task():
    _, ps = results(run_results("benign_vs_malignant", {0: binary_fold("a", 4)}))
    with pytest.raises(UserError, match="no pooled metrics of task 'cancer_types'"):
        per_class.per_class_table(ps, "cancer_types")
    assert tables.ZERO_WIDTH in tables.ZERO_WIDTH_NOTE
