# Shared helpers. The config is checked against the schema (structure), then resolved once into a
# typed experiment config (blade/experiment.py): every option validated where it is defined, every
# default filled in. The rules hand its sections to the `blade` commands as JSON.
import json
import re
import os
import sys

from snakemake.utils import validate

from blade.eval.config import NO_REWARD, UNALIGNED_ROWS
from blade.experiment import resolve
from blade.model.base_models import base_dir
from blade.tracking import use_tracking_uri


validate(config, "../schemas/config.schema.yaml")
EXP = resolve(config)

DATASETS = EXP.run.datasets
SEEDS = EXP.run.seeds
ALIGNED = EXP.aligned  # run.methods, then run.sweep (under the first reward setting and run.sweep_rewards)
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


# policy.model names a base model converted by rule base_model (when policy.path is its default folder).
BASE_MODEL = ([f"{EXP.policy.path}/base_model.json"]
              if EXP.policy.model and EXP.policy.path == str(base_dir(EXP.policy.model)) else [])

# the SFT row's evaluation root: written by rule sft, read back by rule align (the curve's step 0)
SFT_EVAL = f"results/eval/{{dataset}}/{NO_REWARD}/sft/seed{{seed}}"


def _alternatives(names):
    return "|".join(re.escape(n) for n in names) or "(?!)"


wildcard_constraints:
    dataset=r"[^/]+",
    seed=r"\d+",
    split="valid|test",
    reward=_alternatives(REWARD_SETTINGS),
    method=_alternatives(ALIGNED),
    model=r"[^/]+",


def sections_json(*names, **extra):
    """The named sections of the resolved config (plus extra entries) as one JSON argument.
    evaluate.external is left out: no job but its own row's reads it (rule score_external), and
    adding an external row must not change — and so rerun — every trained row's job (its paths'
    {split} would also read as a wildcard in a param string)."""
    sections = {n: EXP.section(n) for n in names}
    if "evaluate" in sections:
        sections["evaluate"].pop("external", None)
    return json.dumps({**sections, **extra}, sort_keys=True, default=str)


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
    return unaligned + refs + aligned + sampled + bon + external_metrics()


EVAL_FILES = ("recs.jsonl", "metrics.json", "per_user.parquet")


def eval_outputs(root, policy=True):
    """Every file a row's scoring writes under ``root`` (results/eval/…/seed{seed}, blade/eval/scoring.py):
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


# ------------------------------------------------------------------ external rows (evaluate.external)
def external_metrics():
    """metrics.json of every external row: each dataset, seed of the row and evaluate.splits (reward
    setting `none`, like SFT and the references); none when evaluate.external is empty."""
    return [f"results/eval/{dataset}/{NO_REWARD}/{name}/seed{seed}/{split}/metrics.json"
            for dataset in DATASETS for name, ext in EXP.evaluate.external.items()
            for seed in ext.seeds_for(SEEDS) for split in EXP.evaluate.splits]


def external_file(wildcards):
    """The recommendations file of one external row's job: evaluate.external.NAME.path filled in."""
    ext = EXP.evaluate.external[wildcards.external]
    return ext.path_for(wildcards.dataset, wildcards.split, int(wildcards.seed))


def external_content(wildcards):
    """The sha256 of the row's file and of its cost sidecar ("absent" where there is none). A param,
    so that Snakemake reruns the row when either changes; the files are not inputs, so that a
    missing one fails that row's job with a message, not the whole DAG before any job runs."""
    from blade.eval.config import ExternalRow
    from blade.io import sha256_file

    recs = external_file(wildcards)
    return " ".join(sha256_file(p) if os.path.isfile(p) else "absent" for p in (recs, ExternalRow.cost_path(recs)))


from blade.eval.config import COST_KEYS  # the suite's cost.json keys (blade/eval/lists.py)


def score_external(wildcards, input, output, params, log):
    """Rule score_external's job: check the row's files, copy them in (recs.jsonl, and cost.json
    from the sidecar — or no cost.json: the cost is unknown), then `blade evaluate` the copy, which
    reads the cost.json beside it into metrics.json as cost/*. An error is written to the log and
    stops the job (Snakemake prints it); it names the config key and the file."""
    from blade.errors import BladeError

    open(log, "w").close()
    try:
        _score_external(wildcards, input, output, params.source, log)
    except BladeError as exc:
        row_cost = os.path.join(os.path.dirname(output.recs), "cost.json")
        if os.path.exists(row_cost):  # not an output (a row may have none): Snakemake would leave it behind
            os.remove(row_cost)
        with open(log, "a") as fh:
            print(f"error: {exc}", file=fh)
        raise


