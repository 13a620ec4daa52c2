"""The pipeline's stages as the ``blade`` commands run them: resolve the stage's config sections,
load the dataset once (:class:`blade.data.PreparedData`), open the stage's MLflow run
(:func:`blade.tracking.run_stage`), do the work, score what it made (blade/eval/).

One short function per stage; the CLI (:mod:`blade.cli`) parses arguments and calls these.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from blade.config import from_dict
from blade.data.prepared import PreparedData
from blade.errors import ConfigError
from blade.eval.config import NO_REWARD, EvalConfig
from blade.tracking import run_stage


def sections(raw: Mapping[str, Any], **classes: type) -> dict[str, Any]:
    """Each named section of ``raw`` as its typed, validated config (defaults for missing ones)."""
    return {name: from_dict(cls, raw.get(name), name) for name, cls in classes.items()}


def _plain(cfgs: Mapping[str, Any]) -> dict[str, Any]:
    return {k: dataclasses.asdict(v) for k, v in cfgs.items()}


def _main() -> bool:
    """Whether this process scores and writes (a data-parallel launch does so once, in its main process)."""
    from blade.distributed import group

    return group().main


def sft(raw: Mapping[str, Any], data: str, out: str, seed: int, dataset: str, eval_root: str | None = None) -> dict:
    """SFT, then (``eval_root``) the selected policy's lists and metrics."""
    from blade.eval.scoring import score_row
    from blade.model.config import PolicyConfig
    from blade.model.policy import Policy
    from blade.train.config import SFTConfig
    from blade.train.sft import train_sft

    cfg = sections(raw, policy=PolicyConfig, sft=SFTConfig, evaluate=EvalConfig)
    prepared = PreparedData.load(data)
    resolved = {**_plain(cfg), "seed": seed, "data": data}
    summary = run_stage("sft", dataset, "sft", seed, resolved, summary_path=f"{out}/summary.json", run_dir=out,
                        work=lambda t: train_sft(prepared, out, cfg["policy"], cfg["sft"], seed, t, cfg["evaluate"]),
                        artifacts=(f"{out}/train_log.parquet",))
    if eval_root and _main():
        score_row(eval_root, prepared, cfg["evaluate"], seed, dataset, "sft", NO_REWARD,
                  policy=Policy.load(f"{out}/best"))
    return summary


def reward_settings(raw: Mapping[str, Any], reward_name: str | None) -> dict[str, Any]:
    """The reward settings a command scores under: ``"rewards": {name: {...}}`` (several, one
    output each), or one ``"reward": {...}`` named ``reward_name``."""
    from blade.rewards import RewardConfig

    if "rewards" in raw:
        if not isinstance(raw["rewards"], Mapping) or not raw["rewards"]:
            raise ConfigError('--config-json: "rewards" must map each reward setting\'s name to its section')
        return {name: from_dict(RewardConfig, v, f"rewards.{name}") for name, v in raw["rewards"].items()}
    return {reward_name or "reward": from_dict(RewardConfig, raw.get("reward"), "reward")}


def per_setting(template: str, names, flag: str) -> dict[str, str]:
    """``{name: path}``: the ``{reward}`` placeholder of ``template`` filled with each setting's name."""
    names = list(names)
    if len(names) > 1 and "{reward}" not in template:
        raise ConfigError(f"{flag} {template!r}: several reward settings need a {{reward}} placeholder in the path")
    return {name: template.replace("{reward}", name) for name in names}


def rollout(raw: Mapping[str, Any], data: str, model: str, out: str, seed: int, dataset: str,
            reward_name: str | None, device: str | None) -> dict[str, dict]:
    """One draw of reference rollouts from π_ref, scored under each reward setting (one file and one
    MLflow run each: ``out`` holds ``{reward}`` when there are several)."""
    from blade.align.config import RolloutConfig
    from blade.align.rollout import reference_rollouts_scored

    cfg = sections(raw, rollout=RolloutConfig)["rollout"]
    settings = reward_settings(raw, reward_name)
    paths = per_setting(out, settings, "--out")
    summaries = reference_rollouts_scored(PreparedData.load(data), model,
                                          {n: (paths[n], settings[n]) for n in settings}, cfg, seed, device)
    for name, summary in summaries.items():
        resolved = {"rollout": dataclasses.asdict(cfg), "reward": dataclasses.asdict(settings[name]), "seed": seed,
                    "data": data, "model": model, "reward_setting": name}
        run_stage("rollout", dataset, "ref", seed, resolved, summary_path=f"{paths[name]}.summary.json", reward=name,
                  work=lambda t, done=summary: done)
    return summaries


