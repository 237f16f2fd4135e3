"""Training repeats (train.repeats): deepbc.evaluation.repeats combines a run's repeats, and the
tables show their mean with the spread between them beside the test-patient interval; synthetic
predictions, no training."""

import json

import numpy as np
import pandas as pd
import pytest

from deepbc.evaluation import intervals, metrics, pooled, repeats
from deepbc.jobs.errors import UserError
from deepbc.data.runs import repeat_suffix
from deepbc.results import calibration, leaderboard, magnification, per_class, tables
from deepbc.training import train
from tests import trainkit
from tests.resultkit import binary_fold, results, run_results
from tests.test_leaderboard import EVA, FINETUNE
from tests.test_leaderboard import fold as eva_fold
from tests.test_magnification import fold_predictions
from tests.test_tables import BVM, write_model

# Patients called wrong in folds 0 and 1 by each repeat: patient accuracy 11/12, 9/12, 12/12.
WRONG = ((1, 0), (2, 1), (0, 0))


def three_repeats(arch="resnet_small", protocol="patient", n_boot=50, wrong=WRONG):
    """Per-fold and pooled metrics of three trainings of each of two folds (6 patients each)."""
    return [run_results(BVM, {0: binary_fold("a", 6, w0), 1: binary_fold("b", 6, w1)}, arch=arch,
                        protocol=protocol, n_boot=n_boot, repeat=r) for r, (w0, w1) in enumerate(wrong)]


def test_the_mean_over_repeats_with_its_spread_and_the_test_patient_interval_of_the_mean():
    runs = three_repeats()
    given = [p for _, p in runs]
    (combined,) = repeats.combine(given)
    assert combined["meta"]["repeats"] == [0, 1, 2] and "repeat" not in combined["meta"]
    assert combined["n_patients"] == 12 and combined["repeats"]["n"] == 3
    block = combined["patient_level"]["mean_probability"]
    values = [p["patient_level"]["mean_probability"]["accuracy"] for p in given]
    assert values == pytest.approx([11 / 12, 9 / 12, 1])
    assert block["accuracy"] == pytest.approx(32 / 36)
    assert block["spread"]["accuracy"] == pytest.approx(
        {"values": values, "sd": np.std(values, ddof=1), "min": 0.75, "max": 1.0})
    # Wilson of the mean proportion over the 12 patient units: the repeats test the same patients.
    assert block["counts"]["accuracy"] == pytest.approx([32 / 3, 12])
    assert block["ci_method"]["accuracy"] == "wilson"
    assert block["ci95"]["accuracy"] == pytest.approx(intervals.wilson(32 / 3, 12, 0.95))
    # Balanced accuracy: MOVER over the classes' Wilson intervals of their mean sensitivities.
    sens = [block["per_class"][c]["sensitivity"] for c in ("benign", "malignant")]
    assert block["ci95"]["balanced_accuracy"] == pytest.approx(
        intervals.mover_mean(sens, [intervals.wilson(s * 6, 6, 0.95) for s in sens]))
    # AUC and the image level: the percentile interval of the repeats' draws averaged draw by draw
    # (a draw weighs each patient alike in every repeat, so the average is a draw of the mean).
    for level, get in (("patient", lambda p: p["patient_level"]["mean_probability"]),
                       ("image", lambda p: p["image_level"])):
        draws = np.mean([np.array(get(p)["bootstrap_values"]["auc"], dtype=float) for p in given], axis=0)
        assert get(combined)["auc"] == pytest.approx(np.mean([get(p)["auc"] for p in given]))
        assert get(combined)["ci95"]["auc"] == pytest.approx(intervals.percentile(draws, 0.95)[0]), level
    # Each class's figures too: the image-level sensitivity of the malignant class (a1 is wrong in
    # repeat 1) from its draws.
    image = combined["image_level"]["per_class"]["malignant"]
    draws = np.mean([np.array(p["image_level"]["per_class"]["malignant"]["bootstrap_values"]["sensitivity"],
                              dtype=float) for p in given], axis=0)
    assert image["ci95"]["sensitivity"] == pytest.approx(intervals.percentile(draws, 0.95)[0])
    assert image["spread"]["sensitivity"]["values"] == pytest.approx([1, 5 / 6, 1])
    # One repeat is what it is.
    assert repeats.combine(given[:1])[0] is given[0]


