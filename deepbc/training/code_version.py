"""The version of the code a model is trained by: the package's version and a hash of the source
that decides what training computes, in the resume fingerprint and settings.json.

Which source counts: every module of ``deepbc/training`` (the graph, networks, preprocessing,
precision, the loop and its state) but the SavedModel export, which runs after training, and the
shard reader with the record decoding it uses (``deepbc/shards/reader.py``, ``records.py``: the
input stream). What the shards hold is already bound by their content hashes, the settings by
their values, so the writer, stain normalisation and the schema's defaults need not count, nor do
modules that compute nothing training depends on (jobs: logs, atomic writes, locks).

Each file counts by its syntax tree without docstrings (``ast.unparse``), so editing a comment or
a docstring, or reformatting, does not discard a saved state, while any change to the code does
(a refactor that keeps the results too: the hash cannot tell). The normal form is the running
Python's, so another Python minor version may count as other code: its state is then discarded,
the safe side.
"""

import ast
import hashlib
from pathlib import Path

import deepbc

PACKAGE = Path(deepbc.__file__).resolve().parent
# Relative to the package folder; globs.
SOURCES = ("training/**/*.py", "shards/reader.py", "shards/records.py")
NOT_SOURCES = ("training/export.py",)


def code_version(package: Path = PACKAGE) -> dict:
    """``{"package": version, "source_sha256": hash}`` of the source under ``package``."""
    return {"package": deepbc.__version__, "source_sha256": _source_hash(Path(package))}


def describe(version: dict | None) -> str:
    """A code version for the log: the package version and the hash's first 12 digits."""
    return f"{version['package']} {version['source_sha256'][:12]}" if version else "(unrecorded)"


def files(package: Path = PACKAGE) -> list[Path]:
    """The source files that count, relative to ``package``, sorted."""
    found = {p.relative_to(package) for pattern in SOURCES for p in package.glob(pattern)}
    return sorted(found - {Path(p) for p in NOT_SOURCES})


def _source_hash(package: Path) -> str:
    digest = hashlib.sha256()
    for rel in files(package):
        digest.update(f"{rel.as_posix()}\0{_normal_form((package / rel).read_text(encoding='utf-8'))}\0".encode())
    return digest.hexdigest()


def _normal_form(source: str) -> str:
    """The code of ``source`` without comments, docstrings and layout."""
    tree = ast.parse(source)
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
                    and isinstance(body[0].value.value, str):
                node.body = body[1:] or [ast.Pass()]
    return ast.unparse(tree)
