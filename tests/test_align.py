"""Reference rollouts and the shared alignment loop, on the tiny synthetic dataset."""

import numpy as np
import pandas as pd
import pytest

from blade.align.registry import Method
from blade.data import PreparedData
from blade.align.config import AlignConfig, RolloutConfig
from blade.align.loop import align
from blade.align.rollout import context_rows, reference_rollouts
from blade.data import load_prepared
from blade.errors import ConfigError
from blade.eval.config import EvalConfig
from blade.experiment import resolve
from blade.model.config import PolicyConfig
from blade.rewards import ListReward, RewardConfig
from blade.train.config import SFTConfig
from blade.train.sft import train_sft
from tests.helpers import tiny_dataset
from tests.objectives import reads_a_subset, shipped_objectives, smoke_method

SMALL_POLICY = PolicyConfig(hidden=32, heads=2, kv_heads=1, intermediate=64)
REWARD = RewardConfig(weights={"ndcg": 1.0, "fairness": 0.5})


@pytest.fixture(scope="module")
def sft_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("align")
    data = tiny_dataset(root / "data")
    train_sft(PreparedData.load(data), root / "sft", SMALL_POLICY, SFTConfig(epochs=2, batch_size=32, warmup_steps=5), seed=0)
    return data, root / "sft"


def test_rollouts_hold_m_scored_lists_per_context(sft_run, tmp_path):
    data, sft = sft_run
    cfg = RolloutConfig(m=4, k=5, max_contexts=50, chunk=16, batch_size=64)
    summary = reference_rollouts(PreparedData.load(data), sft / "best", tmp_path / "ref.parquet", cfg, REWARD, seed=3)
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


def test_rollouts_are_seeded_and_resume(sft_run, tmp_path, monkeypatch, capsys):
    data, sft = sft_run
    cfg = RolloutConfig(m=3, k=5, max_contexts=40, chunk=16, batch_size=64)
    reference_rollouts(PreparedData.load(data), sft / "best", tmp_path / "a.parquet", cfg, REWARD, seed=1)
    a = pd.read_parquet(tmp_path / "a.parquet")
    reference_rollouts(PreparedData.load(data), sft / "best", tmp_path / "b.parquet", cfg, REWARD, seed=1)
    pd.testing.assert_frame_equal(a, pd.read_parquet(tmp_path / "b.parquet"))
    # A killed run left its first chunk behind: the restart keeps it and writes only the rest.
    import blade.align.rollout as rollout

    def killed_after(n):
        written = []

        def write(path, frame):
            if len(written) == n:
                raise KeyboardInterrupt("killed")
            written.append(path)
            return real_write(path, frame)
        return write, written

    real_write = rollout.write_parquet
    kill, _ = killed_after(1)
    monkeypatch.setattr(rollout, "write_parquet", kill)
    with pytest.raises(KeyboardInterrupt):
        reference_rollouts(PreparedData.load(data), sft / "best", tmp_path / "c.parquet", cfg, REWARD, seed=1)
    resume, written = killed_after(-1)
    monkeypatch.setattr(rollout, "write_parquet", resume)
    reference_rollouts(PreparedData.load(data), sft / "best", tmp_path / "c.parquet", cfg, REWARD, seed=1)
    assert [p.name for p in written] == ["chunk000001.parquet", "chunk000002.parquet", "c.parquet"]
    pd.testing.assert_frame_equal(a, pd.read_parquet(tmp_path / "c.parquet"))
    # chunks a run of another seed left behind are not reused
    kill, _ = killed_after(1)
    monkeypatch.setattr(rollout, "write_parquet", kill)
    with pytest.raises(KeyboardInterrupt):
        reference_rollouts(PreparedData.load(data), sft / "best", tmp_path / "e.parquet", cfg, REWARD, seed=2)
    monkeypatch.setattr(rollout, "write_parquet", real_write)
    capsys.readouterr()
    reference_rollouts(PreparedData.load(data), sft / "best", tmp_path / "e.parquet", cfg, REWARD, seed=1)
    assert "other options or inputs; removing them" in capsys.readouterr().out
    pd.testing.assert_frame_equal(a, pd.read_parquet(tmp_path / "e.parquet"))
    reference_rollouts(PreparedData.load(data), sft / "best", tmp_path / "d.parquet", cfg, REWARD, seed=2)
    assert not a["items"].equals(pd.read_parquet(tmp_path / "d.parquet")["items"]), "another seed gave the same lists"


