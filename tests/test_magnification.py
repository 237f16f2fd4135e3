"""deepbc.results.magnification: the per-magnification BreakHis table from small metrics of fake predictions."""

import pandas as pd
import pytest

from deepbc.evaluation import metrics
from deepbc.jobs.atomic import write_json
from deepbc.jobs.errors import UserError
from deepbc.results import magnification
from deepbc.results.tables import recompute

BM = ["benign", "malignant"]
MAGS = ["40X", "100X", "200X", "400X"]


def fold_metrics(task, fold, trained_on, mags, protocol="patient", n_boot=50):
    """Metrics of a fold's predictions: 6 patients, 2 images per magnification each; the model
    is wrong on every 400X image of the first patient."""
    rows = []
    for p in range(6):
        for mag in mags:
            for i in range(2):
                label = p % 2
                p_mal = 0.8 if label else 0.2
                if p == 0 and mag == "400X":
                    p_mal = 0.9
                rows.append({"patient": f"f{fold}p{p}", "label": BM[label], "magnification": mag,
                             "prob_benign": 1 - p_mal, "prob_malignant": p_mal,
                             "pred": BM[int(p_mal > 0.5)]})
    df = pd.DataFrame(rows)
    m = metrics.compute_metrics(df, BM, n_boot=n_boot, seed=0, stream=fold)
    m["by_magnification"] = metrics.by_magnification(df, BM, n_boot=n_boot, seed=0, stream=fold)
    run = task if protocol == "patient" else f"{task}__image_level"
    m["meta"] = {"run": run, "task": task, "protocol": protocol, "grouping": "patient",
                 "arch": "resnet_small", "fold": fold, "magnification": trained_on}
    return m


def test_rows_per_trained_and_tested_magnification(tmp_path):
    ms = [fold_metrics("benign_vs_malignant", f, "all", MAGS) for f in range(2)]
    ms += [fold_metrics("benign_vs_malignant_400X", f, "400X", ["400X"]) for f in range(2)]
    ms += [fold_metrics("benign_vs_malignant", f, "all", MAGS, protocol="image") for f in range(2)]
    t = magnification.magnification_table(ms)
    # The image-level protocol is left out; the 400X-only task sits beside the all-magnification
    # model's 400X row.
    assert list(zip(t["task"], t["trained_on"], t["tested_on"])) == [
        ("benign_vs_malignant", "all", "40X"), ("benign_vs_malignant", "all", "100X"),
        ("benign_vs_malignant", "all", "200X"), ("benign_vs_malignant", "all", "400X"),
        ("benign_vs_malignant_400X", "400X", "400X")]
    r400 = t[(t["tested_on"] == "400X") & (t["trained_on"] == "all")].iloc[0]
    # At 400X patient 0's 2 images are wrong: image accuracy 10/12, recognition rate 5/6; its
    # mean probability is wrong too: patient accuracy 5/6.
    assert r400["image_accuracy_mean"] == pytest.approx(10 / 12)
    assert r400["image_patient_recognition_rate_mean"] == pytest.approx(5 / 6)
    assert r400["patient_accuracy_mean"] == pytest.approx(5 / 6)
    assert r400["n_folds"] == 2 and r400["n_images"] == 24 and r400["n_patients"] == 12
    r40 = t[t["tested_on"] == "40X"].iloc[0]
    assert r40["image_accuracy_mean"] == 1 and r40["patient_accuracy_mean"] == 1
    # The interval comes from the per-magnification bootstrap draws.
    assert r400["image_patient_recognition_rate_ci_low"] < 5 / 6 <= r400[
        "image_patient_recognition_rate_ci_high"]
    magnification.write_magnification_table(t, tmp_path / "m.csv", tmp_path / "m.md", tmp_path / "m.tex")
    md = (tmp_path / "m.md").read_text()
    assert "| benign_vs_malignant_400X | internal (held-out folds) | 400X | 400X | resnet_small | 2 |" in md
    assert "patient recognition rate" in md and "folder datasets have no magnification" in md
    assert "tested on the same patients as the all-magnification row above it" in md
    assert "count 82 patients, the dataset's slide folders" in md and "the 82 folders carry 70" in md
    assert pd.read_csv(tmp_path / "m.csv").shape[0] == 5


