# Trained model -> every missing-contrast scenario on the test split -> tables and figures.


rule evaluate_model:
    input:
        store=f"{OUT}/slices/store.json",
        model=lambda wildcards: model_checkpoint(wildcards.experiment),
    output:
        scenarios=report(f"{OUT}/metrics/{{experiment}}/scenarios.csv", caption="../report/scenarios.rst",
                         category="Imputation metrics", subcategory="{experiment}", labels={"experiment": "{experiment}", "table": "per scenario"}),
        summary=f"{OUT}/metrics/{{experiment}}/summary.csv",
        tables=f"{OUT}/metrics/{{experiment}}/tables.md",
        exemplars=report(f"{OUT}/metrics/{{experiment}}/exemplars.png", caption="../report/exemplars.rst",
                         category="Exemplars", labels={"experiment": "{experiment}"}),
        record=f"{OUT}/metrics/{{experiment}}/evaluate.run.json",
    params:
        store=lambda wildcards, input: Path(input.store).parent,
        out_dir=lambda wildcards, output: Path(output.summary).parent,
        contrasts=" ".join(CONTRASTS),
        split=config["evaluation"]["split"],
        batch_size=config["evaluation"]["batch_size"],
        uncertainty=lambda wildcards: config["evaluation"]["uncertainty_samples"]
        if wildcards.experiment in CODEBRAIN_EXPERIMENTS
        else 0,
        tracking=get_tracking_args,
        code=command_code("evaluate"),
    log:
        f"{OUT}/logs/evaluate_model/{{experiment}}.log",
    benchmark:
        f"{OUT}/benchmarks/evaluate_model/{{experiment}}.tsv"
    threads: config["training"]["threads"]
    resources:
        gpu=ONE_GPU,
        mem_mb=config["training"]["mem_mb"],
    conda:
        "../../envs/codebrain.yaml"
    shell:
        with_gpus(
            "codebrain evaluate --model {input.model} --store {params.store}"
            " --split {params.split} --batch-size {params.batch_size} --out-dir {params.out_dir}"
            " --uncertainty-samples {params.uncertainty}"
            " --contrasts {params.contrasts} --experiment {wildcards.experiment} {params.tracking}"
            " --run-record {output.record} > {log} 2>&1"
        )


rule impute_test_subjects:
    wildcard_constraints:
        experiment=one_of(CODEBRAIN_EXPERIMENTS),
    input:
        store=f"{OUT}/slices/store.json",
        model=f"{OUT}/models/{{experiment}}/stage2.pt",
        volumes=lambda wildcards: [f for s in get_store_subjects() for f in slice_input_files(s).values()],
    output:
        directory(f"{OUT}/imputed/{{experiment}}"),
    params:
        store=lambda wildcards, input: Path(input.store).parent,
        references=lambda wildcards: json.dumps(get_reference_volumes()),
        truths=lambda wildcards: json.dumps({s: slice_input_files(s) for s in get_store_subjects()}),
        contrasts=" ".join(CONTRASTS),
        split=config["evaluation"]["split"],
        uncertainty=config["evaluation"]["uncertainty_samples"],
        tracking=get_tracking_args,
        code=command_code("impute-split"),
    log:
        f"{OUT}/logs/impute_test_subjects/{{experiment}}.log",
    benchmark:
        f"{OUT}/benchmarks/impute_test_subjects/{{experiment}}.tsv"
    threads: config["training"]["threads"]
    resources:
        gpu=ONE_GPU,
        mem_mb=config["training"]["mem_mb"],
    conda:
        "../../envs/codebrain.yaml"
    shell:
        with_gpus(
            "codebrain impute-split --model {input.model} --store {params.store} --contrasts {params.contrasts}"
            " --references '{params.references}' --truths '{params.truths}' --split {params.split}"
            " --experiment {wildcards.experiment} {params.tracking}"
            " --uncertainty-samples {params.uncertainty}"
            " --out-dir {output} > {log} 2>&1"
        )


rule compare_experiments:
    input:
        summaries=expand(f"{OUT}/metrics/{{experiment}}/summary.csv", experiment=sorted(EXPERIMENTS)),
        benchmarks=training_benchmarks,
    output:
        table=report(f"{OUT}/metrics/summary.csv", caption="../report/summary.rst", category="Summary",
                     labels={"table": "all experiments"}),
        markdown=f"{OUT}/metrics/summary.md",
    params:
        tracking=get_tracking_args,
        summaries=lambda wildcards, input: " ".join(
            f"--summary {name}={path}" for name, path in zip(sorted(EXPERIMENTS), input.summaries)
        ),
        benchmarks=" ".join(f"--benchmarks {method}={','.join(files)}" for method, files in method_benchmarks().items()),
        code=command_code("compare"),
    log:
        f"{OUT}/logs/compare_experiments.log",
    benchmark:
        f"{OUT}/benchmarks/compare_experiments.tsv"
    threads: 1
    resources:
        gpu=0,
        mem_mb=1000,
    conda:
        "../../envs/codebrain.yaml"
    shell:
        "codebrain compare {params.summaries} --out {output.table} --markdown {output.markdown}"
        " {params.benchmarks} {params.tracking} > {log} 2>&1"
