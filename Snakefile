# The BLADE reproduction DAG: prepare → sft → rollout → align → evaluate → analysis (tables,
# significance, claims, figures). `snakemake --report results/report.html` builds the report.
from snakemake.utils import min_version

min_version("9.0")


configfile: "config/config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/sft.smk"
include: "workflow/rules/align.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/analysis.smk"


rule all:
    input:
        expand("results/data/{dataset}/stats.json", dataset=DATASETS),
        [] if EXP.partial else all_metrics(),  # partial=True: only the analysis, of what exists
        ANALYSIS_TARGETS,
    default_target: True
