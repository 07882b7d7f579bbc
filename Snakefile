# CodeBrain: raw multi-contrast MRI -> registered volumes -> slice store -> Stage I -> codes -> Stage II -> evaluation.
from snakemake.utils import min_version

from codebrain.workflow import invocation_gpus, resolve_gpus, validate_config

min_version("9.0")


# A user's --configfile is the whole config (Snakemake would otherwise deep-merge it into this default, leaking
# the phantom and the demo's experiments into every run); the phantom demo applies only without one.
if not workflow.overwrite_configfiles:

    configfile: "config/config.yaml"


validate_config(config)
resolve_gpus(config, invocation_gpus(workflow.global_resources))


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/segmentation.smk"


onstart:
    start_invocation(config, TRACKING_URI, workflow.local_exec, list(map(str, workflow.dag.targetfiles)),
                     sum(1 for _ in workflow.dag.needrun_jobs()))


onsuccess:
    close_invocation(TRACKING_URI, "FINISHED")


onerror:
    close_invocation(TRACKING_URI, "FAILED")


rule all:
    input:
        get_final_outputs(),
    default_target: True
