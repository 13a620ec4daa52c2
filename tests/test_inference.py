"""Inference-time rows: Best-of-N and Oracle Best-of-N over π_ref (docs/method.md (5.7)), and
sampled decoding of a trained policy — checked against independent recomputation of the choice."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from blade.model.policy import Policy
from blade.data import PreparedData
from blade.data import load_prepared
from blade.eval.config import EvalConfig
from blade.model.config import PolicyConfig
from blade.eval.lists import best_of_n, inference_reward, sampled_lists
from blade.rewards import ListReward, RewardConfig
from blade.train.config import SFTConfig
from blade.train.sft import train_sft
from tests.helpers import tiny_dataset

REWARD = RewardConfig(weights={"ndcg": 1.0, "fairness": 0.5})
K, NS = 10, [1, 2, 4, 8]


@pytest.fixture(scope="module")
def sft_model(tmp_path_factory):
    root = tmp_path_factory.mktemp("inference")
    data = tiny_dataset(root / "data")
    train_sft(PreparedData.load(data), root / "sft", PolicyConfig(hidden=32, heads=2, kv_heads=1, intermediate=64),
              SFTConfig(epochs=2, batch_size=32, warmup_steps=5), seed=0, evaluation=EvalConfig(selection_rows=60))
    return data, root / "sft" / "best"


def test_inference_reward_moves_the_ground_truth_part_to_relevance():
    moved = inference_reward(RewardConfig(weights={"ndcg": 1.0, "fairness": 0.5}))
    assert moved.weights == {"relevance": 1.0, "fairness": 0.5}
    both = inference_reward(RewardConfig(weights={"ndcg": 0.5, "relevance": 0.25}))
    assert both.weights == {"relevance": 0.75}
    graded = inference_reward(RewardConfig(weights={"future": 1.0, "diversity": 0.5}))  # graded accuracy too
    assert graded.weights == {"diversity": 0.5, "relevance": 1.0}


def test_best_of_n_keeps_the_best_of_the_first_n_draws(sft_model):
    data, model = sft_model
    rows = best_of_n(Policy.load(model), PreparedData.load(data), "test", K, NS, REWARD, batch_size=128, seed=0)
    draws, _ = sampled_lists(Policy.load(model), PreparedData.load(data), "test", K, max(NS), 128, seed=0)  # the same shared draw
    items, splits, stats = load_prepared(data)
    test = splits["test"]
    n_rows = len(test)
    hist = [h for h in test["history"].tolist() for _ in range(max(NS))]
    flat = draws.transpose(1, 0, 2).reshape(-1, K)
    oracle = ListReward(REWARD, items, splits["train"], stats)(hist, np.repeat(test["target"].to_numpy(), max(NS)), flat)
    guess = ListReward(RewardConfig(weights={"relevance": 1.0, "fairness": 0.5}), items, splits["train"], stats)(hist, None, flat)
    for kind, scores in (("oracle_bon", oracle["reward"]), ("bon", guess["reward"])):
        s = scores.reshape(n_rows, max(NS))
        previous = -np.inf
        for n in NS:
            lists, cost = rows[kind, n]
            want = draws[s[:, :n].argmax(1), np.arange(n_rows)]
            np.testing.assert_array_equal(lists, want)
            chosen = s[np.arange(n_rows), s[:, :n].argmax(1)].mean()
            assert chosen >= previous - 1e-12  # nested draws: the best of more is never worse
            previous = chosen
            assert cost["samples_per_user"] == n and cost["tokens_per_user"] == pytest.approx(n * K)
    # N = 1 is a single sample of π_ref whichever reward picks it
    np.testing.assert_array_equal(rows["bon", 1][0], rows["oracle_bon", 1][0])
    # the oracle, which sees the target, finds it more often than the inference reward can
    hits = {kind: np.mean([t in lst for t, lst in zip(test["target"], rows[kind, max(NS)][0])]) for kind in ("bon", "oracle_bon")}
    assert hits["oracle_bon"] > hits["bon"]


def test_sampled_lists_are_distinct_valid_and_seeded(sft_model):
    data, model = sft_model
    a, cost = sampled_lists(Policy.load(model), PreparedData.load(data), "valid", K, 3, 64, seed=1)
    b, _ = sampled_lists(Policy.load(model), PreparedData.load(data), "valid", K, 3, 64, seed=1)
    c, _ = sampled_lists(Policy.load(model), PreparedData.load(data), "valid", K, 3, 64, seed=2)
    np.testing.assert_array_equal(a, b)
    assert (a != c).any() and (a[0] != a[1]).any()  # independent samples differ
    catalogue = pd.read_parquet(data / "items.parquet")["item_id"].to_numpy()
    assert np.isin(a, catalogue).all() and all(len(set(r)) == K for r in a.reshape(-1, K).tolist())
    assert cost["samples_per_user"] == 1 and cost["tokens_per_user"] == K


def test_best_of_n_under_several_reward_settings_shares_one_draw(sft_model):
    """One draw picked by two reward settings gives, for each, exactly the single-setting result."""
    from blade.eval.lists import best_of_n_settings

    data, model = sft_model
    other = RewardConfig(weights={"ndcg": 1.0, "diversity": 0.5})
    both = best_of_n_settings(Policy.load(model), PreparedData.load(data), "test", K, NS, {"a": REWARD, "b": other}, batch_size=128, seed=0)
    for name, cfg in (("a", REWARD), ("b", other)):
        alone = best_of_n(Policy.load(model), PreparedData.load(data), "test", K, NS, cfg, batch_size=128, seed=0)
        assert set(both[name]) == set(alone)
        for key, (lists, _) in alone.items():
            np.testing.assert_array_equal(both[name][key][0], lists)
    # the settings differ in what they pick, not in what was drawn
    assert any((both["a"][k][0] != both["b"][k][0]).any() for k in both["a"] if k[1] > 1)


def test_lists_longer_than_the_catalogue_are_refused_by_name(tmp_path):
    from blade.errors import ConfigError
    from blade.eval.lists import recommend

    data = tiny_dataset(tmp_path / "data")  # 40 items
    with pytest.raises(ConfigError, match=r"evaluate.k = 41, but the catalogue of .* holds 40 items"):
        recommend(tmp_path / "recs.jsonl", PreparedData.load(data), "test", 41, 64, reference="cooc")
    assert not (tmp_path / "recs.jsonl").exists()
    recommend(tmp_path / "recs.jsonl", PreparedData.load(data), "test", 40, 64, reference="cooc")  # the whole catalogue is fine
    assert (tmp_path / "recs.jsonl").is_file()
