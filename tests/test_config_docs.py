"""config/README.md is generated from config/schema.yaml (deepbc.workflow.config_docs) and kept in step."""

from pathlib import Path

from deepbc.workflow import config_docs

REPO = Path(__file__).resolve().parents[1]


def test_committed_config_readme_is_the_generators_output():
    committed = (REPO / "config" / "README.md").read_text(encoding="utf-8")
    expected = config_docs.render(config_docs.load_schema(REPO / "config" / "schema.yaml"))
    assert committed == expected, (
        "config/README.md does not match config/schema.yaml; regenerate it with "
        f"`{config_docs.COMMAND}` and commit it")


def test_every_schema_key_has_a_description():
    schema = config_docs.load_schema(REPO / "config" / "schema.yaml")
    bare = [key for key, node, _, note in config_docs.rows(schema) if not (node.get("description") or note)]
    assert not bare, f"give these keys a description in config/schema.yaml: {', '.join(bare)}"

def test_every_key_is_listed_with_type_default_allowed_and_description():
    schema = {
        "definitions": {
            "group": {"type": "object", "properties": {
                "size": {"type": "integer", "minimum": 1, "description": "How many."},
                "mode": {"type": "string", "enum": ["a", "b"]}}},
        },
        "type": "object",
        "properties": {
            "name": {"type": "string", "default": "x"},
            "first": {"$ref": "#/definitions/group", "properties": {"size": {"default": 3}}},
            "by_name": {"type": "object", "additionalProperties": {"$ref": "#/definitions/group"}},
            "items": {"type": "object", "additionalProperties": {
                "type": "object", "properties": {"flag": {"type": "boolean"}}, "required": ["flag"]}},
        },
        "required": ["name"],
    }
    assert [(key, required, note) for key, _, required, note in config_docs.rows(schema)] == [
        ("name", True, ""), ("first", False, ""), ("first.size", False, ""), ("first.mode", False, ""),
        ("by_name", False, "Each entry takes the keys of `first`."),
        ("items", False, ""), ("items.<name>.flag", True, "")]
    table = config_docs.render(schema)
    assert "| `name` | string | *required* |  |  |" in table
    # The default given beside the reference is merged into the referenced key.
    assert "| `first.size` | integer | `3` | >= 1 | How many. |" in table
    assert "| `first.mode` | string |  | `a`, `b` |  |" in table
    assert "| `by_name` | map of object |  |  | Each entry takes the keys of `first`. |" in table
