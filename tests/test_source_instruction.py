"""instruction_json: the real Goodreads sample, and parsing and bad-input cases on small files."""

import json

import pandas as pd
import pytest

from blade.config import from_dict
from blade.data import load_prepared, prepare
from blade.data.leakage import leakage
from blade.data.sources.instruction_json import Params, window_groups
from blade.errors import DataError

PROMPT = "The user has played the following books before: {}, please write a new books"


def record(history, target):
    return {"instruction": "Recommend", "input": PROMPT.format(", ".join(f'"{t}"' for t in history)), "output": f'"{target}"\n'}


def write_folder(folder, records, names=None, genres=None, labels=None):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "train.json").write_text(json.dumps(records))
    if names is not None:
        (folder / "id2name.json").write_text(json.dumps({str(i): n for i, n in enumerate(names)}))
    if genres is not None:
        (folder / "name2genre.json").write_text(json.dumps(genres))
    if labels is not None:
        (folder / "genre_dict.json").write_text(json.dumps(dict.fromkeys(labels, 0)))
    return folder


NAMES = ["Plain", "Commas, Inside (Series, #1)", 'A Child Called "It" (Pelzer #1)', "Last"]


def spec(folder, **params):
    # the parsing tests repeat one record; identical records form one group under the default
    # grouped split, so they draw records at random unless a test names the split
    return {"source": "instruction_json", "params": {"path": str(folder), "split": "random", **params}}


def test_titles_with_commas_and_unescaped_quotes(tmp_path):
    recs = [record(NAMES[:3], "Last"), record(["Last", NAMES[2]], "Plain")] * 5
    folder = write_folder(tmp_path / "d", recs, NAMES, {n: ["fiction", "poetry"] for n in NAMES}, ["fiction"])
    stats = prepare(spec(folder, valid_frac=0.2, test_frac=0.2), tmp_path / "out")
    items, splits, _ = load_prepared(tmp_path / "out")
    all_rows = sorted(
        (tuple(h), t) for s in splits.values() for h, t in zip(s["history"], s["target"])
    )
    assert all_rows == sorted([((0, 1, 2), 3), ((3, 2), 0)] * 5)
    assert stats["n_rows"] == {"train": 6, "valid": 2, "test": 2}
    assert items["genres"].map(list).tolist() == [["fiction"]] * 4  # only the labelled genres kept


def test_escaped_quotes_are_unescaped(tmp_path):
    names = ['Say "Hi"', "B"]
    rec = {"input": 'before: "Say \\"Hi\\"", "B", please', "output": '"B"'}
    folder = write_folder(tmp_path / "d", [rec] * 10, names)
    prepare(spec(folder), tmp_path / "out")
    _, splits, _ = load_prepared(tmp_path / "out")
    assert splits["train"]["history"].iloc[0] == [0, 1]


def test_unknown_history_title_is_removed_and_counted_or_errors(tmp_path):
    recs = [record(["Plain", "Not In Catalogue"], "Last")] * 10
    folder = write_folder(tmp_path / "d", recs, NAMES)
    stats = prepare(spec(folder), tmp_path / "out")
    assert stats["dropped"] == {"history_title_not_in_catalogue": 10}
    assert sum(stats["n_rows"].values()) == 10
    with pytest.raises(DataError, match=r"train.json record 0: history titles \['Not In Catalogue'\] are not in the catalogue"):
        prepare(spec(folder, unknown_history_titles="error"), tmp_path / "out2")


def test_unknown_target_title_errors_with_record(tmp_path):
    folder = write_folder(tmp_path / "d", [record(["Plain"], "Nope")] * 10, NAMES)
    with pytest.raises(DataError, match=r"record \d+ \(target title 'Nope' is not in the catalogue\): its target item id"):
        prepare(spec(folder), tmp_path / "out")
    recs = [record(["Plain"], "Nope")] * 2 + [record(["Plain"], "Last")] * 8
    write_folder(folder, recs, NAMES)
    stats = prepare({**spec(folder), "invalid_rows": "drop"}, tmp_path / "out")
    dropped = sum(v for k, v in stats["dropped"].items() if k.endswith(".unknown_target_item"))
    assert dropped == 2 and sum(stats["n_rows"].values()) == 8


