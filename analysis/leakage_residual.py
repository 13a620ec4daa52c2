"""What the ``adjacent`` leakage left after a split is made of (docs/results/README.md, "Goodreads
split").

    python -m analysis.leakage_residual --data results/data/goodreads --split test

``adjacent`` (:mod:`blade.data.leakage`) counts the evaluation rows whose (last history item,
target) pair stands back to back in some train sequence. After the grouped split no train
record is a window of a test record's own sequence (two windows of one sequence overlapping by
two or more items are linked and kept together), so each remaining hit is another sequence that
contains the pair. This report checks that from the data, for each hit:

- ``train sequences holding the pair``: how many train rows contain it back to back;
- ``positions shared beyond the pair``: place each of those train sequences on the evaluation
  row's sequence so that the pairs coincide, count the other positions where both hold the same
  item, and keep the largest count. A window of the same reader would agree on its whole overlap;
  another reader who read the same two books in a row agrees on the pair alone (0);
- ``same named series``: both titles end in one series' tag, ``(Series Name, #n)``, as Goodreads
  titles do, so the pair is two books of one series read in order.

The share of same-series pairs among all evaluation rows is printed alongside, as the baseline,
with the largest group a stricter split would have to keep whole: records linked whenever they
share any back-to-back pair.
"""

from __future__ import annotations

import argparse
import re
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from blade.data import load_prepared
from blade.data.sources.instruction_json import connected_components

_SERIES = re.compile(r"\(([^()#]*?),?\s*#\s*[\d.]+(?:-[\d.]+)?\)\s*$")


def series_name(title: str) -> str | None:
    """``'Harry Potter'`` for ``'... (Harry Potter, #2)'``; None for a title without a series tag."""
    match = _SERIES.search(title)
    return match.group(1).strip() if match and match.group(1).strip() else None


def _sequence(history, target) -> list[int]:
    return [*map(int, history), int(target)]


def residual_hits(train: pd.DataFrame, frame: pd.DataFrame, titles: dict[int, str]) -> pd.DataFrame:
    """One row per evaluation row whose (last, target) pair is back to back in a train sequence:
    ``row``, ``train_sequences``, ``shared_beyond_pair``, ``same_series`` (module docstring)."""
    sequences = [_sequence(h, t) for h, t in zip(train["history"], train["target"])]
    where: dict[tuple[int, int], list[tuple[int, int]]] = defaultdict(list)  # pair -> [(train row, position)]
    for r, seq in enumerate(sequences):
        for i in range(len(seq) - 1):
            where[(seq[i], seq[i + 1])].append((r, i))
    hits = []
    for row, (history, target) in enumerate(zip(frame["history"], frame["target"])):
        seq = _sequence(history, target)
        found = where.get((seq[-2], seq[-1]))
        if not found:
            continue
        shared = 0
        for r, i in found:
            other, offset = sequences[r], i - (len(seq) - 2)  # seq[k] faces other[k + offset]
            agree = sum(0 <= k + offset < len(other) and other[k + offset] == item for k, item in enumerate(seq))
            shared = max(shared, agree - 2)
        a, b = series_name(titles.get(seq[-2], "")), series_name(titles.get(seq[-1], ""))
        hits.append({"row": row, "train_sequences": len({r for r, _ in found}), "shared_beyond_pair": shared,
                     "same_series": a is not None and a == b})
    return pd.DataFrame(hits, columns=["row", "train_sequences", "shared_beyond_pair", "same_series"])


def same_series_share(frame: pd.DataFrame, titles: dict[int, str]) -> float:
    """Share of rows whose last history item and target are two books of one named series."""
    same = [series_name(titles.get(int(h[-1]), "")) for h in frame["history"]]
    other = [series_name(titles.get(int(t), "")) for t in frame["target"]]
    return float(np.mean([a is not None and a == b for a, b in zip(same, other)])) if len(frame) else 0.0


def largest_shared_pair_group(frames: Sequence[pd.DataFrame]) -> tuple[int, int]:
    """(records in the largest group, records) when records sharing any back-to-back pair are linked
    (connected components, union-find)."""
    sequences = [_sequence(h, t) for f in frames for h, t in zip(f["history"], f["target"])]
    first: dict[tuple[int, int], int] = {}  # pair -> the first record holding it
    links = ((r, first.setdefault(pair, r)) for r, seq in enumerate(sequences) for pair in zip(seq[:-1], seq[1:]))
    sizes = np.bincount(connected_components(len(sequences), links)) if sequences else np.zeros(1, dtype=int)
    return int(sizes.max()), len(sequences)


def report(data: Path, split: str) -> str:
    """Markdown: the hits of ``split`` of the prepared dataset in ``data`` (results/data/NAME)."""
    items, splits, _ = load_prepared(data)
    titles = dict(zip(items["item_id"].astype(int), items["title"].astype(str)))
    frame = splits[split]
    hits = residual_hits(splits["train"], frame, titles)
    largest, records = largest_shared_pair_group(list(splits.values()))
    n, h = len(frame), len(hits)
    buckets = pd.cut(hits["shared_beyond_pair"], [-1, 0, 2, np.inf], labels=["0", "1-2", "3 or more"])
    shared = buckets.value_counts().reindex(["0", "1-2", "3 or more"])
    lines = [
        f"# The adjacent leakage left on {data.name} {split}: {h} of {n} rows ({h / max(n, 1):.1%})", "",
        "| | rows | share of the hits |", "| --- | --- | --- |",
        *(f"| best-matching train sequence agrees on {k} position(s) beyond the pair | {v} | {v / max(h, 1):.1%} |"
          for k, v in shared.items()),
        f"| the two books are consecutive in one named series | {int(hits['same_series'].sum())} | "
        f"{hits['same_series'].mean() if h else 0:.1%} |", "",
        f"- Same-series (last item, target) pairs among all {n} {split} rows: {same_series_share(frame, titles):.1%}.",
        f"- Train sequences holding a hit's pair: median {hits['train_sequences'].median() if h else 0:g}, "
        f"mean {hits['train_sequences'].mean() if h else 0:.2f}.",
        f"- Linking every two records that share any back-to-back pair, as a stricter split would have to, "
        f"puts {largest:,} of {records:,} records ({largest / max(records, 1):.0%}) in one group.",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="a prepared dataset directory (results/data/NAME)")
    p.add_argument("--split", default="test", choices=["valid", "test"])
    args = p.parse_args(argv)
    print(report(Path(args.data), args.split))


if __name__ == "__main__":
    main()
