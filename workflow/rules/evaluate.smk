# Evaluation paths: results/eval/{dataset}/{reward}/{method}/seed{seed}/{split}/, where {reward} is
# the reward setting an aligned method was trained under, and `none` for the rows trained under no
# reward setting (SFT and the classic references). Greedy lists land in {split}/, sampled decoding's
# (evaluate.samples lists per row) in {split}/sample/. Best-of-N rows over π_ref (bon_n{N},
# oracle_bon_n{N}) belong to a reward setting: it is what they pick the best list by.


rule recommend:
    """A trained policy's constrained top-K lists: greedy, or sampled (S lists per row)."""
    input:
        summary=trained_model,
    output:
        recs="results/eval/{dataset}/{reward}/{method}/seed{seed}/{split}/recs.jsonl",
        cost="results/eval/{dataset}/{reward}/{method}/seed{seed}/{split}/cost.json",
    wildcard_constraints:
        reward=_alternatives([*REWARD_SETTINGS, NO_REWARD]),
        method=_alternatives([*ALIGNED, "sft"]),
        split=SPLIT_OR_SAMPLED,
    params:
        blade=BLADE,
        data="results/data/{dataset}",
        model=lambda wildcards, input: os.path.join(os.path.dirname(input.summary), "best"),
        k=EXP.evaluate.k,
        batch=EXP.evaluate.batch_size,
        split=split_name,
        samples=sample_count,
    log:
        "results/logs/recommend/{dataset}/{reward}/{method}/seed{seed}/{split}.log",
    benchmark:
        "results/benchmarks/recommend/{dataset}/{reward}/{method}/seed{seed}/{split}.tsv"
    conda:
        "../../environment.yml"
    shell:
        "{params.blade} recommend --model {params.model} --data {params.data} --split {params.split} "
        "--k {params.k} --batch-size {params.batch} --samples {params.samples} --seed {wildcards.seed} "
        "--out {output.recs} > {log} 2>&1"


rule best_of_n:
    """Best-of-N over π_ref at inference for every N in evaluate.bon_n, by the inference reward
    (bon_n{N}) and by the ground truth (oracle_bon_n{N}), from one shared draw of max N lists."""
    input:
        sft="results/models/{dataset}/sft/seed{seed}/summary.json",
    output:
        recs=expand("results/eval/{{dataset}}/{{reward}}/{method}/seed{{seed}}/{{split}}/recs.jsonl",
                    method=EXP.evaluate.bon_rows),
    params:
        blade=BLADE,
        data="results/data/{dataset}",
        model=lambda wildcards, input: os.path.join(os.path.dirname(input.sft), "best"),
        cfg=lambda wildcards: sections_json("evaluate", reward=reward_section(wildcards.reward)),
        out=lambda wildcards: f"results/eval/{wildcards.dataset}/{wildcards.reward}/{{method}}/seed{wildcards.seed}/"
                              f"{wildcards.split}/recs.jsonl",
    log:
        "results/logs/best_of_n/{dataset}/{reward}/seed{seed}/{split}.log",
    benchmark:
        "results/benchmarks/best_of_n/{dataset}/{reward}/seed{seed}/{split}.tsv"
    threads: 1  # torch is pinned to one thread (blade/seeding.py: bits do not depend on the core count)
    conda:
        "../../environment.yml"
    shell:
        "{params.blade} bon --model {params.model} --data {params.data} --split {wildcards.split} "
        "--seed {wildcards.seed} --config-json {params.cfg:q} --out {params.out:q} > {log} 2>&1"


rule recommend_reference:
    """Most-popular and item-to-item co-occurrence lists, fitted on train only."""
    input:
        stats="results/data/{dataset}/stats.json",
    output:
        recs="results/eval/{dataset}/{reward}/{reference}/seed{seed}/{split}/recs.jsonl",
    wildcard_constraints:
        reward=re.escape(NO_REWARD),
        reference=_alternatives(EXP.evaluate.references),
    params:
        blade=BLADE,
        data=lambda wildcards, input: os.path.dirname(input.stats),
        k=EXP.evaluate.k,
    log:
        "results/logs/recommend/{dataset}/{reward}/{reference}/seed{seed}/{split}.log",
    conda:
        "../../environment.yml"
    shell:
        "{params.blade} recommend --reference {wildcards.reference} --data {params.data} "
        "--split {wildcards.split} --k {params.k} --out {output.recs} > {log} 2>&1"


rule evaluate:
    """Per-user metrics (per_user.parquet) and their summary (metrics.json)."""
    input:
        recs="results/eval/{dataset}/{reward}/{method}/seed{seed}/{split}/recs.jsonl",
        stats="results/data/{dataset}/stats.json",
    output:
        metrics="results/eval/{dataset}/{reward}/{method}/seed{seed}/{split}/metrics.json",
        per_user="results/eval/{dataset}/{reward}/{method}/seed{seed}/{split}/per_user.parquet",
    wildcard_constraints:
        reward=_alternatives([*REWARD_SETTINGS, NO_REWARD]),
        method=_alternatives([*ALIGNED, *UNALIGNED_ROWS, *EXP.evaluate.bon_rows]),
        split=SPLIT_OR_SAMPLED,
    params:
        blade=BLADE,
        data=lambda wildcards, input: os.path.dirname(input.stats),
        ks=",".join(str(k) for k in EXP.evaluate.ks),
        out=lambda wildcards, output: os.path.dirname(output.metrics),
        split=split_name,
    log:
        "results/logs/evaluate/{dataset}/{reward}/{method}/seed{seed}/{split}.log",
    conda:
        "../../environment.yml"
    shell:
        "{params.blade} evaluate --recs {input.recs:q} --data {params.data} --split {params.split} "
        "--ks {params.ks} --out {params.out} --dataset {wildcards.dataset} --method {wildcards.method} "
        "--seed {wildcards.seed} --reward-setting {wildcards.reward:q} > {log} 2>&1"
