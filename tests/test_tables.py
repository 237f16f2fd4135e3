"""deepbc.results.tables: task tables (pooled figures with their intervals and n, the preprint's
beside), summary, leakage with paired intervals; from synthetic predictions' metrics."""

import json
import re

import numpy as np
import pandas as pd
import pytest

from deepbc.jobs.errors import UserError
from deepbc.results import tables
from deepbc.training.model_dir import retrain
from tests.resultkit import binary_fold, results, run_results, with_copies
from tests.test_pooled import BENIGN, never_adenosis_folds

BVM = "benign_vs_malignant"


def bvm_results(n_boot=0):
    """Two architectures under both protocols, two folds each. Patient-wise, resnet_small: fold 0
    has 4 patients, 1 wrong; fold 1 has 8, all right (per-fold mean 0.875, pooled 11/12);
    resnet_v1_152: 2 of 6 wrong in each fold. The image-level protocol tests the same patients
    (its split puts their images on both sides), all right."""
    runs = []
    for arch, folds in (("resnet_small", {0: binary_fold("a", 4, 1), 1: binary_fold("b", 8)}),
                        ("resnet_v1_152", {0: binary_fold("a", 6, 2), 1: binary_fold("b", 6, 2)})):
        runs.append(run_results(BVM, folds, arch=arch, n_boot=n_boot))
        leaky = {f: df.assign(pred=df["label"], prob_malignant=np.where(df["label"] == "malignant", 0.9, 0.1),
                              prob_benign=lambda d: 1 - d["prob_malignant"]) for f, df in folds.items()}
        runs.append(run_results(BVM, leaky, protocol="image", arch=arch, n_boot=n_boot))
    return results(*runs)


def test_task_table_rows_pooled_figures_fold_means_and_preprint_column():
    ms, ps = bvm_results()
    t = tables.task_table(ms, ps, BVM)
    assert list(zip(t["architecture"], t["protocol"])) == [
        ("resnet_small", "patient-wise"), ("resnet_small", "image-level (originals split at random)"),
        ("resnet_v1_152", "patient-wise"), ("resnet_v1_152", "image-level (originals split at random)")]
    row = t.iloc[0]
    assert row["n_folds"] == 2 and row["n_patients"] == 12 and row["n_images"] == 24
    # The headline is the pooled figure, 11 of 12 patients; the CSV keeps the per-fold mean and sd.
    assert row["patient_accuracy"] == pytest.approx(11 / 12)
    assert (row["patient_accuracy_k"], row["patient_accuracy_n"]) == (11, 12)
    assert row["patient_accuracy_ci_method"] == "wilson"
    assert row["patient_accuracy_mean"] == pytest.approx(0.875)
    assert row["patient_accuracy_sd"] == pytest.approx(0.1767767, abs=1e-6)
    assert (row["patient_fp"], row["patient_fn"]) == (1, 0)  # ap0, benign, called malignant
    # The preprint reported 98.7% for ResNet V1 152 on this task, and nothing for resnet_small.
    assert pd.isna(row["preprint_accuracy"])
    assert list(t.loc[t["architecture"] == "resnet_v1_152", "preprint_accuracy"]) == [0.987, 0.987]
    assert t.loc[t["architecture"] == "resnet_v1_152", "preprint_auc"].isna().all()


def test_preprint_only_row_and_footnote(tmp_path):
    ms, ps = results(run_results("benign_subtypes", never_adenosis_folds_dict(), classes=BENIGN))
    t = tables.task_table(ms, ps, "benign_subtypes")
    extra = t[t["protocol"] == tables.PREPRINT_ONLY]
    assert list(extra["architecture"]) == ["resnet_v1_50"]
    assert extra.iloc[0]["preprint_accuracy"] == 0.948
    assert extra.iloc[0]["preprint_sensitivity"] == 0.993
    assert "Respectively" in extra.iloc[0]["preprint_note"]
    tables.write_task_table(t, tmp_path / "t.csv", tmp_path / "t.md", tmp_path / "t.tex")
    md = (tmp_path / "t.md").read_text()
    assert "| resnet_v1_50 | preprint only (not run here) |" in md
    assert "0.948 [1]" in md and "- [1] \"Respectively\"" in md
    assert "image-level metrics of our augment-then-split runs" in md and "is our reading" in md
    tex = (tmp_path / "t.tex").read_text()
    assert r"\begin{tabular}" in tex and "(13/15)" in tex and r"resnet\_v1\_50" in tex
    back = pd.read_csv(tmp_path / "t.csv")
    assert len(back) == 2 and "preprint_note" in back.columns


