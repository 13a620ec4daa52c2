"""SASRec reference row: it learns, it is deterministic, its lists are distinct catalogue items,
its attention is causal and blind to padding, and it runs as the `sasrec` reference row."""

import numpy as np
import pandas as pd
import pytest
import torch

from blade.data import PreparedData
from blade.config import from_dict
from blade.data import load_prepared
from blade.errors import ConfigError
from blade.metrics import ndcg_at_k
from blade.eval.lists import reference_lists
from blade.reference import most_popular
from blade.eval import sasrec
from blade.eval.sasrec import SASRec, SASRecConfig, SASRecRecommender, extended_rows, training_pairs
from blade.eval.selection import selection_slice
from tests.helpers import tiny_dataset

FAST = SASRecConfig(epochs=40, hidden=32, patience=5, device="cpu")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    items, splits, _ = load_prepared(tiny_dataset(tmp_path_factory.mktemp("data")))
    return items["item_id"].to_numpy(), splits


def _fit(data, cfg=FAST, seed=0):
    ids, splits = data
    rec = SASRecRecommender(ids, cfg, seed)
    return rec, rec.fit(splits["train"], splits["valid"], verbose=False)


def test_learns_beyond_most_popular_and_keeps_its_best_epoch(data):
    ids, splits = data
    valid = selection_slice(splits["valid"], FAST.selection_rows)
    rec, summary = _fit(data)
    ndcg = ndcg_at_k(rec.recommend(valid["history"].tolist(), 10), valid["target"].to_numpy(), 10).mean()
    popular = ndcg_at_k(most_popular(splits["train"], ids, len(valid), 10), valid["target"].to_numpy(), 10).mean()
    assert ndcg > popular + 0.05, (ndcg, popular)
    # the returned model is the best epoch's, not the last one's
    assert ndcg == pytest.approx(summary["valid/ndcg@10"])
    assert summary["valid/ndcg@10"] == max(r["valid/ndcg@10"] for r in rec.log)
    assert rec.log[-1]["train_loss"] < rec.log[0]["train_loss"]


def test_same_seed_same_lists_other_seed_other_model(data):
    _, splits = data
    cfg = SASRecConfig(epochs=3, hidden=32, patience=3, device="cpu")
    histories = splits["test"]["history"].tolist()
    a, _ = _fit(data, cfg, seed=5)
    b, _ = _fit(data, cfg, seed=5)
    c, _ = _fit(data, cfg, seed=6)
    untimed = [[{k: v for k, v in r.items() if k != "seconds"} for r in rec.log] for rec in (a, b)]
    assert untimed[0] == untimed[1]
    np.testing.assert_array_equal(a.recommend(histories, 10), b.recommend(histories, 10))
    assert a.log[0]["train_loss"] != c.log[0]["train_loss"]


def test_lists_are_distinct_catalogue_items_and_can_exclude_history(data):
    ids, splits = data
    test = splits["test"]
    rec, _ = _fit(data, SASRecConfig(epochs=2, hidden=32, device="cpu"))
    lists = rec.recommend(test["history"].tolist(), 15)
    assert lists.shape == (len(test), 15)
    assert np.isin(lists, ids).all()
    assert all(len(set(row)) == 15 for row in lists.tolist())
    rec.cfg.exclude_history = True
    lists = rec.recommend(test["history"].tolist(), 15)
    assert not any(set(row) & set(h) for row, h in zip(lists.tolist(), test["history"]))
    with pytest.raises(ValueError, match="k=41"):
        rec.recommend(test["history"].tolist(), len(ids) + 1)


def test_attention_is_causal_and_padding_blind():
    torch.manual_seed(0)
    model = SASRec(20, SASRecConfig(hidden=16, heads=2, layers=2, max_len=8)).eval()
    seq = torch.tensor([[0, 0, 3, 7, 5, 2]])  # left-padded
    with torch.no_grad():
        h = model(seq)
        later_changed = model(torch.tensor([[0, 0, 3, 7, 5, 9]]))
        more_padding = model(torch.tensor([[0, 0, 0, 0, 3, 7, 5, 2]]))
        no_padding = model(torch.tensor([[3, 7, 5, 2]]))
    # positions before the changed last item see the same prefix
    torch.testing.assert_close(h[:, :-1], later_changed[:, :-1])
    assert not torch.allclose(h[:, -1], later_changed[:, -1])
    # the state after the last item does not depend on how much padding precedes the sequence
    torch.testing.assert_close(h[:, -1], more_padding[:, -1])
    torch.testing.assert_close(h[:, -1], no_padding[:, -1])


def test_one_sequence_per_user_keeps_the_rows_nobody_extends():
    train = pd.DataFrame({"history": [[1], [1, 2], [1, 2, 3], [2, 3, 4], [7], [1]],
                          "target": [2, 3, 4, 5, 8, 9]})
    # [1]→2 is extended by [1, 2]; [1, 2]→3 by [1, 2, 3]; [1, 2, 3]→4 by the window [2, 3, 4]
    # (width 3); [2, 3, 4]→5 and [7]→8 are not; [1]→9 is not ([1, 9] is no row's history)
    assert extended_rows(train).tolist() == [True, True, True, False, False, False]


def test_training_pairs_by_hand():
    # history [4, 5] + target 6, and a sequence longer than the window (max_len 3)
    seqs = [np.array([4, 5, 6]), np.array([1, 2, 3, 4, 5])]
    inputs, labels = training_pairs(seqs, 3, "all")
    assert inputs.tolist() == [[0, 4, 5], [2, 3, 4]]
    assert labels.tolist() == [[0, 5, 6], [3, 4, 5]]  # no label after an empty prefix
    inputs, labels = training_pairs(seqs, 3, "last")
    assert labels.tolist() == [[0, 0, 6], [0, 0, 5]]


def test_config_errors_name_the_key():
    with pytest.raises(ConfigError, match="hidden=30 must be divisible by heads=4"):
        from_dict(SASRecConfig, {"hidden": 30, "heads": 4}, "sasrec")
    with pytest.raises(ConfigError, match="sasrec.positions"):
        from_dict(SASRecConfig, {"positions": "first"}, "sasrec")


def test_reference_row_valid_and_test_come_from_one_model(tmp_path, monkeypatch):
    """Through the reference-row entry point: valid and test lists of one seed come from the same
    (deterministic) fit, and the valid lists score what the early stopping saw on the full slice."""
    monkeypatch.setattr(sasrec, "SASRecConfig", lambda: FAST)  # the row's defaults, made quick
    data_dir = tiny_dataset(tmp_path / "data")
    items, splits, _ = load_prepared(data_dir)
    valid = reference_lists("sasrec", PreparedData.load(data_dir), "valid", 10, seed=1)
    rec = SASRecRecommender(items["item_id"].to_numpy(), FAST, 1)
    summary = rec.fit(splits["train"], splits["valid"], verbose=False)
    np.testing.assert_array_equal(valid, rec.recommend(splits["valid"]["history"].tolist(), 10))
    # the tiny valid split is smaller than twice the selection slice: early stopping read SFT's half of it
    rows = selection_slice(splits["valid"], FAST.selection_rows)
    assert len(rows) == len(splits["valid"]) // 2
    at = splits["valid"].index.get_indexer(rows.index)
    ndcg = ndcg_at_k(valid[at], rows["target"].to_numpy(), 10).mean()
    assert ndcg == pytest.approx(summary["valid/ndcg@10"])
    test = reference_lists("sasrec", PreparedData.load(data_dir), "test", 10, seed=1)
    np.testing.assert_array_equal(test, rec.recommend(splits["test"]["history"].tolist(), 10))
