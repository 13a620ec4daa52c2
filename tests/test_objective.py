"""The BLADE objective against exact gradients and hand-computed values: the forward-KL loss is the
self-normalised importance-weighted estimate of ∇KL(π* ‖ π_θ) (exact when the group enumerates the
policy), the backward loss is REINFORCE with a leave-one-out baseline, k3 is KL(π ‖ π_ref), the
Jeffreys mix interpolates, and the shared diagnostics have their hand-computed values. Plus the
registry, config validation and the evidence state across a resume."""

from __future__ import annotations

import json
import math
import re
import typing

import numpy as np
import pandas as pd
import pytest
import torch

from blade.align.estimators import ESTIMATORS, RefPrior, make_estimator
from blade.align.blade_objective import BladeConfig, BladeObjective, EstimatorName
from blade.align.objective import RolloutBatch, bon_diagnostics, k3_kl, reward_diagnostics
from blade.align.registry import OBJECTIVES, build_objective
from blade.config import from_dict
from blade.errors import ConfigError


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def prior_from(ref: list[list[float]]) -> RefPrior:
    rows = [b for b, rs in enumerate(ref) for _ in rs]
    samples = [j for rs in ref for j in range(len(rs))]
    df = pd.DataFrame({"row": np.array(rows, dtype=np.int64), "sample": samples,
                       "reward": [float(x) for rs in ref for x in rs]})
    return RefPrior.from_frame(df, len(ref))


def categorical_batch(theta: torch.Tensor, ys: np.ndarray, rewards: np.ndarray, step: int = 0,
                      ref_shift: float = 0.0) -> RolloutBatch:
    """Each 'list' y is one token from a categorical policy softmax(θ); a second token slot is
    padding holding a θ-dependent junk value, which the mask must remove."""
    B, G = ys.shape
    logp1 = torch.log_softmax(theta, -1)[torch.as_tensor(ys)]                    # (B, G)
    token_logp = torch.stack([logp1, 7.0 * theta.sum() * torch.ones_like(logp1)], -1)  # (B, G, 2)
    mask = torch.zeros(B, G, 2, dtype=torch.bool)
    mask[..., 0] = True
    ref = (token_logp.detach() + ref_shift).masked_fill(~mask, 0.0)
    return RolloutBatch(rows=np.arange(B), rewards=torch.as_tensor(rewards, dtype=theta.dtype),
                        token_logp=token_logp, ref_token_logp=ref, old_token_logp=token_logp.detach(),
                        mask=mask, step=step)


def summed(objective, batch: RolloutBatch) -> tuple[torch.Tensor, dict[str, float]]:
    """What the loop steps on: the alignment term plus the regulariser, and the diagnostics."""
    align, penalty, diag = objective(batch)
    assert align.dim() == 0 and penalty.dim() == 0
    return align + penalty, diag


def grad_of(objective, theta: torch.Tensor, *args) -> np.ndarray:
    theta = theta.clone().requires_grad_(True)
    loss, _ = summed(objective, categorical_batch(theta, *args))
    (g,) = torch.autograd.grad(loss, theta)
    return g.numpy()


# ---- (d) forward KL = SNIS estimate of the exact gradient ---------------------------------------


