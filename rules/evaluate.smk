rule evaluate:
    input:
        model=rules.train.output.settings,
        checkpoint=rules.train.output.model,
        test_index=fold_shards("test"),
        # Validation predictions, in the same job, for temperature scaling (never fitted on test).
        val_index=fold_shards("val"),
        # The stores whose shards the indexes list (rules/train.smk says why).
        store=lambda wc: checked_store(run_of(wc).dataset),
        test_store=external_input(lambda run: checked_store(run.test_dataset)),
        # The split: a predefined split or repeated holdouts is named in the Grad-CAM title.
        split_audit=layout.split_audit("{run}", "json"),
    output:
        test="results/predictions/{run}/{arch}/fold{fold}.parquet",
        val="results/validation_predictions/{run}/{arch}/fold{fold}.parquet",
        # Grad-CAM in the same job: one TensorFlow start-up per fold, not two.
        gradcam=report(
            "results/figures/gradcam/{run}/{arch}/fold{fold}.png",
            caption="../report/gradcam.rst",
            category="Grad-CAM",
            subcategory="{run} / {arch}",
        ),
    log:
        "results/logs/evaluate/{run}/{arch}/fold{fold}.log",
    benchmark:
        "results/benchmarks/evaluate/{run}/{arch}/fold{fold}.tsv"
    conda:
        GPU_ENV
    threads: RES["eval_threads"]
    resources:
        gpu=RES["gpu"],
        mem_mb=RES["eval_mem_mb"],
        runtime=RES["eval_runtime"],
    params:
        script=script("evaluate_model.py"),
        model_dir=lambda wc: layout.model_dir(wc.run, wc.arch, wc.fold),
        # What trains the model: a change reruns this job, and so trains the model first even if
        # it is missing (a killed trainer's outputs are deleted), whatever target is asked for.
        model=model_fingerprint,
        classes=lambda wc: run_of(wc).classes,
        seed=config["seed"],
        title=lambda wc: f"{wc.run} / {wc.arch} / {model_label(wc.fold)}"
        + (f", external test: {run_of(wc).test_dataset}" if run_of(wc).external else ""),
    shell:
        'python "$DEEPBC_WORKFLOW_DIR/{params.script}" --model-dir {params.model_dir:q} --shard-index {input.test_index:q}'
        " --out {output.test:q} --val-shard-index {input.val_index:q} --val-out {output.val:q}"
        " --gradcam-png {output.gradcam:q} --classes {params.classes:q} --seed {params.seed}"
        " --title {params.title:q} --split-audit {input.split_audit:q} --threads {threads} --log {log:q}"


rule predict_folder:
    """Classify new images: snakemake --cores 2 results/new_predictions/{run}/{arch}/fold{fold}/{folder}.csv
    with the images in new_images/{folder}/ (and optionally new_images/{folder}.patients.csv)."""
    input:
        model=rules.train.output.settings,
        images="new_images/{folder}",
    output:
        "results/new_predictions/{run}/{arch}/fold{fold}/{folder}.csv",
    log:
        "results/logs/predict_folder/{run}/{arch}/fold{fold}/{folder}.log",
    benchmark:
        "results/benchmarks/predict_folder/{run}/{arch}/fold{fold}/{folder}.tsv"
    conda:
        GPU_ENV
    threads: RES["eval_threads"]
    resources:
        gpu=RES["gpu"],
        mem_mb=RES["eval_mem_mb"],
    params:
        script=script("predict_folder.py"),
        model_dir=lambda wc: layout.model_dir(wc.run, wc.arch, wc.fold),
        model=model_fingerprint,
        patients=lambda wc: shlex.join(layout.predict_patient_options(wc.run, wc.arch, wc.fold, wc.folder)),
    shell:
        'python "$DEEPBC_WORKFLOW_DIR/{params.script}" --model-dir {params.model_dir:q} --images {input.images:q}'
        " --out {output:q} {params.patients} --threads {threads} --log {log:q}"


rule export_model:
    """A kept model as a TensorFlow SavedModel: encoded images in, class probabilities out."""
    input:
        model=rules.train.output.settings,
        checkpoint=rules.train.output.model,
    output:
        directory("results/export/{run}/{arch}/fold{fold}"),
    log:
        "results/logs/export/{run}/{arch}/fold{fold}.log",
    benchmark:
        "results/benchmarks/export/{run}/{arch}/fold{fold}.tsv"
    conda:
        GPU_ENV
    threads: RES["eval_threads"]
    resources:
        gpu=RES["gpu"],
        mem_mb=RES["eval_mem_mb"],
        runtime=RES["eval_runtime"],
    params:
        script=script("export_model.py"),
        model_dir=lambda wc: layout.model_dir(wc.run, wc.arch, wc.fold),
        model=model_fingerprint,
    shell:
        'python "$DEEPBC_WORKFLOW_DIR/{params.script}" --model-dir {params.model_dir:q} --out {output:q}'
        " --threads {threads} --log {log:q}"
