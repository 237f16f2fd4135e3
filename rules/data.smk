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
        demo_inputs,
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
        root=lambda wc: dataset_root(wc.dataset),
        options=lambda wc: dataset_options(wc.dataset),
    shell:
        'python "$DEEPBC_WORKFLOW_DIR/{params.script}" --dataset {wildcards.dataset} --root {params.root:q}'
        " {params.options} --workers {threads}"
        " --manifest {output.manifest:q} --rejects {output.rejects:q} --log {log:q}"


rule make_splits:
    input:
        manifest=manifest_of_run,
        test_manifest=external_test_manifest,
    output:
        "results/splits/{run}.parquet",
    log:
        "results/logs/make_splits/{run}.log",
    benchmark:
        "results/benchmarks/make_splits/{run}.tsv"
    conda:
        "../envs/cpu.yaml"
    params:
        script=script("make_splits.py"),
        task=lambda wc: run_task(wc.run),
        task_json=task_json,
        protocol=lambda wc: run_protocol(wc.run),
        test_manifest=external_option("--test-manifest", test_manifest),
        splits=section_json("splits"),
        seed=config["seed"],
    shell:
        'python "$DEEPBC_WORKFLOW_DIR/{params.script}" --manifest {input.manifest:q} --task {params.task}'
        " --task-json {params.task_json:q} --protocol {params.protocol} --splits-json {params.splits:q}"
        " --seed {params.seed} {params.test_manifest} --out {output:q} --log {log:q}"


rule fit_stain:
    input:
        reference=stain_reference,
        manifests=expand("results/manifest/{dataset}.parquet", dataset=DATASETS),
    output:
        STAIN_JSON,
    log:
        "results/logs/fit_stain.log",
    benchmark:
        "results/benchmarks/fit_stain.tsv"
    conda:
        "../envs/cpu.yaml"
    params:
        script=script("fit_stain.py"),
        stain=json.dumps({k: config["shards"][k] for k in ("stain_normalization", "stain_reference")}, sort_keys=True),
        roots=[dataset_root(d) for d in DATASETS],
    shell:
        'python "$DEEPBC_WORKFLOW_DIR/{params.script}" --shards-json {params.stain:q} --manifests {input.manifests:q}'
        " --roots {params.roots:q} --out {output:q} --log {log:q}"


rule encode_dataset:
    input:
        manifest="results/manifest/{dataset}.parquet",
        stain=stain_input,
    output:
        wfconfig.store_index("{dataset}"),
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
        root=lambda wc: dataset_root(wc.dataset),
        out_dir=lambda wc: os.path.dirname(wfconfig.store_index(wc.dataset)),
        shards=section_json("shards"),
        seed=config["seed"],
        stain=stain_option,
    shell:
        'python "$DEEPBC_WORKFLOW_DIR/{params.script}" --manifest {input.manifest:q} --root {params.root:q}'
        " --out-dir {params.out_dir:q} --shards-json {params.shards:q} {params.stain} --seed {params.seed}"
        " --workers {threads} --log {log:q}"


rule write_shards:
    input:
        splits="results/splits/{run}.parquet",
        store=run_store,
        test_store=external_test_store,
    output:
        [wfconfig.shard_index("{run}", "{fold}", split) for split in SPLITS],
    log:
        "results/logs/write_shards/{run}/fold{fold}.log",
    benchmark:
        "results/benchmarks/write_shards/{run}/fold{fold}.tsv"
    conda:
        "../envs/cpu.yaml"
    params:
        script=script("write_shards.py"),
        test_store=external_option("--test-store", lambda run: wfconfig.store_index(run_test_dataset(run))),
        out_dir=lambda wc: f"results/tfrecords/{wc.run}/fold{wc.fold}",
    shell:
        'python "$DEEPBC_WORKFLOW_DIR/{params.script}" --splits {input.splits:q} --store {input.store:q}'
        " {params.test_store} --fold {wildcards.fold} --out-dir {params.out_dir:q} --log {log:q}"
