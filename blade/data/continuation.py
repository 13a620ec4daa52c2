"""A train row's continuation: its target, then the same user's next distinct train targets.

SFT teaches it as the target list (blade/train/sft.py) and the ``future`` reward grades a list
against it (blade/rewards.py); both read the train split only, so no valid or test item enters.
Rows are linked by ``user_id`` (in time order) where the split has one, otherwise by history
continuity (row B continues row A when B's history is A's history plus A's target, truncated to
the same window) when that link is unique. A row with no known continuation has its target alone.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import pandas as pd


def continuation_lists(train: pd.DataFrame, target_len: int) -> list[list[int]]:
    """For each train row: [target, next distinct items of the same user], see module docstring."""
    n = len(train)
    nxt = np.full(n, -1)
    if train["user_id"].notna().all():
        order = train.assign(_r=np.arange(n)).sort_values(["user_id", "timestamp", "_r"], na_position="first", kind="stable")
        rows, users = order["_r"].to_numpy(), order["user_id"].to_numpy()
        same = users[1:] == users[:-1]
        nxt[rows[:-1][same]] = rows[1:][same]
    else:
        by_history: dict[tuple, list[int]] = defaultdict(list)
        for r, h in enumerate(train["history"]):
            by_history[tuple(h)].append(r)
        width = max(map(len, train["history"]))
        for r, (h, t) in enumerate(zip(train["history"], train["target"])):
            cand = by_history.get(tuple([*h, t][-width:]), [])
            if len(cand) == 1:
                nxt[r] = cand[0]
    targets = train["target"].to_numpy()
    out = []
    for r in range(n):
        lst, cur, hops = [int(targets[r])], nxt[r], 0
        while cur >= 0 and len(lst) < target_len and hops < 4 * target_len:
            if targets[cur] not in lst:
                lst.append(int(targets[cur]))
            cur, hops = nxt[cur], hops + 1
        out.append(lst)
    return out
