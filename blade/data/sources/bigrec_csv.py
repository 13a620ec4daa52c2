"""Processed CSV splits as published by BIGRec / D3 / Flower-style repositories.

Folder layout (``path``):
- the item table: ``items.tsv`` (header ``item_id<TAB>title``) or an ``info`` text file of
  ``title<TAB>item_id`` lines without header (BIGRec's ``info/*.txt``); ``items_file`` picks one
  explicitly, otherwise ``items.tsv`` is used when present, else the single ``*.txt`` file in the
  folder or in ``info/``;
- ``train.csv`` with at least ``history_item_id`` (a JSON or Python-literal list, oldest first)
  and ``item_id`` (the next item);
- ``valid.csv`` / ``test.csv`` with the same two columns plus, when present, ``user_id`` and
  ``timestamp`` (kept) — the other columns (titles, ratings, asins) are redundant and ignored.

Rows are kept one for one: the splits are already the published protocol (temporal, 5-core).
"""

from __future__ import annotations

import ast
import csv
import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from blade.config import option
from blade.data.canonical import DatasetSpec, RawDataset
from blade.data.sources._util import require_file, resolve_path
from blade.errors import DataError


@dataclass
class Params:
    path: str = option(help="folder holding the item table and train/valid/test.csv")
    items_file: str = option("", help="item table inside `path` (default: items.tsv, else the one info *.txt)")


def _find_items_file(folder: Path, params: Params, where: str) -> Path:
    if params.items_file:
        return require_file(folder, params.items_file, f"{where}.params.items_file")
    if (folder / "items.tsv").is_file():
        return folder / "items.tsv"
    txts = sorted(folder.glob("*.txt")) or sorted((folder / "info").glob("*.txt"))
    if len(txts) == 1:
        return txts[0]
    raise DataError(
        f"{where}.params.path: {folder} has no items.tsv and {len(txts)} info *.txt files; "
        "set params.items_file to the item table"
    )


def _read_items(path: Path) -> pd.DataFrame:
    if path.suffix == ".tsv":
        frame = pd.read_csv(path, sep="\t", dtype=str, quoting=csv.QUOTE_NONE, keep_default_na=False)
        if list(frame.columns[:2]) != ["item_id", "title"]:
            raise DataError(f"{path}: expected the header 'item_id<TAB>title', got {list(frame.columns)}")
        lines = range(2, len(frame) + 2)
        ids, titles = frame["item_id"].tolist(), frame["title"].tolist()
    else:  # BIGRec info file: title<TAB>item_id per line, no header; titles may hold tabs
        ids, titles, lines = [], [], []
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            if "\t" not in line:
                raise DataError(f"{path} line {n}: expected 'title<TAB>item_id', got {line[:80]!r}")
            title, item = line.rsplit("\t", 1)
            ids.append(item)
            titles.append(title)
            lines.append(n)
    bad = [(ln, i) for ln, i in zip(lines, ids) if not i.strip().lstrip("-").isdigit()]
    if bad:
        raise DataError(f"{path} line {bad[0][0]}: item id {bad[0][1]!r} is not an integer")
    items = pd.DataFrame({"item_id": [int(i) for i in ids], "title": titles, "line": list(lines)})
    dup = items["item_id"].duplicated(keep=False)
    if dup.any():
        first = items.loc[dup].iloc[0]["item_id"]
        rows = items.loc[items["item_id"] == first]
        raise DataError(
            f"{path}: item id {first} is defined on lines {rows['line'].tolist()} with titles "
            f"{rows['title'].tolist()}; each item id must appear once — remove the duplicate"
        )
    items["genres"] = None
    return items.drop(columns="line")


def _parse_list(cell: object, path: Path, line: int, column: str) -> list[int]:
    text = str(cell)
    try:
        value = json.loads(text)
    except ValueError:
        try:
            value = ast.literal_eval(text)  # valid/test.csv use Python-literal lists
        except (ValueError, SyntaxError):
            value = None
    if not isinstance(value, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        raise DataError(
            f"{path} line {line}, column {column}: expected a list of integer item ids like [3, 17], got {text[:80]!r}"
        )
    return value


def _read_split(path: Path, name: str) -> pd.DataFrame:
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: not a readable CSV file: {exc}") from exc
    for col in ("history_item_id", "item_id"):
        if col not in frame.columns:
            raise DataError(f"{path}: required column '{col}' is missing (columns: {list(frame.columns)})")
    lines = range(2, len(frame) + 2)  # line 1 is the header
    history = [_parse_list(c, path, ln, "history_item_id") for c, ln in zip(frame["history_item_id"], lines)]
    target = pd.to_numeric(frame["item_id"], errors="coerce")
    if target.isna().any():
        ln = int(target.isna().to_numpy().argmax()) + 2
        raise DataError(f"{path} line {ln}, column item_id: {frame['item_id'].iloc[ln - 2]!r} is not an item id")
    stamp = pd.to_numeric(frame["timestamp"], errors="coerce") if "timestamp" in frame else None
    return pd.DataFrame({
        "context_id": [f"{name}-{i}" for i in range(len(frame))],
        "user_id": frame["user_id"] if "user_id" in frame else None,
        "history": history,
        "target": target.astype("int64"),
        "timestamp": stamp,
        "origin": [f"{path} line {ln}" for ln in lines],
    })


def load(params: Params, spec: DatasetSpec, where: str) -> RawDataset:
    folder = resolve_path(params.path, f"{where}.params.path")
    items_path = _find_items_file(folder, params, where)
    items = _read_items(items_path)
    paths = {name: require_file(folder, f"{name}.csv", f"{where}.params.path") for name in ("train", "valid", "test")}
    splits = {name: _read_split(p, name) for name, p in paths.items()}
    return RawDataset(items=items, splits=splits, inputs=[items_path, *paths.values()], info={"items_file": items_path.name})
