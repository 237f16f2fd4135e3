"""The workflow itself, run by Snakemake on the embedded demo (one fold) in a scratch directory.

One module-scoped run is interrupted mid-training and restarted with the same command; the other
tests look at what it produced and at what Snakemake would rerun.
"""

import contextlib
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from deepbc.jobs.logs import USAGE

ROOT = Path(__file__).resolve().parents[1]
SNAKEMAKE = [sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile")]
# Training saves its state every 10 steps in the demo run, so the interruption lands mid-training;
# half the demo's steps and a tenth of its bootstrap draws (most of a metrics job's time): what the
# tests check needs neither a learnt model nor narrow intervals.
STEPS = 30
OFTEN_SAVED = (f"train:\n  defaults:\n    max_number_of_steps: {STEPS}\n    eval_every_steps: 15\n"
               "    save_every_steps: 10\nevaluation:\n  n_bootstrap: 100\n")


def demo_args(workdir):
    """The demo run's config (one fold of three), shorter and saving often."""
    return ["--configfile", str(ROOT / "config" / "config.yaml"), str(workdir / "often_saved.yaml")]
TASKS = ["cancer_types", "benign_vs_malignant", "benign_subtypes", "malignant_subtypes"]


def _env():
    return {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}


def snakemake(workdir, *args, check=True):
    proc = subprocess.run([*SNAKEMAKE, "--directory", str(workdir), *args], capture_output=True,
                          text=True, env=_env())
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}")
    return proc