def test_one_draw_scored_under_several_reward_settings(sft_run, tmp_path):
    """Rollouts for two reward settings from one draw: each file equals its single-setting run
    (same lists, its own rewards), and the settings' files hold the same lists."""
    from blade.align.rollout import reference_rollouts_scored

    data, sft = sft_run
    cfg = RolloutConfig(m=3, k=5, max_contexts=40, chunk=16, batch_size=64)
    other = RewardConfig(weights={"ndcg": 1.0, "diversity": 0.5})
    reference_rollouts_scored(PreparedData.load(data), sft / "best", {"f": (tmp_path / "f.parquet", REWARD),
                                                   "d": (tmp_path / "d.parquet", other)}, cfg, seed=1)
    for name, reward in (("f", REWARD), ("d", other)):
        reference_rollouts(PreparedData.load(data), sft / "best", tmp_path / f"{name}_alone.parquet", cfg, reward, seed=1)
        alone, shared = (pd.read_parquet(tmp_path / f) for f in (f"{name}_alone.parquet", f"{name}.parquet"))
        pd.testing.assert_frame_equal(alone, shared)
    f, d = pd.read_parquet(tmp_path / "f.parquet"), pd.read_parquet(tmp_path / "d.parquet")
    assert f["items"].map(list).equals(d["items"].map(list)) and not np.allclose(f["reward"], d["reward"])


@pytest.fixture(scope="module")
def rollouts(sft_run, tmp_path_factory):
    data, sft = sft_run
    path = tmp_path_factory.mktemp("ref") / "ref.parquet"
    reference_rollouts(PreparedData.load(data), sft / "best", path, RolloutConfig(m=8, k=10, max_contexts=200), REWARD, seed=0)
    return path


def _align(sft_run, rollouts, out, steps, method=None, reward=None, **kw):
    data, sft = sft_run
    kw = {"select_metric": "ndcg@10", "grad_norm_every": 1, **kw}
    cfg = AlignConfig(steps=steps, contexts_per_step=6, group_size=4, k=10, eval_every=2, lr=1e-3, **kw)
    return align(PreparedData.load(data), sft, rollouts, out, Method.from_entry(method or {"objective": "blade"}, "method"), cfg, reward or REWARD, seed=0,
                 evaluation=EvalConfig(selection_rows=60))


def test_alignment_logs_diagnostics_every_step_and_selects_on_valid(sft_run, rollouts, tmp_path):
    summary = _align(sft_run, rollouts, tmp_path / "run", steps=4)
    diag = pd.read_parquet(tmp_path / "run" / "diagnostics.parquet")
    assert diag["step"].tolist() == [1, 2, 3, 4]
    for col in ("loss", "loss_align", "loss_penalty", "grad_norm", "grad_norm_align", "weight_spread", "ess",
                "saturated_frac", "signal_std", "kl", "reward_mean", "reward_max", "reward_bon_group", "logp_drift",
                "reward/ndcg", "reward/fairness", "seconds/rollout", "seconds/score", "seconds/forward",
                "seconds/objective", "seconds/backward", "seconds/optimizer"):
        assert col in diag and np.isfinite(diag[col]).all(), col
    # the training forward scores the sampled lists under the distribution they were drawn from
    assert (diag["logp_drift"] < 1e-4).all(), diag["logp_drift"]
    assert ((diag["reward_mean"] <= diag["reward_bon_group"] + 1e-12)
            & (diag["reward_bon_group"] <= diag["reward_max"] + 1e-12)).all()
    np.testing.assert_allclose(diag["loss"], diag["loss_align"] + diag["loss_penalty"], rtol=1e-6)
    # step 1: π_θ = π_ref, where the k3 penalty has zero gradient — the total norm is the alignment term's;
    # later the penalty pulls too, and the two differ
    assert diag["grad_norm"].iloc[0] == pytest.approx(diag["grad_norm_align"].iloc[0], rel=1e-4)
    assert (diag["grad_norm"].iloc[1:] != diag["grad_norm_align"].iloc[1:]).all()
    assert ((diag["ess"] >= 1 - 1e-9) & (diag["ess"] <= 4 + 1e-9)).all()  # 1 ≤ ESS ≤ G
    assert (diag["kl"].iloc[1:] > 0).all() and diag["kl"].iloc[0] == pytest.approx(0, abs=1e-6)  # step 1: π_θ = π_ref
    assert (diag["invalid_rate"] == 0).all()
    curve = pd.read_parquet(tmp_path / "run" / "valid_curve.parquet")
    assert curve["step"].tolist() == [0, 2, 4]
    assert summary["valid/ndcg@10"] == pytest.approx(curve["valid/ndcg@10"].max())
    assert summary["best_step"] == int(curve["step"][curve["valid/ndcg@10"].idxmax()])
    assert (tmp_path / "run" / "best" / "model.safetensors").is_file()
    # a snapshot of the policy at every evaluation step, the selected one equal to best/
    snaps = sorted(p.name for p in (tmp_path / "run" / "snapshots").iterdir())
    assert snaps == ["step000000", "step000002", "step000004"]
    snap = tmp_path / "run" / "snapshots"
    assert _same_weights(snap / f"step{summary['best_step']:06d}", tmp_path / "run" / "best")
    assert not _same_weights(snap / "step000002", snap / "step000004")


