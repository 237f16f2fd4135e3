"""The SLURM profile, for real: a small demo target submitted through sbatch to a local cluster;
and, without a cluster, that every GPU rule gets the profile's GPU resources.

.ci/run starts a single-node cluster (.ci/slurm-cluster). Elsewhere the test is skipped when no
cluster answers; in CI a missing cluster is a failure.
"""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def cluster_up() -> bool:
    if shutil.which("sinfo") is None:
        return False
    proc = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True)
    return proc.returncode == 0 and any(s in proc.stdout for s in ("idle", "mixed", "allocated"))


@pytest.mark.slow
def test_profile_runs_jobs_through_sbatch(tmp_path):
    if not cluster_up():
        if os.environ.get("CI"):
            pytest.fail("no SLURM cluster answers: .ci/run should have started one with .ci/slurm-cluster")
        pytest.skip("no SLURM cluster here (run .ci/slurm-cluster as root to start one)")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile"),
           "--directory", str(tmp_path), "--profile", str(ROOT / "profiles" / "slurm"),
           # A CPU-only cluster without accounting: GPU requests off by override, not by editing the profile.
           "--configfile", str(ROOT / "config" / "config.yaml"), str(ROOT / "config" / "cpu_only.yaml"),
           "--set-resources", "train:gpu=0", "evaluate:gpu=0", "predict_folder:gpu=0",
           "--slurm-status-command", "squeue", "--slurm-no-account",
           "--slurm-init-seconds-before-status-checks", "1",
           "results/splits/cancer_types.parquet"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-6000:]
    job_ids = re.findall(r"submitted with SLURM jobid (\d+)", out)
    assert len(job_ids) == 3, out[-3000:]  # make_demo, check_dataset, make_splits
    slurm_logs = list((tmp_path / "results" / "slurm_logs").rglob("*.log"))
    assert {p.stem for p in slurm_logs} >= set(job_ids)
    splits = pd.read_parquet(tmp_path / "results" / "splits" / "cancer_types.parquet")
    assert set(splits["label"]) == {"breast", "bladder", "lung", "lymphoma"}
    assert set(splits["split"]) == {"train", "val", "test"}


def _gpu_rules() -> set[str]:
    """Rules whose resources request a GPU (gpu=RES.get("gpu", 1))."""
    rules = set()
    for path in (ROOT / "rules").glob("*.smk"):
        for block in re.split(r"^(?=rule \w+:)", path.read_text(), flags=re.MULTILINE):
            name = re.match(r"rule (\w+):", block)
            if name and re.search(r"^\s+gpu=", block, re.MULTILINE):
                rules.add(name.group(1))
    return rules


def test_every_gpu_rule_gets_the_profiles_gpu_resources():
    """A GPU rule left to default-resources would send sbatch --gpus=1 to the CPU partition."""
    profile = yaml.safe_load((ROOT / "profiles" / "slurm" / "config.yaml").read_text())
    gpu_rules = _gpu_rules()
    assert {"train", "evaluate", "predict_folder"} <= gpu_rules
    for rule in sorted(gpu_rules):
        assert rule in profile["set-resources"], rule
        resources = profile["set-resources"][rule]
        assert resources.get("gpu") == 1 and "slurm_partition" in resources, rule
    # predict_folder is an evaluation job: the same request as evaluate.
    assert profile["set-resources"]["predict_folder"] == profile["set-resources"]["evaluate"]
    running = (ROOT / "docs" / "running.md").read_text()
    assert "--set-resources " + " ".join(f"{r}:gpu=0" for r in ("train", "evaluate", "predict_folder")) in running
