rule gradcam_figure:
    input:
        model=rules.train.output.settings,
        checkpoint=rules.train.output.model,
        shards=lambda wc: checked_shard_indexes(wc.run, wc.fold, ["test"]),
        predictions=rules.evaluate.output[0],
    output:
        report("results/figures/gradcam/{run}/{arch}/fold{fold}.png", caption="../report/gradcam.rst",
               category="Grad-CAM", subcategory="{run} / {arch}"),
    params:
        script=script("plot_gradcam.py"),
        model_dir=lambda wc: model_dir(wc.run, wc.arch, wc.fold),
        classes=lambda wc: task_classes(run_task(wc.run)),
        seed=config["seed"],
        title=lambda wc: f"{wc.run} / {wc.arch} / fold {wc.fold}",
    threads: RES.get("eval_threads", 2)
    resources:
        gpu=RES.get("gpu", 1),
        mem_mb=RES.get("eval_mem_mb", 8000),
        runtime=RES.get("eval_runtime", 60),
    log:
        "results/logs/figures/gradcam/{run}/{arch}/fold{fold}.log",
    benchmark:
        "results/benchmarks/figures/gradcam/{run}/{arch}/fold{fold}.tsv"
    conda:
        GPU_ENV
    shell:
        "python \"$DEEPBC_WORKFLOW_DIR/{params.script}\" --model-dir {params.model_dir:q} --shard-index {input.shards:q}"
        " --predictions {input.predictions:q} --classes {params.classes:q} --seed {params.seed}"
        " --title {params.title:q} --out-png {output:q} --threads {threads} --log {log:q}"