def test_explicit_genre_file_must_exist(tmp_path):
    folder = write_folder(tmp_path / "d", [record(["Plain"], "Last")] * 10, NAMES)
    with pytest.raises(DataError, match=r"dataset.params.name2genre: expected file .*genres.json is missing"):
        prepare(spec(folder, name2genre="genres.json"), tmp_path / "out")


def test_bad_records(tmp_path):
    folder = write_folder(tmp_path / "d", [{"input": "x"}], NAMES)
    with pytest.raises(DataError, match=r"train.json record 0: needs string fields 'input' and 'output'"):
        prepare(spec(folder), tmp_path / "out")
    (folder / "train.json").write_text('[{"input": "a",\n "output": }]')
    with pytest.raises(DataError, match=r"train.json line 2, column 12: not valid JSON"):
        prepare(spec(folder), tmp_path / "out")
    write_folder(folder, [{"input": '"Plain"', "output": "no quotes"}], NAMES)
    with pytest.raises(DataError, match=r"record 0: 'output' must hold exactly one quoted title"):
        prepare(spec(folder), tmp_path / "out")


def test_without_catalogue_titles_are_numbered_in_order(tmp_path):
    folder = write_folder(tmp_path / "d", [record(["X", "Y"], "Z")] * 10)
    prepare(spec(folder, id2name="", name2genre=""), tmp_path / "out")
    items, _, stats = load_prepared(tmp_path / "out")
    assert items["title"].tolist() == ["X", "Y", "Z"] and stats["genres"] is None


def windows(titles, width, shifts):
    """Records that are windows of one reader's sequence: history titles[s:s+width-1], target next."""
    return [record(titles[s:s + width - 1], titles[s + width - 1]) for s in shifts]


def test_overlapping_windows_of_one_sequence_share_a_split(tmp_path):
    reader = [f"Saga {i}" for i in range(20)]
    shared = windows(reader, 6, [0, 3, 7, 11])  # overlaps of 3, 2 and 2 items: one group
    others = [record([f"Book {i}-{j}" for j in range(4)], f"Book {i}-4") for i in range(36)]
    names = reader + [f"Book {i}-{j}" for i in range(36) for j in range(5)]
    folder = write_folder(tmp_path / "d", shared + others, names)
    for seed in range(6):
        params = {"split": "grouped", "split_seed": seed, "valid_frac": 0.2, "test_frac": 0.2}
        stats = prepare(spec(folder, **params), tmp_path / "out")
        _, splits, _ = load_prepared(tmp_path / "out")
        where = {name for name, frame in splits.items() if frame["target"].isin([5, 8, 12, 16]).any()}
        assert len(where) == 1, f"seed {seed}: the reader's windows are spread over {where}"
        info = stats["source_info"]
        assert info["n_groups"] == 37 and info["largest_groups"][:2] == [4, 1]
        # 40 records, cuts at 8 and 16; a group straddling a cut moves whole, by its middle record
        assert sum(stats["n_rows"].values()) == 40 and abs(stats["n_rows"]["test"] - 8) <= 2


def test_window_rule_links_aligned_overlaps_only():
    seqs = [
        list("abcdef"),
        list("defgh"),   # starts with the run "def" that ends seq 0: a shifted window
        list("cde"),     # lies inside seq 0
        list("xbcdy"),   # shares "bcd" with seq 0 only in the middle of both: another reader
        list("yq"),      # one item ("y") ends seq 3 and starts this one: below overlap_min 2
        list("abcdef"),  # a duplicate record
    ]
    assert window_groups(seqs, 2).tolist() == [0, 0, 0, 1, 2, 0]
    assert window_groups(seqs, 1).tolist() == [0, 0, 0, 1, 1, 0]
    assert window_groups(seqs, 4).tolist() == [0, 1, 2, 3, 4, 0]  # "def" and "cde" are 3 long


def test_grouped_split_that_cannot_fill_test_errors(tmp_path):
    folder = write_folder(tmp_path / "d", [record(["Plain", "Last"], "Plain")] * 10, NAMES)
    message = r"grouped split of 10 records left the (valid|test) split empty; the largest group .* holds 10 of 10"
    with pytest.raises(DataError, match=message + "; raise params.overlap_min"):
        prepare(spec(folder, split="grouped"), tmp_path / "out")


