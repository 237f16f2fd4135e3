rule metrics:
    input:
        predictions="results/predictions/{run}/{arch}/fold{fold}.parquet",
        # The temperature scaling is fitted on the validation split, never on test.
        validation="results/validation_predictions/{run}/{arch}/fold{fold}.parquet",
        # Whether the test dataset maps images to patients (the results' grouping).
        manifest=test_manifest_of_run,
    output:
        "results/metrics/{run}/{arch}/fold{fold}.json",
    log:
        "results/logs/metrics/{run}/{arch}/fold{fold}.log",
    benchmark:
        "results/benchmarks/metrics/{run}/{arch}/fold{fold}.tsv"
    conda:
        "../envs/cpu.yaml"
    params:
        script=script("compute_metrics.py"),
        classes=lambda wc: task_classes(run_task(wc.run)),
        # The magnification the task trained on (meta.magnification, for the magnification table).
        magnification=lambda wc: TASKS[run_task(wc.run)]["magnification"],
        external=external_option("--external-test", run_test_dataset),
        evaluation=section_json("evaluation"),
        seed=config["seed"],
    shell:
        'python "$DEEPBC_WORKFLOW_DIR/{params.script}" --predictions {input.predictions:q} --classes {params.classes:q}'
        " --validation-predictions {input.validation:q} --run {wildcards.run} --arch {wildcards.arch} --fold {wildcards.fold}"
        " --manifest {input.manifest:q} --magnification {params.magnification} {params.external}"
        " --evaluation-json {params.evaluation:q} --seed {params.seed}"
        " --out {output:q} --log {log:q}"


rule task_table:
    input:
        lambda wc: metrics_files(runs_of_task(wc.task)),
    output:
        csv=report("results/tables/{task}.csv", caption="../report/table_task.rst", category="Tables"),
        md="results/tables/{task}.md",
        tex="results/tables/{task}.tex",
    log:
        "results/logs/tables/{task}.log",
    benchmark:
        "results/benchmarks/tables/{task}.tsv"
    conda:
        "../envs/cpu.yaml"
    params:
        script=script("make_table.py"),
    shell:
        'python "$DEEPBC_WORKFLOW_DIR/{params.script}" --task {wildcards.task} --metrics {input:q}'
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
    log:
        "results/logs/tables/summary.log",
    benchmark:
        "results/benchmarks/tables/summary.tsv"
    conda:
        "../envs/cpu.yaml"
    params:
        script=script("make_summary.py"),
        models=patient_model_fingerprints(),
    shell:
        'python "$DEEPBC_WORKFLOW_DIR/{params.script}" --metrics {input.metrics:q} --models {input.models:q}'
        " --out-csv {output.csv:q} --out-md {output.md:q} --log {log:q}"


rule leakage_table:
    input:
        metrics_files(RUNS),
    output:
        csv=report("results/tables/leakage.csv", caption="../report/table_leakage.rst", category="Tables"),
        md="results/tables/leakage.md",
    log:
        "results/logs/tables/leakage.log",
    benchmark:
        "results/benchmarks/tables/leakage.tsv"
    conda:
        "../envs/cpu.yaml"
    params:
        script=script("make_leakage.py"),
    shell:
        'python "$DEEPBC_WORKFLOW_DIR/{params.script}" --metrics {input:q} --out-csv {output.csv:q} --out-md {output.md:q}'
        " --log {log:q}"


rule magnification_table:
    input:
        metrics_files(magnification_runs()),
    output:
        csv=report("results/tables/magnification.csv", caption="../report/table_magnification.rst", category="Tables"),
        md="results/tables/magnification.md",
        tex="results/tables/magnification.tex",
    log:
        "results/logs/tables/magnification.log",
    benchmark:
        "results/benchmarks/tables/magnification.tsv"
    conda:
        "../envs/cpu.yaml"
    params:
        script=script("make_magnification_table.py"),
    shell:
        'python "$DEEPBC_WORKFLOW_DIR/{params.script}" --metrics {input:q}'
        " --out-csv {output.csv:q} --out-md {output.md:q} --out-tex {output.tex:q} --log {log:q}"


rule calibration_table:
    input:
        metrics_files(RUNS),
    output:
        csv=report("results/tables/calibration.csv", caption="../report/table_calibration.rst", category="Tables"),
        md="results/tables/calibration.md",
        tex="results/tables/calibration.tex",
    log:
        "results/logs/tables/calibration.log",
    benchmark:
        "results/benchmarks/tables/calibration.tsv"
    conda:
        "../envs/cpu.yaml"
    params:
        script=script("make_calibration_table.py"),
    shell:
        'python "$DEEPBC_WORKFLOW_DIR/{params.script}" --metrics {input:q}'
        " --out-csv {output.csv:q} --out-md {output.md:q} --out-tex {output.tex:q} --log {log:q}"


