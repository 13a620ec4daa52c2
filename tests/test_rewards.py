"""Reward tests: hand-computed values on a seven-item catalogue, config errors, the registry, and
the combined reward on a prepared synthetic dataset."""

import math

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from blade.config import from_dict
from blade.data import load_prepared
from blade.errors import ConfigError, DataError
from blade.metrics import ild_at_k, ndcg_at_k
from blade.rewards import (
    REWARDS,
    CooccurrenceEmbedding,
    ListReward,
    RelevanceModel,
    RewardConfig,
    register_reward,
    target_distribution,
)
from tests.helpers import tiny_dataset

L3 = 1.0 / math.log2(3)  # DCG discount of rank 2

# Items 10..16; popularity groups 0 head .. 2 tail; genre vocabulary [A, B, C]; 16 has no genre.
IDS = [10, 11, 12, 13, 14, 15, 16]
POP = [0, 0, 1, 1, 2, 2, 2]
GENRES = [["A"], ["A", "B"], ["B"], ["C"], ["A", "C"], ["C"], []]
# Train rows (last history item -> target) give co-occurrence counts C[10,11]=2, C[10,12]=1,
# C[11,12]=1, C[12,13]=1, C[13,14]=1; target counts 11:2, 12:2, 13:1, 14:1 -> popularity prior
# 1e-3·pop/max(pop) = 11: 1e-3, 12: 1e-3, 13: 5e-4, 14: 5e-4 (see reference.CoOccurrence).
TRAIN = pd.DataFrame({"history": [[10], [10], [10], [11], [12], [13]], "target": [11, 11, 12, 12, 13, 14]})
STATS = {
    "popularity": {"n_groups": 3, "train_share": [0.5, 0.3, 0.2], "item_share": [0.2, 0.2, 0.6]},
    "genres": {"names": ["A", "B", "C"],
               "train_share": {"A": 0.5, "B": 0.25, "C": 0.25},
               "item_share": {"A": 0.2, "B": 0.2, "C": 0.6}},
}


def items_frame(genres=True):
    return pd.DataFrame({
        "item_id": IDS, "title": [f"t{i}" for i in IDS],
        "genres": GENRES if genres else [None] * len(IDS),
        "train_pop": [0, 2, 2, 1, 1, 0, 0], "pop_group": POP})


def reward(stats=STATS, genres=True, **cfg):
    return ListReward(RewardConfig(**cfg), items_frame(genres), TRAIN, stats)


def call(env, lists, targets=None, histories=None):
    lists = np.array(lists)
    histories = histories if histories is not None else [[10]] * len(lists)
    return env(histories, None if targets is None else np.array(targets), lists)


# ---------------------------------------------------------------- each reward by hand
def test_ndcg_hand():
    env = reward(weights={"ndcg": 1.0})
    lists = [[12, 11, 13], [11, 12, 13], [13, 14, 15], [-1, 11, 12], [11, 11, 12], [99, 12, 13]]
    out = call(env, lists, targets=[11, 11, 11, 12, 12, 99])
    # rank 2 -> 1/log2(3); rank 1 -> 1; absent -> 0; after an empty slot the target is still at
    # rank 3 (slots keep their positions); a repeat takes a slot; an unknown id never hits.
    np.testing.assert_allclose(out["ndcg"], [L3, 1.0, 0.0, 0.5, 1 / math.log2(4), 0.0])
    np.testing.assert_allclose(out["reward"], out["ndcg"])
    np.testing.assert_allclose(out["ndcg"], ndcg_at_k(np.array(lists), np.array([11, 11, 11, 12, 12, 99]), 3,
                                                      env.catalogue))


def test_relevance_hand():
    env = reward(weights={"relevance": 1.0})
    # history [10]: scores 11: 2.001, 12: 1.001, 13/14: 5e-4, 10/15/16: 0 -> ideal top-2 [11, 12].
    ideal = 2.001 + 1.001 * L3
    out = call(env, [[11, 12], [12, 11], [11, -1], [11, 11], [99, 13], [15, 16]])["relevance"]
    np.testing.assert_allclose(out, [1.0, (1.001 + 2.001 * L3) / ideal, 2.001 / ideal, 2.001 / ideal,
                                     5e-4 * L3 / ideal, 0.0])
    assert out[1] < 1.0
    # decay 0.7: history [12, 10] adds 0.7·C[12, :] -> 13 scores 0.7005, the top item 11 2.001 (K=1)
    hist = [[12, 10], [12, 10]]
    np.testing.assert_allclose(call(env, [[13], [11]], histories=hist)["relevance"], [0.7005 / 2.001, 1.0])
    decay0 = reward(weights={"relevance": 1.0}, cooccurrence_decay=0.0)
    np.testing.assert_allclose(call(decay0, [[13]], histories=[[12, 10]])["relevance"], [5e-4 / 2.001])


