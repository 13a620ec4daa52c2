# Shared helpers. The config is checked against the schema (structure), then resolved once into a
# typed experiment config (blade/experiment.py): every option validated where it is defined, every
# default filled in. The rules hand its sections to the `blade` commands as JSON.
import json
import re
import os
import sys

from snakemake.utils import validate

from blade.experiment import NO_REWARD, UNALIGNED_ROWS, resolve
from blade.tracking import use_tracking_uri


validate(config, "../schemas/config.schema.yaml")
EXP = resolve(config)

DATASETS = EXP.run.datasets
SEEDS = EXP.run.seeds
ALIGNED = EXP.aligned  # run.methods, then run.sweep (trained under the first reward setting only)
REWARD_SETTINGS = EXP.run.rewards
SPLITS = ["train", "valid", "test"]
# jobs inherit it: locally, and on SLURM, where each job re-reads this file
use_tracking_uri(EXP.run.tracking_uri)
# The interpreter that runs Snakemake has the suite installed; calling it directly avoids
# depending on PATH inside job shells.
BLADE = f"{sys.executable} -m blade.cli"
# SFT and alignment jobs: data-parallel over run.processes processes (blade/distributed.py) through
# `accelerate launch` (its --multi_gpu mode is torch's launcher: NCCL on GPUs, gloo on CPUs).
TRAIN = BLADE if EXP.run.processes == 1 else (
    f"{sys.executable} -m accelerate.commands.launch --num_processes {EXP.run.processes} --num_machines 1 "
    "--main_process_port 0 --mixed_precision no --dynamo_backend no --multi_gpu -m blade.cli")  # port 0: a free one


def _alternatives(names):
    return "|".join(re.escape(n) for n in names) or "(?!)"


wildcard_constraints:
    dataset=r"[^/]+",
    seed=r"\d+",
    split="valid|test",
    reward=_alternatives(REWARD_SETTINGS),
    method=_alternatives(ALIGNED),


def sections_json(*names, **extra):
    """The named sections of the resolved config (plus extra entries) as one JSON argument."""
    return json.dumps({**{n: EXP.section(n) for n in names}, **extra}, sort_keys=True, default=str)


def reward_section(setting):
    import dataclasses

    return dataclasses.asdict(EXP.rewards[setting])


def dataset_spec(wildcards):
    import dataclasses

    return json.dumps(dataclasses.asdict(EXP.datasets[wildcards.dataset]), sort_keys=True)


def all_metrics():
    """Every metrics.json the DAG produces: SFT per seed and the reference rows once (reward
    setting `none`), each aligned method per reward setting and seed."""
    splits = EXP.evaluate.splits
    unaligned = expand("results/eval/{dataset}/{reward}/sft/seed{seed}/{split}/metrics.json",
                       dataset=DATASETS, reward=NO_REWARD, seed=SEEDS, split=splits)
    refs = expand("results/eval/{dataset}/{reward}/{method}/seed0/{split}/metrics.json",
                  dataset=DATASETS, reward=NO_REWARD, method=EXP.evaluate.references, split=splits)
    aligned = [path for reward in REWARD_SETTINGS
               for path in expand("results/eval/{dataset}/{reward}/{method}/seed{seed}/{split}/metrics.json",
                                  dataset=DATASETS, reward=reward, method=EXP.methods_for(reward), seed=SEEDS,
                                  split=splits)]
    inference = EXP.evaluate.inference_splits
    sampled = []
    if EXP.evaluate.samples:  # every trained row's sampled decoding
        sampled = expand("results/eval/{dataset}/{reward}/sft/seed{seed}/{split}/sample/metrics.json",
                         dataset=DATASETS, reward=NO_REWARD, seed=SEEDS, split=inference)
        sampled += [path for reward in REWARD_SETTINGS
                    for path in expand("results/eval/{dataset}/{reward}/{method}/seed{seed}/{split}/sample/metrics.json",
                                       dataset=DATASETS, reward=reward, method=EXP.methods_for(reward), seed=SEEDS,
                                       split=inference)]
    bon = expand("results/eval/{dataset}/{reward}/{method}/seed{seed}/{split}/metrics.json", dataset=DATASETS,
                 reward=REWARD_SETTINGS, method=EXP.evaluate.bon_rows, seed=SEEDS, split=inference)
    return unaligned + refs + aligned + sampled + bon


EVAL_FILES = ("recs.jsonl", "metrics.json", "per_user.parquet")


def eval_outputs(root, policy=True):
    """Every file a row's scoring writes under ``root`` (results/eval/…/seed{seed}, blade/scoring.py):
    greedy lists and their metrics on each evaluate.splits, and for a policy (with evaluate.samples)
    sampled ones on each inference split, in {split}/sample/; a policy's lists come with cost.json."""
    names = EVAL_FILES + (("cost.json",) if policy else ())
    dirs = list(EXP.evaluate.splits)
    if policy and EXP.evaluate.samples:
        dirs += [f"{split}/sample" for split in EXP.evaluate.inference_splits]
    return [f"{root}/{d}/{name}" for d in dirs for name in names]


def present(paths):
    """A rule's per-run inputs: all of them (Snakemake builds what is missing), or — in a partial
    analysis (`--config partial=True`) — only those already written; the tables name the rest missing."""
    return [p for p in paths if os.path.exists(p)] if EXP.partial else paths
