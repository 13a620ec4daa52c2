"""Recommendation lists for a split, and what they cost at inference.

- a trained policy's **greedy** constrained lists (the main table), or its **sampled** lists
  (``samples`` independent lists per row at temperature 1: what BoN alignment promises — one sample
  as good as Best-of-N — is judged on these);
- **Best-of-N** over π_ref (docs/method.md (5.7)): N lists sampled per row, the best kept. ``bon``
  picks by the inference reward (the reward setting with its ground-truth ``ndcg`` part replaced by
  the train-only ``relevance`` model: the target is unknown at inference), ``oracle_bon`` by the
  setting's own reward with the ground truth — the static upper bound of BoN alignment. One draw of
  ``max(ns)`` lists serves every N (the first N of them), so the BoN curve over N is nested;
- a classic reference row (most popular, item co-occurrence, SASRec) fitted on train only (SASRec
  early-stops on valid).

Each policy-based file gets a ``cost.json`` beside it: samples drawn, tokens decoded and seconds of
decoding and scoring per row (for BoN@N: the shared draw's time scaled by N / max N). Every
function takes the loaded :class:`blade.data.PreparedData` and, for a policy, the loaded
:class:`blade.model.policy.Policy`.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np

from blade.data.prepared import PreparedData
from blade.errors import ConfigError
from blade.eval.config import REFERENCE_ROWS
from blade.eval.recs import write_recs
from blade.io import write_json

# a fixed key per split, so valid and test draws differ but do not depend on the run order
_SPLIT_KEY = {"train": 0, "valid": 1, "test": 2}


def reference_lists(name: str, data: PreparedData, split: str, k: int, seed: int = 0) -> np.ndarray:
    """(rows, k) item ids of the reference recommender ``name`` (one of REFERENCE_ROWS); ``seed``
    seeds the trained one (sasrec: fitted on train, early-stopped on valid, blade/eval/sasrec.py)."""
    from blade.reference import CoOccurrence, most_popular

    frame = data.split(split)
    if name == "mostpop":
        return np.asarray(most_popular(data.train, data.item_ids, len(frame), k))
    if name == "cooc":
        return np.asarray(CoOccurrence(data.train, data.item_ids).recommend(frame["history"].tolist(), k))
    if name == "sasrec":
        from blade.eval.sasrec import sasrec_lists

        return sasrec_lists(data.train, data.valid, frame, data.item_ids, k, seed)
    raise ConfigError(f"reference: unknown row {name!r}; choose one of {list(REFERENCE_ROWS)}")


def _prompts(policy, frame, k: int) -> list[list[int]]:
    """The split's prompts, with the policy in eval mode and torch pinned to one thread (decoding
    gives the same bits whatever the machine's core count)."""
    from blade.seeding import pin_cpu_threads

    pin_cpu_threads()
    policy.model.eval()
    return [policy.codec.prompt(h, k) for h in frame["history"]]


def policy_lists(policy, data: PreparedData, split: str, k: int, batch_size: int) -> tuple[np.ndarray, dict[str, float]]:
    """(rows, k) item ids of a policy's greedy constrained lists, and the cost."""
    from blade.sampling import ListSampler

    frame = data.split(split)
    prompts = _prompts(policy, frame, k)
    started = time.perf_counter()
    lists = ListSampler(policy, k, batch_size=batch_size).generate(prompts, greedy=True)
    rows = max(len(frame), 1)
    cost = {"samples_per_user": 1.0, "tokens_per_user": float(lists.mask.sum()) / rows,
            "seconds_per_user": (time.perf_counter() - started) / rows}
    return lists.items.numpy(), cost


def sampled_lists(policy, data: PreparedData, split: str, k: int, samples: int, batch_size: int,
                  seed: int) -> tuple[np.ndarray, dict[str, float]]:
    """(samples, rows, k) item ids: independent constrained samples at temperature 1, and the cost."""
    from blade.sampling import ListSampler
    from blade.seeding import torch_generator

    frame = data.split(split)
    prompts = _prompts(policy, frame, k)
    started = time.perf_counter()
    gen = torch_generator(policy.device, seed, _SPLIT_KEY[split])
    lists = ListSampler(policy, k, batch_size=batch_size).generate(
        [p for p in prompts for _ in range(samples)], greedy=False, generator=gen)
    seconds = time.perf_counter() - started
    items = lists.items.numpy().reshape(len(frame), samples, k).transpose(1, 0, 2)
    cost = {"samples_per_user": 1.0, "tokens_per_user": float(lists.mask.sum()) / (len(frame) * samples),
            "seconds_per_user": seconds / (len(frame) * samples)}
    return items, cost