def test_repeats_of_other_patients_or_given_twice_are_refused(tmp_path):
    given = [p for _, p in three_repeats(n_boot=0)]
    other = run_results(BVM, {0: binary_fold("a", 6), 1: binary_fold("c", 6)}, repeat=1)[1]
    with pytest.raises(UserError, match="repeat 1 of benign_vs_malignant / resnet_small was pooled over other "
                                        "test images than repeat 0"):
        repeats.combine([given[0], other])
    folder = tmp_path / "results" / "metrics" / BVM / "resnet_small"
    folder.mkdir(parents=True)
    paths = []
    for p, name in ((given[0], "pooled.json"), (other, "pooled_r1.json")):
        paths.append(folder / name)
        paths[-1].write_text(json.dumps(p))
    with pytest.raises(UserError) as err:
        tables.load_pooled(paths)
    assert f"delete the folder {folder}/ and rerun" in str(err.value)
    with pytest.raises(UserError, match="two pooled metrics files .* repeat 1"):
        tables.load_pooled([given[1], given[1]])
    with pytest.raises(UserError, match="two metrics files .* fold 0_r2"):
        tables.load_metrics(three_repeats(n_boot=0)[2][0] * 2)


def test_the_task_table_shows_the_mean_with_the_spread_beside_the_interval(tmp_path):
    ms, ps = results(*three_repeats())
    t = tables.task_table(ms, ps, BVM)
    row = t.iloc[0]
    assert (row["n_folds"], row["n_repeats"], row["n_patients"], row["n_images"]) == (2, 3, 12, 24)
    assert row["patient_accuracy"] == pytest.approx(32 / 36)
    assert (row["patient_accuracy_repeats_min"], row["patient_accuracy_repeats_max"]) == (0.75, 1.0)
    # FP: patient a0 (benign) is wrong in repeats 0 and 1, b0 (benign) in repeat 1: 1, 2, 0.
    assert row["patient_fp"] == pytest.approx(1.0) and row["patient_fp_repeats_sd"] == pytest.approx(1.0)
    # The per-fold mean is over every fold's repeats.
    assert row["patient_accuracy_mean"] == pytest.approx(32 / 36)
    tables.write_task_table(t, tmp_path / "t.csv", tmp_path / "t.md", tmp_path / "t.tex")
    md = (tmp_path / "t.md").read_text()
    cells = dict(zip(md.splitlines()[2].split(" | "), md.splitlines()[4].split(" | ")))
    low, high = intervals.wilson(32 / 3, 12, 0.95)
    sd = np.std([11 / 12, 9 / 12, 1], ddof=1)
    assert cells["patient acc."] == f"0.889 [{low:.3f}, {high:.3f}] (n=12); sd {sd:.3f} (0.750–1.000)"
    assert cells["patient FP"] == "1.0; sd 1.0 (0.0–2.0)"
    assert cells["folds"] == "2 × 3 trainings"
    assert "Trainings (3 per fold)" in md and "neither covers the other" in md
    assert r"2 $\times$ 3 trainings" in (tmp_path / "t.tex").read_text()
    back = pd.read_csv(tmp_path / "t.csv")
    assert "patient_accuracy_repeats_sd" in back.columns
    assert not [c for c in back.columns if c.endswith(("_draws", "_repeats_values"))]
    # Without the other repeats' pooled figures, the table is refused.
    with pytest.raises(UserError, match=r"pooled metrics of repeats \[0\] .* metrics given are of repeats \[0, 1, 2\]"):
        tables.task_table(ms, ps[:1], BVM)


def test_one_repeat_shows_no_spread():
    ms, ps = results(three_repeats()[0])
    t = tables.task_table(ms, ps, BVM)
    assert "n_repeats" not in t.columns and not [c for c in t.columns if "_repeats_" in c]
    assert tables.repeats_note(t) == []


