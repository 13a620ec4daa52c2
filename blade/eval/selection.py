"""Model selection on the valid split: SFT's early stopping and alignment's step selection.

Both decode greedy lists on a fixed, seed-independent set of valid rows and score them; the test
split is never read. The two read **disjoint** rows of one fixed permutation of valid:
SFT early-stops on its first ``evaluate.selection_rows`` rows, at most half of valid (Goodreads'
valid split holds 501 rows); alignment selects its step on the rows after those
(``evaluate.align_selection_rows`` of them, 0 = every valid row SFT did not select on). Were they the same rows, the SFT start (step 0) would carry the maximum SFT took on
them, and a later step would have to beat a score inflated by that selection (a winner's curse
towards step 0, docs/method.md §6).

Alignment can select on ``reward``: the valid mean of its own reward setting on those lists (the
accuracy part from the valid target, the list parts from the list), so a run trained for ndcg +
fairness is selected for ndcg + fairness. :func:`paired_mde` is the smallest mean difference a
paired comparison on those rows detects with 80% power: the selection's own resolution.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from blade.errors import ConfigError
from blade.metrics import ndcg_at_k, recall_at_k
from blade.model.policy import Policy
from blade.power import paired_mde
from blade.sampling import ListSampler

__all__ = ["alignment_slice", "paired_mde", "selection_order", "selection_slice", "sft_rows", "valid_metrics",
           "valid_scores"]


def selection_order(n_valid: int) -> np.ndarray:
    """The fixed permutation of valid rows both selections cut their rows from (seed 0, always)."""
    return np.random.default_rng(0).permutation(n_valid)


def sft_rows(n_valid: int, n_rows: int) -> int:
    """How many valid rows SFT early-stops on: ``n_rows``, at most half of valid (the other half is
    alignment's); every row for ``n_rows`` 0."""
    return min(n_rows, n_valid // 2) if n_rows else n_valid


def selection_slice(valid: pd.DataFrame, n_rows: int) -> pd.DataFrame:
    """SFT's early-stopping rows (and SASRec's): the first :func:`sft_rows` of :func:`selection_order`."""
    n = sft_rows(len(valid), n_rows)
    return valid if n >= len(valid) else valid.iloc[selection_order(len(valid))[:n]]


def alignment_slice(valid: pd.DataFrame, sft_n: int, n_rows: int = 0) -> pd.DataFrame:
    """Alignment's selection rows: the rows of :func:`selection_order` after SFT's (``sft_n`` =
    ``evaluate.selection_rows``, cut by :func:`sft_rows`), ``n_rows`` of them (0 = all). Raises
    when SFT's slice leaves none."""
    order = selection_order(len(valid))
    rest = order[sft_rows(len(valid), sft_n):]
    if not len(rest):
        raise ConfigError(f"evaluate.selection_rows = {sft_n or '0 (all)'} takes every one of the {len(valid)} "
                          "valid rows for SFT's early stopping, so none is left for alignment's selection (the two "
                          "must be disjoint); set evaluate.selection_rows to a number of rows (at most half of valid "
                          "is used)")
    return valid.iloc[rest[:n_rows] if n_rows else rest]


def valid_scores(policy: Policy, split: pd.DataFrame, k: int, ks: list[int], batch_size: int,
                 reward=None) -> tuple[dict[str, np.ndarray], float]:
    """Greedy lists of length ``k`` on (a slice of) a split → per-row arrays: Recall/NDCG at each
    cut-off in ``ks`` (those <= k) and, given a :class:`blade.rewards.ListReward`, the reward
    (``reward``) and each of its components (``reward/<name>``); and the lists' invalid rate."""
    policy.model.eval()
    prompts = [policy.codec.prompt(h, k) for h in split["history"]]
    lists = ListSampler(policy, k, batch_size=batch_size).generate(prompts, greedy=True)
    items, targets = lists.items.numpy(), split["target"].to_numpy()
    out: dict[str, np.ndarray] = {}
    for kk in sorted(c for c in set(ks) if c <= k):
        out[f"recall@{kk}"] = recall_at_k(items, targets, kk)
        out[f"ndcg@{kk}"] = ndcg_at_k(items, targets, kk)
    if reward is not None:  # valid rows: no train row ids, so a train-future reward reads the target only
        scores = reward(split["history"].tolist(), targets, items)
        out["reward"] = np.asarray(scores["reward"], dtype=float)
        out.update({f"reward/{name}": np.asarray(v, dtype=float) for name, v in scores.items() if name != "reward"})
    return out, float(lists.invalid_rate)


def valid_metrics(policy: Policy, split: pd.DataFrame, k: int, ks: list[int], batch_size: int,
                  reward=None) -> dict[str, float]:
    """The means of :func:`valid_scores`, plus ``invalid_rate``."""
    scores, invalid = valid_scores(policy, split, k, ks, batch_size, reward)
    return {"invalid_rate": invalid, **{name: float(v.mean()) for name, v in scores.items()}}

