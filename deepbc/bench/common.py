"""What the benchmarks share: synthetic BreakHis-sized images, the result line, memory sampling."""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import logging
import multiprocessing
import os
import platform
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

BREAKHIS_HEIGHT, BREAKHIS_WIDTH = 460, 700


def machine() -> dict:
    """Where a result was measured, recorded with it."""
    import psutil

    return {"cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
            "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
            "python": platform.python_version(), "platform": platform.platform(terse=True)}


def emit(bench: str, result: dict, stream=None) -> str:
    """Print the benchmark's single machine-readable line (JSON, sorted keys) and return it."""
    line = json.dumps({"bench": bench, **result, "machine": machine()}, sort_keys=True)
    print(line, file=stream or sys.stdout, flush=True)
    return line


def log_to_stderr() -> None:
    """Progress of a benchmark (and of the project code it runs) on stderr; stdout keeps the result line."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr)


def in_fresh_process(func, *args):
    """``func(*args)`` in a new interpreter: TensorFlow's threading settings and graph state start clean."""
    with one_process() as call:
        return call(func, *args)


@contextlib.contextmanager
def one_process(initializer=log_to_stderr, initargs=()):
    """A ``call(func, *args)`` that runs every call in one new interpreter, started once: for checks
    that code runs, where a fresh interpreter per call would cost a TensorFlow import each."""
    # spawn: a fork would inherit this process's TensorFlow state and threads.
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"),
                                                initializer=initializer, initargs=initargs) as pool:
        yield lambda func, *args: pool.submit(func, *args).result()


def runner(one: bool, initializer=log_to_stderr, initargs=()):
    """A context giving ``call(func, *args)``: every call in one shared interpreter when ``one`` (the
    smoke tests'), else each in a fresh one (the measurements')."""
    return one_process(initializer, initargs) if one else contextlib.nullcontext(in_fresh_process)


def ratio(numerator: float, denominator: float) -> float | None:
    return round(numerator / denominator, 3) if denominator else None


# --------------------------------------------------------------------------- synthetic images

# Each benchmark image is drawn by the demo's painter: the styles of the eight BreakHis subtypes in
# turn, at the four magnifications in turn, a new patient (stain) every few images.
BENCH_STYLES = ("A", "F", "PT", "TA", "DC", "LC", "MC", "PC")
IMAGES_PER_PATIENT = 24


def he_image(seed: int, i: int, h: int = BREAKHIS_HEIGHT, w: int = BREAKHIS_WIDTH) -> np.ndarray:
    """Benchmark image ``i`` (uint8 RGB) from deepbc.data.synthetic_he. Its PNG is ~0.45-0.6 MB at 700x460,
    like BreakHis', not a flat image that compresses to nothing and would flatter every reader.
    Painted without supersampling: at this size nuclei are many pixels across."""
    from deepbc.data.synthetic_he import MAG_SCALE, paint

    mags = sorted(MAG_SCALE)
    image = paint(BENCH_STYLES[i % len(BENCH_STYLES)], MAG_SCALE[mags[i // len(BENCH_STYLES) % len(mags)]], (w, h),
                  seed, identity=f"bench/{i}", patient=f"bench{i // IMAGES_PER_PATIENT}", supersample=1)
    return np.asarray(image)


def write_he_images(root: Path, rel_paths: list[str], seed: int, size: tuple[int, int] = (BREAKHIS_HEIGHT, BREAKHIS_WIDTH),
                    workers: int = 1, same_as: dict[str, str] | None = None) -> int:
    """Write one synthetic PNG per relative path under ``root``; return the bytes written.

    ``same_as`` maps a path to another whose bytes it must repeat (BreakHis files one slide under
    two subtypes with byte-identical images). Image i is drawn from (seed, i): any worker count
    gives the same files.
    """
    import concurrent.futures

    same_as = same_as or {}
    drawn = [p for p in rel_paths if p not in same_as]
    jobs = [(str(root / p), seed, i, size) for i, p in enumerate(drawn)]
    if workers > 1:
        with concurrent.futures.ProcessPoolExecutor(workers) as pool:
            list(pool.map(_write_one, jobs, chunksize=8))
    else:
        for job in jobs:
            _write_one(job)
    for path, original in same_as.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_bytes((root / original).read_bytes())
    return sum((root / p).stat().st_size for p in rel_paths)


def _write_one(job) -> None:
    from PIL import Image

    path, seed, i, (h, w) = job
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(he_image(seed, i, h, w)).save(path, format="PNG")


# --------------------------------------------------------------------------- processes and memory

class PeakMemory:
    """Samples the summed resident memory of a process and all its descendants; keeps the peak.

    Summing RSS counts shared pages once per process, so the peak is an upper bound.
    """

    def __init__(self, pid: int, interval: float = 0.1):
        self.pid, self.interval = pid, interval
        self.peak_bytes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        return False

    def _run(self) -> None:
        import psutil

        try:
            root = psutil.Process(self.pid)
        except psutil.NoSuchProcess:
            return
        while not self._stop.is_set():
            total = 0
            try:
                procs = [root] + root.children(recursive=True)
            except psutil.NoSuchProcess:
                break
            for proc in procs:
                try:
                    total += proc.memory_info().rss
                except psutil.NoSuchProcess:
                    pass
            self.peak_bytes = max(self.peak_bytes, total)
            self._stop.wait(self.interval)


def timed_command(cmd: list[str], cwd=None, env=None, log_path: Path | None = None) -> dict:
    """Run ``cmd``; return its wall seconds, the peak memory of its process tree and its exit code.

    Output goes to ``log_path`` (or is discarded); a failure raises with the log's tail.
    """
    out = open(log_path, "wb") if log_path else subprocess.DEVNULL
    try:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)
        with PeakMemory(proc.pid) as memory:
            code = proc.wait()
        wall = time.perf_counter() - start
    finally:
        if log_path:
            out.close()
    if code != 0:
        tail = Path(log_path).read_text(errors="replace")[-3000:] if log_path else ""
        raise RuntimeError(f"{' '.join(map(str, cmd))} failed with exit code {code}:\n{tail}")
    return {"seconds": round(wall, 2), "peak_rss_mb": round(memory.peak_bytes / 2**20, 1)}


def script_command(name: str, *args) -> list[str]:
    """The command line of a workflow script, run with this interpreter as the rules run it."""
    script = Path(__file__).resolve().parents[2] / "workflow_scripts" / name
    return [sys.executable, str(script), *map(str, args)]
