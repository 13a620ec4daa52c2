rule rollout:
    """M reference lists per train context from π_ref, with their rewards (the prior)."""
    input:
        summary="results/models/{dataset}/sft/seed{seed}/summary.json",
    output:
        rollouts="results/rollouts/{dataset}/ref/seed{seed}.parquet",
    params:
        blade=BLADE,
        cfg=lambda wildcards: json.dumps({"rollout": config.get("rollout"), "reward": config.get("reward")}, sort_keys=True),
        data="results/data/{dataset}",
        model=lambda wildcards, input: os.path.join(os.path.dirname(input.summary), "best"),
    log:
        "results/logs/rollout/{dataset}/seed{seed}.log",
    benchmark:
        "results/benchmarks/rollout/{dataset}/seed{seed}.tsv"
    threads: 2
    conda:
        "../../environment.yml"
    shell:
        "{params.blade} rollout --data {params.data} --model {params.model} --out {output.rollouts} "
        "--seed {wildcards.seed} --dataset {wildcards.dataset} --config-json {params.cfg:q} > {log} 2>&1"


rule align:
    """One method's alignment run: BLADE or a baseline, all through the same loop."""
    input:
        sft="results/models/{dataset}/sft/seed{seed}/summary.json",
        rollouts="results/rollouts/{dataset}/ref/seed{seed}.parquet",
    output:
        summary="results/models/{dataset}/{method}/seed{seed}/summary.json",
        diagnostics="results/models/{dataset}/{method}/seed{seed}/diagnostics.parquet",
    wildcard_constraints:
        method=ALIGNED_PATTERN,
    params:
        blade=BLADE,
        cfg=lambda wildcards: method_config(wildcards.method),
        data="results/data/{dataset}",
        sft=lambda wildcards, input: os.path.dirname(input.sft),
        out=lambda wildcards, output: os.path.dirname(output.summary),
    log:
        "results/logs/align/{dataset}/{method}/seed{seed}.log",
    benchmark:
        "results/benchmarks/align/{dataset}/{method}/seed{seed}.tsv"
    threads: 2
    conda:
        "../../environment.yml"
    shell:
        "{params.blade} align --data {params.data} --sft {params.sft} --rollouts {input.rollouts} "
        "--out {params.out} --seed {wildcards.seed} --dataset {wildcards.dataset} --method {wildcards.method} "
        "--config-json {params.cfg:q} > {log} 2>&1"
