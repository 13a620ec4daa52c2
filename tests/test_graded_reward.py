"""The graded accuracy reward (``future``), the static target's reward on training contexts
(``expected_best_of``), the dp estimator's saturation cap, and the own-reward column of §6.2."""

import itertools
import math

import numpy as np
import pandas as pd
import pytest

from blade.align.estimators import DPEstimator, RefPrior, dp_saturation_cap, expected_best_of
from blade.data import PreparedData
from blade.data.continuation import continuation_lists
from blade.errors import ConfigError
from blade.rewards import ListReward, RewardConfig, future_reward, ndcg_reward
from tests.helpers import tiny_dataset

D = 1 / np.log2(np.arange(10) + 2)  # DCG discounts by rank


def test_future_reward_by_hand():
    lists = np.array([[5, 7, 9], [7, 5, -1], [1, 2, 3], [9, 9, 5]])
    idx = np.where(lists >= 0, 0, -1)
    idx[3, 1] = -1  # a repeated slot is invalid
    futures = [[5, 7], [5, 7, 9], [4], [5, 9]]
    got = future_reward(lists, idx, futures, future_len=5)
    ideal3 = D[0] + D[1] / 2 + D[2] / 3
    assert got[0] == pytest.approx(1.0)  # the ideal order
    assert got[1] == pytest.approx((D[0] / 2 + D[1]) / ideal3)  # 7 (gain ½) first, 5 (gain 1) second
    assert got[2] == 0.0
    assert got[3] == pytest.approx((D[0] / 2 + D[2]) / (D[0] + D[1] / 2))
    # future_len cuts the graded items; a one-item future is plain NDCG
    assert future_reward(lists, idx, futures, future_len=1)[1] == pytest.approx(D[1])
    targets = np.array([5, 5, 1, 9])
    np.testing.assert_allclose(future_reward(lists, np.where(lists >= 0, 0, -1), [[t] for t in targets], 3),
                               ndcg_reward(lists, targets))


def test_future_reads_train_futures_only_when_given_train_rows(tmp_path):
    data = PreparedData.load(tiny_dataset(tmp_path / "data"))
    train = data.train
    reward = ListReward(RewardConfig(weights={"future": 1.0}, future_len=4), data.items, train, data.stats)
    futures = continuation_lists(train, 4)
    r = next(i for i, f in enumerate(futures) if len(f) >= 3)  # a row whose user goes on
    f = futures[r]
    lists = np.array([[f[1], f[0], f[2]]])
    hist, target = [train["history"].iloc[r]], np.array([train["target"].iloc[r]])
    with_rows = reward(hist, target, lists, rows=np.array([r]))["future"][0]
    gains = [1 / (1 + j) for j in range(min(4, len(f)))]
    assert with_rows == pytest.approx((0.5 * D[0] + 1 * D[1] + D[2] / 3) / float(np.dot(gains[:3], D[:3])))
    without = reward(hist, target, lists)["future"][0]  # valid/test rows: the target alone
    assert without == pytest.approx(D[1]) and without < with_rows
    with pytest.raises(ValueError, match="targets are not the contexts' targets"):
        reward(hist, np.array([f[1]]), lists, rows=np.array([r]))
    with pytest.raises(ValueError, match="train row ids"):
        reward(hist, target, lists, rows=np.array([len(train)]))
    with pytest.raises(ConfigError, match="future_len must be an integer >= 1"):
        RewardConfig(weights={"future": 1.0}, future_len=0)


def test_expected_best_of_n_equals_the_mean_over_all_n_subsets():
    rng = np.random.default_rng(0)
    ref = np.round(rng.random((3, 6)), 1)  # ties on purpose
    mask = np.ones_like(ref, dtype=bool)
    mask[2, 4:] = False  # a context with 4 rollouts
    for n in (1, 2, 3, 4):
        got = expected_best_of(ref, mask, n)
        for b in range(3):
            vals = ref[b, mask[b]]
            m = min(n, len(vals))
            want = np.mean([max(c) for c in itertools.combinations(vals, m)])
            assert got[b] == pytest.approx(want), (n, b)


def test_dp_cap_is_the_largest_f_the_estimator_gives():
    """A group whose best reward beats every reference reward: its F is the cap, below 0.99."""
    frame = pd.DataFrame({"row": np.repeat([0], 16), "sample": np.arange(16), "reward": np.linspace(0, 0.5, 16)})
    prior = RefPrior.from_frame(frame, 1)
    r = np.array([[0.9, 0.1, 0.2, 0.3, 0.0, 0.4, 0.05, 0.15]])  # G = 8, the first above every reference
    log_f = DPEstimator(kappa0=4.0, var_floor=1e-4)(r, prior, np.array([0]))
    assert math.exp(log_f.max()) == pytest.approx(dp_saturation_cap(4.0, 8)) == pytest.approx(11.5 / 12)
    assert dp_saturation_cap(4.0, 8) < 0.99 and dp_saturation_cap(math.inf, 8) == 1.0


def test_own_reward_is_the_settings_reward_on_each_rows_lists(tmp_path):
    import json

    from analysis.common import Row
    from analysis.own_reward import OwnReward
    from blade.experiment import resolve
    from blade.rewards import diversity_reward

    results = tmp_path / "results"
    tiny_dataset(results / "data" / "fake")
    exp = resolve({"run": {"datasets": ["fake"], "rewards": ["div"]},
                   "datasets": {"fake": {"source": "synthetic", "params": {}}},
                   "rewards": {"div": {"weights": {"ndcg": 1.0, "diversity": 0.5}}}, "align": {"k": 5},
                   "rollout": {"k": 5}})
    data = PreparedData.load(results / "data" / "fake")
    test = data.split("test")
    ids = data.item_ids
    lists = np.stack([np.roll(ids, i)[:8] for i in range(len(test))])  # (rows, 8): longer than align.k
    out = results / "eval" / "fake" / "div" / "m" / "seed0" / "test"
    out.mkdir(parents=True)
    (out / "recs.jsonl").write_text("".join(json.dumps({"row": i, "items": lst.tolist()}) + "\n"
                                            for i, lst in enumerate(lists)))
    own = OwnReward(results, exp, "fake", "div", "test").per_user(results, Row("fake", "div", "m", "baseline", [0]), 0)
    reward = ListReward(exp.rewards["div"], data.items, data.train, data.stats)
    want = ndcg_reward(lists[:, :5], test["target"].to_numpy(), reward.catalogue) \
        + 0.5 * diversity_reward(lists[:, :5], reward.catalogue, reward.distance)
    np.testing.assert_allclose(own.to_numpy(), want)
