"""The recommendations file: the public format every row's lists are written in and read back.

The format is public, so lists from any external model can be scored (blade/eval/scoring.py): JSON lines
``{"row": <0-based row of the split>, "items": [item_id, …]}``, one line per row of the split, best
item first; ``-1`` marks an empty slot.
A malformed file raises a ``DataError`` naming the file and line and saying how to fix it; unknown,
missing or repeated item ids are not errors but the recommender's mistakes, counted by
``invalid_rate``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from blade.errors import DataError
from blade.io import atomic_path


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


def is_int(x) -> bool:
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
            if not is_int(sample) or sample < 0:
                raise DataError(f"{at}: \"sample\" must be a non-negative integer (sampled decoding's list number), "
                                f"got {sample!r:.40}")
            if not is_int(row):
                raise DataError(f"{at}: \"row\" must be an integer row number of {where}, got {row!r:.40}")
            if not 0 <= row < n_rows:
                raise DataError(f"{at}: row {row} is not a row of {where}; rows are 0-based positions in "
                                f"the split's Parquet file")
            if not isinstance(items, list) or not all(is_int(i) for i in items):
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
