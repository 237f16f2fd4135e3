"""Tasks and splits: patient safety on the real BreakHis listing, the guard, determinism, the image protocol."""

import json
import logging
import re
from pathlib import Path

import pandas as pd
import pytest
import yaml

from deepbc.data import splits as sp
from deepbc.data import tasks
from deepbc.data.runs import COPIES
from deepbc.data.breakhis import parse_path
from deepbc.jobs.atomic import write_parquet
from deepbc.jobs.errors import UserError
from tests import shared_data, trainkit

REPO = Path(__file__).resolve().parents[1]
CONFIG = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
BREAKHIS_TASKS = ["benign_vs_malignant", "benign_subtypes", "malignant_subtypes"]
CONFLICT_SLIDE = "14-13412"  # filed under DC and LC with byte-identical images (shared/breakhis/README.md)


def _parse(path: str) -> dict:
    r = parse_path(path)
    return {"tissue": r.tissue, "subtype": r.subtype, "slide": r.slide_id, "patient": r.patient,
            "magnification": r.magnification}


@pytest.fixture(scope="module")
def breakhis_manifest() -> pd.DataFrame:
    listing = shared_data.breakhis_listing()
    rows = [dict(path=p, **_parse(p)) for p in listing.read_text().split()]
    df = pd.DataFrame(rows)
    df["label_conflict"] = df["slide"] == CONFLICT_SLIDE
    assert len(df) == 7909
    return df


def _task(name: str) -> tasks.Task:
    return tasks.Task.from_config(name, CONFIG["task_definitions"][name])


def _sides_disjoint(splits: pd.DataFrame) -> None:
    """Independent of assert_patient_safe: per fold, the patient sets of train/val/test are disjoint."""
    for fold, g in splits.groupby("fold"):
        sets = {s: set(g.loc[g["split"] == s, "patient"]) for s in sp.SPLITS}
        assert not sets["train"] & sets["test"], fold
        assert not sets["train"] & sets["val"], fold
        assert not sets["val"] & sets["test"], fold


@pytest.mark.parametrize("name", BREAKHIS_TASKS)
def test_real_breakhis_tasks_are_patient_safe(breakhis_manifest, name):
    k = 5
    selected = tasks.select(breakhis_manifest, _task(name))
    assert CONFLICT_SLIDE not in set(selected["slide"])
    splits = sp.make_splits(selected, k=k, val_fraction=0.2, seed=42, protocol="patient")
    _sides_disjoint(splits)
    sp.assert_patient_safe(splits)
    assert (splits["protocol"] == "patient").all()
    # Every image once per fold, and in exactly one test fold.
    assert (splits.groupby("path")["fold"].nunique() == k).all()
    assert len(splits) == k * len(selected)
    assert (splits[splits["split"] == "test"].groupby("path").size() == 1).all()
    assert set(splits.loc[splits["split"] == "test", "path"]) == set(selected["path"])
    assert list(splits.columns) == sp.COLUMNS
    assert splits.equals(splits.sort_values(["fold", "split", "path"]).reset_index(drop=True))
    # Sibling slides of one numeric id (14-22549 AB/CD/G under adenosis) share a side.
    if name != "malignant_subtypes":
        sides = splits[splits["patient"] == "14-22549"].groupby("fold")["split"].nunique()
        assert (sides == 1).all()


def test_conflict_slide_stays_on_one_side_when_included(breakhis_manifest):
    selected = tasks.select(breakhis_manifest, _task("malignant_subtypes"), exclude_label_conflicts=False)
    assert set(selected.loc[selected["slide"] == CONFLICT_SLIDE, "label"]) == {"DC", "LC"}
    splits = sp.make_splits(selected, k=5, val_fraction=0.2, seed=7, protocol="patient")
    assert (splits[splits["patient"] == CONFLICT_SLIDE].groupby("fold")["split"].nunique() == 1).all()