def test_the_summary_chooses_on_the_mean_over_repeats(tmp_path):
    """resnet_small has the better validation loss in repeat 0 (0.30 against 0.50), the worse in
    the mean over repeats (0.567): the summary chooses resnet_v1_152."""
    ms, ps = results(*three_repeats(), *three_repeats(arch="resnet_v1_152"))
    models = []
    for fold in range(2):
        for r, suffix in enumerate(("", "_r1", "_r2")):
            models.append(write_model(tmp_path, BVM, "resnet_small", f"{fold}{suffix}", 0.30 if r == 0 else 0.70, 0.7))
            models.append(write_model(tmp_path, BVM, "resnet_v1_152", f"{fold}{suffix}", 0.50, 0.7))
    s = tables.summary_table(ms, ps, models)
    row = s.iloc[0]
    assert row["chosen_architecture"] == "resnet_v1_152" and row["validation_mean"] == pytest.approx(0.50)
    assert row["chosen_by"] == "lowest validation loss of the kept checkpoints (mean over folds and their 3 trainings)"
    assert row["n_repeats"] == 3 and row["patient_accuracy"] == pytest.approx(32 / 36)
    tables.write_summary(s, tmp_path / "s.csv", tmp_path / "s.md")
    md = (tmp_path / "s.md").read_text()
    assert "| 2 × 3 trainings | 12 |" in md and "the choice rests on the mean over the repeats" in md
    # Repeat 0 alone chooses resnet_small.
    ms0, ps0 = results(three_repeats()[0], three_repeats(arch="resnet_v1_152")[0])
    alone = [m for m in models if m.parent.name in ("fold0", "fold1")]
    assert tables.summary_table(ms0, ps0, alone).iloc[0]["chosen_architecture"] == "resnet_small"


def test_leakage_per_class_and_calibration_tables_with_repeats(tmp_path):
    honest = three_repeats()
    leaky = three_repeats(protocol="image", wrong=((0, 0), (1, 0), (0, 0)))
    ms, ps = results(*honest, *leaky)
    t = tables.leakage_table(ps)
    row = t[(t["level"] == "patient") & (t["metric"] == "accuracy")].iloc[0]
    # Differences per repeat: (12 - 11) / 12, (11 - 9) / 12, (12 - 12) / 12.
    assert row["difference"] == pytest.approx(1 / 12) and row["n_repeats"] == 3
    assert (row["difference_repeats_min"], row["difference_repeats_max"]) == pytest.approx((0, 2 / 12))
    low, high = row["difference_ci_low"], row["difference_ci_high"]
    assert low <= row["difference"] <= high
    tables.write_leakage(t, tmp_path / "l.csv", tmp_path / "l.md")
    assert f"+0.083 [{low:+.3f}, {high:+.3f}]; sd 0.083 (0.000–0.167)" in (tmp_path / "l.md").read_text()

    c = per_class.per_class_table(ps, BVM)
    benign = c[(c["class"] == "benign") & (c["protocol"] == "patient-wise")].iloc[0]
    assert benign["n_repeats"] == 3 and benign["patient_sensitivity"] == pytest.approx((5 / 6 + 4 / 6 + 1) / 3)
    assert benign["image_auc_repeats_sd"] > 0 and not pd.isna(benign["image_precision_ci_low"])
    per_class.write_per_class_table(c, out_md=tmp_path / "c.md")
    assert "Trainings (3 per fold)" in (tmp_path / "c.md").read_text()

    cal = calibration.calibration_table(ms)
    assert list(cal["n_folds"]) == [2, 2] and list(cal["n_repeats"]) == [3, 3]
    assert list(cal["n_patients"]) == [12, 12]  # a fold's patients, once for all its repeats
    calibration.write_calibration_table(cal, out_md=tmp_path / "cal.md")
    assert "Several trainings per fold" in (tmp_path / "cal.md").read_text()


