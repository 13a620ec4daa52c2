"""``{instruction, input, output}`` records with quoted titles (SPRec / S-DPO / LLaRA format).

``input`` names the user's history as double-quoted titles, oldest first; ``output`` is the next
item as one quoted title. Titles may contain commas, ``#``, parentheses and escaped quotes
(``\\"``), so titles are parsed as quoted strings, never split on commas.

The catalogue is ``id2name.json`` (``{"id": title}``; the id is the identity) when present;
otherwise items are numbered in order of first appearance. ``name2genre.json`` (``{title:
[genre, …]}``), when present, gives genres.

There is no user id, so each record is one context (``user_id`` stays null). The format has no
valid/test files, so the records are split deterministically, in one of two ways (``split``):

- ``grouped`` (default): records of this format are overlapping windows of the same users'
  sequences (the Goodreads sample holds windows of one user shifted by 1 to 9 books), so a
  record drawn into test usually has its continuation in a train record. Records are grouped
  first: two records are linked when their sequences (history then target), placed at some
  offset, agree wherever both are defined over at least ``overlap_min`` items (default 2) — one
  ends with, or contains, a run that starts the other. A shared run in the middle of both (two
  readers of one series) does not link. Groups are the connected components of the links. The
  groups, in an order drawn with ``split_seed``, are laid end to end and cut at
  ``round(test_frac·n)`` and ``round((test_frac+valid_frac)·n)`` records (test, valid, train); a
  group straddling a cut goes where its middle record falls. Windows of one user that do not
  overlap (shifted by a whole window or more) are grouped only through windows between them, so
  some of a test user's later books can still be in train, but not the test row's own target
  after its context. ``stats.json`` reports the groups under ``source_info`` and the remaining
  leakage under ``leakage`` (:mod:`blade.data.leakage`).
- ``random``: a permutation of the record indices drawn with ``split_seed`` puts the first
  ``round(test_frac·n)`` records in test, the next ``round(valid_frac·n)`` in valid, the rest in
  train. It leaks on overlapping records; it is kept to measure that.

Each split keeps file order.
A history title not in the catalogue is removed and counted (``unknown_history_titles``); a
target title not in the catalogue maps to an unknown item, which the canonicaliser reports (or
drops and counts, with ``invalid_rows: drop``).
"""

from __future__ import annotations

import json
import re
from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Literal
from pathlib import Path

import numpy as np
import pandas as pd

from blade.config import option
from blade.data.canonical import DatasetSpec, RawDataset
from blade.data.sources._util import require_file, resolve_path
from blade.errors import DataError

# A double-quoted string whose body may contain backslash-escaped characters.
_QUOTED = re.compile(r'"((?:[^"\\]|\\.)*)"')
_UNKNOWN = -1


@dataclass
class Params:
    path: str = option(help="folder with the record file (or the record file itself)")
    records_file: str = option("train.json", help="the JSON list of {instruction,input,output} records")
    id2name: str = option("id2name.json", help="catalogue file in the folder; '' to number titles as seen")
    name2genre: str = option("name2genre.json", help="genre file in the folder (used when present); '' for none")
    genre_labels: str = option(
        "genre_dict.json", help="file whose keys are the genres kept for fairness; '' keeps every genre"
    )
    unknown_history_titles: Literal["remove", "error"] = option(
        "remove",
        help="a history title missing from the catalogue: 'remove' takes it out of the history and "
        "counts it in stats.json (dropped.history_title_not_in_catalogue); 'error' stops",
    )
    valid_frac: float = option(0.1, help="share of records in the valid split")
    test_frac: float = option(0.1, help="share of records in the test split")
    split_seed: int = option(0, help="seed of the permutation (of groups, or of records) that assigns splits")
    split: Literal["grouped", "random"] = option(
        "grouped",
        help="'grouped': records that are overlapping windows of one sequence (see overlap_min) form a "
        "group and a group stays in one split, so no test context's continuation is in train; "
        "'random': each record is drawn on its own (leaks when records overlap; for comparison)",
    )
    overlap_min: int = option(
        2,
        help="grouped split: two records are windows of one sequence when one's history+target ends "
        "with, or contains, a run of at least this many items that starts the other's",
    )

    def __post_init__(self) -> None:
        if self.valid_frac < 0 or self.test_frac < 0 or self.valid_frac + self.test_frac >= 1:
            raise ValueError("valid_frac and test_frac must be >= 0 and sum to less than 1")
        if self.overlap_min < 1:
            raise ValueError(f"overlap_min must be >= 1, got {self.overlap_min}")