def test_few_patient_class_is_warned(breakhis_manifest, caplog):
    caplog.set_level(logging.WARNING)
    sp.make_splits(tasks.select(breakhis_manifest, _task("benign_subtypes")), k=5, val_fraction=0.2, seed=42,
                   protocol="patient")
    assert re.search(r"class 'PT' has 3 patient\(s\), fewer than k=5", caplog.text)
    assert re.search(r"fold \d test has no image of class\(es\) \[.*'PT'", caplog.text)


def test_image_protocol_is_labelled_and_leaky(breakhis_manifest, caplog):
    caplog.set_level(logging.WARNING)
    selected = tasks.select(breakhis_manifest, _task("benign_vs_malignant"))
    splits = sp.make_splits(selected, k=5, val_fraction=0.2, seed=42, protocol="image")
    assert (splits["protocol"] == "image").all()
    leaks = sp.patient_leaks(splits)
    assert set(leaks["fold"]) == set(range(5)) and len(leaks) > 100
    with pytest.raises(UserError, match="patient leak"):
        sp.assert_patient_safe(splits)
    assert "IMAGE-LEVEL PROTOCOL" in caplog.text
    assert re.search(r"fold 0 \(image-level \(originals split at random\)\): \d+ of \d+ test patients also appear in "
                     r"train", caplog.text)
    # Stratified over images: each test fold holds about a fifth of every class.
    test = splits[splits["split"] == "test"].groupby(["fold", "label"]).size().unstack()
    assert (test.max() - test.min() <= 1).all()


def _tiny(n_patients=12, images_per_patient=4, classes=("benign", "malignant")) -> pd.DataFrame:
    rows = []
    for p in range(n_patients):
        for i in range(images_per_patient):
            rows.append({"path": f"p{p:02d}/img{i}.png", "patient": f"P{p:02d}", "slide": f"S{p:02d}",
                         "magnification": "40X", "tissue": classes[p % len(classes)], "label_conflict": False})
    return pd.DataFrame(rows)


def _tiny_task(**over) -> tasks.Task:
    spec = {"dataset": "breakhis", "label": "tissue", "classes": ["benign", "malignant"], **over}
    return tasks.Task.from_config("t", spec)


def test_guard_names_the_leaking_patient_fold_and_sides():
    splits = sp.make_splits(tasks.select(_tiny(), _tiny_task()), k=3, val_fraction=0.25, seed=0, protocol="patient")
    leaky = splits.copy()
    row = leaky.index[(leaky["fold"] == 1) & (leaky["split"] == "test")][0]
    victim = leaky.loc[row, "patient"]
    other = leaky.index[(leaky["fold"] == 1) & (leaky["patient"] == victim) & (leaky.index != row)][0]
    leaky.loc[other, "split"] = "train"
    with pytest.raises(UserError) as err:
        sp.assert_patient_safe(leaky)
    assert f"patient {victim} in fold 1 on test+train" in str(err.value)
    sp.assert_patient_safe(splits)


def test_same_input_and_seed_give_byte_identical_parquet(tmp_path):
    selected = tasks.select(_tiny(), _tiny_task())
    a, b, c = tmp_path / "a.parquet", tmp_path / "b.parquet", tmp_path / "c.parquet"
    write_parquet(a, sp.make_splits(selected, 3, 0.25, 5, "patient"))
    # Row order of the input must not matter.
    write_parquet(b, sp.make_splits(selected.sample(frac=1, random_state=1), 3, 0.25, 5, "patient"))
    write_parquet(c, sp.make_splits(selected, 3, 0.25, 6, "patient"))
    assert a.read_bytes() == b.read_bytes()
    assert a.read_bytes() != c.read_bytes()


def test_too_few_patients_is_a_user_error():
    with pytest.raises(UserError, match="too few"):
        sp.make_splits(tasks.select(_tiny(n_patients=2), _tiny_task()), 3, 0.25, 0, "patient")


