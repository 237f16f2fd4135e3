"""Training settings: a frozen, typed object whose fields, types and defaults are the schema's, so that
a new training key takes the schema and the code that reads it, and nothing else."""

import ast
import dataclasses
from pathlib import Path

import pytest
import yaml

from deepbc.jobs.errors import UserError
from deepbc.training import settings
from tests import trainkit

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = yaml.safe_load((ROOT / "config" / "schema.yaml").read_text())
TYPES = {"integer": int, "number": float, "boolean": bool, "string": str}
# Where the settings are read as the object (``settings.<field>``), each file with the names it uses for it.
READERS = {"deepbc/training/train.py": {"settings"}, "deepbc/training/graph.py": {"settings"},
           "deepbc/bench/training.py": {"settings"}, "deepbc/training/preprocessing.py": {"aug"}}


def _expected_type(prop: dict, name: str):
    kinds = prop["type"] if isinstance(prop["type"], list) else [prop["type"]]
    kind = next(k for k in kinds if k != "null")
    return TYPES.get(kind, name), "null" in kinds


def test_fields_and_types_are_the_schemas():
    definition = SCHEMA["definitions"]["train_settings"]["properties"]
    classes = settings.classes()
    for cls_name, props in [("TrainSettings", definition), ("Augment", definition["augment"]["properties"]),
                            ("Hed", definition["augment"]["properties"]["hed"]["properties"])]:
        fields = {f.name: f.type for f in dataclasses.fields(classes[cls_name])}
        assert list(fields) == list(props), cls_name
        for key, prop in props.items():
            expected, nullable = _expected_type(prop, key)
            if expected == key:  # a nested object: its own class
                expected = classes["".join(p.capitalize() for p in key.split("_"))]
            nullable = nullable or (cls_name == "TrainSettings" and key in settings.NETWORK_OWN)
            assert fields[key] == (expected | None if nullable else expected), (cls_name, key)


def test_a_key_added_to_the_schema_reaches_the_object(tmp_path):
    """The one edit a new setting needs outside the code that reads it."""
    schema = yaml.safe_load((ROOT / "config" / "schema.yaml").read_text())
    schema["definitions"]["train_settings"]["properties"]["label_smoothing"] = {
        "description": "Label smoothing of the loss.", "type": "number", "minimum": 0, "maximum": 1}
    schema["properties"]["train"]["properties"]["defaults"]["properties"]["label_smoothing"] = {"default": 0.1}
    copy = tmp_path / "schema.yaml"
    copy.write_text(yaml.safe_dump(schema, sort_keys=False))
    built = settings.build(trainkit.settings_values(), "resnet_small", path=copy)
    assert built.label_smoothing == 0.1
    assert settings.build(trainkit.settings_values(label_smoothing=0.2), "resnet_small", path=copy).label_smoothing == 0.2
    with pytest.raises(UserError, match="2 is greater than the maximum of 1"):
        settings.build(trainkit.settings_values(label_smoothing=2), "resnet_small", path=copy)
    assert not hasattr(settings.build(trainkit.settings_values(), "resnet_small"), "label_smoothing")


def test_build_fills_the_schema_defaults_and_the_networks_size():
    built = settings.build({k: v for k, v in trainkit.settings_values().items() if k != "image_size"}, "inception_v3")
    defaults = SCHEMA["properties"]["train"]["properties"]["defaults"]["properties"]
    for key, prop in defaults.items():
        if "default" in prop and key != "augment":
            assert getattr(built, key) == prop["default"], key
    assert built.image_size == 299 and built.batch_norm_decay == 0.9
    assert settings.build(trainkit.settings_values(), "inception_v3").image_size == 32  # given: kept
    assert settings.as_dict(built)["augment"] == {k: v["default"] for k, v in defaults["augment"]["properties"].items()}


def test_settings_are_frozen_and_checked():
    built = trainkit.settings()
    with pytest.raises(dataclasses.FrozenInstanceError):
        built.learning_rate = 1.0
    with pytest.raises(UserError, match=r"'rmsprop2' is not one of(.|\n)*training settings"):
        settings.build(trainkit.settings_values(optimizer="rmsprop2"), "resnet_small")
    with pytest.raises(UserError, match="'learningrate' was unexpected"):
        settings.build(trainkit.settings_values(learningrate=0.1), "resnet_small")


def _attribute_reads(path: Path, names: set[str]) -> set[str]:
    tree = ast.parse(path.read_text())
    return {node.attr for node in ast.walk(tree)
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in names}


@pytest.mark.parametrize("path, names", READERS.items())
def test_every_setting_the_code_reads_is_a_field(path, names):
    """A misspelt setting is found here, not in a training job on a cluster."""
    fields = {f.name for cls in settings.classes().values() for f in dataclasses.fields(cls)}
    reads = _attribute_reads(ROOT / path, names)
    assert reads, f"{path} reads no setting: is the name right?"
    assert reads <= fields, sorted(reads - fields)
