# Shared helpers: config validation (schema, then the typed options of every component) and the
# command every rule calls.
import json
import re
import os
import sys

from snakemake.utils import validate

from blade.workflow_config import check_config


validate(config, "../schemas/config.schema.yaml")
check_config(config)

DATASETS = config["run"]["datasets"]
SEEDS = config["run"].get("seeds", [0])
EVAL = config.setdefault("evaluate", {"k": 20, "ks": [5, 10, 20], "splits": ["valid", "test"], "references": ["mostpop", "cooc"]})
ALIGNED = config["run"].get("methods", [])
TRAINED_METHODS = ["sft", *ALIGNED]
# Only configured method names match the align rule (never "sft" or a reference row).
ALIGNED_PATTERN = "|".join(re.escape(m) for m in ALIGNED) or "(?!)"
SPLITS = ["train", "valid", "test"]
# The interpreter that runs Snakemake has the suite installed; calling it directly avoids
# depending on PATH inside job shells.
BLADE = f"{sys.executable} -m blade.cli"


def dataset_spec(wildcards):
    return json.dumps(config["datasets"][wildcards.dataset], sort_keys=True)


def method_config(method):
    """The align command's config: the shared loop and reward, plus this method's objective."""
    return json.dumps({"align": config.get("align"), "reward": config.get("reward"),
                       "method": config["methods"][method]}, sort_keys=True)


def all_metrics():
    """Every metrics.json the DAG produces: trained methods per seed, reference rows once."""
    trained = expand("results/eval/{dataset}/{method}/seed{seed}/{split}/metrics.json",
                     dataset=DATASETS, method=TRAINED_METHODS, seed=SEEDS, split=EVAL["splits"])
    refs = expand("results/eval/{dataset}/{method}/seed0/{split}/metrics.json",
                  dataset=DATASETS, method=EVAL["references"], split=EVAL["splits"])
    return trained + refs
