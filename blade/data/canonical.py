"""The canonical dataset every later stage reads, and its validation.

Files written by :func:`blade.data.prepare.prepare` under ``results/data/{dataset}/``:

- ``items.parquet``: ``item_id`` (int64), ``title`` (str), ``genres`` (list of str, null when
  the source has none), ``train_pop`` (times the item is a *target* in the train split),
  ``pop_group`` (0 = most popular … n_pop_groups-1 = the tail).
- ``{train,valid,test}.parquet``: ``context_id`` (str), ``user_id`` (str, null when unknown),
  ``history`` (list of item ids, oldest first, at most ``max_history``), ``target`` (item id),
  ``timestamp`` (int64 seconds, null when unknown).
- ``stats.json``: counts, rows dropped by reason, popularity-group and genre shares of the train
  split, input-file checksums, and ``leakage``: how often a valid/test row's target follows its
  last history item in train sequences, against a shuffled-target baseline
  (:mod:`blade.data.leakage`). Written last: its presence marks a complete dataset.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from blade.config import option
from blade.errors import DataError

SPLITS = ("train", "valid", "test")
SPLIT_COLUMNS = ("context_id", "user_id", "history", "target", "timestamp")


@dataclass
class DatasetSpec:
    """One dataset in ``config.datasets``: where it comes from and how it is canonicalised."""

    source: str = option(help="synthetic | bigrec_csv | instruction_json | amazon2018")
    params: dict[str, Any] = option({}, help="options of the source (`blade options SOURCE` lists them)")
    max_history: int = option(10, help="keep the last this many history items (BIGRec/D3 use 10)")
    n_pop_groups: int = option(3, help="number of popularity groups (0 = head … n-1 = tail)")
    pop_group_scheme: Literal["interactions", "items"] = option(
        "interactions",
        help="'interactions': each group holds ~1/n of train interactions (few head items, many "
        "tail items); 'items': each group holds ~1/n of the items",
    )
    invalid_rows: Literal["error", "drop"] = option(
        "error",
        help="a row with an unknown item id or an empty history: 'error' stops with the file and "
        "row; 'drop' drops it and counts it in stats.json under dropped.<reason>",
    )

    test_rows: int = option(0, help="score every row of the tables on a fixed sample of this many test rows (the "
                                    "first of a seed-0 permutation, kept in split order; 0 = all): for policies whose "
                                    "decoding cannot afford the whole split (config/llm.yaml); the rest are counted in "
                                    "stats.json under dropped.test_outside_sample")

    def __post_init__(self) -> None:
        if self.test_rows < 0:
            raise ValueError(f"test_rows must be >= 0 (0 = the whole test split), got {self.test_rows}")
        if self.max_history < 1:
            raise ValueError(f"max_history must be >= 1, got {self.max_history}")
        if self.n_pop_groups < 1:
            raise ValueError(f"n_pop_groups must be >= 1, got {self.n_pop_groups}")


@dataclass
class RawDataset:
    """What a source hands to the canonicaliser.

    ``items``: item_id, title, genres (list[str] or None).
    ``splits[name]``: context_id, user_id, history (list[int]), target, timestamp, and ``origin``
    (e.g. ``"valid.csv line 17"``) so that errors can point at the input row.
    """

    items: pd.DataFrame
    splits: dict[str, pd.DataFrame]
    dropped: Counter = field(default_factory=Counter)
    inputs: list[Path] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)


def check_items(items: pd.DataFrame, where: str) -> pd.DataFrame:
    """Unique integer ids with string titles; returns a normalised copy."""
    for col in ("item_id", "title"):
        if col not in items.columns:
            raise DataError(f"{where}: item table has no '{col}' column (columns: {list(items.columns)})")
    items = items.copy()
    items["item_id"] = pd.to_numeric(items["item_id"], errors="raise").astype("int64")
    dup = items["item_id"].duplicated(keep=False)
    if dup.any():
        first = items.loc[dup, "item_id"].iloc[0]
        titles = items.loc[items["item_id"] == first, "title"].tolist()
        raise DataError(
            f"{where}: item id {first} appears {len(titles)} times with titles {titles}; "
            "each item id must appear once — fix or deduplicate the item file"
        )
    if "genres" not in items.columns:
        items["genres"] = None
    items["title"] = items["title"].astype(str)
    return items[["item_id", "title", "genres"]].sort_values("item_id").reset_index(drop=True)


def _validate_split(
    frame: pd.DataFrame, name: str, known: np.ndarray, spec: DatasetSpec, dropped: Counter
) -> pd.DataFrame:
    frame = frame.reset_index(drop=True)
    hist_len = frame["history"].map(len).to_numpy()
    flat = np.fromiter((i for h in frame["history"] for i in h), dtype=np.int64, count=int(hist_len.sum()))
    row_of_flat = np.repeat(np.arange(len(frame)), hist_len)
    bad_hist_rows = np.unique(row_of_flat[~np.isin(flat, known)])
    bad_target = ~np.isin(frame["target"].to_numpy(dtype=np.int64), known)
    empty = hist_len == 0
    problems = [
        ("unknown_history_item", np.isin(np.arange(len(frame)), bad_hist_rows),
         "its history names item ids that are not in the item table"),
        ("unknown_target_item", bad_target, "its target item id is not in the item table"),
        ("empty_history", empty, "its history is empty (there is nothing to condition on)"),
    ]
    keep = np.ones(len(frame), dtype=bool)
    for reason, mask, what in problems:
        mask = mask & keep
        if not mask.any():
            continue
        if spec.invalid_rows == "error":
            row = frame.loc[int(np.argmax(mask))]
            raise DataError(
                f"{row['origin']}: {what} (history={list(row['history'])}, target={row['target']}); "
                f"{int(mask.sum())} row(s) of the {name} split have this problem. Fix the input, or set "
                "invalid_rows: drop in the dataset's config to drop such rows (they are counted in stats.json)"
            )
        dropped[f"{name}.{reason}"] += int(mask.sum())
        keep &= ~mask
    return frame.loc[keep].reset_index(drop=True)


def popularity_groups(pop: np.ndarray, n_groups: int, scheme: str) -> np.ndarray:
    """Group 0 holds the most popular items. Ties are broken by position (item order), so the
    grouping is deterministic."""
    order = np.lexsort((np.arange(len(pop)), -pop))  # by popularity desc, then item order
    groups = np.empty(len(pop), dtype=np.int64)
    if scheme == "items":
        groups[order] = np.minimum(np.arange(len(pop)) * n_groups // max(len(pop), 1), n_groups - 1)
        return groups
    total = pop.sum()
    if total == 0:
        return popularity_groups(pop, n_groups, "items")
    # share of interactions held by more popular items, before this one: item falls in group
    # floor(share * n); every item with zero interactions lands in the tail group.
    before = np.cumsum(pop[order]) - pop[order]
    g = np.minimum((before / total * n_groups).astype(np.int64), n_groups - 1)
    g[pop[order] == 0] = n_groups - 1
    groups[order] = g
    return groups


def finalize(raw: RawDataset, spec: DatasetSpec, where: str) -> tuple[pd.DataFrame, dict[str, pd.DataFrame], dict[str, Any]]:
    """Validate a source's output, truncate histories, compute popularity; return items, splits, stats."""
    items = check_items(raw.items, where)
    known = items["item_id"].to_numpy()
    dropped = Counter(raw.dropped)
    splits: dict[str, pd.DataFrame] = {}
    truncated = {}
    for name in SPLITS:
        if name not in raw.splits:
            raise DataError(f"{where}: the source produced no '{name}' split")
        frame = raw.splits[name]
        frame = _validate_split(frame, name, known, spec, dropped)
        if name == "test" and 0 < spec.test_rows < len(frame):
            keep = np.sort(np.random.default_rng(0).permutation(len(frame))[:spec.test_rows])
            dropped["test_outside_sample"] += len(frame) - len(keep)
            frame = frame.iloc[keep]
        truncated[name] = int((frame["history"].map(len) > spec.max_history).sum())
        frame["history"] = frame["history"].map(lambda h: [int(i) for i in h[-spec.max_history:]])
        frame["target"] = frame["target"].astype("int64")
        frame["timestamp"] = frame["timestamp"].astype("Int64")
        frame["user_id"] = frame["user_id"].astype("string")
        frame["context_id"] = frame["context_id"].astype(str)
        if frame["context_id"].duplicated().any():
            raise DataError(f"{where}: duplicate context ids in the {name} split")  # a source bug
        splits[name] = frame[list(SPLIT_COLUMNS)].reset_index(drop=True)
        if splits[name].empty:
            raise DataError(f"{where}: the {name} split is empty after validation; check the input and filters")

    counts = splits["train"]["target"].value_counts()
    items["train_pop"] = items["item_id"].map(counts).fillna(0).astype("int64")
    items["pop_group"] = popularity_groups(items["train_pop"].to_numpy(), spec.n_pop_groups, spec.pop_group_scheme)
    stats = _stats(items, splits, spec, dropped, truncated, raw)
    return items[["item_id", "title", "genres", "train_pop", "pop_group"]], splits, stats


