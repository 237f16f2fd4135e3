"""Recovering from broken or stale results, in the workflow itself.

Every kind of "what to do" of an error about the workflow's own results (deepbc.jobs.errors.delete_and_rerun:
a dataset's store, a fold's or a run's indexes, a manifest, a splits table, a model folder, a
metrics file, fitted stain parameters) is followed as written, read from the failed job's log:
delete the file or folder it names, rerun the same snakemake command, until the run finishes. The
unit tests of each module check that its errors name these paths. And a partial target after a
killed retrain ends with results of the new model.

One small run (the TMA task, fold 0, four training steps) is made once; each test damages a copy.
"""

import json
import os
import re
import shutil
import subprocess
import time

import pandas as pd
import pytest
import yaml
from PIL import Image

from tests.test_workflow import ROOT, SNAKEMAKE, _env, planned_jobs, snakemake

TINY = {"tasks": ["cancer_types"],
        "train": {"defaults": {"max_number_of_steps": 4, "eval_every_steps": 2, "save_every_steps": 2,
                               "batch_size": 8}},
        "evaluation": {"n_bootstrap": 20},
        # Snakemake's sampling of every job, for files no test here reads.
        "benchmark_files": False}
MODEL = "results/models/cancer_types/resnet_small/fold0"
METRICS = "results/metrics/cancer_types/resnet_small/fold0.json"
TABLE = "results/tables/cancer_types.csv"
CURVES = "results/figures/training/cancer_types/resnet_small.png"
STORE = "results/encoded/tma"
FOLD = "results/tfrecords/cancer_types/fold0"
# "delete the folder X/ and rerun ..." or "delete X and rerun ...", then what it remakes, in brackets.
LITERAL = re.compile(r"delete (?:the folder (?P<folder>.+?)/|(?P<file>.+?)) and rerun the same snakemake command"
                     r"(?: \([^()]*\))?")


def config_args(workdir, name="tiny.yaml", **changes):
    """The demo config and an overlay: TINY, with the top-level sections in ``changes`` replaced."""
    overlay = {**TINY, **changes}
    (workdir / name).write_text(yaml.safe_dump(overlay))
    return ["--configfile", str(ROOT / "config" / "config.yaml"), str(workdir / name)]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("finished")
    snakemake(workdir, "--cores", "2", *config_args(workdir), "--", METRICS, TABLE, CURVES)
    return workdir


@pytest.fixture()
def work(finished, tmp_path):
    """A copy of the finished run (Snakemake's records hold paths relative to it)."""
    workdir = tmp_path / "work"
    shutil.copytree(finished, workdir, symlinks=True)
    return workdir


def advice(workdir, proc) -> list[str]:
    """The "what to do" of each failure: from the log of each job that failed, or from Snakemake's
    own output for an error raised while it built the DAG."""
    out = proc.stdout + proc.stderr
    logs = re.findall(r"^\s*log: (.+?) \(check log file", out, flags=re.M)
    texts = [(workdir / log).read_text() for log in logs] if logs else [out]
    # A job's log keeps the lines of its earlier runs: the last advice is this run's.
    found = [re.findall(r"what to do: (.*)", text) for text in texts]
    assert all(found), out[-4000:]
    return [fixes[-1] for fixes in found]


def follow_advice(workdir, *args, rounds=5) -> list[str]:
    """Run snakemake until it succeeds, doing after each failure exactly what its advice says;
    return what was deleted, in order (a folder with a trailing /)."""
    followed, deleted = [], []
    for _ in range(rounds):
        proc = snakemake(workdir, "--cores", "2", *args, check=False)
        if proc.returncode == 0:
            return deleted
        for fix in advice(workdir, proc):
            action = LITERAL.fullmatch(fix)
            assert action, f"not one literal action and the same command again: {fix!r}"
            target = workdir / (action["folder"] or action["file"])
            assert target.exists(), f"{fix!r} names {target}, which does not exist"
            if action["folder"]:
                assert target.is_dir(), fix
                shutil.rmtree(target)
                deleted.append(action["folder"] + "/")
            else:
                target.unlink()
                deleted.append(action["file"])
            followed.append(fix)
    raise AssertionError(f"still failing after following {followed}")