def never_adenosis_folds_dict():
    return {fold: df for fold, df, _ in never_adenosis_folds()}


def test_a_class_missing_from_folds_counts_in_the_table_and_sens_goes(tmp_path):
    """Adenosis, never recognised, is in 2 of 5 folds: the table's balanced accuracy is the pooled
    4-class figure 0.750, not 0.867, the mean of five 3-class figures; macro sensitivity (the same
    figure again) has no column."""
    ms, ps = results(run_results("benign_subtypes", never_adenosis_folds_dict(), classes=BENIGN, n_boot=50))
    row = tables.task_table(ms, ps, "benign_subtypes").iloc[0]
    assert row["patient_balanced_accuracy"] == pytest.approx(0.75)
    assert row["image_balanced_accuracy"] == pytest.approx(0.75)
    assert row["patient_balanced_accuracy_mean"] == pytest.approx(13 / 15)  # per fold, CSV only
    tables.write_task_table(tables.task_table(ms, ps, "benign_subtypes"), out_md=tmp_path / "t.md")
    md = (tmp_path / "t.md").read_text()
    header = md.splitlines()[2]
    assert "| patient bal. acc. |" in header and "patient sens." not in header and "| patient macro spec. |" in header
    cells = dict(zip(header.split(" | "), md.splitlines()[4].split(" | ")))
    assert cells["patient bal. acc."].startswith("0.750 [")
    assert "results/tables/benign_subtypes_per_class.md" in md


def test_task_table_is_byte_stable(tmp_path):
    for name in ("a", "b"):
        ms, ps = bvm_results(n_boot=20)
        tables.write_task_table(tables.task_table(ms, ps, BVM), tmp_path / f"{name}.csv", tmp_path / f"{name}.md")
    assert (tmp_path / "a.csv").read_bytes() == (tmp_path / "b.csv").read_bytes()
    assert (tmp_path / "a.md").read_bytes() == (tmp_path / "b.md").read_bytes()


def test_five_right_patients_show_a_wilson_interval_with_its_n(tmp_path):
    """All 5 test patients right: the percentile bootstrap said 1.000 [1.000, 1.000]; a Wilson
    interval says 1.000 [0.566, 1.000] (5/5). A zero-width bootstrap interval (the AUC) is marked."""
    ms, ps = results(run_results(BVM, {0: binary_fold("a", 5)}, n_boot=50))
    t = tables.task_table(ms, ps, BVM)
    tables.write_task_table(t, out_md=tmp_path / "t.md")
    md = (tmp_path / "t.md").read_text()
    cells = dict(zip(md.splitlines()[2].split(" | "), md.splitlines()[4].split(" | ")))
    assert cells["patient acc."] == "1.000 [0.566, 1.000] (5/5)"
    assert cells["patient sens."] == "1.000 [0.342, 1.000] (2/2)"
    assert cells["patients"] == "5"
    assert cells["patient AUC"] == f"1.000 [1.000, 1.000]{tables.ZERO_WIDTH}"
    assert tables.ZERO_WIDTH_NOTE in md and "Wilson score interval" in md


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
    ms, ps = results(
        run_results(BVM, {f: binary_fold(f"f{f}", 6, 3) for f in range(2)}, arch="resnet_small"),
        run_results(BVM, {f: binary_fold(f"f{f}", 6, 0) for f in range(2)}, arch="resnet_v1_152"))
    models = [write_model(tmp_path, BVM, "resnet_small", f, 0.40 + f / 10, 0.7) for f in range(2)]
    models += [write_model(tmp_path, BVM, "resnet_v1_152", f, 0.55, 0.8) for f in range(2)]
    s = tables.summary_table(ms, ps, models)
    row = s.iloc[0]
    assert row["chosen_architecture"] == "resnet_small"
    assert row["patient_accuracy"] == pytest.approx(0.5) and row["n_patients"] == 12
    assert row["validation_metric"] == "val_loss"
    assert row["validation_mean"] == pytest.approx(0.45)  # the kept steps' losses, not the others
    assert row["chosen_by"].startswith("lowest validation loss")
    assert row["architectures_compared"] == 2
    tables.write_summary(s, tmp_path / "s.csv", tmp_path / "s.md")
    md = (tmp_path / "s.md").read_text()
    assert "chosen on validation data" in md and "val. loss 0.450 ± 0.071" in md
    assert "| 0.500 [0.254, 0.746] (6/12) |" in md