def test_killed_alignment_resumes_to_the_same_result(sft_run, rollouts, tmp_path):
    straight = _align(sft_run, rollouts, tmp_path / "a", steps=4)
    _align(sft_run, rollouts, tmp_path / "b", steps=2)  # "killed" after its step-2 checkpoint
    resumed = _align(sft_run, rollouts, tmp_path / "b", steps=4)
    assert resumed == straight
    da = pd.read_parquet(tmp_path / "a" / "diagnostics.parquet").filter(regex="^(?!seconds)")
    db = pd.read_parquet(tmp_path / "b" / "diagnostics.parquet").filter(regex="^(?!seconds)")
    pd.testing.assert_frame_equal(da, db[da.columns], rtol=1e-5)
    for step in ("step000002", "step000004"):  # snapshots written before the "kill" and after the resume
        assert _same_weights(tmp_path / "a" / "snapshots" / step, tmp_path / "b" / "snapshots" / step)


def test_a_checkpoint_of_other_options_or_inputs_is_not_resumed(sft_run, rollouts, tmp_path, capsys):
    _align(sft_run, rollouts, tmp_path / "b", steps=2, weight_decay=0.1)  # another run "killed" after step 2
    capsys.readouterr()
    assert _align(sft_run, rollouts, tmp_path / "b", steps=4) == _align(sft_run, rollouts, tmp_path / "a", steps=4)
    assert "removing it and starting afresh" in capsys.readouterr().out
    assert _same_weights(tmp_path / "a" / "best", tmp_path / "b" / "best")
    # other rollouts (a changed input, same options): afresh again
    other = tmp_path / "other.parquet"
    frame = pd.read_parquet(rollouts)
    frame.iloc[::-1].reset_index(drop=True).to_parquet(other)
    _align(sft_run, other, tmp_path / "b", steps=4)
    assert "removing it and starting afresh" in capsys.readouterr().out


def _same_weights(a, b) -> bool:
    """Two saved policies hold the same tensors (to float rounding: resumed runs agree to ~1e-6)."""
    from safetensors.numpy import load_file

    wa, wb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    return wa.keys() == wb.keys() and all(np.allclose(wa[k], wb[k], rtol=1e-5, atol=1e-7) for k in wa)


def test_static_estimator_runs_in_the_same_loop(sft_run, rollouts, tmp_path):
    _align(sft_run, rollouts, tmp_path / "s", steps=2, method={"objective": "blade", "estimator": "static"})
    diag = pd.read_parquet(tmp_path / "s" / "diagnostics.parquet")
    assert len(diag) == 2 and np.isfinite(diag["weight_spread"]).all()


def test_list_length_must_match_the_rollouts(sft_run, rollouts, tmp_path):
    data, sft = sft_run
    with pytest.raises(ConfigError, match="rollout.k = align.k"):
        align(PreparedData.load(data), sft, rollouts, tmp_path / "x", Method.from_entry({"objective": "blade"}, "method"), AlignConfig(k=5, select_metric="ndcg@5"),
              REWARD, seed=0, evaluation=EvalConfig(selection_rows=60))