def test_split_options_are_checked():
    assert Params(path="x").split == "grouped"  # overlapping windows are the format's norm
    with pytest.raises(ValueError, match="overlap_min must be >= 1"):
        from_dict(Params, {"path": "x", "overlap_min": 0}, "dataset.params")


@pytest.mark.shared_data
def test_goodreads_accounts_for_every_record_and_item(goodreads, tmp_path):
    stats = prepare(spec(goodreads, split="grouped"), tmp_path / "a")
    assert stats["n_items"] == 4058
    assert sum(stats["n_rows"].values()) == 5000
    # groups move whole, so the 500/500 cuts are met up to half a group
    assert all(abs(stats["n_rows"][name] - 500) <= 10 for name in ("valid", "test"))
    # the only titles the sample's inputs name outside its catalogue: Stephen King's "It", 10 times
    assert stats["dropped"] == {"history_title_not_in_catalogue": 10}
    assert len(stats["genres"]["names"]) == 7
    prepare(spec(goodreads, split="grouped"), tmp_path / "b")
    for name in ("train", "valid", "test"):
        assert (tmp_path / "a" / f"{name}.parquet").read_bytes() == (tmp_path / "b" / f"{name}.parquet").read_bytes()


def _sequences(frame):
    return [tuple(h) + (t,) for h, t in zip(frame["history"], frame["target"])]


def _overlapping_windows(rows, train):
    """How many of ``rows`` overlap some train sequence as windows of one sequence (>= 2 aligned
    items): written with sets of prefixes, suffixes and runs, independently of window_groups."""
    prefixes = {s[:k] for s in train for k in range(2, len(s) + 1)}
    suffixes = {s[-k:] for s in train for k in range(2, len(s) + 1)}
    runs = {s[i:j] for s in train for i in range(len(s)) for j in range(i + 2, len(s) + 1)}
    whole = set(train)
    return sum(
        any(r[-k:] in prefixes or r[:k] in suffixes for k in range(2, len(r) + 1))
        or r in runs
        or any(r[i:j] in whole for i in range(len(r)) for j in range(i + 2, len(r) + 1))
        for r in rows
    )


@pytest.mark.shared_data
def test_goodreads_grouped_split_has_no_window_leakage(goodreads, tmp_path):
    figures = {}
    for split in ("random", "grouped"):
        figures[split] = prepare(spec(goodreads, split=split), tmp_path / split)["leakage"]["test"]
        _, splits, _ = load_prepared(tmp_path / split)
        train = _sequences(splits["train"])
        leaked = {name: _overlapping_windows(_sequences(splits[name]), train) for name in ("valid", "test")}
        if split == "grouped":
            assert leaked == {"valid": 0, "test": 0}
        else:
            assert leaked["test"] > 100  # the random split puts ~200 test windows next to train windows
    # The random split's figures as measured when the issue was filed (follows here counts the
    # target inside train sequences, history + target: 36.2% vs the 35.4% in histories).
    assert (figures["random"]["follows"], figures["random"]["adjacent"]) == (0.362, 0.282)

    # No-leakage reference from the same data and split: the random split's test rows none of
    # whose overlapping windows is in train. Shuffled targets are no such reference: readers of
    # one series continue it in the same order (Video_Games, split in time, shows the same excess
    # over its shuffled baseline). Tolerance, fixed by statistics rather than by the values: three
    # standard errors of a difference of two proportions.
    _, splits, _ = load_prepared(tmp_path / "random")
    frames = [splits[name].assign(split=name) for name in ("train", "valid", "test")]
    every = pd.concat(frames).sort_values("context_id", key=lambda c: c.str[7:].astype(int))
    every["group"] = window_groups(_sequences(every), 2)
    in_train = set(every.loc[every["split"] == "train", "group"])
    clean = every[(every["split"] == "test") & ~every["group"].isin(in_train)]
    reference = leakage({"train": splits["train"], "valid": clean, "test": clean})["test"]
    assert 200 < reference["rows"] < 400
    n_test = figures["grouped"]["rows"]
    for key in ("follows", "adjacent"):
        p = reference[key]
        tolerance = 3 * (p * (1 - p) * (1 / n_test + 1 / reference["rows"])) ** 0.5
        assert abs(figures["grouped"][key] - p) <= tolerance, (key, figures["grouped"], reference)
        assert figures["random"][key] - p > tolerance, (key, figures["random"], reference)  # the check can fail
