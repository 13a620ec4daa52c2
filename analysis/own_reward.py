"""The reward a run was trained on, per user, on the evaluation split: ``own_reward``.

A list-wise setting (ndcg + fairness, ndcg + diversity) trains on a weighted sum, and the §6.2 claim
asks whether a method serves *that* objective better, not only each of its parts. The per-user
value is :class:`blade.rewards.ListReward` of the setting — the very function alignment maximised —
on each row's greedy lists cut to the training list length ``align.k``, against the split's target
(a reward that reads a train future reads the target alone here: the split's rows are not train
rows). Every row of a table gets it, SFT and the references included, pooled over seeds by user
like every per-user metric (:func:`analysis.common.pooled_per_user`), so the paired tests of
analysis/significance.py treat it as one more column.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from analysis.common import Row, eval_dir

OWN_REWARD = "own_reward"


class OwnReward:
    """One dataset × setting's reward function, built once, applied to any row's lists."""

    def __init__(self, results: str | Path, exp, dataset: str, setting: str, split: str):
        from blade.data import load_prepared
        from blade.rewards import ListReward

        items, splits, stats = load_prepared(Path(results) / "data" / dataset)
        self.split, self.frame, self.k = split, splits[split], exp.align.k
        self.reward = ListReward(exp.rewards[setting], items, splits["train"], stats)

    def per_user(self, results: str | Path, row: Row, seed: int) -> pd.Series | None:
        """``own_reward`` of one (row, seed), indexed by split row; None where its lists are missing."""
        from blade.eval.recs import read_recs

        path = eval_dir(results, row, seed, self.split) / "recs.jsonl"
        if not path.is_file():
            return None
        lists = read_recs(path, len(self.frame), self.split)[0][:, :self.k]  # (rows, k) greedy
        scores = self.reward(self.frame["history"].tolist(), self.frame["target"].to_numpy(), lists)
        return pd.Series(np.asarray(scores["reward"], dtype=float), name=OWN_REWARD)

    def pooled(self, results: str | Path, row: Row, index: pd.MultiIndex) -> pd.Series | None:
        """The seed mean per user, aligned with a per-user frame's (row, context_id) ``index``."""
        values = [v for v in (self.per_user(results, row, s) for s in row.seeds) if v is not None]
        if not values:
            return None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            mean = np.nanmean(np.stack([v.to_numpy() for v in values]), axis=0)  # (rows,)
        at = index.get_level_values("row").to_numpy()
        return pd.Series(mean[at], index=index, name=OWN_REWARD)

    def add_to(self, frame: pd.DataFrame, results: str | Path, row: Row) -> pd.DataFrame:
        """A per-user frame (indexed by row, context_id) with the row's ``own_reward`` column added
        (unchanged when its lists are missing)."""
        values = self.pooled(results, row, frame.index)
        return frame if values is None else frame.assign(**{OWN_REWARD: values})
