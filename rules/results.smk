rule metrics:
    input:
        predictions="results/predictions/{run}/{arch}/fold{fold}.parquet",
        # The temperature scaling is fitted on the validation split, never on test.
        validation="results/validation_predictions/{run}/{arch}/fold{fold}.parquet",
        # Whether the test dataset maps images to patients (the results' grouping).
        manifest=lambda wc: run_of(wc).test_manifest,
        # The split's scheme and label, and the classes this fold's validation set lacks (meta.split).
        split_audit=layout.split_audit("{run}", "json"),
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
        classes=lambda wc: run_of(wc).classes,
        # The magnification the task trained on (meta.magnification, for the magnification table).
        magnification=lambda wc: run_of(wc).magnification,
        external=external_option("--external-test", lambda run: run.test_dataset),
        evaluation=section_json("evaluation"),
        seed=config["seed"],
    shell:
        'python "$DEEPBC_WORKFLOW_DIR/{params.script}" --predictions {input.predictions:q} --classes {params.classes:q}'
        " --validation-predictions {input.validation:q} --run {wildcards.run} --arch {wildcards.arch} --fold {wildcards.fold}"
        " --manifest {input.manifest:q} --magnification {params.magnification} {params.external}"
        " --evaluation-json {params.evaluation:q} --split-audit {input.split_audit:q} --seed {params.seed}"
        " --out {output:q} --log {log:q}"


rule pooled_metrics:
    input:
        # Every fold's test predictions of one repeat ({repeat}: "" for repeat 0, else _r1, ...): the
        # headline figures pool them (deepbc/evaluation/pooled.py); the tables average the repeats.
        predictions=lambda wc: PLAN.predictions_files([wc.run], [wc.arch], [parse_repeat_suffix(wc.repeat)]),
        manifest=lambda wc: run_of(wc).test_manifest,
    output:
        "results/metrics/{run}/{arch}/pooled{repeat}.json",
    log:
        "results/logs/metrics/{run}/{arch}/pooled{repeat}.log",
    benchmark:
        "results/benchmarks/metrics/{run}/{arch}/pooled{repeat}.tsv"
    conda:
        "../envs/cpu.yaml"
    params:
        script=script("pool_metrics.py"),
        classes=lambda wc: run_of(wc).classes,
        magnification=lambda wc: run_of(wc).magnification,
        external=external_option("--external-test", lambda run: run.test_dataset),
        evaluation=section_json("evaluation"),
        seed=config["seed"],
    shell:
        'python "$DEEPBC_WORKFLOW_DIR/{params.script}" --predictions {input.predictions:q} --classes {params.classes:q}'
        " --run {wildcards.run} --arch {wildcards.arch} --manifest {input.manifest:q}"
        " --magnification {params.magnification} {params.external} --evaluation-json {params.evaluation:q}"
        " --seed {params.seed} --out {output:q} --log {log:q}"


rule task_table:
    input:
        metrics=lambda wc: PLAN.metrics_files(PLAN.runs_of_task(wc.task)),
        pooled=lambda wc: PLAN.pooled_files(PLAN.runs_of_task(wc.task)),
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
        'python "$DEEPBC_WORKFLOW_DIR/{params.script}" --task {wildcards.task} --metrics {input.metrics:q}'
        " --pooled {input.pooled:q} --out-csv {output.csv:q} --out-md {output.md:q} --out-tex {output.tex:q}"
        " --log {log:q}"


rule per_class_table:
    input:
        lambda wc: PLAN.pooled_files(PLAN.runs_of_task(wc.task)),
    output:
        csv=report("results/tables/{task}_per_class.csv", caption="../report/table_per_class.rst", category="Tables"),
        md="results/tables/{task}_per_class.md",
    log:
        "results/logs/tables/{task}_per_class.log",
    benchmark:
        "results/benchmarks/tables/{task}_per_class.tsv"
    conda:
        "../envs/cpu.yaml"
    params:
        script=script("make_per_class_table.py"),
    shell:
        'python "$DEEPBC_WORKFLOW_DIR/{params.script}" --task {wildcards.task} --pooled {input:q}'
        " --out-csv {output.csv:q} --out-md {output.md:q} --log {log:q}"


rule summary_table:
    input:
        metrics=PLAN.metrics_files(),
        pooled=PLAN.pooled_files(PLAN.patient_runs()),
        # The architecture is chosen on the kept checkpoints' validation figures.
        models=PLAN.model_files("settings.json", PLAN.patient_runs()),
        curves=PLAN.model_files("training.csv", PLAN.patient_runs()),
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
        models=PLAN.model_fingerprints(PLAN.patient_runs()),
    shell:
        'python "$DEEPBC_WORKFLOW_DIR/{params.script}" --metrics {input.metrics:q} --pooled {input.pooled:q}'
        " --models {input.models:q} --out-csv {output.csv:q} --out-md {output.md:q} --log {log:q}"


rule leakage_table:
    input:
        # Both protocols' pooled figures, with their paired bootstrap draws.
        PLAN.pooled_files(),
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
        'python "$DEEPBC_WORKFLOW_DIR/{params.script}" --pooled {input:q} --out-csv {output.csv:q} --out-md {output.md:q}'
        " --log {log:q}"


