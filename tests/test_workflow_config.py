"""Config checks beyond the schema, and the workflow's lookups."""

import copy
import json
from pathlib import Path

import pytest

from deepbc.jobs import schema
from deepbc.jobs.errors import UserError
from deepbc.workflow import config as wc
from deepbc.workflow import plan
from tests.conftest import validated_config

ROOT = Path(__file__).resolve().parents[1]


def test_demo_config_passes(demo_config):
    wc.check(demo_config)


def test_runs_name_the_image_level_protocol(demo_config):
    runs = wc.runs(demo_config)
    assert "benign_vs_malignant" in runs and "benign_vs_malignant__image_level" in runs


@pytest.mark.parametrize("mutate, key, allowed", [
    (lambda c: c["task_definitions"]["benign_subtypes"].update(classes=["A", "XX"]), "task_definitions.benign_subtypes.classes", "PT"),
    (lambda c: c["task_definitions"]["benign_subtypes"].update(label="grade"), "task_definitions.benign_subtypes.label", "subtype"),
    (lambda c: c["task_definitions"]["benign_subtypes"].update(filter={"tissue": "cancerous"}),
     "task_definitions.benign_subtypes.filter.tissue", "malignant"),
    (lambda c: c.update(folds=[7]), "folds", "0..2"),
    (lambda c: c.update(tasks=["benign_vs_malignent"]), "tasks", "benign_vs_malignant"),
    (lambda c: c["task_definitions"]["cancer_types"].update(classes=["breast", "colon"]), "task_definitions.cancer_types.classes", "lymphoma"),
])
def test_bad_values_name_the_key_and_allowed_values(demo_config, mutate, key, allowed):
    config = copy.deepcopy(demo_config)
    mutate(config)
    with pytest.raises(UserError) as err:
        wc.check(config)
    assert key in str(err.value) and allowed in str(err.value)


def test_folds_from_the_command_line_are_numbers(demo_config):
    assert wc.folds({**demo_config, "folds": ["0", "2"]}, "cancer_types") == [0, 2]
    assert wc.folds({**demo_config, "folds": "all"}, "cancer_types") == [0, 1, 2]
    assert wc.folds(demo_config, "cancer_types") == [0]  # the demo runs one fold of three, to fit its budget


def test_a_study_running_some_folds_is_warned(demo_config):
    study = {**demo_config, "demo": False}
    assert "only fold(s) [0] of splits.k=3" in wc.partial_folds_warning(study)
    assert wc.partial_folds_warning({**study, "folds": "all"}) is None
    assert wc.partial_folds_warning({**study, "folds": ["0", "1", "2"]}) is None
    assert wc.partial_folds_warning(demo_config) is None  # the demo says so in its config


def test_the_paper_config_runs_every_fold():
    paper = validated_config("paper.yaml")
    assert wc.folds(paper, "benign_vs_malignant") == list(range(paper["splits"]["k"])) == [0, 1, 2, 3, 4]


def test_train_settings_layering(demo_config):
    config = copy.deepcopy(demo_config)
    config["train"]["per_architecture"] = {"resnet_small": {"batch_size": 8, "augment": {"flip": False}}}
    config["train"]["per_task"] = {"cancer_types": {"batch_size": 4}}
    s = wc.train_settings(config, "cancer_types", "resnet_small")
    assert s["batch_size"] == 4 and s["augment"]["flip"] is False and s["augment"]["rotate"] is True
    assert wc.train_settings(config, "benign_subtypes", "resnet_small")["batch_size"] == 8


SCHEMA = ROOT / "config" / "schema.yaml"


def _with_split(config: dict, task: str | None = None, **split) -> dict:
    """A copy of config with these split settings, for one task (task_definitions.<task>.splits) or all."""
    config = copy.deepcopy(config)
    target = config["splits"] if task is None else config["task_definitions"][task].setdefault("splits", {})
    target.update(split)
    return config


def test_split_schemes_are_checked_before_anything_runs(demo_config, tmp_path):
    csv = tmp_path / "split.csv"
    csv.write_text("key,split\n")
    wc.check(_with_split(demo_config, "benign_subtypes", scheme="repeated_holdout", repeats=3))
    wc.check(_with_split(demo_config, "benign_subtypes", predefined=str(csv)))
    # A repeated holdout has no k.
    wc.check(_with_split(demo_config, "benign_subtypes", scheme="repeated_holdout", k=1))
    cases = [
        (_with_split(demo_config, "benign_vs_malignant", predefined=str(csv)),
         ["a leaky protocol ['image', 'augmented_image']", "config key task_definitions.benign_vs_malignant"]),
        (_with_split(demo_config, "benign_subtypes", predefined=str(tmp_path / "none.csv")),
         ["predefined split file of task 'benign_subtypes' does not exist",
          "task_definitions.benign_subtypes.splits.predefined"]),
        # The demo's tasks are on breakhis and tma: one file's keys cannot name images of both.
        (_with_split(demo_config, predefined=str(csv)),
         ["splits.predefined applies to every task", "move predefined (and predefined_key) under "
                                                     "task_definitions.<task>.splits"]),
        (_with_split({**demo_config, "folds": [4]}, "cancer_types", scheme="repeated_holdout", repeats=4),
         ["fold 4 does not exist with repeats=4 (task 'cancer_types')", "config key folds"]),
        (_with_split(demo_config, "benign_subtypes", k=1), ["splits.k=1 leaves no test patients",
                                                            "task_definitions.benign_subtypes.splits.k"]),
    ]
    for config, expected in cases:
        with pytest.raises(UserError) as err:
            wc.check(config)
        for text in expected:
            assert text in str(err.value), str(err.value)
    external = validated_config("paper.yaml", "external_example.yaml")
    with pytest.raises(UserError, match="which has no patients to hold out"):
        wc.check(_with_split(external, "hospital_a_to_b", scheme="repeated_holdout"))