rule roc_figure:
    input:
        predictions=lambda wc: expand(
            "results/predictions/{run}/{arch}/fold{fold}.parquet", run=runs_of_task(wc.task), arch=ARCHS, fold=FOLDS
        ),
        # Every run of a task is tested on the same dataset: any run names its manifest.
        manifest=lambda wc: test_manifest(runs_of_task(wc.task)[0]),
    output:
        png=report("results/figures/roc/{task}.png", caption="../report/roc.rst", category="ROC curves"),
        pdf="results/figures/roc/{task}.pdf",
    log:
        "results/logs/figures/roc/{task}.log",
    benchmark:
        "results/benchmarks/figures/roc/{task}.tsv"
    conda:
        "../envs/cpu.yaml"
    params:
        script=script("plot_roc.py"),
        classes=lambda wc: task_classes(wc.task),
        external=external_option("--external-test", run_test_dataset),
    shell:
        'python "$DEEPBC_WORKFLOW_DIR/{params.script}" --task {wildcards.task} --classes {params.classes:q}'
        " --predictions {input.predictions:q} --manifest {input.manifest:q} {params.external}"
        " --out-png {output.png:q} --out-pdf {output.pdf:q} --log {log:q}"


rule calibration_figure:
    input:
        predictions=lambda wc: expand(
            "results/predictions/{run}/{arch}/fold{fold}.parquet", run=runs_of_task(wc.task), arch=ARCHS, fold=FOLDS
        ),
        manifest=lambda wc: test_manifest(runs_of_task(wc.task)[0]),
    output:
        png=report(
            "results/figures/calibration/{task}.png", caption="../report/calibration.rst", category="Calibration"
        ),
        pdf="results/figures/calibration/{task}.pdf",
    log:
        "results/logs/figures/calibration/{task}.log",
    benchmark:
        "results/benchmarks/figures/calibration/{task}.tsv"
    conda:
        "../envs/cpu.yaml"
    params:
        script=script("plot_calibration.py"),
        classes=lambda wc: task_classes(wc.task),
        external=external_option("--external-test", run_test_dataset),
    shell:
        'python "$DEEPBC_WORKFLOW_DIR/{params.script}" --task {wildcards.task} --classes {params.classes:q}'
        " --predictions {input.predictions:q} --manifest {input.manifest:q} {params.external}"
        " --out-png {output.png:q} --out-pdf {output.pdf:q} --log {log:q}"


rule confusion_figure:
    input:
        predictions=lambda wc: expand(
            "results/predictions/{run}/{arch}/fold{fold}.parquet", run=wc.run, arch=wc.arch, fold=FOLDS
        ),
        manifest=test_manifest_of_run,
    output:
        png=report(
            "results/figures/confusion/{run}/{arch}.png",
            caption="../report/confusion.rst",
            category="Confusion matrices",
        ),
        pdf="results/figures/confusion/{run}/{arch}.pdf",
    log:
        "results/logs/figures/confusion/{run}/{arch}.log",
    benchmark:
        "results/benchmarks/figures/confusion/{run}/{arch}.tsv"
    conda:
        "../envs/cpu.yaml"
    params:
        script=script("plot_confusion.py"),
        classes=lambda wc: task_classes(run_task(wc.run)),
        external=external_option("--external-test", run_test_dataset),
    shell:
        'python "$DEEPBC_WORKFLOW_DIR/{params.script}" --classes {params.classes:q} --predictions {input.predictions:q}'
        " --manifest {input.manifest:q} {params.external} --out-png {output.png:q} --out-pdf {output.pdf:q}"
        " --log {log:q}"


rule training_figure:
    input:
        lambda wc: expand("results/models/{run}/{arch}/fold{fold}/training.csv", run=wc.run, arch=wc.arch, fold=FOLDS),
    output:
        png=report(
            "results/figures/training/{run}/{arch}.png", caption="../report/training.rst", category="Training curves"
        ),
        pdf="results/figures/training/{run}/{arch}.pdf",
    log:
        "results/logs/figures/training/{run}/{arch}.log",
    benchmark:
        "results/benchmarks/figures/training/{run}/{arch}.tsv"
    conda:
        "../envs/cpu.yaml"
    params:
        script=script("plot_training.py"),
        model=model_fingerprint,
        title=lambda wc: f"{wc.run} / {wc.arch}",
    shell:
        'python "$DEEPBC_WORKFLOW_DIR/{params.script}" --training {input:q} --title {params.title:q}'
        " --out-png {output.png:q} --out-pdf {output.pdf:q} --log {log:q}"
