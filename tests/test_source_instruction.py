"""instruction_json: the real Goodreads sample, and parsing and bad-input cases on small files."""

import json

import pytest

from blade.data import load_prepared, prepare
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
    return {"source": "instruction_json", "params": {"path": str(folder), **params}}


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


@pytest.mark.shared_data
def test_goodreads_accounts_for_every_record_and_item(goodreads, tmp_path):
    stats = prepare(spec(goodreads), tmp_path / "a")
    assert stats["n_items"] == 4058
    assert sum(stats["n_rows"].values()) == 5000
    assert stats["n_rows"] == {"train": 4000, "valid": 500, "test": 500}
    # the only titles the sample's inputs name outside its catalogue: Stephen King's "It", 10 times
    assert stats["dropped"] == {"history_title_not_in_catalogue": 10}
    assert len(stats["genres"]["names"]) == 7
    prepare(spec(goodreads), tmp_path / "b")
    assert (tmp_path / "a" / "test.parquet").read_bytes() == (tmp_path / "b" / "test.parquet").read_bytes()
