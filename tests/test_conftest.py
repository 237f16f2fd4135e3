"""The suite's own scheduling (tests/conftest.py), on a small suite run by pytest in a subprocess:
tests sharing a module fixture stay on one worker, slow groups come first, environments are restored,
and `-n auto` is bounded."""

import re
import shutil
import subprocess
import sys
from pathlib import Path

from tests import conftest

CONFTEST = Path(__file__).with_name("conftest.py")

SHARED = '''
import os
import pytest

@pytest.fixture(scope="module")
def built():
    with open("built.log", "a") as log:
        log.write(os.environ.get("PYTEST_XDIST_WORKER", "main") + "\\n")

@pytest.mark.parametrize("i", range(6))
def test_uses_it(built, i):
    pass
'''
FREE = '''
import pytest

@pytest.mark.parametrize("i", range(6))
def test_alone(i):
    pass
'''
SLOW = '''
import pytest

@pytest.fixture(scope="module")
def built():
    pass

@pytest.mark.slow
def test_slow_one(built):
    pass

@pytest.mark.slow
def test_slow_two(built):
    pass

def test_quick_alone():
    pass

@pytest.mark.slow
def test_slow_alone():
    pass
'''
LEAK = '''
import os

def test_sets_a_variable():
    os.environ["DEEPBC_LEAKED"] = "1"

def test_starts_without_it():
    assert "DEEPBC_LEAKED" not in os.environ
'''


def run_pytest(folder: Path, files: dict, *args) -> str:
    shutil.copy(CONFTEST, folder / "conftest.py")
    (folder / "pytest.ini").write_text("[pytest]\nmarkers =\n    slow: slow\n")
    for name, text in files.items():
        (folder / name).write_text(text)
    proc = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args], cwd=folder,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def test_tests_sharing_a_module_fixture_run_on_one_worker_which_builds_it_once(tmp_path):
    out = run_pytest(tmp_path, {"test_a.py": SHARED, "test_b.py": FREE},
                     "-n", "2", "--dist", "loadgroup", "--no-loadscope-reorder", "-v")
    workers = set(re.findall(r"\[(gw\d)\].*PASSED test_a\.py::", out))
    assert len(workers) == 1, out
    assert (tmp_path / "built.log").read_text().split() == list(workers)
    # The others are spread: both workers ran tests.
    assert set(re.findall(r"\[(gw\d)\].*PASSED", out)) == {"gw0", "gw1"}, out


def test_groups_with_the_most_slow_tests_are_collected_first(tmp_path):
    out = run_pytest(tmp_path, {"test_a.py": FREE, "test_z.py": SLOW}, "-n", "0", "--collect-only", "-q")
    order = [line for line in out.splitlines() if "::" in line]
    assert order[:4] == ["test_z.py::test_slow_one", "test_z.py::test_slow_two", "test_z.py::test_slow_alone",
                         "test_a.py::test_alone[0]"], out
    assert "test_z.py::test_quick_alone" in order[4:]


def test_a_variable_set_by_one_test_is_gone_in_the_next(tmp_path):
    run_pytest(tmp_path, {"test_leak.py": LEAK}, "-n", "0")


def test_auto_worker_count_is_bounded_on_a_large_machine(monkeypatch):
    monkeypatch.delenv("PYTEST_XDIST_AUTO_NUM_WORKERS", raising=False)
    monkeypatch.setattr(conftest.os, "sched_getaffinity", lambda pid: set(range(64)), raising=False)
    assert conftest.pytest_xdist_auto_num_workers(None) <= conftest.MAX_WORKERS
    monkeypatch.setattr(conftest.os, "sched_getaffinity", lambda pid: {0}, raising=False)
    assert conftest.pytest_xdist_auto_num_workers(None) == 1
    monkeypatch.setenv("PYTEST_XDIST_AUTO_NUM_WORKERS", "3")
    assert conftest.pytest_xdist_auto_num_workers(None) is None  # xdist then uses the 3