def test_folder_datasets_give_an_empty_table(tmp_path):
    m = fold_metrics("cancer_types", 0, "all", MAGS, n_boot=0)
    m["by_magnification"] = {}  # a folder dataset's predictions carry magnification "NA"
    t = magnification.magnification_table([m])
    assert t.empty
    magnification.write_magnification_table(t, tmp_path / "m.csv", tmp_path / "m.md")
    assert "nothing to show" in (tmp_path / "m.md").read_text()


def test_old_metrics_json_is_a_user_error_naming_the_file(tmp_path):
    m = fold_metrics("benign_vs_malignant", 0, "all", MAGS, n_boot=0)
    del m["meta"]["magnification"]
    with pytest.raises(UserError, match="what to do: pass the metrics that deepbc.evaluation.metrics.metrics_file writes"):
        magnification.magnification_table([m])
    # From a file: the file to delete, which the workflow then computes again (tests/test_recovery.py).
    path = tmp_path / "fold0.json"
    write_json(path, m)
    with pytest.raises(UserError) as err:
        magnification.magnification_table([str(path)])
    assert err.value.where == str(path) and err.value.fix == recompute(str(path))
    assert err.value.fix.startswith(f"delete {path} and rerun the same snakemake command")


def test_one_magnification_rows_sit_below_the_all_row_of_their_magnification():
    # A text sort of the task names put "_40X" after "_400X", away from the 40X rows.
    ms = [fold_metrics("bm", 0, "all", MAGS, n_boot=0), fold_metrics("bm_400X", 0, "400X", ["400X"], n_boot=0),
          fold_metrics("bm_40X", 0, "40X", ["40X"], n_boot=0)]
    t = magnification.magnification_table(ms)
    assert list(zip(t["trained_on"], t["tested_on"])) == [
        ("all", "40X"), ("40X", "40X"), ("all", "100X"), ("all", "200X"), ("all", "400X"), ("400X", "400X")]


def test_external_test_is_marked_and_counted_once(tmp_path):
    ms = [fold_metrics("bm", f, "all", ["40X"], n_boot=0) for f in range(3)]
    for m in ms:
        m["meta"]["test_dataset"] = "site_b"
    t = magnification.magnification_table(ms)
    assert (t["test"].tolist(), t["n_patients"].tolist()) == (["external: site_b"], [6])
    magnification.write_magnification_table(t, out_md=tmp_path / "m.md")
    assert "| bm | external: site_b | all | 40X |" in (tmp_path / "m.md").read_text()


def test_an_external_table_with_intervals_says_how_they_were_computed(tmp_path):
    ms = [fold_metrics("bm", f, "all", ["40X"], n_boot=20) for f in range(2)]
    for m in ms:
        m["meta"]["test_dataset"] = "site_b"
    magnification.write_magnification_table(magnification.magnification_table(ms), out_md=tmp_path / "m.md")
    text = (tmp_path / "m.md").read_text()
    assert magnification.EXTERNAL_NOTE in text and magnification.INTERVAL_NOTE in text


def test_each_rows_split_is_named_in_the_notes(tmp_path):
    """The magnification table did not say which split scheme made a row: k-fold and Spanhol's
    repeated 70/30 holdouts look alike there."""
    from deepbc.data import splits as sp
    from tests.test_splits import _tiny, _tiny_task
    from deepbc.data import tasks
    from tests import trainkit

    ms = []
    for task, settings in (("benign_vs_malignant", trainkit.split_settings(k=2)),
                           ("benign_vs_malignant_400X_spanhol",
                            trainkit.split_settings(scheme="repeated_holdout", repeats=2))):
        table = sp.split_by_settings(tasks.select(_tiny(), _tiny_task()), settings, 0, "patient")
        paths = [tmp_path / f"{task}.audit.{ext}" for ext in ("json", "csv", "md")]
        sp.write_audit(*sp.audit(table, settings, "patient", task), *paths)
        trained_on = "all" if task == "benign_vs_malignant" else "400X"
        for fold in range(2):
            m = fold_metrics(task, fold, trained_on, MAGS if trained_on == "all" else ["400X"])
            m["meta"]["split"] = metrics.split_meta(paths[0], fold)
            ms.append(m)
    t = magnification.magnification_table(ms)
    magnification.write_magnification_table(t, out_md=tmp_path / "m.md")
    md = (tmp_path / "m.md").read_text()
    assert ("Split of benign_vs_malignant: 2-fold patient-wise cross-validation: mean ± sample sd over the test "
            "folds") in md
    assert ("Split of benign_vs_malignant_400X_spanhol: 2 repeated patient-wise 70/30 holdouts: mean ± sample sd "
            "over the repeats") in md