def _titles(text: str, catalogue: dict[str, int] | None = None) -> list[str]:
    """The quoted titles of ``text``, oldest first.

    Without a catalogue, a regex reads double-quoted strings (backslash escapes allowed). With
    one, titles that hold unescaped quotes (``"A Child Called "It" (…)"``) break that reading, so
    the text between the first and last quote is cut at every ``", "`` and the pieces are
    regrouped (dynamic programming) into the segmentation with the fewest titles unknown to the
    catalogue; a piece that joins no known title stays one unknown title.
    """
    regex = [_unescape(t) for t in _QUOTED.findall(text)]
    if catalogue is None or all(t in catalogue for t in regex):
        return regex
    body = text[text.index('"') + 1 : text.rindex('"')]
    pieces = body.split('", "')
    n = len(pieces)
    cost = [0] + [n + 1] * n  # cost[j]: fewest unknown titles covering pieces[:j]
    back = [0] * (n + 1)
    for j in range(1, n + 1):
        for i in range(j):
            title = _unescape('", "'.join(pieces[i:j]))
            step = 0 if title in catalogue else 1 if j == i + 1 else n + 1
            if cost[i] + step < cost[j]:
                cost[j], back[j] = cost[i] + step, i
    titles, j = [], n
    while j > 0:
        titles.append(_unescape('", "'.join(pieces[back[j]:j])))
        j = back[j]
    return titles[::-1]


def _unescape(title: str) -> str:
    return re.sub(r"\\(.)", r"\1", title)


def _load_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataError(f"{path} line {exc.lineno}, column {exc.colno}: not valid JSON ({exc.msg})") from exc


def _catalogue(folder: Path, params: Params, where: str, records: list[dict]) -> tuple[pd.DataFrame, list[Path]]:
    inputs = []
    if params.id2name:
        path = require_file(folder, params.id2name, f"{where}.params.id2name")
        inputs.append(path)
        raw = _load_json(path)
        if not isinstance(raw, dict):
            raise DataError(f"{path}: expected a JSON object {{\"id\": title}}")
        bad = [k for k in raw if not str(k).lstrip("-").isdigit()]
        if bad:
            raise DataError(f"{path}: key {bad[0]!r} is not an integer item id")
        items = pd.DataFrame({"item_id": [int(k) for k in raw], "title": [str(v) for v in raw.values()]})
        dup = items["title"].duplicated(keep=False)
        if dup.any():
            t = items.loc[dup, "title"].iloc[0]
            ids = items.loc[items["title"] == t, "item_id"].tolist()
            raise DataError(f"{path}: title {t!r} belongs to item ids {ids}; titles must identify items in this format")
    else:
        seen: dict[str, int] = {}
        for rec in records:
            for t in _titles(rec["input"]) + _titles(rec["output"]):
                seen.setdefault(t, len(seen))
        items = pd.DataFrame({"item_id": list(seen.values()), "title": list(seen)})
    genres, keep = None, None
    path = _optional_file(folder, params, "name2genre", where)
    if path:
        inputs.append(path)
        genres = _load_json(path)
    path = _optional_file(folder, params, "genre_labels", where) if genres else None
    if path:
        inputs.append(path)
        keep = set(_load_json(path))
    items["genres"] = [
        [g for g in genres[t] if keep is None or g in keep] if genres and t in genres else None
        for t in items["title"]
    ]
    return items, inputs


def _optional_file(folder: Path, params: Params, key: str, where: str) -> Path | None:
    """Genre files are optional: a default-named file that is absent means 'no genres'; a file the
    user named explicitly must exist."""
    name = getattr(params, key)
    if not name:
        return None
    if (folder / name).is_file():
        return folder / name
    if name == getattr(Params, key):  # the default name, not present: the dataset has no genres
        return None
    return require_file(folder, name, f"{where}.params.{key}")


