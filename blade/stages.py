"""The pipeline's stages as the ``blade`` commands run them: resolve the stage's config sections,
open its MLflow run, do the work, log the final numbers and artifacts, write ``summary.json``.

:func:`run_stage` is the one place that does "resolve, track, summarise"; each stage function
below only says what its work is. The CLI (:mod:`blade.cli`) parses arguments and calls these.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from blade.config import from_dict
from blade.io import write_json


def sections(raw: Mapping[str, Any], **classes: type) -> dict[str, Any]:
    """Each named section of ``raw`` as its typed, validated config (defaults for missing ones)."""
    return {name: from_dict(cls, raw.get(name), name) for name, cls in classes.items()}


def run_stage(stage: str, dataset: str, method: str, seed: int, resolved: Mapping[str, Any],
              work: Callable[[Any], dict], summary_path: str | Path, run_dir: str | Path | None = None,
              reward: str | None = None, artifacts: tuple[str | Path, ...] = ()) -> dict:
    """Track ``work(tracker) -> summary`` as one MLflow run and write its summary atomically. In a
    data-parallel launch only the main process tracks and writes (blade/distributed.py)."""
    from blade.distributed import group
    from blade.tracking import track

    if not group().main:
        return work(None)

    with track(stage, dataset, method, seed, resolved, run_dir=run_dir, reward=reward) as tracker:
        summary = work(tracker)
        tracker.log_final({k: v for k, v in summary.items() if isinstance(v, (int, float)) and not isinstance(v, bool)})
        for path in artifacts:
            if Path(path).is_file():
                tracker.log_artifact(str(path))
            elif Path(path).is_dir():
                tracker.log_artifacts(str(path))
    write_json(summary_path, summary)
    return summary


def _plain(cfgs: Mapping[str, Any]) -> dict[str, Any]:
    return {k: dataclasses.asdict(v) for k, v in cfgs.items()}


def sft(raw: Mapping[str, Any], data: str, out: str, seed: int, dataset: str, eval_root: str | None = None) -> dict:
    """SFT, then (``eval_root``) the selected policy's lists and metrics (blade/scoring.py)."""
    from blade.distributed import group
    from blade.experiment import NO_REWARD, EvalConfig
    from blade.model.config import PolicyConfig
    from blade.scoring import score_row
    from blade.train.config import SFTConfig
    from blade.train.sft import train_sft

    cfg = sections(raw, policy=PolicyConfig, sft=SFTConfig, evaluate=EvalConfig)
    resolved = {**_plain(cfg), "seed": seed, "data": data}
    summary = run_stage("sft", dataset, "sft", seed, resolved, summary_path=f"{out}/summary.json", run_dir=out,
                        work=lambda t: train_sft(data, out, cfg["policy"], cfg["sft"], seed, t, cfg["evaluate"]),
                        artifacts=(f"{out}/train_log.parquet",))
    if eval_root and group().main:
        score_row(eval_root, data, cfg["evaluate"], seed, dataset, "sft", NO_REWARD, model=f"{out}/best")
    return summary


def reward_settings(raw: Mapping[str, Any], reward_name: str | None) -> dict[str, Any]:
    """The reward settings a command scores under: ``"rewards": {name: {...}}`` (several, one
    output each), or one ``"reward": {...}`` named ``reward_name``."""
    from blade.rewards import RewardConfig

    if "rewards" in raw:
        if not isinstance(raw["rewards"], Mapping) or not raw["rewards"]:
            from blade.errors import ConfigError

            raise ConfigError('--config-json: "rewards" must map each reward setting\'s name to its section')
        return {name: from_dict(RewardConfig, v, f"rewards.{name}") for name, v in raw["rewards"].items()}
    return {reward_name or "reward": from_dict(RewardConfig, raw.get("reward"), "reward")}


def per_setting(template: str, names, flag: str) -> dict[str, str]:
    """``{name: path}``: the ``{reward}`` placeholder of ``template`` filled with each setting's name."""
    names = list(names)
    if len(names) > 1 and "{reward}" not in template:
        from blade.errors import ConfigError

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
    summaries = reference_rollouts_scored(data, model, {n: (paths[n], settings[n]) for n in settings}, cfg, seed,
                                          device)
    for name, summary in summaries.items():
        resolved = {"rollout": dataclasses.asdict(cfg), "reward": dataclasses.asdict(settings[name]), "seed": seed,
                    "data": data, "model": model, "reward_setting": name}
        run_stage("rollout", dataset, "ref", seed, resolved, summary_path=f"{paths[name]}.summary.json", reward=name,
                  work=lambda t, done=summary: done)
    return summaries


