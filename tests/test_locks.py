"""Job locks: a second job on the same state folder or output names the holder; death frees the lock."""

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from deepbc.jobs import locks
from deepbc.jobs.errors import UserError
from tests import trainkit

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "workflow_scripts"
HOLDER = """
import sys, time
sys.path.insert(0, {root!r})
from deepbc.jobs import locks
with locks.exclusive({target!r}, "the test folder"):
    print("held", flush=True)
    time.sleep(120)
"""


@pytest.fixture()
def holder(tmp_path):
    """A process holding the lock of tmp_path/target until killed."""
    target = tmp_path / "target"
    proc = subprocess.Popen([sys.executable, "-c", HOLDER.format(root=str(ROOT), target=str(target))],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    yield target, proc
    proc.kill()
    proc.wait()


def _script(name, target, tmp_path, timeout="0.2"):
    args = {"train_model.py": ["--train-index", str(tmp_path / "no train.json"),
                               "--val-index", str(tmp_path / "no val.json"), "--arch", "resnet_small",
                               "--settings-json", json.dumps(trainkit.settings_values()), "--out-dir", str(tmp_path / "model"),
                               "--state-dir", str(target), "--seed", "1", "--threads", "1", "--memory-mb", "1000"],
            "evaluate_model.py": ["--model-dir", str(tmp_path / "no model"), "--shard-index",
                                  str(tmp_path / "test.json"), "--out", str(target), "--val-shard-index",
                                  str(tmp_path / "val.json"), "--val-out", str(tmp_path / "val.parquet"),
                                  "--threads", "1", "--gradcam-png", str(tmp_path / "gradcam.png"),
                                  "--classes", "a", "b", "--seed", "1", "--title", "t",
                                  "--split-audit", str(tmp_path / "split.audit.json")]}[name]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, str(SCRIPTS / name), *args, "--gpus", "0", "--lock-timeout", timeout,
                           "--log", str(tmp_path / "job.log")], capture_output=True, text=True, env=env, timeout=300)


@pytest.mark.parametrize("name", ["train_model.py", "evaluate_model.py"])
def test_second_job_fails_naming_the_holder(holder, tmp_path, name):
    target, proc = holder
    job = _script(name, target, tmp_path)
    assert job.returncode == 1
    log = (tmp_path / "job.log").read_text()
    assert "another process is working on" in log and f"pid {proc.pid} on host" in log, log
    assert "kill PID" in log and f"pid {proc.pid}" in job.stderr


def test_the_advice_followed_as_written_frees_the_lock(holder, tmp_path):
    """'stop it (kill PID) ..., then rerun': the PID the job's log names is the holder; killed, it
    leaves the lock free."""
    target, proc = holder
    assert _script("train_model.py", target, tmp_path).returncode == 1
    log = (tmp_path / "job.log").read_text()
    assert "stop it (kill PID)" in log
    pid = int(re.search(r"another process is working on .*: pid (\d+) on host", log)[1])
    os.kill(pid, signal.SIGKILL)
    proc.wait()
    # Taken at once, in this process (the scripts take it through the same locks.exclusive, as
    # test_second_job_fails_naming_the_holder shows; a script past it would import TensorFlow).
    with locks.exclusive(target, "the test folder", timeout=0.1, poll=0.02):
        assert f'"pid": {os.getpid()}' in locks.lock_path(target).read_text()


def test_lock_taken_in_this_process_names_it_and_is_free_after_release(tmp_path):
    target = tmp_path / "state"
    handle = locks.try_lock(locks.lock_path(target))
    with pytest.raises(UserError, match=f"pid {os.getpid()}"):
        # flock locks belong to the open file: a second open in this process conflicts too.
        with locks.exclusive(target, "the state", timeout=0.1, poll=0.02):
            pass
    locks.release(handle)
    with locks.exclusive(target, "the state", timeout=0.1, poll=0.02):
        assert f'"pid": {os.getpid()}' in locks.lock_path(target).read_text()


def test_waits_for_the_holder_then_runs(tmp_path, caplog):
    import threading

    target = tmp_path / "state"
    handle = locks.try_lock(locks.lock_path(target))
    threading.Timer(0.3, locks.release, [handle]).start()
    with locks.exclusive(target, "the state", timeout=30, poll=0.05):
        assert f"locked by pid {os.getpid()}" in caplog.text