def test_summary_follows_keep_best_by_and_last(tmp_path):
    ms, ps = results(*(run_results(BVM, {0: binary_fold("a", 4)}, arch=a) for a in ("resnet_small", "resnet_v1_152")))
    # Kept by validation accuracy: the higher one wins although its loss is worse.
    models = [write_model(tmp_path / "acc", BVM, "resnet_small", 0, 0.3, 0.7, kept="val_accuracy"),
              write_model(tmp_path / "acc", BVM, "resnet_v1_152", 0, 0.5, 0.8, kept="val_accuracy")]
    s = tables.summary_table(ms, ps, models)
    assert (s.iloc[0]["chosen_architecture"], s.iloc[0]["validation_metric"]) == (
        "resnet_v1_152", "val_accuracy")
    # Kept at the last step: the last evaluated row's validation loss counts (step 30 here).
    models = [write_model(tmp_path / "last", BVM, "resnet_small", 0, 0.3, 0.7, kept="last", best_step=30),
              write_model(tmp_path / "last", BVM, "resnet_v1_152", 0, 0.5, 0.8, kept="last", best_step=10)]
    s = tables.summary_table(ms, ps, models)
    assert s.iloc[0]["chosen_architecture"] == "resnet_small"
    assert s.iloc[0]["validation_mean"] == pytest.approx(0.3)


def test_summary_leaves_out_image_level_runs_and_needs_every_model(tmp_path):
    bvm_ms, bvm_ps = bvm_results()
    ms, ps = results(run_results("cancer_types", {0: binary_fold("t", 4)}))
    ms, ps = bvm_ms + ms, bvm_ps + ps
    models = [write_model(tmp_path, BVM, a, f, 0.5, 0.5) for a in ("resnet_small", "resnet_v1_152") for f in range(2)]
    with pytest.raises(UserError, match="no model settings for 1 patient-wise") as err:
        tables.summary_table(ms, ps, models)
    assert "cancer_types/resnet_small/fold0" in str(err.value)
    models.append(write_model(tmp_path, "cancer_types", "resnet_small", 0, 0.5, 0.5))
    s = tables.summary_table(ms, ps, models)
    assert list(s["task"]) == [BVM, "cancer_types"]
    # Equal validation loss and accuracy: the architecture name decides, never the test figures.
    assert list(s["chosen_architecture"]) == ["resnet_small", "resnet_small"]
    assert s.iloc[1]["chosen_by"] == "the only architecture run"
    assert list(s["preprint_accuracy"]) == [0.987, 0.998]
    # A run without its pooled figures is refused, naming it.
    with pytest.raises(UserError, match="no pooled metrics for 1 run") as err:
        tables.summary_table(ms, ps[:-1], models)
    assert "cancer_types/patient/resnet_small" in str(err.value)


def test_a_pooled_file_of_other_folds_is_refused():
    ms, ps = results(run_results(BVM, {0: binary_fold("a", 4), 1: binary_fold("b", 4)}))
    with pytest.raises(UserError, match=re.escape("pooled over folds [0, 1], but the metrics given are of folds [0]")):
        tables.task_table(ms[:1], ps, BVM)


def _paired(ps, arch, protocols, level, metric):
    """The percentile interval of the draw-by-draw differences of two runs' kept draws."""
    block = {p["meta"]["protocol"]: (p["patient_level"]["mean_probability"] if level == "patient" else p["image_level"])
             for p in ps if p["meta"]["arch"] == arch}
    a, b = (np.array(block[protocol]["bootstrap_values"][metric], dtype=float) for protocol in protocols)
    return np.percentile((a - b)[np.isfinite(a - b)], [2.5, 97.5])


