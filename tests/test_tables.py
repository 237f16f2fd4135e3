"""deepbc.results.tables: task tables with the preprint's figures, summary, leakage arithmetic."""

import json
import re

import numpy as np
import pandas as pd
import pytest

from deepbc.jobs.errors import UserError
from deepbc.results import tables
from deepbc.training.model_dir import retrain


def fake(task, protocol, arch, fold, patient=None, image=None, grouping="patient"):
    """A minimal metrics dict: every table metric 0.5 unless given."""
    def block(values):
        b = {m: 0.5 for m in tables.TABLE_METRICS}
        b.update({"fp": 1, "fn": 2})
        b.update(values or {})
        return b

    run = task if protocol == "patient" else f"{task}__image_level"
    return {"meta": {"run": run, "task": task, "protocol": protocol, "grouping": grouping,
                     "arch": arch, "fold": fold},
            "image_level": block(image),
            "patient_level": {"mean_probability": block(patient), "majority_vote": block(patient)},
            "n_patients": 10, "n_images": 100}


def bvm_metrics():
    out = []
    for arch, accs in (("resnet_small", (0.8, 0.9)), ("resnet_v1_152", (0.6, 0.7))):
        for fold, acc in enumerate(accs):
            out.append(fake("benign_vs_malignant", "patient", arch, fold,
                            patient={"accuracy": acc, "balanced_accuracy": acc}))
            out.append(fake("benign_vs_malignant", "image", arch, fold,
                            patient={"accuracy": 0.9, "balanced_accuracy": 0.9},
                            image={"accuracy": 0.99, "auc": 0.999}))
    return out


def test_task_table_rows_folds_and_preprint_column():
    t = tables.task_table(bvm_metrics(), "benign_vs_malignant")
    assert list(zip(t["architecture"], t["protocol"])) == [
        ("resnet_small", "patient-wise"), ("resnet_small", "image-level (preprint's split)"),
        ("resnet_v1_152", "patient-wise"), ("resnet_v1_152", "image-level (preprint's split)")]
    row = t.iloc[0]
    assert row["n_folds"] == 2 and row["n_patients"] == 20
    assert row["patient_accuracy_mean"] == pytest.approx(0.85)
    assert row["patient_accuracy_sd"] == pytest.approx(0.0707107, abs=1e-6)
    assert row["patient_fn_mean"] == 2
    # The preprint reported 98.7% for ResNet V1 152 on this task, and nothing for resnet_small.
    assert pd.isna(row["preprint_accuracy"])
    assert list(t.loc[t["architecture"] == "resnet_v1_152", "preprint_accuracy"]) == [0.987, 0.987]
    assert t.loc[t["architecture"] == "resnet_v1_152", "preprint_auc"].isna().all()


def test_preprint_only_row_and_footnote(tmp_path):
    ms = [fake("benign_subtypes", "patient", "resnet_small", f) for f in range(3)]
    t = tables.task_table(ms, "benign_subtypes")
    extra = t[t["protocol"] == tables.PREPRINT_ONLY]
    assert list(extra["architecture"]) == ["resnet_v1_50"]
    assert extra.iloc[0]["preprint_accuracy"] == 0.948
    assert extra.iloc[0]["preprint_sensitivity"] == 0.993
    assert "Respectively" in extra.iloc[0]["preprint_note"]
    tables.write_task_table(t, tmp_path / "t.csv", tmp_path / "t.md", tmp_path / "t.tex")
    md = (tmp_path / "t.md").read_text()
    assert "| resnet_v1_50 | preprint only (not run here) |" in md
    assert "0.948 [1]" in md and "- [1] \"Respectively\"" in md
    assert "0.500 ± 0.000" in md
    assert "image-level metrics under that leakage" in md
    tex = (tmp_path / "t.tex").read_text()
    assert r"\begin{tabular}" in tex and r"0.500 $\pm$ 0.000" in tex and r"resnet\_v1\_50" in tex
    back = pd.read_csv(tmp_path / "t.csv")
    assert len(back) == 2 and "preprint_note" in back.columns


def test_task_table_is_byte_stable(tmp_path):
    for name in ("a", "b"):
        t = tables.task_table(bvm_metrics(), "benign_vs_malignant")
        tables.write_task_table(t, tmp_path / f"{name}.csv", tmp_path / f"{name}.md")
    assert (tmp_path / "a.csv").read_bytes() == (tmp_path / "b.csv").read_bytes()
    assert (tmp_path / "a.md").read_bytes() == (tmp_path / "b.md").read_bytes()


