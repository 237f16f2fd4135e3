"""The documentation points at things that exist: links to files and their headings, repository
paths quoted in backticks, documented snakemake commands as Snakemake parses them, and
docs/DESIGN.md's module map against the package's modules."""

import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", ROOT / "BENCHMARKS.md", *sorted((ROOT / "docs").glob("*.md"))]
# Backticked words starting so are paths in this repository (results/... are outputs, not checked).
REPO_PATH = re.compile(r"^(?:config|docs|deepbc|bench|rules|workflow_scripts|tests|envs|profiles|report|\.ci)/"
                       r"|^(?:README\.md|BENCHMARKS\.md|Snakefile|requirements\.txt|pyproject\.toml)$")
PLACEHOLDER = re.compile(r"[{}<>*$]|\.\.\.")


def _anchors(markdown: str) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    headings = re.findall(r"^#{1,6}\s+(.+?)\s*$", markdown, re.MULTILINE)
    return {re.sub(r"[^\w\- ]", "", h.lower()).replace(" ", "-") for h in headings}


def _without_code_blocks(markdown: str) -> str:
    return re.sub(r"^```.*?^```", "", markdown, flags=re.MULTILINE | re.DOTALL)


def broken_links(doc: Path) -> list[str]:
    text = _without_code_blocks(doc.read_text(encoding="utf-8"))
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+:", target):
            continue
        path, _, anchor = target.partition("#")
        file = (doc.parent / path).resolve() if path else doc
        if not file.exists():
            broken.append(f"{target}: no such file")
        elif anchor and file.suffix == ".md" and anchor not in _anchors(file.read_text(encoding="utf-8")):
            broken.append(f"{target}: no such heading")
    for word in re.findall(r"`([^`\s]+)`", text):
        if REPO_PATH.search(word) and not PLACEHOLDER.search(word) and not (ROOT / word).exists():
            broken.append(f"`{word}`: no such path")
    return broken


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_links_and_quoted_paths_exist(doc):
    assert not broken_links(doc), broken_links(doc)


def test_the_link_check_sees_a_missing_file_a_missing_heading_and_a_stale_path(tmp_path):
    doc = tmp_path / "a.md"
    (tmp_path / "b.md").write_text("# Real heading\n")
    doc.write_text("[x](b.md#real-heading) [y](gone.md) [z](b.md#gone) `deepbc/nets` `results/x` "
                   "[w](https://example.org)\n```\n[v](inside_code.md)\n```\n")
    assert broken_links(doc) == ["gone.md: no such file", "b.md#gone: no such heading", "`deepbc/nets`: no such path"]


def documented_commands(doc: Path) -> list[str]:
    """Every ``snakemake ...`` command of a page, in code spans and blocks, continued lines joined."""
    return re.findall(r"snakemake [^`\n]*", doc.read_text(encoding="utf-8").replace("\\\n", " "))


def misread_command(command: str, named_targets: set[str]) -> str | None:
    """Why Snakemake would not read ``command`` as written, or None. ``--configfile``,
    ``--resources``, ``--set-resources`` and ``--config`` take every word after them: a target written
    after one is a config file, a resource or a config value, or fails to parse."""
    from snakemake.cli import get_argument_parser

    try:
        args = get_argument_parser().parse_args(shlex.split(command)[1:])
    except SystemExit as exit:  # --version, --help
        return None if exit.code == 0 else f"{command}: Snakemake refuses its options"
    except ValueError as err:
        return f"{command}: {err}"
    wrong = [str(f) for f in args.configfile or [] if not str(f).endswith((".yaml", ".yml"))]
    wrong += [c for c in args.config or [] if "=" not in c]
    wrong += [t for t in args.targets if t not in named_targets and not t.startswith("results/")]
    return f"{command}: read as config files, config values or targets: {wrong}" if wrong else None


def test_documented_commands_read_as_written():
    named = set(re.findall(r"^rule (\w+):", (ROOT / "Snakefile").read_text(), re.MULTILINE))
    commands = [c for doc in [*DOCS, ROOT / "config" / "README.md"] for c in documented_commands(doc)]
    assert len(commands) > 20
    misread = [m for c in commands if (m := misread_command(c, named))]
    assert not misread, misread


def test_the_command_check_sees_a_target_read_as_a_value():
    named = {"tables"}
    assert misread_command("snakemake tables --cores 8 --resources gpu=1 --configfile a.yaml --config x=1", named) is None
    assert "dictionary update" in misread_command("snakemake --resources gpu=1 tables", named)
    assert "['tables']" in misread_command("snakemake -n --configfile a.yaml tables", named)
    assert "['tables']" in misread_command("snakemake --config x=1 tables", named)
    assert "['tabels']" in misread_command("snakemake tabels", named)


def design_names() -> set[str]:
    """The module column of docs/DESIGN.md's table."""
    text = (ROOT / "docs" / "DESIGN.md").read_text(encoding="utf-8")
    return set(re.findall(r"^\| (?:\*\*)?`([^`]+)`(?:\*\*)? \|", text, re.MULTILINE))


def package_names() -> set[str]:
    """Every module of deepbc as DESIGN.md names it: ``deepbc/stage/module.py``, a subpackage as
    ``deepbc/stage/``."""
    names = set()
    for path in (ROOT / "deepbc").rglob("*.py"):
        rel = path.relative_to(ROOT)
        if rel != Path("deepbc/__init__.py"):
            names.add(f"{rel.parent.as_posix()}/" if rel.name == "__init__.py" else rel.as_posix())
    return names


def test_design_names_every_module_of_the_package():
    missing = package_names() - design_names()
    assert not missing, f"modules missing from docs/DESIGN.md's module table: {sorted(missing)}"


def test_design_names_no_module_that_does_not_exist():
    stale = [n for n in design_names() if not (ROOT / n).exists()]
    assert not stale, f"docs/DESIGN.md names what deepbc/ does not hold: {sorted(stale)}"