def test_leakage_differences_with_paired_intervals(tmp_path):
    ms, ps = bvm_results(n_boot=200)
    t = tables.leakage_table(ps)
    assert set(zip(t["protocol"], t["compared_with"])) == {("image-level (originals split at random)", "patient-wise")}
    row = t[(t["architecture"] == "resnet_v1_152") & (t["level"] == "patient")
            & (t["metric"] == "accuracy")].iloc[0]
    # Pooled: 8 of 12 patients right patient-wise, all 12 under the image-level protocol.
    assert row["value"] == pytest.approx(1.0)
    assert row["reference"] == pytest.approx(8 / 12)
    assert row["difference"] == pytest.approx(4 / 12)
    assert row["ratio"] == pytest.approx(1.5)
    # The same 12 patients and 24 images under both: the draws are paired patient by patient.
    assert (row["n_patients_shared"], row["same_test_images"], row["n_images"]) == (12, True, 24)
    assert [row["difference_ci_low"], row["difference_ci_high"]] == pytest.approx(
        _paired(ps, "resnet_v1_152", ("image", "patient"), "patient", "accuracy"))
    assert 0 < row["difference_ci_low"] < row["difference"] < row["difference_ci_high"]
    assert len(t) == 2 * 2 * len(tables.LEAKAGE_METRICS)
    tables.write_leakage(t, tmp_path / "l.csv", tmp_path / "l.md")
    md = (tmp_path / "l.md").read_text()
    assert f"+0.333 [{row['difference_ci_low']:+.3f}, {row['difference_ci_high']:+.3f}]" in md
    assert "| 12 / 12 / –; 12, –, – | 24 / 24 / – |" in md and "paired" in md


def test_leakage_shows_both_leaky_protocols_against_patient_wise(tmp_path):
    """Issue 23.5: the preprint's leak (augment, then split) beside the image-level split of the
    originals, each against patient-wise, and against each other, with paired intervals."""
    folds = {0: binary_fold("a", 6, 2), 1: binary_fold("b", 6, 2)}

    def right(df):
        malignant = np.where(df["label"] == "malignant", 0.9, 0.1)
        return df.assign(pred=df["label"], prob_malignant=malignant, prob_benign=1 - malignant)

    augmented = {}
    for f, df in folds.items():
        copies = with_copies(right(df))
        # Three of the 8 copies of patient ap0's images are called wrong: its mean stays right.
        wrong = (copies["patient"] == "ap0") & (copies["copy"] < 3)
        flipped = np.where(copies["label"] == "malignant", "benign", "malignant")
        copies.loc[wrong, "pred"] = flipped[wrong]
        copies.loc[wrong, ["prob_benign", "prob_malignant"]] = copies.loc[wrong, ["prob_malignant", "prob_benign"]].to_numpy()
        augmented[f] = copies
    arch = "resnet_v1_152"
    ms, ps = results(run_results(BVM, folds, arch=arch, n_boot=200),
                     run_results(BVM, {f: right(df) for f, df in folds.items()}, protocol="image", arch=arch, n_boot=200),
                     run_results(BVM, augmented, protocol="augmented_image", arch=arch, n_boot=200))
    t = tables.leakage_table(ps)
    labels = {"patient": "patient-wise", "image": "image-level (originals split at random)",
              "augmented_image": "augment-then-split (the preprint's leak)"}
    comparisons = [("image", "patient"), ("augmented_image", "patient"), ("augmented_image", "image")]
    assert list(dict.fromkeys(zip(t["protocol"], t["compared_with"]))) == [(labels[a], labels[b]) for a, b in comparisons]
    assert len(t) == 3 * 2 * len(tables.LEAKAGE_METRICS)

    def row(protocol, reference, level, metric="accuracy"):
        return t[(t["protocol"] == labels[protocol]) & (t["compared_with"] == labels[reference])
                 & (t["level"] == level) & (t["metric"] == metric)].iloc[0]

    # Patient level: ap0's copies average right, so every patient is right under augment-then-split.
    leak = row("augmented_image", "patient", "patient")
    assert (leak["value"], leak["reference"]) == (pytest.approx(1.0), pytest.approx(8 / 12))
    # Image level: 6 of 192 copies wrong against none of the 24 originals under the image-level split.
    more = row("augmented_image", "image", "image")
    assert (more["value"], more["reference"], more["difference"]) == (
        pytest.approx(1 - 6 / 192), pytest.approx(1.0), pytest.approx(-6 / 192))
    assert (more["n_images"], more["n_images_reference"], more["n_patients_shared"]) == (192, 24, 12)
    assert not more["same_test_images"]  # copies, not the originals
    for (protocol, reference), level in zip(comparisons, ("patient", "image", "image")):
        r = row(protocol, reference, level)
        assert [r["difference_ci_low"], r["difference_ci_high"]] == pytest.approx(
            _paired(ps, arch, (protocol, reference), level, "accuracy"))
    assert more["difference_ci_low"] < more["difference"] < 0 <= more["difference_ci_high"]
    tables.write_leakage(t, tmp_path / "l.csv", tmp_path / "l.md")
    md = (tmp_path / "l.md").read_text()
    assert ("| patient-wise | image-level (originals split at random) | augment-then-split (the preprint's leak) | "
            "image-level − patient-wise [95 % paired interval] | augment-then-split − patient-wise [95 % paired "
            "interval] | augment-then-split − image-level [95 % paired interval] |") in md
    assert f"| {BVM} | {arch} | image | accuracy | 0.667 | 1.000 | 0.969 | +0.333 [" in md
    assert f"-0.031 [{more['difference_ci_low']:+.3f}, {more['difference_ci_high']:+.3f}]" in md
    assert "| 12 / 12 / 12; 12, 12, 12 | 24 / 24 / 192 |" in md
    assert "Not paired: the images within a patient between augment-then-split and the others" in md
    back = pd.read_csv(tmp_path / "l.csv")
    assert list(back.columns) == tables.LEAKAGE_COLUMNS and len(back) == len(t)
    # The task table names the protocol and says its images are copies.
    task = tables.task_table(ms, ps, BVM)
    assert list(task["protocol"]) == [labels[p] for p in ("patient", "image", "augmented_image")]
    assert list(task["n_images"]) == [24, 24, 192]
    tables.write_task_table(task, out_md=tmp_path / "t.md")
    assert "image-level figures count copies" in (tmp_path / "t.md").read_text()


