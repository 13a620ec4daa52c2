# Shared helpers: config validation (schema, then the typed options of every component) and the
# command every rule calls.
import json
import os
import sys

from snakemake.utils import validate

from blade.workflow_config import check_config


validate(config, "../schemas/config.schema.yaml")
check_config(config)

DATASETS = config["run"]["datasets"]
SPLITS = ["train", "valid", "test"]
# The interpreter that runs Snakemake has the suite installed; calling it directly avoids
# depending on PATH inside job shells.
BLADE = f"{sys.executable} -m blade.cli"


def dataset_spec(wildcards):
    return json.dumps(config["datasets"][wildcards.dataset], sort_keys=True)