@pytest.mark.parametrize("patch, message", [
    ({"rollout": {"k": 5}}, "rollout.k=5 and align.k=10 differ"),
    ({"run": {"datasets": ["s"], "methods": ["bladee"]}}, "run.methods names 'bladee'"),
    ({"methods": {"blade": {"objective": "blade", "kapa0": 2}}}, "methods.blade.kapa0: unknown option — did you mean 'kappa0'"),
    ({"methods": {"blade": {"objective": "dpo_typo"}}}, "unknown method 'dpo_typo'"),
    ({"align": {"group_size": 1}}, "group_size must be >= 2"),
    ({"rewards": {"ndcg": {"weights": {"ndgc": 1.0}}}}, "rewards.ndcg: weights.ndgc: unknown reward"),
    ({"run": {"datasets": ["s"], "rewards": ["fair"]}}, "run.rewards names 'fair'"),
    ({"align": {"temperature": 0}}, "align: temperature must be a finite number > 0"),
    ({"rollout": {"temperature": 0.0}}, "rollout: temperature must be a finite number > 0"),
    ({"align": {"select_metric": "ndcg@20"}}, "select_metric must be 'reward', recall@N or ndcg@N"),
    ({"rewards": {"none": {"weights": {"ndcg": 1.0}}}}, "rewards.none: reserved"),
])
def test_experiment_config_checks_alignment_sections(patch, message):
    config = {"run": {"datasets": ["s"], "methods": ["blade"]},
              "datasets": {"s": {"source": "synthetic"}},
              "methods": {"blade": {"objective": "blade"}}}
    config.update(patch)
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(".", r"\.")):
        resolve(config)


def test_resolved_config_fills_every_default_once():
    exp = resolve({"run": {"datasets": ["s"], "methods": ["b"]}, "datasets": {"s": {"source": "synthetic"}},
                   "methods": {"b": {"objective": "blade", "estimator": "static"}}})
    assert exp.methods["b"] == {"objective": "blade", **{**exp.methods["b"], "estimator": "static"}}
    assert exp.methods["b"]["kappa0"] == 4.0 and exp.align.steps == AlignConfig().steps
    assert exp.evaluate.ks == EvalConfig().ks and exp.rewards["ndcg"].weights == {"ndcg": 1.0}


def test_alignment_refuses_rollouts_of_another_reward_setting(sft_run, rollouts, tmp_path):
    other = RewardConfig(weights={"ndcg": 1.0, "diversity": 0.5})
    with pytest.raises(ConfigError, match="scored with reward .*fairness.* but this run's reward setting is .*diversity"):
        _align(sft_run, rollouts, tmp_path / "x", steps=1, reward=other)


def test_selection_reads_the_reward_setting_on_valid(sft_run, rollouts, tmp_path):
    summary = _align(sft_run, rollouts, tmp_path / "r", steps=2, select_metric="reward")
    curve = pd.read_parquet(tmp_path / "r" / "valid_curve.parquet")
    # the valid reward is the setting's weighted sum of its parts, with NDCG@10 logged beside it
    np.testing.assert_allclose(curve["valid/reward"], curve["valid/reward/ndcg"] + 0.5 * curve["valid/reward/fairness"],
                               rtol=1e-9)
    assert "valid/ndcg@10" in curve and summary["valid/reward"] == pytest.approx(curve["valid/reward"].max())
    assert summary["best_step"] == int(curve["step"][curve["valid/reward"].idxmax()])


# Every shipped objective, found by scanning the registry (tests/objectives.py): a new
# baselines/<name>.py is trained, resumed and scored here without being named.
METHODS = {name: smoke_method(name) for name in shipped_objectives()}


@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_method_trains_in_the_one_loop_and_resumes_exactly(sft_run, rollouts, tmp_path, name):
    """Each objective runs through the same loop (offline ones on the stored rollouts, BOND with its
    EMA anchor), logs finite diagnostics and the alignment-term gradient norm, is scored on valid
    for selection, and a run killed after its step-2 checkpoint resumes to the uninterrupted result
    (anchor included)."""
    method = METHODS[name]
    straight = _align(sft_run, rollouts, tmp_path / "a", steps=4, method=method)
    assert 0 <= straight["valid/ndcg@10"] <= 1, (name, straight)
    diag = pd.read_parquet(tmp_path / "a" / "diagnostics.parquet")
    for col in ("loss", "loss_align", "grad_norm", "grad_norm_align", "reward_mean"):
        assert col in diag and np.isfinite(diag[col]).all(), (name, col)
    assert (diag["grad_norm_align"] > 0).any(), name  # the alignment term moves the policy
    _align(sft_run, rollouts, tmp_path / "b", steps=2, method=method)
    assert _align(sft_run, rollouts, tmp_path / "b", steps=4, method=method) == straight
    resumed = pd.read_parquet(tmp_path / "b" / "diagnostics.parquet").filter(regex="^(?!seconds)")
    pd.testing.assert_frame_equal(diag.filter(regex="^(?!seconds)"), resumed[diag.filter(regex="^(?!seconds)").columns],
                                  rtol=1e-5)