def test_select_filters_and_labels():
    df = _tiny(n_patients=8, classes=("benign", "malignant"))
    df.loc[df["patient"] == "P01", "magnification"] = "400X"
    df.loc[df["path"] == "p00/img0.png", "label_conflict"] = True
    out = tasks.select(df, _tiny_task(classes=["malignant", "benign"], magnification="40X"))
    assert "p00/img0.png" not in set(out["path"]) and not (out["patient"] == "P01").any()
    assert (out["label_index"] == (out["label"] == "benign").astype(int)).all()
    kept = tasks.select(df, _tiny_task(), exclude_label_conflicts=False)
    assert "p00/img0.png" in set(kept["path"])
    only = tasks.select(df, _tiny_task(filter={"patient": ["P00", "P01", "P02", "P03"]}))
    assert set(only["patient"]) == {"P00", "P01", "P02", "P03"}


def test_unexpected_labels_are_listed():
    df = _tiny()
    df.loc[df["patient"] == "P03", "tissue"] = "borderline"
    with pytest.raises(UserError) as err:
        tasks.select(df, _tiny_task())
    assert "'borderline': 4 image(s), e.g. p03/img0.png" in str(err.value)


def test_empty_class_is_a_user_error():
    df = _tiny(classes=("benign",))
    with pytest.raises(UserError, match=r"class\(es\) \['malignant'\] have no images"):
        tasks.select(df, _tiny_task())


def test_task_config_errors():
    with pytest.raises(UserError, match="magnification"):
        _tiny_task(magnification="50X")
    with pytest.raises(UserError, match="protocol"):
        _tiny_task(protocols=["slide"])


def test_splits_carry_the_manifest_hash():
    manifest = _tiny().assign(sha256=lambda d: [f"{i:064x}" for i in range(len(d))])
    splits = sp.make_splits(tasks.select(manifest, _tiny_task()), 3, 0.25, 5, "patient")
    assert list(splits.columns) == sp.COLUMNS + ["sha256"]
    by_path = dict(zip(manifest["path"], manifest["sha256"]))
    assert (splits["sha256"] == splits["path"].map(by_path)).all()


def test_make_splits_script(tmp_path):
    manifest = tmp_path / "m.parquet"
    write_parquet(manifest, _tiny())
    out = tmp_path / "splits.parquet"
    task_json = json.dumps(CONFIG["task_definitions"]["benign_vs_malignant"])
    args = ["--manifest", manifest, "--task", "benign_vs_malignant", "--task-json", task_json, "--protocol",
            "patient", "--splits-json", json.dumps({"k": 3, "val_fraction": 0.25}), "--seed", "1"]
    audit = [f"--audit-{ext}" for ext in ("json", "csv", "md")]
    audit = [a for ext, flag in zip(("json", "csv", "md"), audit) for a in (flag, tmp_path / f"audit.{ext}")]
    trainkit.run_script("make_splits", *args, "--out", out, *audit, "--log", tmp_path / "log", check=True)
    splits = pd.read_parquet(out)
    assert list(splits.columns) == sp.COLUMNS and len(splits) == 3 * 48
    sp.assert_patient_safe(splits)
    summary = json.loads((tmp_path / "audit.json").read_text())
    assert summary["label"] == "3-fold patient-wise cross-validation" and summary["patients_on_two_sides"] == 0
    assert "None: no patient has images on two sides" in (tmp_path / "audit.md").read_text()
    bad = trainkit.run_script("make_splits", *args, "--out", tmp_path / "x.parquet", *audit, "--log",
                              tmp_path / "bad.log", "--task-json", "{not json")
    # A bad argument is refused like any bad input: exit code 1, and the reason in the job's log file.
    assert bad.returncode == 1 and "argument --task-json: not valid JSON" in (tmp_path / "bad.log").read_text()
    assert not (tmp_path / "x.parquet").exists()