def test_leakage_of_different_test_patients_says_so(tmp_path):
    """The demo runs one fold: the two protocols then test different images, partly other patients."""
    ms, ps = results(run_results(BVM, {0: binary_fold("a", 6)}, n_boot=20),
                     run_results(BVM, {0: pd.concat([binary_fold("a", 2), binary_fold("z", 4)])}, protocol="image",
                                 n_boot=20))
    row = tables.leakage_table(ps).iloc[0]
    assert (row["n_patients_shared"], row["same_test_images"]) == (2, False)


def test_leakage_without_both_protocols_is_empty(tmp_path):
    _, ps = results(run_results("cancer_types", {0: binary_fold("a", 4)}))
    t = tables.leakage_table(ps)
    assert t.empty
    tables.write_leakage(t, tmp_path / "l.csv", tmp_path / "l.md")
    assert "No task with a patient mapping ran patient-wise and under a leaky protocol" in (tmp_path / "l.md").read_text()
    assert (tmp_path / "l.csv").read_text().startswith("task,architecture,level,metric")


def test_image_grouped_runs_are_never_called_patient_wise(tmp_path, caplog):
    # cancer_types on a folder dataset without a patients CSV: each image is its own group.
    grouped = results(*(run_results("cancer_types", {f: binary_fold(f"g{f}", 4) for f in range(2)},
                                    protocol=protocol, grouping="image") for protocol in ("patient", "image")))
    t = tables.task_table(*grouped, "cancer_types")
    assert list(t["protocol"][:2]) == ["image-grouped (no patient mapping)",
                                       "image-level (originals split at random)"]
    tables.write_task_table(t, tmp_path / "t.csv", tmp_path / "t.md")
    md = (tmp_path / "t.md").read_text()
    assert "patient-wise" not in md.split("- ")[0]  # not in the rows
    assert "| image-grouped (no patient mapping) |" in md and "patients CSV" in md

    bvm_ms, bvm_ps = bvm_results()
    models = [write_model(tmp_path, "cancer_types", "resnet_small", f, 0.5, 0.5) for f in range(2)]
    s = tables.summary_table(grouped[0] + bvm_ms, grouped[1] + bvm_ps, models + [
        write_model(tmp_path, BVM, a, f, 0.5, 0.5) for a in ("resnet_small", "resnet_v1_152") for f in range(2)])
    assert list(s["split"]) == ["patient-wise", "image-grouped (no patient mapping)"]
    tables.write_summary(s, tmp_path / "s.csv", tmp_path / "s.md")
    assert "| cancer_types | image-grouped (no patient mapping) |" in (tmp_path / "s.md").read_text()

    # Both of its protocols can leak, so the leakage table leaves the task out, saying why.
    leak = tables.leakage_table(grouped[1] + bvm_ps)
    assert set(leak["task"]) == {BVM}
    assert "task cancer_types left out of the leakage table" in caplog.text
    tables.write_leakage(leak, tmp_path / "l.csv", tmp_path / "l.md")
    assert "Left out: cancer_types" in (tmp_path / "l.md").read_text()
    assert tables.leakage_table(grouped[1]).empty


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


