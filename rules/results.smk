from types import SimpleNamespace


rule metrics:
    input:
        predictions="results/predictions/{run}/{arch}/fold{fold}.parquet",
        # Whether the dataset maps images to patients (the results' grouping).
        manifest=manifest_of_run,
    output:
        "results/metrics/{run}/{arch}/fold{fold}.json",
    params:
        script=script("compute_metrics.py"),
        classes=lambda wc: task_classes(run_task(wc.run)),
        evaluation=section_json("evaluation"),
        seed=config["seed"],
    log:
        "results/logs/metrics/{run}/{arch}/fold{fold}.log",
    benchmark:
        "results/benchmarks/metrics/{run}/{arch}/fold{fold}.tsv"
    conda:
        "../envs/cpu.yaml"
    shell:
        "python \"$DEEPBC_WORKFLOW_DIR/{params.script}\" --predictions {input.predictions:q} --classes {params.classes:q}"
        " --run {wildcards.run} --arch {wildcards.arch} --fold {wildcards.fold}"
        " --manifest {input.manifest:q} --evaluation-json {params.evaluation:q} --seed {params.seed}"
        " --out {output:q} --log {log:q}"


rule task_table:
    input:
        lambda wc: metrics_files(runs_of_task(wc.task)),
    output:
        csv=report("results/tables/{task}.csv", caption="../report/table_task.rst", category="Tables"),
        md="results/tables/{task}.md",
        tex="results/tables/{task}.tex",
    params:
        script=script("make_table.py"),
    log:
        "results/logs/tables/{task}.log",
    benchmark:
        "results/benchmarks/tables/{task}.tsv"
    conda:
        "../envs/cpu.yaml"
    shell:
        "python \"$DEEPBC_WORKFLOW_DIR/{params.script}\" --task {wildcards.task} --metrics {input:q}"
        " --out-csv {output.csv:q} --out-md {output.md:q} --out-tex {output.tex:q} --log {log:q}"


rule summary_table:
    input:
        metrics=metrics_files(RUNS),
        # The architecture is chosen on the kept checkpoints' validation figures.
        models=patient_model_files("settings.json"),
        curves=patient_model_files("training.csv"),
    output:
        csv=report("results/tables/summary.csv", caption="../report/table_summary.rst", category="Tables"),
        md="results/tables/summary.md",
    params:
        script=script("make_summary.py"),
    log:
        "results/logs/tables/summary.log",
    benchmark:
        "results/benchmarks/tables/summary.tsv"
    conda:
        "../envs/cpu.yaml"
    shell:
        "python \"$DEEPBC_WORKFLOW_DIR/{params.script}\" --metrics {input.metrics:q} --models {input.models:q}"
        " --out-csv {output.csv:q} --out-md {output.md:q} --log {log:q}"


rule leakage_table:
    input:
        metrics_files(RUNS),
    output:
        csv=report("results/tables/leakage.csv", caption="../report/table_leakage.rst", category="Tables"),
        md="results/tables/leakage.md",
    params:
        script=script("make_leakage.py"),
    log:
        "results/logs/tables/leakage.log",
    benchmark:
        "results/benchmarks/tables/leakage.tsv"
    conda:
        "../envs/cpu.yaml"
    shell:
        "python \"$DEEPBC_WORKFLOW_DIR/{params.script}\" --metrics {input:q} --out-csv {output.csv:q} --out-md {output.md:q}"
        " --log {log:q}"


rule roc_figure:
    input:
        predictions=lambda wc: expand("results/predictions/{run}/{arch}/fold{fold}.parquet",
                                      run=runs_of_task(wc.task), arch=ARCHS, fold=FOLDS),
        # Every run of a task uses the task's dataset: any run names its manifest.
        manifest=lambda wc: manifest_of_run(SimpleNamespace(run=runs_of_task(wc.task)[0])),
    output:
        png=report("results/figures/roc/{task}.png", caption="../report/roc.rst", category="ROC curves"),
        pdf="results/figures/roc/{task}.pdf",
    params:
        script=script("plot_roc.py"),
        classes=lambda wc: task_classes(wc.task),
    log:
        "results/logs/figures/roc/{task}.log",
    benchmark:
        "results/benchmarks/figures/roc/{task}.tsv"
    conda:
        "../envs/cpu.yaml"
    shell:
        "python \"$DEEPBC_WORKFLOW_DIR/{params.script}\" --task {wildcards.task} --classes {params.classes:q}"
        " --predictions {input.predictions:q} --manifest {input.manifest:q}"
        " --out-png {output.png:q} --out-pdf {output.pdf:q} --log {log:q}"


rule confusion_figure:
    input:
        predictions=lambda wc: expand("results/predictions/{run}/{arch}/fold{fold}.parquet",
                                      run=wc.run, arch=wc.arch, fold=FOLDS),
        manifest=manifest_of_run,
    output:
        png=report("results/figures/confusion/{run}/{arch}.png", caption="../report/confusion.rst",
                   category="Confusion matrices"),
        pdf="results/figures/confusion/{run}/{arch}.pdf",
    params:
        script=script("plot_confusion.py"),
        classes=lambda wc: task_classes(run_task(wc.run)),
    log:
        "results/logs/figures/confusion/{run}/{arch}.log",
    benchmark:
        "results/benchmarks/figures/confusion/{run}/{arch}.tsv"
    conda:
        "../envs/cpu.yaml"
    shell:
        "python \"$DEEPBC_WORKFLOW_DIR/{params.script}\" --classes {params.classes:q} --predictions {input.predictions:q}"
        " --manifest {input.manifest:q} --out-png {output.png:q} --out-pdf {output.pdf:q} --log {log:q}"


rule training_figure:
    input:
        lambda wc: expand("results/models/{run}/{arch}/fold{fold}/training.csv",
                          run=wc.run, arch=wc.arch, fold=FOLDS),
    output:
        png=report("results/figures/training/{run}/{arch}.png", caption="../report/training.rst",
                   category="Training curves"),
        pdf="results/figures/training/{run}/{arch}.pdf",
    params:
        script=script("plot_training.py"),
        title=lambda wc: f"{wc.run} / {wc.arch}",
    log:
        "results/logs/figures/training/{run}/{arch}.log",
    benchmark:
        "results/benchmarks/figures/training/{run}/{arch}.tsv"
    conda:
        "../envs/cpu.yaml"
    shell:
        "python \"$DEEPBC_WORKFLOW_DIR/{params.script}\" --training {input:q} --title {params.title:q}"
        " --out-png {output.png:q} --out-pdf {output.pdf:q} --log {log:q}"
