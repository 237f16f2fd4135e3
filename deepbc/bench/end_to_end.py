"""End to end: the workflow from an empty results directory, its no-op rerun, and how it scales.

``snakemake --cores N`` runs in a fresh working directory (``--directory``), exactly as a user
runs it, with this repository's Snakefile. Wall time and the peak summed resident memory of the
whole process tree (Snakemake and every job) are measured from outside; where the time goes comes
from the last line of each job's log (its wall and CPU time and peak memory, deepbc.jobs.logs.log_usage),
summed per rule: unlike Snakemake's benchmark files, it costs Snakemake nothing.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

from deepbc.bench import common
from deepbc.jobs.logs import USAGE

LOG = logging.getLogger("deepbc.bench.end_to_end")
SNAKEFILE = Path(__file__).resolve().parents[2] / "Snakefile"


def snakemake_command(workdir: Path, cores: int, config: list[str], configfiles: list[str],
                      targets: list[str] | None = None) -> list[str]:
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(SNAKEFILE), "--directory", str(workdir),
           "--cores", str(cores)]
    if configfiles:  # overlays on the default config, as a user would give them
        cmd += ["--configfile", str(SNAKEFILE.parent / "config" / "config.yaml"), *map(str, configfiles)]
    return cmd + (["--config", *config] if config else []) + (["--", *targets] if targets else [])


def job_environment() -> dict:
    """This interpreter's environment first on PATH: the rules call ``python``, as in an activated venv."""
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([os.path.dirname(sys.executable), env.get("PATH", "")])
    return env


def run_once(workdir: Path, cores: int = 2, config: list[str] | None = None,
             configfiles: list[str] | None = None, targets: list[str] | None = None, rerun: bool = True) -> dict:
    """One full run (of ``targets``; default: the default target) from an empty ``workdir`` and,
    with ``rerun``, its no-op rerun and Snakemake's start-up time."""
    config, configfiles = list(config or []), list(configfiles or [])
    if workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    logs = workdir.parent / f"{workdir.name}.logs"
    logs.mkdir(exist_ok=True)
    cmd = snakemake_command(workdir, cores, config, configfiles, targets)
    LOG.info("running %s", " ".join(cmd))
    env = job_environment()
    full = common.timed_command(cmd, env=env, log_path=logs / "full.log")
    result = {"seconds": full["seconds"], "peak_rss_mb": full["peak_rss_mb"]}
    if rerun:
        noop = common.timed_command(cmd, env=env, log_path=logs / "noop.log")
        noop_log = (logs / "noop.log").read_text(errors="replace")
        if "Nothing to be done" not in noop_log:
            raise RuntimeError(f"the rerun found work to do: see {logs / 'noop.log'}")
        # Snakemake's own start-up, which a no-op rerun cannot go below.
        startup = common.timed_command([sys.executable, "-m", "snakemake", "--version"], env=env)
        result.update(noop_seconds=noop["seconds"], snakemake_startup_seconds=startup["seconds"])
    per_rule = rule_seconds(workdir / "results" / "logs")
    return {**result, "jobs": sum(r["jobs"] for r in per_rule.values()), "images": dataset_images(workdir),
            "job_seconds_by_rule": per_rule}


def rule_seconds(job_logs: Path) -> dict:
    """Per rule (the first folder under results/logs/): jobs, summed wall and CPU seconds and the
    largest peak memory of one job process, from the usage line each job's log ends with (one per
    log: Snakemake deletes a job's log before each attempt; several, as a script run by hand
    appends them, are summed)."""
    by_rule: dict[str, dict] = defaultdict(
        lambda: {"jobs": 0, "seconds": 0.0, "cpu_seconds": 0.0, "max_process_rss_mb": 0.0})
    for log in sorted(job_logs.rglob("*.log")):
        usages = [m for m in map(USAGE.search, log.read_text(errors="replace").splitlines()) if m]
        if not usages:
            raise RuntimeError(f"{log} has no 'job resources' line: did its job end?")
        entry = by_rule[log.relative_to(job_logs).parts[0].removesuffix(".log")]
        entry["jobs"] += 1
        entry["seconds"] = round(entry["seconds"] + sum(float(m["wall"]) for m in usages), 2)
        entry["cpu_seconds"] = round(entry["cpu_seconds"] + sum(float(m["cpu"]) for m in usages), 2)
        entry["max_process_rss_mb"] = max(entry["max_process_rss_mb"], *(float(m["rss"]) for m in usages))
    return dict(sorted(by_rule.items(), key=lambda kv: -kv[1]["seconds"]))


def dataset_images(workdir: Path) -> dict:
    import pandas as pd

    return {p.stem: len(pd.read_parquet(p, columns=["path"]))
            for p in sorted((workdir / "results" / "manifest").glob("*.parquet"))}


def run(cores: int = 2, config: list[str] | None = None, configfiles: list[str] | None = None,
        workdir: str | None = None, keep: bool = False, targets: list[str] | None = None) -> dict:
    with tempfile.TemporaryDirectory(dir=workdir, prefix="e2e-") as tmp:
        result = run_once(Path(tmp) / "wd", cores, config, configfiles, targets)
        if keep:
            shutil.copytree(Path(tmp), Path(workdir or ".") / "end_to_end_run", dirs_exist_ok=True)
    return {"cores": cores, "config": list(config or []), "configfiles": list(map(str, configfiles or [])),
            "targets": list(targets or []), **result,
            "goals": {"seconds": 300, "peak_rss_mb": 4096, "noop_seconds": 5}}


def scaling(scales: list[int], cores: int = 2, config: list[str] | None = None,
            configfiles: list[str] | None = None, workdir: str | None = None,
            targets: list[str] | None = None) -> dict:
    """The full run (or of ``targets`` only) at each ``demo_scale``; the growth exponent of time in
    images between each pair. No no-op reruns: nothing here reports them."""
    runs = {}
    with tempfile.TemporaryDirectory(dir=workdir, prefix="scaling-") as tmp:
        for scale in scales:
            LOG.info("demo_scale=%d", scale)
            runs[scale] = run_once(Path(tmp) / f"scale{scale}", cores, [*(config or []), f"demo_scale={scale}"],
                                   configfiles, targets, rerun=False)
    base = scales[0]
    images = {s: sum(r["images"].values()) for s, r in runs.items()}
    result = {"cores": cores, "config": list(config or []), "configfiles": list(map(str, configfiles or [])),
              "targets": list(targets or []), "scales": scales, "images": images,
              "seconds": {s: runs[s]["seconds"] for s in scales},
              "peak_rss_mb": {s: runs[s]["peak_rss_mb"] for s in scales},
              "seconds_vs_base": {s: common.ratio(runs[s]["seconds"], runs[base]["seconds"]) for s in scales},
              "images_vs_base": {s: common.ratio(images[s], images[base]) for s in scales},
              "job_seconds_by_rule": {s: {k: v["seconds"] for k, v in runs[s]["job_seconds_by_rule"].items()}
                                      for s in scales}}
    # time ~ images^exponent; at most 1 is "no faster than linear".
    result["exponent"] = {s: round(math.log(runs[s]["seconds"] / runs[base]["seconds"]) / math.log(images[s] / images[base]), 3)
                          for s in scales[1:]}
    result["goals"] = {"exponent": 1.0}
    return result
