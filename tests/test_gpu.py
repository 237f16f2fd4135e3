"""GPU leases with simulated GPU indices: concurrent jobs get different devices; death frees one.
A job holding a GPU that TensorFlow cannot see stops with the cause, and so does one on a host whose
NVIDIA driver does not work; --gpus 0, or a scheduler that assigned no GPU, runs on the CPU."""

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from deepbc.jobs import gpu
from deepbc.jobs.errors import UserError
from tests import trainkit

ROOT = Path(__file__).resolve().parents[1]
HOLDER = """
import sys, time
sys.path.insert(0, {root!r})
from deepbc.jobs import gpu
with gpu.lease({lock_dir!r}, n_devices=2, timeout=20, poll=0.05) as index:
    print(index, flush=True)
    time.sleep(float(sys.argv[1]))
"""


def _holder(lock_dir, seconds, env=None):
    code = HOLDER.format(root=str(ROOT), lock_dir=str(lock_dir))
    env = {k: v for k, v in (env or os.environ).items() if k not in ("CUDA_VISIBLE_DEVICES", "SLURM_JOB_ID")}
    return subprocess.Popen([sys.executable, "-c", code, str(seconds)], stdout=subprocess.PIPE, text=True, env=env)


def _tensorflow_sees_a_gpu() -> bool:
    import tensorflow as tf

    return bool(tf.config.list_physical_devices("GPU"))


# Tests of jobs whose TensorFlow must see no GPU (once TensorFlow has listed a GPU, hiding it with
# CUDA_VISIBLE_DEVICES no longer works in the same process).
needs_no_visible_gpu = pytest.mark.skipif(_tensorflow_sees_a_gpu(), reason="TensorFlow sees a GPU here")


@pytest.fixture(autouse=True)
def no_scheduler(monkeypatch):
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setattr(gpu, "DEVICE_NODE", Path("/nonexistent/nvidia0"), raising=False)  # not this host's


def test_two_concurrent_jobs_get_different_gpus(tmp_path):
    # Held long enough for both holders to start even when other tests load the cores.
    a, b = _holder(tmp_path, 10), _holder(tmp_path, 10)
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


def test_all_leased_times_out_naming_the_holders_to_stop(tmp_path):
    """The advice followed as written: kill a holder's PID, then a lease is free. (Lock files are
    never stale, so none is to be removed.)"""
    holders = [_holder(tmp_path, 60), _holder(tmp_path, 60)]
    held = {h.stdout.readline().strip(): h for h in holders}
    try:
        with pytest.raises(UserError, match="all 2 GPUs stayed leased") as err:
            with gpu.lease(tmp_path, n_devices=2, timeout=0.2, poll=0.05):
                pass
        assert "kill PID" in err.value.fix and "gpu=K" in err.value.fix and "remove" not in err.value.fix
        pid = int(re.search(r"GPU 0: pid (\d+) on host", err.value.what)[1])
        assert pid == held["0"].pid and f"GPU 1: pid {held['1'].pid} on host" in err.value.what
        os.kill(pid, signal.SIGKILL)
        held["0"].wait()
        with gpu.lease(tmp_path, n_devices=2, timeout=5, poll=0.05) as index:
            assert index == 0
    finally:
        for h in holders:
            h.kill()
            h.wait()


# A GPU job whose TensorFlow cannot see its GPU (this machine has none, so TensorFlow sees none).

FAKE_SMI = """#!/bin/sh
case "$1" in
  -L) echo "GPU 0: NVIDIA Fake (UUID: GPU-00000000)" ;;
  --query-gpu=*) echo "16384" ;;
  *) echo "| NVIDIA-SMI 470.57.02   Driver Version: 470.57.02   CUDA Version: {cuda}   |" ;;
esac
"""
FAILING_SMI = """#!/bin/sh
echo "Failed to initialize NVML: Driver/library version mismatch" >&2
exit 18
"""


@pytest.fixture(autouse=True)
def restore_process_state(monkeypatch):
    """The scripts' main set CUDA_* variables and the root logger's handlers; undo both."""
    import logging

    monkeypatch.delenv("CUDA_DEVICE_ORDER", raising=False)
    handlers = list(logging.getLogger().handlers)
    yield
    logging.getLogger().handlers[:] = handlers