@pytest.mark.parametrize("estimator", ["static", "dp", "nig"])
def test_forward_loss_gradient_is_exact_forward_kl_when_group_enumerates_policy(estimator):
    """π_θ = [1, 2, 1, 4]/8, and the group holds each list y exactly 8·π_θ(y) times: the SNIS
    weights then put exactly π*(y) ∝ π_θ(y)·F(r_y)^(N-1) on y and the -1/G baseline sums to
    E_π[∇log π] = 0, so the loss gradient must equal ∇_θ KL(π* ‖ π_θ) = -Σ_y π*(y)·∇log π_θ(y)
    = π_θ - π* (θ are the logits) to float64 precision. Two contexts: the loss means over them."""
    mult = np.array([1, 2, 1, 4])
    theta = torch.tensor(np.log(mult) + 0.3, dtype=torch.float64)
    pi = mult / mult.sum()
    ys = np.tile(np.repeat(np.arange(4), mult), (2, 1))                           # (2, 8)
    reward_of = np.array([[0.2, 0.9, 0.5, 0.1], [0.7, 0.7, 0.0, 1.3]])            # per context, per y
    rewards = np.take_along_axis(reward_of, ys, 1)
    prior = prior_from([[0.0, 0.3, 0.6, 0.8, 0.8], [0.1, 0.5, 0.9]])
    N = 5
    obj = BladeObjective(BladeConfig(estimator=estimator, n=N, beta_kl=0.0), prior)
    log_f = make_estimator(estimator, 4.0, 1e-4)(rewards, prior, np.arange(2))          # (2, 8), one F per y
    if estimator == "static":  # F̂ by hand, independent of the estimator code
        hand = np.array([[(1 + sum(v < r for v in ref) + 0.5 * sum(v == r for v in ref)) / (len(ref) + 1)
                          for r in rw] for rw, ref in zip(rewards, [[0.0, 0.3, 0.6, 0.8, 0.8], [0.1, 0.5, 0.9]])])
        np.testing.assert_allclose(np.exp(log_f), hand)
    exact = []
    for b in range(2):
        f_y = np.exp(np.array([log_f[b][ys[b] == y][0] for y in range(4)]))
        target = pi * f_y ** (N - 1)
        target /= target.sum()                                                    # π*(y)
        exact.append(pi - target)
    exact = np.mean(exact, 0)
    got = grad_of(obj, theta, ys, rewards)
    np.testing.assert_allclose(got, exact, rtol=1e-10, atol=1e-12,
                               err_msg=f"{estimator}: autograd of the forward loss != exact ∇KL(π* ‖ π_θ)")
    # the k3 penalty adds nothing at π_θ = π_ref (k3 has zero gradient there)
    obj_kl = BladeObjective(BladeConfig(estimator=estimator, n=N, beta_kl=0.5), prior)
    np.testing.assert_allclose(grad_of(obj_kl, theta, ys, rewards), exact, rtol=1e-10, atol=1e-12)


def test_forward_loss_gradient_matches_exact_gradient_with_many_sampled_rollouts():
    """The usual on-policy case: G = 200 000 lists sampled from π_θ; SNIS is consistent."""
    rng = np.random.default_rng(0)
    K, G, N = 5, 200_000, 8
    theta = torch.tensor(rng.normal(size=K), dtype=torch.float64)
    pi = torch.softmax(theta, 0).numpy()
    ys = rng.choice(K, size=(1, G), p=pi)
    reward_of = np.array([0.1, 0.4, 0.45, 0.8, 1.2])
    ref = [0.0, 0.2, 0.4, 0.5, 0.9, 1.0]
    prior = prior_from([ref])
    f_y = np.array([(1 + sum(v < r for v in ref) + 0.5 * sum(v == r for v in ref)) / (len(ref) + 1)
                    for r in reward_of])
    target = pi * f_y ** (N - 1)
    target /= target.sum()
    obj = BladeObjective(BladeConfig(estimator="static", n=N, beta_kl=0.0), prior)
    got = grad_of(obj, theta, ys, reward_of[ys])
    np.testing.assert_allclose(got, pi - target, atol=0.01,
                               err_msg="forward loss gradient with 200k on-policy rollouts != exact ∇KL(π* ‖ π_θ)")


# ---- backward, jeffreys, k3 ---------------------------------------------------------------------


def _leaf_batch(rewards, T=2, seed=0, shift=0.0):
    g = torch.Generator().manual_seed(seed)
    B, G = rewards.shape
    token_logp = (-torch.rand(B, G, T, generator=g, dtype=torch.float64)).requires_grad_(True)
    mask = torch.ones(B, G, T, dtype=torch.bool)
    mask[..., -1] = False  # last slot is padding
    ref = (token_logp.detach() + shift).masked_fill(~mask, 0.0)
    return RolloutBatch(np.arange(B), torch.as_tensor(rewards), token_logp, ref, token_logp.detach(), mask, 0)


# reference [0, 1, 2, 3] (M = 4) and rewards 0.5, 1.5, 5: F̂ = 2/5, 3/5, 5/5
HAND_REF, HAND_R, HAND_F = [[0.0, 1.0, 2.0, 3.0]], np.array([[0.5, 1.5, 5.0]]), [0.4, 0.6, 1.0]