def planned_jobs(workdir, *args):
    """Rule names of the jobs a dry run would execute."""
    out = snakemake(workdir, "-n", *args).stdout
    return re.findall(r"^(?:local)?rule (\w+):", out, flags=re.M)


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    """The default target on one fold; one training job is killed mid-way, then the same command reruns."""
    import psutil

    workdir = tmp_path_factory.mktemp("demo run")  # a space in the path, on purpose
    (workdir / "often_saved.yaml").write_text(OFTEN_SAVED)
    # --verbose: the log shows each job selection (test_a_local_run_selects_jobs_when_one_ends).
    cmd = [*SNAKEMAKE, "--directory", str(workdir), "--cores", "2", "--verbose", *demo_args(workdir)]
    first = subprocess.Popen(cmd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    state = workdir / "results" / "train_state"
    deadline = time.monotonic() + 600
    killed = None
    while killed is None and first.poll() is None and time.monotonic() < deadline:
        for checkpoint in state.glob("*/*/fold0/checkpoint"):
            state_dir = str(checkpoint.parent.relative_to(workdir))
            # Only this run's own jobs: another workflow on the machine has the same relative paths.
            for proc in psutil.Process(first.pid).children(recursive=True):
                with contextlib.suppress(psutil.NoSuchProcess):
                    cmdline = proc.cmdline()
                    if any(a.endswith("train_model.py") for a in cmdline) and state_dir in cmdline:
                        proc.kill()
                        killed = checkpoint.parent
        time.sleep(0.05)
    first.communicate(timeout=300)
    assert killed is not None, "no training job was caught mid-way"
    assert first.returncode != 0  # the killed job failed the first run
    rerun = subprocess.run(cmd, env=_env(), capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr[-6000:]
    return workdir, killed


@pytest.mark.slow
def test_default_target_ends_with_every_table_and_figure(demo_run):
    workdir, _ = demo_run
    results = workdir / "results"
    for task in TASKS:
        for ext in ("csv", "md", "tex"):
            assert (results / "tables" / f"{task}.{ext}").stat().st_size > 0
        for ext in ("png", "pdf"):
            assert (results / "figures" / "roc" / f"{task}.{ext}").stat().st_size > 0
            assert (results / "figures" / "calibration" / f"{task}.{ext}").stat().st_size > 0
        assert (results / "figures" / "gradcam" / task / "resnet_small" / "fold0.png").stat().st_size > 0
    # The BreakHis-layout demo has all four magnifications; the TMA folder dataset has none.
    magnification = pd.read_csv(results / "tables" / "magnification.csv")
    assert set(magnification["tested_on"]) == {"40X", "100X", "200X", "400X"}
    assert set(magnification["trained_on"]) == {"all"}
    assert "cancer_types" not in set(magnification["task"])
    assert magnification["image_patient_recognition_rate_mean"].notna().all()
    calibration = pd.read_csv(results / "tables" / "calibration.csv")
    assert sorted(set(calibration["task"])) == sorted(TASKS)
    assert calibration["patient_ece_mean"].between(0, 1).all()
    summary = pd.read_csv(results / "tables" / "summary.csv")
    assert sorted(summary["task"]) == sorted(TASKS)
    assert (results / "tables" / "leakage.csv").stat().st_size > 0
    # The demo's dataset roots hold images only (its patients CSV lies outside): nothing is rejected.
    for dataset in ("tma", "breakhis"):
        assert pd.read_csv(results / "manifest" / f"{dataset}.rejects.csv").empty
    # Every job's log says what the job used; the demo (benchmark_files: true) also has Snakemake's files.
    job_logs = sorted((results / "logs").rglob("*.log"))
    assert job_logs and all(USAGE.search(log.read_text()) for log in job_logs)
    assert len(list((results / "benchmarks").rglob("*.tsv"))) == len(job_logs)


def test_a_local_run_selects_jobs_when_one_ends(demo_run):
    """Snakemake's default rate limiter (100 jobs/1 s) armed a 1 s timer at every job selection, so
    each finished job added a selection per second while jobs waited for cores: a third of the CPU
    outside training on the study's DAG. Without it (the Snakefile's onstart), a local run selects
    jobs when one ends."""
    workdir, _ = demo_run
    runs = []  # the demo's two runs (the killed one and its rerun), not the later tests' small ones
    for log in (workdir / ".snakemake" / "log").glob("*.snakemake.log"):
        text = log.read_text()
        jobs = sum(int(n) for n in re.findall(r"^Execute (\d+) jobs", text, flags=re.M))
        if jobs > 20:
            runs.append((text.count("Resources before job selection"), jobs))
    assert runs and all(selections <= 2 * jobs + 5 for selections, jobs in runs), runs


def test_only_snakemakes_default_rate_is_dropped():
    from snakemake.settings.types import MaxJobsPerTimespan

    from deepbc.workflow import config as wfconfig

    assert wfconfig.default_rate_limit(MaxJobsPerTimespan.parse_choice("100/1s"))
    assert not wfconfig.default_rate_limit(MaxJobsPerTimespan.parse_choice("10/1s"))
    assert not wfconfig.default_rate_limit(MaxJobsPerTimespan.parse_choice("100/1m"))
    assert not wfconfig.default_rate_limit(None)


@pytest.mark.slow
def test_killed_training_resumed_from_its_last_saved_step(demo_run):
    workdir, state = demo_run
    run, arch = state.parts[-3], state.parts[-2]
    log = (workdir / "results" / "logs" / "train" / run / arch / "fold0.log").read_text()
    resumed = re.search(r"resuming from .* at step (\d+)", log)
    assert resumed and 10 <= int(resumed.group(1)) < STEPS, log[-3000:]
    curve = pd.read_csv(workdir / "results" / "models" / run / arch / "fold0" / "training.csv")
    assert list(curve["step"]) == list(range(1, STEPS + 1))


@pytest.mark.slow
def test_second_run_from_an_empty_directory_predicts_bit_identically(demo_run, tmp_path):
    """Same config and seed in another empty directory, never interrupted: the killed-and-resumed
    job's curve, kept step and test predictions come out identical (reproducible, exact resume)."""
    workdir, state = demo_run
    run, arch = state.parts[-3], state.parts[-2]
    predictions = f"results/predictions/{run}/{arch}/fold0.parquet"
    model = f"results/models/{run}/{arch}/fold0"
    fresh = tmp_path / "fresh run"
    fresh.mkdir()
    (fresh / "often_saved.yaml").write_text(OFTEN_SAVED)
    snakemake(fresh, "--cores", "2", *demo_args(fresh), "--", predictions)
    pd.testing.assert_frame_equal(pd.read_parquet(fresh / predictions), pd.read_parquet(workdir / predictions),
                                  check_exact=True)
    timing = ["images_per_sec"]  # wall-clock rates, the only column allowed to differ
    curves = [pd.read_csv(w / model / "training.csv").drop(columns=timing) for w in (fresh, workdir)]
    pd.testing.assert_frame_equal(*curves, check_exact=True)
    kept = [json.loads((w / model / "settings.json").read_text())["best_step"] for w in (fresh, workdir)]
    assert kept[0] == kept[1]
    for name in ("model.ckpt.index", "model.ckpt.data-00000-of-00001"):
        assert (fresh / model / name).read_bytes() == (workdir / model / name).read_bytes(), name


@pytest.mark.slow
def test_finished_run_has_nothing_to_do(demo_run):
    workdir, _ = demo_run
    proc = snakemake(workdir, "-n", *demo_args(workdir))
    assert "Nothing to be done" in proc.stdout + proc.stderr


@pytest.mark.slow
def test_other_gpu_settings_rerun_nothing(demo_run):
    """Which GPUs a job may lease describes the machine, not the results: a finished run stays
    finished (as params, these settings reran every training job, from step 1)."""
    workdir, _ = demo_run
    machine = workdir / "other_machine.yaml"
    machine.write_text("resources: {gpu: 0, gpu_devices: 3, gpu_lock_dir: other leases}\n")
    assert planned_jobs(workdir, *demo_args(workdir), str(machine)) == []


@pytest.mark.slow
def test_one_table_regenerates_alone(demo_run):
    """README's command, on a finished run: the table alone is made again from its metrics."""
    workdir, _ = demo_run
    table = workdir / "results" / "tables" / "benign_vs_malignant.csv"
    before = table.stat().st_mtime_ns
    args = [*demo_args(workdir), "--force", "--", "results/tables/benign_vs_malignant.csv"]
    assert planned_jobs(workdir, *args) == ["task_table"]
    snakemake(workdir, "--cores", "1", *args)
    assert table.stat().st_mtime_ns > before
    readme = " ".join((ROOT / "README.md").read_text().split())
    assert "snakemake --cores 2 --force results/tables/benign_vs_malignant.csv" in readme


@pytest.mark.slow
def test_changed_predictions_rerun_only_what_uses_them(demo_run):
    workdir, _ = demo_run
    pred = workdir / "results" / "predictions" / "cancer_types" / "resnet_small" / "fold0.parquet"
    original = pred.read_bytes()
    changed = pd.read_parquet(pred)  # as if the model had changed: other probabilities
    prob = [c for c in changed.columns if c.startswith("prob_")]
    changed[prob] = (changed[prob] * 0.9 + 0.1 / len(prob))
    changed.to_parquet(pred, index=False)
    jobs = planned_jobs(workdir, *demo_args(workdir))
    assert "train" not in jobs and "evaluate" not in jobs
    assert jobs.count("metrics") == 1 and jobs.count("task_table") == 1
    assert {"roc_figure", "confusion_figure", "summary_table", "calibration_figure",
            "calibration_table"} <= set(jobs)
    # A TMA (folder dataset) run has no magnifications: the magnification table does not use it.
    assert "training_figure" not in jobs and "magnification_table" not in jobs
    # Up to date again for the tests after: the original predictions, and what reads them marked
    # as made from them (as they were).
    pred.write_bytes(original)
    snakemake(workdir, "--cores", "1", "--touch", *demo_args(workdir))
    assert planned_jobs(workdir, *demo_args(workdir)) == []


@pytest.mark.slow
def test_report_holds_tables_and_figures_with_captions(demo_run):
    workdir, _ = demo_run
    snakemake(workdir, *demo_args(workdir), "--report", "report.zip")
    import zipfile

    with zipfile.ZipFile(workdir / "report.zip") as report:
        names = report.namelist()
    assert any(n.endswith("summary.csv") for n in names)
    assert any(n.endswith("/cancer_types.png") for n in names)  # the ROC curves of one task
    assert any(n.endswith("magnification.csv") for n in names)
    assert any(n.endswith("calibration.csv") for n in names)
    assert sum(n.endswith("/fold0.png") for n in names) >= len(TASKS)  # Grad-CAM: a figure per run and fold


def test_lint_is_clean(tmp_path):
    proc = snakemake(tmp_path, "--lint", check=False)
    assert proc.returncode == 0 and "Congratulations" in proc.stdout + proc.stderr, proc.stdout + proc.stderr


def dry_run_with_overlay(workdir, overlay_yaml: str, *args, check=False):
    """``snakemake -n`` on the demo config with one more config file holding ``overlay_yaml``."""
    overlay = workdir / "overlay.yaml"
    overlay.write_text(overlay_yaml)
    return snakemake(workdir, "-n", *args, "--configfile", str(ROOT / "config" / "config.yaml"), str(overlay),
                     check=check)


def test_invalid_config_fails_before_any_job(tmp_path):
    proc = dry_run_with_overlay(tmp_path, "splits: {k: 1, val_fraction: 0.2, exclude_label_conflicts: true}\n")
    assert proc.returncode != 0
    out = proc.stdout + proc.stderr
    assert "splits.k=1 leaves no test patients" in out and "where: config key splits.k" in out
    assert not (tmp_path / "results").exists()


def test_unknown_config_key_names_its_place_and_the_allowed_keys_only(tmp_path):
    proc = dry_run_with_overlay(tmp_path, "splits: {k: 3, val_fracton: 0.2}\n")
    assert proc.returncode != 0
    out = proc.stdout + proc.stderr
    assert "unknown config key(s) ['val_fracton']" in out and "where: config key splits" in out
    assert ("['allow_straddling', 'exclude_label_conflicts', 'k', 'predefined', 'predefined_key', 'repeats', "
            "'scheme', 'test_fraction', 'val_fraction']") in out
    assert "definitions" not in out and len(out.splitlines()) < 40, out  # not the whole schema


def test_unknown_architecture_names_the_allowed_ones(tmp_path):
    proc = snakemake(tmp_path, "-n", "--config", "architectures=['resnet_v1_51']", check=False)
    assert proc.returncode != 0
    out = proc.stdout + proc.stderr
    assert "resnet_v1_51" in out and "resnet_v1_50" in out


def test_missing_dataset_root_names_the_path(tmp_path):
    missing = tmp_path / "no such dir"
    proc = snakemake(tmp_path, "--cores", "1", "--keep-going", "manifests", "--configfile",
                     str(ROOT / "config" / "paper.yaml"), "--config", f"breakhis_dir={missing}", f"tma_dir={missing}",
                     "tma_patients_csv=", check=False)
    assert proc.returncode != 0
    log = (tmp_path / "results" / "logs" / "check_dataset" / "breakhis.log").read_text()
    assert str(missing) in log and "BreaKHis" in log and "web.inf.ufpr.br" in log
    log = (tmp_path / "results" / "logs" / "check_dataset" / "tma.log").read_text()
    assert str(missing) in log and "breast" in log


def _folder_dataset(root, per_class=6):
    """A tiny TMA-like folder dataset: the demo config's four classes, a few 32 px images each."""
    from PIL import Image

    for c, label in enumerate(("breast", "bladder", "lung", "lymphoma")):
        (root / label).mkdir(parents=True)
        for i in range(per_class):
            Image.new("RGB", (32, 32), (40 * i, 50 * c, 200)).save(root / label / f"{label}_{i}.png")


@pytest.mark.slow
def test_moved_checkout_reruns_nothing(tmp_path):
    """The same results folder used from a clone at another path: provenance holds no checkout path."""
    import shutil

    moved = tmp_path / "moved clone"
    moved.mkdir()
    for part in ("Snakefile", "rules", "config", "workflow_scripts", "deepbc", "envs", "report", "profiles"):
        src = ROOT / part
        if src.is_dir():
            shutil.copytree(src, moved / part, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(src, moved / part)
    workdir = tmp_path / "work"
    _folder_dataset(workdir / "tma")
    args = ["--configfile", str(ROOT / "config" / "paper.yaml"), "--config", "tasks=[cancer_types]", "tma_dir=tma",
            "tma_patients_csv=",
            "--", "results/splits/cancer_types.parquet"]
    snakemake(workdir, "--cores", "1", *args)
    proc = subprocess.run([sys.executable, "-m", "snakemake", "--snakefile", str(moved / "Snakefile"),
                           "--directory", str(workdir), "-n", *args], capture_output=True, text=True, env=_env())
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "Nothing to be done" in proc.stdout + proc.stderr, proc.stdout[-4000:]


def test_a_task_on_one_dataset_draws_only_its_demo(tmp_path):
    out = snakemake(tmp_path, "-n", "-p", "--config", "tasks=[cancer_types]", "--",
                    "results/splits/cancer_types.parquet").stdout
    assert re.findall(r"^(?:local)?rule (\w+):", out, flags=re.M).count("make_demo") == 1
    assert "--demo tma --out results/demo/tma" in out and "--demo breakhis" not in out


def test_dry_run_sees_a_shard_missing_from_its_store(tmp_path):
    import json

    store = tmp_path / "results" / "encoded" / "tma"
    store.mkdir(parents=True)
    names = [f"shard-{i:05d}-of-00003.tfrecord" for i in range(3)]
    (store / "store.json").write_text(json.dumps({"shards": names}))
    for name in names[::2]:
        (store / name).write_bytes(b"")
    proc = snakemake(tmp_path, "-n", "--config", "folds=[0]", "--",
                     "results/predictions/cancer_types/resnet_small/fold0.parquet", check=False)
    assert proc.returncode != 0
    out = proc.stdout + proc.stderr
    assert "1 shard(s) listed in this encoded store are missing" in out, out[-3000:]
    assert "results/encoded/tma/shard-00001-of-00003.tfrecord" in out
    assert "delete the folder results/encoded/tma/ and rerun the same snakemake command" in out
    # Without store.json, the store is re-encoded and the indexes listing it rewritten: no error.
    (store / "store.json").unlink()
    snakemake(tmp_path, "-n", "--config", "folds=[0]", "--", "results/predictions/cancer_types/resnet_small/fold0.parquet")


EXTERNAL_OVERLAY = """\
datasets:
  site_b: {kind: folder, root: site_b, classes: [breast, lung]}
task_definitions:
  cancer_types_site_b:
    dataset: tma
    test_dataset: site_b
    label: label
    classes: [breast, bladder, lung, lymphoma]
tasks: [cancer_types, cancer_types_site_b]
"""


def test_dry_run_of_a_third_dataset_and_an_external_task(tmp_path):
    """site_b gets its own manifest; the external run splits with its manifest, shards with its root,
    and is measured on it; it has no image-level run, so no leakage table."""
    out = dry_run_with_overlay(tmp_path, EXTERNAL_OVERLAY, "-p", "--config", "folds=[0]", check=True).stdout
    jobs = re.findall(r"^(?:local)?rule (\w+):", out, flags=re.M)
    assert sorted(set(jobs)) == ["all", "calibration_figure", "calibration_table", "check_dataset",
                                 "confusion_figure", "encode_dataset", "evaluate", "make_demo",
                                 "make_splits", "metrics", "per_class_table", "pooled_metrics",
                                 "roc_figure", "summary_table", "task_table", "train", "training_figure",
                                 "write_shards"]
    assert jobs.count("check_dataset") == 2 and jobs.count("train") == 2 and jobs.count("encode_dataset") == 2
    assert "results/manifest/site_b.parquet" in out and "leakage" not in out
    assert "--test-manifest results/manifest/site_b.parquet --out results/splits/cancer_types_site_b.parquet" in out
    # Each dataset encoded once; the external run's test split indexes site_b's store.
    assert "--manifest results/manifest/site_b.parquet --root site_b --out-dir results/encoded/site_b" in out
    assert "--store results/encoded/tma/store.json --test-store results/encoded/site_b/store.json --fold 0" in out
    assert re.search(r"--run cancer_types_site_b .*--manifest results/manifest/site_b.parquet .*--external-test site_b",
                     out)
    assert re.search(r"plot_calibration\.py\S* --task cancer_types_site_b .*--external-test site_b", out)
    # Grad-CAM is drawn by the evaluate job (one TensorFlow start-up per fold), titled with the external test.
    assert re.search(r"evaluate_model\.py\S* .*--gradcam-png results/figures/gradcam/cancer_types_site_b/resnet_small/"
                     r"fold0\.png .*--title 'cancer_types_site_b / resnet_small / fold 0, external test: site_b'", out)



# The demo's jobs as the workflow planned them before train.repeats existed (snakemake -n, Job stats).
DEMO_JOBS = {"make_demo": 2, "check_dataset": 2, "encode_dataset": 2, "make_splits": 5, "write_shards": 5,
             "train": 5, "evaluate": 5, "training_figure": 5, "calibration_figure": 4, "confusion_figure": 5,
             "metrics": 5, "pooled_metrics": 5, "roc_figure": 4, "calibration_table": 1, "leakage_table": 1,
             "magnification_table": 1, "per_class_table": 4, "summary_table": 1, "task_table": 4, "all": 1}
# A model job's shell command, by the folder or file it writes.
MODEL_COMMANDS = r"^Shell command: (python \S+/(?:train_model|evaluate_model|compute_metrics|pool_metrics)\.py\S* .*)$"


def job_counts(out: str) -> dict:
    jobs = re.findall(r"^(?:local)?rule (\w+):", out, flags=re.M)
    return {rule: jobs.count(rule) for rule in dict.fromkeys(jobs)}


def test_training_repeats_train_each_fold_n_times_with_their_own_seeds(tmp_path):
    """train.repeats 1 (the default) plans the jobs of before; 3 trains, evaluates and measures every
    model three times (repeat 0 with the same commands as before, the others with seeds of their
    own), pools each repeat, and changes no other job's count: splits, shards and figures are the
    folds' and repeat 0's."""
    one = dry_run_with_overlay(tmp_path, "{}\n", "-p", check=True).stdout
    three = dry_run_with_overlay(tmp_path, "train: {repeats: 3}\n", "-p", check=True).stdout
    assert job_counts(one) == DEMO_JOBS
    assert job_counts(three) == {**DEMO_JOBS, **{rule: 3 * DEMO_JOBS[rule] for rule in
                                                 ("train", "evaluate", "metrics", "pooled_metrics")}}
    assert "_r1" not in one
    seeds = dict(re.findall(r"--out-dir results/models/(\S+) .*--seed (\d+)", three))
    assert len(seeds) == 15
    for run in ("cancer_types", "benign_subtypes"):
        mine = [int(seeds[f"{run}/resnet_small/fold0{s}"]) for s in ("", "_r1", "_r2")]
        assert mine[0] == 42 and len(set(mine)) == 3
    assert re.search(r"--predictions results/predictions/cancer_types/resnet_small/fold0_r2\.parquet .*"
                     r"--fold 0_r2 .*--out results/metrics/cancer_types/resnet_small/fold0_r2\.json", three)
    assert re.search(r"--predictions results/predictions/cancer_types/resnet_small/fold0_r1\.parquet .*"
                     r"--out results/metrics/cancer_types/resnet_small/pooled_r1\.json", three)
    # Every fold's repeats read the fold's shards.
    assert re.search(r"--train-index results/tfrecords/cancer_types/fold0/train\.json .*"
                     r"--out-dir results/models/cancer_types/resnet_small/fold0_r1 ", three)
    # Repeat 0's model jobs are those of before: adding repeats to a study retrains nothing.
    before = set(re.findall(MODEL_COMMANDS, one, flags=re.M))
    assert len(before) == 20 and before <= set(re.findall(MODEL_COMMANDS, three, flags=re.M))


def test_dry_run_with_stain_normalization_fits_once_and_encodes_each_dataset_with_it(tmp_path):
    out = dry_run_with_overlay(tmp_path, "shards: {stain_normalization: macenko}\n", "-p", "--config", "folds=[0]",
                               check=True).stdout
    jobs = re.findall(r"^(?:local)?rule (\w+):", out, flags=re.M)
    assert jobs.count("fit_stain") == 1 and jobs.count("encode_dataset") == 2
    assert len(re.findall(r"encode_dataset\.py\S* .*--stain-json results/stain/reference\.json", out)) == 2
    # Off by default: no fit, and the stores are encoded without it.
    default = dry_run_with_overlay(tmp_path, "{}\n", "-p", "--config", "folds=[0]", check=True).stdout
    assert "fit_stain" not in default and "--stain-json" not in default