def _score_external(wildcards, input, output, recs, log):
    import shutil
    import subprocess

    from blade.errors import ConfigError, DataError
    from blade.eval.config import ExternalRow
    from blade.io import atomic_path

    name, seed, split, dataset = wildcards.external, int(wildcards.seed), wildcards.split, wildcards.dataset
    ext, key = EXP.evaluate.external[name], f"evaluate.external.{name}.path"
    if seed not in ext.seeds_for(SEEDS):
        raise ConfigError(f"evaluate.external.{name}: seed {seed} is not one of the row's seeds "
                          f"{list(ext.seeds_for(SEEDS))} (its seeds, else run.seeds where the path holds {{seed}}, "
                          "else 0)")
    if not os.path.isfile(recs):
        raise ConfigError(f"{key} = {ext.path!r}: no file {recs} (dataset {dataset}, split {split}, seed {seed}; "
                          f"relative paths start at {os.getcwd()}). Write it there — JSON lines "
                          '{"row": r, "items": [item ids, best first]}, one per row of '
                          f"results/data/{dataset}/{split}.parquet — or fix the path")
    cost, row_cost = ExternalRow.cost_path(recs), os.path.join(os.path.dirname(output.recs), "cost.json")
    if os.path.isfile(cost):
        _check_cost(cost, key)
    for source, target in ((recs, output.recs), (cost, row_cost)):
        if os.path.isfile(source):
            with atomic_path(target) as tmp:
                shutil.copyfile(source, tmp)
        elif os.path.exists(target):  # a sidecar since deleted: the cost is unknown now
            os.remove(target)
    command = [sys.executable, "-m", "blade.cli", "evaluate", "--recs", output.recs, "--data",
               os.path.dirname(input.stats), "--split", split, "--out", os.path.dirname(output.recs), "--ks",
               ",".join(str(k) for k in EXP.evaluate.ks), "--dataset", dataset, "--method", name, "--seed", str(seed),
               "--reward-setting", NO_REWARD]
    with open(log, "a") as fh:
        print(f"{recs} -> {output.recs}; " + (f"{cost} -> {row_cost}" if os.path.isfile(cost) else
                                              f"no {cost}: the cost is unknown"), file=fh, flush=True)
        done = subprocess.run(command, stdout=fh, stderr=subprocess.STDOUT)
    if done.returncode:
        said = [line.split("error:", 1)[1].strip() for line in open(log).read().splitlines() if "error:" in line]
        raise DataError(f"{key}: " + (said[-1].replace(output.recs, recs) if said else f"`blade evaluate` failed "
                                      f"(exit status {done.returncode}; see the log above)")
                        + f" — `blade evaluate` read {output.recs}, a byte-for-byte copy of {recs}, so line "
                          "numbers are that file's; fix it and rerun")


def _check_cost(path, key):
    """A cost sidecar: a JSON object of the suite's cost keys, samples_per_user required. A wrong
    one is an error, never a guessed or partly read cost."""
    from blade.errors import DataError

    try:
        with open(path) as fh:
            cost = json.load(fh)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        where = f" at line {exc.lineno}" if isinstance(exc, json.JSONDecodeError) else ""
        raise DataError(f"{key}: the cost sidecar {path} is not valid JSON{where}; write "
                        '{"samples_per_user": S, "tokens_per_user": T, "seconds_per_user": X} or delete it '
                        "(the row's cost is then unknown)") from exc
    numbers = isinstance(cost, dict) and all(isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0
                                             for v in cost.values())
    unknown = sorted(set(cost) - set(COST_KEYS)) if isinstance(cost, dict) else []
    if not numbers or unknown or "samples_per_user" not in cost or cost["samples_per_user"] <= 0:
        raise DataError(f"{key}: the cost sidecar {path} must be a JSON object of numbers >= 0 with keys from "
                        f"{list(COST_KEYS)}, samples_per_user > 0 required"
                        + (f" (unknown keys: {unknown})" if unknown else "") + f"; got {str(cost)[:200]}")
