"""External validation: splits with another dataset's images as the test split, the check that no
test image or patient is in training, the shards read from two roots, and the tables' marking."""

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from deepbc.data import splits as sp
from deepbc.data import tasks
from deepbc.evaluation import metrics
from deepbc.jobs.errors import UserError
from deepbc.results import tables
from deepbc.shards import reader as shard_reader
from deepbc.shards import records
from deepbc.shards import writer as shard_writer
from deepbc.workflow import config as workflow_config
from tests import trainkit
from tests.conftest import validated_config

ROOT = Path(__file__).resolve().parents[1]


def _manifest(prefix, n_patients, classes=("benign", "malignant"), per_patient=2):
    rows = []
    for p in range(n_patients):
        for i in range(per_patient):
            path = f"{prefix}{p:02d}/img{i}.png"
            rows.append({"path": path, "patient": f"{prefix}{p:02d}", "slide": f"{prefix}{p:02d}",
                         "magnification": "40X", "tissue": classes[p % len(classes)], "label_conflict": False,
                         "sha256": f"{prefix}-{p}-{i}"})
    return pd.DataFrame(rows)


TASK = tasks.Task.from_config("t", {"dataset": "home", "test_dataset": "site_b", "label": "tissue",
                                    "classes": ["benign", "malignant"]})


def _external(k, train=None, test=None):
    train = _manifest("H", 10) if train is None else train
    test = _manifest("X", 3) if test is None else test
    return sp.make_external_splits(tasks.select(train, TASK), tasks.select(test, TASK, dataset="site_b"),
                                   k=k, val_fraction=0.25, seed=0, dataset="home", test_dataset="site_b")


@pytest.mark.parametrize("k", [1, 3])
def test_every_fold_trains_patient_wise_and_tests_on_all_external_images(k):
    splits = _external(k)
    assert sorted(splits["fold"].unique()) == list(range(k))
    for fold, g in splits.groupby("fold"):
        test = g[g["split"] == "test"]
        assert sorted(test["path"]) == sorted(_manifest("X", 3)["path"])
        assert set(test["dataset"]) == {"site_b"} and set(g.loc[g["split"] != "test", "dataset"]) == {"home"}
        train, val = (set(g.loc[g["split"] == s, "patient"]) for s in ("train", "val"))
        assert train and val and not train & val
        if k == 1:  # one model: every patient of the training dataset in training or validation
            assert train | val == set(_manifest("H", 10)["patient"])
    assert splits["label_index"].tolist() == splits["label"].map({"benign": 0, "malignant": 1}).tolist()


@pytest.mark.parametrize("column, text", [("sha256", "image(s) (same sha256)"), ("patient", "patient id(s)")])
def test_a_test_image_or_patient_also_in_training_fails(column, text):
    test = _manifest("X", 3)
    test.loc[0, column] = _manifest("H", 10).loc[4, column]
    with pytest.raises(UserError, match=re.escape(f"1 {text} of the external test dataset are also in training")):
        _external(2, test=test)


def test_image_grouped_paths_are_not_compared_as_patient_ids():
    """Two folder datasets without patients CSV: patient = path, so both sites' X00/img0.png are
    different images (sha256), not a shared patient."""
    train = _manifest("X", 10).assign(patient=lambda d: d["path"], patient_source="image")
    test = _manifest("X", 3, per_patient=1).assign(patient=lambda d: d["path"], patient_source="image",
                                                   sha256=lambda d: "other-" + d["sha256"])
    splits = _external(2, train=train, test=test)
    assert (splits["split"] == "test").sum() == 2 * 3
    with pytest.raises(UserError, match="1 image"):  # the same bytes are still refused
        _external(2, train=train, test=test.assign(sha256=train["sha256"].iloc[:3].tolist()).iloc[:1])
    # A patients CSV's ids are compared as before.
    with pytest.raises(UserError, match="patient id"):
        _external(2, train=train.assign(patient_source="csv"), test=test.assign(patient_source="csv"))


def test_subset_of_classes_is_accepted_and_a_foreign_class_refused():
    only_benign = _manifest("X", 3, classes=("benign",))
    splits = _external(2, test=only_benign)
    assert set(splits.loc[splits["split"] == "test", "label"]) == {"benign"}
    foreign = _manifest("X", 3, classes=("benign", "normal"))
    with pytest.raises(UserError, match="'normal'(.|\n)*dataset 'site_b'"):
        tasks.select(foreign, TASK, dataset="site_b")


