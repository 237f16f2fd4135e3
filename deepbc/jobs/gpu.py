"""One GPU per job on a workstation: a lease is an exclusive lock on one file per GPU index.

Snakemake's ``--resources gpu=K`` caps how many GPU jobs run at once but does not say which GPU
each should use. Each job therefore takes the first free lock ``gpu{i}.lock`` in a shared folder
and sets CUDA_VISIBLE_DEVICES=i. The lock is an flock: the kernel releases it when the job ends
or dies, so a killed job can never keep a GPU leased. Where a scheduler (SLURM) has already set
CUDA_VISIBLE_DEVICES for the job, that choice is left alone; a scheduler that set it to a value
hiding every GPU ("", "-1", "NoDevFiles") assigned none, and the job runs on the CPU.

A job that holds a GPU (leased or given by the scheduler) checks that TensorFlow sees it before
it starts, and otherwise stops with the likely cause: without that check it would silently train
on the CPU, weeks instead of a day. For the same reason a job that may lease a GPU stops where the
host has an NVIDIA driver that does not work (nvidia-smi present but failing, or /dev/nvidia0
without a GPU listed), instead of taking the host for a CPU-only one.
"""

import contextlib
import ctypes
import importlib.metadata
import logging
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from deepbc.jobs import locks
from deepbc.jobs.errors import UserError

LOG = logging.getLogger("deepbc.jobs.gpu")
ROOT = Path(__file__).resolve().parents[2]
# CUDA_VISIBLE_DEVICES values that hide every GPU ("NoDevFiles": older SLURM without a GPU).
NO_DEVICES = {"", "-1", "NoDevFiles"}
# The first NVIDIA device node: present wherever an NVIDIA driver has found a GPU.
DEVICE_NODE = Path("/dev/nvidia0")
DRIVER_FIX = ("fix the NVIDIA driver (after a driver update, reboot so that the loaded kernel module "
              "matches the driver's libraries: 'Driver/library version mismatch'); check that nvidia-smi "
              "runs")
SCHEDULER_JOB_VARIABLES = ("SLURM_JOB_ID", "PBS_JOBID", "LSB_JOBID")
CPU_ON_PURPOSE = ("to run on the CPU on purpose, set resources.gpu: 0 (e.g. --configfile ... "
                  "config/cpu_only.yaml), or --gpus 0 for a script run alone")


def _count(listing: str | None) -> int:
    return sum(1 for line in (listing or "").splitlines() if line.startswith("GPU "))


