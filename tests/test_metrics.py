"""Metric tests: hand-computed closed forms on tiny cases, and Recall/NDCG against ranx."""

import math

import numpy as np
import pandas as pd
import pytest

from blade.errors import DataError
from blade.metrics import (
    Catalogue,
    ItemIndex,
    build_catalogue,
    coverage_at_k,
    entropy_at_k,
    evaluate_lists,
    gini_at_k,
    ild_at_k,
    invalid_rate,
    mgu_dgu,
    mgu_dgu_user,
    ndcg_at_k,
    recall_at_k,
    tail_share_at_k,
)

# Six items, three popularity groups (0 head, 2 tail), genre vocabulary [A, B, C].
IDS = [10, 11, 12, 13, 14, 15]
POP = [0, 0, 1, 1, 2, 2]
TRAIN = [6, 5, 4, 3, 2, 0]  # group sums 11, 7, 2 of 20 -> train shares (.55, .35, .10)
GENRES = [["A"], ["A", "B"], ["B"], ["C"], ["A", "C"], ["C"]]
HIST = [[10, 12, 13, 15], [10, 11]]
# u0: groups [0,0,1,2]; u1: groups [1,2,2,1]
LISTS = np.array([[10, 11, 12, 14], [13, 15, 14, 12]])


def cat(**kw):
    return Catalogue(item_ids=np.array(IDS), pop_group=np.array(POP), train_pop=np.array(TRAIN), **kw)


def pop_distance(idx):
    """|g_i − g_j| / 2 on the popularity groups: a hand-checkable stand-in item distance."""
    g = np.asarray(POP, dtype=float)[idx]
    return np.abs(g[:, :, None] - g[:, None, :]) / 2


def test_recall_ndcg_hand():
    lists = np.array([[10, 12, 14, 11], [13, 15, 11, 10], [11, -1, 11, 99]])
    targets = np.array([12, 10, 11])
    # u0: target at rank 2; u1: rank 4; u2: rank 1.
    np.testing.assert_allclose(recall_at_k(lists, targets, 3), [1, 0, 1])
    np.testing.assert_allclose(recall_at_k(lists, targets, 4), [1, 1, 1])
    # NDCG = 1/log2(rank+1): 1/log2(3) = 0.6309297535714575, 1/log2(5) = 0.43067655807339306
    np.testing.assert_allclose(ndcg_at_k(lists, targets, 3), [0.6309297535714575, 0.0, 1.0])
    np.testing.assert_allclose(ndcg_at_k(lists, targets, 4),
                               [0.6309297535714575, 0.43067655807339306, 1.0])
    with pytest.raises(ValueError):
        recall_at_k(lists, targets, 5)


def test_repeated_target_counts_once_at_first_rank():
    # target 12 at ranks 2 and 3: the repeat is invalid, NDCG uses rank 2 -> 1/log2(3)
    ndcg = ndcg_at_k(np.array([[10, 12, 12]]), np.array([12]), 3, cat())
    np.testing.assert_allclose(ndcg, [0.6309297535714575])


def test_invalid_rate_counts_missing_unknown_and_repeats():
    lists = np.array([[10, 11, 12, 13], [11, -1, 11, 99], [-1, -1, -1, -1]])
    # u0: none invalid; u1: -1, repeat of 11, 99 not in catalogue -> 3/4; u2: 4/4
    np.testing.assert_allclose(invalid_rate(lists, cat()), [0.0, 0.75, 1.0])
    # sparse ids take the searchsorted path of Catalogue.index_of: same answer
    big = 10**12
    sparse = Catalogue(item_ids=np.array(IDS) * big, pop_group=np.array(POP), train_pop=np.array(TRAIN))
    np.testing.assert_allclose(invalid_rate(np.where(lists > 0, lists * big, lists), sparse), [0.0, 0.75, 1.0])
    # the same from an ItemIndex or the bare id array; per_row=False: the share over all 12 slots
    np.testing.assert_allclose(invalid_rate(lists, ItemIndex(IDS)), [0.0, 0.75, 1.0])
    assert invalid_rate(lists, IDS, per_row=False) == pytest.approx(7 / 12)
    assert invalid_rate(np.empty((0, 3), dtype=int), IDS, per_row=False) == 0.0
    assert invalid_rate(np.empty((0, 3), dtype=int), IDS).shape == (0,)


def test_item_index_dense_and_sparse_paths_agree():
    ids = np.array([7, 3, 11, 0])
    dense, sparse = ItemIndex(ids), ItemIndex(ids * 10**12)
    query = np.array([[3, 0, 99], [-1, 11, 7]])
    np.testing.assert_array_equal(dense.index_of(query), [[1, 3, -1], [-1, 2, 0]])
    np.testing.assert_array_equal(sparse.index_of(np.where(query >= 0, query * 10**12, query)), dense.index_of(query))
    assert ItemIndex([]).index_of([1, 2]).tolist() == [-1, -1]
    with pytest.raises(DataError, match="unique"):
        ItemIndex([1, 2, 1])