def test_alignment_gradient_norm_is_measured_every_n_steps(sft_run, rollouts, tmp_path):
    _align(sft_run, rollouts, tmp_path / "g", steps=4, grad_norm_every=2)
    diag = pd.read_parquet(tmp_path / "g" / "diagnostics.parquet")
    measured = diag["grad_norm_align"].notna().tolist()
    assert measured == [True, True, False, True]  # step 1, then every 2nd step
    assert np.isfinite(diag["grad_norm"]).all()


@pytest.mark.parametrize("name", [name for name in METHODS if reads_a_subset(name)])
def test_offline_methods_score_only_the_lists_their_loss_reads(sft_run, rollouts, tmp_path, monkeypatch, name):
    """Scoring only the lists an offline loss reads (its ``lists_read``: DPO's best and worst of M)
    changes no number: the same losses, gradient norms and selection as scoring all M lists."""
    from blade.align.registry import objective_class

    method = METHODS[name]
    picked = _align(sft_run, rollouts, tmp_path / "picked", steps=3, method=method)
    cls = objective_class(name)
    seen = []
    monkeypatch.setattr(cls, "lists_read", lambda self, rewards, rows, step: seen.append(rewards.shape) or None)
    every = _align(sft_run, rollouts, tmp_path / "every", steps=3, method=method)
    assert seen and seen[0][1] == 8  # the hook saw all M = 8 stored lists of each context
    assert picked == every
    # every logged number but the timings: the losses, gradient norms and the method's own diagnostics
    a, b = (pd.read_parquet(tmp_path / d / "diagnostics.parquet").filter(regex="^(?!seconds)")
            for d in ("picked", "every"))
    # the same numbers up to float32 summation order (2 of 8 lists per forward instead of 8): |Δ| ~ 1e-6 on margins ~ 0.05
    pd.testing.assert_frame_equal(a, b, rtol=1e-5, atol=2e-6)


def test_a_read_mask_keeps_the_picked_lists_and_zeroes_the_rest(sft_run):
    """The pair of 4 lists scored alone equals its rows of all 4 scored together; the unread rows
    are 0 with mask False, and the gradient reaches only the read lists."""
    import torch

    from blade.align.loop import _scored
    from blade.model.policy import Policy

    data, sft = sft_run
    policy, ref = Policy.load(sft / "best"), Policy.load(sft / "best")
    items, splits, _ = load_prepared(data)
    hist = splits["train"]["history"].iloc[0]
    pool = items["item_id"].to_numpy()
    prompts = [policy.codec.prompt(hist, 5)] * 4
    conts = [policy.codec.list_tokens(pool[i:i + 5].tolist()) for i in range(4)]
    read = np.array([[True, False, False, True]])
    full_lp, full_mask, full_ref = _scored(policy, ref, prompts, conts, None)
    lp, mask, ref_lp = _scored(policy, ref, prompts, conts, read)
    torch.testing.assert_close(lp[[0, 3]], full_lp[[0, 3]], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ref_lp[[0, 3]], full_ref[[0, 3]], rtol=1e-5, atol=1e-6)
    assert mask[[0, 3]].equal(full_mask[[0, 3]]) and not mask[[1, 2]].any()
    assert (lp[[1, 2]] == 0).all() and (ref_lp[[1, 2]] == 0).all()
    params = [q for q in policy.model.parameters() if q.requires_grad]
    g_read = torch.autograd.grad(lp.sum(), params, allow_unused=True)
    g_full = torch.autograd.grad(full_lp[[0, 3]].sum(), params, allow_unused=True)
    for a, b in zip(g_read, g_full):
        if a is None or b is None:
            assert a is None and b is None
        else:
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
