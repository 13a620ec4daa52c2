rule rollout:
    """M reference lists per train context from π_ref (the prior), drawn once and scored under every
    reward setting: one file per setting, the same lists in each."""
    input:
        summary="results/models/{dataset}/sft/seed{seed}/summary.json",
    output:
        rollouts=expand("results/rollouts/{{dataset}}/{reward}/ref/seed{{seed}}.parquet", reward=REWARD_SETTINGS),
    params:
        blade=BLADE,
        cfg=sections_json("rollout", rewards={name: reward_section(name) for name in REWARD_SETTINGS}),
        data="results/data/{dataset}",
        model=lambda wildcards, input: os.path.join(os.path.dirname(input.summary), "best"),
        out=lambda wildcards: f"results/rollouts/{wildcards.dataset}/{{reward}}/ref/seed{wildcards.seed}.parquet",
    log:
        "results/logs/rollout/{dataset}/seed{seed}.log",
    benchmark:
        "results/benchmarks/rollout/{dataset}/seed{seed}.tsv"
    threads: 1  # torch is pinned to one thread (blade/seeding.py: bits do not depend on the core count)
    conda:
        "../../environment.yml"
    shell:
        "{params.blade} rollout --data {params.data} --model {params.model} --out {params.out:q} "
        "--seed {wildcards.seed} --dataset {wildcards.dataset} --config-json {params.cfg:q} > {log} 2>&1"


rule align:
    """One method's alignment run under one reward setting: BLADE or a baseline, all through the same
    loop; then, in the same process (blade/eval/scoring.py), the selected policy's lists and metrics on
    every evaluation split and the test scores of its per-step snapshots (the §6.4 curve)."""
    input:
        sft="results/models/{dataset}/sft/seed{seed}/summary.json",
        rollouts="results/rollouts/{dataset}/{reward}/ref/seed{seed}.parquet",
        sft_scored=eval_outputs(SFT_EVAL),  # the curve's step 0
    output:
        summary="results/models/{dataset}/{reward}/{method}/seed{seed}/summary.json",
        diagnostics="results/models/{dataset}/{reward}/{method}/seed{seed}/diagnostics.parquet",
        curve="results/curves/{dataset}/{reward}/{method}/seed{seed}.parquet",
        scored=eval_outputs("results/eval/{dataset}/{reward}/{method}/seed{seed}"),
    params:
        blade=TRAIN,
        cfg=lambda wildcards: sections_json("align", "evaluate", reward=reward_section(wildcards.reward),
                                            method=EXP.method(wildcards.method)),
        data="results/data/{dataset}",
        sft=lambda wildcards, input: os.path.dirname(input.sft),
        out=lambda wildcards, output: os.path.dirname(output.summary),
        eval_root="results/eval/{dataset}/{reward}/{method}/seed{seed}",
        sft_eval_root=lambda wildcards, input: os.path.dirname(os.path.dirname(input.sft_scored[0])),  # {root}/{split}/file
    log:
        "results/logs/align/{dataset}/{reward}/{method}/seed{seed}.log",
    benchmark:
        "results/benchmarks/align/{dataset}/{reward}/{method}/seed{seed}.tsv"
    threads: EXP.run.processes  # one pinned torch thread per process (blade/seeding.py)
    conda:
        "../../environment.yml"
    shell:
        "{params.blade} align --data {params.data} --sft {params.sft} --rollouts {input.rollouts} "
        "--out {params.out} --seed {wildcards.seed} --dataset {wildcards.dataset} --method {wildcards.method} "
        "--reward-setting {wildcards.reward:q} --eval-root {params.eval_root:q} --curve {output.curve:q} "
        "--sft-eval-root {params.sft_eval_root:q} "
        "--config-json {params.cfg:q} > {log} 2>&1"
