"""One GPU per job on a workstation: a lease is an exclusive lock on one file per GPU index.

Snakemake's ``--resources gpu=K`` caps how many GPU jobs run at once but does not say which GPU
each should use. Each job therefore takes the first free lock ``gpu{i}.lock`` in a shared folder
and sets CUDA_VISIBLE_DEVICES=i. The lock is an flock: the kernel releases it when the job ends
or dies, so a killed job can never keep a GPU leased. Where a scheduler (SLURM) has already set
CUDA_VISIBLE_DEVICES for the job, that choice is left alone.
"""

import contextlib
import logging
import os
import shutil
import subprocess
import time
from pathlib import Path

from deepbc import locks
from deepbc.errors import UserError

LOG = logging.getLogger("deepbc.gpu")


def detect_gpu_count() -> int:
    """GPUs listed by nvidia-smi; 0 where there is no driver."""
    if shutil.which("nvidia-smi") is None:
        return 0
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30, check=True).stdout
    except (subprocess.SubprocessError, OSError):
        return 0
    return sum(1 for line in out.splitlines() if line.startswith("GPU "))


def scheduler_assigned() -> bool:
    return "CUDA_VISIBLE_DEVICES" in os.environ and any(
        v in os.environ for v in ("SLURM_JOB_ID", "PBS_JOBID", "LSB_JOBID"))


@contextlib.contextmanager
def lease(lock_dir, n_devices: int | None = None, timeout: float = 24 * 3600, poll: float = 1.0):
    """Hold one GPU for the duration of the block; yields its index, or None when running on CPU."""
    if scheduler_assigned():
        LOG.info("GPU set by the scheduler: CUDA_VISIBLE_DEVICES=%s", os.environ["CUDA_VISIBLE_DEVICES"])
        yield None
        return
    n = detect_gpu_count() if n_devices is None else n_devices
    if n == 0:
        LOG.info("no GPU found: running on the CPU")
        yield None
        return
    lock_dir = Path(lock_dir)
    lock_dir.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + timeout
    while True:
        for index in range(n):
            handle = locks.try_lock(lock_dir / f"gpu{index}.lock")
            if handle is None:
                continue
            os.environ["CUDA_VISIBLE_DEVICES"] = str(index)
            LOG.info("leased GPU %d (lock %s)", index, handle.name)
            try:
                yield index
            finally:
                locks.release(handle)
            return
        if time.monotonic() > deadline:
            raise UserError(f"all {n} GPUs stayed leased for {timeout:.0f} s", str(lock_dir),
                            "run with --resources gpu=K where K is at most the number of GPUs, "
                            "or remove stale lock files only if no job is running")
        time.sleep(poll)


def add_arguments(parser) -> None:
    """The command-line options of a GPU job's script."""
    parser.add_argument("--gpus", type=int, default=-1,
                        help="GPUs on this host to lease one from (-1: count them with nvidia-smi; 0: CPU)")
    parser.add_argument("--gpu-lock-dir", default=".gpu_leases", help="shared folder of per-GPU lock files")


def lease_from_args(args):
    return lease(args.gpu_lock_dir, None if args.gpus < 0 else args.gpus)