def test_relevance_model_batches_and_own_top_k():
    model = RelevanceModel.cooccurrence(TRAIN, np.array(IDS))
    hists = [[10], [12, 10], [13], [99], [11], [10]]  # [99]: no known item -> popularity prior only
    top = model.scorer.recommend(hists, 3)
    np.testing.assert_allclose(model.score_lists(hists, top), 1.0)
    rng = np.random.default_rng(0)
    lists = np.array([rng.choice(IDS, 3, replace=False) for _ in hists])
    lists[0, 1] = -1
    small = RelevanceModel(model.scorer, max_cells=len(IDS) * 2)  # 2 unique histories per batch
    np.testing.assert_allclose(small.score_lists(hists, lists), model.score_lists(hists, lists))
    assert (model.score_lists(hists, top[:, ::-1]) < 1.0).all()
    with pytest.raises(ValueError, match="one history per list"):
        model.score_lists(hists[:2], lists)

    class Logits:  # a scorer with negative scores breaks the [0, 1] bound: refused
        item_ids = np.array(IDS)

        def scores(self, histories):
            return np.full((len(histories), len(IDS)), -1.0)

    with pytest.raises(ValueError, match="negative scores"):
        RelevanceModel(Logits()).score_lists([[10]], np.array([[11]]))


def test_fairness_pop_hand():
    env = reward(weights={"fairness": 1.0}, fairness_target="uniform")
    # all in group 0 (the repeat is an invalid slot, 2/3 valid): 2/3·(1 − ½(2/3 + 1/3 + 1/3)) = 2/9;
    # one per group: 1
    np.testing.assert_allclose(call(env, [[10, 11, 10], [10, 12, 14]])["fairness"], [2 / 9, 1.0])
    # one invalid slot of 4: 3/4; a repeat is an invalid slot too; none valid: 0
    out = call(env, [[10, 12, 14, -1], [10, 10, 12, 14], [-1, -1, 99, -1]])
    np.testing.assert_allclose(out["fairness"], [0.75, 0.75, 0.0])
    # the brief's case: a full list all in one of 3 groups vs uniform: 1 − ½(2/3 + 1/3 + 1/3) = 1/3
    np.testing.assert_allclose(call(env, [[10, 11]])["fairness"], [1 / 3])


def test_fairness_target_comes_from_stats():
    lists = [[10, 12, 14]]  # one item per group
    train = reward(weights={"fairness": 1.0})  # default target: train_share (0.5, 0.3, 0.2)
    # 1 − ½(|1/3 − .5| + |1/3 − .3| + |1/3 − .2|) = 1 − ½(1/6 + 1/30 + 2/15) = 5/6
    np.testing.assert_allclose(call(train, lists)["fairness"], [5 / 6])
    items = reward(weights={"fairness": 1.0}, fairness_target="item_share")  # (0.2, 0.2, 0.6)
    np.testing.assert_allclose(call(items, lists)["fairness"], [1 - 0.5 * (2 / 15 + 2 / 15 + 4 / 15)])
    changed = {**STATS, "popularity": {**STATS["popularity"], "train_share": [0.0, 0.0, 1.0]}}
    np.testing.assert_allclose(call(reward(changed, weights={"fairness": 1.0}), lists)["fairness"], [1 / 3])
    # stats.json rounds shares; the target is renormalised
    np.testing.assert_allclose(target_distribution({"popularity": {"n_groups": 2, "train_share": [0.3, 0.3]}},
                                                   "pop", "train_share"), [0.5, 0.5])
    with pytest.raises(DataError, match="must list 3 group shares"):
        reward({"popularity": {"n_groups": 3, "train_share": [1.0]}}, weights={"fairness": 1.0})


