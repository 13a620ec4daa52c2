"""Reference rollouts and the shared alignment loop, on the tiny synthetic dataset."""

import numpy as np
import pandas as pd
import pytest

from blade.align.loop import AlignConfig, align
from blade.align.rollout import RolloutConfig, context_rows, reference_rollouts
from blade.data.canonical import load_prepared
from blade.errors import ConfigError
from blade.model.policy import PolicyConfig
from blade.rewards import ListReward, RewardConfig
from blade.train.sft import SFTConfig, train_sft
from blade.workflow_config import check_config
from tests.helpers import tiny_dataset

SMALL_POLICY = PolicyConfig(hidden=32, heads=2, kv_heads=1, intermediate=64)
REWARD = RewardConfig(weights={"ndcg": 1.0, "fairness": 0.5})


@pytest.fixture(scope="module")
def sft_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("align")
    data = tiny_dataset(root / "data")
    train_sft(data, root / "sft", SMALL_POLICY, SFTConfig(epochs=2, batch_size=32, warmup_steps=5), seed=0)
    return data, root / "sft"


def test_rollouts_hold_m_scored_lists_per_context(sft_run, tmp_path):
    data, sft = sft_run
    cfg = RolloutConfig(m=4, k=5, max_contexts=50, chunk=16, batch_size=64)
    summary = reference_rollouts(data, sft / "best", tmp_path / "ref.parquet", cfg, REWARD, seed=3)
    frame = pd.read_parquet(tmp_path / "ref.parquet")
    items, splits, stats = load_prepared(data)
    train = splits["train"]
    assert sorted(frame["row"].unique()) == list(context_rows(len(train), 50))
    assert (frame.groupby("row")["sample"].apply(sorted) == pd.Series([[0, 1, 2, 3]] * 50, index=sorted(frame["row"].unique()))).all()
    lists = np.stack(frame["items"].to_numpy())
    assert lists.shape == (200, 5)
    assert all(len(set(lst)) == 5 for lst in lists.tolist()) and np.isin(lists, items["item_id"]).all()
    rows = frame["row"].to_numpy()
    rescored = ListReward(REWARD, items, train, stats)([train["history"].iloc[r] for r in rows],
                                                       train["target"].to_numpy()[rows], lists)
    for name in ("reward", "ndcg", "fairness"):
        np.testing.assert_allclose(frame[name].to_numpy(), rescored[name], err_msg=name)
    assert summary["lists"] == 200 and summary["invalid_rate"] == 0
    assert not (tmp_path / "ref.parquet.parts").exists()


def test_rollouts_are_seeded_and_resume(sft_run, tmp_path):
    data, sft = sft_run
    cfg = RolloutConfig(m=3, k=5, max_contexts=40, chunk=16, batch_size=64)
    reference_rollouts(data, sft / "best", tmp_path / "a.parquet", cfg, REWARD, seed=1)
    a = pd.read_parquet(tmp_path / "a.parquet")
    reference_rollouts(data, sft / "best", tmp_path / "b.parquet", cfg, REWARD, seed=1)
    pd.testing.assert_frame_equal(a, pd.read_parquet(tmp_path / "b.parquet"))
    # A killed run left its first chunk behind: the restart keeps it and writes only the rest.
    parts = tmp_path / "c.parquet.parts"
    parts.mkdir()
    first = a.iloc[: 16 * 3]
    first.to_parquet(parts / "chunk000000.parquet", index=False)
    reference_rollouts(data, sft / "best", tmp_path / "c.parquet", cfg, REWARD, seed=1)
    pd.testing.assert_frame_equal(a, pd.read_parquet(tmp_path / "c.parquet"))
    reference_rollouts(data, sft / "best", tmp_path / "d.parquet", cfg, REWARD, seed=2)
    assert not a["items"].equals(pd.read_parquet(tmp_path / "d.parquet")["items"]), "another seed gave the same lists"


@pytest.fixture(scope="module")
def rollouts(sft_run, tmp_path_factory):
    data, sft = sft_run
    path = tmp_path_factory.mktemp("ref") / "ref.parquet"
    reference_rollouts(data, sft / "best", path, RolloutConfig(m=8, k=10, max_contexts=200), REWARD, seed=0)
    return path


