"""deepbc.results.magnification: the per-magnification BreakHis table from small metrics of fake predictions."""

import pandas as pd
import pytest

from deepbc.jobs.atomic import write_json
from deepbc.jobs.errors import UserError
from deepbc.results import magnification
from deepbc.results.tables import recompute
from tests.resultkit import results, run_results

BM = ["benign", "malignant"]
MAGS = ["40X", "100X", "200X", "400X"]


def fold_predictions(fold, mags):
    """A fold's predictions: 6 patients, 2 images per magnification each; the model is wrong on
    every 400X image of the first patient."""
    rows = []
    for p in range(6):
        for mag in mags:
            for i in range(2):
                label = p % 2
                p_mal = 0.8 if label else 0.2
                if p == 0 and mag == "400X":
                    p_mal = 0.9
                rows.append({"path": f"f{fold}p{p}/{mag}_{i}.png", "patient": f"f{fold}p{p}", "label": BM[label],
                             "magnification": mag, "prob_benign": 1 - p_mal, "prob_malignant": p_mal,
                             "pred": BM[int(p_mal > 0.5)]})
    return pd.DataFrame(rows)


def task_results(task, trained_on, mags, folds=(0, 1), protocol="patient", n_boot=50, test_dataset=None):
    """Per-fold and pooled metrics of a task's folds (``fold_predictions``)."""
    return run_results(task, {f: fold_predictions(f, mags) for f in folds}, protocol=protocol,
                       magnification=trained_on, n_boot=n_boot, test_dataset=test_dataset)


def test_rows_per_trained_and_tested_magnification(tmp_path):
    ms, ps = results(task_results("benign_vs_malignant", "all", MAGS),
                     task_results("benign_vs_malignant_400X", "400X", ["400X"]),
                     task_results("benign_vs_malignant", "all", MAGS, protocol="image"))
    t = magnification.magnification_table(ms, ps)
    # The image-level protocol is left out; the 400X-only task sits beside the all-magnification
    # model's 400X row.
    assert list(zip(t["task"], t["trained_on"], t["tested_on"])) == [
        ("benign_vs_malignant", "all", "40X"), ("benign_vs_malignant", "all", "100X"),
        ("benign_vs_malignant", "all", "200X"), ("benign_vs_malignant", "all", "400X"),
        ("benign_vs_malignant_400X", "400X", "400X")]
    r400 = t[(t["tested_on"] == "400X") & (t["trained_on"] == "all")].iloc[0]
    # At 400X patient 0's 2 images are wrong in each fold: image accuracy 20/24, recognition rate
    # 10/12; its mean probability is wrong too: patient accuracy 10/12, with a Wilson interval.
    assert r400["image_accuracy"] == pytest.approx(20 / 24)
    assert r400["image_patient_recognition_rate"] == pytest.approx(10 / 12)
    assert r400["patient_accuracy"] == pytest.approx(10 / 12)
    assert (r400["patient_accuracy_k"], r400["patient_accuracy_n"], r400["patient_accuracy_ci_method"]) == (
        10, 12, "wilson")
    assert r400["image_patient_recognition_rate_mean"] == pytest.approx(5 / 6)  # per fold, CSV
    assert r400["n_folds"] == 2 and r400["n_images"] == 24 and r400["n_patients"] == 12
    r40 = t[t["tested_on"] == "40X"].iloc[0]
    assert r40["image_accuracy"] == 1 and r40["patient_accuracy"] == 1
    # The bootstrap interval comes from the pooled per-magnification draws.
    assert r400["image_patient_recognition_rate_ci_low"] < 10 / 12 <= r400[
        "image_patient_recognition_rate_ci_high"]
    magnification.write_magnification_table(t, tmp_path / "m.csv", tmp_path / "m.md", tmp_path / "m.tex")
    md = (tmp_path / "m.md").read_text()
    assert "| benign_vs_malignant_400X | internal (held-out folds) | 400X | 400X | resnet_small | 2 | 12 | 24 |" in md
    assert "0.833 [0.552, 0.953] (10/12)" in md
    assert "patient recognition rate" in md and "folder datasets have no magnification" in md
    assert "tested on the same patients as the all-magnification row above it" in md
    assert "count 82 patients, the dataset's slide folders" in md and "the 82 folders carry 70" in md
    assert pd.read_csv(tmp_path / "m.csv").shape[0] == 5


