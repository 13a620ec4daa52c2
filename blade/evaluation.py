"""Recommendation files and their evaluation.

The recommendations format is public, so lists from any external model can be scored: JSON lines
``{"row": <0-based row of the split>, "items": [item_id, …]}``, one line per row of the split, best
item first; ``-1`` marks an empty slot.
``evaluate`` writes ``per_user.parquet`` (one row per context: ``row``, ``context_id`` and one
column per metric) and ``metrics.json`` (means and catalogue-level numbers). ``mgu_pop@K`` /
``dgu_pop@K`` (and ``…_genre@K``) in ``metrics.json`` are the IFairLRS numbers, group counts pooled
over users; the per-user variants for paired tests are the ``…_user@K`` columns (and their means).
A malformed file raises a ``DataError`` naming the file and line and saying how to fix it; unknown,
missing or repeated item ids are not errors but the recommender's mistakes, counted by
``invalid_rate``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from blade.data.canonical import load_prepared
from blade.errors import ConfigError, DataError
from blade.io import atomic_path, write_json, write_parquet
from blade.metrics import build_catalogue, evaluate_lists
from blade.rewards import item_distance

FORMAT = '{"row": <0-based row of the split>, "items": [item ids, best first]}'
INT64 = (-(2**63), 2**63 - 1)


def write_recs(path: str | Path, lists: np.ndarray) -> None:
    """One line per row of ``lists`` (R, K) — or, for sampled decoding, per (sample, row) of
    ``lists`` (S, R, K), each line then carrying ``"sample"`` — with ``-1`` (an empty slot)
    included, so ranks are kept."""
    lists = np.asarray(lists)
    with atomic_path(path) as tmp, open(tmp, "w") as fh:
        if lists.ndim == 2:
            for row, items in enumerate(lists.tolist()):
                fh.write(json.dumps({"row": row, "items": items}) + "\n")
        else:
            for sample, block in enumerate(lists.tolist()):
                for row, items in enumerate(block):
                    fh.write(json.dumps({"row": row, "sample": sample, "items": items}) + "\n")


def _is_int(x) -> bool:
    # JSON true/false parse to bool, a subclass of int
    return isinstance(x, int | np.integer) and not isinstance(x, bool)


def _lines(fh, path: Path):
    try:
        yield from fh
    except UnicodeDecodeError as exc:
        raise DataError(f"{path} is not UTF-8 text ({exc.reason}); "
                        f"write JSON lines {FORMAT}") from exc


def read_recs(path: str | Path, n_rows: int, split: str = "split") -> np.ndarray:
    """(S, n_rows, K) item ids, -1 padded (K = the longest list; S = 1 unless the lines carry
    ``"sample": s``, sampled decoding's S lists per row). Every row of the split must appear
    exactly once per sample. Item ids are not checked against the catalogue here: unknown ids are
    the recommender's mistakes and ``evaluate`` counts them in ``invalid_rate``."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"recommendations file {path} does not exist")
    where = f"{split} ({n_rows} rows, numbered 0..{n_rows - 1})"
    lists: dict[tuple[int, int], tuple[int, list[int]]] = {}  # (sample, row) -> (line number, items)
    with open(path, encoding="utf-8") as fh:
        for n, line in enumerate(_lines(fh, path), start=1):
            if not line.strip():
                continue
            at = f"{path} line {n}"
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{at}: not valid JSON ({exc.msg} at column {exc.colno}); "
                                f"each line must be one JSON object {FORMAT}") from exc
            if not isinstance(rec, dict):
                raise DataError(f"{at}: expected a JSON object {FORMAT}, got {type(rec).__name__} {line.strip():.60}")
            missing = [key for key in ("row", "items") if key not in rec]
            if missing:
                raise DataError(f"{at}: missing key {' and '.join(map(repr, missing))}; each line must be {FORMAT}")
            row, items, sample = rec["row"], rec["items"], rec.get("sample", 0)
            if not _is_int(sample) or sample < 0:
                raise DataError(f"{at}: \"sample\" must be a non-negative integer (sampled decoding's list number), "
                                f"got {sample!r:.40}")
            if not _is_int(row):
                raise DataError(f"{at}: \"row\" must be an integer row number of {where}, got {row!r:.40}")
            if not 0 <= row < n_rows:
                raise DataError(f"{at}: row {row} is not a row of {where}; rows are 0-based positions in "
                                f"the split's Parquet file")
            if not isinstance(items, list) or not all(_is_int(i) for i in items):
                raise DataError(f"{at}: \"items\" must be a list of integer item ids (the item_id column of "
                                f"items.parquet), got {items!r:.80}")
            if any(not INT64[0] <= i <= INT64[1] for i in items):
                raise DataError(f"{at}: an item id does not fit in 64 bits: {items!r:.80}")
            if (sample, row) in lists:
                raise DataError(f"{at}: row {row} appears twice (first at line {lists[sample, row][0]}); "
                                "write exactly one line per row (per sample)")
            lists[sample, row] = (n, items)
    if not lists and n_rows:
        raise DataError(f"{path} is empty: write one line {FORMAT} for each of the {n_rows} rows of {split}")
    n_samples = 1 + max((sample for sample, _ in lists), default=0)
    for sample in range(n_samples):
        absent = [r for r in range(n_rows) if (sample, r) not in lists]
        if absent:
            shown = ", ".join(map(str, absent[:5])) + (", …" if len(absent) > 5 else "")
            of = f" (sample {sample})" if n_samples > 1 else ""
            raise DataError(f"{path}: {len(absent)} of the {n_rows} rows of {split}{of} have no line (rows {shown}); "
                            "write one line per row, with \"items\": [] where a model has nothing to recommend")
    k = max((len(v) for _, v in lists.values()), default=0)
    out = np.full((n_samples, n_rows, max(k, 1)), -1, dtype=np.int64)
    for (sample, row), (_, items) in lists.items():
        out[sample, row, : len(items)] = items
    return out