def write_model(root, run, arch, fold, val_loss, val_accuracy, kept="val_loss", best_step=20):
    """settings.json and training.csv of one kept model: evaluations at steps 10, 20 and 30, the
    figures given at ``best_step`` and worse ones elsewhere."""
    folder = root / "models" / run / arch / f"fold{fold}"
    folder.mkdir(parents=True)
    rows = []
    for step in range(1, 31):
        evaluated = step % 10 == 0
        at_best = step == best_step
        rows.append({"step": step, "stage": "all_layers", "loss": 1.0, "accuracy": 0.5,
                     "val_loss": (val_loss if at_best else val_loss + 1) if evaluated else None,
                     "val_accuracy": (val_accuracy if at_best else val_accuracy / 2) if evaluated else None})
    pd.DataFrame(rows).to_csv(folder / "training.csv", index=False)
    (folder / "settings.json").write_text(json.dumps({"kept": kept, "best_step": best_step}))
    return folder / "settings.json"


def test_summary_chooses_on_validation_not_test(tmp_path):
    # resnet_v1_152 has the better test figures, resnet_small the better validation loss: the
    # summary must report resnet_small's test figures (the old code chose on the test folds).
    task = "benign_vs_malignant"
    ms = [fake(task, "patient", "resnet_small", f, patient={"balanced_accuracy": 0.6, "auc": 0.6})
          for f in range(2)]
    ms += [fake(task, "patient", "resnet_v1_152", f, patient={"balanced_accuracy": 0.9, "auc": 0.9})
           for f in range(2)]
    models = [write_model(tmp_path, task, "resnet_small", f, 0.40 + f / 10, 0.7) for f in range(2)]
    models += [write_model(tmp_path, task, "resnet_v1_152", f, 0.55, 0.8) for f in range(2)]
    s = tables.summary_table(ms, models)
    row = s.iloc[0]
    assert row["chosen_architecture"] == "resnet_small"
    assert row["patient_balanced_accuracy_mean"] == pytest.approx(0.6)
    assert row["validation_metric"] == "val_loss"
    assert row["validation_mean"] == pytest.approx(0.45)  # the kept steps' losses, not the others
    assert row["chosen_by"].startswith("lowest validation loss")
    assert row["architectures_compared"] == 2
    tables.write_summary(s, tmp_path / "s.csv", tmp_path / "s.md")
    md = (tmp_path / "s.md").read_text()
    assert "chosen on validation data" in md and "val. loss 0.450 ± 0.071" in md


def test_summary_follows_keep_best_by_and_last(tmp_path):
    task = "benign_vs_malignant"
    ms = [fake(task, "patient", a, 0) for a in ("resnet_small", "resnet_v1_152")]
    # Kept by validation accuracy: the higher one wins although its loss is worse.
    models = [write_model(tmp_path / "acc", task, "resnet_small", 0, 0.3, 0.7, kept="val_accuracy"),
              write_model(tmp_path / "acc", task, "resnet_v1_152", 0, 0.5, 0.8, kept="val_accuracy")]
    s = tables.summary_table(ms, models)
    assert (s.iloc[0]["chosen_architecture"], s.iloc[0]["validation_metric"]) == (
        "resnet_v1_152", "val_accuracy")
    # Kept at the last step: the last evaluated row's validation loss counts (step 30 here).
    models = [write_model(tmp_path / "last", task, "resnet_small", 0, 0.3, 0.7, kept="last", best_step=30),
              write_model(tmp_path / "last", task, "resnet_v1_152", 0, 0.5, 0.8, kept="last", best_step=10)]
    s = tables.summary_table(ms, models)
    assert s.iloc[0]["chosen_architecture"] == "resnet_small"
    assert s.iloc[0]["validation_mean"] == pytest.approx(0.3)


