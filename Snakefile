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
        all_tables(),
        all_figures(),


rule manifests:
    input:
        expand("results/manifest/{dataset}.parquet", dataset=DATASETS),


rule splits:
    input:
        expand("results/splits/{run}.parquet", run=RUNS),


rule shards:
    input:
        all_shards(),


rule models:
    input:
        all_models(),


rule tables:
    input:
        all_tables(),


rule figures:
    input:
        all_figures(),


# Not part of `all`: each export is one more TensorFlow job per model; run `snakemake --cores N exports`.
rule exports:
    input:
        expand("results/export/{run}/{arch}/fold{fold}", run=RUNS, arch=ARCHS, fold=FOLDS),
