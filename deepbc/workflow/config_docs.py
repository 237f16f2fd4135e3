"""config/README.md, generated from config/schema.yaml: every key with its type, default, allowed
values and description, so the page cannot drift from the schema (tests/test_config_docs.py).

    python -m deepbc.workflow.config_docs > config/README.md
"""

import json
import sys
from pathlib import Path

import yaml

SCHEMA = Path(__file__).resolve().parents[2] / "config" / "schema.yaml"
COMMAND = "python -m deepbc.workflow.config_docs > config/README.md"

_INTRO = f"""# Configuration

<!-- Generated from config/schema.yaml by `{COMMAND}`; edit the schema, not this file. -->

`config/config.yaml` is the demo (synthetic images, `demo: true`, small-data settings: 64 px
inputs, 60 steps, one fold of three); `config/paper.yaml` is the study on the real BreakHis and TMA
data. `config/schema.yaml` checks every key before anything runs and fills in the defaults below.

## How configs layer

1. The files given with `--configfile` are the whole config, merged in the order given (a later
   file's keys replace an earlier one's, mappings key by key, lists whole). `config/config.yaml`
   is read **only when no `--configfile` is given**: no demo value reaches a study.
2. `--config key=value` comes last, over the files.
3. The schema's defaults fill every key still absent. Keys whose absence means "the network's
   own" (`train.*.image_size`, `train.*.batch_norm_decay`) take the network's value: 224 px for
   ResNet V1, VGG and Inception V1/V2, 299 px for Inception V3/V4 and ResNet V2 (`deepbc/training/nets`).
4. Training settings: `train.defaults`, then `train.per_architecture.<arch>`, then
   `train.per_task.<task>` (which must name a task of `task_definitions`).

So: `snakemake --cores 2` runs the demo; `--configfile config/paper.yaml` the study;
`--configfile config/paper.yaml config/cpu_only.yaml` the study without GPUs; an overlay on the demo
names the demo first, `--configfile config/config.yaml my_overlay.yaml`. A study (`demo: false`)
built on config/config.yaml is refused: start from config/paper.yaml or a file of your own. Put the
targets before `--configfile`, which takes every file name after it
(`snakemake results/tables/summary.csv --configfile config/paper.yaml`).

Keys are dotted paths; `<name>` stands for a name of your choosing (a dataset, a task, an
architecture). A key marked *required* must be given; the others default as shown.
"""


def load_schema(path: Path = SCHEMA) -> dict:
    with open(path, encoding="utf-8") as fh:
        return yaml.safe_load(fh)


def rows(schema: dict) -> list[tuple[str, dict, bool, str]]:
    """(dotted key, its schema with references resolved, required?, note) for every key, in schema
    order. A group of keys defined once and used again (``train_settings``) is listed where it is
    first used; later uses get a note pointing there."""
    out: list[tuple[str, dict, bool, str]] = []
    _walk(schema, schema, "", out, {})
    return out


def _resolve(node: dict, schema: dict) -> dict:
    """``node`` with its ``$ref`` merged in; the node's own entries win (e.g. a default added beside
    the reference), and ``properties`` are merged key by key."""
    ref = node.get("$ref")
    if ref is None:
        return node
    target = schema
    for part in ref.lstrip("#/").split("/"):
        target = target[part]
    return _overlay(_resolve(target, schema), {k: v for k, v in node.items() if k != "$ref"})


def _overlay(base: dict, extra: dict) -> dict:
    """``extra``'s entries over ``base``'s, ``properties`` merged key by key at every depth (defaults
    beside a reference reach into its nested groups, e.g. train.defaults.augment)."""
    merged = dict(base)
    for key, value in extra.items():
        if key == "properties":
            props = dict(merged.get("properties", {}))
            for name, sub in value.items():
                props[name] = _overlay(props.get(name, {}), sub)
            merged["properties"] = props
        else:
            merged[key] = value
    return merged


def _walk(node: dict, schema: dict, prefix: str, out: list, listed: dict[str, str]) -> None:
    """``listed``: reference to a group of keys -> the key under which that group was listed."""
    node = _resolve(node, schema)
    required = set(node.get("required", []))
    for name, raw in node.get("properties", {}).items():
        key = f"{prefix}{name}"
        child = _resolve(raw, schema)
        values = child.get("additionalProperties")
        # The group this key holds: its own (train.defaults), or, for a map, each entry's (datasets).
        ref, where = ((values.get("$ref"), f"{key}.<name>") if isinstance(values, dict) and not child.get("properties")
                      else (raw.get("$ref"), key))
        if ref is not None and not _resolve({"$ref": ref}, schema).get("properties"):
            ref = None
        if ref in listed:
            out.append((key, child, name in required, f"Each entry takes the keys of `{listed[ref]}`."))
            continue
        if ref is not None:
            listed[ref] = where
        out.append((key, child, name in required, ""))
        _walk(child, schema, f"{key}.", out, listed)
    if isinstance(node.get("additionalProperties"), dict):
        values = _resolve(node["additionalProperties"], schema)
        if values.get("properties"):
            _walk(values, schema, f"{prefix}<name>.", out, listed)


def _type(node: dict, schema: dict) -> str:
    node = _resolve(node, schema)
    kind = node.get("type")
    if "const" in node:
        return f"`{node['const']}`"
    if kind is None and "anyOf" in node:
        return " or ".join(sorted({_type(alt, schema) for alt in node["anyOf"]}))
    if isinstance(kind, list):
        return " or ".join(kind)
    if kind == "array" and isinstance(node.get("items"), dict):
        return f"list of {_type(node['items'], schema)}"
    if kind == "object" and isinstance(node.get("additionalProperties"), dict) and not node.get("properties"):
        return f"map of {_type(node['additionalProperties'], schema)}"
    return kind or ""


def _allowed(node: dict, schema: dict) -> str:
    parts = []
    enum = node.get("enum") or _resolve(node.get("items") or {}, schema).get("enum")
    if enum:
        parts.append(", ".join(f"`{v}`" for v in enum))
    names = _resolve(node.get("propertyNames") or {}, schema).get("enum")
    if names:
        parts.append("names: " + ", ".join(f"`{v}`" for v in names))
    for key, sign in (("minimum", ">="), ("exclusiveMinimum", ">"), ("maximum", "<="), ("exclusiveMaximum", "<")):
        if key in node:
            parts.append(f"{sign} {node[key]}")
    for key, what in (("minItems", "at least {} item(s)"), ("minProperties", "at least {} entry(ies)")):
        if key in node:
            parts.append(what.format(node[key]))
    if node.get("uniqueItems"):
        parts.append("no repeats")
    if "pattern" in node:
        parts.append(f"matches `{node['pattern']}`")
    return "; ".join(parts)


def _default(node: dict, required: bool) -> str:
    if required:
        return "*required*"
    if "default" not in node:
        return ""
    return f"`{json.dumps(node['default'])}`"


def _cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def render(schema: dict) -> str:
    lines = [_INTRO, "| key | type | default | allowed | description |", "| --- | --- | --- | --- | --- |"]
    for key, node, required, note in rows(schema):
        text = " ".join(t for t in (node.get("description", ""), note) if t)
        lines.append("| " + " | ".join(_cell(c) for c in (
            f"`{key}`", _type(node, schema), _default(node, required), _allowed(node, schema), text)) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    sys.stdout.write(render(load_schema()))


if __name__ == "__main__":
    main()
