import json
import os
import shlex

from snakemake.logging import logger
from snakemake.utils import min_version, validate

min_version("9.0")

# Make the deepbc package importable in every job (plain venv, conda env or SLURM node).
sys.path.insert(0, workflow.basedir)
from deepbc.workflow import config as wfconfig  # noqa: E402
from deepbc.data.runs import parse_run  # noqa: E402
from deepbc.data import datasets as datasets_config  # noqa: E402
from deepbc.jobs import schema  # noqa: E402
from deepbc.jobs.errors import UserError  # noqa: E402
from deepbc.data.runs import SPLITS  # noqa: E402

try:
    # A short message first; Snakemake's validate() then fills in the schema's defaults.
    schema.check(config)
    validate(config, schema="../config/schema.yaml")
    wfconfig.check(config)
    wfconfig.check_layering(
        config, workflow.overwrite_configfiles, os.path.join(workflow.basedir, "config", "config.yaml")
    )
except UserError as err:
    raise WorkflowError(f"invalid configuration:\n{err}") from None
PARTIAL_FOLDS = wfconfig.partial_folds_warning(config)
if PARTIAL_FOLDS:
    logger.warning(PARTIAL_FOLDS)


def script(name):
    """A workflow script, relative to the workflow's folder, as a rule param (so provenance records it)."""
    return f"workflow_scripts/{name}"


TASKS = wfconfig.selected_tasks(config)
RUNS = wfconfig.runs(config)
FOLDS = wfconfig.folds(config)
ARCHS = config["architectures"]
# Each dataset entry with the breakhis_dir/tma_dir/tma_patients_csv shortcuts applied (checked above).
DATASET_SPECS = datasets_config.resolve(config)
DATASETS = datasets_config.used(config)
RES = config["resources"]
# GPU jobs get the CUDA build of TensorFlow only where GPUs are requested.
# How many GPUs a job may lease from: none when GPU jobs are configured off, else config or nvidia-smi.
GPU_DEVICES = 0 if RES["gpu"] == 0 else RES["gpu_devices"]
GPU_ENV = "../envs/gpu.yaml" if RES["gpu"] > 0 else "../envs/cpu.yaml"

# Doubled braces: Snakemake formats the prefix like a shell command. Shell commands run
# "$DEEPBC_WORKFLOW_DIR/{params.script}": params hold only the script's path inside the checkout,
# and Snakemake records neither the prefix nor the formatted command, so moving the checkout
# changes no job's provenance (params, code). Which GPUs a job may lease, and where their locks
# are, describe the machine, not the results: they too reach the GPU jobs' scripts through the
# environment (deepbc.jobs.gpu.add_arguments), so that changing them reruns no job.
shell.prefix(
    f"export DEEPBC_WORKFLOW_DIR={shlex.quote(workflow.basedir)}"
    f" PYTHONPATH={shlex.quote(workflow.basedir)}${{{{PYTHONPATH:+:$PYTHONPATH}}}}"
    f" DEEPBC_GPUS={GPU_DEVICES} DEEPBC_GPU_LOCK_DIR={shlex.quote(RES['gpu_lock_dir'])}; "
)


wildcard_constraints:
    dataset="|".join(DATASETS),
    run="[A-Za-z0-9_]+",
    arch="[A-Za-z0-9_]+",
    fold=r"\d+",
    folder="[^/]+",


def dataset_root(dataset):
    return datasets_config.root(DATASET_SPECS, dataset)


def demo_inputs(wildcards):
    return datasets_config.demo_input(config, DATASET_SPECS, wildcards.dataset)


def run_task(run):
    return parse_run(run)[0]


def run_protocol(run):
    return parse_run(run)[1]


def run_dataset(run):
    return TASKS[run_task(run)]["dataset"]


def section_json(name):
    """A config section as the one JSON option its script takes (deepbc.jobs.cli), defaults filled in."""
    return json.dumps(config[name], sort_keys=True)


def task_json(wildcards):
    return json.dumps(TASKS[run_task(wildcards.run)], sort_keys=True)


def manifest_of_run(wildcards):
    return f"results/manifest/{run_dataset(wildcards.run)}.parquet"


def root_of_run(wildcards):
    return dataset_root(run_dataset(wildcards.run))


def run_test_dataset(run):
    """The dataset a run is tested on: the task's test_dataset (external validation) or its own."""
    return TASKS[run_task(run)].get("test_dataset") or run_dataset(run)


def is_external(run):
    return run_test_dataset(run) != run_dataset(run)


def test_manifest(run):
    """The manifest of the run's test images (their patient grouping)."""
    return f"results/manifest/{run_test_dataset(run)}.parquet"


def test_root(run):
    return dataset_root(run_test_dataset(run))


def test_manifest_of_run(wildcards):
    return test_manifest(wildcards.run)