def test_splits_file_needs_the_test_manifest_exactly_for_external_tasks(tmp_path):
    _manifest("H", 10).to_parquet(tmp_path / "home.parquet")
    _manifest("X", 3).to_parquet(tmp_path / "x.parquet")
    out = tmp_path / "splits.parquet"
    settings = trainkit.split_settings(k=2, val_fraction=0.25)
    audit = [tmp_path / f"audit.{ext}" for ext in ("json", "csv", "md")]
    sp.build_splits_file(tmp_path / "home.parquet", TASK, "patient", settings, 0, out, audit,
                         test_manifest_path=tmp_path / "x.parquet")
    assert (pd.read_parquet(out)["split"] == "test").sum() == 2 * 6
    # The audit says what the folds are: not k-fold cross-validation, every fold tests site_b.
    summary = json.loads(audit[0].read_text())
    assert summary["label"] == "2 patient-wise folds of training and validation, each tested on all of site_b"
    assert summary["patients_on_two_sides"] == 0 and summary["folds"]["0"]["test"]["patients"] == 3
    with pytest.raises(UserError, match="test_dataset 'site_b'"):
        sp.build_splits_file(tmp_path / "home.parquet", TASK, "patient", settings, 0, out)


def test_shards_read_each_row_under_its_dataset_root(tmp_path):
    splits = _external(1)
    roots = {"home": tmp_path / "home", "site_b": tmp_path / "site b"}
    for ds, path in zip(splits["dataset"], splits["path"]):
        file = roots[ds] / path
        file.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((12, 16, 3), len(path), np.uint8)).save(file)
    splits = splits.drop(columns="sha256")
    splits.to_parquet(tmp_path / "s.parquet")
    stores = {}
    for ds, rows in splits.groupby("dataset"):  # each dataset's store, as encode_dataset makes it
        shard_writer.encode_store(rows, roots[ds], tmp_path / "encoded" / ds, seed=0, shards={"images_per_shard": 64})
        stores[ds] = tmp_path / "encoded" / ds / "store.json"
    indexes = shard_writer.write_split_indexes_file(tmp_path / "s.parquet", 0, stores["home"], tmp_path / "out",
                                                    test_store=stores["site_b"])
    assert indexes["test"]["count"] == 6 and indexes["train"]["count"] + indexes["val"]["count"] == 20
    # The test split reads the external dataset's store; train and val their own.
    assert all(n.startswith("../encoded/site_b/") for n in indexes["test"]["shards"])
    assert all(n.startswith("../encoded/home/") for s in ("train", "val") for n in indexes[s]["shards"])
    files = [f["image/filename"].numpy().decode() for f in
             (records.parse_example(r) for r, _ in shard_reader.member_records(tmp_path / "out" / "test.json"))]
    assert sorted(files) == sorted(splits.loc[(splits["fold"] == 0) & (splits["split"] == "test"), "path"])
    # Without the test store the external images are looked for in the training dataset's store.
    with pytest.raises(UserError, match="6 image\\(s\\) of fold 0's test split are not in the encoded store"):
        shard_writer.write_split_indexes_file(tmp_path / "s.parquet", 0, stores["home"], tmp_path / "out2")


def test_external_folds_resample_the_same_test_patients(tmp_path):
    """Folds tested on one external set share their bootstrap draws, so the pooled interval resamples
    those patients jointly; internal folds draw independently."""
    rng = np.random.default_rng(0)
    prob = rng.uniform(size=24)
    pred = pd.DataFrame({"path": [f"p{i}" for i in range(24)], "patient": [f"P{i // 3}" for i in range(24)],
                         "label": ["benign", "malignant"] * 12, "pred": np.where(prob > 0.5, "malignant", "benign"),
                         "prob_benign": 1 - prob, "prob_malignant": prob})
    pred.to_parquet(tmp_path / "p.parquet")
    pd.DataFrame({"path": pred["path"], "patient": pred["patient"]}).to_parquet(tmp_path / "m.parquet")

    def draws(fold, test_dataset):
        m = metrics.metrics_file(tmp_path / "p.parquet", ["benign", "malignant"], tmp_path / f"{fold}.json", "t",
                                 "a", fold, tmp_path / "m.parquet", "all", n_boot=20, seed=1, test_dataset=test_dataset)
        assert m["meta"]["test_dataset"] == test_dataset
        return m["image_level"]["bootstrap_values"]["accuracy"]

    assert draws(0, "site_b") == draws(1, "site_b")
    assert draws(0, None) != draws(1, None)


