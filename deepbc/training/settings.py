"""Training settings: one frozen, typed object, built once from the validated config section.

Its fields, their types and which are nested come from config/schema.yaml (``train_settings``), and
its values from the section as the schema fills it (the defaults of ``train.defaults``): a key added
to the schema is a field here, with nothing else to edit. ``build`` fills and checks a section with
the workflow's own validator (the rule's merged settings, or the few values of a benchmark or a
test) and resolves what the schema leaves to the network (``image_size``); ``as_dict`` is the JSON
form that settings.json and the resume fingerprint record. A misspelt field is an AttributeError at
the first read, and tests/test_settings.py checks every ``settings.<field>`` the trainer reads.
"""

from __future__ import annotations

import dataclasses
import functools

from deepbc.jobs import schema

# The section's schema (types) and where its defaults are (train.defaults: beside the reference, so
# per_architecture and per_task, which use the same definition, override only what they name).
TYPES_POINTER = "/definitions/train_settings"
DEFAULTS_POINTER = "/properties/train/properties/defaults"
AUGMENT_POINTERS = (f"{TYPES_POINTER}/properties/augment", f"{DEFAULTS_POINTER}/properties/augment")
# The fields whose absence means the network's own value (and the schema says so by giving no default).
NETWORK_OWN = ("image_size", "batch_norm_decay")
_PYTHON_TYPES = {"integer": int, "number": float, "boolean": bool, "string": str}


def __getattr__(name: str):
    """``TrainSettings``, ``Augment``, ``Hed``: the classes made from the schema (``classes``)."""
    made = classes()
    if name in made:
        return made[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def build(values: dict, arch: str | None = None, path=schema.SCHEMA):
    """The TrainSettings of ``values`` (a ``train.defaults``-shaped dict, partial or whole): schema
    defaults filled in, values checked (a UserError names a bad one), and with ``arch`` an absent
    image_size the network's own."""
    from deepbc.training.nets import NETWORKS

    filled = schema.fill(values, DEFAULTS_POINTER, where="training settings (train.defaults)", path=path)
    if filled.get("image_size") is None and arch:
        filled["image_size"] = NETWORKS[arch].default_image_size
    return _instance(classes(path)["TrainSettings"], filled)


def augment(values: dict | None = None, path=schema.SCHEMA):
    """The Augment of ``values`` (partial: the schema's defaults fill the rest; None: the defaults)."""
    filled = schema.fill(values, *AUGMENT_POINTERS, where="training settings augment", path=path)
    return _instance(classes(path)["Augment"], filled)


def as_dict(settings) -> dict:
    """The settings as plain JSON-able values, nested objects as dicts."""
    return dataclasses.asdict(settings)


@functools.lru_cache(maxsize=4)
def classes(path=schema.SCHEMA) -> dict[str, type]:
    """The frozen dataclasses of the schema's training settings, by name: ``TrainSettings`` and one per
    nested object (``Augment``, ``Hed``)."""
    definition = schema.load(path)["definitions"]["train_settings"]
    made: dict[str, type] = {}
    _dataclass("TrainSettings", definition, made, optional=set(NETWORK_OWN))
    return made


def _dataclass(name: str, node: dict, made: dict, optional=frozenset()) -> type:
    fields = []
    for key, prop in node["properties"].items():
        kinds = prop["type"] if isinstance(prop["type"], list) else [prop["type"]]
        nullable = "null" in kinds or key in optional
        kind = next(k for k in kinds if k != "null")
        if kind == "object":
            annotation = _dataclass("".join(part.capitalize() for part in key.split("_")), prop, made)
        else:
            annotation = _PYTHON_TYPES[kind]
        if nullable:
            fields.append((key, annotation | None, dataclasses.field(default=None)))
        else:
            fields.append((key, annotation))
    cls = dataclasses.make_dataclass(name, fields, frozen=True, kw_only=True)
    cls.__module__ = __name__
    made[name] = cls
    return cls


def _instance(cls, values: dict):
    kwargs = {}
    for field in dataclasses.fields(cls):
        value = values.get(field.name)
        nested = _nested_class(field.type)
        kwargs[field.name] = _instance(nested, value) if nested and isinstance(value, dict) else value
    return cls(**kwargs)


def _nested_class(annotation):
    """The dataclass in ``X`` or ``X | None``, else None."""
    for candidate in getattr(annotation, "__args__", (annotation,)):
        if dataclasses.is_dataclass(candidate):
            return candidate
    return None