def test_tables_show_the_pooled_interval_and_what_it_covers(tmp_path):
    ms, ps = bvm_results(n_boot=100)
    t = tables.task_table(ms, ps, BVM)
    row = t.iloc[0]
    block = ps[0]["patient_level"]["mean_probability"]
    assert [row["patient_auc_ci_low"], row["patient_auc_ci_high"]] == pytest.approx(block["ci95"]["auc"])
    assert [row["patient_balanced_accuracy_ci_low"], row["patient_balanced_accuracy_ci_high"]] == pytest.approx(
        block["ci95"]["balanced_accuracy"])
    assert row["patient_balanced_accuracy_ci_method"] == "mover_wilson"
    assert row["image_accuracy_ci_method"] == "bootstrap"
    assert "patient_fp_ci_low" in t.columns and pd.isna(row["patient_fp_ci_low"])  # counts: no interval
    tables.write_task_table(t, tmp_path / "t.csv", tmp_path / "t.md")
    md = (tmp_path / "t.md").read_text()
    low, high = row["image_auc_ci_low"], row["image_auc_ci_high"]
    assert f"[{low:.3f}, {high:.3f}]" in md and "100 draws" in md
    assert "holds the trained models fixed" in md and "test predictions of all folds pooled" in md

    models = [write_model(tmp_path, BVM, a, f, 0.5, 0.5) for a in ("resnet_small", "resnet_v1_152") for f in range(2)]
    s = tables.summary_table(ms, ps, models)
    tables.write_summary(s, tmp_path / "s.csv", tmp_path / "s.md")
    assert s.iloc[0]["patient_auc_ci_low"] == row["patient_auc_ci_low"]
    summary_md = (tmp_path / "s.md").read_text()
    assert "holds the trained models fixed" in summary_md and "(11/12)" in summary_md
    assert "fold k's validation patients are test patients of other folds" in summary_md


def test_task_table_shows_the_patient_recognition_rate_with_its_interval(tmp_path):
    # Patient ap0 has 2 images right and 2 wrong: its share is 1/2, every other patient's 1.
    df = binary_fold("a", 4, images=2)
    df = pd.concat([df, df[df["patient"] == "ap0"].assign(pred="malignant", prob_benign=0.2, prob_malignant=0.8,
                                                           path=lambda d: d["path"] + "b")])
    ms, ps = results(run_results(BVM, {0: df}, n_boot=50))
    row = tables.task_table(ms, ps, BVM).iloc[0]
    assert row["image_patient_recognition_rate"] == pytest.approx((0.5 + 3) / 4)
    assert row["image_patient_recognition_rate_ci_method"] == "bootstrap"
    tables.write_task_table(tables.task_table(ms, ps, BVM), out_md=tmp_path / "t.md")
    md = (tmp_path / "t.md").read_text()
    assert "| patient recognition rate |" in md and "Spanhol et al. 2016" in md