rule magnification_table:
    input:
        metrics=PLAN.metrics_files(PLAN.magnification_runs()),
        pooled=PLAN.pooled_files(PLAN.magnification_runs()),
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
        'python "$DEEPBC_WORKFLOW_DIR/{params.script}" --metrics {input.metrics:q} --pooled {input.pooled:q}'
        " --out-csv {output.csv:q} --out-md {output.md:q} --out-tex {output.tex:q} --log {log:q}"


rule leaderboard_table:
    input:
        metrics=PLAN.metrics_files(PLAN.leaderboard_runs()),
        pooled=PLAN.pooled_files(PLAN.leaderboard_runs()),
        # How each model was trained (a linear probe trains the logits only).
        models=PLAN.model_files("settings.json", PLAN.leaderboard_runs()),
    output:
        csv=report("results/tables/leaderboard.csv", caption="../report/table_leaderboard.rst", category="Tables"),
        md="results/tables/leaderboard.md",
    log:
        "results/logs/tables/leaderboard.log",
    benchmark:
        "results/benchmarks/tables/leaderboard.tsv"
    conda:
        "../envs/cpu.yaml"
    params:
        script=script("make_leaderboard.py"),
        leaderboards=json.dumps(PLAN.leaderboards(), sort_keys=True),
        models=PLAN.model_fingerprints(PLAN.leaderboard_runs()),
    shell:
        'python "$DEEPBC_WORKFLOW_DIR/{params.script}" --metrics {input.metrics:q} --pooled {input.pooled:q}'
        " --models {input.models:q} --leaderboards {params.leaderboards:q} --out-csv {output.csv:q}"
        " --out-md {output.md:q} --log {log:q}"


rule calibration_table:
    input:
        PLAN.metrics_files(),
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
        # Repeat 0's models (train.repeats: the tables give the spread between repeats).
        predictions=lambda wc: PLAN.predictions_files(PLAN.runs_of_task(wc.task), repeats=[0]),
        # Every run of a task is tested on the same dataset.
        manifest=lambda wc: run_of(wc).test_manifest,
        # The runs' splits: a predefined split or repeated holdouts is named in the title.
        split_audit=lambda wc: PLAN.split_audits(PLAN.runs_of_task(wc.task)),
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
        classes=lambda wc: run_of(wc).classes,
        external=external_option("--external-test", lambda run: run.test_dataset),
    shell:
        'python "$DEEPBC_WORKFLOW_DIR/{params.script}" --task {wildcards.task} --classes {params.classes:q}'
        " --predictions {input.predictions:q} --manifest {input.manifest:q} {params.external}"
        " --split-audit {input.split_audit:q} --out-png {output.png:q} --out-pdf {output.pdf:q} --log {log:q}"


rule calibration_figure:
    input:
        # Repeat 0's models (train.repeats: the tables give the spread between repeats).
        predictions=lambda wc: PLAN.predictions_files(PLAN.runs_of_task(wc.task), repeats=[0]),
        # Every run of a task is tested on the same dataset.
        manifest=lambda wc: run_of(wc).test_manifest,
        # The runs' splits: a predefined split or repeated holdouts is named in the title.
        split_audit=lambda wc: PLAN.split_audits(PLAN.runs_of_task(wc.task)),
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
        classes=lambda wc: run_of(wc).classes,
        external=external_option("--external-test", lambda run: run.test_dataset),
    shell:
        'python "$DEEPBC_WORKFLOW_DIR/{params.script}" --task {wildcards.task} --classes {params.classes:q}'
        " --predictions {input.predictions:q} --manifest {input.manifest:q} {params.external}"
        " --split-audit {input.split_audit:q} --out-png {output.png:q} --out-pdf {output.pdf:q} --log {log:q}"


rule confusion_figure:
    input:
        predictions=lambda wc: PLAN.predictions_files([wc.run], [wc.arch], repeats=[0]),
        manifest=lambda wc: run_of(wc).test_manifest,
        split_audit=layout.split_audit("{run}", "json"),
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
        classes=lambda wc: run_of(wc).classes,
        external=external_option("--external-test", lambda run: run.test_dataset),
    shell:
        'python "$DEEPBC_WORKFLOW_DIR/{params.script}" --classes {params.classes:q} --predictions {input.predictions:q}'
        " --manifest {input.manifest:q} {params.external} --split-audit {input.split_audit:q}"
        " --out-png {output.png:q} --out-pdf {output.pdf:q} --log {log:q}"


rule training_figure:
    input:
        training=lambda wc: PLAN.model_files("training.csv", [wc.run], [wc.arch], repeats=[0]),
        split_audit=layout.split_audit("{run}", "json"),
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
        'python "$DEEPBC_WORKFLOW_DIR/{params.script}" --training {input.training:q} --title {params.title:q}'
        " --split-audit {input.split_audit:q} --out-png {output.png:q} --out-pdf {output.pdf:q} --log {log:q}"
