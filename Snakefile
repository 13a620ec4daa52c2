# The BLADE reproduction DAG: prepare → sft → rollout → align → evaluate → analysis.
# Stages are added under workflow/rules/ as they are built; see README.md.
from snakemake.utils import min_version

min_version("9.0")


configfile: "config/config.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/sft.smk"
include: "workflow/rules/align.smk"
include: "workflow/rules/evaluate.smk"


rule all:
    input:
        expand("results/data/{dataset}/stats.json", dataset=DATASETS),
        all_metrics(),
    default_target: True
