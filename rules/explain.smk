rule gradcam_figure:
    input:
        model=rules.train.output.settings,
        checkpoint=rules.train.output.model,
        test_index=checked_shard_index("test"),
        predictions=rules.evaluate.output.test,
    output:
        report(
            "results/figures/gradcam/{run}/{arch}/fold{fold}.png",
            caption="../report/gradcam.rst",
            category="Grad-CAM",
            subcategory="{run} / {arch}",
        ),
    log:
        "results/logs/figures/gradcam/{run}/{arch}/fold{fold}.log",
    benchmark:
        "results/benchmarks/figures/gradcam/{run}/{arch}/fold{fold}.tsv"
    conda:
        GPU_ENV
    threads: RES["eval_threads"]
    resources:
        gpu=RES["gpu"],
        mem_mb=RES["eval_mem_mb"],
        runtime=RES["eval_runtime"],
    params:
        script=script("plot_gradcam.py"),
        model_dir=lambda wc: model_dir(wc.run, wc.arch, wc.fold),
        classes=lambda wc: task_classes(run_task(wc.run)),
        seed=config["seed"],
        title=lambda wc: f"{wc.run} / {wc.arch} / fold {wc.fold}"
        + (f", external test: {run_test_dataset(wc.run)}" if is_external(wc.run) else ""),
    shell:
        'python "$DEEPBC_WORKFLOW_DIR/{params.script}" --model-dir {params.model_dir:q} --shard-index {input.test_index:q}'
        " --predictions {input.predictions:q} --classes {params.classes:q} --seed {params.seed}"
        " --title {params.title:q} --out-png {output:q} --threads {threads} --log {log:q}"
