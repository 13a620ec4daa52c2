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
decoding and scoring per row (for BoN@N: the shared draw's time scaled by N / max N).
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np
import pandas as pd

from blade.data.canonical import load_prepared
from blade.errors import ConfigError
from blade.evaluation import write_recs
from blade.io import write_json
from blade.experiment import REFERENCE_ROWS


def reference_lists(name: str, data_dir: str | Path, split: str, k: int, seed: int = 0) -> np.ndarray:
    """(rows, k) item ids of the reference recommender ``name`` (one of REFERENCE_ROWS); ``seed``
    seeds the trained one (sasrec: fitted on train, early-stopped on valid, blade/sasrec.py)."""
    from blade.reference import CoOccurrence, most_popular

    items, splits, _ = load_prepared(data_dir)
    frame, ids = splits[split], items["item_id"].to_numpy()
    if name == "mostpop":
        return np.asarray(most_popular(splits["train"], ids, len(frame), k))
    if name == "cooc":
        return np.asarray(CoOccurrence(splits["train"], ids).recommend(frame["history"].tolist(), k))
    if name == "sasrec":
        from blade.sasrec import sasrec_lists

        return sasrec_lists(splits["train"], splits["valid"], frame, ids, k, seed)
    raise ConfigError(f"reference: unknown row {name!r}; choose one of {list(REFERENCE_ROWS)}")


def policy_lists(model_dir: str | Path, data_dir: str | Path, split: str, k: int, batch_size: int,
                 device: str | None = None) -> tuple[np.ndarray, dict[str, float]]:
    """(rows, k) item ids of a saved policy's greedy constrained lists, and the cost."""
    from blade.sampling import ListSampler

    policy, frame, prompts = _load(model_dir, data_dir, split, k, device)
    started = time.perf_counter()
    lists = ListSampler(policy, k, batch_size=batch_size).generate(prompts, greedy=True)
    rows = max(len(frame), 1)
    cost = {"samples_per_user": 1.0, "tokens_per_user": float(lists.mask.sum()) / rows,
            "seconds_per_user": (time.perf_counter() - started) / rows}
    return lists.items.numpy(), cost


def _load(model_dir, data_dir: str | Path, split: str, k: int, device: str | None):
    """The policy (``model_dir``: a saved policy's directory, or an already loaded ``Policy``), the
    split and its prompts."""
    from blade.model.policy import Policy
    from blade.seeding import pin_cpu_threads

    pin_cpu_threads()  # decoding gives the same bits whatever the machine's core count
    _, splits, _ = load_prepared(data_dir)
    policy = model_dir if isinstance(model_dir, Policy) else Policy.load(model_dir, device)
    policy.model.eval()
    frame = splits[split]
    return policy, frame, [policy.codec.prompt(h, k) for h in frame["history"]]


def sampled_lists(model_dir: str | Path, data_dir: str | Path, split: str, k: int, samples: int, batch_size: int,
                  seed: int, device: str | None = None) -> tuple[np.ndarray, dict[str, float]]:
    """(samples, rows, k) item ids: independent constrained samples at temperature 1, and the cost."""
    from blade.sampling import ListSampler
    from blade.seeding import torch_generator

    policy, frame, prompts = _load(model_dir, data_dir, split, k, device)
    started = time.perf_counter()
    gen = torch_generator(policy.device, seed, _SPLIT_KEY[split])
    lists = ListSampler(policy, k, batch_size=batch_size).generate(
        [p for p in prompts for _ in range(samples)], greedy=False, generator=gen)
    seconds = time.perf_counter() - started
    items = lists.items.numpy().reshape(len(frame), samples, k).transpose(1, 0, 2)
    cost = {"samples_per_user": 1.0, "tokens_per_user": float(lists.mask.sum()) / (len(frame) * samples),
            "seconds_per_user": seconds / (len(frame) * samples)}
    return items, cost


def best_of_n(model_dir: str | Path, data_dir: str | Path, split: str, k: int, ns: list[int], reward_cfg,
              batch_size: int, seed: int, device: str | None = None) -> dict[tuple[str, int], tuple[np.ndarray, dict]]:
    """``{("bon"|"oracle_bon", N): ((rows, k) lists, cost)}`` for every N in ``ns`` (docs/method.md (5.7))."""
    return best_of_n_settings(model_dir, data_dir, split, k, ns, {"reward": reward_cfg}, batch_size, seed,
                              device)["reward"]


def best_of_n_settings(model_dir: str | Path, data_dir: str | Path, split: str, k: int, ns: list[int],
                       reward_cfgs: dict, batch_size: int, seed: int, device: str | None = None,
                       ) -> dict[str, dict[tuple[str, int], tuple[np.ndarray, dict]]]:
    """:func:`best_of_n` under each reward setting of ``reward_cfgs`` (``{name: RewardConfig}``),
    from one shared draw: π_ref's lists do not depend on the reward, only the pick does."""
    from blade.rewards import ListReward

    items, splits, stats = load_prepared(data_dir)
    n_max = max(ns)
    draws, draw_cost = sampled_lists(model_dir, data_dir, split, k, n_max, batch_size, seed, device)  # (N, rows, k)
    frame = splits[split]
    rows = len(frame)
    histories = [h for h in frame["history"].tolist() for _ in range(n_max)]
    flat = draws.transpose(1, 0, 2).reshape(rows * n_max, k)  # row-major: row r's N lists together
    out = {}
    for name, reward_cfg in reward_cfgs.items():
        started = time.perf_counter()
        oracle = ListReward(reward_cfg, items, splits["train"], stats)
        scores = {"oracle_bon": oracle(histories, np.repeat(frame["target"].to_numpy(), n_max), flat)["reward"],
                  "bon": ListReward(inference_reward(reward_cfg), items, splits["train"], stats)(histories, None,
                                                                                                flat)["reward"]}
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
    """The reward BoN can use at inference: the setting with its ground-truth ``ndcg`` weight moved
    to the train-only ``relevance`` model (docs/method.md (4.2)); list parts kept as they are."""
    weights = dict(reward_cfg.weights)
    moved = weights.pop("ndcg", 0.0)
    if moved:
        weights["relevance"] = weights.get("relevance", 0.0) + moved
    return dataclasses.replace(reward_cfg, weights=weights)


# a fixed key per split, so valid and test draws differ but do not depend on the run order
_SPLIT_KEY = {"train": 0, "valid": 1, "test": 2}


def write_with_cost(out: str | Path, lists: np.ndarray, cost: dict | None) -> None:
    write_recs(out, lists)
    if cost is not None:
        write_json(Path(out).with_name("cost.json"), cost)


def recommend(out: str | Path, data_dir: str | Path, split: str, k: int, batch_size: int,
              model_dir: str | Path | None = None, reference: str | None = None, device: str | None = None,
              samples: int = 0, seed: int = 0) -> int:
    """Write the lists to ``out`` (JSON lines ``{row, items}``, plus ``sample`` with ``samples`` > 0)
    and, for a policy, ``cost.json`` beside it; returns the number of rows."""
    if (model_dir is None) == (reference is None):
        raise ConfigError("recommend: give exactly one of a model directory or a reference row name")
    n_items = len(pd.read_parquet(Path(data_dir) / "items.parquet", columns=["item_id"]))
    if k > n_items:
        raise ConfigError(f"evaluate.k = {k}, but the catalogue of {data_dir} holds {n_items} items: a list cannot "
                          f"hold {k} distinct items; set evaluate.k (and evaluate.ks) to at most {n_items}")
    if reference:
        lists, cost = reference_lists(reference, data_dir, split, k, seed), None
    elif samples:
        lists, cost = sampled_lists(model_dir, data_dir, split, k, samples, batch_size, seed, device)
    else:
        lists, cost = policy_lists(model_dir, data_dir, split, k, batch_size, device)
    write_with_cost(out, lists, cost)
    return lists.shape[-2]