def test_backward_loss_gradient_is_reinforce_with_leave_one_out_baseline():
    prior = prior_from(HAND_REF)
    obj = BladeObjective(BladeConfig(estimator="static", n=3, loss="backward", beta_kl=0.0), prior)
    batch = _leaf_batch(HAND_R)
    loss, diag = summed(obj, batch)
    loss.backward()
    s = [2 * math.log(f) for f in HAND_F]  # (N-1)·log F
    adv = [s[0] - (s[1] + s[2]) / 2, s[1] - (s[0] + s[2]) / 2, s[2] - (s[0] + s[1]) / 2]
    want = torch.zeros(1, 3, 2, dtype=torch.float64)
    want[0, :, 0] = torch.tensor([-a / 3 for a in adv])  # -(1/G)·A_i on real tokens, 0 on padding
    torch.testing.assert_close(batch.token_logp.grad, want, msg="backward gradient != -(1/G)·A_i·∇log π")
    logp = batch.logp.detach()[0]
    assert diag["loss_backward"] == pytest.approx(-sum(a * lp for a, lp in zip(adv, logp.tolist())) / 3)


def test_forward_loss_gradient_by_hand():
    prior = prior_from(HAND_REF)
    obj = BladeObjective(BladeConfig(estimator="static", n=3, beta_kl=0.0), prior)
    batch = _leaf_batch(HAND_R)
    summed(obj, batch)[0].backward()
    sq = [f**2 for f in HAND_F]  # w ∝ F^(N-1)
    w = [x / sum(sq) for x in sq]
    want = torch.zeros(1, 3, 2, dtype=torch.float64)
    want[0, :, 0] = torch.tensor([-(wi - 1 / 3) for wi in w])
    torch.testing.assert_close(batch.token_logp.grad, want, msg="forward gradient != -(w_i - 1/G)·∇log π")


def test_jeffreys_interpolates_forward_and_backward():
    prior = prior_from(HAND_REF)

    def run(loss, beta_j=0.5):
        batch = _leaf_batch(HAND_R)
        value, diag = summed(BladeObjective(BladeConfig(estimator="dp", n=4, loss=loss, beta_j=beta_j, beta_kl=0.0),
                                            prior), batch)
        value.backward()
        return value.item(), batch.token_logp.grad.clone(), diag

    fwd, g_fwd, _ = run("forward")
    bwd, g_bwd, _ = run("backward")
    for beta in (0.0, 0.3, 1.0):
        val, g, diag = run("jeffreys", beta)
        assert val == pytest.approx((1 - beta) * fwd + beta * bwd), f"jeffreys β={beta}: loss is not the mix"
        torch.testing.assert_close(g, (1 - beta) * g_fwd + beta * g_bwd, msg=f"jeffreys β={beta}: gradient")
        assert diag["loss_forward"] == pytest.approx(fwd) and diag["loss_backward"] == pytest.approx(bwd)


def test_k3_is_zero_at_the_reference_positive_otherwise_and_unbiased():
    lp = torch.log(torch.tensor([[[0.5, 0.25, 1.0]]]))
    mask = torch.tensor([[[True, True, False]]])
    assert k3_kl(lp, lp, mask).item() == 0.0, "k3 must be exactly 0 when π_θ = π_ref"
    ref = lp + torch.tensor([[[math.log(2.0), 0.0, 5.0]]])  # padding slot differs: must not count
    assert k3_kl(lp, ref, mask).item() == pytest.approx(1 - math.log(2)), "k3 = e^d - d - 1, d = ref - logp"
    # unbiased: E_{y~π}[k3(y)] = KL(π ‖ π_ref), exactly, by enumeration
    pi, pref = torch.tensor([0.1, 0.2, 0.3, 0.4]), torch.tensor([0.25, 0.25, 0.4, 0.1])
    per = k3_kl(pi.log()[None, :, None], pref.log()[None, :, None], torch.ones(1, 4, 1, dtype=torch.bool))
    assert (per[0] * pi).sum().item() == pytest.approx((pi * (pi / pref).log()).sum().item(), rel=1e-5)
    assert (per > 0).all()
    # in the objective: the KL diagnostic and β_kl·KL in the loss
    prior = prior_from(HAND_REF)
    for shift, positive in ((0.0, False), (0.3, True)):
        batch = _leaf_batch(HAND_R, shift=shift)
        align, penalty, diag = BladeObjective(BladeConfig(estimator="static", n=3, beta_kl=0.1), prior)(batch)
        loss = align + penalty
        assert align.item() == pytest.approx(diag["loss_forward"]), "the alignment term is the forward loss alone"
        assert penalty.item() == pytest.approx(0.1 * diag["kl"]), "the regulariser is β_kl·KL"
        assert (diag["kl"] > 0) == positive and diag["kl"] >= 0, f"shift {shift}: kl = {diag['kl']}"
        assert diag["kl"] == pytest.approx(math.exp(shift) - shift - 1)  # one real token per list
        assert loss.item() == pytest.approx(diag["loss_forward"] + 0.1 * diag["kl"])


