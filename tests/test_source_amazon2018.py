"""The amazon2018 source on small raw-format files written here (no network, no shared data).

Every expected number below is worked out by hand from the records the test writes.
"""

from __future__ import annotations

import datetime as dt
import gzip
import json
import random
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from blade.config import from_dict
from blade.data.canonical import DatasetSpec
from blade.data.sources.amazon2018 import Params, load
from blade.errors import ConfigError, DataError

REASONS = (
    "review_missing_field", "outside_time_window", "no_title", "long_title",
    "duplicate_interaction", "k_core", "first_interaction_no_history",
)


def ts(day: int, date: str = "2016-01-01") -> int:
    """UTC seconds of `day` days after `date` (inside the default window)."""
    return int(dt.datetime.fromisoformat(date).replace(tzinfo=dt.UTC).timestamp()) + 86400 * day


def review(user: str, asin: str, time: int) -> dict:
    return {"reviewerID": user, "asin": asin, "overall": 5.0, "unixReviewTime": time, "reviewText": "ok"}


def write(path: Path, records: list) -> Path:
    """JSON lines (strings are written as they are); gzipped when the name ends in .gz."""
    text = "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records)
    if path.suffix == ".gz":
        with gzip.open(path, "wt", encoding="utf-8") as fh:
            fh.write(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def meta_for(asins, **titles) -> list[dict]:
    return [{"asin": a, "title": titles.get(a, f"Game {a}"), "category": ["Video Games", "PC", "Games"]} for a in asins]


def run(tmp_path: Path, reviews: list, meta: list, gz: bool = True, max_history: int = 10, **params):
    r = write(tmp_path / ("reviews.json.gz" if gz else "reviews.json"), reviews)
    m = write(tmp_path / ("meta.json.gz" if gz else "meta.json"), meta)
    p = from_dict(Params, {"reviews": str(r), "metadata": str(m), **params}, "dataset.params")
    return load(p, DatasetSpec(source="amazon2018", max_history=max_history), "dataset")


def all_rows(raw) -> pd.DataFrame:
    return pd.concat([raw.splits[s] for s in ("train", "valid", "test")], ignore_index=True)


def n_rows(raw) -> int:
    return sum(len(f) for f in raw.splits.values())


def test_k_core_cascades_to_a_fixed_point(tmp_path):
    # k=2. u1 has one review → removed; then item x has only u2 → removed; then u2 has only y →
    # removed; y keeps u3, u4 (2 reviews) and z keeps u3, u4: the 2-core is {u3, u4} × {y, z}.
    reviews = [
        review("u1", "x", ts(1)),
        review("u2", "x", ts(2)), review("u2", "y", ts(3)),
        review("u3", "y", ts(4)), review("u3", "z", ts(5)),
        review("u4", "y", ts(6)), review("u4", "z", ts(7)),
    ]
    raw = run(tmp_path, reviews, meta_for("xyz"), k_core=2)
    assert raw.dropped["k_core"] == 3
    assert raw.info["k_core_rounds"] == 4  # three removal rounds plus the one that finds no change
    assert raw.items["title"].tolist() == ["Game y", "Game z"]  # ids by sorted asin
    rows = all_rows(raw)
    assert sorted(rows["user_id"]) == ["u3", "u4"]
    assert raw.dropped["first_interaction_no_history"] == 2
    assert rows.set_index("user_id").loc["u3", "history"] == [0] and rows.set_index("user_id").loc["u3", "target"] == 1


def _naive_k_core(pairs: list[tuple[str, str]], k: int) -> list[tuple[str, str]]:
    """Remove one under-k user or item at a time until none is left (the textbook definition)."""
    pairs = list(pairs)
    while True:
        users = pd.Series([u for u, _ in pairs]).value_counts()
        items = pd.Series([i for _, i in pairs]).value_counts()
        weak = [("u", u) for u, c in users.items() if c < k] + [("i", i) for i, c in items.items() if c < k]
        if not pairs or not weak:
            return pairs
        kind, name = weak[0]
        pairs = [p for p in pairs if p[0 if kind == "u" else 1] != name]


def test_k_core_matches_one_at_a_time_removal(tmp_path):
    rng = random.Random(3)
    pairs = [(f"u{rng.randrange(40)}", f"i{rng.randrange(25)}") for _ in range(400)]
    reviews = [review(u, i, ts(n)) for n, (u, i) in enumerate(pairs)]
    raw = run(tmp_path, reviews, meta_for({i for _, i in pairs}), k_core=6)
    expected = _naive_k_core(pairs, 6)
    assert expected  # the example must leave a non-trivial core
    assert raw.dropped["k_core"] == len(pairs) - len(expected)
    assert raw.info["n_users"] == len({u for u, _ in expected})
    assert raw.info["n_items"] == len({i for _, i in expected})


def test_time_window_is_inclusive_utc_dates(tmp_path):
    times = [
        ts(0, "2015-10-01") - 1,   # 2015-09-30 23:59:59: out
        ts(0, "2015-10-01"),       # first second of the window: in
        ts(0, "2017-01-01"),
        ts(1, "2018-11-30") - 1,   # last second of 2018-11-30: in
        ts(1, "2018-11-30"),       # 2018-12-01 00:00:00: out
    ]
    raw = run(tmp_path, [review("a", f"i{n}", t) for n, t in enumerate(times)], meta_for([f"i{n}" for n in range(5)]), k_core=1)
    assert raw.dropped["outside_time_window"] == 2
    assert raw.info["reviews_in_window"] == 3
    assert sorted(all_rows(raw)["timestamp"]) == [times[2], times[3]]  # the first in-window review has no history
    raw = run(tmp_path, [review("a", f"i{n}", t) for n, t in enumerate(times)], meta_for([f"i{n}" for n in range(5)]),
              k_core=1, start="2017-01-01", end="2017-01-01")
    assert raw.dropped["outside_time_window"] == 4


def test_title_cleaning_and_filters(tmp_path):
    twenty = " ".join(["w"] * 20)
    meta = [
        {"asin": "A", "title": "Zelda &amp; Link &quot;HD&quot;"},
        {"asin": "B", "title": '  "Quoted\n  Title"  '},
        {"asin": "C", "title": '<span id="parentalAdvisory">Bad</span>'},
        {"asin": "D"},                                  # no title field
        {"asin": "E", "title": "   "},                  # empty after stripping
        {"asin": "F", "title": twenty + " extra"},      # 21 words
        {"asin": "G", "title": twenty},                 # 20 words: kept
        {"asin": "A", "title": "A later duplicate record"},  # first record of an asin wins
        # "H" is reviewed but has no metadata record
    ]
    reviews = [review("u", a, ts(n)) for n, a in enumerate("ABCDEFGHA")]
    raw = run(tmp_path, reviews, meta, k_core=1)
    assert raw.dropped["no_title"] == 4   # C, D, E, H
    assert raw.dropped["long_title"] == 1  # F
    assert raw.items["title"].tolist() == ['Zelda & Link "HD"', "Quoted Title", twenty]
    assert raw.items["genres"].isna().all()
    assert n_rows(raw) == 3  # A B G A reviewed by one user: 4 interactions, the first has no history


def test_genres_from_category(tmp_path):
    reviews = [review("u", a, ts(n)) for n, a in enumerate("AB")]
    meta = [{"asin": "A", "title": "Alpha", "category": ["Video Games", "PC", "Games"]}, {"asin": "B", "title": "Beta"}]
    raw = run(tmp_path, reviews, meta, k_core=1, genres_from_category=True)
    assert raw.items["genres"].tolist() == [["PC", "Games"], None]


def test_duplicates_removed_but_repeats_at_other_times_kept(tmp_path):
    reviews = [review("u", "A", ts(1)), review("u", "A", ts(1)), review("u", "B", ts(2)), review("u", "A", ts(3))]
    raw = run(tmp_path, reviews, meta_for("AB"), k_core=1)
    assert raw.dropped["duplicate_interaction"] == 1
    rows = all_rows(raw).sort_values("timestamp")
    assert rows["history"].tolist() == [[0], [0, 1]] and rows["target"].tolist() == [1, 0]
    raw = run(tmp_path, reviews, meta_for("AB"), k_core=1, drop_duplicates=False)  # D3 keeps them
    assert "duplicate_interaction" not in raw.dropped and n_rows(raw) == 3


def _grid_reviews() -> list[dict]:
    # 4 users × 6 reviews; user i reviews item "I{j}" on day 10·j + i → 20 rows with history.
    return [review(f"u{i}", f"I{j}", ts(10 * j + i)) for i in range(4) for j in range(6)]


def test_temporal_split_and_cross_split_histories(tmp_path):
    raw = run(tmp_path, _grid_reviews(), meta_for([f"I{j}" for j in range(6)]), k_core=1)
    train, valid, test = (raw.splits[s] for s in ("train", "valid", "test"))
    # int(20·0.8) = 16 train rows (steps j = 1..4 of every user), int(20·0.9) - 16 = 2 valid (j = 5 of
    # u0, u1), the rest test (j = 5 of u2, u3).
    assert (len(train), len(valid), len(test)) == (16, 2, 2)
    assert train["timestamp"].max() <= valid["timestamp"].min() <= valid["timestamp"].max() <= test["timestamp"].min()
    assert valid["user_id"].tolist() == ["u0", "u1"] and test["user_id"].tolist() == ["u2", "u3"]
    # A test row's history is the user's whole past, all of it in the train split.
    assert test["history"].tolist() == [[0, 1, 2, 3, 4]] * 2 and test["target"].tolist() == [5, 5]
    assert test["context_id"].tolist() == ["test-0", "test-1"]
    assert test["origin"].iloc[1] == "reviews.json.gz line 24 (user u3)"
    assert raw.info["rows"] == {"train": 16, "valid": 2, "test": 2}
    # histories keep at most max_history + 1 items (the canonicaliser truncates and counts)
    raw = run(tmp_path, _grid_reviews(), meta_for([f"I{j}" for j in range(6)]), k_core=1, max_history=2)
    assert raw.splits["test"]["history"].tolist() == [[2, 3, 4]] * 2


def test_every_raw_review_is_a_row_or_a_dropped_reason(tmp_path):
    rng = random.Random(7)
    asins = [f"B{n:03d}" for n in range(30)]
    reviews: list = [review(f"u{rng.randrange(60)}", rng.choice(asins), ts(rng.randrange(900))) for _ in range(900)]
    reviews += [review("old", "B000", ts(0, "2014-01-01")), {"asin": "B001", "unixReviewTime": ts(1)}, ""]
    reviews += [review("u1", "B001", ts(5))] * 2  # an exact duplicate
    meta = meta_for(asins[:24]) + [{"asin": "B024", "title": " ".join(["w"] * 30)}]  # B025..B029: no title
    raw = run(tmp_path, reviews, meta, gz=False, k_core=5)
    n_raw = sum(1 for r in reviews if r != "")
    assert raw.info["raw_reviews"] == n_raw
    assert all(raw.dropped[r] > 0 for r in REASONS), raw.dropped
    assert set(raw.dropped) == set(REASONS)
    assert sum(raw.dropped.values()) + n_rows(raw) == n_raw
    assert raw.info["interactions"] == n_rows(raw) + raw.dropped["first_interaction_no_history"]


def test_malformed_review_line_names_file_and_line(tmp_path):
    reviews = [review("u", "A", ts(1)), review("u", "B", ts(2)), '{"reviewerID": "u", "asin": ']
    with pytest.raises(DataError, match=r"reviews\.json\.gz line 3: not valid JSON"):
        run(tmp_path, reviews, meta_for("AB"), k_core=1)


def test_metadata_python_literals_are_read_and_garbage_is_named(tmp_path):
    reviews = [review("u", "A", ts(1)), review("u", "B", ts(2))]
    meta = ["{'asin': 'A', 'title': 'Alpha'}", json.dumps({"asin": "B", "title": "Beta"})]
    raw = run(tmp_path, reviews, meta, k_core=1)
    assert raw.items["title"].tolist() == ["Alpha", "Beta"]
    with pytest.raises(DataError, match=r"meta\.json\.gz line 2: neither a JSON object nor a Python dict"):
        run(tmp_path, reviews, [meta[0], "asin=B title=Beta"], k_core=1)


def test_missing_files_name_the_config_key(tmp_path):
    write(tmp_path / "meta.json", meta_for("A"))
    p = Params(reviews=str(tmp_path / "nope.json.gz"), metadata=str(tmp_path / "meta.json"))
    with pytest.raises(DataError, match=r"dataset\.params\.reviews: data path .*nope\.json\.gz"):
        load(p, DatasetSpec(source="amazon2018"), "dataset")
    write(tmp_path / "r.json", [review("u", "A", ts(1))])
    p = Params(reviews=str(tmp_path / "r.json"), metadata=str(tmp_path / "missing_meta.json"))
    with pytest.raises(DataError, match=r"dataset\.params\.metadata"):
        load(p, DatasetSpec(source="amazon2018"), "dataset")


def test_nothing_left_is_a_data_error_that_says_what_to_change(tmp_path):
    with pytest.raises(DataError, match=r"no reviews are left .* widen start/end or lower k_core"):
        run(tmp_path, _grid_reviews(), meta_for([f"I{j}" for j in range(6)]), start="2018-01-01")


def test_bad_options_are_config_errors():
    with pytest.raises(ConfigError, match=r"dataset\.params: start: '2015-13-01' is not a date"):
        from_dict(Params, {"reviews": "r", "metadata": "m", "start": "2015-13-01"}, "dataset.params")
    with pytest.raises(ConfigError, match=r"missing required option\(s\) \['metadata'\]"):
        from_dict(Params, {"reviews": "r"}, "dataset.params")
    with pytest.raises(ConfigError, match="sum to less than 1"):
        from_dict(Params, {"reviews": "r", "metadata": "m", "valid_frac": 0.5, "test_frac": 0.5}, "dataset.params")


def test_deterministic_and_independent_of_compression_and_line_order(tmp_path):
    reviews = _grid_reviews() + [review("u9", "I0", ts(3)), review("u9", "I1", ts(3))]
    meta = meta_for([f"I{j}" for j in range(6)])
    runs = {}
    for name, recs, gz in (("a", reviews, True), ("b", reviews, True), ("c", random.Random(0).sample(reviews, len(reviews)), False)):
        (tmp_path / name).mkdir()
        runs[name] = run(tmp_path / name, recs, meta if name != "c" else meta[::-1], gz=gz, k_core=1)
    a, b, c = runs["a"], runs["b"], runs["c"]
    for s in a.splits:
        pd.testing.assert_frame_equal(a.splits[s], b.splits[s])
        # shuffled lines, plain text: only the line numbers and file name in `origin` may differ
        pd.testing.assert_frame_equal(a.splits[s].drop(columns="origin"), c.splits[s].drop(columns="origin"))
    pd.testing.assert_frame_equal(a.items, b.items)
    pd.testing.assert_frame_equal(a.items, c.items)
    assert a.dropped == b.dropped == c.dropped


def test_end_to_end_through_prepare(tmp_path):
    from blade.data import load_prepared
    from blade.data.prepare import prepare

    # 8 users × 7 items, every user reviews every item once (a 5-core), in a user-specific order;
    # plus noise that the protocol removes.
    items = [f"B{j:02d}" for j in range(7)]
    reviews: list = []
    for u in range(8):
        order = random.Random(u).sample(items, len(items))
        reviews += [review(f"U{u}", a, ts(7 * k + u)) for k, a in enumerate(order)]
    reviews += [review("lonely", "B00", ts(3)), review("U0", "B99", ts(4)), review("U1", "B00", ts(0, "2012-05-05"))]
    write(tmp_path / "Video_Games.json.gz", reviews)
    write(tmp_path / "meta_Video_Games.json.gz", meta_for(items))
    spec = {
        "source": "amazon2018",
        "params": {"reviews": str(tmp_path / "Video_Games.json.gz"), "metadata": str(tmp_path / "meta_Video_Games.json.gz"),
                   "genres_from_category": True},
        "max_history": 3,
    }
    stats = prepare(spec, tmp_path / "out")
    # 56 core reviews → 48 rows: int(48·0.8) = 38 train, int(48·0.9) - 38 = 5 valid, 5 test.
    assert stats["n_rows"] == {"train": 38, "valid": 5, "test": 5}
    assert stats["n_items"] == 7 and stats["n_users"] == 8
    assert stats["dropped"]["k_core"] == 1 and stats["dropped"]["no_title"] == 1
    assert stats["dropped"]["outside_time_window"] == 1 and stats["dropped"]["first_interaction_no_history"] == 8
    assert stats["truncated_histories"]["test"] == 5  # every test row has 5+ earlier reviews
    assert stats["genres"]["names"] == ["Games", "PC"]
    assert stats["source_info"]["raw_reviews"] == len(reviews)
    items_df, splits, stored = load_prepared(tmp_path / "out")
    assert items_df["item_id"].tolist() == list(range(7))
    assert all(len(h) <= 3 for s in splits.values() for h in s["history"])
    assert stored["n_rows"] == stats["n_rows"]
