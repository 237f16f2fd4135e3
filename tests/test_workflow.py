"""The workflow itself, run by Snakemake on the embedded demo in a scratch directory."""

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
SNAKEMAKE = [sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile"),
             "--configfile", str(ROOT / "config" / "config.yaml")]


def snakemake(workdir, *args, check=True):
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.run([*SNAKEMAKE, "--directory", str(workdir), *args], capture_output=True,
                          text=True, env=env)
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}")
    return proc


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("demo run")  # a space, on purpose
    snakemake(workdir, "--cores", "2", "shards")
    return workdir


@pytest.mark.slow
def test_demo_reaches_shards(demo_run):
    results = demo_run / "results"
    for dataset in ("breakhis", "tma"):
        manifest = pd.read_parquet(results / "manifest" / f"{dataset}.parquet")
        assert len(manifest) > 0
        assert (results / "manifest" / f"{dataset}.rejects.csv").exists()
    for run in ("cancer_types", "benign_vs_malignant", "benign_vs_malignant__image_level",
                "benign_subtypes", "malignant_subtypes"):
        splits = pd.read_parquet(results / "splits" / f"{run}.parquet")
        assert set(splits["split"]) == {"train", "val", "test"}
        for fold in range(3):
            for split in ("train", "val", "test"):
                assert (results / "tfrecords" / run / f"fold{fold}" / f"{split}.json").exists()
    assert (results / "logs" / "check_dataset" / "breakhis.log").read_text().strip()


@pytest.mark.slow
def test_rerun_has_nothing_to_do(demo_run):
    proc = snakemake(demo_run, "--cores", "2", "shards", "-n")
    assert "Nothing to be done" in proc.stdout + proc.stderr


def test_invalid_config_fails_before_any_job(tmp_path):
    proc = snakemake(tmp_path, "-n", "--config", "splits={'k': 1}", check=False)
    assert proc.returncode != 0
    out = proc.stdout + proc.stderr
    assert "'minimum': 2" in out and "['splits']['k']" in out
    assert not (tmp_path / "results").exists()


def test_missing_dataset_root_names_the_path(tmp_path):
    missing = tmp_path / "no such dir"
    proc = snakemake(tmp_path, "--cores", "1", "manifests", "--config", "demo=False",
                     f"breakhis_dir={missing}", f"tma_dir={missing}", "tma_patients_csv=", check=False)
    assert proc.returncode != 0
    log = (tmp_path / "results" / "logs" / "check_dataset" / "breakhis.log").read_text()
    assert str(missing) in log and "BreaKHis" in log
