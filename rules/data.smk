rule make_demo:
    output:
        # Snakemake marks directory outputs with a .snakemake_timestamp file: keep it outside the
        # dataset roots, which must hold only dataset files.
        breakhis=directory("results/demo/breakhis"),
        tma=directory("results/demo/tma"),
    params:
        script=script("make_demo.py"),
        seed=config["seed"],
        scale=config["demo_scale"],
    threads: RES["data_threads"]
    log:
        "results/logs/make_demo.log",
    benchmark:
        "results/benchmarks/make_demo.tsv"
    conda:
        "../envs/cpu.yaml"
    shell:
        "python \"$DEEPBC_WORKFLOW_DIR/{params.script}\" --breakhis-out {output.breakhis:q}/BreaKHis_v1 --tma-out {output.tma:q}/images"
        " --seed {params.seed} --scale {params.scale} --workers {threads} --log {log:q}"


rule check_dataset:
    input:
        demo_inputs,
    output:
        manifest="results/manifest/{dataset}.parquet",
        rejects="results/manifest/{dataset}.rejects.csv",
    params:
        script=script("check_dataset.py"),
        root=lambda wc: dataset_root(wc.dataset),
        options=lambda wc: dataset_options(wc.dataset),
    threads: RES["data_threads"]
    resources:
        mem_mb=RES["data_mem_mb"],
    log:
        "results/logs/check_dataset/{dataset}.log",
    benchmark:
        "results/benchmarks/check_dataset/{dataset}.tsv"
    conda:
        "../envs/cpu.yaml"
    shell:
        "python \"$DEEPBC_WORKFLOW_DIR/{params.script}\" --dataset {wildcards.dataset} --root {params.root:q}"
        " {params.options} --workers {threads}"
        " --manifest {output.manifest:q} --rejects {output.rejects:q} --log {log:q}"


rule make_splits:
    input:
        manifest=manifest_of_run,
    output:
        "results/splits/{run}.parquet",
    params:
        script=script("make_splits.py"),
        task=lambda wc: run_task(wc.run),
        task_json=task_json,
        protocol=lambda wc: run_protocol(wc.run),
        k=config["splits"]["k"],
        val_fraction=config["splits"]["val_fraction"],
        conflicts="" if config["splits"]["exclude_label_conflicts"] else "--include-label-conflicts",
        seed=config["seed"],
    log:
        "results/logs/make_splits/{run}.log",
    benchmark:
        "results/benchmarks/make_splits/{run}.tsv"
    conda:
        "../envs/cpu.yaml"
    shell:
        "python \"$DEEPBC_WORKFLOW_DIR/{params.script}\" --manifest {input.manifest:q} --task {params.task}"
        " --task-json {params.task_json:q} --protocol {params.protocol} --k {params.k}"
        " --val-fraction {params.val_fraction} --seed {params.seed} {params.conflicts}"
        " --out {output:q} --log {log:q}"


rule write_shards:
    input:
        splits="results/splits/{run}.parquet",
    output:
        [wfconfig.shard_index("{run}", "{fold}", split) for split in SPLITS],
    params:
        script=script("write_shards.py"),
        root=root_of_run,
        out_dir=lambda wc: f"results/tfrecords/{wc.run}/fold{wc.fold}",
        images_per_shard=config["shards"]["images_per_shard"],
        format=config["shards"]["format"],
        jpeg_quality=config["shards"]["jpeg_quality"],
        max_shorter_side=config["shards"]["max_shorter_side"],
        seed=config["seed"],
    threads: RES["data_threads"]
    resources:
        mem_mb=RES["data_mem_mb"],
    log:
        "results/logs/write_shards/{run}/fold{fold}.log",
    benchmark:
        "results/benchmarks/write_shards/{run}/fold{fold}.tsv"
    conda:
        "../envs/cpu.yaml"
    shell:
        "python \"$DEEPBC_WORKFLOW_DIR/{params.script}\" --splits {input.splits:q} --root {params.root:q}"
        " --fold {wildcards.fold} --out-dir {params.out_dir:q}"
        " --images-per-shard {params.images_per_shard} --format {params.format}"
        " --jpeg-quality {params.jpeg_quality} --max-shorter-side {params.max_shorter_side}"
        " --seed {params.seed} --workers {threads} --log {log:q}"