def _run_nvidia_smi(*args: str) -> tuple[str | None, str | None]:
    """(output, None) where nvidia-smi succeeds; (None, its error output) where it fails;
    (None, None) where it is not installed."""
    if shutil.which("nvidia-smi") is None:
        return None, None
    try:
        proc = subprocess.run(["nvidia-smi", *args], capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired:
        return None, "no answer within 30 s"
    except OSError as err:
        return None, str(err)
    if proc.returncode != 0:
        said = " ".join((proc.stderr.strip() or proc.stdout.strip()).split()) or "no message"
        return None, f"{said} (exit status {proc.returncode})"
    return proc.stdout, None


def _nvidia_smi(*args: str) -> str | None:
    """nvidia-smi's output, or None where it is missing or fails."""
    return _run_nvidia_smi(*args)[0]


def host_gpu_count() -> int:
    """GPUs on this host for a job that may lease one: nvidia-smi's count, 0 where the host has no
    NVIDIA driver; a UserError where it has one that does not work, which would otherwise make a
    GPU job run silently on the CPU."""
    listing, error = _run_nvidia_smi("-L")
    if error is not None:
        raise UserError(
            f"nvidia-smi fails, so this job cannot tell which GPU to use and would run on the CPU, "
            f"many times slower: {error}", "nvidia-smi -L",
            f"{DRIVER_FIX}; or {CPU_ON_PURPOSE}")
    n = _count(listing)
    if n == 0 and DEVICE_NODE.exists():
        found = "is not installed or not on PATH" if listing is None else "lists no GPU"
        raise UserError(
            f"{DEVICE_NODE} exists (an NVIDIA GPU with its driver), but nvidia-smi {found}: this job "
            "would run on the CPU, many times slower", str(DEVICE_NODE),
            "put the driver's nvidia-smi on PATH and check it lists the GPUs (reboot after a driver "
            "update), or give the number of GPUs (resources.gpu_devices: N; --gpus N for a script "
            f"run alone); or {CPU_ON_PURPOSE}")
    return n


def _under_scheduler() -> bool:
    return "CUDA_VISIBLE_DEVICES" in os.environ and any(v in os.environ for v in SCHEDULER_JOB_VARIABLES)


def scheduler_assigned() -> bool:
    """A scheduler set CUDA_VISIBLE_DEVICES to one or more GPUs for this job."""
    return _under_scheduler() and os.environ["CUDA_VISIBLE_DEVICES"].strip() not in NO_DEVICES


def scheduler_assigned_none() -> bool:
    """A scheduler set CUDA_VISIBLE_DEVICES to a value that hides every GPU: it assigned none."""
    return _under_scheduler() and os.environ["CUDA_VISIBLE_DEVICES"].strip() in NO_DEVICES


@contextlib.contextmanager
def lease(lock_dir, n_devices: int | None = None, timeout: float = 24 * 3600, poll: float = 1.0):
    """Hold one GPU for the duration of the block; yields its index, or None when running on CPU."""
    if scheduler_assigned():
        LOG.info("GPU set by the scheduler: CUDA_VISIBLE_DEVICES=%s", os.environ["CUDA_VISIBLE_DEVICES"])
        yield None
        return
    if scheduler_assigned_none():
        LOG.info("the scheduler assigned no GPU to this job (CUDA_VISIBLE_DEVICES=%r): running on the CPU",
                 os.environ["CUDA_VISIBLE_DEVICES"])
        yield None
        return
    n = host_gpu_count() if n_devices is None else n_devices
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
            # PCI order makes index i the GPU that nvidia-smi calls i (CUDA's default is fastest first).
            os.environ["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"
            os.environ["CUDA_VISIBLE_DEVICES"] = str(index)
            LOG.info("leased GPU %d (lock %s)", index, handle.name)
            try:
                yield index
            finally:
                locks.release(handle)
            return
        if time.monotonic() > deadline:
            # A lease is an flock, released when its holder ends or dies: a lock file is never
            # stale, and removing one would let two jobs lease the same GPU.
            holders = "; ".join(f"GPU {i}: {locks.holder(lock_dir / f'gpu{i}.lock')}" for i in range(n))
            raise UserError(f"all {n} GPUs stayed leased for {timeout:.0f} s ({holders})", str(lock_dir),
                            "wait for those processes to finish, or stop one left over from a killed run "
                            "(kill PID), then rerun; give this workflow at most as many GPU jobs as there "
                            "are GPUs (--resources gpu=K)")
        time.sleep(poll)


def install_line() -> str:
    """README's GPU install line, with requirements.txt's TensorFlow pin; outside a checkout (no
    requirements.txt), the installed TensorFlow's version with its CUDA libraries. Never raises: it
    is part of an error message."""
    try:
        match = re.search(r"^tensorflow==(\S+)", (ROOT / "requirements.txt").read_text(), re.MULTILINE)
    except (OSError, UnicodeDecodeError):
        match = None
    if match:
        return f'pip install -r requirements.txt "tensorflow[and-cuda]=={match.group(1)}" -e .'
    try:
        return f'pip install "tensorflow[and-cuda]=={importlib.metadata.version("tensorflow")}"'
    except importlib.metadata.PackageNotFoundError:
        return 'pip install "tensorflow[and-cuda]"'


def _install_fix() -> str:
    return f"install TensorFlow with its CUDA libraries: {install_line()}"


def driver_cuda_version() -> str | None:
    """The newest CUDA the NVIDIA driver supports ("CUDA Version" in nvidia-smi's header)."""
    match = re.search(r"CUDA Version:\s*([0-9.]+)", _nvidia_smi() or "")
    return match.group(1) if match else None


def _library_found(name: str) -> bool:
    """Loadable from the system's library path, or shipped by an nvidia-* pip package (TensorFlow's wheel
    looks in site-packages/nvidia/*/lib)."""
    try:
        ctypes.CDLL(name)
        return True
    except OSError:
        return any(any(Path(p, "nvidia").glob(f"*/lib/{name}")) for p in sys.path if p)


def missing_cuda_libraries(build_info) -> list[str]:
    """The CUDA runtime and cuDNN libraries this TensorFlow was built against that cannot be found."""
    names = [f"libcudart.so.{build_info['cuda_version'].split('.')[0]}",
             f"libcudnn.so.{build_info['cudnn_version'].split('.')[0]}"]
    return [name for name in names if not _library_found(name)]


def diagnose() -> list[tuple[str, str]]:
    """Why TensorFlow sees no GPU: (cause, fix) pairs, the most likely first."""
    import tensorflow as tf

    causes = []
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() in NO_DEVICES:
        causes.append((f"CUDA_VISIBLE_DEVICES={visible!r} hides every GPU from this job",
                       "ask the scheduler for a GPU (sbatch --gpus=1; gpu: 1 in the SLURM profile)"))
    _, smi_error = _run_nvidia_smi()
    if smi_error is not None:
        causes.append((f"nvidia-smi fails: {smi_error}", DRIVER_FIX))
    if not tf.test.is_built_with_cuda():
        causes.append((f"TensorFlow {tf.__version__} was built without CUDA", _install_fix()))
        return causes
    info = tf.sysconfig.get_build_info()
    missing = missing_cuda_libraries(info)
    if missing:
        causes.append((f"the CUDA libraries TensorFlow {tf.__version__} was built against are missing: "
                       f"{', '.join(missing)} (TensorFlow installed without its [and-cuda] extra?)",
                       _install_fix()))
    driver = driver_cuda_version()
    if driver and int(driver.split(".")[0]) < int(info["cuda_version"].split(".")[0]):
        causes.append((f"the NVIDIA driver is too old: it supports CUDA up to {driver}, TensorFlow "
                       f"{tf.__version__} needs CUDA {info['cuda_version']}",
                       f"update the NVIDIA driver to one that supports CUDA {info['cuda_version']} "
                       "(nvidia-smi shows the newest it supports)"))
    if not causes:
        causes.append(("none of the usual causes (CUDA build, CUDA libraries, driver version, "
                       "CUDA_VISIBLE_DEVICES)", "read TensorFlow's own messages above (e.g. 'Cannot dlopen "
                       "some GPU libraries') and run nvidia-smi in the same environment"))
    return causes


def require_gpu(held: str) -> None:
    """Fail before the job starts unless TensorFlow sees a GPU; ``held`` says which GPU the job holds."""
    import tensorflow as tf

    if tf.config.list_physical_devices("GPU"):
        return
    causes = diagnose()
    raise UserError(
        f"this job holds {held}, but TensorFlow sees no GPU: it would run on the CPU, many times slower. "
        "Likely cause(s):\n" + "\n".join(f"    - {cause}" for cause, _ in causes),
        f"CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')!r}, "
        f"TensorFlow at {Path(tf.__file__).parent}",
        "; ".join(dict.fromkeys(fix for _, fix in causes)) + f"; or {CPU_ON_PURPOSE}")


def _gpu_memory_mib() -> int | None:
    """Total memory of the first visible GPU, from nvidia-smi (TensorFlow does not report it)."""
    first = os.environ.get("CUDA_VISIBLE_DEVICES", "0").split(",")[0].strip()
    out = _nvidia_smi("--query-gpu=memory.total", "--format=csv,noheader,nounits", "-i", first)
    try:
        return int(float(out.strip().splitlines()[0]))
    except (AttributeError, IndexError, ValueError):
        return None


def describe_device(threads: int = 0, precision: str | None = None) -> dict:
    """The device TensorFlow runs this process's graphs on (the first GPU, else the CPU), with the
    precision its graph computes in where given (deepbc.training.precision decides it per graph)."""
    import tensorflow as tf

    suffix = f", {precision}" if precision else ""
    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        details = tf.config.experimental.get_device_details(gpus[0])
        name, memory = details.get("device_name", gpus[0].name), _gpu_memory_mib()
        device = {"type": "GPU", "name": name, "memory_mib": memory,
                  "compute_capability": details.get("compute_capability"),
                  "description": f"GPU {name}" + (f", {memory} MiB" if memory else "") + suffix}
    else:
        # TensorFlow's 0 means one thread per core this process may run on.
        n = threads or cpu_count()
        device = {"type": "CPU", "threads": n, "description": f"CPU, {n} threads{suffix}"}
    return {**device, "precision": precision} if precision else device


def cpu_count() -> int:
    """CPUs this process may run on (os.cpu_count() where the OS has no affinity call)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def add_arguments(parser) -> None:
    """The command-line options of a GPU job's script. Their defaults come from the environment,
    where the workflow puts them (rules/common.smk): they describe the machine, not the results,
    so they are no rule params, whose change would rerun every training job."""
    parser.add_argument("--gpus", type=int, default=int(os.environ.get("DEEPBC_GPUS", -1)),
                        help="GPUs on this host to lease one from "
                             "(-1: count them with nvidia-smi, failing where its driver does not "
                             "work; 0: run on the CPU, GPUs hidden; default: $DEEPBC_GPUS, else -1)")
    parser.add_argument("--gpu-lock-dir", default=os.environ.get("DEEPBC_GPU_LOCK_DIR", ".gpu_leases"),
                        help="shared folder of per-GPU lock files (default: $DEEPBC_GPU_LOCK_DIR, else .gpu_leases)")


@contextlib.contextmanager
def lease_from_args(args):
    """A GPU job's device, as its script's options say: lease a GPU and check that TensorFlow sees it
    (or, with --gpus 0, hide every GPU and run on the CPU); logs and yields describe_device()."""
    if args.gpus == 0:
        os.environ["CUDA_VISIBLE_DEVICES"] = "-1"  # on purpose: not even an unleased GPU
        LOG.info("--gpus 0 (resources.gpu: 0): running on the CPU")
        held = contextlib.nullcontext()
    else:
        held = lease(args.gpu_lock_dir, None if args.gpus < 0 else args.gpus)
    with held as index:
        if index is not None:
            require_gpu(f"GPU {index} (leased in {args.gpu_lock_dir})")
        elif args.gpus != 0 and scheduler_assigned():
            require_gpu(f"the GPU(s) its scheduler assigned (CUDA_VISIBLE_DEVICES="
                        f"{os.environ['CUDA_VISIBLE_DEVICES']!r})")
        device = describe_device(args.threads)
        LOG.info("device: %s", device["description"])
        yield device