def align(raw: Mapping[str, Any], data: str, sft_dir: str, rollouts: str, out: str, seed: int, dataset: str,
          method: str, reward_name: str | None, device: str | None, eval_root: str | None = None,
          curve: str | None = None) -> dict:
    """Alignment, then (``eval_root``) the selected policy's lists and metrics and (``curve``) the
    test scores of its per-step snapshots (blade/scoring.py)."""
    from blade.align.config import AlignConfig
    from blade.align.loop import align as align_loop
    from blade.errors import ConfigError
    from blade.experiment import EvalConfig, resolve_method
    from blade.rewards import RewardConfig

    cfg = sections(raw, align=AlignConfig, reward=RewardConfig, evaluate=EvalConfig)
    if "method" not in raw:
        raise ConfigError('--config-json: needs "method": {"objective": NAME, ...options}')
    entry = resolve_method(raw["method"], "method")
    resolved = {**_plain(cfg), "method": entry, "seed": seed, "data": data, "sft": sft_dir, "rollouts": rollouts,
                "reward_setting": reward_name}
    summary = run_stage("align", dataset, method, seed, resolved, summary_path=f"{out}/summary.json", run_dir=out,
                        reward=reward_name,
                        work=lambda t: align_loop(data, sft_dir, rollouts, out, entry, cfg["align"], cfg["reward"],
                                                  seed, t, device, cfg["evaluate"]),
                        artifacts=(f"{out}/diagnostics.parquet", f"{out}/valid_curve.parquet"))
    _score_aligned(out, data, cfg["evaluate"], seed, dataset, method, reward_name, device, eval_root, curve)
    return summary


def _score_aligned(out: str, data: str, evaluation, seed: int, dataset: str, method: str, reward_name: str | None,
                   device: str | None, eval_root: str | None, curve: str | None) -> None:
    from blade.distributed import group
    from blade.io import write_parquet
    from blade.scoring import score_row, snapshot_curve

    if not group().main:  # a data-parallel launch scores once, in its main process
        return
    if eval_root:
        score_row(eval_root, data, evaluation, seed, dataset, method, reward_name, model=f"{out}/best", device=device)
    if curve:
        write_parquet(curve, snapshot_curve(out, data, evaluation.table_split, evaluation, device))


def evaluate(recs: str, data: str, split: str, out: str, ks: list[int], dataset: str, method: str, seed: int,
             reward_name: str | None) -> dict:
    import json

    from blade.evaluation import evaluate as evaluate_recs

    resolved = {"recs": recs, "data": data, "split": split, "ks": list(ks), "reward_setting": reward_name}
    cost_file = Path(recs).with_name("cost.json")

    def work(tracker) -> dict:
        summary = evaluate_recs(recs, data, split, out, ks)
        if cost_file.is_file():  # what the lists cost at inference (policy rows only)
            summary.update({f"cost/{k}": v for k, v in json.loads(cost_file.read_text()).items()})
        return summary

    return run_stage(f"evaluate_{split}", dataset, method, seed, resolved, summary_path=f"{out}/metrics.json",
                     run_dir=out, reward=reward_name, work=work, artifacts=(out,))


def score(raw: Mapping[str, Any], data: str, root: str, seed: int, dataset: str, method: str,
          reward_name: str | None, model: str | None = None, reference: str | None = None,
          device: str | None = None) -> dict[str, dict]:
    """A saved policy's (``model``) or a reference recommender's lists and metrics on every
    evaluation split, under ``root`` = results/eval/{dataset}/{reward}/{method}/seed{s} (blade/scoring.py)."""
    from blade.experiment import EvalConfig
    from blade.scoring import score_row

    evaluation = sections(raw, evaluate=EvalConfig)["evaluate"]
    return score_row(root, data, evaluation, seed, dataset, method, reward_name, model, reference, device)


def bon(raw: Mapping[str, Any], model: str, data: str, split: str, out: str, seed: int, dataset: str,
        reward_name: str | None, device: str | None, evaluate_rows: bool = False) -> dict[str, dict[str, str]]:
    """Best-of-N rows over π_ref from one draw, picked by each reward setting (``out`` holds
    ``{method}``, and ``{reward}`` when there are several), each written with its cost and, with
    ``evaluate_rows``, evaluated beside it. Returns ``{setting: {row: recs path}}``."""
    from blade.errors import ConfigError
    from blade.experiment import EvalConfig
    from blade.recommend import best_of_n_settings, write_with_cost

    if "{method}" not in out:
        raise ConfigError("--out must hold {method}, e.g. results/eval/DS/ndcg/{method}/seed0/test/recs.jsonl")
    settings = reward_settings(raw, reward_name)
    outs = per_setting(out, settings, "--out")
    evaluation = sections(raw, evaluate=EvalConfig)["evaluate"]
    picked = best_of_n_settings(model, data, split, evaluation.k, evaluation.bon_n, settings, evaluation.batch_size,
                                seed, device)
    written = {}
    for name, rows in picked.items():
        paths = written[name] = {}
        for (kind, n), (lists, cost) in rows.items():
            paths[f"{kind}_n{n}"] = outs[name].replace("{method}", f"{kind}_n{n}")
            write_with_cost(paths[f"{kind}_n{n}"], lists, cost)
        print(f"wrote Best-of-N lists by {name} for N in {evaluation.bon_n} to {outs[name]}")
        for method, recs in paths.items() if evaluate_rows else ():
            evaluate(recs, data, split, str(Path(recs).parent), evaluation.ks, dataset, method, seed,
                     name if "rewards" in raw else reward_name)
    return written
