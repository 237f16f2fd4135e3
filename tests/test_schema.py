"""config/schema.yaml is the one source of the config's values: its enums are the code's registries,
its defaults the only defaults, and the rules repeat none of them."""

import copy
import inspect
import re
from pathlib import Path

import pytest
import yaml
from snakemake.utils import validate

from deepbc.data import breakhis, manifest, tasks
from deepbc.jobs import schema
from deepbc.jobs.errors import UserError
from deepbc.shards import records
from deepbc.shards import writer as shard_writer
from deepbc.training.nets import NETWORKS
from deepbc.workflow import config as workflow_config

ROOT = Path(__file__).resolve().parents[1]
SCHEMA_PATH = ROOT / "config" / "schema.yaml"
SCHEMA = yaml.safe_load(SCHEMA_PATH.read_text())
PROPS = SCHEMA["properties"]
TASK = PROPS["task_definitions"]["additionalProperties"]["properties"]


def test_architecture_enum_is_the_network_registry():
    assert sorted(SCHEMA["definitions"]["architecture"]["enum"]) == sorted(NETWORKS)


def test_shard_formats_are_the_records():
    assert sorted(PROPS["shards"]["properties"]["format"]["enum"]) == sorted(records.FORMATS)


def test_encode_store_keeps_no_default_of_its_own():
    """encode_store also runs outside the workflow (bench/, tests): it takes the shards section and the
    schema fills it, so its signature names none of the section's keys."""
    params = set(inspect.signature(shard_writer.encode_store).parameters)
    assert not params & set(PROPS["shards"]["properties"]) and "shards" in params


def test_breakhis_enums_are_the_parsers():
    assert SCHEMA["definitions"]["magnification"]["enum"] == ["all", *breakhis.MAGNIFICATIONS]
    assert tuple(SCHEMA["definitions"]["magnification"]["enum"]) == tasks.MAGNIFICATIONS
    assert workflow_config.BREAKHIS_LABELS["subtype"] == list(breakhis.SUBTYPES)
    assert workflow_config.BREAKHIS_LABELS["subtype_name"] == [n for _, n in breakhis.SUBTYPES.values()]
    assert workflow_config.BREAKHIS_LABELS["tissue"] == list(breakhis.TISSUES)
    assert workflow_config.BREAKHIS_LABELS["magnification"] == list(breakhis.MAGNIFICATIONS)


def test_protocol_and_dataset_kind_enums_are_the_codes():
    assert tuple(TASK["protocols"]["items"]["enum"]) == tasks.PROTOCOLS
    kinds = {tuple(d["properties"]["kind"]["enum"]) for d in SCHEMA["definitions"].values()
             if "kind" in d.get("properties", {})}
    assert kinds == {manifest.KINDS}


def test_absent_sections_get_every_default():
    config = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    for section in ("resources", "splits", "shards", "evaluation"):
        config.pop(section, None)
    validate(config, str(SCHEMA_PATH))
    for section in ("resources", "splits", "shards", "evaluation"):
        expected = {k: v["default"] for k, v in PROPS[section]["properties"].items()}
        assert config[section] == expected, section


def test_validation_leaves_the_schema_defaults_unshared():
    # Two configs validated in one process must not share (and mutate) one default object.
    base = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    first, second = copy.deepcopy(base), copy.deepcopy(base)
    for c in (first, second):
        c.pop("resources")
        validate(c, str(SCHEMA_PATH))
    first["resources"]["gpu"] = 0
    assert second["resources"]["gpu"] == PROPS["resources"]["properties"]["gpu"]["default"]


RULE_FILES = sorted((ROOT / "rules").glob("*.smk")) + [ROOT / "Snakefile"]


@pytest.mark.parametrize("path", RULE_FILES, ids=[p.name for p in RULE_FILES])
def test_rules_repeat_no_default(path):
    """A `.get(key, default)` in a rule would be a second default beside the schema's."""
    text = path.read_text()
    calls = re.findall(r"\.get\(([^()]*)\)", text)
    with_default = [c for c in calls if "," in c]
    assert not with_default, f"{path.name}: .get() with a default: {with_default}"


def test_no_rule_reads_a_section_that_may_be_absent_without_its_schema_default():
    """Every config section a rule reads by key either is required or has a default."""
    # workflow_config.check refuses a task whose dataset is not under datasets, before any rule runs.
    checked = {"datasets"}
    text = "".join(p.read_text() for p in RULE_FILES)
    read = set(re.findall(r'config\["(\w+)"\]', text))
    for key in read - checked:
        assert key in SCHEMA["required"] or "default" in PROPS[key], key


@pytest.mark.parametrize("key", ["init", "learning_rate", "eval_every_steps"])
def test_a_missing_training_setting_is_refused_before_any_job(key):
    config = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    del config["train"]["defaults"][key]
    with pytest.raises(UserError, match=rf"'{key}' is a required property(.|\n)*config key train.defaults"):
        schema.check(config)