@pytest.mark.parametrize("val_fraction", [0.2, 0.4, 0.6])
def test_validation_share_follows_the_setting(val_fraction, caplog):
    caplog.set_level(logging.INFO)
    splits = sp.make_splits(tasks.select(_tiny(n_patients=31), _tiny_task()), 3, val_fraction, 3, "patient")
    _sides_disjoint(splits)
    for fold, g in splits[splits["split"] != "test"].groupby("fold"):
        patients = g.groupby("split")["patient"].nunique()
        n = patients.sum()
        # Whole patients: within half a patient of the setting.
        assert abs(patients["val"] - val_fraction * n) <= 0.5, (fold, dict(patients))
        # Stratified: each class keeps about its share of the validation patients.
        per_class = g.groupby(["label", "split"])["patient"].nunique().unstack()
        assert (abs(per_class["val"] / per_class.sum(axis=1) - val_fraction) <= 1.0 / per_class.sum(axis=1)).all()
        assert re.search(rf"fold {fold} validation share \(setting {val_fraction}\): {patients['val']} of {n} "
                         r"patients \([\d.]+\), \d+ of \d+ images", caplog.text)


def test_validation_share_that_leaves_no_patient_is_refused():
    with pytest.raises(UserError, match="splits.val_fraction"):
        sp.make_splits(tasks.select(_tiny(n_patients=6), _tiny_task()), 3, 0.1, 0, "patient")


def _test_partition(splits: pd.DataFrame) -> frozenset:
    return frozenset(frozenset(g.loc[g["split"] == "test", "patient"]) for _, g in splits.groupby("fold"))


@pytest.mark.parametrize("name, seeds", [("benign_subtypes", [4, 5, 8, 42]), ("malignant_subtypes", [0, 42])])
def test_every_training_fold_of_the_real_subtype_tasks_has_every_class(breakhis_manifest, name, seeds):
    """Seeds 4, 5 and 8 left fold 0 of benign_subtypes without an adenosis image in training (its
    second patient drawn into validation), and nothing refused it."""
    selected = tasks.select(breakhis_manifest, _task(name))
    for seed in seeds:
        splits = sp.make_splits(selected, 5, 0.2, seed, "patient")
        train = splits[splits["split"] == "train"].groupby("fold")["label"].agg(set)
        assert (train == set(selected["label"])).all(), (seed, train.to_dict())


def test_validation_sets_have_every_class_the_draw_has_room_for(breakhis_manifest):
    """malignant_subtypes' validation sets (9 patients) left lobular carcinoma (3 patients) out
    in a fifth of the folds; one of each class with two training-side patients is drawn first."""
    selected = tasks.select(breakhis_manifest, _task("malignant_subtypes"))
    for seed in (1, 3, 42):
        splits = sp.make_splits(selected, 5, 0.2, seed, "patient")
        val = splits[splits["split"] == "val"].groupby("fold")["label"].agg(set)
        assert (val == set(selected["label"])).all(), (seed, val.to_dict())


def test_subtype_folds_vary_with_the_seed(breakhis_manifest):
    """scikit-learn's StratifiedGroupKFold gave 2 distinct 5-fold partitions of the benign subtypes'
    16 patients over 40 seeds: it orders patients by their image counts, which all differ."""
    selected = tasks.select(breakhis_manifest, _task("benign_subtypes"))
    partitions = {_test_partition(sp.make_splits(selected, 5, 0.2, seed, "patient")) for seed in range(20)}
    assert len(partitions) >= 15, len(partitions)


