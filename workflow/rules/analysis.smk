# The analysis stage: tables, significance tests, claims, figures and the report's pages, built
# only from what earlier rules wrote (per-user metrics, per-step diagnostics, per-step snapshot
# scores). One module of analysis/ per product, run as `python -m analysis.NAME`; each module's
# docstring says what it computes. The expected rows come from the resolved config (analysis/rows.py),
# so a table lists every row this DAG should produce, and names the runs it could not find.
from analysis.rows import (FIGURES, analysis_outputs, analysis_split, blade_n, curve_files, eval_files, is_static,
                           run_files, table_rows)


ANALYSIS = f"{sys.executable} -m analysis"
# The config as Snakemake holds it (config.yaml plus any --configfile/--config); each module
# resolves it with blade.experiment.resolve. As a param it also reruns the analysis when it changes.
CONFIG_JSON = json.dumps(config, sort_keys=True, default=str)
# A "{" inside a string (an evaluate.external path's {split}) would read as a wildcard in a param
# string: written as the JSON escape \u007b, the same text to json.loads. Structural braces are
# never followed by a name, so the pattern only meets braces inside strings.
CONFIG_JSON = re.sub(r"\{(?=\s*[.\w])", r"\\u007b", CONFIG_JSON)
ANALYSIS_SPLIT = analysis_split(EXP)  # test: model selection never reads it
TABLES = "results/tables"
TRAINED = ("sft", "blade", "variant", "baseline")
EXTERNAL_ROWS = table_rows(EXP, roles=("external",), bon_ns=[])  # evaluate.external: scored, never trained here
ALIGNED_ROWS = table_rows(EXP, roles=("blade", "variant", "baseline"), bon_ns=[])
BLADE_ROWS = table_rows(EXP, roles=("blade",), bon_ns=[])
BLADE_FAMILY = table_rows(EXP, roles=("blade", "variant"), bon_ns=[])
# BLADE and static BoN alignment: the two sides of the gradient-decay and static-bound figures
DECAY_ROWS = [r for r in ALIGNED_ROWS if r.role == "blade" or is_static(r.method, EXP)]
TABLE_ROWS = table_rows(EXP, bon_ns=[blade_n(EXP)])  # the main table: every row, BoN rows at BLADE's N
# For `rule all`: every table, figure and report page (each aligned run writes its snapshot curve
# itself, rule align; the figures and claims read BLADE's and the static methods').
ANALYSIS_TARGETS = analysis_outputs(TABLES, "results/figures")


rule significance:
    """Paired per-user t-test and sign-flip test of BLADE vs every other row, Holm-corrected, with effect sizes."""
    input:
        per_user=present(eval_files(EXP, [r for r in TABLE_ROWS if r.role != "oracle"], "per_user.parquet")),
        # a list-wise setting's own reward is computed from the lists (analysis/own_reward.py)
        recs=present(eval_files(EXP, [r for r in TABLE_ROWS if r.role != "oracle"], "recs.jsonl")),
        stats=expand("results/data/{dataset}/stats.json", dataset=DATASETS),
    output:
        csv=report(f"{TABLES}/significance.csv", caption="../report/significance.rst", category="Tables"),
    params:
        analysis=ANALYSIS,
        cfg=CONFIG_JSON,
        split=ANALYSIS_SPLIT,
    log:
        "results/logs/analysis/significance.log",
    benchmark:
        "results/benchmarks/analysis/significance.tsv"
    conda:
        "../../environment.yml"
    shell:
        "{params.analysis}.significance --results results --config-json {params.cfg:q} --split {params.split} "
        "--out {output.csv} > {log} 2>&1"


rule main_table:
    """Every method × dataset × metric, mean ± std over seeds, best in bold, BLADE's significance marked."""
    input:
        metrics=present(eval_files(EXP, TABLE_ROWS, "metrics.json")),
        significance=f"{TABLES}/significance.csv",
    output:
        csv=f"{TABLES}/main.csv",
        md=f"{TABLES}/main.md",
        html=report(f"{TABLES}/main.html", caption="../report/main_table.rst", category="Tables"),
        tex=f"{TABLES}/main.tex",
    params:
        out=lambda wildcards, output: os.path.splitext(output.csv)[0],
        analysis=ANALYSIS,
        cfg=CONFIG_JSON,
        split=ANALYSIS_SPLIT,
    log:
        "results/logs/analysis/main_table.log",
    conda:
        "../../environment.yml"
    shell:
        "{params.analysis}.main_table --results results --config-json {params.cfg:q} --split {params.split} "
        "--significance {input.significance} --out {params.out} > {log} 2>&1"


