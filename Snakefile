# DeepBreastCancer: patient-safe fine-tuning of TF-Slim networks on BreakHis and TMA images.
# Run: snakemake --cores N --resources gpu=K   (config/config.yaml is the embedded demo)

import os

# The config files given with --configfile are the whole config (layered in the order given, over
# the schema's defaults); config/config.yaml, the demo, is read only when none is given, so that no
# demo value (64 px, 60 steps, one fold) reaches a study (config/README.md, "How configs layer").
if not workflow.overwrite_configfiles:

    configfile: os.path.join(workflow.basedir, "config", "config.yaml")


include: "rules/common.smk"
include: "rules/data.smk"
include: "rules/train.smk"
include: "rules/evaluate.smk"
include: "rules/results.smk"


rule all:
    default_target: True
    input:
        PLAN.tables(),
        PLAN.figures(),


rule manifests:
    input:
        PLAN.manifests(),


rule splits:
    input:
        PLAN.split_tables(),


rule shards:
    input:
        PLAN.shards(),


rule models:
    input:
        PLAN.models(),


rule tables:
    input:
        PLAN.tables(),


rule figures:
    input:
        PLAN.figures(),


# Not part of `all`: each export is one more TensorFlow job per model; run `snakemake --cores N exports`.
rule exports:
    input:
        PLAN.exports(),


# benchmark_files: false drops every rule's benchmark file, and with it Snakemake's sampling of each
# job's processes (every 0.5 s for a job's first 15 s), a cost to its own CPU (BENCHMARKS.md section
# 12). Snakemake has no switch for it (snakemake/snakemake#564): a rule without a benchmark is one
# whose benchmark is None. Each job's log still ends with its time and memory (deepbc.jobs.logs.log_usage).
if not config["benchmark_files"]:
    for workflow_rule in workflow.rules:
        workflow_rule._benchmark = None


# Snakemake 9 selects jobs again once a second for every job that has finished, for as long as
# jobs wait for cores: its submission rate limiter (--max-jobs-per-timespan, default 100/1s) arms
# a new 1 s timer on every pass, so each finished job starts another chain of them. On a study's
# DAG that was a third of the CPU outside training (BENCHMARKS.md section 12). A local run has no
# submission rate to limit: without the limiter, Snakemake selects jobs when one ends. A cluster
# run, or a rate given on the command line, keeps it.
onstart:
    if workflow.local_exec and wfconfig.default_rate_limit(workflow.scheduling_settings.max_jobs_per_timespan):
        workflow.scheduler.job_rate_limiter = None
