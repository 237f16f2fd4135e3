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
from deepbc.jobs.errors import UserError
from deepbc.shards import records
from deepbc.shards import writer as shard_writer
from deepbc.training import preprocessing
from deepbc.training.nets import NETWORKS
from deepbc.workflow import config as workflow_config

ROOT = Path(__file__).resolve().parents[1]
SCHEMA_PATH = ROOT / "config" / "schema.yaml"
SCHEMA = yaml.safe_load(SCHEMA_PATH.read_text())
PROPS = SCHEMA["properties"]
TASK = PROPS["task_definitions"]["additionalProperties"]["properties"]


def test_architecture_enum_is_the_network_registry():
    assert sorted(SCHEMA["definitions"]["architecture"]["enum"]) == sorted(NETWORKS)


def test_shard_settings_are_the_shard_writers():
    spec = PROPS["shards"]["properties"]
    assert sorted(spec["format"]["enum"]) == sorted(records.FORMATS)
    assert (spec["jpeg_quality"]["minimum"], spec["jpeg_quality"]["maximum"]) == records.JPEG_QUALITY
    # encode_store also runs outside the workflow (bench/, tests): its defaults are the schema's.
    defaults = inspect.signature(shard_writer.encode_store).parameters
    for key, param in [("images_per_shard", "images_per_shard"), ("format", "image_format"),
                       ("jpeg_quality", "jpeg_quality"), ("max_shorter_side", "max_shorter_side")]:
        assert defaults[param].default == spec[key]["default"], key


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


# The trainer's settings that may be absent: the network's own value is used then.
NETWORK_DEFAULT_SETTINGS = {"image_size", "batch_norm_decay"}
TRAINER_FILES = [ROOT / "deepbc" / "training" / "train.py", ROOT / "deepbc" / "training" / "graph.py"]


def _train_defaults_schema():
    return PROPS["train"]["properties"]["defaults"]


def _trainer_reads():
    text = "".join(p.read_text() for p in TRAINER_FILES)
    return set(re.findall(r'settings\["(\w+)"\]', text)), set(re.findall(r'settings\.get\("(\w+)"', text))


def test_every_training_setting_the_trainer_reads_is_guaranteed_by_the_schema():
    """A config the schema passes never fails a training job with a missing key."""
    defaults = _train_defaults_schema()
    guaranteed = set(defaults["required"]) | {k for k, v in defaults["properties"].items() if "default" in v}
    indexed, optional = _trainer_reads()
    assert indexed and indexed <= guaranteed, sorted(indexed - guaranteed)
    assert optional == NETWORK_DEFAULT_SETTINGS and not optional & guaranteed
    # Every setting is one of the two kinds: none is left without a rule.
    assert set(SCHEMA["definitions"]["train_settings"]["properties"]) == guaranteed | NETWORK_DEFAULT_SETTINGS


def test_a_config_naming_only_the_required_training_settings_gets_every_other():
    config = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    required = _train_defaults_schema()["required"]
    config["train"] = {"defaults": {k: config["train"]["defaults"][k] for k in required},
                       "per_architecture": {"resnet_small": {"augment": {"flip": False}}}}
    validate(config, str(SCHEMA_PATH))
    assert config["train"]["per_architecture"] == {"resnet_small": {"augment": {"flip": False}}}  # still partial
    settings = workflow_config.train_settings(config, config["tasks"][0], "resnet_small")
    indexed, _ = _trainer_reads()
    assert indexed <= set(settings)
    assert settings["augment"] == dict(preprocessing.AUGMENT_DEFAULTS, flip=False)


def test_augmentation_defaults_are_the_preprocessings():
    # get_preprocessing also runs outside the workflow (bench/): its defaults are the schema's.
    schema = _train_defaults_schema()["properties"]["augment"]["properties"]
    assert {k: v["default"] for k, v in schema.items()} == preprocessing.AUGMENT_DEFAULTS


@pytest.mark.parametrize("key", ["init", "learning_rate", "eval_every_steps"])
def test_a_missing_training_setting_is_refused_before_any_job(key):
    config = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    del config["train"]["defaults"][key]
    with pytest.raises(UserError, match=rf"'{key}' is a required property(.|\n)*config key train.defaults"):
        workflow_config.check_schema(config, SCHEMA_PATH)


def test_the_settings_tests_and_benchmarks_train_with_are_valid_train_defaults():
    """They call the trainer directly, without the workflow's validation."""
    import jsonschema

    from deepbc.bench import training
    from tests import trainkit

    schema = {**{k: v for k, v in _train_defaults_schema().items() if k != "$ref"},
              "allOf": [{"$ref": "#/definitions/train_settings"}], "definitions": SCHEMA["definitions"]}
    bench = dict(training.SETTINGS, image_size=64, batch_size=4, max_number_of_steps=3, eval_every_steps=3,
                 save_every_steps=3)  # what training.run adds
    for settings in (trainkit.settings(), bench):
        jsonschema.validate(settings, schema)
