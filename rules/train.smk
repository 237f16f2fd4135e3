rule get_checkpoint:
    output:
        "results/checkpoints/{arch}.json",
    log:
        "results/logs/get_checkpoint/{arch}.log",
    benchmark:
        "results/benchmarks/get_checkpoint/{arch}.tsv"
    conda:
        "../envs/cpu.yaml"
    params:
        script=script("get_checkpoint.py"),
        checkpoint_dir=config["checkpoint_dir"],
        allow_download="--allow-download" if config["allow_checkpoint_download"] else "",
    shell:
        'python "$DEEPBC_WORKFLOW_DIR/{params.script}" --arch {wildcards.arch}'
        " --checkpoint-dir {params.checkpoint_dir:q} {params.allow_download}"
        " --out {output:q} --log {log:q}"


rule train:
    input:
        train_index=fold_shards("train"),
        val_index=fold_shards("val"),
        # The store whose shards the indexes list, which this job reads: once it is deleted, Snakemake
        # re-encodes it and rewrites the indexes before rerunning this job (not on indexes of a
        # store that is gone).
        store=lambda wc: checked_store(run_of(wc).dataset),
        checkpoint=lambda wc: wfconfig.checkpoint_record(config, wc.run, wc.arch) or [],
    output:
        model=multiext("results/models/{run}/{arch}/fold{fold}/model.ckpt", ".index", ".data-00000-of-00001"),
        curve="results/models/{run}/{arch}/fold{fold}/training.csv",
        settings="results/models/{run}/{arch}/fold{fold}/settings.json",
    log:
        "results/logs/train/{run}/{arch}/fold{fold}.log",
    benchmark:
        "results/benchmarks/train/{run}/{arch}/fold{fold}.tsv"
    conda:
        GPU_ENV
    threads: RES["train_threads"]
    resources:
        gpu=RES["gpu"],
        mem_mb=RES["train_mem_mb"],
        runtime=RES["train_runtime"],
    params:
        script=script("train_model.py"),
        out_dir=lambda wc: layout.model_dir(wc.run, wc.arch, wc.fold),
        # Outside the declared outputs, so Snakemake does not delete it when a job is killed.
        state_dir=lambda wc: f"results/train_state/{wc.run}/{wc.arch}/fold{wc.fold}",
        settings=lambda wc: wfconfig.train_settings_json(config, wc.run, wc.arch),
        checkpoint=lambda wc, input: f"--checkpoint-json {input.checkpoint}" if input.checkpoint else "",
        # The config's seed for repeat 0, one derived from it for the other repeats (deepbc.workflow.plan.repeat_seed).
        seed=lambda wc: PLAN.train_seed(wc.fold),
    shell:
        'python "$DEEPBC_WORKFLOW_DIR/{params.script}" --train-index {input.train_index:q}'
        " --val-index {input.val_index:q} --arch {wildcards.arch}"
        " --settings-json {params.settings:q} {params.checkpoint} --out-dir {params.out_dir:q}"
        " --state-dir {params.state_dir:q} --seed {params.seed} --threads {threads}"
        " --memory-mb {resources.mem_mb} --log {log:q}"