def test_the_magnification_table_with_repeats(tmp_path):
    def one(repeat, wrong_patient):
        folds = {}
        for f in (0, 1):
            df = fold_predictions(f, ["40X", "400X"])
            wrong = df["patient"] == f"f{f}p{wrong_patient}"
            df.loc[wrong, "pred"] = np.where(df.loc[wrong, "label"] == "benign", "malignant", "benign")
            folds[f] = df
        return run_results(BVM, folds, n_boot=30, repeat=repeat)
    ms, ps = results(one(0, 1), one(1, 2), one(2, 3))
    t = magnification.magnification_table(ms, ps)
    assert (t["n_repeats"] == 3).all() and (t["n_folds"] == 2).all()
    row = t[t["tested_on"] == "40X"].iloc[0]
    assert not pd.isna(row["image_auc_ci_low"]) and "image_accuracy_repeats_sd" in t.columns
    magnification.write_magnification_table(t, out_md=tmp_path / "m.md")
    assert "2 × 3 trainings" in (tmp_path / "m.md").read_text()


def test_a_repeats_predictions_pool_into_its_own_file(tmp_path):
    paths = []
    for fold, prefix in ((0, "a"), (1, "b")):
        paths.append(tmp_path / f"fold{fold}_r2.parquet")
        binary_fold(prefix, 4).to_parquet(paths[-1])
    pd.DataFrame({"path": ["x"], "patient": ["x"]}).to_parquet(tmp_path / "manifest.parquet")
    out = tmp_path / "pooled_r2.json"
    result = pooled.pooled_file(paths, ["benign", "malignant"], out, BVM, "resnet_small", tmp_path / "manifest.parquet",
                                "all", n_boot=0, seed=0)
    assert result["meta"]["repeat"] == 2 and result["meta"]["folds"] == [0, 1]
    binary_fold("a", 4).to_parquet(tmp_path / "fold0.parquet")
    with pytest.raises(UserError, match=r"predictions of several repeats given \(repeats \[0, 2\]\)"):
        pooled.pooled_file([tmp_path / "fold0.parquet", paths[1]], ["benign", "malignant"], out, BVM,
                           "resnet_small", tmp_path / "manifest.parquet", "all", n_boot=0, seed=0)
    with pytest.raises(UserError, match="does not end in fold"):
        pooled.pooled_file([tmp_path / "fold0_r0.parquet"], ["benign", "malignant"], out, BVM,
                           "resnet_small", tmp_path / "manifest.parquet", "all", n_boot=0, seed=0)
    # The per-fold metrics say which repeat they are of.
    m = metrics.metrics_file(paths[0], ["benign", "malignant"], tmp_path / "m.json", BVM, "resnet_small", 0,
                             tmp_path / "manifest.parquet", "all", n_boot=0, seed=0, repeat=2)
    assert (m["meta"]["fold"], m["meta"]["repeat"]) == (0, 2)
    assert tables.fold_frame([m]).iloc[0]["repeat"] == 2


def test_the_leaderboard_shows_the_mean_over_repeats_with_its_spread(tmp_path):
    runs, models = [], []
    for repeat, n_wrong in enumerate((1, 3)):
        runs.append(run_results(FINETUNE, {0: eva_fold(n_wrong)}, arch="resnet_v1_50", classes=EVA, magnification="40X",
                                n_boot=50, repeat=repeat))
        settings = trainkit.settings(init="imagenet", stage2_steps=3000, max_number_of_steps=3000)
        path = tmp_path / "models" / FINETUNE / "resnet_v1_50" / f"fold0{repeat_suffix(repeat)}" / "settings.json"
        path.parent.mkdir(parents=True)
        path.write_text(json.dumps({"settings": {"init": "imagenet"}, "stages": train.stage_plan(settings)}))
        models.append(path)
    ms, ps = results(*runs)
    table = leaderboard.leaderboard_table(ms, ps, models, {FINETUNE: "eva_breakhis"})
    ours = table[table["source"] == leaderboard.THIS_WORKFLOW].iloc[0]
    values = [p["image_level"]["balanced_accuracy"] for p in ps]
    assert values[0] != values[1] and ours["n_repeats"] == 2
    assert ours["image_balanced_accuracy"] == pytest.approx(np.mean(values))
    assert ours["image_balanced_accuracy_repeats_min"] == pytest.approx(min(values))
    leaderboard.write_leaderboard(table, out_md=tmp_path / "l.md")
    md = (tmp_path / "l.md").read_text()
    assert f"; sd {np.std(values, ddof=1):.3f} ({min(values):.3f}–{max(values):.3f})" in md
    assert "Trainings (2 per fold)" in md