def external_test_manifest(wildcards):
    return test_manifest(wildcards.run) if is_external(wildcards.run) else []


def checked_store(dataset):
    """A dataset's store index, as an input of a job that reads the store; a store.json listing a
    shard that is missing stops the DAG (snakemake -n shows it)."""
    path = wfconfig.store_index(dataset)
    try:
        wfconfig.check_store_shards(path)
    except UserError as err:
        raise WorkflowError(str(err)) from None
    return path


def run_store(wildcards):
    """The store of the run's dataset (its train and validation images)."""
    return checked_store(run_dataset(wildcards.run))


def external_test_store(wildcards):
    return checked_store(run_test_dataset(wildcards.run)) if is_external(wildcards.run) else []


def external_option(flag, value_of_run):
    """A param: ``flag value`` (value shell-quoted) for an external run (or task), nothing otherwise."""

    def option(wildcards):
        # A task's runs share its test dataset: its first run stands for it.
        run = wildcards.run if hasattr(wildcards, "run") else runs_of_task(wildcards.task)[0]
        return f"{flag} {shlex.quote(value_of_run(run))}" if is_external(run) else ""

    return option


def all_shards():
    return [wfconfig.shard_index(run, fold, split) for run in RUNS for fold in FOLDS for split in SPLITS]


STAIN_JSON = "results/stain/reference.json"


def stain_input(wildcards):
    """The fitted stain normalization, an input of the shards when it is on."""
    return [] if config["shards"]["stain_normalization"] == "none" else STAIN_JSON


def stain_option(wildcards):
    return "" if config["shards"]["stain_normalization"] == "none" else f"--stain-json {STAIN_JSON}"


def stain_reference(wildcards):
    return config["shards"]["stain_reference"] or []


def dataset_options(dataset):
    return datasets_config.options(DATASET_SPECS, dataset)


def train_settings_json(wildcards):
    return wfconfig.train_settings_json(config, wildcards.run, wildcards.arch)


def checkpoint_input(wildcards):
    return wfconfig.checkpoint_record(config, wildcards.run, wildcards.arch) or []


def model_fingerprint(wildcards):
    """A param of every rule reading a run's model (wfconfig.model_fingerprint)."""
    return wfconfig.model_fingerprint(config, wildcards.run, wildcards.arch)


model_dir = wfconfig.model_dir


def all_models():
    return [f"{model_dir(run, arch, fold)}/settings.json" for run in RUNS for arch in ARCHS for fold in FOLDS]


def predict_patient_options(wildcards):
    args = wfconfig.predict_patient_options(wildcards.run, wildcards.arch, wildcards.fold, wildcards.folder)
    return " ".join(shlex.quote(a) for a in args)


def task_classes(task):
    return TASKS[task]["classes"]


def runs_of_task(task):
    return [r for r in RUNS if run_task(r) == task]


def metrics_files(runs):
    return expand("results/metrics/{run}/{arch}/fold{fold}.json", run=runs, arch=ARCHS, fold=FOLDS)


def patient_runs():
    return [r for r in RUNS if run_protocol(r) == "patient"]


def patient_model_files(name):
    """A file of every model of the patient-wise runs (name: settings.json or training.csv)."""
    return [f"{model_dir(run, arch, fold)}/{name}" for run in patient_runs() for arch in ARCHS for fold in FOLDS]


def patient_model_fingerprints():
    return [wfconfig.model_fingerprint(config, run, arch) for run in patient_runs() for arch in ARCHS]


def magnification_runs():
    """The patient-wise runs tested on a BreakHis-kind dataset: the only test images with magnifications."""
    return [r for r in patient_runs() if DATASET_SPECS[run_test_dataset(r)]["kind"] == "breakhis"]


def all_tables():
    files = expand("results/tables/{task}.{ext}", task=list(TASKS), ext=["csv", "md", "tex"])
    files += expand("results/tables/summary.{ext}", ext=["csv", "md"])
    if wfconfig.has_both_protocols(config):
        files += expand("results/tables/leakage.{ext}", ext=["csv", "md"])
    if magnification_runs():
        files += expand("results/tables/magnification.{ext}", ext=["csv", "md", "tex"])
    files += expand("results/tables/calibration.{ext}", ext=["csv", "md", "tex"])
    return files


def all_figures():
    files = expand(
        "results/figures/{kind}/{task}.{ext}", kind=["roc", "calibration"], task=list(TASKS), ext=["png", "pdf"]
    )
    for kind in ("confusion", "training"):
        files += expand(
            "results/figures/{kind}/{run}/{arch}.{ext}", kind=kind, run=RUNS, arch=ARCHS, ext=["png", "pdf"]
        )
    files += expand("results/figures/gradcam/{run}/{arch}/fold{fold}.png", run=RUNS, arch=ARCHS, fold=FOLDS)
    return files
