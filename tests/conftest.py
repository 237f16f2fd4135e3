"""How the suite is spread over pytest-xdist's worker processes (pyproject.toml's addopts: `-n auto
--dist loadgroup --no-loadscope-reorder`).

- Tests sharing a module-scoped fixture (the demo workflow run, a trained model) form one group, so
  the fixture is built once, on one worker; every other test is scheduled on its own.
- The groups and tests marked slow go first, most slow tests first, then the other groups: xdist
  hands out work in this order, so the longest chains start at once instead of leaving one worker
  busy alone at the end.
- `-n auto` is bounded: each worker runs TensorFlow processes and Snakemake with --cores 2.
- Each test gets back the environment variables it started with: which tests ran before it on its
  worker is a matter of scheduling.
"""

import copy
import functools
import os
from pathlib import Path

import psutil
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]

# More workers than this mostly wait on one another (every worker's jobs use 1-2 threads and
# the demo run alone is the longest chain); also one per core and per 3 GiB of free memory.
MAX_WORKERS = 4
MEMORY_PER_WORKER = 3 * 2**30


def pytest_xdist_auto_num_workers(config):
    if os.environ.get("PYTEST_XDIST_AUTO_NUM_WORKERS"):
        return None  # xdist's own hook uses the number given
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    by_memory = psutil.virtual_memory().available // MEMORY_PER_WORKER
    return max(1, min(cpus, MAX_WORKERS, by_memory))


@pytest.fixture(autouse=True)
def _environment_restored():
    # Code under test sets os.environ (a GPU lease's CUDA_VISIBLE_DEVICES, --gpus 0's "-1"), which
    # monkeypatch.delenv(..., raising=False) of an unset variable does not undo.
    saved = dict(os.environ)
    yield
    if os.environ != saved:
        os.environ.clear()
        os.environ.update(saved)


def _shared_scope(item) -> str | None:
    """The module whose module-scoped fixture the test uses, if any."""
    info = getattr(item, "_fixtureinfo", None)  # None for non-function items (e.g. doctests)
    for defs in (info.name2fixturedefs.values() if info else ()):
        if defs and defs[-1].scope in ("module", "class", "package"):
            return item.module.__name__
    return None


# Before xdist's own hook, which reads the xdist_group marks.
@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    groups = {}
    for item in items:
        scope = _shared_scope(item)
        if scope is not None:
            item.add_marker(pytest.mark.xdist_group(scope))
        groups.setdefault(scope or item.nodeid, []).append(item)
    slow = {name: sum(1 for i in members if i.get_closest_marker("slow")) for name, members in groups.items()}
    # Most slow tests first, then the largest groups (a module fixture and its tests): the big units
    # start early. sorted() is stable: among equals, collection order.
    order = sorted(groups, key=lambda name: (-slow[name], -len(groups[name])))
    items[:] = [item for name in order for item in groups[name]]


@functools.lru_cache(maxsize=None)
def _validated(names: tuple[str, ...]) -> dict:
    from snakemake.utils import update_config, validate

    config = {}
    for name in names:  # as --configfile layers them
        update_config(config, yaml.safe_load((ROOT / "config" / name).read_text()))
    validate(config, str(ROOT / "config" / "schema.yaml"))
    return config


def validated_config(*names: str) -> dict:
    """Shipped configs (config/<name>, layered in order as --configfile does) as the workflow sees
    them: the schema's defaults filled in by Snakemake's validator. A fresh copy: tests may change it."""
    return copy.deepcopy(_validated(names))


@pytest.fixture()
def demo_config():
    """config/config.yaml, the demo, as the workflow validates it."""
    return validated_config("config.yaml")