def damage(path, content: bytes):
    """Overwrite a file and keep its modification time, as a disk's damage would (a newer file
    would make Snakemake rerun the jobs reading it, which then fail on it first)."""
    stat = path.stat()
    path.write_bytes(content)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))


def flip_a_byte(path):
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # inside a record: its checksum no longer matches
    damage(path, bytes(data))


@pytest.mark.slow
def test_a_store_missing_a_shard_and_a_damaged_curve(work):
    """The DAG stops on a store that lost a shard; deleting the store is enough: the training job
    then needed re-encodes it and rewrites the indexes first (it looped before: the check fired on
    the old indexes, which nothing rewrote)."""
    index = work / FOLD / "train.json"
    written = index.stat().st_mtime_ns
    next((work / STORE).glob("shard-*.tfrecord")).unlink()
    curve = work / MODEL / "training.csv"
    pd.read_csv(curve).drop(columns=["val_loss"]).to_csv(curve, index=False)
    (work / CURVES).unlink()
    assert follow_advice(work, *config_args(work), "--", CURVES) == [f"{STORE}/", f"{MODEL}/"]
    assert (work / STORE / "store.json").is_file() and index.stat().st_mtime_ns > written
    assert (work / CURVES).stat().st_size > 0 and (work / MODEL / "settings.json").is_file()


@pytest.mark.slow
def test_a_broken_index_store_and_changed_image(work):
    """Training stops on an index that is not JSON, the index writer on a store.json that is not,
    the encoder on an image changed since the dataset check: each advice, followed, leads to the
    next, then to a trained model."""
    shutil.rmtree(work / MODEL)  # so that training runs
    damage(work / FOLD / "train.json", b"{")
    damage(work / STORE / "store.json", b"{")
    root = work / "results" / "demo" / "tma" / "images"
    image = root / pd.read_parquet(work / "results" / "manifest" / "tma.parquet")["path"].iloc[0]
    with Image.open(image) as im:
        im.convert("RGB").transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(image)  # still valid, other bytes
    assert follow_advice(work, *config_args(work), "--", f"{MODEL}/settings.json") == [
        f"{FOLD}/", f"{STORE}/", "results/manifest/tma.parquet"]
    assert (work / MODEL / "settings.json").is_file()


@pytest.mark.slow
def test_a_stale_index_unreadable_splits_and_corrupt_shard(work):
    """An index older than its store (all the run's indexes are), a splits table that is not
    parquet, a store shard that fails its checksum while training reads it."""
    shutil.rmtree(work / MODEL)
    index = json.loads((work / FOLD / "train.json").read_text())
    index["shard_sha256"][0] = "0" * 64  # as if the store had been re-encoded since
    damage(work / FOLD / "train.json", json.dumps(index).encode())
    damage(work / "results" / "splits" / "cancer_types.parquet", b"not parquet")
    flip_a_byte(next((work / STORE).glob("shard-*.tfrecord")))
    assert follow_advice(work, *config_args(work), "--", f"{MODEL}/settings.json") == [
        "results/tfrecords/cancer_types/", "results/splits/cancer_types.parquet", f"{STORE}/"]
    assert (work / MODEL / "settings.json").is_file()


@pytest.mark.slow
def test_a_broken_metrics_file(work):
    damage(work / METRICS, b"{")
    (work / TABLE).unlink()
    assert follow_advice(work, *config_args(work), "--", TABLE) == [METRICS]
    assert json.loads((work / METRICS).read_text())["meta"]["run"] == "cancer_types"