def test_notes_in_the_folds_meta_reach_the_task_table(tmp_path):
    ms, ps = results(run_results(BVM, {0: binary_fold("a", 4), 1: binary_fold("b", 4)}))
    ms[1]["meta"]["notes"] = ["the validation set lacks class benign"]
    t = tables.task_table(ms, ps, BVM)
    tables.write_task_table(t, out_md=tmp_path / "t.md")
    assert "- Note: benign_vs_malignant / resnet_small / fold 1: the validation set lacks class benign" in (
        tmp_path / "t.md").read_text()


@pytest.mark.parametrize("damage, what", [
    (lambda folder: (folder / "settings.json").write_text("{"), "settings.json is not valid JSON"),
    (lambda folder: (folder / "settings.json").write_text("{}"), "settings.json lacks kept/best_step"),
    (lambda folder: (folder / "settings.json").write_text(json.dumps({"kept": "val_loss", "best_step": 21})),
     "the kept step 21 has no validation row"),
], ids=["not_json", "old_settings", "kept_step"])
def test_a_broken_model_folder_says_to_delete_it(tmp_path, damage, what):
    ms, ps = results(run_results("cancer_types", {0: binary_fold("a", 4)}))
    settings = write_model(tmp_path, "cancer_types", "resnet_small", 0, 0.5, 0.5)
    damage(settings.parent)
    with pytest.raises(UserError, match=re.escape(what)) as err:
        tables.summary_table(ms, ps, [settings])
    assert err.value.fix == retrain(settings.parent)
    assert err.value.fix.startswith(f"delete the folder {settings.parent}/ and rerun the same snakemake command")


def test_bad_metrics_inputs(tmp_path):
    ms, ps = results(run_results("cancer_types", {0: binary_fold("a", 4)}))
    with pytest.raises(UserError, match="two metrics files"):
        tables.task_table(ms * 2, ps, "cancer_types")
    with pytest.raises(UserError, match="two pooled metrics files"):
        tables.task_table(ms, ps * 2, "cancer_types")
    with pytest.raises(UserError, match="no metrics of task"):
        tables.task_table(*bvm_results(), "cancer_types")
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
    # A pooled JSON of an older version (no intervals) is remade by its own rule.
    del ps[0]["patient_level"]["mean_probability"]["ci_method"]
    path.write_text(json.dumps(ps[0]))
    with pytest.raises(UserError, match="not a pooled metrics JSON") as err:
        tables.load_pooled([path])
    assert err.value.fix == f"delete {path} and rerun the same snakemake command (the pooled_metrics rule computes it again)"


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
    runs = []
    for arch in ("resnet_small", "resnet_v1_152"):
        for protocol in ("patient", "image"):
            fold_metrics, pooled_metrics = run_results("benign_subtypes", {0: binary_fold("a", 6, 1)},
                                                       protocol=protocol, arch=arch)
            for m in fold_metrics:
                m["meta"]["split"] = {**split, "validation_absent_classes": ["A", "PT"] if protocol == "patient" else []}
            runs.append((fold_metrics, pooled_metrics))
    ms, ps = results(*runs)
    tables.write_task_table(tables.task_table(ms, ps, "benign_subtypes"), out_md=tmp_path / "t.md",
                            out_tex=tmp_path / "t.tex")
    models = [write_model(tmp_path, "benign_subtypes", a, 0, 0.4, 0.7) for a in ("resnet_small", "resnet_v1_152")]
    tables.write_summary(tables.summary_table(ms, ps, models), out_md=tmp_path / "s.md")
    for name in ("t.md", "t.tex", "s.md"):
        text = (tmp_path / name).read_text().replace("\\_", "_")
        assert "predefined split, 4 patients on two sides" in text, name
        assert "benign_subtypes: split 0 (A, PT)" in text, name
        assert "used the validation loss over the classes present" in text, name


def test_latex_keeps_braces_and_backslashes_of_the_notes():
    """Notes naming paths such as results/metrics/{run}/... lost their braces in the .tex tables."""
    assert tables._tex_escape(r"results/{run}/fold{k} a\b 50% x_y") == (
        r"results/\{run\}/fold\{k\} a\textbackslash{}b 50\% x\_y")