@pytest.mark.parametrize("folds", [[0, 0], ["1", 1]])
def test_repeated_folds_are_refused(demo_config, folds):
    with pytest.raises(UserError, match=r"listed more than once(.|\n)*config key folds"):
        wc.check({**demo_config, "folds": folds})


@pytest.mark.parametrize("mutate, expected", [
    (lambda c: c.update(foo=1), ["unknown config key(s) ['foo']", "the top level of the config", "'train'"]),
    (lambda c: c["train"]["defaults"].update(batchsize=8),
     ["unknown config key(s) ['batchsize']", "config key train.defaults", "'batch_size'"]),
    (lambda c: c["splits"].update(k=0), ["0 is less than the minimum of 1", "config key splits.k"]),
    (lambda c: c.update(architectures=["resnet_small", "resnet_small"]),
     ["has non-unique elements", "config key architectures"]),
    (lambda c: c["train"]["defaults"]["augment"].update(hed={"sigma": 1, "bias": 0.05}),
     ["1 is greater than or equal to the maximum of 1", "config key train.defaults.augment.hed.sigma"]),
])
def test_schema_errors_are_short_and_name_the_key(demo_config, mutate, expected):
    config = copy.deepcopy(demo_config)
    mutate(config)
    with pytest.raises(UserError) as err:
        schema.check(config)
    for text in expected:
        assert text in str(err.value)
    assert len(str(err.value)) < 800
    schema.check(demo_config)


@pytest.mark.parametrize("hed", [None, {"sigma": 0.05, "bias": 0.05}])
def test_hed_augmentation_is_off_or_sigma_and_bias(demo_config, hed):
    config = copy.deepcopy(demo_config)
    config["train"]["defaults"]["augment"]["hed"] = hed
    schema.check(config)
def test_augment_then_split_runs_train_without_on_the_fly_rotations_and_flips(demo_config):
    """Its images are the rotations and mirror images: drawn again in training, every test copy's
    pixels would be trained on. The other settings are the task's, as for the image-level run."""
    config = copy.deepcopy(demo_config)
    config["task_definitions"]["benign_vs_malignant"]["protocols"] = ["patient", "image", "augmented_image"]
    config["train"]["defaults"]["augment"]["random_crop"] = True
    wc.check(config)
    assert "benign_vs_malignant__augmented_image_level" in wc.runs(config)
    image, augmented = (json.loads(wc.train_settings_json(config, f"benign_vs_malignant__{run}", "resnet_small"))
                        for run in ("image_level", "augmented_image_level"))
    assert image["augment"]["rotate"] and image["augment"]["flip"]
    assert augmented["augment"] == {**image["augment"], "rotate": False, "flip": False}
    assert augmented["augment"]["random_crop"]
    assert {k: v for k, v in augmented.items() if k != "augment"} == {k: v for k, v in image.items() if k != "augment"}
    # What trains the model differs, so every reader of the model reruns with it.
    assert (wc.model_fingerprint(config, "benign_vs_malignant__augmented_image_level", "resnet_small")
            != wc.model_fingerprint(config, "benign_vs_malignant__image_level", "resnet_small"))
    # The leakage table needs patient-wise and a leaky protocol, not two leaky ones.
    config["task_definitions"]["benign_vs_malignant"]["protocols"] = ["patient", "augmented_image"]
    assert wc.has_both_protocols(config)
    config["task_definitions"]["benign_vs_malignant"]["protocols"] = ["image", "augmented_image"]
    assert not wc.has_both_protocols({**config, "tasks": ["benign_vs_malignant"]})


