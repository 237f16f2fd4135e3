"""The Snakemake catalog's conventions: rules formatted with snakefmt (settings in pyproject.toml
[tool.snakefmt]) and a .snakemake-workflow-catalog.yml that tells the truth about the workflow."""

import re
import shlex
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def snakefmt_check(root: Path) -> subprocess.CompletedProcess:
    files = [root / "Snakefile", *sorted((root / "rules").glob("*.smk"))]
    return subprocess.run([sys.executable, "-m", "snakefmt", "--check", "--verbose", "--config",
                           str(REPO / "pyproject.toml"), *map(str, files)], capture_output=True, text=True, cwd=root)


def test_workflow_files_are_snakefmt_formatted():
    proc = snakefmt_check(REPO)
    differ = [line.split('"')[1] for line in proc.stderr.splitlines() if "Formatted content is different" in line]
    assert proc.returncode == 0, (
        f"not formatted with snakefmt: {', '.join(differ) or proc.stderr}; run `snakefmt Snakefile rules/` in the "
        "repository (settings in pyproject.toml) and commit the result")


def test_catalog_file_matches_the_workflow():
    usage = yaml.safe_load((REPO / ".snakemake-workflow-catalog.yml").read_text())["usage"]
    flags = shlex.split(usage["mandatory-flags"]["flags"])
    assert (REPO / flags[flags.index("--configfile") + 1]).is_file()
    schema = yaml.safe_load((REPO / "config" / "schema.yaml").read_text())
    after = flags[flags.index("--config") + 1:]
    values = after[:next((i for i, f in enumerate(after) if f.startswith("-")), len(after))]
    given = [v.split("=", 1)[0] for v in values]
    assert given and set(given) <= set(schema["properties"])
    # conda: true claims that every rule running a command names its environment.
    stack = usage["software-stack-deployment"]
    rules = re.split(r"^(?=rule |checkpoint )", "".join(p.read_text() for p in sorted((REPO / "rules").glob("*.smk"))),
                     flags=re.M)
    commands = [r for r in rules if re.search(r"^    (shell|script|notebook|wrapper):", r, re.M)]
    assert stack["conda"] and commands and all(re.search(r"^    conda:", r, re.M) for r in commands)
    assert stack["report"] == any("report(" in r for r in rules)
