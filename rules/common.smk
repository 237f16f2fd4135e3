import json
import os
import re
import shlex

from snakemake.logging import logger
from snakemake.utils import min_version, validate

min_version("9.0")

# Make the deepbc package importable in every job (plain venv, conda env or SLURM node).
sys.path.insert(0, workflow.basedir)
from deepbc.data import datasets as datasets_config  # noqa: E402
from deepbc.data.runs import (  # noqa: E402
    MODEL_FOLD,
    REPEAT_SUFFIX,
    SPLITS,
    model_label,
    parse_model_fold,
    parse_repeat_suffix,
)
from deepbc.jobs import schema  # noqa: E402
from deepbc.jobs.errors import UserError  # noqa: E402
from deepbc.workflow import config as wfconfig  # noqa: E402
from deepbc.workflow import plan as layout  # noqa: E402

try:
    # A short message first; Snakemake's validate() then fills in the schema's defaults.
    schema.check(config)
    validate(config, schema="../config/schema.yaml")
    wfconfig.check(config)
    demo_config = os.path.join(workflow.basedir, "config", "config.yaml")
    wfconfig.check_layering(config, workflow.overwrite_configfiles, demo_config)
except UserError as err:
    raise WorkflowError(f"invalid configuration:\n{err}") from None
if wfconfig.partial_folds_warning(config):
    logger.warning(wfconfig.partial_folds_warning(config))

# The runs, folds, architectures and datasets of this config, and every target list (deepbc.workflow.plan).
PLAN = layout.Plan(config)
RES = config["resources"]
# GPU jobs get the CUDA build of TensorFlow only where GPUs are requested.
GPU_ENV = "../envs/gpu.yaml" if RES["gpu"] > 0 else "../envs/cpu.yaml"
STAIN_JSON = "results/stain/reference.json" if config["shards"]["stain_normalization"] != "none" else None

# Doubled braces: Snakemake formats the prefix like a shell command. Shell commands run
# "$DEEPBC_WORKFLOW_DIR/{params.script}": params hold only the script's path inside the checkout,
# and Snakemake records neither the prefix nor the formatted command, so moving the checkout
# changes no job's provenance (params, code). Which GPUs a job may lease (none when GPU jobs are
# configured off), and where their locks are, describe the machine, not the results: they too
# reach the GPU jobs' scripts through the environment (deepbc.jobs.gpu.add_arguments), so that
# changing them reruns no job.
shell.prefix(
    f"export DEEPBC_WORKFLOW_DIR={shlex.quote(workflow.basedir)}"
    f" PYTHONPATH={shlex.quote(workflow.basedir)}${{{{PYTHONPATH:+:$PYTHONPATH}}}}"
    f" DEEPBC_GPUS={0 if RES['gpu'] == 0 else RES['gpu_devices']}"
    f" DEEPBC_GPU_LOCK_DIR={shlex.quote(RES['gpu_lock_dir'])}; "
)


wildcard_constraints:
    dataset="|".join(PLAN.datasets),
    # A task's name, never a table's (results/tables/{task}_per_class.csv, summary.csv).
    task="|".join(re.escape(t) for t in PLAN.tasks),
    run="[A-Za-z0-9_]+",
    arch="[A-Za-z0-9_]+",
    # A model's fold: the fold, or a fold's repeat (3_r1); repeat: "" or "_r1" (deepbc.data.runs).
    fold=MODEL_FOLD,
    repeat=REPEAT_SUFFIX,
    folder="[^/]+",


def script(name):
    """A workflow script, relative to the workflow's folder, as a rule param (so provenance records it)."""
    return f"workflow_scripts/{name}"


def run_of(wildcards):
    """The run of a job (deepbc.workflow.plan.Run: task, protocol, datasets, manifests, stores)."""
    return PLAN.runs[wildcards.run if hasattr(wildcards, "run") else PLAN.runs_of_task(wildcards.task)[0].name]


def fold_shards(split):
    """An input function: the shard index of a model's fold (every repeat of a fold reads the fold's shards)."""
    return lambda wc: layout.shard_index(wc.run, parse_model_fold(wc.fold)[0], split)


def section_json(name):
    """A config section as the one JSON option its script takes (deepbc.jobs.cli), defaults filled in."""
    return json.dumps(config[name], sort_keys=True)


def checked_store(dataset):
    """A dataset's store index, as an input of a job that reads the store; a store.json listing a
    shard that is missing stops the DAG (snakemake -n shows it)."""
    path = layout.store_index(dataset)
    try:
        wfconfig.check_store_shards(path)
    except UserError as err:
        raise WorkflowError(str(err)) from None
    return path


def external_input(value):
    """An input function: ``value(run)`` for a run tested on another dataset, nothing otherwise."""
    return lambda wc: value(run_of(wc)) if run_of(wc).external else []


def external_option(flag, value):
    """A param: ``flag value(run)`` (shell-quoted) for a run (or task) tested on another dataset, else nothing."""
    return lambda wc: f"{flag} {shlex.quote(value(run_of(wc)))}" if run_of(wc).external else ""


def model_fingerprint(wildcards):
    """A param of the jobs that read a run's model, saying what trains it (wfconfig.model_fingerprint)."""
    return PLAN.model_fingerprint(wildcards.run, wildcards.arch)
