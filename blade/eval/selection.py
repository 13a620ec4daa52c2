"""Model selection on the valid split, shared by SFT and alignment.

Both read the same fixed slice of valid rows (``evaluate.selection_rows``), decode greedy lists and
score them; the test split is never read. Alignment can select on ``reward``: the valid mean of
its own reward setting on those lists (the accuracy part from the valid target, the list parts
from the list), so a run trained for ndcg + fairness is selected for ndcg + fairness.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from blade.metrics import ndcg_at_k, recall_at_k
from blade.model.policy import Policy
from blade.sampling import ListSampler


def selection_slice(valid: pd.DataFrame, n_rows: int) -> pd.DataFrame:
    """The valid rows model selection reads: all (n_rows 0), or a fixed, seed-independent subset."""
    if n_rows and len(valid) > n_rows:
        return valid.iloc[np.random.default_rng(0).permutation(len(valid))[:n_rows]]
    return valid


def valid_metrics(policy: Policy, split: pd.DataFrame, k: int, ks: list[int], batch_size: int,
                  reward=None) -> dict[str, float]:
    """Greedy lists of length ``k`` on (a slice of) a split → mean Recall/NDCG at each cut-off in
    ``ks`` (those <= k), and, given a :class:`blade.rewards.ListReward`, the mean reward
    (``reward``) and each of its components (``reward/<name>``)."""
    policy.model.eval()
    prompts = [policy.codec.prompt(h, k) for h in split["history"]]
    lists = ListSampler(policy, k, batch_size=batch_size).generate(prompts, greedy=True)
    items, targets = lists.items.numpy(), split["target"].to_numpy()
    out = {"invalid_rate": lists.invalid_rate}
    for kk in sorted(c for c in set(ks) if c <= k):
        out[f"recall@{kk}"] = float(recall_at_k(items, targets, kk).mean())
        out[f"ndcg@{kk}"] = float(ndcg_at_k(items, targets, kk).mean())
    if reward is not None:
        scores = reward(split["history"].tolist(), targets, items)
        out["reward"] = float(scores["reward"].mean())
        out.update({f"reward/{name}": float(v.mean()) for name, v in scores.items() if name != "reward"})
    return out
