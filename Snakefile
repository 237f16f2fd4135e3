# DeepBreastCancer: patient-safe fine-tuning of TF-Slim networks on BreakHis and TMA images.
# Run: snakemake --cores N --resources gpu=K   (config/config.yaml is the embedded demo)

configfile: "config/config.yaml"


include: "rules/common.smk"
include: "rules/data.smk"
include: "rules/train.smk"


rule all:
    input:
        all_shards(),
    default_target: True


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