def align(raw: Mapping[str, Any], data: str, sft_dir: str, rollouts: str, out: str, seed: int, dataset: str,
          method: str, reward_name: str | None, device: str | None, eval_root: str | None = None,
          curve: str | None = None, sft_eval_root: str | None = None) -> dict:
    """Alignment, then (``eval_root``) the selected policy's lists and metrics and (``curve``) the
    test scores of its per-step snapshots; a snapshot that is the selected policy or (with
    ``sft_eval_root``, the SFT row's evaluation) the SFT start reuses those lists."""
    from blade.align.config import AlignConfig
    from blade.align.loop import align as align_loop
    from blade.align.registry import Method
    from blade.rewards import RewardConfig

    cfg = sections(raw, align=AlignConfig, reward=RewardConfig, evaluate=EvalConfig)
    if "method" not in raw:
        raise ConfigError('--config-json: needs "method": {"objective": NAME, ...options}')
    entry = Method.from_entry(raw["method"], "method")  # resolved once; the loop builds its objective from it
    prepared = PreparedData.load(data)
    resolved = {**_plain(cfg), "method": entry.as_dict(), "seed": seed, "data": data, "sft": sft_dir,
                "rollouts": rollouts, "reward_setting": reward_name}
    summary = run_stage("align", dataset, method, seed, resolved, summary_path=f"{out}/summary.json", run_dir=out,
                        reward=reward_name,
                        work=lambda t: align_loop(prepared, sft_dir, rollouts, out, entry, cfg["align"], cfg["reward"],
                                                  seed, t, device, cfg["evaluate"]),
                        artifacts=(f"{out}/diagnostics.parquet", f"{out}/valid_curve.parquet"))
    if _main():
        # the step the row's policy was selected at (0 = the SFT start kept) and the selection's resolution
        selection = {"selection/step": summary.get("best_step"), "selection/mde": summary.get("selection/mde"),
                     "selection/rows": summary.get("selection/rows")}
        _score_aligned(out, prepared, cfg["evaluate"], seed, dataset, method, reward_name, device, eval_root, curve,
                       selection, {f"{sft_dir}/best": sft_eval_root} if sft_eval_root else {})
    return summary


def _score_aligned(out: str, data: PreparedData, evaluation: EvalConfig, seed: int, dataset: str, method: str,
                   reward_name: str | None, device: str | None, eval_root: str | None, curve: str | None,
                   selection: dict | None = None, scored_roots: dict[str, str] | None = None) -> None:
    from blade.eval.scoring import score_row, snapshot_curve
    from blade.io import write_parquet
    from blade.model.policy import Policy

    if eval_root:
        score_row(eval_root, data, evaluation, seed, dataset, method, reward_name,
                  policy=Policy.load(f"{out}/best", device), extra=selection)
    if curve:
        scored = {**(scored_roots or {}), **({f"{out}/best": eval_root} if eval_root else {})}  # policy → its eval root
        if evaluation.table_split not in evaluation.splits:  # those roots hold no lists of this config on that split
            scored = {}
        write_parquet(curve, snapshot_curve(out, data, evaluation.table_split, evaluation, device, scored))


def evaluate(recs: str, data: str, split: str, out: str, ks: list[int], dataset: str, method: str, seed: int,
             reward_name: str | None) -> dict:
    """Score any recommendations file (an external model's included) against a split."""
    from blade.eval.scoring import evaluate_tracked

    return evaluate_tracked(recs, PreparedData.load(data), split, out, ks, dataset, method, seed, reward_name)


def recommend(out: str, data: str, split: str, k: int, batch_size: int, model: str | None = None,
              reference: str | None = None, device: str | None = None, samples: int = 0, seed: int = 0) -> int:
    """Write a saved policy's or a reference row's lists for a split."""
    from blade.eval.lists import recommend as write_lists
    from blade.model.policy import Policy

    if (model is None) == (reference is None):
        raise ConfigError("recommend: give exactly one of a model directory or a reference row name")
    prepared = PreparedData.load(data)
    policy = Policy.load(model, device) if model is not None else None
    return write_lists(out, prepared, split, k, batch_size, policy, reference, samples, seed)


def score(raw: Mapping[str, Any], data: str, root: str, seed: int, dataset: str, method: str,
          reward_name: str | None, model: str | None = None, reference: str | None = None,
          device: str | None = None) -> dict[str, dict]:
    """A saved policy's (``model``) or a reference recommender's lists and metrics on every
    evaluation split, under ``root`` = results/eval/{dataset}/{reward}/{method}/seed{s}."""
    from blade.eval.scoring import score_row
    from blade.model.policy import Policy

    evaluation = sections(raw, evaluate=EvalConfig)["evaluate"]
    prepared = PreparedData.load(data)
    policy = Policy.load(model, device) if model is not None else None
    return score_row(root, prepared, evaluation, seed, dataset, method, reward_name, policy, reference)


def bon(raw: Mapping[str, Any], model: str, data: str, split: str, out: str, seed: int, dataset: str,
        reward_name: str | None, device: str | None, evaluate_rows: bool = False) -> dict[str, dict[str, str]]:
    """Best-of-N rows over π_ref from one draw, picked by each reward setting (``out`` holds
    ``{method}``, and ``{reward}`` when there are several), each written with its cost and, with
    ``evaluate_rows``, evaluated beside it. Returns ``{setting: {row: recs path}}``."""
    from blade.eval.lists import best_of_n_settings, write_with_cost
    from blade.eval.scoring import evaluate_tracked
    from blade.model.policy import Policy

    if "{method}" not in out:
        raise ConfigError("--out must hold {method}, e.g. results/eval/DS/ndcg/{method}/seed0/test/recs.jsonl")
    settings = reward_settings(raw, reward_name)
    outs = per_setting(out, settings, "--out")
    evaluation = sections(raw, evaluate=EvalConfig)["evaluate"]
    prepared = PreparedData.load(data)
    picked = best_of_n_settings(Policy.load(model, device), prepared, split, evaluation.k, evaluation.bon_n, settings,
                                evaluation.batch_size, seed)
    written = {}
    for name, rows in picked.items():
        paths = written[name] = {}
        for (kind, n), (lists, cost) in rows.items():
            paths[f"{kind}_n{n}"] = outs[name].replace("{method}", f"{kind}_n{n}")
            write_with_cost(paths[f"{kind}_n{n}"], lists, cost)
        print(f"wrote Best-of-N lists by {name} for N in {evaluation.bon_n} to {outs[name]}")
        for method, recs in paths.items() if evaluate_rows else ():
            evaluate_tracked(recs, prepared, split, str(Path(recs).parent), evaluation.ks, dataset, method, seed,
                             name if "rewards" in raw else reward_name)
    return written
