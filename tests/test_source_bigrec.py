"""bigrec_csv: the real Video_Games split, and every bad-input case on small written files."""

import json

import pandas as pd
import pytest

from blade.data import load_prepared, prepare
from blade.errors import DataError

FULL = "user_id,item_asins,item_asin,history_item_id,item_id,history_item_title,item_title,history_rating,rating,history_timestamp,timestamp"


def write_folder(folder, items="item_id\ttitle\n0\tA\n1\tB, with comma\n2\tC \"quoted\"\n",
                 train='history_item_id,item_id\n[0],1\n"[0, 1]",2\n"[1, 1]",0\n',
                 valid=None, test=None):
    folder.mkdir(parents=True, exist_ok=True)
    row = "u1,['x'],y,\"[0, 1]\",2,['A'],C,[5.0],5.0,[1],{ts}\n"
    (folder / "items.tsv").write_text(items)
    (folder / "train.csv").write_text(train)
    (folder / "valid.csv").write_text(valid if valid is not None else FULL + "\n" + row.format(ts=100))
    (folder / "test.csv").write_text(test if test is not None else FULL + "\n" + row.format(ts=200))
    return folder


def spec(folder, **extra):
    return {"source": "bigrec_csv", "params": {"path": str(folder)}, **extra}


def test_small_folder_round_trip(tmp_path):
    folder = write_folder(tmp_path / "d")
    stats = prepare(spec(folder), tmp_path / "out")
    items, splits, _ = load_prepared(tmp_path / "out")
    assert items["title"].tolist() == ["A", "B, with comma", 'C "quoted"']
    assert splits["train"]["history"].tolist() == [[0], [0, 1], [1, 1]]  # repeats kept
    assert splits["valid"]["timestamp"].tolist() == [100] and splits["valid"]["user_id"].tolist() == ["u1"]
    assert items["train_pop"].tolist() == [1, 1, 1]
    assert stats["n_rows"] == {"train": 3, "valid": 1, "test": 1}


def test_bigrec_info_txt_item_table(tmp_path):
    folder = write_folder(tmp_path / "d")
    (folder / "items.tsv").unlink()
    (folder / "info").mkdir()
    (folder / "info" / "Games.txt").write_text("A\t0\nB\twith tab\t1\nC\t2\n")
    prepare(spec(folder), tmp_path / "out")
    items, _, _ = load_prepared(tmp_path / "out")
    assert items["title"].tolist() == ["A", "B\twith tab", "C"]


def test_history_truncated_to_max_history(tmp_path):
    folder = write_folder(tmp_path / "d", train='history_item_id,item_id\n"[0, 1, 2, 0]",1\n')
    stats = prepare(spec(folder, max_history=2), tmp_path / "out")
    _, splits, _ = load_prepared(tmp_path / "out")
    assert splits["train"]["history"].tolist() == [[2, 0]]  # the most recent two, oldest first
    assert stats["truncated_histories"]["train"] == 1


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"train": "history,item_id\n[0],1\n"}, r"train.csv: required column 'history_item_id' is missing"),
        ({"train": 'history_item_id,item_id\n[0],1\n"[0, x]",2\n'},
         r"train.csv line 3, column history_item_id: expected a list of integer item ids"),
        ({"train": "history_item_id,item_id\n[0],7\n"}, r"train.csv line 2: its target item id is not in the item table"),
        ({"train": 'history_item_id,item_id\n"[0, 9]",1\n'},
         r"train.csv line 2: its history names item ids that are not in the item table"),
        ({"train": "history_item_id,item_id\n[],1\n"}, r"train.csv line 2: its history is empty"),
        ({"items": "item_id\ttitle\n0\tA\n1\tB\n1\tB2\n2\tC\n"},
         r"items.tsv: item id 1 is defined on lines \[3, 4\] with titles \['B', 'B2'\]"),
        ({"items": "id\tname\n0\tA\n"}, r"items.tsv: expected the header 'item_id<TAB>title'"),
        ({"items": "item_id\ttitle\nzero\tA\n"}, r"items.tsv line 2: item id 'zero' is not an integer"),
        ({"train": "history_item_id,item_id\n[0],one\n"}, r"train.csv line 2, column item_id: 'one' is not an item id"),
    ],
)
def test_bad_input_names_file_and_row(tmp_path, kwargs, message):
    folder = write_folder(tmp_path / "d", **kwargs)
    with pytest.raises(DataError, match=message):
        prepare(spec(folder), tmp_path / "out")
    assert not (tmp_path / "out" / "stats.json").exists()


def test_invalid_rows_drop_counts_every_reason(tmp_path):
    train = 'history_item_id,item_id\n[0],1\n"[0, 9]",1\n[],2\n[1],8\n[2],0\n'
    folder = write_folder(tmp_path / "d", train=train)
    stats = prepare(spec(folder, invalid_rows="drop"), tmp_path / "out")
    assert stats["dropped"] == {"train.unknown_history_item": 1, "train.empty_history": 1, "train.unknown_target_item": 1}
    assert stats["n_rows"]["train"] == 2 == 5 - sum(stats["dropped"].values())


def test_missing_path_and_missing_file(tmp_path):
    with pytest.raises(DataError, match=r"dataset.params.path: data path '.*nowhere' does not exist"):
        prepare(spec(tmp_path / "nowhere"), tmp_path / "out")
    folder = write_folder(tmp_path / "d")
    (folder / "test.csv").unlink()
    with pytest.raises(DataError, match=r"expected file .*test.csv is missing"):
        prepare(spec(folder), tmp_path / "out")


@pytest.mark.shared_data
def test_video_games_reproduces_published_counts(video_games, tmp_path):
    stats = prepare(spec(video_games), tmp_path)
    assert stats["n_items"] == 3858
    assert stats["n_rows"] == {"train": 49133, "valid": 6142, "test": 6142}
    assert stats["dropped"] == {}
    assert stats["n_users"] == len(set(pd.read_csv(video_games / "test.csv")["user_id"]) | set(pd.read_csv(video_games / "valid.csv")["user_id"]))
    assert stats["seconds"] < 30, f"preparing Video_Games took {stats['seconds']} s"
    _, splits, _ = load_prepared(tmp_path)
    # row order and content are kept one for one
    first = pd.read_csv(video_games / "train.csv", nrows=3)
    assert splits["train"]["history"].head(3).tolist() == [json.loads(h) for h in first["history_item_id"]]
    # about 6% of test targets never occur as a train target (the dataset's README)
    assert 0.04 < stats["cold_targets"]["test"] / 6142 < 0.08
    assert set(stats["inputs"]) == {"items.tsv", "train.csv", "valid.csv", "test.csv"}