def test_summary_leaves_out_image_level_runs_and_needs_every_model(tmp_path):
    ms = bvm_metrics() + [fake("cancer_types", "patient", "resnet_small", 0)]
    models = [write_model(tmp_path, "benign_vs_malignant", a, f, 0.5, 0.5)
              for a in ("resnet_small", "resnet_v1_152") for f in range(2)]
    with pytest.raises(UserError, match="no model settings for 1 patient-wise") as err:
        tables.summary_table(ms, models)
    assert "cancer_types/resnet_small/fold0" in str(err.value)
    models.append(write_model(tmp_path, "cancer_types", "resnet_small", 0, 0.5, 0.5))
    s = tables.summary_table(ms, models)
    assert list(s["task"]) == ["benign_vs_malignant", "cancer_types"]
    # Equal validation loss and accuracy: the architecture name decides, never the test figures.
    assert list(s["chosen_architecture"]) == ["resnet_small", "resnet_small"]
    assert s.iloc[1]["chosen_by"] == "the only architecture run"
    assert list(s["preprint_accuracy"]) == [0.987, 0.998]


def test_leakage_arithmetic(tmp_path):
    t = tables.leakage_table(bvm_metrics())
    row = t[(t["architecture"] == "resnet_v1_152") & (t["level"] == "patient")
            & (t["metric"] == "accuracy")].iloc[0]
    assert row["image_level_protocol"] == pytest.approx(0.9)
    assert row["patient_wise"] == pytest.approx(0.65)
    assert row["difference"] == pytest.approx(0.25)
    assert row["ratio"] == pytest.approx(0.9 / 0.65)
    img = t[(t["architecture"] == "resnet_small") & (t["level"] == "image") & (t["metric"] == "auc")]
    assert img.iloc[0]["difference"] == pytest.approx(0.499)
    assert len(t) == 2 * 2 * len(tables.LEAKAGE_METRICS)
    tables.write_leakage(t, tmp_path / "l.csv", tmp_path / "l.md")
    assert "+0.250" in (tmp_path / "l.md").read_text()


def test_leakage_without_both_protocols_is_empty(tmp_path):
    t = tables.leakage_table([fake("cancer_types", "patient", "resnet_small", 0)])
    assert t.empty
    tables.write_leakage(t, tmp_path / "l.csv", tmp_path / "l.md")
    assert "No task with a patient mapping ran both protocols" in (tmp_path / "l.md").read_text()
    assert (tmp_path / "l.csv").read_text().startswith("task,architecture,level,metric")


def test_image_grouped_runs_are_never_called_patient_wise(tmp_path, caplog):
    # cancer_types on a folder dataset without a patients CSV: each image is its own group.
    grouped = [fake("cancer_types", protocol, "resnet_small", f, grouping="image")
               for protocol in ("patient", "image") for f in range(2)]
    t = tables.task_table(grouped, "cancer_types")
    assert list(t["protocol"][:2]) == ["image-grouped (no patient mapping)",
                                       "image-level (preprint's split)"]
    tables.write_task_table(t, tmp_path / "t.csv", tmp_path / "t.md")
    md = (tmp_path / "t.md").read_text()
    assert "patient-wise" not in md.split("- ")[0]  # not in the rows
    assert "| image-grouped (no patient mapping) |" in md and "patients CSV" in md

    models = [write_model(tmp_path, "cancer_types", "resnet_small", f, 0.5, 0.5) for f in range(2)]
    s = tables.summary_table(grouped + bvm_metrics(), models + [
        write_model(tmp_path, "benign_vs_malignant", a, f, 0.5, 0.5)
        for a in ("resnet_small", "resnet_v1_152") for f in range(2)])
    assert list(s["split"]) == ["patient-wise", "image-grouped (no patient mapping)"]
    tables.write_summary(s, tmp_path / "s.csv", tmp_path / "s.md")
    assert "| cancer_types | image-grouped (no patient mapping) |" in (tmp_path / "s.md").read_text()

    # Both of its protocols can leak, so the leakage table leaves the task out, saying why.
    leak = tables.leakage_table(grouped + bvm_metrics())
    assert set(leak["task"]) == {"benign_vs_malignant"}
    assert "task cancer_types left out of the leakage table" in caplog.text
    tables.write_leakage(leak, tmp_path / "l.csv", tmp_path / "l.md")
    assert "Left out: cancer_types" in (tmp_path / "l.md").read_text()
    assert tables.leakage_table(grouped).empty