def test_build_catalogue_reads_group_count_from_stats():
    items = pd.DataFrame({"item_id": IDS, "title": list("abcdef"), "genres": [None] * 6,
                          "train_pop": TRAIN, "pop_group": POP})
    stats = {"popularity": {"n_groups": 4}}  # group 3 is empty: still a group
    c = build_catalogue(items, stats)
    assert c.n_groups == 4 and c.genres is None and c.weights("pop").shape == (6, 4)
    with pytest.raises(DataError, match="popularity.n_groups"):
        build_catalogue(items, {})
    with pytest.raises(DataError, match="pop_group reaches 2 but stats.json popularity.n_groups is 2"):
        build_catalogue(items, {"popularity": {"n_groups": 2}})
    # genres exist when any item has a non-empty genre list; missing genres become []
    with_genres = items.assign(genres=[["A"], None, [], ["B"], None, None])
    assert build_catalogue(with_genres, stats).genres == [["A"], [], [], ["B"], [], []]
    assert build_catalogue(items.assign(genres=[[]] * 6), stats).genres is None


def test_mgu_dgu_pop_with_history():
    mgu, dgu = mgu_dgu_user(LISTS, cat(history=HIST), 4, "pop")
    # u0: rec (.5,.25,.25) - hist {10,12,13,15}=(.25,.5,.25) -> GU (.25,-.25,0): MGU .5/3, DGU .5
    # u1: rec (0,.5,.5) - hist {10,11}=(1,0,0) -> GU (-1,.5,.5): MGU 2/3, DGU 1.5
    np.testing.assert_allclose(mgu, [1 / 6, 2 / 3])
    np.testing.assert_allclose(dgu, [0.5, 1.5])
    # Pooled (IFairLRS): rec counts (2,3,3)/8 = (.25,.375,.375); hist (3,2,1)/6
    # GU = (-.25, 1/24, 5/24): MGU = (.25 + 1/24 + 5/24)/3 = 1/6, DGU = 5/24 + .25 = 11/24
    pm, pd_ = mgu_dgu(LISTS, cat(history=HIST), 4, "pop")
    assert pm == pytest.approx(1 / 6) and pd_ == pytest.approx(11 / 24)
    # with one more (empty) group, pooled GU gains a 0 entry: MGU = (1/2)/4, DGU unchanged
    four = Catalogue(item_ids=np.array(IDS), pop_group=np.array(POP), train_pop=np.array(TRAIN), history=HIST,
                     n_groups=4)
    assert mgu_dgu(LISTS, four, 4, "pop") == pytest.approx((1 / 8, 11 / 24))


def test_mgu_dgu_pop_train_reference():
    mgu, dgu = mgu_dgu_user(LISTS[:1], cat(), 4, "pop")
    # u0: rec (.5,.25,.25) - train (.55,.35,.10) = (-.05,-.10,.15): MGU .3/3 = .1, DGU .25
    np.testing.assert_allclose(mgu, [0.1])
    np.testing.assert_allclose(dgu, [0.25])
    # one user: pooled == per-user
    assert mgu_dgu(LISTS[:1], cat(), 4, "pop") == pytest.approx((0.1, 0.25))


def test_mgu_dgu_genre_counts_each_genre_once():
    # IFairLRS counting (official evaluate_all.py): an item adds 1 to each of its genres.
    mgu, dgu = mgu_dgu_user(LISTS[:1], cat(genres=GENRES, history=HIST[:1]), 4, "genre")
    # u0 list {A},{A,B},{B},{A,C}: A 3, B 2, C 1 of 6 -> (1/2, 1/3, 1/6)
    # history {A},{B},{C},{C} -> (1/4, 1/4, 1/2); GU (1/4, 1/12, -1/3): MGU (8/12)/3 = 2/9, DGU 7/12
    np.testing.assert_allclose(mgu, [2 / 9])
    np.testing.assert_allclose(dgu, [7 / 12])
    # pooled over both users: u1 list {C},{C},{A,C},{B} adds A 1, B 1, C 3 -> rec (4, 3, 4)/11;
    # histories {A},{B},{C},{C} + {A},{A,B} -> (3, 2, 2)/7; GU = (-5, -1, 6)/77: MGU 4/77, DGU 1/7
    pooled = mgu_dgu(LISTS, cat(genres=GENRES, history=HIST), 4, "genre")
    assert pooled == pytest.approx((4 / 77, 1 / 7))


def test_tail_share():
    # u0 one of 4 in group 2; u1 two of 4; u2: 15 valid, repeat and -1 invalid -> 1/1
    lists = np.vstack([LISTS, [[15, 15, -1, -1]]])
    np.testing.assert_allclose(tail_share_at_k(lists, cat(), 4), [0.25, 0.5, 1.0])
    np.testing.assert_allclose(tail_share_at_k(lists, cat(), 2), [0.0, 0.5, 1.0])


