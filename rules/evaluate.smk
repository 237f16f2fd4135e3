rule evaluate:
    input:
        model=rules.train.output.settings,
        checkpoint=rules.train.output.model,
        shards=lambda wc: checked_shard_indexes(wc.run, wc.fold, ["test"]),
        # Validation predictions, in the same job, for temperature scaling (never fitted on test).
        val_shards=lambda wc: checked_shard_indexes(wc.run, wc.fold, ["val"]),
    output:
        test="results/predictions/{run}/{arch}/fold{fold}.parquet",
        val="results/validation_predictions/{run}/{arch}/fold{fold}.parquet",
    params:
        script=script("evaluate_model.py"),
        model_dir=lambda wc: model_dir(wc.run, wc.arch, wc.fold),
    threads: RES.get("eval_threads", 2)
    resources:
        gpu=RES.get("gpu", 1),
        mem_mb=RES.get("eval_mem_mb", 8000),
        runtime=RES.get("eval_runtime", 60),
    log:
        "results/logs/evaluate/{run}/{arch}/fold{fold}.log",
    benchmark:
        "results/benchmarks/evaluate/{run}/{arch}/fold{fold}.tsv"
    conda:
        GPU_ENV
    shell:
        "python \"$DEEPBC_WORKFLOW_DIR/{params.script}\" --model-dir {params.model_dir:q} --shard-index {input.shards:q}"
        " --out {output.test:q} --val-shard-index {input.val_shards:q} --val-out {output.val:q}"
        " --threads {threads} --log {log:q}"


rule predict_folder:
    """Classify new images: snakemake --cores 2 results/new_predictions/{run}/{arch}/fold{fold}/{folder}.csv
    with the images in new_images/{folder}/ (and optionally new_images/{folder}.patients.csv)."""
    input:
        model=rules.train.output.settings,
        images="new_images/{folder}",
    output:
        "results/new_predictions/{run}/{arch}/fold{fold}/{folder}.csv",
    params:
        script=script("predict_folder.py"),
        model_dir=lambda wc: model_dir(wc.run, wc.arch, wc.fold),
        patients=predict_patient_options,
    threads: RES.get("eval_threads", 2)
    resources:
        gpu=RES.get("gpu", 1),
        mem_mb=RES.get("eval_mem_mb", 8000),
    log:
        "results/logs/predict_folder/{run}/{arch}/fold{fold}/{folder}.log",
    benchmark:
        "results/benchmarks/predict_folder/{run}/{arch}/fold{fold}/{folder}.tsv"
    conda:
        GPU_ENV
    shell:
        "python \"$DEEPBC_WORKFLOW_DIR/{params.script}\" --model-dir {params.model_dir:q} --images {input.images:q}"
        " --out {output:q} {params.patients} --threads {threads} --log {log:q}"