def load(params: Params, spec: DatasetSpec, where: str) -> RawDataset:
    base = resolve_path(params.path, f"{where}.params.path")
    folder, records_path = (base.parent, base) if base.is_file() else (base, None)
    records_path = records_path or require_file(folder, params.records_file, f"{where}.params.records_file")
    records = _load_json(records_path)
    if not isinstance(records, list):
        raise DataError(f"{records_path}: expected a JSON list of {{instruction, input, output}} records")
    for i, rec in enumerate(records):
        if not isinstance(rec, dict) or not isinstance(rec.get("input"), str) or not isinstance(rec.get("output"), str):
            raise DataError(f"{records_path} record {i}: needs string fields 'input' and 'output', got {str(rec)[:120]}")
    items, inputs = _catalogue(folder, params, where, records)
    ids = dict(zip(items["title"], items["item_id"]))

    catalogue = ids if params.id2name else None
    rows, sequences, dropped = [], [], Counter()
    for i, rec in enumerate(records):
        where_rec = f"{records_path} record {i}"
        history, out = _titles(rec["input"], catalogue), _titles(rec["output"], catalogue)
        if len(out) != 1:
            raise DataError(f"{where_rec}: 'output' must hold exactly one quoted title, got {rec['output'][:120]!r}")
        missing = [t for t in history if t not in ids]
        if missing and params.unknown_history_titles == "error":
            raise DataError(
                f"{where_rec}: history titles {missing} are not in the catalogue; add them to it or set "
                "params.unknown_history_titles: remove"
            )
        dropped["history_title_not_in_catalogue"] += len(missing)
        history = [t for t in history if t in ids]
        sequences.append(history + out)  # by title: an unknown target still has its own identity
        note = f" (target title {out[0]!r} is not in the catalogue)" if out[0] not in ids else ""
        rows.append({
            "user_id": None, "history": [ids.get(t, _UNKNOWN) for t in history], "target": ids.get(out[0], _UNKNOWN),
            "timestamp": None, "origin": f"{where_rec}{note}",
        })
    n = len(rows)
    if params.split == "grouped":
        groups = window_groups(sequences, params.overlap_min)
        assignment = _assign_groups(groups, params)
        sizes = np.bincount(groups)
        info = {
            "split_rule": f"groups of overlapping windows (shared start/end run >= {params.overlap_min} items), "
            "seeded permutation of groups",
            "n_groups": int(len(sizes)),
            "largest_groups": sorted(sizes.tolist(), reverse=True)[:5],
            "records_in_multi_record_groups": int(sizes[sizes > 1].sum()),
        }
    else:
        order = np.random.default_rng(params.split_seed).permutation(n)
        n_test, n_valid = round(params.test_frac * n), round(params.valid_frac * n)
        assignment = np.empty(n, dtype=object)
        assignment[order[:n_test]] = "test"
        assignment[order[n_test:n_test + n_valid]] = "valid"
        assignment[order[n_test + n_valid:]] = "train"
        info = {"split_rule": "seeded permutation of record indices"}
    for name in ("train", "valid", "test"):
        if n and not (assignment == name).any() and (name == "train" or getattr(params, f"{name}_frac") > 0):
            hint = (
                f"the largest group of overlapping records holds {max(info['largest_groups'])} of {n}; raise "
                "params.overlap_min so that fewer records are linked, or set params.split: random"
                if params.split == "grouped" else "raise params.valid_frac / params.test_frac"
            )
            raise DataError(
                f"{records_path}: the {params.split} split of {n} records left the {name} split empty; {hint}"
            )
    frame = pd.DataFrame(rows)
    frame["context_id"] = [f"record-{i}" for i in range(n)]
    splits = {name: frame.loc[assignment == name].reset_index(drop=True) for name in ("train", "valid", "test")}
    info = {"n_records": n, "split": params.split, **info, "split_seed": params.split_seed}
    return RawDataset(items=items, splits=splits, dropped=+dropped, inputs=[records_path, *inputs], info=info)


def window_groups(sequences: list[list], overlap_min: int) -> np.ndarray:
    """Group id of each record (numbered in order of first record) under the window rule.

    Records A and B are linked when, placed at some offset, they agree on every item where both
    are defined and overlap by at least ``overlap_min`` items — i.e. B's sequence starts with a
    run that A's sequence ends with (B is A shifted), or contains (B lies inside A). A run shared
    only in the middle of both (a popular book pair read by two users) does not link them.
    Groups are the connected components (union-find) of the links.
    """
    # every run of overlap_min items, by content: where a record starts, look for it anywhere
    starts_at: dict[tuple, list[tuple[int, int]]] = defaultdict(list)
    for r, seq in enumerate(sequences):
        for i in range(len(seq) - overlap_min + 1):
            starts_at[tuple(seq[i:i + overlap_min])].append((r, i))

    def links():
        for b, seq_b in enumerate(sequences):
            if len(seq_b) < overlap_min:
                continue
            for a, i in starts_at[tuple(seq_b[:overlap_min])]:
                seq_a = sequences[a]
                m = min(len(seq_a) - i, len(seq_b))  # overlap length when B starts at A's position i
                if a != b and seq_a[i:i + m] == seq_b[:m]:
                    yield a, b

    return connected_components(len(sequences), links())


def connected_components(n: int, links) -> np.ndarray:
    """Component id of each of ``n`` nodes under the ``(a, b)`` links (union-find), numbered in
    order of each component's first node."""
    parent = list(range(n))

    def root(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]  # path halving
            x = parent[x]
        return x

    for a, b in links:
        parent[root(a)] = root(b)
    first: dict[int, int] = {}
    return np.array([first.setdefault(root(x), len(first)) for x in range(n)], dtype=np.int64)


def _assign_groups(groups: np.ndarray, params: Params) -> np.ndarray:
    """Split of each record: the groups, in a seeded random order, are laid end to end and cut at
    round(test_frac·n) and round((test_frac + valid_frac)·n) records; a group that straddles a
    cut goes to the side holding its middle record, so split sizes miss the ratios by at most
    half a group."""
    n = len(groups)
    sizes = np.bincount(groups)
    order = np.random.default_rng(params.split_seed).permutation(len(sizes))
    middle = np.empty(len(sizes))
    middle[order] = np.cumsum(sizes[order]) - sizes[order] / 2  # records before the group's middle
    n_test, n_valid = round(params.test_frac * n), round(params.valid_frac * n)
    split_of_group = np.where(middle < n_test, "test", np.where(middle < n_test + n_valid, "valid", "train"))
    return split_of_group[groups].astype(object)