def _external_results(task, n_folds, test_dataset):
    """Every fold's model tested on the same 3 patients (6 images) when ``test_dataset`` is given,
    else on 3 patients of its own."""
    from tests.resultkit import binary_fold, run_results

    folds = {f: binary_fold("x" if test_dataset else f"f{f}", 3) for f in range(n_folds)}
    return run_results(task, folds, test_dataset=test_dataset)


def test_tables_mark_the_test_external_and_leave_it_out_of_the_leakage_table(tmp_path):
    from tests.resultkit import results

    ms, ps = results(_external_results("ext", 2, "site_b"), _external_results("int", 2, None))
    t = tables.task_table(ms, ps, "ext", preprint={"source": {"protocol_note": "n"}})
    assert list(t["test"]) == ["external: site_b"]
    tables.write_task_table(t, out_md=tmp_path / "t.md", preprint={"source": {"protocol_note": "n"}})
    md = (tmp_path / "t.md").read_text()
    assert "| external: site_b |" in md and tables.EXTERNAL_NOTE in md
    assert tables.leakage_table(ps).empty


def test_external_folds_count_their_shared_test_set_once():
    """Three folds each tested on the same 3 patients: 3 patients in the table, not 9; the pooled
    figures hold each of their units once per fold's model."""
    from tests.resultkit import results

    ms, ps = results(_external_results("ext", 3, "site_b"), _external_results("int", 3, None))
    ext = tables.task_table(ms, ps, "ext", preprint={"source": {"protocol_note": "n"}})
    assert (ext["n_folds"].tolist(), ext["n_patients"].tolist(), ext["n_images"].tolist()) == ([3], [3], [6])
    assert ext["patient_accuracy_n"].tolist() == [9]
    internal = tables.task_table(ms, ps, "int", preprint={"source": {"protocol_note": "n"}})
    assert internal["n_patients"].tolist() == [9]


def demo_config():
    """The demo's config as the workflow checks it: validated, the schema's defaults filled in."""
    return validated_config("config.yaml")


def external_config(**task):
    config = demo_config()
    config["datasets"]["site_b"] = {"kind": "folder", "root": "site_b", "classes": ["breast", "lung"]}
    config["task_definitions"]["ext"] = {"dataset": "tma", "test_dataset": "site_b", "label": "label",
                                         "classes": ["breast", "bladder", "lung", "lymphoma"], **task}
    config["tasks"] = ["ext"]
    return config


def test_k_1_is_allowed_only_when_every_task_tests_externally():
    config = external_config()
    config["splits"]["k"] = 1
    workflow_config.check(config)
    config["tasks"] = ["ext", "cancer_types"]
    with pytest.raises(UserError, match="splits.k=1 leaves no test patients for task 'cancer_types'"):
        workflow_config.check(config)


@pytest.mark.parametrize("mutate, expected", [
    (lambda c: c["task_definitions"]["ext"].update(test_dataset="nowhere"),
     ["'nowhere'", "task_definitions.ext.test_dataset"]),
    (lambda c: c["task_definitions"]["ext"].update(test_dataset="tma"), ["the task's own dataset"]),
    (lambda c: c["task_definitions"]["ext"].update(protocols=["patient", "image"]), ["task_definitions.ext.protocols"]),
    (lambda c: c["datasets"]["site_b"].update(classes=["breast", "colon"]), ["['colon']", "datasets.site_b.classes"]),
    (lambda c: c["task_definitions"]["ext"].update(test_dataset="breakhis"),
     ["BreakHis has no label column 'label'", "test_dataset 'breakhis'"]),
])
def test_test_dataset_must_fit_the_task(mutate, expected):
    config = external_config()
    mutate(config)
    with pytest.raises(UserError) as err:
        workflow_config.check(config)
    for text in expected:
        assert text in str(err.value)
