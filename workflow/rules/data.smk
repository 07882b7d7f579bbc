# Raw data -> manifest -> registration (one job per subject) -> slices per subject -> slice store.


if "phantom" in config:

    rule make_phantom_subject:
        output:
            **phantom_outputs(),
        params:
            tracking=get_tracking_args,
            config=json.dumps({k: v for k, v in config["phantom"].items() if k != "n_subjects"}, sort_keys=True),
            index=lambda wildcards: phantom_subjects(config)[wildcards.subject],
            root=lambda wildcards, output: Path(output[0]).parent.parent,
            code=command_code("phantom"),
        log:
            f"{OUT}/logs/make_phantom_subject/{{subject}}.log",
        benchmark:
            f"{OUT}/benchmarks/make_phantom_subject/{{subject}}.tsv"
        threads: 1
        resources:
            gpu=0,
            mem_mb=4000,
        conda:
            "../../envs/codebrain.yaml"
        shell:
            "codebrain phantom --root {params.root} --config '{params.config}' --index {params.index}"
            " {params.tracking} > {log} 2>&1"


if MSD:

    rule split_msd_subject:
        input:
            unpack(lambda wildcards: get_msd_sources()[wildcards.subject]),
        output:
            **msd_outputs(),
        params:
            tracking=get_tracking_args,
            labels=lambda wildcards, input: f"--labels {input.seg}" if DATASET["labels"] else "",
            contrasts=" ".join(CONTRASTS),
            out_root=f"{OUT}/raw",
            code=command_code("split-msd"),
        log:
            f"{OUT}/logs/split_msd_subject/{{subject}}.log",
        benchmark:
            f"{OUT}/benchmarks/split_msd_subject/{{subject}}.tsv"
        threads: 1
        resources:
            gpu=0,
            mem_mb=4000,
        conda:
            "../../envs/codebrain.yaml"
        shell:
            "codebrain split-msd --image {input.channels} {params.labels} --subject {wildcards.subject}"
            " --contrasts {params.contrasts} --out-root {params.out_root} {params.tracking} > {log} 2>&1"


rule check_raw:
    input:
        get_all_raw_files,
    output:
        f"{OUT}/manifest.tsv",
    params:
        tracking=get_tracking_args,
        root=f"{OUT}/raw" if MSD else DATASET["root"],  # the Decathlon's volumes are checked once split
        layout="brats" if MSD else DATASET["layout"],
        contrasts=" ".join(CONTRASTS),
        on_missing=DATASET["on_missing_contrast"],
        labels="--labels" if DATASET["labels"] else "",
        code=command_code("check-raw"),
    log:
        f"{OUT}/logs/check_raw.log",
    benchmark:
        f"{OUT}/benchmarks/check_raw.tsv"
    threads: 1
    resources:
        gpu=0,
        mem_mb=4000,
    conda:
        "../../envs/codebrain.yaml"
    shell:
        "codebrain check-raw --root {params.root} --layout {params.layout} --contrasts {params.contrasts}"
        " --on-missing {params.on_missing} {params.labels} --out {output} {params.tracking} > {log} 2>&1"


checkpoint download_raw:  # a checkpoint: the raw subjects are discovered once it has run
    output:
        touch(get_download_marker()),
    params:
        urls=" ".join(f"--url {url}" for url in config["download"]["urls"]),
        dest=lambda wildcards, output: Path(output[0]).parent,
        root=DATASET["root"],
    log:
        f"{OUT}/logs/download_raw.log",
    benchmark:
        f"{OUT}/benchmarks/download_raw.tsv"
    threads: 1
    resources:
        gpu=0,
        mem_mb=1000,
    conda:
        "../../envs/codebrain.yaml"
    shell:
        "codebrain download {params.urls} --dest {params.dest} --root {params.root} > {log} 2>&1"