def real_metrics(task, arch, fold, n_boot=100):
    """Metrics of a small random predictions table, with their bootstrap draws."""
    from deepbc.evaluation import metrics

    rng = np.random.default_rng(fold)
    patients = np.repeat(np.arange(12), 3)
    label = patients % 2
    p_malignant = np.clip(0.5 + (label - 0.5) * 0.3 + rng.normal(0, 0.3, len(label)), 0.01, 0.99)
    classes = ["benign", "malignant"]
    df = pd.DataFrame({"patient": [f"f{fold}p{p}" for p in patients],
                       "label": [classes[i] for i in label],
                       "prob_benign": 1 - p_malignant, "prob_malignant": p_malignant})
    df["pred"] = np.where(p_malignant > 0.5, "malignant", "benign")
    m = metrics.compute_metrics(df, classes, n_boot=n_boot, seed=1, stream=fold)
    m["meta"] = {"run": task, "task": task, "protocol": "patient", "grouping": "patient",
                 "arch": arch, "fold": fold}
    return m


def test_tables_show_the_interval_of_the_mean_over_folds(tmp_path):
    ms = [real_metrics("benign_vs_malignant", "resnet_small", f) for f in range(3)]
    t = tables.task_table(ms, "benign_vs_malignant")
    row = t.iloc[0]
    # Draw b of each fold resamples that fold's patients; their mean is one draw of the mean.
    draws = np.array([m["patient_level"]["mean_probability"]["bootstrap_values"]["accuracy"]
                      for m in ms], dtype=float)
    expected = np.percentile(draws.mean(axis=0), [2.5, 97.5])
    assert [row["patient_accuracy_ci_low"], row["patient_accuracy_ci_high"]] == pytest.approx(expected)
    assert row["patient_accuracy_ci_low"] <= row["patient_accuracy_mean"] <= row["patient_accuracy_ci_high"]
    # The mean over folds varies less than one fold: its interval is narrower than a fold's CI.
    widths = [np.diff(m["patient_level"]["mean_probability"]["ci95"]["accuracy"])[0] for m in ms]
    assert row["patient_accuracy_ci_high"] - row["patient_accuracy_ci_low"] < np.mean(widths)
    assert "patient_fp_ci_low" not in t.columns  # counts scale with the fold: no interval
    tables.write_task_table(t, tmp_path / "t.csv", tmp_path / "t.md")
    md = (tmp_path / "t.md").read_text()
    low, high = row["image_auc_ci_low"], row["image_auc_ci_high"]
    assert f"[{low:.3f}, {high:.3f}]" in md and "95 % interval of the mean over folds" in md
    assert "each fold's trained model is held fixed" in md

    models = [write_model(tmp_path, "benign_vs_malignant", "resnet_small", f, 0.5, 0.5) for f in range(3)]
    s = tables.summary_table(ms, models)
    tables.write_summary(s, tmp_path / "s.csv", tmp_path / "s.md")
    assert s.iloc[0]["patient_auc_ci_low"] == row["patient_auc_ci_low"]
    summary_md = (tmp_path / "s.md").read_text()
    assert "95 % interval of the mean over folds" in summary_md
    # What the interval and the choice do not cover is said under the table.
    assert "each fold's trained model is held fixed" in summary_md and "too narrow" in summary_md
    assert "fold k's validation patients are test patients of other folds" in summary_md


def test_task_table_shows_the_patient_recognition_rate_with_its_interval(tmp_path):
    ms = [real_metrics("benign_vs_malignant", "resnet_small", f) for f in range(3)]
    row = tables.task_table(ms, "benign_vs_malignant").iloc[0]
    rates = [m["image_level"]["patient_recognition_rate"] for m in ms]
    assert row["image_patient_recognition_rate_mean"] == pytest.approx(np.mean(rates))
    draws = np.array([m["image_level"]["bootstrap_values"]["patient_recognition_rate"] for m in ms])
    assert row["image_patient_recognition_rate_ci_low"] == pytest.approx(
        np.percentile(draws.mean(axis=0), 2.5))
    # Calibration reaches the fold frame too (for the calibration table).
    assert row["patient_ece_mean"] == pytest.approx(
        np.mean([m["patient_level"]["mean_probability"]["ece"] for m in ms]))
    tables.write_task_table(tables.task_table(ms, "benign_vs_malignant"), out_md=tmp_path / "t.md")
    md = (tmp_path / "t.md").read_text()
    assert "| patient recognition rate |" in md and "Spanhol et al. 2016" in md


