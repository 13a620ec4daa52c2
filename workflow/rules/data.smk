rule prepare:
    """A data source → the canonical dataset (items, train/valid/test, stats.json)."""
    output:
        catalogue="results/data/{dataset}/items.parquet",
        splits=expand("results/data/{{dataset}}/{split}.parquet", split=SPLITS),
        stats="results/data/{dataset}/stats.json",
    params:
        blade=BLADE,
        spec=dataset_spec,
        out=lambda wildcards, output: os.path.dirname(output.stats),
    log:
        "results/logs/prepare/{dataset}.log",
    benchmark:
        "results/benchmarks/prepare/{dataset}.tsv"
    conda:
        "../../environment.yml"
    shell:
        "{params.blade} prepare --spec {params.spec:q} --out {params.out} > {log} 2>&1"