def test_a_training_fold_without_a_class_is_refused(caplog):
    """A class of one patient cannot be in the training set of the fold that tests that patient."""
    df = _tiny(n_patients=12, classes=("benign", "malignant"))
    df.loc[df["patient"] == "P01", "tissue"] = "borderline"
    task = _tiny_task(classes=["benign", "malignant", "borderline"])
    with pytest.raises(UserError) as err:
        sp.make_splits(tasks.select(df, task), 3, 0.25, 0, "patient")
    text = str(err.value)
    assert re.search(r"fold \d's training set has no image of class 'borderline': the class's patients are P01 "
                     r"in test", text), text
    assert "remove the class from the task's classes" in text and "splits.scheme: repeated_holdout" in text
    # With two such patients the folds are redrawn until both are never tested together.
    df.loc[df["patient"] == "P07", "tissue"] = "borderline"
    splits = sp.make_splits(tasks.select(df, task), 3, 0.25, 0, "patient")
    assert (splits[splits["split"] == "train"].groupby("fold")["label"].nunique() == 3).all()


def test_a_validation_set_without_a_class_is_warned_and_audited(breakhis_manifest, caplog):
    caplog.set_level(logging.WARNING)
    selected = tasks.select(breakhis_manifest, _task("benign_subtypes"))
    splits = sp.make_splits(selected, 5, 0.2, 42, "patient")
    summary, straddling, markdown = sp.audit(splits, trainkit.split_settings(), "patient", "benign_subtypes")
    absent = {int(f): e["val"]["absent_classes"] for f, e in summary["folds"].items() if e["val"]["absent_classes"]}
    assert absent and straddling.empty and summary["patients_on_two_sides"] == 0
    for fold, classes in absent.items():
        assert f"fold {fold} val has no image of class(es) {classes}: checkpoint choice, early stopping and " \
               "temperature scaling use the validation loss over the classes present" in caplog.text
        assert f"| {fold} |" in markdown
    assert summary["label"] == "5-fold patient-wise cross-validation"


def _write_manifest(df: pd.DataFrame, tmp_path) -> Path:
    path = tmp_path / "manifest.parquet"
    write_parquet(path, df)
    return path


def test_one_magnification_tasks_test_the_all_magnification_patients(breakhis_manifest, tmp_path):
    """Each one-magnification task made its own folds: with seed 42 none of its 5 test folds was
    the all-magnification task's, so the magnification table compared different patients."""
    paper = yaml.safe_load((REPO / "config" / "paper.yaml").read_text())["task_definitions"]
    manifest = _write_manifest(breakhis_manifest, tmp_path)
    settings = trainkit.split_settings()

    def tested(name):
        task = tasks.Task.from_config(name, paper[name])
        splits = sp.build_splits_file(manifest, task, "patient", settings, 42, tmp_path / f"{name}.parquet")
        return splits, {f: set(g.loc[g["split"] == "test", "patient"]) for f, g in splits.groupby("fold")}

    _, everything = tested("benign_vs_malignant")
    for mag in ("40X", "100X", "200X", "400X"):
        splits, by_fold = tested(f"benign_vs_malignant_{mag}")
        assert (splits["magnification"] == mag).all()
        assert by_fold == everything, mag


def test_repeated_holdouts_on_the_real_listing(breakhis_manifest, tmp_path):
    """Spanhol et al.'s protocol: 5 patient-wise holdouts of 30 % of the patients, each a fold,
    validation from the training side; the one-magnification tasks share the holdouts."""
    selected = tasks.select(breakhis_manifest, _task("benign_vs_malignant"))
    splits = sp.make_holdouts(selected, 5, 0.3, 0.2, 42, "patient")
    _sides_disjoint(splits)
    assert sorted(splits["fold"].unique()) == [0, 1, 2, 3, 4] and len(splits) == 5 * len(selected)
    n = selected["patient"].nunique()
    tested = [frozenset(g.loc[g["split"] == "test", "patient"]) for _, g in splits.groupby("fold")]
    assert all(len(t) == round(0.3 * n) for t in tested) and len(set(tested)) == 5
    for _, g in splits.groupby("fold"):
        per_class = g[g["split"] == "test"].groupby("label")["patient"].nunique()
        everyone = g.groupby("label")["patient"].nunique()
        assert (abs(per_class - 0.3 * everyone) <= 1).all()
    assert splits.equals(sp.make_holdouts(selected.sample(frac=1, random_state=0), 5, 0.3, 0.2, 42, "patient"))
    # Subtypes: every training set keeps every class, whichever patients are drawn.
    subtypes = tasks.select(breakhis_manifest, _task("benign_subtypes"))
    for seed in range(5):
        held = sp.make_holdouts(subtypes, 5, 0.3, 0.2, seed, "patient")
        assert (held[held["split"] == "train"].groupby("fold")["label"].nunique() == 4).all()
    paper = yaml.safe_load((REPO / "config" / "paper.yaml").read_text())["task_definitions"]
    manifest = _write_manifest(breakhis_manifest, tmp_path)
    settings = trainkit.split_settings(scheme="repeated_holdout")
    forty = sp.build_splits_file(manifest, tasks.Task.from_config("m", paper["benign_vs_malignant_40X_spanhol"]),
                                 "patient", settings, 42, tmp_path / "40X.parquet")
    assert [frozenset(g.loc[g["split"] == "test", "patient"]) for _, g in forty.groupby("fold")] == tested