def test_fairness_genre_hand():
    env = reward(weights={"fairness": 1.0}, fairness_by="genre", fairness_target="uniform")
    # [10, 11]: A = 1 + ½, B = ½ -> shares (¾, ¼, 0): 1 − ½(5/12 + 1/12 + 4/12) = 7/12.
    # [10, 16]: 16 has no genre, so p_list = (1, 0, 0) over the genre-tagged item: 1 − ½(4/3) = 1/3.
    # [16, -1]: nothing to measure -> 0.
    np.testing.assert_allclose(call(env, [[10, 11], [10, 16], [16, -1]])["fairness"], [7 / 12, 1 / 3, 0.0])
    env = reward(weights={"fairness": 1.0}, fairness_by="genre")  # train_share A .5, B .25, C .25
    np.testing.assert_allclose(call(env, [[10, 11]])["fairness"], [1 - 0.5 * (0.25 + 0.0 + 0.25)])


def test_diversity_genre_hand():
    env = reward(weights={"diversity": 1.0})  # auto -> genres
    assert env.diversity_basis == "genre"
    # {A}, {A,B}, {B}: d = ½, 1, ½ -> 2/3; with an empty 4th slot the 3 missing pairs count 0 -> 1/3;
    # {C} vs {A,C}: ½; 16 (no genre) vs {A}: 1; a list of one item has no pair: 0.
    out = call(env, [[10, 11, 12, -1], [10, 11, 12, 12], [13, 14, -1, -1], [16, 10, -1, -1]])["diversity"]
    np.testing.assert_allclose(out, [1 / 3, 1 / 3, 0.5 / 6, 1 / 6])
    np.testing.assert_allclose(call(env, [[10, 11, 12]])["diversity"], [2 / 3])
    np.testing.assert_allclose(call(env, [[10]])["diversity"], [0.0])


def test_diversity_cooccurrence_hand():
    env = reward(weights={"diversity": 1.0}, diversity_by="cooccurrence")
    # rows of A = C + Cᵀ over items 10..16: 10 = (0,2,1,0,0,0,0), 11 = (2,0,1,0,0,0,0),
    # 13 = (0,0,1,0,1,0,0); 15 and 16 never co-occur (empty rows).
    # cos(10,11) = 1/5, cos(10,13) = cos(11,13) = 1/√10.
    d13 = 1 - 1 / math.sqrt(10)
    out = call(env, [[10, 11, 13], [10, 15, -1], [15, 16, -1], [10, 11, 11]])["diversity"]
    np.testing.assert_allclose(out, [(0.8 + 2 * d13) / 3, 1 / 3, 0.0, 0.8 / 3])
    # a dataset without genres falls back to co-occurrence under 'auto' and gives the same numbers
    auto = reward(genres=False, weights={"diversity": 1.0})
    assert auto.diversity_basis == "cooccurrence"
    np.testing.assert_allclose(call(auto, [[10, 11, 13]])["diversity"], out[:1])


def test_cooccurrence_embedding_exact_at_full_rank_and_bounded_when_truncated(tiny):
    items, splits, stats = tiny
    rng = np.random.default_rng(1)
    lists = np.stack([rng.choice(items["item_id"], 10, replace=False) for _ in range(200)])
    full = ListReward(RewardConfig(weights={"diversity": 1.0}, diversity_by="cooccurrence"),
                      items, splits["train"], stats)  # dim 64 >= 40 items: exact cosines
    c = full.cooccurrence.counts.toarray()
    a = c + c.T
    unit = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-300)
    dist = 1 - unit @ unit.T  # (n, n) exact cosine distances
    ix = full.catalogue.index_of(lists)
    pairs = [(i, j) for i in range(10) for j in range(i + 1, 10)]
    expected = np.mean([dist[ix[:, i], ix[:, j]] for i, j in pairs], axis=0)
    got = full(lists.tolist(), None, lists)["diversity"]
    np.testing.assert_allclose(got, expected, atol=1e-5)
    low = ListReward(RewardConfig(weights={"diversity": 1.0}, diversity_by="cooccurrence", diversity_dim=8),
                     items, splits["train"], stats)(lists.tolist(), None, lists)["diversity"]
    assert (low >= 0).all() and (low <= 1).all() and not np.allclose(low, got)
    assert np.corrcoef(low, got)[0, 1] > 0.5  # the rank-8 approximation still orders lists alike