rule listwise:
    """Per reward setting × method: the targeted list metric and the accuracy paid, vs SFT (§6.2)."""
    input:
        present(eval_files(EXP, table_rows(EXP, roles=TRAINED, bon_ns=[]) + EXTERNAL_ROWS, "metrics.json")),
    output:
        csv=f"{TABLES}/listwise.csv",
        md=f"{TABLES}/listwise.md",
        html=report(f"{TABLES}/listwise.html", caption="../report/listwise.rst", category="Tables"),
    params:
        out=lambda wildcards, output: os.path.splitext(output.csv)[0],
        analysis=ANALYSIS,
        cfg=CONFIG_JSON,
        split=ANALYSIS_SPLIT,
    log:
        "results/logs/analysis/listwise.log",
    conda:
        "../../environment.yml"
    shell:
        "{params.analysis}.listwise --results results --config-json {params.cfg:q} --split {params.split} "
        "--out {params.out} > {log} 2>&1"


rule ablation:
    """BLADE's variants grouped by the option that differs from `blade` (estimator, κ0, γ, N, G) (§6.6)."""
    input:
        metrics=present(eval_files(EXP, BLADE_FAMILY, "metrics.json")),
        runs=present(run_files(BLADE_FAMILY, "summary.json")),
        significance=f"{TABLES}/significance.csv",
    output:
        csv=f"{TABLES}/ablation.csv",
        md=f"{TABLES}/ablation.md",
        html=report(f"{TABLES}/ablation.html", caption="../report/ablation.rst", category="Tables"),
    params:
        out=lambda wildcards, output: os.path.splitext(output.csv)[0],
        analysis=ANALYSIS,
        cfg=CONFIG_JSON,
        split=ANALYSIS_SPLIT,
    log:
        "results/logs/analysis/ablation.log",
    conda:
        "../../environment.yml"
    shell:
        "{params.analysis}.ablation --results results --config-json {params.cfg:q} --split {params.split} "
        "--significance {input.significance} --out {params.out} > {log} 2>&1"


rule figures:
    """Gradient decay, the static upper bound, cost–quality, training reward and KL (§6.3–6.5)."""
    input:
        diagnostics=present(run_files(ALIGNED_ROWS, "diagnostics.parquet")),
        curves=present(curve_files(DECAY_ROWS)),
        bon=present(eval_files(EXP, table_rows(EXP, roles=("bon", "oracle")), "metrics.json")),
        sampled=present(eval_files(EXP, table_rows(EXP, roles=TRAINED, bon_ns=[]), "metrics.json", sample=True)),
        external=present(eval_files(EXP, EXTERNAL_ROWS, "metrics.json")),  # cost_quality: at cost, or "unknown"
    output:
        png=[report(f"results/figures/{name}.png", caption=f"../report/{name}.rst", category="Figures")
             for name in FIGURES],
        pdf=expand("results/figures/{name}.pdf", name=FIGURES),
    params:
        analysis=ANALYSIS,
        cfg=CONFIG_JSON,
        split=ANALYSIS_SPLIT,
    log:
        "results/logs/analysis/figures.log",
    benchmark:
        "results/benchmarks/analysis/figures.tsv"
    conda:
        "../../environment.yml"
    shell:
        "{params.analysis}.figures --results results --config-json {params.cfg:q} --split {params.split} "
        "--out results/figures > {log} 2>&1"