def test_image_level_holdouts(breakhis_manifest):
    selected = tasks.select(breakhis_manifest, _task("benign_vs_malignant"))
    splits = sp.make_holdouts(selected, 3, 0.3, 0.2, 0, "image")
    test = splits[splits["split"] == "test"].groupby("fold").size()
    assert (abs(test / len(selected) - 0.3) < 0.01).all() and len(test) == 3
    assert (splits["protocol"] == "image").all()


def test_augment_then_split_deals_image_copies_and_says_so(caplog, tmp_path):
    """The preprint's leak (issue 23.5): every image's 8 copies split at random, so other copies of
    a test image sit in training; the image-level protocol splits the originals, with no copies."""
    caplog.set_level(logging.INFO)
    selected = tasks.select(_tiny(), _tiny_task(protocols=["patient", "image", "augmented_image"]))
    splits = sp.make_splits(selected, k=3, val_fraction=0.25, seed=0, protocol="augmented_image")
    assert (splits["protocol"] == "augmented_image").all() and list(splits.columns[:9]) == sp.COLUMNS
    assert splits.equals(sp.make_splits(selected, k=3, val_fraction=0.25, seed=0, protocol="augmented_image"))
    # Every copy of every image once per fold, each tested in exactly one fold.
    assert (splits.groupby("fold").size() == 8 * len(selected)).all()
    assert not splits.duplicated(["fold", "path", "copy"]).any()
    test = splits[splits["split"] == "test"]
    assert sorted(zip(test["path"], test["copy"])) == sorted((p, c) for p in selected["path"] for c in range(8))
    assert sorted(splits.drop_duplicates("copy")["copy"]) == list(range(len(COPIES))) and len(COPIES) == 8
    # The leak: nearly every test copy has another copy of its image in training (7 siblings, each
    # trained on with probability ~1/2), and the copies of one image are spread over the sides.
    leaks = sp.copy_leaks(splits)
    sizes = test.groupby("fold").size()
    assert set(leaks) == {0, 1, 2} and all(leaks[f] > 0.9 * sizes[f] for f in leaks)
    assert (splits[splits["fold"] == 0].groupby("path")["split"].nunique() > 1).mean() > 0.9
    assert "AUGMENT-THEN-SPLIT PROTOCOL (the preprint's leak)" in caplog.text
    assert re.search(r"fold 0 \(augment-then-split \(the preprint's leak\)\): \d+ of 128 test copies", caplog.text)
    # The image-level protocol: the originals, no copies, no copy leak.
    image = sp.make_splits(selected, k=3, val_fraction=0.25, seed=0, protocol="image")
    assert "copy" not in image and sp.copy_leaks(image) == {} and len(image) == 3 * len(selected)
    # Named so in the audit (which the tables' notes copy).
    settings = trainkit.split_settings(k=3)
    summary, _, markdown = sp.audit(splits, settings, "augmented_image", "t__augmented_image_level")
    assert summary["label"] == "3-fold augment-then-split cross-validation (8 copies per image)"
    assert summary["copies_per_image"] == list(COPIES)
    assert summary["folds"]["0"]["test_copies_with_a_copy_in_train"] == leaks[0]
    assert "each image copy is tested once" in summary["note"]
    assert f"Test copies with another copy of their image in training: fold 0: {leaks[0]} of 128" in markdown
    holdouts = sp.make_holdouts(selected, 2, 0.3, 0.25, 0, "augmented_image")
    assert (holdouts.groupby("fold").size() == 8 * len(selected)).all()
    assert (abs(holdouts[holdouts["split"] == "test"].groupby("fold").size() / (8 * len(selected)) - 0.3) < 0.01).all()


