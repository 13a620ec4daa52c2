"""Recommendation files and their evaluation.

The recommendations format is public, so lists from any external model can be scored: JSON lines
``{"row": <0-based row of the split>, "items": [item_id, …]}``, one line per row of the split.
``evaluate`` writes ``per_user.parquet`` (one row per context: ``row``, ``context_id`` and one
column per metric) and ``metrics.json`` (means and catalogue-level numbers).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from blade.data.canonical import load_prepared
from blade.errors import DataError
from blade.io import atomic_path, write_json, write_parquet
from blade.metrics import Catalogue, evaluate_lists


def catalogue_for(items: pd.DataFrame, split: pd.DataFrame) -> Catalogue:
    genres = None
    if items["genres"].map(lambda g: g is not None).any():
        genres = [list(g) if g is not None else [] for g in items["genres"]]
    return Catalogue(item_ids=items["item_id"].to_numpy(), pop_group=items["pop_group"].to_numpy(),
                     train_pop=items["train_pop"].to_numpy(), genres=genres,
                     history=split["history"].tolist(), n_groups=int(items["pop_group"].max()) + 1)


def write_recs(path: str | Path, lists: np.ndarray) -> None:
    with atomic_path(path) as tmp, open(tmp, "w") as fh:
        for row, items in enumerate(np.asarray(lists).tolist()):
            fh.write(json.dumps({"row": row, "items": items}) + "\n")


def read_recs(path: str | Path, n_rows: int) -> np.ndarray:
    """(n_rows, K) item ids, -1 padded. Every row of the split must appear exactly once."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"recommendations file {path} does not exist")
    lists: dict[int, list[int]] = {}
    with open(path) as fh:
        for n, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                row, items = rec["row"], rec["items"]
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise DataError(f"{path} line {n}: expected {{\"row\": int, \"items\": [item ids]}} ({exc})") from exc
            if not isinstance(row, int) or not 0 <= row < n_rows:
                raise DataError(f"{path} line {n}: row {row!r} is not a row of the split (0..{n_rows - 1})")
            if not isinstance(items, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in items):
                raise DataError(f"{path} line {n}: items must be a list of integer item ids, got {items!r:.80}")
            if row in lists:
                raise DataError(f"{path} line {n}: row {row} appears twice")
            lists[row] = items
    missing = n_rows - len(lists)
    if missing:
        first = next(r for r in range(n_rows) if r not in lists)
        raise DataError(f"{path}: {missing} rows of the split have no recommendations (first: row {first}); "
                        "write one line per row, with an empty list where a model has nothing")
    k = max((len(v) for v in lists.values()), default=0)
    out = np.full((n_rows, max(k, 1)), -1, dtype=np.int64)
    for row, items in lists.items():
        out[row, : len(items)] = items
    return out


def evaluate(recs: str | Path, data_dir: str | Path, split: str, out_dir: str | Path, ks=(5, 10, 20)) -> dict:
    items, splits, _ = load_prepared(data_dir)
    frame = splits[split]
    lists = read_recs(recs, len(frame))
    if lists.shape[1] < max(ks):  # short lists: pad so @K metrics count the empty slots as misses
        lists = np.pad(lists, ((0, 0), (0, max(ks) - lists.shape[1])), constant_values=-1)
    per_user, summary = evaluate_lists(lists, frame["target"].to_numpy(), catalogue_for(items, frame), ks)
    per_user.insert(0, "context_id", frame["context_id"].to_numpy())
    per_user.insert(0, "row", np.arange(len(frame)))
    out = Path(out_dir)
    write_parquet(out / "per_user.parquet", per_user)
    summary = {"split": split, "n_rows": len(frame), **summary}
    write_json(out / "metrics.json", summary)
    return summary
