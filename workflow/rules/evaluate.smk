wildcard_constraints:
    seed=r"\d+",
    split="valid|test",


rule recommend:
    """Greedy constrained top-K lists of a trained policy."""
    input:
        summary="results/models/{dataset}/{method}/seed{seed}/summary.json",
    output:
        recs="results/eval/{dataset}/{method}/seed{seed}/{split}/recs.jsonl",
    wildcard_constraints:
        method=r"(?!mostpop$|cooc$)[A-Za-z0-9_\-]+",
    params:
        blade=BLADE,
        data="results/data/{dataset}",
        model=lambda wildcards, input: os.path.join(os.path.dirname(input.summary), "best"),
        k=config["evaluate"]["k"],
    log:
        "results/logs/recommend/{dataset}/{method}/seed{seed}/{split}.log",
    benchmark:
        "results/benchmarks/recommend/{dataset}/{method}/seed{seed}/{split}.tsv"
    conda:
        "../../environment.yml"
    shell:
        "{params.blade} recommend --model {params.model} --data {params.data} --split {wildcards.split} "
        "--k {params.k} --out {output.recs} > {log} 2>&1"


rule recommend_reference:
    """Most-popular and item-to-item co-occurrence lists, fitted on train only."""
    input:
        stats="results/data/{dataset}/stats.json",
    output:
        recs="results/eval/{dataset}/{method}/seed{seed}/{split}/recs.jsonl",
    wildcard_constraints:
        method="mostpop|cooc",
    params:
        blade=BLADE,
        data=lambda wildcards, input: os.path.dirname(input.stats),
        k=config["evaluate"]["k"],
    log:
        "results/logs/recommend/{dataset}/{method}/seed{seed}/{split}.log",
    conda:
        "../../environment.yml"
    shell:
        "{params.blade} recommend --reference {wildcards.method} --data {params.data} "
        "--split {wildcards.split} --k {params.k} --out {output.recs} > {log} 2>&1"


rule evaluate:
    """Per-user metrics (per_user.parquet) and their summary (metrics.json)."""
    input:
        recs="results/eval/{dataset}/{method}/seed{seed}/{split}/recs.jsonl",
        stats="results/data/{dataset}/stats.json",
    output:
        metrics="results/eval/{dataset}/{method}/seed{seed}/{split}/metrics.json",
        per_user="results/eval/{dataset}/{method}/seed{seed}/{split}/per_user.parquet",
    params:
        blade=BLADE,
        data=lambda wildcards, input: os.path.dirname(input.stats),
        ks=",".join(str(k) for k in config["evaluate"]["ks"]),
        out=lambda wildcards, output: os.path.dirname(output.metrics),
    log:
        "results/logs/evaluate/{dataset}/{method}/seed{seed}/{split}.log",
    conda:
        "../../environment.yml"
    shell:
        "{params.blade} evaluate --recs {input.recs} --data {params.data} --split {wildcards.split} "
        "--ks {params.ks} --out {params.out} --dataset {wildcards.dataset} --method {wildcards.method} "
        "--seed {wildcards.seed} > {log} 2>&1"
