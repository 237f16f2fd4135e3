rule make_demo:
    output:
        # Snakemake marks directory outputs with a .snakemake_timestamp file: keep it outside the
        # dataset root, which must hold only dataset files.
        directory("results/demo/{demo}"),
    log:
        "results/logs/make_demo/{demo}.log",
    benchmark:
        "results/benchmarks/make_demo/{demo}.tsv"
    wildcard_constraints:
        demo="|".join(datasets_config.DEMO_ROOT_FOLDERS),
    conda:
        "../envs/cpu.yaml"
    threads: RES["data_threads"]
    params:
        script=script("make_demo.py"),
        seed=config["seed"],
        scale=config["demo_scale"],
    shell:
        'python "$DEEPBC_WORKFLOW_DIR/{params.script}" --demo {wildcards.demo} --out {output:q}'
        " --seed {params.seed} --scale {params.scale} --workers {threads} --log {log:q}"


rule check_dataset:
    input:
        lambda wc: datasets_config.demo_input(config, PLAN.dataset_specs, wc.dataset),
    output:
        manifest="results/manifest/{dataset}.parquet",
        rejects="results/manifest/{dataset}.rejects.csv",
    log:
        "results/logs/check_dataset/{dataset}.log",
    benchmark:
        "results/benchmarks/check_dataset/{dataset}.tsv"
    conda:
        "../envs/cpu.yaml"
    threads: RES["data_threads"]
    resources:
        mem_mb=RES["data_mem_mb"],
    params:
        script=script("check_dataset.py"),
        root=lambda wc: PLAN.dataset_root(wc.dataset),
        options=lambda wc: datasets_config.options(PLAN.dataset_specs, wc.dataset),
    shell:
        'python "$DEEPBC_WORKFLOW_DIR/{params.script}" --dataset {wildcards.dataset} --root {params.root:q}'
        " {params.options} --workers {threads}"
        " --manifest {output.manifest:q} --rejects {output.rejects:q} --log {log:q}"


rule make_splits:
    input:
        manifest=lambda wc: run_of(wc).manifest,
        test_manifest=external_input(lambda run: run.test_manifest),
        # A predefined split's CSV (splits.predefined): a change to it remakes the splits.
        predefined=lambda wc: run_of(wc).split_settings["predefined"] or [],
    output:
        splits="results/splits/{run}.parquet",
        audit_json=layout.split_audit("{run}", "json"),
        audit_csv=layout.split_audit("{run}", "csv"),
        audit_md=layout.split_audit("{run}", "md"),
    log:
        "results/logs/make_splits/{run}.log",
    benchmark:
        "results/benchmarks/make_splits/{run}.tsv"
    conda:
        "../envs/cpu.yaml"
    params:
        script=script("make_splits.py"),
        task=lambda wc: run_of(wc).task,
        task_json=lambda wc: json.dumps(run_of(wc).definition, sort_keys=True),
        protocol=lambda wc: run_of(wc).protocol,
        test_manifest=external_option("--test-manifest", lambda run: run.test_manifest),
        # The splits section with the task's own splits over it.
        splits=lambda wc: json.dumps(run_of(wc).split_settings, sort_keys=True),
        seed=config["seed"],
    shell:
        'python "$DEEPBC_WORKFLOW_DIR/{params.script}" --manifest {input.manifest:q} --task {params.task}'
        " --task-json {params.task_json:q} --protocol {params.protocol} --splits-json {params.splits:q}"
        " --seed {params.seed} {params.test_manifest} --out {output.splits:q} --audit-json {output.audit_json:q}"
        " --audit-csv {output.audit_csv:q} --audit-md {output.audit_md:q} --log {log:q}"


rule fit_stain:
    input:
        reference=config["shards"]["stain_reference"] or [],
        manifests=PLAN.manifests(),
    output:
        "results/stain/reference.json",
    log:
        "results/logs/fit_stain.log",
    benchmark:
        "results/benchmarks/fit_stain.tsv"
    conda:
        "../envs/cpu.yaml"
    params:
        script=script("fit_stain.py"),
        stain=json.dumps({k: config["shards"][k] for k in ("stain_normalization", "stain_reference")}, sort_keys=True),
        roots=[PLAN.dataset_root(d) for d in PLAN.datasets],
    shell:
        'python "$DEEPBC_WORKFLOW_DIR/{params.script}" --shards-json {params.stain:q} --manifests {input.manifests:q}'
        " --roots {params.roots:q} --out {output:q} --log {log:q}"


rule encode_dataset:
    input:
        manifest="results/manifest/{dataset}.parquet",
        stain=STAIN_JSON or [],
    output:
        layout.store_index("{dataset}"),
    log:
        "results/logs/encode_dataset/{dataset}.log",
    benchmark:
        "results/benchmarks/encode_dataset/{dataset}.tsv"
    conda:
        "../envs/cpu.yaml"
    threads: RES["data_threads"]
    resources:
        mem_mb=RES["data_mem_mb"],
    params:
        script=script("encode_dataset.py"),
        root=lambda wc: PLAN.dataset_root(wc.dataset),
        out_dir=lambda wc: os.path.dirname(layout.store_index(wc.dataset)),
        shards=section_json("shards"),
        seed=config["seed"],
        stain=f"--stain-json {STAIN_JSON}" if STAIN_JSON else "",
    shell:
        'python "$DEEPBC_WORKFLOW_DIR/{params.script}" --manifest {input.manifest:q} --root {params.root:q}'
        " --out-dir {params.out_dir:q} --shards-json {params.shards:q} {params.stain} --seed {params.seed}"
        " --workers {threads} --log {log:q}"


rule write_shards:
    input:
        splits="results/splits/{run}.parquet",
        store=lambda wc: checked_store(run_of(wc).dataset),
        test_store=external_input(lambda run: checked_store(run.test_dataset)),
    output:
        [layout.shard_index("{run}", "{fold}", split) for split in SPLITS],
    log:
        "results/logs/write_shards/{run}/fold{fold}.log",
    benchmark:
        "results/benchmarks/write_shards/{run}/fold{fold}.tsv"
    # A fold's shards, read by every repeat of its model: no repeat suffix here.
    wildcard_constraints:
        fold=r"\d+",
    conda:
        "../envs/cpu.yaml"
    params:
        script=script("write_shards.py"),
        test_store=external_option("--test-store", lambda run: run.test_store),
        out_dir=lambda wc: f"results/tfrecords/{wc.run}/fold{wc.fold}",
    shell:
        'python "$DEEPBC_WORKFLOW_DIR/{params.script}" --splits {input.splits:q} --store {input.store:q}'
        " {params.test_store} --fold {wildcards.fold} --out-dir {params.out_dir:q} --log {log:q}"