def test_folder_datasets_give_an_empty_table(tmp_path):
    ms, ps = results(task_results("cancer_types", "all", MAGS, folds=(0,), n_boot=0))
    ms[0]["by_magnification"] = {}  # a folder dataset's predictions carry magnification "NA"
    ps[0]["by_magnification"] = {}
    t = magnification.magnification_table(ms, ps)
    assert t.empty
    magnification.write_magnification_table(t, tmp_path / "m.csv", tmp_path / "m.md")
    assert "nothing to show" in (tmp_path / "m.md").read_text()


def test_old_metrics_json_is_a_user_error_naming_the_file(tmp_path):
    ms, ps = results(task_results("benign_vs_malignant", "all", MAGS, folds=(0,), n_boot=0))
    del ms[0]["meta"]["magnification"]
    with pytest.raises(UserError, match="what to do: pass the metrics that deepbc.evaluation.metrics.metrics_file writes"):
        magnification.magnification_table(ms, ps)
    # From a file: the file to delete, which the workflow then computes again (tests/test_recovery.py).
    path = tmp_path / "fold0.json"
    write_json(path, ms[0])
    with pytest.raises(UserError) as err:
        magnification.magnification_table([str(path)], ps)
    assert err.value.where == str(path) and err.value.fix == recompute(str(path))
    assert err.value.fix.startswith(f"delete {path} and rerun the same snakemake command")


def test_one_magnification_rows_sit_below_the_all_row_of_their_magnification():
    # A text sort of the task names put "_40X" after "_400X", away from the 40X rows.
    ms, ps = results(task_results("bm", "all", MAGS, folds=(0,), n_boot=0),
                     task_results("bm_400X", "400X", ["400X"], folds=(0,), n_boot=0),
                     task_results("bm_40X", "40X", ["40X"], folds=(0,), n_boot=0))
    t = magnification.magnification_table(ms, ps)
    assert list(zip(t["trained_on"], t["tested_on"])) == [
        ("all", "40X"), ("40X", "40X"), ("all", "100X"), ("all", "200X"), ("all", "400X"), ("400X", "400X")]


def test_external_test_is_marked_and_counted_once(tmp_path):
    ms, ps = run_results("bm", {f: fold_predictions(0, ["40X"]) for f in range(3)}, test_dataset="site_b")
    t = magnification.magnification_table(ms, [ps])
    assert (t["test"].tolist(), t["n_patients"].tolist()) == (["external: site_b"], [6])
    magnification.write_magnification_table(t, out_md=tmp_path / "m.md")
    text = (tmp_path / "m.md").read_text()
    assert "| bm | external: site_b | all | 40X |" in text
    assert magnification.EXTERNAL_NOTE in text and "Wilson score interval" in text


def test_each_rows_split_is_named_in_the_notes(tmp_path):
    """The magnification table did not say which split scheme made a row: k-fold and Spanhol's
    repeated 70/30 holdouts look alike there."""
    from deepbc.data import splits as sp
    from deepbc.data import tasks
    from deepbc.evaluation import metrics
    from tests import trainkit
    from tests.test_splits import _tiny, _tiny_task

    runs = []
    for task, settings in (("benign_vs_malignant", trainkit.split_settings(k=2)),
                           ("benign_vs_malignant_400X_spanhol",
                            trainkit.split_settings(scheme="repeated_holdout", repeats=2))):
        table = sp.split_by_settings(tasks.select(_tiny(), _tiny_task()), settings, 0, "patient")
        paths = [tmp_path / f"{task}.audit.{ext}" for ext in ("json", "csv", "md")]
        sp.write_audit(*sp.audit(table, settings, "patient", task), *paths)
        trained_on = "all" if task == "benign_vs_malignant" else "400X"
        fold_metrics, pooled_metrics = task_results(task, trained_on, MAGS if trained_on == "all" else ["400X"])
        for m in fold_metrics:
            m["meta"]["split"] = metrics.split_meta(paths[0], m["meta"]["fold"])
        runs.append((fold_metrics, pooled_metrics))
    t = magnification.magnification_table(*results(*runs))
    magnification.write_magnification_table(t, out_md=tmp_path / "m.md")
    md = (tmp_path / "m.md").read_text()
    assert ("Split of benign_vs_malignant: 2-fold patient-wise cross-validation: mean ± sample sd over the test "
            "folds") in md
    assert ("Split of benign_vs_malignant_400X_spanhol: 2 repeated patient-wise 70/30 holdouts: mean ± sample sd "
            "over the repeats") in md