@pytest.mark.slow
def test_stain_parameters_of_another_method(work):
    """Fitted parameters that are not of the configured method (a file put there by hand: the
    workflow refits when the method changes)."""
    stain_json = work / "results" / "stain" / "reference.json"
    stain_json.parent.mkdir(parents=True)
    stain_json.write_text(json.dumps({"method": "reinhard", "means": [50.0, 10.0, -10.0], "stds": [10.0, 5.0, 5.0],
                                      "source": {}}))
    args = config_args(work, "stain.yaml", shards={"stain_normalization": "macenko"})
    assert follow_advice(work, *args, "--", f"{STORE}/store.json") == ["results/stain/reference.json"]
    assert json.loads((work / STORE / "store.json").read_text())["encoding"]["stain"]["method"] == "macenko"


@pytest.mark.slow
def test_a_killed_retrain_then_a_partial_target_ends_with_the_new_model(work):
    """More steps, the trainer killed: Snakemake deletes its outputs, and the metrics of the old
    model were up to date by their files; the readers of a model take what trains it as a param
    (workflow_config.model_fingerprint), so asking for the metrics alone trains the new model first."""
    import psutil

    longer = config_args(work, "long.yaml", train={"defaults": {**TINY["train"]["defaults"], "max_number_of_steps": 6}})
    run = subprocess.Popen([*SNAKEMAKE, "--directory", str(work), "--cores", "2", *longer, "--", METRICS],
                           env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline, killed = time.monotonic() + 120, False
    while not killed and run.poll() is None and time.monotonic() < deadline:
        for proc in psutil.Process(run.pid).children(recursive=True):
            try:
                if any(a.endswith("train_model.py") for a in proc.cmdline()):
                    proc.kill()
                    killed = True
            except psutil.NoSuchProcess:
                pass
        time.sleep(0.05)
    run.wait(timeout=120)
    assert killed and run.returncode != 0 and not (work / MODEL).exists()
    # The readers of the model rerun, so the model is trained first, for any of their targets.
    for target in (METRICS, CURVES):
        assert {"train", "evaluate" if target == METRICS else "training_figure"} <= set(
            planned_jobs(work, *longer, "--", target))
    snakemake(work, "--cores", "2", *longer, "--", METRICS)
    settings = json.loads((work / MODEL / "settings.json").read_text())
    assert settings["settings"]["max_number_of_steps"] == 6
    assert list(pd.read_csv(work / MODEL / "training.csv")["step"]) == [1, 2, 3, 4, 5, 6]
    assert (work / METRICS).stat().st_mtime > (work / MODEL / "settings.json").stat().st_mtime
    # And then nothing is left to do, with this config or with other GPU settings only.
    assert planned_jobs(work, *longer, "--", METRICS) == []
    machine = work / "machine.yaml"
    machine.write_text("resources: {gpu: 0, gpu_devices: 3, gpu_lock_dir: other leases}\n")
    assert planned_jobs(work, *longer, str(machine), "--", METRICS) == []


def _rules(path):
    return dict(re.findall(r"^rule (\w+):\n(.*?)(?=^rule |\Z)", path.read_text(), flags=re.M | re.S))


def test_every_rule_reading_a_model_takes_what_trains_it_as_a_param():
    """The model's files (settings.json, training.csv, the checkpoint) are read by these rules:
    each needs the model fingerprint, else a target of theirs keeps results of a deleted model."""
    readers = {}
    for path in sorted((ROOT / "rules").glob("*.smk")):
        for name, body in _rules(path).items():
            inputs = body.split("    output:")[0]
            if re.search(r"rules\.train\.output|results/models/|model_files", inputs):
                readers[name] = body
    assert set(readers) >= {"evaluate", "predict_folder", "export_model", "training_figure", "summary_table"}
    for name, body in readers.items():
        assert re.search(r"^\s+models?=(model_fingerprint|PLAN\.model_fingerprints\(.*\)),$", body, re.M), name