@pytest.mark.parametrize("estimator", ["static", "nig", "dp"])
@pytest.mark.parametrize("loss", ["forward", "backward", "jeffreys"])
@pytest.mark.parametrize("kappa0", [0.0, 4.0, math.inf])
def test_loss_is_finite_with_all_equal_rewards(estimator, loss, kappa0):
    prior = prior_from([[0.0] * 16, [0.0] * 16])  # zero reference variance too
    obj = BladeObjective(BladeConfig(estimator=estimator, loss=loss, kappa0=kappa0, gamma=0.5), prior)
    for step in range(2):  # the second step sees evidence
        batch = _leaf_batch(np.zeros((2, 8)), seed=step)
        value, diag = summed(obj, RolloutBatch(batch.rows, batch.rewards, batch.token_logp, batch.ref_token_logp,
                                               batch.old_token_logp, batch.mask, step))
        value.backward()
        assert math.isfinite(value.item()) and torch.isfinite(batch.token_logp.grad).all(), f"step {step}: {diag}"
        assert all(math.isfinite(v) for v in diag.values()), diag
        # equal rewards carry no preference: uniform weights, zero advantages, zero alignment gradient
        assert diag["weight_spread"] == pytest.approx(0.0, abs=1e-12)
        assert batch.token_logp.grad.abs().max().item() == pytest.approx(0.0, abs=1e-12)


# ---- diagnostics --------------------------------------------------------------------------------


def test_bon_diagnostics_hand_values():
    f = np.array([[0.995, 0.5], [0.99, 0.2]])
    w = np.array([[0.75, 0.25], [0.5, 0.5]])
    d = bon_diagnostics(np.log(f), w, n=3, rewards=np.array([[1.0, 2.0], [3.0, 0.0]]), kl=0.25, loss_forward=-1.5)
    assert d["weight_spread"] == pytest.approx((0.5 + 0.0) / 2)
    assert d["ess"] == pytest.approx((1 / (0.75**2 + 0.25**2) + 2.0) / 2)
    assert d["saturated_frac"] == pytest.approx(2 / 4), "F ≥ 0.99 counts 0.995 and 0.99"
    # within-group std (ddof 0) of two values is half their distance: |2·log(f0/f1)|/2
    assert d["signal_std"] == pytest.approx((math.log(0.995 / 0.5) + math.log(0.99 / 0.2)) / 2)
    assert (d["reward_mean"], d["reward_max"], d["kl"], d["loss_forward"]) == pytest.approx((1.5, 3.0, 0.25, -1.5))
    assert d["reward_bon_group"] == pytest.approx((2.0 + 3.0) / 2), "mean over contexts of each group's best"
    assert d["tied_frac"] == 0.0
    tied = bon_diagnostics(np.log(f), w, n=3, rewards=np.array([[1.0, 1.0], [3.0, 0.0]]))
    assert tied["tied_frac"] == pytest.approx(1 / 2), "one of two groups has all-equal rewards"
    # the reward keys are the ones every method logs (reward_diagnostics, tensor or numpy alike), plus
    # reward_max, in the diagnostics' column order
    r = torch.tensor([[1.0, 2.0], [3.0, 0.0]], dtype=torch.float32)
    assert reward_diagnostics(r) == {k: d[k] for k in ("reward_mean", "reward_bon_group", "tied_frac")}
    assert list(d) == ["weight_spread", "ess", "saturated_frac", "signal_std", "kl", "reward_mean", "reward_max",
                       "reward_bon_group", "tied_frac", "loss_forward"]


def test_objective_diagnostics_on_a_hand_made_batch():
    prior = prior_from(HAND_REF)
    batch = _leaf_batch(HAND_R)
    with torch.no_grad():
        old = batch.token_logp.detach().clone()
        old[0, 0, 0] -= 0.3  # the sampler saw list 0 with a different log-prob
    batch.old_token_logp = old
    loss, penalty, d = BladeObjective(BladeConfig(estimator="static", n=3, beta_kl=0.0), prior)(batch)
    assert penalty.item() == 0.0 and not penalty.requires_grad, "β_kl = 0: no regulariser, no second backward"
    sq = [f**2 for f in HAND_F]
    w = np.array([x / sum(sq) for x in sq])
    assert d["weight_spread"] == pytest.approx(np.abs(w - 1 / 3).sum())
    assert d["ess"] == pytest.approx(1 / (w**2).sum())
    assert d["saturated_frac"] == pytest.approx(1 / 3)
    assert d["signal_std"] == pytest.approx(np.std([2 * math.log(f) for f in HAND_F]))
    assert (d["reward_mean"], d["reward_max"], d["reward_bon_group"]) == pytest.approx((2.0 + 1 / 3, 5.0, 5.0))
    assert d["logp_drift"] == pytest.approx(0.3 / 3)
    assert d["loss"] == pytest.approx(loss.item()) and d["kl"] == 0.0
    assert "loss_backward" not in d, "only the losses in use are logged"


