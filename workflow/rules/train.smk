# Slice store -> Stage I (accelerate launch) -> code cache -> Stage II (accelerate launch), per experiment;
# experiments with method: direct train the direct-regressor baseline instead.


rule train_stage1:
    wildcard_constraints:
        experiment=one_of(CODEBRAIN_EXPERIMENTS),
    input:
        store=f"{OUT}/slices/store.json",
    output:
        checkpoint=f"{OUT}/models/{{experiment}}/stage1.pt",
        record=f"{OUT}/models/{{experiment}}/stage1.run.json",
    params:
        launch=LAUNCH_ARGS,
        config=lambda wildcards: get_experiment_json(wildcards.experiment, "stage1"),
        store=lambda wildcards, input: Path(input.store).parent,
        contrasts=" ".join(CONTRASTS),
        tracking=get_tracking_args,
        code=command_code("train-stage1"),
    log:
        f"{OUT}/logs/train_stage1/{{experiment}}.log",
    benchmark:
        f"{OUT}/benchmarks/train_stage1/{{experiment}}.tsv"
    threads: config["training"]["threads"]
    resources:
        gpu=config["training"]["gpus"],
        mem_mb=config["training"]["mem_mb"],
    conda:
        "../../envs/codebrain.yaml"
    shell:
        with_gpus(
            "accelerate launch {params.launch} -m codebrain.cli train-stage1 --store {params.store}"
            " --contrasts {params.contrasts} --config '{params.config}' --experiment {wildcards.experiment}"
            " {params.tracking} --out {output.checkpoint} --run-record {output.record} > {log} 2>&1"
        )


rule cache_codes:
    wildcard_constraints:
        experiment=one_of(CODEBRAIN_EXPERIMENTS),
    input:
        store=f"{OUT}/slices/store.json",
        stage1=f"{OUT}/models/{{experiment}}/stage1.pt",
    output:
        codes=expand(f"{OUT}/models/{{{{experiment}}}}/codes/{{split}}.npy", split=["train", "val"]),
        usage=f"{OUT}/models/{{experiment}}/codes/codes.json",
        record=f"{OUT}/models/{{experiment}}/codes/cache_codes.run.json",
    params:
        store=lambda wildcards, input: Path(input.store).parent,
        out_dir=lambda wildcards, output: Path(output.usage).parent,
        contrasts=" ".join(CONTRASTS),
        tracking=get_tracking_args,
        code=command_code("cache-codes"),
    log:
        f"{OUT}/logs/cache_codes/{{experiment}}.log",
    benchmark:
        f"{OUT}/benchmarks/cache_codes/{{experiment}}.tsv"
    threads: config["training"]["threads"]
    resources:
        gpu=ONE_GPU,
        mem_mb=config["training"]["mem_mb"],
    conda:
        "../../envs/codebrain.yaml"
    shell:
        with_gpus(
            "codebrain cache-codes --store {params.store} --stage1 {input.stage1} --out-dir {params.out_dir}"
            " --contrasts {params.contrasts} --experiment {wildcards.experiment} {params.tracking}"
            " --run-record {output.record} > {log} 2>&1"
        )


rule train_stage2:
    wildcard_constraints:
        experiment=one_of(CODEBRAIN_EXPERIMENTS),
    input:
        store=f"{OUT}/slices/store.json",
        stage1=f"{OUT}/models/{{experiment}}/stage1.pt",
        codes=f"{OUT}/models/{{experiment}}/codes/codes.json",
    output:
        checkpoint=f"{OUT}/models/{{experiment}}/stage2.pt",
        record=f"{OUT}/models/{{experiment}}/stage2.run.json",
    params:
        launch=LAUNCH_ARGS,
        config=lambda wildcards: get_experiment_json(wildcards.experiment, "stage2"),
        store=lambda wildcards, input: Path(input.store).parent,
        codes=lambda wildcards, input: Path(input.codes).parent,
        contrasts=" ".join(CONTRASTS),
        tracking=get_tracking_args,
        code=command_code("train-stage2"),
    log:
        f"{OUT}/logs/train_stage2/{{experiment}}.log",
    benchmark:
        f"{OUT}/benchmarks/train_stage2/{{experiment}}.tsv"
    threads: config["training"]["threads"]
    resources:
        gpu=config["training"]["gpus"],
        mem_mb=config["training"]["mem_mb"],
    conda:
        "../../envs/codebrain.yaml"
    shell:
        with_gpus(
            "accelerate launch {params.launch} -m codebrain.cli train-stage2 --store {params.store}"
            " --stage1 {input.stage1} --codes {params.codes} --contrasts {params.contrasts}"
            " --config '{params.config}' --experiment {wildcards.experiment} {params.tracking}"
            " --out {output.checkpoint} --run-record {output.record} > {log} 2>&1"
        )


rule train_direct:
    wildcard_constraints:
        experiment=one_of(DIRECT_EXPERIMENTS),
    input:
        store=f"{OUT}/slices/store.json",
    output:
        checkpoint=f"{OUT}/models/{{experiment}}/direct.pt",
        record=f"{OUT}/models/{{experiment}}/direct.run.json",
    params:
        launch=LAUNCH_ARGS,
        config=lambda wildcards: get_experiment_json(wildcards.experiment, "train"),
        store=lambda wildcards, input: Path(input.store).parent,
        contrasts=" ".join(CONTRASTS),
        tracking=get_tracking_args,
        code=command_code("train-direct"),
    log:
        f"{OUT}/logs/train_direct/{{experiment}}.log",
    benchmark:
        f"{OUT}/benchmarks/train_direct/{{experiment}}.tsv"
    threads: config["training"]["threads"]
    resources:
        gpu=config["training"]["gpus"],
        mem_mb=config["training"]["mem_mb"],
    conda:
        "../../envs/codebrain.yaml"
    shell:
        with_gpus(
            "accelerate launch {params.launch} -m codebrain.cli train-direct --store {params.store}"
            " --contrasts {params.contrasts} --config '{params.config}' --experiment {wildcards.experiment}"
            " {params.tracking} --out {output.checkpoint} --run-record {output.record} > {log} 2>&1"
        )
