"""The synthetic source's stated properties: determinism, popularity bias, learnable sequence."""

import numpy as np
import pytest

from blade.data import load_prepared, prepare
from blade.reference import CoOccurrence, most_popular

SPEC = {"source": "synthetic", "params": {"n_users": 800, "n_items": 200, "seed": 3}}


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    out = tmp_path_factory.mktemp("syn")
    prepare(SPEC, out)
    return out


def test_same_seed_gives_identical_files(prepared, tmp_path):
    prepare(SPEC, tmp_path)
    for name in ("items.parquet", "train.parquet", "valid.parquet", "test.parquet", "stats.json"):
        assert (tmp_path / name).read_bytes() == (prepared / name).read_bytes(), f"{name} differs between runs"


def test_other_seed_gives_other_data(prepared, tmp_path):
    prepare({**SPEC, "params": {**SPEC["params"], "seed": 4}}, tmp_path)
    assert (tmp_path / "train.parquet").read_bytes() != (prepared / "train.parquet").read_bytes()


def test_a_test_sample_is_fixed_in_order_counted_and_leaves_the_other_splits_alone(prepared, tmp_path):
    _, full, full_stats = load_prepared(prepared)
    prepare({**SPEC, "test_rows": 300}, tmp_path / "a")
    prepare({**SPEC, "test_rows": 300}, tmp_path / "b")
    assert (tmp_path / "a" / "test.parquet").read_bytes() == (tmp_path / "b" / "test.parquet").read_bytes()
    _, splits, stats = load_prepared(tmp_path / "a")
    test, whole = splits["test"], full["test"]
    assert len(test) == 300 and stats["n_rows"]["test"] == 300
    assert stats["dropped"]["test_outside_sample"] == len(whole) - 300
    position = whole.reset_index().set_index("context_id").loc[test["context_id"], "index"].to_numpy()
    assert (np.diff(position) > 0).all()  # a subset of the split, in its order
    assert 0 < position[-1] - position[0] and position.max() > len(whole) // 2  # spread, not the first rows
    assert test.drop(columns="history").equals(whole.iloc[position].reset_index(drop=True).drop(columns="history"))
    for name in ("train", "valid"):
        assert splits[name].equals(full[name])
    prepare({**SPEC, "test_rows": 10**6}, tmp_path / "c")  # more than the split: all of it, nothing dropped
    assert load_prepared(tmp_path / "c")[2]["n_rows"] == full_stats["n_rows"]
    assert "test_outside_sample" not in load_prepared(tmp_path / "c")[2]["dropped"]


def test_leave_last_out_split_and_counts(prepared):
    items, splits, stats = load_prepared(prepared)
    assert stats["n_rows"]["valid"] == stats["n_rows"]["test"] == 800 == stats["n_users"]
    assert len(items) == 200 and stats["dropped"] == {}
    test = splits["test"].set_index("user_id")
    valid = splits["valid"].set_index("user_id")
    # the test row's history (before truncation) ends with the valid target
    assert all(test.loc[u, "history"][-1] == valid.loc[u, "target"] for u in test.index)
    assert max(len(h) for h in splits["train"]["history"]) <= 10
    assert stats["genres"] is not None and len(stats["genres"]["names"]) == 6


def _recall(lists, targets):
    return float((lists == targets[:, None]).any(axis=1).mean())


def test_popularity_bias_and_learnable_sequence(prepared):
    items, splits, stats = load_prepared(prepared)
    train, test = splits["train"], splits["test"]
    ids, targets = items["item_id"].to_numpy(), test["target"].to_numpy()
    pop = np.sort(items["train_pop"].to_numpy())[::-1]
    head_share = pop[: len(pop) // 10].sum() / pop.sum()
    assert head_share > 0.3, f"top 10% of items hold only {head_share:.2f} of train interactions: no popularity bias"
    rng = np.random.default_rng(0)
    rand = _recall(rng.choice(ids, size=(len(test), 10)), targets)
    mostpop = _recall(most_popular(train, ids, len(test), 10), targets)
    cooc = _recall(CoOccurrence(train, ids).recommend(test["history"].tolist(), 10), targets)
    assert mostpop > 3 * rand, f"most-popular ({mostpop:.3f}) is no real competitor to random ({rand:.3f})"
    assert cooc > 1.5 * mostpop, f"history-aware model ({cooc:.3f}) does not clearly beat most-popular ({mostpop:.3f})"


def test_popularity_groups_partition_interactions(prepared):
    items, _, stats = load_prepared(prepared)
    shares = stats["popularity"]["train_share"]
    assert sorted(items["pop_group"].unique()) == [0, 1, 2]
    assert abs(sum(shares) - 1) < 1e-6 and all(abs(s - 1 / 3) < 0.12 for s in shares), shares
    # head items are fewer and each more popular than any tail item
    head = items[items.pop_group == 0]
    tail = items[items.pop_group == 2]
    assert len(head) < len(tail) and head.train_pop.min() >= tail.train_pop.max()