def evaluate(recs: str | Path, data_dir: str | Path, split: str, out_dir: str | Path, ks,
             diversity_dim: int | None = None) -> dict:
    """Score a recommendations file against ``split``: per-user metrics and their means.

    ``ild@K`` uses the ``diversity`` reward's item distance (:func:`blade.rewards.item_distance`,
    ``diversity_by: auto``): genre Jaccard where the dataset has genres, else co-occurrence
    embeddings fitted on the train split only (rank ``diversity_dim``, default the reward's).

    Every metric, ``invalid_rate`` included, is measured on the top K = max(ks) slots of each
    list: items beyond K are ignored, and a list shorter than K has its empty slots counted as
    misses and as invalid (the recommender failed to fill them), so every row has the same
    denominator whatever the other rows' lengths."""
    ks = tuple(ks)
    if not ks or not all(_is_int(k) and k >= 1 for k in ks):
        raise ConfigError(f"cut-offs ks must be positive integers, got {list(ks)}")
    items, splits, stats = load_prepared(data_dir)
    if split not in splits:
        raise ConfigError(f"unknown split {split!r}; valid: {sorted(splits)}")
    frame = splits[split]
    samples = read_recs(recs, len(frame), split)  # (S, rows, K)
    K = max(ks)
    samples = np.pad(samples, ((0, 0), (0, 0), (0, max(0, K - samples.shape[2]))), constant_values=-1)[:, :, :K]
    catalogue = build_catalogue(items, stats, history=frame["history"].tolist())
    distance = item_distance(catalogue, splits["train"], "auto", diversity_dim)
    targets = frame["target"].to_numpy()
    # sampled decoding: every metric is the mean over the S lists of a row (pooled numbers: over S)
    parts = [evaluate_lists(lists, targets, catalogue, ks, distance) for lists in samples]
    per_user = sum(p for p, _ in parts) / len(parts) if len(parts) > 1 else parts[0][0]
    summary = {key: float(np.mean([s[key] for _, s in parts])) for key in parts[0][1]}
    per_user.insert(0, "context_id", frame["context_id"].to_numpy())
    per_user.insert(0, "row", np.arange(len(frame)))
    out = Path(out_dir)
    write_parquet(out / "per_user.parquet", per_user)
    # A number with nothing to measure (NaN) is left out: strict JSON readers reject NaN.
    summary = {"split": split, "n_rows": len(frame), "samples_per_row": len(samples),
               **{k: v for k, v in summary.items() if not (isinstance(v, float) and not np.isfinite(v))}}
    write_json(out / "metrics.json", summary)
    return summary