def _fake_nvidia_smi(tmp_path, monkeypatch, cuda="11.4"):
    """One GPU on PATH whose driver supports CUDA up to ``cuda``."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "nvidia-smi").write_text(FAKE_SMI.format(cuda=cuda))
    (bin_dir / "nvidia-smi").chmod(0o755)
    monkeypatch.setenv("PATH", str(bin_dir))




def _job_args(name, tmp_path):
    """Arguments naming inputs that do not exist: the GPU check must fail before any is read."""
    missing = str(tmp_path / "missing")
    return {"train_model": ["--train-index", missing, "--val-index", missing, "--arch", "resnet_small",
                            "--settings-json", json.dumps(trainkit.settings_values()),
                            "--out-dir", str(tmp_path / "out"), "--state-dir", str(tmp_path / "state"), "--seed", "1",
                            "--threads", "1", "--memory-mb", "1000"],
            "evaluate_model": ["--model-dir", missing, "--shard-index", missing, "--out", str(tmp_path / "out"),
                               "--val-shard-index", missing, "--val-out", str(tmp_path / "val out"), "--threads", "1",
                               "--gradcam-png", str(tmp_path / "gradcam.png"), "--classes", "a", "b", "--seed", "1",
                               "--title", "t", "--split-audit", missing],
            "predict_folder": ["--model-dir", missing, "--images", missing, "--out", str(tmp_path / "out"),
                               "--threads", "1"]}[name]


@needs_no_visible_gpu
@pytest.mark.parametrize("name", ["train_model", "evaluate_model", "predict_folder"])
def test_leased_gpu_that_tensorflow_cannot_see_stops_the_job_with_its_cause(name, tmp_path, monkeypatch):
    from deepbc.jobs.logs import run_main

    _fake_nvidia_smi(tmp_path, monkeypatch, cuda="11.4")
    log, locks = tmp_path / "job.log", tmp_path / "locks"
    code = run_main(trainkit.script(name).main, _job_args(name, tmp_path) + ["--gpu-lock-dir", str(locks), "--log", str(log)])
    text = log.read_text()
    assert code == 1 and not (tmp_path / "out").exists()
    assert "holds GPU 0 (leased" in text and "TensorFlow sees no GPU" in text
    assert "driver is too old: it supports CUDA up to 11.4" in text
    assert gpu.install_line() in text and "resources.gpu: 0" in text
    with gpu.lease(locks, n_devices=1, timeout=0) as index:  # the failed job released its GPU
        assert index == 0


@needs_no_visible_gpu
def test_scheduler_assigned_gpu_that_tensorflow_cannot_see_stops_the_job(tmp_path, monkeypatch):
    from deepbc.jobs.logs import run_main

    monkeypatch.setenv("PATH", str(tmp_path))  # no nvidia-smi: only the scheduler says there is a GPU
    monkeypatch.setenv("SLURM_JOB_ID", "123")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    log = tmp_path / "job.log"
    code = run_main(trainkit.script("evaluate_model").main, _job_args("evaluate_model", tmp_path) + ["--log", str(log)])
    text = log.read_text()
    assert code == 1 and "its scheduler assigned (CUDA_VISIBLE_DEVICES='0')" in text
    assert "TensorFlow sees no GPU" in text and gpu.install_line() in text


@needs_no_visible_gpu
@pytest.mark.parametrize("value", ["", "-1", "NoDevFiles"])
def test_scheduler_that_assigned_no_gpu_runs_the_job_on_the_cpu(value, tmp_path, monkeypatch, caplog):
    """SLURM sets CUDA_VISIBLE_DEVICES to one of these for a job that asked for no GPU."""
    _fake_nvidia_smi(tmp_path, monkeypatch)  # the host has a GPU; this job was not given it
    monkeypatch.setenv("SLURM_JOB_ID", "123")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", value)
    assert not gpu.scheduler_assigned()
    args = argparse.Namespace(gpus=-1, gpu_lock_dir=str(tmp_path / "locks"), threads=1)
    with caplog.at_level("INFO"), gpu.lease_from_args(args) as device:
        assert device["type"] == "CPU" and os.environ["CUDA_VISIBLE_DEVICES"] == value
    assert f"the scheduler assigned no GPU to this job (CUDA_VISIBLE_DEVICES={value!r}): running on the CPU" \
        in caplog.text
    assert not (tmp_path / "locks").exists()


@needs_no_visible_gpu
def test_gpu_hidden_by_cuda_visible_devices_is_named_as_the_cause(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    with pytest.raises(UserError, match="CUDA_VISIBLE_DEVICES='' hides every GPU"):
        gpu.require_gpu("a test's GPU")


def _failing_nvidia_smi(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "nvidia-smi").write_text(FAILING_SMI)
    (bin_dir / "nvidia-smi").chmod(0o755)
    monkeypatch.setenv("PATH", str(bin_dir))


def test_failing_nvidia_smi_stops_a_gpu_job_with_its_error(tmp_path, monkeypatch):
    _failing_nvidia_smi(tmp_path, monkeypatch)
    args = argparse.Namespace(gpus=-1, gpu_lock_dir=str(tmp_path / "locks"), threads=1)
    with pytest.raises(UserError) as err:
        with gpu.lease_from_args(args):
            pytest.fail("the job ran")
    text = str(err.value)
    assert "nvidia-smi fails" in text and "Driver/library version mismatch (exit status 18)" in text
    assert "reboot" in text and "resources.gpu: 0" in text


@needs_no_visible_gpu
def test_failing_nvidia_smi_is_named_where_the_scheduler_assigned_a_gpu(tmp_path, monkeypatch):
    _failing_nvidia_smi(tmp_path, monkeypatch)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    with pytest.raises(UserError, match="nvidia-smi fails: Failed to initialize NVML: Driver/library "
                                        "version mismatch") as err:
        gpu.require_gpu("a test's GPU")
    assert "reboot" in str(err.value)


def test_nvidia_device_without_a_working_nvidia_smi_stops_a_gpu_job(tmp_path, monkeypatch):
    node = tmp_path / "nvidia0"
    node.touch()
    monkeypatch.setattr(gpu, "DEVICE_NODE", node)
    monkeypatch.setenv("PATH", str(tmp_path))  # no nvidia-smi
    args = argparse.Namespace(gpus=-1, gpu_lock_dir=str(tmp_path / "locks"), threads=1)
    with pytest.raises(UserError, match="nvidia-smi is not installed or not on PATH") as err:
        with gpu.lease_from_args(args):
            pytest.fail("the job ran")
    assert "resources.gpu: 0" in str(err.value) and "gpu_devices" in str(err.value)


@needs_no_visible_gpu
def test_gpus_0_runs_on_the_cpu_even_where_nvidia_smi_fails(tmp_path, monkeypatch):
    _failing_nvidia_smi(tmp_path, monkeypatch)
    args = argparse.Namespace(gpus=0, gpu_lock_dir=str(tmp_path / "locks"), threads=1)
    with gpu.lease_from_args(args) as device:
        assert device["type"] == "CPU"


def test_install_line_outside_a_checkout_names_the_installed_tensorflow(tmp_path, monkeypatch):
    import importlib.metadata

    monkeypatch.setattr(gpu, "ROOT", tmp_path)  # a non-editable install: no requirements.txt
    version = importlib.metadata.version("tensorflow")
    assert gpu.install_line() == f'pip install "tensorflow[and-cuda]=={version}"'


@needs_no_visible_gpu
def test_cpu_threads_without_sched_getaffinity(monkeypatch):
    monkeypatch.delattr(os, "sched_getaffinity", raising=False)
    assert gpu.describe_device()["threads"] == (os.cpu_count() or 1)


def test_tensorflow_built_without_cuda_is_named_as_the_cause(monkeypatch):
    import tensorflow as tf

    monkeypatch.setattr(tf.test, "is_built_with_cuda", lambda: False)
    cause, fix = gpu.diagnose()[0]
    assert "built without CUDA" in cause and gpu.install_line() in fix


@pytest.mark.parametrize("driver_cuda, too_old", [("11.4", True), ("12.8", False)])
def test_driver_is_too_old_only_below_tensorflows_cuda_major(driver_cuda, too_old, tmp_path, monkeypatch):
    _fake_nvidia_smi(tmp_path, monkeypatch, cuda=driver_cuda)
    assert gpu.driver_cuda_version() == driver_cuda
    assert any("driver is too old" in cause for cause, _ in gpu.diagnose()) == too_old


def test_cuda_library_of_an_nvidia_pip_package_counts_as_found(tmp_path, monkeypatch):
    lib = tmp_path / "nvidia" / "cuda_runtime" / "lib"
    lib.mkdir(parents=True)
    (lib / "libcudart.so.99").write_bytes(b"")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert gpu.missing_cuda_libraries({"cuda_version": "99.1.0", "cudnn_version": "98"}) == ["libcudnn.so.98"]


@needs_no_visible_gpu
def test_no_gpu_anywhere_runs_on_the_cpu_as_before(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("PATH", str(tmp_path))  # no nvidia-smi
    args = argparse.Namespace(gpus=-1, gpu_lock_dir=str(tmp_path / "locks"), threads=3)
    with caplog.at_level("INFO"), gpu.lease_from_args(args) as device:
        assert device == {"type": "CPU", "threads": 3, "description": "CPU, 3 threads"}
    assert "no GPU found: running on the CPU" in caplog.text


@needs_no_visible_gpu
def test_gpus_0_hides_every_gpu_even_one_the_scheduler_assigned(tmp_path, monkeypatch):
    _fake_nvidia_smi(tmp_path, monkeypatch)
    monkeypatch.setenv("SLURM_JOB_ID", "123")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    args = argparse.Namespace(gpus=0, gpu_lock_dir=str(tmp_path / "locks"), threads=1)
    with gpu.lease_from_args(args) as device:
        assert os.environ["CUDA_VISIBLE_DEVICES"] == "-1" and device["type"] == "CPU"
    assert not (tmp_path / "locks").exists()


@needs_no_visible_gpu
@pytest.mark.slow
def test_gpus_0_trains_on_the_cpu_without_complaint_and_records_it(tmp_path, monkeypatch):
    """Even where nvidia-smi and the scheduler both say there is a GPU."""
    from deepbc.jobs.logs import run_main
    from tests import trainkit

    # The smallest training the trainer accepts (one step of 4 images): the device is the point.
    shard_dir = trainkit.make_shards(tmp_path / "images", tmp_path / "shards", per_split=(4, 2, 2))
    _fake_nvidia_smi(tmp_path, monkeypatch)
    monkeypatch.setenv("SLURM_JOB_ID", "123")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    settings = trainkit.settings_values(max_number_of_steps=1, eval_every_steps=1, save_every_steps=1,
                                 batch_size=4)
    log, out = tmp_path / "train.log", tmp_path / "model"
    code = run_main(trainkit.script("train_model").main, [
        "--train-index", str(shard_dir / "train.json"), "--val-index", str(shard_dir / "val.json"),
        "--arch", "resnet_small", "--settings-json", json.dumps(settings),
        "--out-dir", str(out), "--state-dir", str(tmp_path / "state"), "--seed", "1", "--threads", "1", "--memory-mb", "1000",
        "--gpus", "0", "--log", str(log)])
    text = log.read_text()
    complaints = [line for line in text.splitlines() if " ERROR " in line or (" WARNING " in line and "GPU" in line)]
    assert code == 0 and not complaints
    assert "device: CPU, 1 threads" in text
    device = json.loads((out / "settings.json").read_text())["device"]
    assert (device["type"], device["threads"], device["precision"]) == ("CPU", 1, "fp32")


def test_lease_options_default_to_what_the_workflow_puts_in_the_environment(monkeypatch):
    monkeypatch.setenv("DEEPBC_GPUS", "0")
    monkeypatch.setenv("DEEPBC_GPU_LOCK_DIR", "/shared/leases")
    parser = argparse.ArgumentParser()
    gpu.add_arguments(parser)
    args = parser.parse_args([])
    assert (args.gpus, args.gpu_lock_dir) == (0, "/shared/leases")
    assert parser.parse_args(["--gpus", "2"]).gpus == 2  # the command line still wins