rule claims:
    """Each §6 claim with its evidence and a verdict decided by the rules in analysis/claims.py."""
    input:
        significance=f"{TABLES}/significance.csv",
        metrics=present(eval_files(EXP, TABLE_ROWS, "metrics.json")),
        diagnostics=present(run_files(DECAY_ROWS, "diagnostics.parquet")),
        curves=present(curve_files(BLADE_ROWS)),
        sampled=present(eval_files(EXP, BLADE_ROWS, "per_user.parquet", sample=True)),
        bon=present(eval_files(EXP, table_rows(EXP, roles=("bon",), bon_ns=[blade_n(EXP)]), "per_user.parquet")),
        # §6.4's MDE: BLADE's selected policy against Oracle BoN@N, per user
        oracle=present(eval_files(EXP, table_rows(EXP, roles=("oracle",), bon_ns=[blade_n(EXP)]), "per_user.parquet")),
        greedy=present(eval_files(EXP, BLADE_ROWS, "per_user.parquet")),
    output:
        csv=f"{TABLES}/claims.csv",
        md=f"{TABLES}/claims.md",
        html=report(f"{TABLES}/claims.html", caption="../report/claims.rst", category="Claims"),
    params:
        out=lambda wildcards, output: os.path.splitext(output.csv)[0],
        analysis=ANALYSIS,
        cfg=CONFIG_JSON,
        split=ANALYSIS_SPLIT,
    log:
        "results/logs/analysis/claims.log",
    conda:
        "../../environment.yml"
    shell:
        "{params.analysis}.claims --results results --config-json {params.cfg:q} --split {params.split} "
        "--significance {input.significance} --out {params.out} > {log} 2>&1"


rule provenance:
    """The git commit, library versions and resolved config behind the results."""
    input:
        present(all_metrics()),
    output:
        md=f"{TABLES}/provenance.md",
        html=report(f"{TABLES}/provenance.html", caption="../report/provenance.rst", category="Provenance"),
    params:
        analysis=ANALYSIS,
        cfg=CONFIG_JSON,
    log:
        "results/logs/analysis/provenance.log",
    conda:
        "../../environment.yml"
    shell:
        "{params.analysis}.provenance --results results --config-json {params.cfg:q} --out {output.md} > {log} 2>&1"


rule vs_sft:
    """Every aligned row against SFT, its start: paired per-user tests, Holm across a table's rows, MDE."""
    input:
        per_user=present(eval_files(EXP, [r for r in TABLE_ROWS if r.role in ("sft", *TRAINED)], "per_user.parquet")),
        recs=present(eval_files(EXP, [r for r in TABLE_ROWS if r.role in ("sft", *TRAINED)], "recs.jsonl")),
        metrics=present(eval_files(EXP, [r for r in TABLE_ROWS if r.role in TRAINED], "metrics.json")),
        stats=expand("results/data/{dataset}/stats.json", dataset=DATASETS),
    output:
        csv=f"{TABLES}/vs_sft.csv",
        md=f"{TABLES}/vs_sft.md",
        html=report(f"{TABLES}/vs_sft.html", caption="../report/vs_sft.rst", category="Tables"),
    params:
        out=lambda wildcards, output: os.path.splitext(output.csv)[0],
        analysis=ANALYSIS,
        cfg=CONFIG_JSON,
        split=ANALYSIS_SPLIT,
    log:
        "results/logs/analysis/vs_sft.log",
    benchmark:
        "results/benchmarks/analysis/vs_sft.tsv"
    conda:
        "../../environment.yml"
    shell:
        "{params.analysis}.vs_sft --results results --config-json {params.cfg:q} --split {params.split} "
        "--out {params.out} > {log} 2>&1"


rule runtime:
    """Wall time and peak memory per rule, from every job's benchmark file (runs after the rest)."""
    input:
        # every other product of the analysis: their jobs' benchmarks exist by then
        [t for t in ANALYSIS_TARGETS if not os.path.basename(t).startswith("runtime.")],
    output:
        csv=f"{TABLES}/runtime.csv",
        md=f"{TABLES}/runtime.md",
        html=report(f"{TABLES}/runtime.html", caption="../report/runtime.rst", category="Provenance"),
    params:
        out=lambda wildcards, output: os.path.splitext(output.csv)[0],
        analysis=ANALYSIS,
    log:
        "results/logs/analysis/runtime.log",
    conda:
        "../../environment.yml"
    shell:
        "{params.analysis}.runtime --benchmarks results/benchmarks --out {params.out} > {log} 2>&1"
