# CodeBrain: raw multi-contrast MRI -> registered volumes -> slice store -> Stage I -> codes -> Stage II -> evaluation.
from snakemake.utils import min_version, validate

min_version("9.0")


configfile: "config/config.yaml"


validate(config, "workflow/schemas/config.schema.yaml")


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/segmentation.smk"


onstart:
    start_invocation(log)


onsuccess:
    end_invocation("FINISHED")


onerror:
    end_invocation("FAILED")


rule all:
    input:
        get_final_outputs(),
    default_target: True
