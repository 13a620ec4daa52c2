"""Raw Amazon Review Data (2018) of one category → a RawDataset, by the BIGRec / D3 protocol.

Inputs are a category's two files from the Amazon Review Data (2018) release (Ni, Li, McAuley,
EMNLP 2019), plain or gzipped JSON lines: the reviews (``Video_Games.json.gz``: ``reviewerID``,
``asin``, ``overall``, ``unixReviewTime``, …) and the metadata (``meta_Video_Games.json.gz``:
``asin``, ``title``, ``category``, …). Older dumps write metadata as Python dict literals; those
lines are read with ``ast.literal_eval``.

Protocol of BIGRec (Bao et al., "A Bi-Step Grounding Paradigm for LLMs in Recommendation
Systems", 2023) and D3 (Bao et al., "Decoding Matters: Addressing Amplification Bias and
Homogeneity Issue for LLM-based Recommendation", EMNLP 2024, ``code/process.py``), also used by
Flower. Every raw review ends in exactly one output row or one ``dropped`` reason:

1. A review without ``reviewerID``/``asin``/``unixReviewTime`` → ``review_missing_field``.
2. Keep reviews with ``start`` ≤ UTC date ≤ ``end`` → else ``outside_time_window``.
3. Titles: HTML entities unescaped, whitespace collapsed, enclosing quotes removed. Items with
   no title, a title of < 2 characters or one holding HTML markup → ``no_title``; more than
   ``max_title_words`` words → ``long_title``.
4. Repeated reviews of the same (user, item, time) → ``duplicate_interaction``.
5. Users and items with fewer than ``k_core`` reviews are removed, repeatedly, until none is
   left (the k-core is unique, so the removal order does not matter) → ``k_core``.
6. Item ids 0..n-1 follow the sorted asin; each user's reviews are ordered by (time, asin).
7. Each review is a row: target = its item, history = the user's earlier items (from any split,
   oldest first). A user's first review has no history → ``first_interaction_no_history``.
8. Rows are ordered by (time, user, asin); with n rows the first ``int(n·(1-valid-test))`` are
   train, the rows up to ``int(n·(1-test))`` valid, the rest test. As in D3 the fractions are of
   rows (reviews with a history), which gives the published Video_Games split 49,133/6,142/6,142.

Deliberate differences from D3's script: the window is explicit (D3 widens its start year until
the window holds 10,000 items and uses the machine's local time); item ids follow the asin order
(D3 shuffles with seed 42 — ids are labels either way); all HTML entities are unescaped (D3: only
``&quot;``/``&amp;``); duplicates are removed (D3 keeps them: ``drop_duplicates: false``);
metadata asins listed twice keep their first record.
"""

from __future__ import annotations

import ast
import datetime as dt
import gzip
import html
import json
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
import pandas as pd

from blade.config import option
from blade.data.canonical import DatasetSpec, RawDataset
from blade.data.sources._util import resolve_path
from blade.errors import DataError

# Real 2018 metadata has titles such as '<span id="parentalAdvisory">…'; D3 drops them.
_MARKUP = re.compile(r"<\s*/?\s*[A-Za-z][^<>]*>")
_DAY = 86400


@dataclass
class Params:
    reviews: str = option(help="the category's reviews file, JSON lines, plain or .gz (e.g. Video_Games.json.gz)")
    metadata: str = option(help="the category's metadata file, JSON lines, plain or .gz (e.g. meta_Video_Games.json.gz)")
    start: str = option("2015-10-01", help="first day of the time window (inclusive, UTC, YYYY-MM-DD); BIGRec/D3 Video_Games: 2015-10")
    end: str = option("2018-11-30", help="last day of the time window (inclusive, UTC, YYYY-MM-DD); BIGRec/D3 Video_Games: 2018-11")
    k_core: int = option(5, help="users and items with fewer reviews are removed, repeated to a fixed point (BIGRec/D3: 5)")
    max_title_words: int = option(20, help="items whose cleaned title has more words are removed (BIGRec/D3: 20)")
    drop_duplicates: bool = option(True, help="remove repeated reviews of the same (user, item, time); D3 keeps them (false)")
    valid_frac: float = option(0.1, help="share of rows (in time order) after train that form the valid split")
    test_frac: float = option(0.1, help="share of rows at the end of time that form the test split")
    genres_from_category: bool = option(
        False,
        help="use the metadata `category` list minus its top level (e.g. 'Video Games') as genres; "
        "it is a browse-tree path (platform, then kind), not curated genres, hence off by default",
    )

    def __post_init__(self) -> None:
        for name in ("start", "end"):
            try:
                dt.date.fromisoformat(getattr(self, name))
            except ValueError:
                raise ValueError(f"{name}: {getattr(self, name)!r} is not a date like 2015-10-01") from None
        if self.start > self.end:
            raise ValueError(f"start {self.start} is after end {self.end}")
        if self.k_core < 1 or self.max_title_words < 1:
            raise ValueError("k_core and max_title_words must be >= 1")
        if self.valid_frac < 0 or self.test_frac < 0 or self.valid_frac + self.test_frac >= 1:
            raise ValueError("valid_frac and test_frac must be >= 0 and sum to less than 1")


