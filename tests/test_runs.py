"""Run names (deepbc.runs), and the modules that use them do not reach up into workflow_config."""

import ast
from pathlib import Path

import pytest

from deepbc.runs import parse_run, run_name

PACKAGE = Path(__file__).resolve().parents[1] / "deepbc"


def test_run_names_round_trip():
    assert run_name("bvm", "image") == "bvm__image_level"
    assert run_name("bvm", "patient") == "bvm"
    assert parse_run("benign_vs_malignant__image_level") == ("benign_vs_malignant", "image")
    assert parse_run("cancer_types") == ("cancer_types", "patient")
    assert parse_run(run_name("bvm", "patient")) == ("bvm", "patient")


def _imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            names |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
    return names


def test_runs_module_has_no_dependencies():
    assert _imported_modules(PACKAGE / "runs.py") == set()


@pytest.mark.parametrize("module", ["tasks", "metrics", "tables", "figures"])
def test_result_modules_do_not_import_workflow_config(module):
    imported = _imported_modules(PACKAGE / f"{module}.py")
    assert not {m for m in imported if "workflow_config" in m}, f"deepbc/{module}.py imports workflow_config"