def test_ild_genre_and_given_distance():
    # genres: pairs (10,11) .5, (10,12) 1, (10,14) .5, (11,12) .5, (11,14) 2/3, (12,14) 1 -> 25/36
    np.testing.assert_allclose(ild_at_k(LISTS[:1], cat(genres=GENRES), 4), [25 / 36])
    # any item distance: pop groups [0,0,1,2] /2: 0, .5, 1, .5, 1, .5 -> 3.5/6;
    # second row: one valid item -> NaN; third: the repeat and -1 are skipped, pair (10,14) -> 1
    lists = np.array([[10, 11, 12, 14], [13, 13, -1, 99], [10, 10, -1, 14]])
    np.testing.assert_allclose(ild_at_k(lists, cat(), 4, pop_distance), [3.5 / 6, np.nan, 1.0])
    with pytest.raises(DataError, match="ILD without genres needs the diversity reward's item distance"):
        ild_at_k(lists, cat(), 4)


def test_gini_coverage_entropy_closed_forms():
    c, n = cat(), 6
    uniform = np.array([[10, 11, 12], [13, 14, 15]])  # every item exposed once
    assert gini_at_k(uniform, c, 3) == pytest.approx(0.0)
    assert coverage_at_k(uniform, c, 3) == 1.0
    assert entropy_at_k(uniform, c, 3) == pytest.approx(math.log(6))
    single = np.array([[10], [10], [10]])  # all exposure on one item: Gini = (n - 1)/n
    assert gini_at_k(single, c, 1) == pytest.approx((n - 1) / n)
    assert coverage_at_k(single, c, 1) == pytest.approx(1 / 6)
    assert entropy_at_k(single, c, 1) == 0.0
    # counts sorted (0,0,0,0,1,3): Σ(2i-7)c = 3*1 + 5*3 = 18, / (6*4) = .75
    skew = np.array([[14, 15], [15, -1], [15, 15]])
    assert gini_at_k(skew, c, 2) == pytest.approx(0.75)
    assert entropy_at_k(skew, c, 2) == pytest.approx(-(0.25 * math.log(0.25) + 0.75 * math.log(0.75)))


def test_evaluate_lists_columns_and_summary():
    # target 12 is at rank 3 in u0 and rank 4 in u1: recall@4 = 1 for both, recall@2 = 0
    per_user, summary = evaluate_lists(LISTS, np.array([12, 12]), cat(genres=GENRES, history=HIST), ks=(2, 4))
    expected = {"recall@4", "ndcg@4", "mgu_pop_user@4", "dgu_pop_user@4", "mgu_genre_user@4", "dgu_genre_user@4",
                "tail_share@4", "ild@4", "invalid_rate"}
    assert expected <= set(per_user.columns) and len(per_user) == 2
    assert not {"mgu_pop@4", "dgu_pop@4", "mgu_genre@4"} & set(per_user.columns)  # pooled: no per-user form
    # plain names: the IFairLRS pooled numbers (test_mgu_dgu_*); _user: the mean of the per-user ones
    assert summary["mgu_pop@4"] == pytest.approx(1 / 6) and summary["dgu_pop@4"] == pytest.approx(11 / 24)
    assert summary["mgu_genre@4"] == pytest.approx(4 / 77)
    assert summary["mgu_pop_user@4"] == pytest.approx((1 / 6 + 2 / 3) / 2)
    assert summary["recall@4"] == pytest.approx(1.0) and summary["recall@2"] == 0.0
    assert {"gini@4", "coverage@4", "entropy@4"} <= set(summary)
    no_genres = evaluate_lists(LISTS, np.array([12, 10]), cat(), ks=(2,), distance=pop_distance)
    assert "mgu_genre_user@2" not in no_genres[0] and "mgu_genre@2" not in no_genres[1]
    np.testing.assert_allclose(no_genres[0]["ild@2"], [0.0, 0.5])


def test_recall_ndcg_match_ranx():
    ranx = pytest.importorskip("ranx")
    rng = np.random.default_rng(0)
    n_users, n_items, k = 200, 500, 20
    lists = np.argsort(rng.random((n_users, n_items)), axis=1)[:, :k]
    in_list = rng.random(n_users) < 0.6
    targets = np.where(in_list, lists[np.arange(n_users), rng.integers(0, k, n_users)],
                       rng.integers(0, n_items, n_users))
    qrels = ranx.Qrels({f"q{u}": {f"d{targets[u]}": 1} for u in range(n_users)})
    run = ranx.Run({f"q{u}": {f"d{i}": float(k - j) for j, i in enumerate(lists[u])} for u in range(n_users)})
    for m in (5, 10, 20):
        ref = ranx.evaluate(qrels, run, [f"recall@{m}", f"ndcg@{m}"], return_mean=False)
        ours_by = {f"recall@{m}": recall_at_k(lists, targets, m), f"ndcg@{m}": ndcg_at_k(lists, targets, m)}
        for name, ours in ours_by.items():
            theirs = np.array([run.scores[name][f"q{u}"] for u in range(n_users)])  # per query, by id
            np.testing.assert_allclose(ours, theirs, rtol=1e-12)
            assert ours.mean() == pytest.approx(ref[name].mean())