@pytest.mark.parametrize("dim", [64, 3])
def test_item_without_cooccurrence_is_at_distance_one_from_every_other(dim):
    # Regression: an empty row's SVD embedding is round-off, not zero; normalised, it pointed in a
    # random direction (on these counts item 5 came out at distance 0.43 from item 8).
    pairs = [(0, 1), (0, 1), (0, 2), (1, 3), (2, 3), (3, 4), (4, 6), (6, 7), (7, 0), (8, 9), (9, 0)]
    counts = sp.csr_matrix((np.ones(len(pairs)), tuple(zip(*pairs))), shape=(12, 12))
    d = CooccurrenceEmbedding(counts, dim=dim).distance(np.arange(12)[None])[0]  # (12, 12)
    empty = [5, 10, 11]
    others = [i for i in range(12) if i not in empty]
    np.testing.assert_allclose(d[np.ix_(empty, others)], 1.0)
    np.testing.assert_allclose(d[np.ix_(empty, empty)], 0.0)


# ---------------------------------------------------------------- combination and config
def test_weighted_sum_and_zero_weights_not_computed():
    env = reward(weights={"ndcg": 2.0, "fairness": 0.5, "diversity": 0.0}, fairness_target="uniform")
    out = call(env, [[10, 12, 14], [11, 10, 13]], targets=[12, 99])
    assert set(out) == {"ndcg", "fairness", "reward"}
    np.testing.assert_allclose(out["ndcg"], [L3, 0.0])
    np.testing.assert_allclose(out["fairness"], [1.0, 1 - 0.5 * (1 / 3 + 0 + 1 / 3)])
    np.testing.assert_allclose(out["reward"], 2.0 * out["ndcg"] + 0.5 * out["fairness"])


def test_inference_time_rewards_need_no_targets():
    out = call(reward(weights={"relevance": 1.0, "fairness": 1.0}), [[11, 12]])
    assert out["reward"].shape == (1,)
    with pytest.raises(ValueError, match="'ndcg' reward needs the ground-truth targets"):
        call(reward(), [[11, 12]])


@pytest.mark.parametrize("cfg, message", [
    ({"weights": {"ndgc": 1.0}}, "weights.ndgc: unknown reward — did you mean 'ndcg'? Valid rewards: ndcg, relevance"),
    ({"weights": {"ndcg": -0.5}}, "weights.ndcg: weight must be a finite number >= 0"),
    ({"weights": {"ndcg": float("nan")}}, "weights.ndcg: weight must be a finite number >= 0"),
    ({"weights": {"ndcg": 0.0}}, "at least one reward needs a weight > 0"),
    ({"weights": {}}, "at least one reward needs a weight > 0"),
    ({"fairness_by": "genres"}, "fairness_by: 'genres' is not allowed"),
    ({"fairness_target": "history"}, "fairness_target: 'history' is not allowed"),
    ({"diversity_by": "embedding"}, "diversity_by: 'embedding' is not allowed"),
    ({"cooccurrence_decay": 1.5}, "cooccurrence_decay must lie in [0, 1]"),
    ({"diversity_dim": 0}, "diversity_dim must be >= 1"),
])
def test_config_errors(cfg, message):
    with pytest.raises(ConfigError) as info:
        RewardConfig(**cfg)
    assert message in str(info.value)
    with pytest.raises(ConfigError) as info:  # the same through the YAML path, prefixed by the key
        from_dict(RewardConfig, cfg, "method.reward")
    assert str(info.value).startswith("method.reward")


@pytest.mark.parametrize("key", ["fairness_by", "fairness_target", "diversity_by"])
def test_choices_are_the_same_built_directly_or_from_yaml(key):
    """Each option's choices are written once (its Literal type): a direct construction and the
    YAML path reject a value with the same message and list."""
    with pytest.raises(ConfigError) as direct:
        RewardConfig(**{key: "nope"})
    with pytest.raises(ConfigError) as parsed:
        from_dict(RewardConfig, {key: "nope"}, "reward")
    assert str(parsed.value) == f"reward.{direct.value}" and "choose one of [" in str(direct.value)


def test_options_needing_genres_fail_loudly_without_them():
    no_genres = {**STATS, "genres": None}
    with pytest.raises(ConfigError, match="fairness_by: 'genre' needs genres"):
        reward(no_genres, genres=False, weights={"fairness": 1.0}, fairness_by="genre")
    with pytest.raises(ConfigError, match="diversity_by: 'genre' needs genres"):
        reward(no_genres, genres=False, weights={"diversity": 1.0}, diversity_by="genre")
    reward(no_genres, genres=False, weights={"ndcg": 1.0}, fairness_by="genre")  # unused: no error


