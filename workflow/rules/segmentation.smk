# Datasets with tumour labels: a U-Net on the real training slices -> Dice with each contrast missing (Table 4).


rule train_segmenter:
    input:
        store=f"{OUT}/slices/store.json",
    output:
        checkpoint=f"{OUT}/models/segmenter/segmenter.pt",
        record=f"{OUT}/models/segmenter/segmenter.run.json",
    params:
        config=json.dumps(config["segmentation"], sort_keys=True),
        store=lambda wildcards, input: Path(input.store).parent,
        contrasts=" ".join(CONTRASTS),
        tracking=get_tracking_args,
        code=command_code("train-segmenter"),
    log:
        f"{OUT}/logs/train_segmenter.log",
    benchmark:
        f"{OUT}/benchmarks/train_segmenter.tsv"
    threads: config["training"]["threads"]
    resources:
        gpu=ONE_GPU,
        mem_mb=config["training"]["mem_mb"],
    conda:
        "../../envs/codebrain.yaml"
    shell:
        with_gpus(
            "codebrain train-segmenter --store {params.store} --contrasts {params.contrasts} --config '{params.config}'"
            " {params.tracking} --out {output.checkpoint} --run-record {output.record} > {log} 2>&1"
        )


rule evaluate_segmentation:
    input:
        store=f"{OUT}/slices/store.json",
        segmenter=f"{OUT}/models/segmenter/segmenter.pt",
        models=[model_checkpoint(e) for e in sorted(EXPERIMENTS)],
    output:
        table=report(f"{OUT}/segmentation/dice.csv", caption="../report/dice.rst", category="Segmentation",
                     labels={"table": "whole-tumour Dice"}),
        markdown=f"{OUT}/segmentation/dice.md",
        record=f"{OUT}/segmentation/evaluate_segmentation.run.json",
    params:
        models=lambda wildcards, input: " ".join(f"--model {e}={m}" for e, m in zip(sorted(EXPERIMENTS), input.models)),
        store=lambda wildcards, input: Path(input.store).parent,
        out_dir=lambda wildcards, output: Path(output.table).parent,
        contrasts=" ".join(CONTRASTS),
        split=config["evaluation"]["split"],
        tracking=get_tracking_args,
        code=command_code("evaluate-segmentation"),
    log:
        f"{OUT}/logs/evaluate_segmentation.log",
    benchmark:
        f"{OUT}/benchmarks/evaluate_segmentation.tsv"
    threads: config["training"]["threads"]
    resources:
        gpu=ONE_GPU,
        mem_mb=config["training"]["mem_mb"],
    conda:
        "../../envs/codebrain.yaml"
    shell:
        with_gpus(
            "codebrain evaluate-segmentation --segmenter {input.segmenter} {params.models} --store {params.store}"
            " --contrasts {params.contrasts} --split {params.split} {params.tracking} --out-dir {params.out_dir}"
            " --run-record {output.record} > {log} 2>&1"
        )
