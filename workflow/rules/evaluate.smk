# Evaluation paths: results/eval/{dataset}/{reward}/{method}/seed{seed}/{split}/, where {reward} is
# the reward setting an aligned method was trained under, and `none` for the rows trained under no
# reward setting (SFT and the classic references). Greedy lists land in {split}/, sampled decoding's
# (evaluate.samples lists per row) in {split}/sample/. Best-of-N rows over π_ref (bon_n{N},
# oracle_bon_n{N}) belong to a reward setting: it is what they pick the best list by.
#
# A trained row is scored by the job that trains it (rules sft and align: blade/eval/scoring.py), so
# the evaluation costs no extra interpreter start. The rules here score the rows nothing trains.


rule best_of_n:
    """Best-of-N over π_ref at inference for every N in evaluate.bon_n, by the inference reward
    (bon_n{N}) and by the ground truth (oracle_bon_n{N}) of every reward setting, from one shared
    draw of max N lists; each row's metrics in the same process."""
    input:
        sft="results/models/{dataset}/sft/seed{seed}/summary.json",
        stats="results/data/{dataset}/stats.json",
    output:
        scored=expand("results/eval/{{dataset}}/{reward}/{method}/seed{{seed}}/{{split}}/{name}",
                      reward=REWARD_SETTINGS, method=EXP.evaluate.bon_rows, name=[*EVAL_FILES, "cost.json"]),
    params:
        blade=BLADE,
        data=lambda wildcards, input: os.path.dirname(input.stats),
        model=lambda wildcards, input: os.path.join(os.path.dirname(input.sft), "best"),
        cfg=sections_json("evaluate", rewards={name: reward_section(name) for name in REWARD_SETTINGS}),
        out=lambda wildcards: f"results/eval/{wildcards.dataset}/{{reward}}/{{method}}/seed{wildcards.seed}/"
                              f"{wildcards.split}/recs.jsonl",
    log:
        "results/logs/best_of_n/{dataset}/seed{seed}/{split}.log",
    benchmark:
        "results/benchmarks/best_of_n/{dataset}/seed{seed}/{split}.tsv"
    threads: 1  # torch is pinned to one thread (blade/seeding.py: bits do not depend on the core count)
    conda:
        "../../environment.yml"
    shell:
        "{params.blade} bon --model {params.model} --data {params.data} --split {wildcards.split} "
        "--seed {wildcards.seed} --config-json {params.cfg:q} --out {params.out:q} --evaluate "
        "--dataset {wildcards.dataset} > {log} 2>&1"


rule score_reference:
    """A classic reference row (most popular, item co-occurrence, SASRec), fitted on train only:
    its lists and metrics on every evaluation split."""
    input:
        stats="results/data/{dataset}/stats.json",
    output:
        scored=eval_outputs(f"results/eval/{{dataset}}/{NO_REWARD}/{{reference}}/seed{{seed}}", policy=False),
    wildcard_constraints:
        reference=_alternatives(EXP.evaluate.references),
    params:
        blade=BLADE,
        data=lambda wildcards, input: os.path.dirname(input.stats),
        cfg=sections_json("evaluate"),
        reward=NO_REWARD,
        root=lambda wildcards: f"results/eval/{wildcards.dataset}/{NO_REWARD}/{wildcards.reference}/seed{wildcards.seed}",
    log:
        "results/logs/score_reference/{dataset}/{reference}/seed{seed}.log",
    benchmark:
        "results/benchmarks/score_reference/{dataset}/{reference}/seed{seed}.tsv"
    threads: 1
    conda:
        "../../environment.yml"
    shell:
        "{params.blade} score --reference {wildcards.reference} --data {params.data} --root {params.root} "
        "--seed {wildcards.seed} --dataset {wildcards.dataset} --reward-setting {params.reward} "
        "--config-json {params.cfg:q} > {log} 2>&1"


rule score_external:
    """A row made outside the suite (evaluate.external.NAME: another codebase's model), on one split
    and seed: its recommendations file copied in as recs.jsonl — with its cost sidecar as cost.json
    where one exists, else the row's cost is unknown — and scored by `blade evaluate`, like every row.
    The file is no input (a missing one must fail this job, naming the config key, not refuse the
    whole DAG); params.content, its sha256 and the sidecar's, reruns the job when either changes."""
    input:
        stats="results/data/{dataset}/stats.json",
    output:
        recs=f"results/eval/{{dataset}}/{NO_REWARD}/{{external}}/seed{{seed}}/{{split}}/recs.jsonl",
        metrics=f"results/eval/{{dataset}}/{NO_REWARD}/{{external}}/seed{{seed}}/{{split}}/metrics.json",
        per_user=f"results/eval/{{dataset}}/{NO_REWARD}/{{external}}/seed{{seed}}/{{split}}/per_user.parquet",
    wildcard_constraints:
        external=_alternatives(EXP.evaluate.external),
    params:
        source=external_file,
        content=external_content,
    log:
        "results/logs/score_external/{dataset}/{external}/seed{seed}/{split}.log",
    benchmark:
        "results/benchmarks/score_external/{dataset}/{external}/seed{seed}/{split}.tsv"
    threads: 1
    run:
        # a run block: the checks' errors reach Snakemake's own output, not only the log (common.smk)
        score_external(wildcards, input, output, params, log[0])