def best_of_n(policy, data: PreparedData, split: str, k: int, ns: list[int], reward_cfg, batch_size: int,
              seed: int) -> dict[tuple[str, int], tuple[np.ndarray, dict]]:
    """``{("bon"|"oracle_bon", N): ((rows, k) lists, cost)}`` for every N in ``ns`` (docs/method.md (5.7))."""
    return best_of_n_settings(policy, data, split, k, ns, {"reward": reward_cfg}, batch_size, seed)["reward"]


def best_of_n_settings(policy, data: PreparedData, split: str, k: int, ns: list[int], reward_cfgs: dict,
                       batch_size: int, seed: int) -> dict[str, dict[tuple[str, int], tuple[np.ndarray, dict]]]:
    """:func:`best_of_n` under each reward setting of ``reward_cfgs`` (``{name: RewardConfig}``),
    from one shared draw: π_ref's lists do not depend on the reward, only the pick does."""
    from blade.rewards import ListReward

    n_max = max(ns)
    draws, draw_cost = sampled_lists(policy, data, split, k, n_max, batch_size, seed)  # (N, rows, k)
    frame = data.split(split)
    rows = len(frame)
    histories = [h for h in frame["history"].tolist() for _ in range(n_max)]
    flat = draws.transpose(1, 0, 2).reshape(rows * n_max, k)  # row-major: row r's N lists together
    out = {}
    for name, reward_cfg in reward_cfgs.items():
        started = time.perf_counter()
        oracle = ListReward(reward_cfg, data.items, data.train, data.stats)
        inference = ListReward(inference_reward(reward_cfg), data.items, data.train, data.stats)
        scores = {"oracle_bon": oracle(histories, np.repeat(frame["target"].to_numpy(), n_max), flat)["reward"],
                  "bon": inference(histories, None, flat)["reward"]}
        score_seconds = (time.perf_counter() - started) / (rows * n_max)
        out[name] = {}
        for kind, s in scores.items():
            s = s.reshape(rows, n_max)
            for n in ns:
                best = s[:, :n].argmax(1)  # the first best on ties
                cost = {"samples_per_user": float(n), "tokens_per_user": n * draw_cost["tokens_per_user"],
                        "seconds_per_user": n * (draw_cost["seconds_per_user"] + score_seconds)}
                out[name][kind, n] = (draws[best, np.arange(rows)], cost)
    return out


def inference_reward(reward_cfg):
    """The reward BoN can use at inference: the setting with its ground-truth weights (``ndcg``,
    ``future``: :data:`blade.rewards.GROUND_TRUTH_REWARDS`) moved to the train-only ``relevance``
    model (docs/method.md (4.2)); list parts kept as they are."""
    from blade.rewards import GROUND_TRUTH_REWARDS

    weights = dict(reward_cfg.weights)
    moved = sum(weights.pop(name, 0.0) for name in GROUND_TRUTH_REWARDS)
    if moved:
        weights["relevance"] = weights.get("relevance", 0.0) + moved
    return dataclasses.replace(reward_cfg, weights=weights)


def write_with_cost(out: str | Path, lists: np.ndarray, cost: dict | None) -> None:
    write_recs(out, lists)
    if cost is not None:
        write_json(Path(out).with_name("cost.json"), cost)


def recommend(out: str | Path, data: PreparedData, split: str, k: int, batch_size: int, policy=None,
              reference: str | None = None, samples: int = 0, seed: int = 0) -> int:
    """Write the lists of a policy or a reference row to ``out`` (JSON lines ``{row, items}``, plus
    ``sample`` with ``samples`` > 0) and, for a policy, ``cost.json`` beside it; returns the rows."""
    if (policy is None) == (reference is None):
        raise ConfigError("recommend: give exactly one of a model directory or a reference row name")
    if k > data.n_items:
        raise ConfigError(f"evaluate.k = {k}, but the catalogue of {data.directory} holds {data.n_items} items: a list "
                          f"cannot hold {k} distinct items; set evaluate.k (and evaluate.ks) to at most {data.n_items}")
    if reference:
        lists, cost = reference_lists(reference, data, split, k, seed), None
    elif samples:
        lists, cost = sampled_lists(policy, data, split, k, samples, batch_size, seed)
    else:
        lists, cost = policy_lists(policy, data, split, k, batch_size)
    write_with_cost(out, lists, cost)
    return lists.shape[-2]