def test_bad_shapes():
    env = reward()
    with pytest.raises(ValueError, match="lists must be"):
        env([[10]], np.array([11]), np.array([11, 12]))
    with pytest.raises(ValueError, match="2 histories for 1 lists"):
        env([[10], [10]], np.array([11]), np.array([[11, 12]]))
    with pytest.raises(ValueError, match="targets must be"):
        env([[10]], np.array([11, 12]), np.array([[11, 12]]))


@pytest.fixture
def registered():
    names = []

    def add(name, fn):
        register_reward(name)(fn)
        names.append(name)

    yield add
    for name in names:
        REWARDS.pop(name, None)


def test_registry_adds_a_reward_by_name(registered):
    def head_share(batch, env):  # share of slots holding a head (group 0) item
        head = env.catalogue.pop_group == 0
        return np.where(batch.idx >= 0, head[np.maximum(batch.idx, 0)], False).mean(1)

    registered("test_head_share", head_share)
    env = reward(weights={"test_head_share": 1.0, "ndcg": 1.0})
    out = call(env, [[10, 12, -1, 11]], targets=[11])
    np.testing.assert_allclose(out["test_head_share"], [0.5])
    np.testing.assert_allclose(out["reward"], [0.5 + 1 / math.log2(5)])
    with pytest.raises(ValueError, match="already registered"):
        register_reward("test_head_share")(head_share)

    registered("test_broken", lambda batch, env: np.full(len(batch.lists), 2.0))
    with pytest.raises(ValueError, match="reward 'test_broken' must return .* in \\[0, 1\\]"):
        call(reward(weights={"test_broken": 1.0}), [[10]])


# ---------------------------------------------------------------- a prepared dataset
@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return load_prepared(tiny_dataset(tmp_path_factory.mktemp("rewards") / "d"))


def test_on_prepared_synthetic_dataset(tiny):
    items, splits, stats = tiny
    env = ListReward(RewardConfig(weights={"ndcg": 1.0, "relevance": 1.0, "fairness": 1.0, "diversity": 1.0}),
                     items, splits["train"], stats)
    valid = splits["valid"]
    hists, targets = valid["history"].tolist(), valid["target"].to_numpy()
    rng = np.random.default_rng(0)
    ids = items["item_id"].to_numpy()
    rand = np.stack([rng.choice(ids, 10, replace=False) for _ in hists])
    rand[::7, 4] = -1  # invalid slots must not crash anything
    top = env.cooccurrence.recommend(hists, 10)
    for lists in (rand, top):
        out = env(hists, targets, lists)
        assert set(out) == {"ndcg", "relevance", "fairness", "diversity", "reward"}
        for name, value in out.items():
            assert value.shape == (len(hists),) and np.isfinite(value).all()
            assert (value >= 0).all() and (value <= (4 if name == "reward" else 1)).all(), name
        parts = ("ndcg", "relevance", "fairness", "diversity")
        np.testing.assert_allclose(out["reward"], sum(out[n] for n in parts))
    r_top, r_rand = env(hists, targets, top), env(hists, targets, rand)
    np.testing.assert_allclose(r_top["relevance"], 1.0)  # the model's own top-K is its ideal list
    assert r_rand["relevance"].mean() < 0.8 and (r_rand["relevance"] < 1.0).all()
    assert r_top["ndcg"].mean() > r_rand["ndcg"].mean()
    # on full lists the genre diversity reward is the evaluation ILD@K
    np.testing.assert_allclose(r_top["diversity"], ild_at_k(top, env.catalogue, 10))
    # the group targets really are the dataset's stats.json shares
    np.testing.assert_allclose(env.fairness_target, np.array(stats["popularity"]["train_share"])
                               / sum(stats["popularity"]["train_share"]))
    genre = ListReward(RewardConfig(weights={"fairness": 1.0}, fairness_by="genre"), items, splits["train"], stats)
    assert len(genre.fairness_target) == len(stats["genres"]["names"])
    assert ((g := genre(hists, None, top)["fairness"]) > 0).all() and (g <= 1).all()