def test_augment_then_split_is_refused_where_a_split_must_be_patient_wise(tmp_path):
    settings = trainkit.split_settings(predefined=str(EVA), predefined_key="slide")
    task = tasks.Task.from_config("eva", {**EVA_TASK, "protocols": ["patient", "augmented_image"]})
    with pytest.raises(UserError, match="cannot be combined with the augment-then-split") as err:
        sp.build_splits_file("unread.parquet", task, "augmented_image", settings, 0, tmp_path / "s.parquet")
    assert "set protocols: [patient]" in err.value.fix


EVA = REPO / "config" / "splits" / "eva_breakhis_v2_40X.csv"
EVA_TASK = {"dataset": "breakhis", "label": "subtype", "classes": ["TA", "MC", "F", "DC"],
            "filter": {"subtype": ["TA", "MC", "F", "DC"]}, "magnification": "40X"}


def _predefined(tmp_path, breakhis_manifest, csv, allow=False, key="slide", spec=None):
    task = tasks.Task.from_config("eva_breakhis", spec or EVA_TASK)
    settings = trainkit.split_settings(predefined=str(csv), predefined_key=key, allow_straddling=allow)
    audit = [tmp_path / f"audit.{ext}" for ext in ("json", "csv", "md")]
    splits = sp.build_splits_file(_write_manifest(breakhis_manifest, tmp_path), task, "patient", settings, 42,
                                  tmp_path / "splits.parquet", audit)
    return splits, audit


def test_a_published_split_with_a_patient_on_two_sides_is_refused_naming_them(breakhis_manifest, tmp_path, caplog):
    """eva's BreakHis split (kaiko-ai/eva, config/splits) names slide folders: 16184 in
    train, 16184CD in validation, both of numeric patient 14-16184."""
    with pytest.raises(UserError) as err:
        _predefined(tmp_path, breakhis_manifest, EVA)
    text = str(err.value)
    assert "puts images of 4 patient(s) on two sides" in text
    for patient in ("14-16184 (14-16184: train 39; 14-16184CD: test 35)", "14-18842 (14-18842: train 15; "
                    "14-18842D: test 16)", "14-19979 (14-19979: test 26; 14-19979C: train 17)",
                    "14-23060 (14-23060AB: train 23; 14-23060CD: test 14)"):
        assert patient in text, text
    assert "set splits.allow_straddling: true" in text and "predefined split, 4 patients on two sides" in text
    assert not (tmp_path / "splits.parquet").exists()

    caplog.set_level(logging.INFO)
    splits, audit = _predefined(tmp_path, breakhis_manifest, EVA, allow=True)
    assert set(splits["fold"]) == {0} and (splits["magnification"] == "40X").all()
    # eva's 1,471 images at 40X but the 32 of slide 14-13412, filed under two subtypes (left out).
    assert len(splits) == 1471 - 32 and (splits.groupby("split").size()[["train", "val"]].sum() == 1132 - 32)
    assert (splits["split"] == "test").sum() == 339
    summary = json.loads(audit[0].read_text())
    assert summary["label"] == "predefined split, 4 patients on two sides" and summary["scheme"] == "predefined"
    assert summary["patients_on_two_sides"] == 4 and summary["unit"] == "split"
    table = pd.read_csv(audit[1])
    assert list(table.columns) == sp.AUDIT_COLUMNS and set(table["patient"]) == {
        "14-16184", "14-18842", "14-19979", "14-23060"}
    assert "| 0 | 14-16184 | 14-16184CD | test | 35 |" in audit[2].read_text()
    assert "4 patient(s) have images on two sides of the split (allow_straddling)" in caplog.text
    assert "has no val rows: " in caplog.text