def test_rule_helpers(demo_config, tmp_path, monkeypatch):
    config = copy.deepcopy(demo_config)
    config["train"]["per_architecture"] = {"resnet_small": {"init": "imagenet"}}
    assert wc.checkpoint_record(config, "cancer_types", "resnet_small") == "results/checkpoints/resnet_small.json"
    assert wc.checkpoint_record(demo_config, "cancer_types", "resnet_small") is None
    # The image-level run of a task trains with the task's settings.
    config["train"]["per_task"] = {"benign_vs_malignant": {"batch_size": 4}}
    assert '"batch_size": 4' in wc.train_settings_json(config, "benign_vs_malignant__image_level", "resnet_small")
    assert wc.has_both_protocols(demo_config)
    assert not wc.has_both_protocols({**demo_config, "tasks": ["cancer_types"]})
    monkeypatch.chdir(tmp_path)
    assert plan.predict_patient_options("cancer_types", "resnet_small", 0, "slides") == []
    (tmp_path / "new_images").mkdir()
    (tmp_path / "new_images" / "slides.patients.csv").write_text("path,patient\n")
    assert plan.predict_patient_options("cancer_types", "resnet_small", 0, "slides") == [
        "--patients-csv", "new_images/slides.patients.csv",
        "--out-patients", "results/new_predictions/cancer_types/resnet_small/fold0/slides.patients.csv"]


def test_a_store_missing_a_listed_shard_says_to_delete_it(tmp_path, monkeypatch):
    """Only a store.json that lists a missing shard stops the DAG: without store.json, Snakemake
    re-encodes the store (an input of every job reading it) and rewrites the indexes."""
    import json
    import os

    monkeypatch.chdir(tmp_path)
    store = Path("results/encoded/tma/store.json")
    wc.check_store_shards(store)  # nothing yet: Snakemake makes it
    store.parent.mkdir(parents=True)
    store.write_text("{")
    wc.check_store_shards(store)  # unreadable: the job that reads it says so
    store.write_text(json.dumps({"shards": ["shard-00000-of-00002.tfrecord", "shard-00001-of-00002.tfrecord"]}))
    (store.parent / "shard-00000-of-00002.tfrecord").write_bytes(b"")
    with pytest.raises(UserError) as err:
        wc.check_store_shards(store)
    assert "1 shard(s) listed in this encoded store are missing, e.g. results/encoded/tma/shard-00001" in str(err.value)
    assert err.value.where == str(store)
    assert err.value.fix.startswith("delete the folder results/encoded/tma/ and rerun the same snakemake command")
    (store.parent / "shard-00001-of-00002.tfrecord").write_bytes(b"")
    os.utime(store, ns=(1, 1))  # another version of store.json: read again
    wc.check_store_shards(store)


def test_check_store_shards_parses_each_store_once(tmp_path, monkeypatch):
    """Snakemake asks for every store many times while building the DAG: parse each version once."""
    import json
    import os

    store = tmp_path / "store.json"
    store.write_text(json.dumps({"shards": ["shard-0.tfrecord"], "records": {"a.png": [0, 0, None]}}))
    (tmp_path / "shard-0.tfrecord").write_bytes(b"")
    parsed = []
    real = json.load
    monkeypatch.setattr(wc.json, "load", lambda fh, **kw: parsed.append(fh.name) or real(fh, **kw))
    for _ in range(5):
        wc.check_store_shards(store)
    assert parsed == [str(store)]
    store.write_text(json.dumps({"shards": ["shard-1.tfrecord"], "records": {}}))
    os.utime(store, ns=(1, 1))
    with pytest.raises(UserError, match="1 shard\\(s\\) listed"):
        wc.check_store_shards(store)
    assert parsed == [str(store)] * 2


def test_model_fingerprint_follows_what_trains_the_model_only(demo_config):
    """A param of every rule reading a model: it changes with the model's training settings,
    network, seed and ImageNet checkpoint, and not with machine settings or other tasks' settings."""
    fp = wc.model_fingerprint(demo_config, "cancer_types", "resnet_small")
    assert len(fp) == 16 and fp == wc.model_fingerprint(copy.deepcopy(demo_config), "cancer_types", "resnet_small")

    def changed(mutate, run="cancer_types", arch="resnet_small"):
        config = copy.deepcopy(demo_config)
        mutate(config)
        return wc.model_fingerprint(config, run, arch) != fp

    assert changed(lambda c: c["train"]["defaults"].update(max_number_of_steps=61))
    assert changed(lambda c: c["train"]["per_task"].update(cancer_types={"learning_rate": 0.1}))
    assert changed(lambda c: c["train"]["per_architecture"].update(resnet_small={"init": "imagenet"}))
    assert changed(lambda c: c.update(seed=43))
    assert changed(lambda c: None, arch="resnet_v1_50")
    # The image-level run of a task trains with the task's settings: same fingerprint.
    assert not changed(lambda c: None, run="cancer_types__image_level")
    assert not changed(lambda c: c["train"]["per_task"].update(benign_vs_malignant={"learning_rate": 0.1}))
    assert not changed(lambda c: c.update(resources={"gpu": 0, "gpu_devices": 3, "train_threads": 8}))
    assert not changed(lambda c: c.update(evaluation={"n_bootstrap": 10}))