@pytest.mark.parametrize("damage, what", [
    (lambda folder: (folder / "settings.json").write_text("{"), "settings.json is not valid JSON"),
    (lambda folder: (folder / "settings.json").write_text("{}"), "settings.json lacks kept/best_step"),
    (lambda folder: (folder / "settings.json").write_text(json.dumps({"kept": "val_loss", "best_step": 21})),
     "the kept step 21 has no validation row"),
], ids=["not_json", "old_settings", "kept_step"])
def test_a_broken_model_folder_says_to_delete_it(tmp_path, damage, what):
    ms = [fake("cancer_types", "patient", "resnet_small", 0)]
    settings = write_model(tmp_path, "cancer_types", "resnet_small", 0, 0.5, 0.5)
    damage(settings.parent)
    with pytest.raises(UserError, match=re.escape(what)) as err:
        tables.summary_table(ms, [settings])
    assert err.value.fix == retrain(settings.parent)
    assert err.value.fix.startswith(f"delete the folder {settings.parent}/ and rerun the same snakemake command")


def test_bad_metrics_inputs(tmp_path):
    dup = [fake("cancer_types", "patient", "resnet_small", 0)] * 2
    with pytest.raises(UserError, match="two metrics files"):
        tables.task_table(dup, "cancer_types")
    with pytest.raises(UserError, match="no metrics of task"):
        tables.task_table(bvm_metrics(), "cancer_types")
    path = tmp_path / "m.json"
    path.write_text(json.dumps({"image_level": {}}))
    with pytest.raises(UserError, match="not a metrics JSON") as err:
        tables.load_metrics([path])
    # The file to delete, which the workflow computes again (tests/test_recovery.py follows it).
    assert err.value.fix.startswith(f"delete {path} and rerun the same snakemake command")
    with pytest.raises(UserError, match="not a metrics JSON") as err:
        tables.load_metrics([{"image_level": {}}])
    assert err.value.fix == "pass the metrics that deepbc.evaluation.metrics.metrics_file writes"
    path.write_text("{")
    with pytest.raises(UserError, match="not valid JSON") as err:
        tables.load_metrics([path])
    assert err.value.fix.startswith(f"delete {path} and rerun the same snakemake command")
    with pytest.raises(UserError, match="not found"):
        tables.load_metrics([tmp_path / "missing.json"])


def test_table_and_figure_modules_leave_scikit_learn_to_the_functions_that_use_it():
    """Every table and figure job imports these modules; scikit-learn's import alone costs about
    1.5 s of CPU per job, so only the functions computing AUCs and confusion matrices import it."""
    from tests.trainkit import packages_imported

    assert packages_imported("deepbc.results.tables, deepbc.results.calibration, deepbc.results.figures, deepbc.evaluation.metrics", "sklearn") == []


def test_every_table_says_which_split_made_it_and_which_validation_sets_lacked_a_class(tmp_path):
    """A validation set without a class chose the checkpoint without it, and a predefined split
    with patients on two sides is not patient-wise: the tables said neither."""
    split = {"scheme": "predefined", "unit": "split", "label": "predefined split, 4 patients on two sides",
             "note": "predefined split, 4 patients on two sides: one split, so no sd over folds.",
             "patients_on_two_sides": 4, "validation_absent_classes": []}
    ms = []
    for arch in ("resnet_small", "resnet_v1_152"):
        for protocol in ("patient", "image"):
            m = fake("benign_subtypes", protocol, arch, 0)
            m["meta"]["split"] = {**split, "validation_absent_classes": ["A", "PT"] if protocol == "patient" else []}
            ms.append(m)
    tables.write_task_table(tables.task_table(ms, "benign_subtypes"), out_md=tmp_path / "t.md",
                            out_tex=tmp_path / "t.tex")
    models = [write_model(tmp_path, "benign_subtypes", a, 0, 0.4, 0.7) for a in ("resnet_small", "resnet_v1_152")]
    tables.write_summary(tables.summary_table(ms, models), out_md=tmp_path / "s.md")
    tables.write_leakage(tables.leakage_table(ms), out_md=tmp_path / "l.md")
    for name in ("t.md", "t.tex", "s.md", "l.md"):
        text = (tmp_path / name).read_text().replace("\\_", "_")
        assert "predefined split, 4 patients on two sides" in text, name
        assert "benign_subtypes: split 0 (A, PT)" in text, name
        assert "used the validation loss over the classes present" in text, name