def _published(tmp_path, rows: str):
    path = tmp_path / "published.csv"
    path.write_text("key,split\n" + rows)
    return path


@pytest.mark.parametrize("rows, expected", [
    ("14-16184,train\n14-16184,test\n", "1 key(s) appear more than once in the predefined split: '14-16184' on "
                                        "lines 2, 3"),
    ("14-16184,holdout\n", "line 2: '14-16184','holdout'"),
    ("14-99999,train\n16184CD,test\n", "2 key(s) of the predefined split match no slide of the dataset's manifest: "
                                       "line 2: '14-99999'; line 3: '16184CD'"),
])
def test_bad_predefined_rows_are_clear_errors(breakhis_manifest, tmp_path, rows, expected):
    with pytest.raises(UserError) as err:
        _predefined(tmp_path, breakhis_manifest, _published(tmp_path, rows))
    assert expected in str(err.value), str(err.value)


def test_images_a_predefined_split_does_not_place_are_an_error_unless_excluded(breakhis_manifest, tmp_path,
                                                                             caplog):
    listed = EVA.read_text().split("\n", 1)[1]
    without = "\n".join(r for r in listed.splitlines() if not r.startswith(("14-16184", "14-9133,")))
    with pytest.raises(UserError) as err:
        _predefined(tmp_path, breakhis_manifest, _published(tmp_path, without + "\n"))
    assert "100 image(s) of the task (3 slide(s), e.g. '14-9133', '14-16184', '14-16184CD') are placed by no row" \
        in str(err.value)
    assert "or exclude to leave" in str(err.value)
    caplog.set_level(logging.WARNING)
    excluded = without + "\n14-16184,exclude\n14-16184CD,exclude\n14-9133,exclude\n"
    splits, audit = _predefined(tmp_path, breakhis_manifest, _published(tmp_path, excluded), allow=True)
    assert not splits["slide"].isin(["14-16184", "14-16184CD", "14-9133"]).any()
    assert "leaves out (split exclude) 100 image(s) of the task, by slide: {'14-16184': 39, '14-16184CD': 35, " \
           "'14-9133': 26}" in caplog.text
    assert json.loads(audit[0].read_text())["label"] == "predefined split, 3 patients on two sides"


def test_a_spreadsheets_byte_order_mark_is_not_part_of_the_header(tmp_path):
    path = tmp_path / "split.csv"
    path.write_bytes("key,split\n14-16184,train\n".encode("utf-8-sig"))
    assert list(sp.read_predefined(path)[["key", "split"]].iloc[0]) == ["14-16184", "train"]


def test_a_patient_keyed_split_is_patient_wise(breakhis_manifest, tmp_path):
    selected = tasks.select(breakhis_manifest, tasks.Task.from_config("eva_breakhis", EVA_TASK))
    patients = sorted(selected["patient"].unique())
    rows = "".join(f"{p},{'test' if i % 4 == 0 else 'val' if i % 4 == 1 else 'train'}\n"
                   for i, p in enumerate(patients))
    splits, audit = _predefined(tmp_path, breakhis_manifest, _published(tmp_path, rows), key="patient")
    _sides_disjoint(splits)
    summary = json.loads(audit[0].read_text())
    assert summary["label"] == "predefined split (published.csv, by patient)" and summary["patients_on_two_sides"] == 0
    assert "None: no patient has images on two sides of any split." in audit[2].read_text()