# ---- registry, config, state ----------------------------------------------------------------------


def test_registry_builds_blade_from_a_config_mapping_and_fails_loudly():
    prior = prior_from(HAND_REF)
    assert OBJECTIVES["blade"] is BladeObjective
    obj = build_objective("blade", {"estimator": "nig", "kappa0": math.inf, "gamma": 0.5}, prior)
    assert isinstance(obj, BladeObjective) and obj.config.kappa0 == math.inf and obj.config.estimator == "nig"
    assert build_objective("blade", None, prior).config == BladeConfig()
    with pytest.raises(ConfigError, match="unknown method 'no_such_method'.*blade"):
        build_objective("no_such_method", {}, prior)
    with pytest.raises(ConfigError, match="did you mean 'kappa0'"):
        build_objective("blade", {"kapa0": 1.0}, prior)
    with pytest.raises(ConfigError, match="objective.blade.estimator"):
        build_objective("blade", {"estimator": "gauss"}, prior)
    for bad in ({"gamma": 1.5}, {"kappa0": -1.0}, {"n": 1}, {"beta_j": 2.0}, {"var_floor": 0.0}, {"beta_kl": -0.1}):
        key = next(iter(bad))
        with pytest.raises(ConfigError, match=f"objective.blade: {key}"):
            build_objective("blade", bad, prior)


def test_estimator_and_loss_choices_are_written_once():
    """One list of choices each: the config type's (which from_dict checks, naming them) is the one a
    directly built config is checked against, and the estimator names are the estimators'."""
    assert set(typing.get_args(EstimatorName)) == set(ESTIMATORS)
    for key, choices in (("estimator", ["dp", "nig", "static"]), ("loss", ["backward", "forward", "jeffreys"])):
        with pytest.raises(ConfigError, match=rf"objective.blade.{key}: 'x' is not allowed; choose one of"):
            from_dict(BladeConfig, {key: "x"}, "objective.blade")
        with pytest.raises(ValueError, match=re.escape(f"{key} must be one of {choices}")):
            BladeConfig(**{key: "x"})


def test_blade_target_kind_follows_its_estimator():
    """What the analysis reads (analysis/rows.py is_static): F̂_ref alone is the static ablation, the
    posteriors are BLADE's dynamic target; no options are the defaults (dp)."""
    assert BladeObjective.target_kind(None) == BladeObjective.target == "dynamic"
    assert {e: BladeObjective.target_kind(BladeConfig(estimator=e)) for e in ("dp", "nig", "static")} == \
        {"dp": "dynamic", "nig": "dynamic", "static": "static"}


def test_evidence_state_survives_a_json_round_trip_resume():
    prior = prior_from([[0.0, 0.1, 0.2, 0.3], [0.5, 0.5, 0.6, 0.9]])
    rng = np.random.default_rng(4)
    rewards = [rng.uniform(0, 1, size=(2, 4)) for _ in range(3)]
    cfg = BladeConfig(estimator="dp", gamma=0.7)

    a = BladeObjective(cfg, prior)
    la = [a(_at(_leaf_batch(rewards[t], seed=t), t))[2]["loss"] for t in range(2)]
    state = json.loads(json.dumps(a.state_dict()))
    b = BladeObjective(cfg, prior)
    b.load_state_dict(state)
    third_a = a(_at(_leaf_batch(rewards[2], seed=2), 2))[2]
    third_b = b(_at(_leaf_batch(rewards[2], seed=2), 2))[2]
    assert third_a == pytest.approx(third_b), "a resumed objective must continue exactly"
    fresh = BladeObjective(cfg, prior)(_at(_leaf_batch(rewards[2], seed=2), 2))[2]
    assert fresh["weight_spread"] != pytest.approx(third_a["weight_spread"]), "evidence must change the target"
    assert la[0] != la[1]
    assert BladeObjective(BladeConfig(gamma=0.0), prior).state_dict() == {}


def _at(batch: RolloutBatch, t: int) -> RolloutBatch:
    batch.step = t
    return batch
