"""The package's layout: every module in a stage folder, the stages in one order (a module imports
its own stage and the stages below it, never one above), and no import loop anywhere in deepbc,
counting the imports inside functions."""

import ast
import sys
from pathlib import Path

import pytest

from deepbc.data.runs import PROTOCOLS, parse_run, run_name

ROOT = Path(__file__).resolve().parents[1]
# Bottom to top. bench measures everything, so it stands above all.
STAGES = ["jobs", "data", "shards", "training", "evaluation", "results", "workflow", "bench"]


def modules(package: Path) -> dict[str, Path]:
    """Dotted name -> file of every module under ``package`` (a folder named deepbc)."""
    out = {}
    for path in sorted(package.rglob("*.py")):
        parts = path.relative_to(package.parent).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def imports_of(path: Path, known: set[str]) -> set[str]:
    """The package's modules ``path`` imports, at module level or inside functions (a subpackage's
    ``__init__`` counts only when imported for itself)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{a.name}" for a in node.names]
        else:
            continue
        for name in names:
            # The longest known module the name starts with (deepbc.jobs.errors.UserError -> its module).
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name.count(".") >= 1:
                found.add(name)
    return found


def graph(package: Path) -> dict[str, set[str]]:
    mods = modules(package)
    return {name: imports_of(path, set(mods)) - {name} for name, path in mods.items()}


def stage(module: str) -> str:
    return module.split(".")[1]


def upward_imports(package: Path) -> list[str]:
    return [f"{m} -> {i}" for m, deps in sorted(graph(package).items()) if m != "deepbc"
            for i in sorted(deps) if STAGES.index(stage(i)) > STAGES.index(stage(m))]


def import_loops(package: Path) -> list[list[str]]:
    """Tarjan's strongly connected components of the import graph: each of two or more modules is a loop."""
    edges = graph(package)
    index, low, stack, on_stack, loops = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                loops.append(sorted(component))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10 * len(edges)))
    for v in sorted(edges):
        if v not in index:
            visit(v)
    return loops


def test_every_module_is_in_a_stage_folder():
    loose = [m for m in modules(ROOT / "deepbc") if m != "deepbc" and stage(m) not in STAGES]
    assert not loose, f"modules outside the stage folders {STAGES}: {loose}"


def test_no_module_imports_a_stage_above_its_own():
    upward = upward_imports(ROOT / "deepbc")
    assert not upward, "imports up a floor:\n" + "\n".join(upward)


def test_no_import_loop():
    assert not import_loops(ROOT / "deepbc")


def test_the_checks_see_a_loop_and_an_import_up(tmp_path):
    """The two checks above, on a package made to fail them (the loop through an import inside a function)."""
    package = tmp_path / "deepbc"
    for rel, text in {"__init__.py": "", "jobs/__init__.py": "", "data/__init__.py": "",
                      "jobs/a.py": "from deepbc.data import b\n",
                      "data/b.py": "def f():\n    from deepbc.jobs.a import g\n"}.items():
        (package / rel).parent.mkdir(parents=True, exist_ok=True)
        (package / rel).write_text(text)
    assert upward_imports(package) == ["deepbc.jobs.a -> deepbc.data.b"]
    assert import_loops(package) == [["deepbc.data.b", "deepbc.jobs.a"]]


def test_run_names_have_no_dependencies_and_round_trip():
    tree = ast.parse((ROOT / "deepbc" / "data" / "runs.py").read_text())
    assert not [n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))]
    assert run_name("bvm", "image") == "bvm__image_level"
    assert run_name("bvm", "patient") == "bvm"
    assert parse_run("benign_vs_malignant__image_level") == ("benign_vs_malignant", "image")
    assert parse_run(run_name("bvm", "patient")) == ("bvm", "patient")
    # The augment-then-split protocol (the preprint's leak) is named apart from the image-level one.
    assert run_name("bvm", "augmented_image") == "bvm__augmented_image_level"
    for protocol in PROTOCOLS:
        assert parse_run(run_name("benign_vs_malignant", protocol)) == ("benign_vs_malignant", protocol)


@pytest.mark.parametrize("flat", ["evaluate", "shard_reader", "workflow_config"])
def test_old_flat_modules_are_gone(flat):
    """No shims for the old import paths."""
    assert not (ROOT / "deepbc" / f"{flat}.py").exists()


def test_no_file_of_the_package_is_ignored_by_git():
    """`results/` in .gitignore once hid new modules of deepbc/results/ from every commit: a clean
    clone then lacked them. Only the workflow's own results folder is ignored."""
    import shutil
    import subprocess

    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    files = [str(p.relative_to(ROOT)) for p in (ROOT / "deepbc").rglob("*") if p.is_file() and "__pycache__" not in p.parts]
    proc = subprocess.run(["git", "check-ignore", "--no-index", *files], cwd=ROOT, capture_output=True, text=True)
    assert proc.stdout == "", f"ignored by .gitignore: {proc.stdout.split()}"