def _open(path: Path) -> IO[str]:
    """Text lines of a plain or gzipped file, told apart by the gzip magic, not the name."""
    with open(path, "rb") as fh:
        gzipped = fh.read(2) == b"\x1f\x8b"
    return gzip.open(path, "rt", encoding="utf-8") if gzipped else open(path, encoding="utf-8")


def _lines(path: Path):
    """(line number, line) of the non-blank lines; unreadable files become a DataError."""
    try:
        with _open(path) as fh:
            for n, line in enumerate(fh, start=1):
                if line.strip():
                    yield n, line
    except (OSError, EOFError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot be read as UTF-8 text or gzip ({exc}); is the download complete?") from exc


def _read_reviews(path: Path) -> tuple[pd.DataFrame, int, int]:
    """(user, asin, time, line) of the usable reviews, the number of reviews, of incomplete ones."""
    users, asins, times, lines = [], [], [], []
    n_raw = n_missing = 0
    for n, line in _lines(path):
        n_raw += 1
        try:
            rec = json.loads(line)
        except ValueError as exc:
            raise DataError(f"{path} line {n}: not valid JSON ({exc}): {line[:80]!r}") from None
        if not isinstance(rec, dict):
            raise DataError(f"{path} line {n}: expected a JSON object per line, got {line[:80]!r}")
        user, asin, time = rec.get("reviewerID"), rec.get("asin"), rec.get("unixReviewTime")
        if not user or not asin or time is None or time == "":
            n_missing += 1
            continue
        try:
            times.append(int(time))
        except (TypeError, ValueError):
            raise DataError(f"{path} line {n}: unixReviewTime {time!r} is not an integer of seconds") from None
        users.append(str(user))
        asins.append(str(asin))
        lines.append(n)
    frame = pd.DataFrame({"user": users, "asin": asins, "time": np.asarray(times, dtype=np.int64), "line": lines})
    return frame, n_raw, n_missing


def _clean_title(raw: Any) -> str | None:
    if not isinstance(raw, str) or _MARKUP.search(raw):
        return None
    title = " ".join(html.unescape(raw).split())
    # Only a fully quoted title loses its quotes: D3's strip('"') also cuts 'Game "HD"' to 'Game "HD'.
    if len(title) >= 2 and title[0] == title[-1] == '"':
        title = title[1:-1].strip()
    return title if len(title) > 1 else None  # D3: a one-character title is no title


def _read_metadata(path: Path) -> tuple[dict[str, str], dict[str, list[str]], int]:
    """asin → cleaned title (usable titles only), asin → genres, number of records."""
    titles: dict[str, str] = {}
    genres: dict[str, list[str]] = {}
    seen: set[str] = set()
    n_records = 0
    for n, line in _lines(path):
        try:
            rec = json.loads(line)
        except ValueError:
            try:
                rec = ast.literal_eval(line.strip())  # older dumps: Python dict literals
            except (ValueError, SyntaxError, MemoryError, RecursionError):
                rec = None
        if not isinstance(rec, dict):
            raise DataError(f"{path} line {n}: neither a JSON object nor a Python dict literal: {line[:80]!r}")
        n_records += 1
        asin = rec.get("asin")
        if not isinstance(asin, str) or asin in seen:
            continue
        seen.add(asin)
        title = _clean_title(rec.get("title"))
        if title is not None:
            titles[asin] = title
        cats = rec.get("category")
        if isinstance(cats, list):
            kept = list(dict.fromkeys(c for c in (html.unescape(str(c)).strip() for c in cats[1:]) if c))
            if kept:
                genres[asin] = kept
    return titles, genres, n_records


def _k_core(user: np.ndarray, item: np.ndarray, k: int) -> tuple[np.ndarray, int]:
    """Mask of the reviews in the k-core of the user–item multigraph, and the rounds it took."""
    keep = np.ones(len(user), dtype=bool)
    n_users, n_items = int(user.max(initial=-1)) + 1, int(item.max(initial=-1)) + 1
    rounds = 0
    while True:
        rounds += 1
        u_count = np.bincount(user[keep], minlength=n_users)
        i_count = np.bincount(item[keep], minlength=n_items)
        new = keep & (u_count[user] >= k) & (i_count[item] >= k)
        if new.sum() == keep.sum():
            return keep, rounds
        keep = new


def load(params: Params, spec: DatasetSpec, where: str) -> RawDataset:
    paths = {}
    for key in ("reviews", "metadata"):
        paths[key] = resolve_path(getattr(params, key), f"{where}.params.{key}")
        if not paths[key].is_file():
            raise DataError(f"{where}.params.{key}: {paths[key]} is a folder; point it at the {key} file")
    reviews_path, meta_path = paths["reviews"], paths["metadata"]
    dropped: Counter = Counter()

    frame, n_raw, dropped["review_missing_field"] = _read_reviews(reviews_path)
    start = int(dt.datetime.fromisoformat(params.start).replace(tzinfo=dt.UTC).timestamp())
    end = int(dt.datetime.fromisoformat(params.end).replace(tzinfo=dt.UTC).timestamp()) + _DAY  # exclusive
    in_window = (frame["time"] >= start) & (frame["time"] < end)
    dropped["outside_time_window"] = int((~in_window).sum())
    frame = frame.loc[in_window]
    n_in_window = len(frame)

    titles, genres, n_meta = _read_metadata(meta_path)
    words = {asin: len(title.split()) for asin, title in titles.items()}  # per item, not per review
    n_words = frame["asin"].map(words)
    no_title = n_words.isna()
    long_title = ~no_title & (n_words > params.max_title_words)
    dropped["no_title"], dropped["long_title"] = int(no_title.sum()), int(long_title.sum())
    frame = frame.loc[~no_title & ~long_title]

    if params.drop_duplicates:
        dup = frame.duplicated(["user", "asin", "time"], keep="first")  # file order: the first stays
        dropped["duplicate_interaction"] = int(dup.sum())
        frame = frame.loc[~dup]

    user_codes, _ = pd.factorize(frame["user"])
    item_codes, _ = pd.factorize(frame["asin"])
    core, rounds = _k_core(user_codes, item_codes, params.k_core)
    dropped["k_core"] = int((~core).sum())
    frame = frame.loc[core]
    if frame.empty:
        raise DataError(
            f"{where}: no reviews are left after the time window, title filters and the {params.k_core}-core "
            f"({n_raw} reviews read, {n_in_window} in the window, dropped: {dict(dropped)}); "
            "widen start/end or lower k_core"
        )

    # Ids by sorted asin: reproducible labels without an RNG.
    item_ids, asins = pd.factorize(frame["asin"], sort=True)
    frame = frame.assign(item=item_ids.astype(np.int64))
    frame = frame.sort_values(["user", "time", "asin", "line"], kind="stable").reset_index(drop=True)
    pos = frame.groupby("user", sort=False).cumcount().to_numpy()  # index within the user's reviews
    seq = frame["item"].tolist()
    # History = the user's earlier items. Only the last max_history+1 are kept: full histories grow
    # quadratically with a user's activity, and one extra item still tells the canonicaliser
    # (which truncates to max_history) that the row was truncated.
    keep_len = spec.max_history + 1
    frame["history"] = [seq[max(r - p, r - keep_len) : r] for r, p in enumerate(pos)]
    dropped["first_interaction_no_history"] = int((pos == 0).sum())
    rows = frame.loc[pos > 0].sort_values(["time", "user", "asin", "line"], kind="stable").reset_index(drop=True)

    n = len(rows)
    cuts = [0, int(n * (1 - params.valid_frac - params.test_frac)), int(n * (1 - params.test_frac)), n]
    splits = {}
    source = reviews_path.name
    for k, name in enumerate(("train", "valid", "test")):
        part = rows.iloc[cuts[k] : cuts[k + 1]]
        splits[name] = pd.DataFrame({
            "context_id": [f"{name}-{i}" for i in range(len(part))],
            "user_id": part["user"].to_numpy(),
            "history": part["history"].to_numpy(),
            "target": part["item"].to_numpy(),
            "timestamp": part["time"].to_numpy(),
            "origin": [f"{source} line {ln} (user {u})" for ln, u in zip(part["line"].tolist(), part["user"].tolist())],
        })

    items = pd.DataFrame({"item_id": np.arange(len(asins), dtype=np.int64), "title": [titles[a] for a in asins],
                          "genres": [genres.get(a) for a in asins] if params.genres_from_category else None})
    info = {
        "raw_reviews": n_raw, "reviews_in_window": n_in_window, "window_utc": [params.start, params.end],
        "metadata_records": n_meta, "metadata_items_with_title": len(titles), "k_core_rounds": rounds,
        "interactions": len(frame), "n_users": int(frame["user"].nunique()), "n_items": len(asins),
        "rows": {name: len(part) for name, part in splits.items()},
    }
    return RawDataset(items=items, splits=splits, dropped=dropped, inputs=[reviews_path, meta_path], info=info)