rule register_subject:
    input:
        unpack(get_raw_files),
    output:
        volumes=expand(f"{OUT}/registered/{{{{subject}}}}/{{contrast}}.nii.gz", contrast=CONTRASTS),
        qc=f"{OUT}/registered/{{subject}}/qc.json",
    params:
        tracking=get_tracking_args,
        inputs=lambda wildcards, input: cli_inputs({c: input[c] for c in CONTRASTS}),
        reference=REFERENCE,
        method=config["registration"]["method"],
        seed=config["registration"]["seed"],
        out_dir=lambda wildcards, output: Path(output.qc).parent,
        code=command_code("register"),
    log:
        f"{OUT}/logs/register_subject/{{subject}}.log",
    benchmark:
        f"{OUT}/benchmarks/register_subject/{{subject}}.tsv"
    threads: 1  # ANTs on one thread: the same subject always registers alike (data/registration.py)
    resources:
        gpu=0,
        mem_mb=4000,
    conda:
        "../../envs/codebrain.yaml"
    shell:
        "codebrain register {params.inputs} --reference {params.reference} --method {params.method}"
        " --seed {params.seed} --out-dir {params.out_dir} {params.tracking} > {log} 2>&1"


rule extract_slices:
    input:
        unpack(get_slice_inputs),
    output:
        f"{OUT}/slices/subjects/{{subject}}.npz",
    params:
        tracking=get_tracking_args,
        inputs=lambda wildcards, input: cli_inputs(dict(input.items())),
        contrasts=" ".join(CONTRASTS),
        slices=json.dumps(config["slices"], sort_keys=True),
        z_range=get_z_range,
        code=command_code("extract-slices"),
    log:
        f"{OUT}/logs/extract_slices/{{subject}}.log",
    benchmark:
        f"{OUT}/benchmarks/extract_slices/{{subject}}.tsv"
    threads: 1
    resources:
        gpu=0,
        mem_mb=4000,
    conda:
        "../../envs/codebrain.yaml"
    shell:
        "codebrain extract-slices --subject {wildcards.subject} {params.inputs} --contrasts {params.contrasts}"
        " --config '{params.slices}' {params.z_range} --out {output} {params.tracking} > {log} 2>&1"


rule build_slice_store:
    input:
        manifest=f"{OUT}/manifest.tsv",
        subjects=lambda wildcards: expand(f"{OUT}/slices/subjects/{{subject}}.npz", subject=get_store_subjects()),
    output:
        store=f"{OUT}/slices/store.json",
        arrays=expand(f"{OUT}/slices/{{split}}.npy", split=SPLITS),
        rows=expand(f"{OUT}/slices/{{split}}.tsv", split=SPLITS),
        normalisation=f"{OUT}/slices/normalisation.tsv",
        geometry=f"{OUT}/slices/geometry.tsv",
    params:
        tracking=get_tracking_args,
        contrasts=" ".join(CONTRASTS),
        split_table=f"--split-table {config['splits']['table']}" if config["splits"]["table"] else "",
        fractions=" ".join(str(config["splits"]["fractions"][s]) for s in SPLITS),
        seed=config["splits"]["seed"],
        pinned=json.dumps(config["splits"]["pinned"], sort_keys=True),
        slices=json.dumps(config["slices"], sort_keys=True),
        out_dir=lambda wildcards, output: Path(output.store).parent,
        code=command_code("build-store"),
    log:
        f"{OUT}/logs/build_slice_store.log",
    benchmark:
        f"{OUT}/benchmarks/build_slice_store.tsv"
    threads: 1
    resources:
        gpu=0,
        mem_mb=8000,
    conda:
        "../../envs/codebrain.yaml"
    shell:
        "codebrain build-store --subject-slices {input.subjects} --contrasts {params.contrasts}"
        " --config '{params.slices}' {params.split_table} --fractions {params.fractions} --seed {params.seed}"
        " --pinned '{params.pinned}' --out-dir {params.out_dir} {params.tracking} > {log} 2>&1"