def _align(sft_run, rollouts, out, steps, method=None, **kw):
    data, sft = sft_run
    cfg = AlignConfig(steps=steps, contexts_per_step=6, group_size=4, k=10, eval_every=2, valid_rows=60, lr=1e-3, **kw)
    return align(data, sft, rollouts, out, method or {"objective": "blade"}, cfg, REWARD, seed=0)


def test_alignment_logs_diagnostics_every_step_and_selects_on_valid(sft_run, rollouts, tmp_path):
    summary = _align(sft_run, rollouts, tmp_path / "run", steps=4)
    diag = pd.read_parquet(tmp_path / "run" / "diagnostics.parquet")
    assert diag["step"].tolist() == [1, 2, 3, 4]
    for col in ("loss", "grad_norm", "weight_spread", "ess", "saturated_frac", "signal_std", "kl", "reward_mean",
                "reward_max", "reward/ndcg", "reward/fairness", "seconds/rollout", "seconds/score", "seconds/forward",
                "seconds/objective", "seconds/backward", "seconds/optimizer"):
        assert col in diag and np.isfinite(diag[col]).all(), col
    assert ((diag["ess"] >= 1 - 1e-9) & (diag["ess"] <= 4 + 1e-9)).all()  # 1 ≤ ESS ≤ G
    assert (diag["kl"].iloc[1:] > 0).all() and diag["kl"].iloc[0] == pytest.approx(0, abs=1e-6)  # step 1: π_θ = π_ref
    assert (diag["invalid_rate"] == 0).all()
    curve = pd.read_parquet(tmp_path / "run" / "valid_curve.parquet")
    assert curve["step"].tolist() == [0, 2, 4]
    assert summary["valid/ndcg@10"] == pytest.approx(curve["valid/ndcg@10"].max())
    assert summary["best_step"] == int(curve["step"][curve["valid/ndcg@10"].idxmax()])
    assert (tmp_path / "run" / "best" / "model.safetensors").is_file()


def test_killed_alignment_resumes_to_the_same_result(sft_run, rollouts, tmp_path):
    straight = _align(sft_run, rollouts, tmp_path / "a", steps=4)
    _align(sft_run, rollouts, tmp_path / "b", steps=2)  # "killed" after its step-2 checkpoint
    resumed = _align(sft_run, rollouts, tmp_path / "b", steps=4)
    assert resumed == straight
    da = pd.read_parquet(tmp_path / "a" / "diagnostics.parquet").filter(regex="^(?!seconds)")
    db = pd.read_parquet(tmp_path / "b" / "diagnostics.parquet").filter(regex="^(?!seconds)")
    pd.testing.assert_frame_equal(da, db[da.columns], rtol=1e-5)


def test_static_estimator_runs_in_the_same_loop(sft_run, rollouts, tmp_path):
    _align(sft_run, rollouts, tmp_path / "s", steps=2, method={"objective": "blade", "estimator": "static"})
    diag = pd.read_parquet(tmp_path / "s" / "diagnostics.parquet")
    assert len(diag) == 2 and np.isfinite(diag["weight_spread"]).all()


def test_list_length_must_match_the_rollouts(sft_run, rollouts, tmp_path):
    data, sft = sft_run
    with pytest.raises(ConfigError, match="rollout.k = align.k"):
        align(data, sft, rollouts, tmp_path / "x", {"objective": "blade"}, AlignConfig(k=5, select_metric="ndcg@5"),
              REWARD, seed=0)


@pytest.mark.parametrize("patch, message", [
    ({"rollout": {"k": 5}}, "rollout.k=5 and align.k=10 differ"),
    ({"run": {"datasets": ["s"], "methods": ["bladee"]}}, "run.methods names 'bladee'"),
    ({"methods": {"blade": {"objective": "blade", "kapa0": 2}}}, "methods.blade.kapa0: unknown option — did you mean 'kappa0'"),
    ({"methods": {"blade": {"objective": "dpo_typo"}}}, "unknown method 'dpo_typo'"),
    ({"align": {"group_size": 1}}, "group_size must be >= 2"),
    ({"reward": {"weights": {"ndgc": 1.0}}}, "ndgc"),
])
def test_workflow_config_checks_alignment_sections(patch, message):
    config = {"run": {"datasets": ["s"], "methods": ["blade"]},
              "datasets": {"s": {"source": "synthetic"}},
              "methods": {"blade": {"objective": "blade"}}}
    config.update(patch)
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(".", r"\.")):
        check_config(config)
