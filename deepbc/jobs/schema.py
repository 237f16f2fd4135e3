"""The config schema, config/schema.yaml: the one place of every config key's type, allowed values
and default. Loaded here for every reader (the Snakefile's checks, the settings of a script run
alone, benchmarks, tests, config/README.md): ``check`` names the first error in a few lines, and
``fill`` gives a config section with its defaults, filled by Snakemake's own validator, as the
workflow fills them."""

import functools
import json
import os
import tempfile
from pathlib import Path

from deepbc.jobs.errors import UserError

SCHEMA = Path(__file__).resolve().parents[2] / "config" / "schema.yaml"


def load(path: Path = SCHEMA) -> dict:
    """The schema as a dict (a fresh copy: callers may change it)."""
    return json.loads(_text(Path(path)))


@functools.lru_cache(maxsize=8)
def _text(path: Path) -> str:
    import yaml

    with open(path, encoding="utf-8") as fh:
        return json.dumps(yaml.safe_load(fh))


def fill(values: dict | None, *pointers: str, where: str | None = None, path: Path = SCHEMA) -> dict:
    """``values`` (a copy) with the defaults of the schema's parts at the JSON ``pointers`` filled in and
    checked against them, by Snakemake's validator: e.g. ``fill(shards, "/properties/shards")``.
    Several pointers apply together (the types of one part, the defaults of another). A value the
    schema refuses is a UserError naming it and ``where`` (default: the last pointer's config key)."""
    import copy

    from snakemake.utils import validate

    filled = copy.deepcopy(values or {})
    uri = Path(path).resolve().as_uri()
    ref = {"$schema": "https://json-schema.org/draft/2020-12/schema",
           "allOf": [{"$ref": f"{uri}#{p}"} for p in pointers]}
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as fh:
        json.dump(ref, fh)
    try:
        validate(filled, fh.name)
    except Exception as err:  # Snakemake's WorkflowError, whose text ends with jsonschema's
        lines = [line for line in str(err).splitlines() if line.strip()]
        what = (lines[1] if len(lines) > 1 else lines[0]).removeprefix("ValidationError: ")
        key = pointers[-1].replace("/properties/", ".").lstrip(".")
        raise UserError(what, where or f"config key {key}", "see config/schema.yaml for the values allowed there") from None
    finally:
        os.unlink(fh.name)
    return filled


def check(config: dict, path: Path = SCHEMA) -> None:
    """Raise a short UserError on the first value the JSON schema (a YAML file) refuses.

    Snakemake's own validate() prints the whole schema after the error; this names the key, its
    place and, for an unknown key, the keys allowed there.
    """
    import jsonschema

    schema = load(path)
    validator = jsonschema.validators.validator_for(schema)(schema)
    errors = sorted(validator.iter_errors(config), key=lambda e: [str(p) for p in e.absolute_path])
    if not errors:
        return
    err = errors[0]
    place = ".".join(str(p) for p in err.absolute_path)
    where = f"config key {place}" if place else "the top level of the config"
    if err.validator == "additionalProperties" and isinstance(err.instance, dict):
        allowed = sorted(err.schema.get("properties", {}))
        unknown = sorted(k for k in err.instance if k not in allowed)
        if allowed:
            raise UserError(f"unknown config key(s) {unknown}", where, f"use one of the keys allowed there: {allowed}")
    if err.validator == "required" and not place:
        raise UserError(f"{err.message}: the config files given are not a whole config", where, LAYERING)
    if err.validator in ("anyOf", "oneOf"):
        # jsonschema's own text ("... is not valid under any of the given schemas") says neither what
        # is allowed nor which part of the value is wrong: the key's description does.
        described = _description(schema, list(err.absolute_path))
        if described:
            key, text = described
            raise UserError(f"{err.instance!r} is not allowed for {key}", where,
                            f"give {key} a value it allows: {text}")
    what = err.message if len(err.message) <= 300 else err.message[:300] + " ..."
    raise UserError(what, where, "see config/schema.yaml for the values allowed there")


# What --configfile does; said wherever a config looks like a partial one.
LAYERING = ("the files given with --configfile are the whole config, layered in the order given (config/config.yaml, "
            "the demo, is read only when no --configfile is given): start the list with a whole config, e.g. "
            "--configfile config/paper.yaml your_overlay.yaml, or config/config.yaml your_overlay.yaml to change "
            "the demo (config/README.md)")


def _description(schema: dict, path: list) -> tuple[str, str] | None:
    """The dotted key and description of the deepest key on ``path`` that the schema describes."""
    found, node, keys = None, schema, []
    for part in path:
        if isinstance(part, int):
            node = node.get("items", {}) if isinstance(node, dict) else {}
            continue
        props = node.get("properties", {}) if isinstance(node, dict) else {}
        node = props.get(part) or (node.get("additionalProperties") if isinstance(node, dict) else None) or {}
        if "$ref" in node:
            node = schema["definitions"][node["$ref"].rsplit("/", 1)[-1]]
        keys.append(str(part))
        if node.get("description"):
            found = (".".join(keys), " ".join(node["description"].split()))
    return found
