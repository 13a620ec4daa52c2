"""How much of an evaluation split's answer is already in train: two set-lookup figures.

A row's *sequence* is its history followed by its target. For each row of an evaluation split,
with ``last`` = its history's last item:

- ``follows``: the row's target comes after ``last`` (any number of items later) inside some
  train row's sequence — the train data has seen this context continue into this target;
- ``adjacent``: ``last`` and the target stand back to back (``last`` then target) inside some
  train row's sequence.

Each comes with a baseline: the same figure after permuting the targets among the split's rows
(seeded, averaged over ``n_shuffles`` permutations), which keeps popularity but breaks each
row's own continuation. The excess over the baseline is partly real sequential signal (readers
of a series continue it in order: Video_Games, split in time, has ``follows`` 22% against a 6%
baseline) and partly leakage, when windows of one user's sequence sit in both train and test
(the Goodreads records drawn at random: 36% against 7%; split by groups of overlapping windows:
22% against 6%). Compare splits of one dataset, not a figure with its baseline alone.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

EVAL_SPLITS = ("valid", "test")


def _flat(frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """(sequence length per row, every row's history then target, concatenated)."""
    lengths = frame["history"].map(len).to_numpy(dtype=np.int64) + 1
    pairs = zip(frame["history"], frame["target"])
    return lengths, np.fromiter((i for h, t in pairs for i in (*h, t)), dtype=np.int64, count=int(lengths.sum()))


def _sequences(lengths: np.ndarray, flat: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """[rows, longest sequence] dense item indices (positions in ``ids``), left-aligned, padded
    with -1."""
    rows = np.repeat(np.arange(len(lengths)), lengths)
    cols = np.arange(len(flat)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    out = np.full((len(lengths), int(lengths.max(initial=1))), -1, dtype=np.int64)
    out[rows, cols] = np.searchsorted(ids, flat)
    return out


def _train_pairs(train: np.ndarray, firsts: np.ndarray, n_items: int) -> tuple[np.ndarray, np.ndarray]:
    """Codes ``a * n_items + b`` of the ordered pairs (a before b, any gap) and of the back-to-back
    pairs in train sequences, keeping only pairs whose ``a`` is some evaluation row's last item
    (that filter keeps memory at O(rows) instead of O(rows · width²))."""
    follows, adjacent = [], []
    width = train.shape[1]
    for i in range(width - 1):
        a = train[:, i]  # [rows]
        keep = np.isin(a, firsts)
        a = a[keep]
        for j in range(i + 1, width):
            b = train[keep, j]
            valid = b >= 0
            codes = a[valid] * n_items + b[valid]
            follows.append(codes)
            if j == i + 1:
                adjacent.append(codes)
    empty = np.empty(0, dtype=np.int64)
    return np.unique(np.concatenate(follows or [empty])), np.unique(np.concatenate(adjacent or [empty]))


def _member(codes: np.ndarray, sorted_codes: np.ndarray) -> np.ndarray:
    """``np.isin`` for a sorted unique right side, without re-sorting it on every shuffle."""
    at = np.minimum(np.searchsorted(sorted_codes, codes), max(len(sorted_codes) - 1, 0))
    return sorted_codes[at] == codes if len(sorted_codes) else np.zeros(len(codes), dtype=bool)


def leakage(
    splits: dict[str, pd.DataFrame], seed: int = 0, n_shuffles: int = 10, digits: int = 4
) -> dict[str, Any]:
    """The ``follows`` and ``adjacent`` shares (module docstring) of each evaluation split against
    train, each with its shuffled-target baseline (mean over ``n_shuffles`` seeded permutations).

    ``splits[name]`` has list-valued ``history`` (non-empty) and ``target`` columns.
    """
    if n_shuffles < 1:
        raise ValueError(f"n_shuffles must be >= 1, got {n_shuffles}")
    flat = {name: _flat(splits[name]) for name in ("train", *EVAL_SPLITS)}
    ids = np.unique(np.concatenate([f for _, f in flat.values()]))
    n_items = max(len(ids), 1)
    seqs = {name: _sequences(*flat[name], ids) for name in flat}
    # a row's target sits in its last filled column, its last history item just before
    lasts, targets = {}, {}
    for name in EVAL_SPLITS:
        ends = (seqs[name] >= 0).sum(axis=1) - 1  # [rows] column of the target
        lasts[name] = seqs[name][np.arange(len(ends)), ends - 1]
        targets[name] = seqs[name][np.arange(len(ends)), ends]
    follows, adjacent = _train_pairs(seqs["train"], np.unique(np.concatenate(list(lasts.values()))), n_items)

    def shares(last: np.ndarray, target: np.ndarray) -> tuple[float, float]:
        codes = last * n_items + target
        return _member(codes, follows).mean(), _member(codes, adjacent).mean()

    out: dict[str, Any] = {"n_shuffles": n_shuffles, "seed": seed}
    rng = np.random.default_rng(seed)
    for name in EVAL_SPLITS:
        last, target = lasts[name], targets[name]
        if len(last) == 0:
            out[name] = None
            continue
        f, a = shares(last, target)
        shuffled = np.array([shares(last, target[rng.permutation(len(target))]) for _ in range(n_shuffles)])
        f0, a0 = shuffled.mean(axis=0)
        out[name] = {
            "rows": len(last),
            "follows": round(float(f), digits), "follows_shuffled": round(float(f0), digits),
            "adjacent": round(float(a), digits), "adjacent_shuffled": round(float(a0), digits),
        }
    return out
