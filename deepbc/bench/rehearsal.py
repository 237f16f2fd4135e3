"""A paper-scale rehearsal: config/paper.yaml's whole DAG on a generated dataset of the study's size,
with training cut to a few steps on small images, at several fractions of that size.

The data: BreakHis-sized synthetic 700x460 PNGs under the real archive's paths (every
``1/fraction``-th line of tests/data/breakhis' listing, slide 14-13412's lobular copies
byte-identical to their ductal originals, as in the real archive) and a TMA-sized folder set
(the demo's TMA painter, four classes, 40 patients per class at full size with ``TMA_IMAGES_PER_PATIENT``
images each: 6,400 images against the study's 6,402, and a patients CSV).

The config: ``--configfile config/paper.yaml overlay.yaml``, the overlay pointing at the generated
data and cutting training (``OVERLAY_TRAIN``: from scratch, ``TRAIN_STEPS`` steps, each network at
its smallest input of at least 32 px) and, when asked, the architectures and folds (``archs``,
``folds``): everything else, the tasks, runs, protocols, splits and shard settings, is the study's.

Measured per fraction, with ``snakemake --cores N`` from an empty results directory, as a user
runs it: wall time, peak memory of the process tree, disk (results/), each rule's jobs, wall and
CPU seconds (the usage line each job's log ends with; paper.yaml writes no benchmark files,
whose sampling costs Snakemake CPU), Snakemake's own CPU seconds (its main process, sampled
until it exits: DAG building, scheduling, output checks), the dry run's time (the DAG alone), and
the no-op rerun. Across fractions: each rule's growth exponent in images (least squares of log CPU
seconds on log images; 1 is linear).
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from deepbc.bench import common, end_to_end, sharding

LOG = logging.getLogger("deepbc.bench.rehearsal")
PAPER = end_to_end.SNAKEFILE.parent / "config" / "paper.yaml"
# The real archive's listing (7,909 images), as the tests keep it.
LISTING = end_to_end.SNAKEFILE.parent / "tests" / "data" / "breakhis" / "BreaKHis_v1_filelist.txt.gz"
TMA_PATIENTS_PER_CLASS = 40
TMA_IMAGES_PER_PATIENT = 40
# (height, width) of the generated images: BreakHis' own and a TMA core's; for the smoke test, a
# tenth of BreakHis' sides and the demo painter's smallest TMA image.
FULL_SIZES = {"breakhis": [common.BREAKHIS_HEIGHT, common.BREAKHIS_WIDTH], "tma": [256, 256]}
SMALL_SIZES = {"breakhis": [46, 70], "tma": [32, 32]}
TRAIN_STEPS = 2
OVERLAY_TRAIN = {"init": "scratch", "batch_size": 8, "max_number_of_steps": TRAIN_STEPS, "stage2_steps": 0,
                 "eval_every_steps": TRAIN_STEPS, "save_every_steps": TRAIN_STEPS}
# Rules whose work is training (excluded from "outside training").
TRAINING_RULES = ("train",)


def run(fractions=(8, 4, 2, 1), cores: int = 2, archs: list[str] | None = None, folds: list[int] | None = None,
        workdir: str | None = None, data_dir: str | None = None, filelist: Path | None = None,
        targets: list[str] | None = None, small_images: bool = False) -> dict:
    """``fractions``: the dataset at 1/f of the study's size, for each f. ``data_dir``: keep the
    generated datasets there and reuse them (the full size takes ~10 min to draw on 2 cores).
    ``small_images``: SMALL_SIZES (the smoke test, where drawing took most of the time)."""
    filelist = Path(filelist or LISTING)
    results = {}
    with tempfile.TemporaryDirectory(dir=workdir, prefix="rehearsal-") as tmp:
        tmp = Path(tmp)
        data_root = Path(data_dir) if data_dir else tmp / "data"
        for fraction in fractions:
            data = data_root / f"1_{fraction}"
            images = make_data(data, filelist, fraction, cores, SMALL_SIZES if small_images else FULL_SIZES)
            overlay = write_overlay(tmp / f"overlay_1_{fraction}.yaml", data, archs, folds)
            LOG.info("1/%d: %s", fraction, images)
            results[fraction] = measure(tmp / f"wd_1_{fraction}", overlay, cores, targets or [])
            results[fraction]["images"] = images
            # Each size as it ends: a run stopped before the largest still leaves the others.
            LOG.info("1/%d measured: %s", fraction, json.dumps(results[fraction], sort_keys=True))
            shutil.rmtree(tmp / f"wd_1_{fraction}")
    return {**summarise(results, fractions, cores, archs, folds), "targets": list(targets or []),
            "image_sizes": SMALL_SIZES if small_images else FULL_SIZES}


def make_data(root: Path, filelist: Path, fraction: int, workers: int, sizes: dict | None = None) -> dict:
    """The BreakHis-sized and TMA-sized datasets at 1/``fraction`` of the study's size under ``root``,
    images of ``sizes`` (height, width) (kept if already there at these sizes); their image counts."""
    sizes = sizes or FULL_SIZES
    from deepbc.data import demo

    rels, same_as = sharding.listing(filelist, fraction)
    breakhis = root / "breakhis" / "BreaKHis_v1"
    tma = root / "tma" / "images"
    patients = max(1, TMA_PATIENTS_PER_CLASS // fraction)
    # Below one patient per class, fewer images per patient: the set keeps shrinking with the fraction.
    per_patient = max(1, TMA_PATIENTS_PER_CLASS * TMA_IMAGES_PER_PATIENT // (fraction * patients))
    done = root / "done"
    if not done.exists() or done.read_text() != json.dumps(sizes, sort_keys=True):
        shutil.rmtree(root, ignore_errors=True)
        common.write_he_images(breakhis, rels, seed=0, workers=workers, same_as=same_as, size=tuple(sizes["breakhis"]))
        demo.make_tma_demo(tma, seed=0, image_size=tuple(sizes["tma"]), patients_per_class=patients,
                           images_per_patient=per_patient, workers=workers,
                           patients_csv=root / "tma" / "patients.csv")
        done.write_text(json.dumps(sizes, sort_keys=True))
    return {"breakhis": len(rels), "tma": 4 * patients * per_patient}


def write_overlay(path: Path, data: Path, archs: list[str] | None, folds: list[int] | None) -> Path:
    import yaml

    from deepbc.training import nets

    paper = yaml.safe_load(PAPER.read_text())
    chosen = archs or paper["architectures"]
    overlay = {"breakhis_dir": str(data / "breakhis" / "BreaKHis_v1"), "tma_dir": str(data / "tma" / "images"),
               "tma_patients_csv": str(data / "tma" / "patients.csv"),
               "train": {"defaults": dict(OVERLAY_TRAIN),
                         "per_architecture": {a: {"image_size": max(32, nets.NETWORKS[a].min_image_size)}
                                              for a in chosen}},
               # The study's threads ask for more cores than a small machine has.
               "resources": {"data_threads": 2, "train_threads": 2, "eval_threads": 2}}
    if archs:
        overlay["architectures"] = list(archs)
    if folds is not None:
        overlay["folds"] = list(folds)
    path.write_text(yaml.safe_dump(overlay, sort_keys=True))
    return path


def command(workdir: Path, overlay: Path, cores: int, targets: list[str], *extra: str) -> list[str]:
    import sys

    # Targets first: options taking several values (--quiet, --configfile) would take them.
    return [sys.executable, "-m", "snakemake", *targets, "--snakefile", str(end_to_end.SNAKEFILE),
            "--directory", str(workdir), "--cores", str(cores), *extra, "--configfile", str(PAPER), str(overlay)]


def measure(workdir: Path, overlay: Path, cores: int, targets: list[str]) -> dict:
    workdir.mkdir(parents=True)
    env = end_to_end.job_environment()
    logs = workdir.parent / f"{workdir.name}.logs"
    logs.mkdir(exist_ok=True)
    dry = common.timed_command(command(workdir, overlay, cores, targets, "-n", "--quiet", "all"), env=env, log_path=logs / "dry.log")
    full = _run_with_own_cpu(command(workdir, overlay, cores, targets), env, logs / "full.log")
    noop = common.timed_command(command(workdir, overlay, cores, targets), env=env, log_path=logs / "noop.log")
    if "Nothing to be done" not in (logs / "noop.log").read_text(errors="replace"):
        raise RuntimeError(f"the rerun found work to do: see {logs / 'noop.log'}")
    per_rule = end_to_end.rule_seconds(workdir / "results" / "logs")
    disk = sum(p.stat().st_size for p in (workdir / "results").rglob("*") if p.is_file())
    return {"seconds": full["seconds"], "peak_rss_mb": full["peak_rss_mb"], "dry_run_seconds": dry["seconds"],
            "snakemake_cpu_seconds": full["own_cpu_seconds"], "noop_seconds": noop["seconds"],
            "results_mb": round(disk / 2**20, 1), "jobs": sum(r["jobs"] for r in per_rule.values()),
            "rules": per_rule}


def _run_with_own_cpu(cmd: list[str], env: dict, log_path: Path) -> dict:
    """``common.timed_command`` plus the CPU seconds of the command's own process (not its jobs),
    sampled until it exits."""
    import psutil

    own = {"cpu": 0.0}
    with open(log_path, "wb") as out:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
        stop = threading.Event()

        def sample():
            try:
                process = psutil.Process(proc.pid)
                while not stop.is_set():
                    times = process.cpu_times()
                    own["cpu"] = times.user + times.system
                    stop.wait(0.05)
            except psutil.NoSuchProcess:
                pass

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        with common.PeakMemory(proc.pid) as memory:
            code = proc.wait()
        stop.set()
        sampler.join()
    if code:
        raise RuntimeError(f"{' '.join(cmd)} failed ({code}): {log_path.read_text(errors='replace')[-3000:]}")
    return {"seconds": round(time.perf_counter() - start, 2), "peak_rss_mb": round(memory.peak_bytes / 2**20, 1),
            "own_cpu_seconds": round(own["cpu"], 2)}


def exponent(images: list[float], seconds: list[float]) -> float | None:
    """The least-squares slope of log seconds on log images (None without two positive points)."""
    points = [(math.log(i), math.log(s)) for i, s in zip(images, seconds) if i > 0 and s > 0]
    if len(points) < 2 or len({x for x, _ in points}) < 2:
        return None
    x, y = np.array(points).T
    return round(float(np.polyfit(x, y, 1)[0]), 3)


def summarise(results: dict, fractions, cores: int, archs, folds) -> dict:
    order = sorted(fractions, reverse=True)  # ascending size
    images = {f: sum(results[f]["images"].values()) for f in order}
    rules = sorted({r for f in order for r in results[f]["rules"]})
    growth = {}
    for rule in rules:
        cpu = [results[f]["rules"].get(rule, {}).get("cpu_seconds", 0.0) for f in order]
        growth[rule] = exponent([images[f] for f in order], cpu)
    outside = {f: sum(v["cpu_seconds"] for r, v in results[f]["rules"].items() if r not in TRAINING_RULES)
               for f in order}
    share = {f: common.ratio(results[f]["snakemake_cpu_seconds"], outside[f]) for f in order}
    return {"fractions": [f"1/{f}" for f in order], "cores": cores, "archs": archs or "paper.yaml's",
            "folds": folds if folds is not None else "paper.yaml's", "train_steps": TRAIN_STEPS,
            "images": {f"1/{f}": results[f]["images"] for f in order},
            "runs": {f"1/{f}": {k: v for k, v in results[f].items() if k != "images"} for f in order},
            "outside_training_cpu_seconds": {f"1/{f}": round(outside[f], 2) for f in order},
            "snakemake_share_of_outside_training": {f"1/{f}": share[f] for f in order},
            "growth_exponent": growth,
            "goals": {"growth_exponent_outside_training": 1.0, "noop_seconds": 10,
                      "snakemake_share_of_outside_training": 0.05}}