def _stats(items, splits, spec, dropped, truncated, raw) -> dict[str, Any]:
    train = splits["train"]
    users = pd.concat([s["user_id"] for s in splits.values()]).dropna()
    pop_by_group = items.groupby("pop_group")["train_pop"].sum()
    n_group_items = items.groupby("pop_group").size()
    total = max(int(items["train_pop"].sum()), 1)
    groups = range(spec.n_pop_groups)
    stats: dict[str, Any] = {
        "source": spec.source,
        "spec": dataclasses.asdict(spec),
        "n_items": len(items),
        "n_users": int(users.nunique()) if len(users) else None,
        "n_rows": {name: len(frame) for name, frame in splits.items()},
        "dropped": dict(sorted(dropped.items())),
        "truncated_histories": truncated,
        "history_length": {
            name: {
                "mean": round(float(frame["history"].map(len).mean()), 4),
                "min": int(frame["history"].map(len).min()),
                "max": int(frame["history"].map(len).max()),
            }
            for name, frame in splits.items()
        },
        "items_never_train_target": int((items["train_pop"] == 0).sum()),
        "cold_targets": {
            name: int((~splits[name]["target"].isin(train["target"])).sum()) for name in ("valid", "test")
        },
        "popularity": {
            "scheme": spec.pop_group_scheme,
            "n_groups": spec.n_pop_groups,
            "item_share": [round(float(n_group_items.get(g, 0)) / len(items), 6) for g in groups],
            "train_share": [round(float(pop_by_group.get(g, 0)) / total, 6) for g in groups],
        },
        "genres": _genre_stats(items, train),
        "inputs": {Path(p).name: _checksum(p) for p in raw.inputs},
        "source_info": raw.info,
    }
    return stats


def _genre_stats(items: pd.DataFrame, train: pd.DataFrame) -> dict[str, Any] | None:
    """Genre shares; an item with several genres counts 1/len(genres) towards each."""
    known = items["genres"].map(lambda g: g is not None and len(g) > 0)
    if not known.any():
        return None
    names = sorted({g for gs in items.loc[known, "genres"] for g in gs})
    frac = {row.item_id: {g: 1 / len(row.genres) for g in row.genres} for row in items.loc[known].itertuples()}

    def share(ids) -> dict[str, float]:
        acc = dict.fromkeys(names, 0.0)
        n = 0
        for i in ids:
            for g, w in frac.get(i, {}).items():
                acc[g] += w
            n += i in frac
        return {g: round(v / max(n, 1), 6) for g, v in acc.items()}

    return {
        "names": names,
        "items_without_genre": int((~known).sum()),
        "item_share": share(items["item_id"]),
        "train_share": share(train["target"]),
    }


def _checksum(path: Path) -> str:
    from blade.io import sha256_file

    return sha256_file(path)
