"""GPU leases with simulated GPU indices: concurrent jobs get different devices; death frees one."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from deepbc import gpu
from deepbc.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
HOLDER = """
import sys, time
sys.path.insert(0, {root!r})
from deepbc import gpu
with gpu.lease({lock_dir!r}, n_devices=2, timeout=20, poll=0.05) as index:
    print(index, flush=True)
    time.sleep(float(sys.argv[1]))
"""


def _holder(lock_dir, seconds, env=None):
    code = HOLDER.format(root=str(ROOT), lock_dir=str(lock_dir))
    env = {k: v for k, v in (env or os.environ).items() if k not in ("CUDA_VISIBLE_DEVICES", "SLURM_JOB_ID")}
    return subprocess.Popen([sys.executable, "-c", code, str(seconds)], stdout=subprocess.PIPE, text=True, env=env)


@pytest.fixture(autouse=True)
def no_scheduler(monkeypatch):
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)


def test_two_concurrent_jobs_get_different_gpus(tmp_path):
    a, b = _holder(tmp_path, 3), _holder(tmp_path, 3)
    got = {a.stdout.readline().strip(), b.stdout.readline().strip()}
    a.wait(), b.wait()
    assert got == {"0", "1"}


def test_killed_job_releases_its_lease(tmp_path):
    first, second = _holder(tmp_path, 60), _holder(tmp_path, 60)
    held = {first.stdout.readline().strip(), second.stdout.readline().strip()}
    assert held == {"0", "1"}
    waiting = _holder(tmp_path, 0)
    time.sleep(0.5)
    assert waiting.poll() is None  # both GPUs taken: it waits
    first.send_signal(signal.SIGKILL)
    first.wait()
    freed = waiting.stdout.readline().strip()
    waiting.wait(timeout=10)
    second.kill()
    second.wait()
    assert freed in held


def test_lease_sets_cuda_visible_devices(tmp_path):
    with gpu.lease(tmp_path, n_devices=1) as index:
        assert index == 0 and os.environ["CUDA_VISIBLE_DEVICES"] == "0"


def test_scheduler_choice_left_alone(tmp_path, monkeypatch):
    monkeypatch.setenv("SLURM_JOB_ID", "123")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")
    with gpu.lease(tmp_path, n_devices=4) as index:
        assert index is None and os.environ["CUDA_VISIBLE_DEVICES"] == "3"
    assert not list(tmp_path.iterdir())


def test_no_gpu_runs_on_cpu(tmp_path):
    with gpu.lease(tmp_path, n_devices=0) as index:
        assert index is None and "CUDA_VISIBLE_DEVICES" not in os.environ


def test_all_leased_times_out_with_advice(tmp_path):
    with gpu.lease(tmp_path, n_devices=1):
        with pytest.raises(UserError, match="gpu=K"):
            with gpu.lease(tmp_path, n_devices=1, timeout=0.2, poll=0.05):
                pass
