"""Named datasets: shortcuts, per-dataset lookups, and the errors naming dataset and key."""

import copy
from pathlib import Path

import pytest

from deepbc.data import datasets as datasets_config
from deepbc.jobs import schema
from deepbc.jobs.errors import UserError
from deepbc.workflow import config as workflow_config
from tests.conftest import validated_config

ROOT = Path(__file__).resolve().parents[1]


def with_third_dataset(config, **task):
    """The demo config plus a folder dataset 'site_b' and a task on it."""
    config = copy.deepcopy(config)
    config["datasets"]["site_b"] = {"kind": "folder", "root": "/data/site b", "classes": ["benign", "malignant"],
                                    "patients_csv": "/data/site_b.csv"}
    config["task_definitions"]["site_b_task"] = {"dataset": "site_b", "label": "label",
                                                 "classes": ["benign", "malignant"], **task}
    config["tasks"] = ["site_b_task"]
    return config


def test_shortcuts_fill_the_named_entries(demo_config):
    datasets = datasets_config.resolve(demo_config)
    assert datasets["breakhis"]["root"] == "results/demo/breakhis/BreaKHis_v1"
    assert datasets["tma"]["root"] == "results/demo/tma/images"
    assert datasets["tma"]["patients_csv"] == "results/demo/tma/patients.csv"  # outside the root
    assert demo_config["datasets"]["tma"]["root"] == ""  # the config itself is left as given


def test_any_named_folder_dataset_gets_its_own_root_options_and_no_demo_input(demo_config):
    config = with_third_dataset(demo_config)
    workflow_config.check(config)
    datasets = datasets_config.resolve(config)
    assert datasets_config.used(config) == ["site_b"]
    assert datasets_config.root(datasets, "site_b") == "/data/site b"
    assert datasets_config.options(datasets, "site_b") == (
        "--kind folder --classes benign malignant --patients-csv /data/site_b.csv")
    assert datasets_config.demo_input(config, datasets, "site_b") == []
    # The demo's datasets are made by make_demo: their roots lie in its outputs.
    assert datasets_config.demo_input(config, datasets, "tma") == ["results/demo/tma"]
    assert datasets_config.demo_input({**config, "demo": False}, datasets, "tma") == []


def test_equal_shortcut_and_root_agree(demo_config):
    demo_config["datasets"]["tma"]["root"] = demo_config["tma_dir"]
    assert datasets_config.resolve(demo_config)["tma"]["root"] == demo_config["tma_dir"]


@pytest.mark.parametrize("mutate, expected", [
    (lambda c: c["datasets"]["tma"].update(root="/elsewhere"),
     ["tma_dir='results/demo/tma/images' contradicts datasets.tma.root='/elsewhere'", "tma_dir and datasets.tma.root"]),
    (lambda c: c["datasets"]["tma"].update(patients_csv="other.csv"), ["datasets.tma.patients_csv"]),
    (lambda c: c["datasets"]["tma"].pop("classes"), ["config key datasets.tma.classes"]),
    (lambda c: c["datasets"]["breakhis"].update(patients_csv="p.csv"), ["config key datasets.breakhis.patients_csv"]),
])
def test_resolution_errors_name_dataset_and_key(demo_config, mutate, expected):
    mutate(demo_config)
    with pytest.raises(UserError) as err:
        datasets_config.resolve(demo_config)
    for text in expected:
        assert text in str(err.value)


def test_used_dataset_without_root_is_refused(demo_config):
    config = with_third_dataset(demo_config)
    del config["datasets"]["site_b"]["root"]
    with pytest.raises(UserError, match=r"dataset 'site_b' has no root(.|\n)*datasets.site_b.root"):
        workflow_config.check(config)
    demo_config.pop("breakhis_dir")
    with pytest.raises(UserError, match=r"datasets.breakhis.root \(or breakhis_dir\)"):
        workflow_config.check(demo_config)


@pytest.mark.parametrize("task, expected", [
    ({"dataset": "nowhere"}, ["'nowhere'", "task_definitions.site_b_task.dataset", "site_b"]),
    ({"label": "tissue"}, ["'site_b' has one label column", "task_definitions.site_b_task.label"]),
    ({"classes": ["benign", "normal"]}, ["['normal']", "task_definitions.site_b_task.classes"]),
])
def test_task_on_a_named_dataset_is_checked(demo_config, task, expected):
    config = with_third_dataset(demo_config, **task)
    with pytest.raises(UserError) as err:
        workflow_config.check(config)
    for text in expected:
        assert text in str(err.value)


def test_schema_takes_any_dataset_name_of_word_characters(demo_config):
    schema.check(with_third_dataset(demo_config))
    config = copy.deepcopy(demo_config)
    config["datasets"]["site-b"] = {"kind": "breakhis"}
    with pytest.raises(UserError, match=r"'site-b' does not match(.|\n)*config key datasets"):
        schema.check(config)


@pytest.mark.parametrize("files", [["config.yaml"], ["paper.yaml"], ["paper.yaml", "cpu_only.yaml"],
                                   ["paper.yaml", "external_example.yaml"]])
def test_shipped_configs_pass(files):
    config = validated_config(*files)
    schema.check(config)
    workflow_config.check(config)
