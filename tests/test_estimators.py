"""Property tests of the BoN target estimators (docs/method.md (2.2), (3.1), (3.2)): the two failures of the static
estimator and how ``nig``/``dp`` avoid them, the conjugate algebra of ``nig`` against independent
computations, the empirical CDF by hand, finiteness, and the evidence buffer."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from blade.align.estimators import (
    LOG_F_FLOOR,
    EvidenceBuffer,
    RefPrior,
    make_estimator,
    nig_posterior,
    ref_cdf,
)
from blade.align.objective import bon_weights
from blade.errors import DataError

ESTIMATOR_NAMES = ["static", "nig", "dp"]


def _est(name: str, kappa0: float = 4.0, var_floor: float = 1e-4):
    """The estimator with the test's prior strength (the library has no defaults: BladeConfig owns them)."""
    return make_estimator(name, kappa0, var_floor)


def prior_from(ref: np.ndarray | list[list[float]], n_rows: int | None = None) -> RefPrior:
    """A prior whose context b has reference rewards ``ref[b]`` (ragged lists allowed)."""
    rows, samples, rewards = [], [], []
    for b, rs in enumerate(ref):
        for j, x in enumerate(rs):
            rows.append(b), samples.append(j), rewards.append(float(x))
    df = pd.DataFrame({"row": np.array(rows, dtype=np.int64), "sample": samples, "reward": rewards})
    return RefPrior.from_frame(df, n_rows if n_rows is not None else len(ref))


def spread(w: np.ndarray) -> np.ndarray:
    return np.abs(w - 1.0 / w.shape[1]).sum(1)


# ---- (a) indiscriminate supervision -----------------------------------------------------------


def test_above_reference_max_static_is_flat_nig_and_dp_rank():
    rng = np.random.default_rng(1)
    B, M, G, N = 6, 16, 8, 8
    ref = rng.uniform(0.0, 1.0, size=(B, M))
    prior = prior_from(ref)
    rows = np.arange(B)
    # every current reward beats everything the reference produced, all distinct
    r = ref.max(1, keepdims=True) + 0.05 + np.sort(rng.uniform(0.0, 0.8, size=(B, G)), axis=1)
    rng.permuted(r, axis=1, out=r)  # the order must come from the rewards, not the position
    w_static = bon_weights(_est("static", 4.0)(r, prior, rows), N)
    assert np.allclose(spread(w_static), 0.0, atol=1e-15), (
        f"static: every candidate above the reference max has F̂ = 1, so weights must be uniform; "
        f"spread per context {spread(w_static)}")
    for name in ("nig", "dp"):
        w = bon_weights(_est(name, 4.0)(r, prior, rows), N)
        order = np.argsort(r, axis=1)
        w_sorted = np.take_along_axis(w, order, axis=1)
        steps = np.diff(w_sorted, axis=1)
        assert (steps > 0).all(), (
            f"{name}: weights must increase strictly with the reward above the reference max; "
            f"smallest step {steps.min():.3g} (context {np.unravel_index(steps.argmin(), steps.shape)[0]})")


# ---- (b) gradient decay in numbers ------------------------------------------------------------

DRIFTS = [0.0, 1.0, 2.0, 3.0]


def spread_table(n_contexts: int = 2000, seed: int = 0) -> dict[str, list[float]]:
    """Mean weight spread Σ|w_i - 1/G| for reference ~ N(0,1) (M=16), groups ~ N(d,1) (G=8),
    N=8, κ0=4, over ``n_contexts`` seeded contexts, at each drift d."""
    M, G, N = 16, 8, 8
    rng = np.random.default_rng(seed)
    prior = prior_from(rng.normal(size=(n_contexts, M)))
    noise = rng.normal(size=(n_contexts, G))  # common random numbers across drifts
    rows = np.arange(n_contexts)
    table = {}
    for name in ESTIMATOR_NAMES:
        est = _est(name, kappa0=4.0)
        table[name] = [float(spread(bon_weights(est(noise + d, prior, rows), N)).mean()) for d in DRIFTS]
    return table


def format_table(table: dict[str, list[float]]) -> str:
    lines = ["estimator | " + " | ".join(f"d={d:g}" for d in DRIFTS) + " | d=3 / d=0"]
    for name, vals in table.items():
        lines.append(f"{name:9s} | " + " | ".join(f"{v:.4f}" for v in vals) + f" | {vals[-1] / vals[0]:.3f}")
    return "\n".join(lines)


def test_gradient_decay_static_collapses_nig_and_dp_keep_signal():
    table = spread_table()
    text = format_table(table)
    print("\nmean weight spread Σ|w_i - 1/G| (2000 contexts, M=16, G=8, N=8, κ0=4)\n" + text)
    ratio = {name: vals[-1] / vals[0] for name, vals in table.items()}
    assert ratio["static"] < 0.15, f"static should lose >85% of its weight spread at drift 3:\n{text}"
    assert ratio["nig"] > 0.5, f"nig should keep >50% of its weight spread at drift 3:\n{text}"
    assert ratio["dp"] > 0.5, f"dp should keep >50% of its weight spread at drift 3:\n{text}"


# ---- (c) nig conjugate algebra ----------------------------------------------------------------


def f32(x):
    """Values on the float32 grid, where the estimators compare rewards (see on_reward_grid)."""
    return np.asarray(x, dtype=np.float32).astype(np.float64)


def _random_case(rng, B=5, G=6, E=4):
    ref = [f32(rng.normal(rng.uniform(-1, 1), rng.uniform(0.2, 2.0), size=rng.integers(2, 20))) for _ in range(B)]
    r = f32(rng.normal(1.0, 1.5, size=(B, G)))
    ev = f32(rng.normal(0.5, 1.0, size=(B, E)))
    ev_w = rng.uniform(0.0, 1.0, size=(B, E)) * (rng.uniform(size=(B, E)) > 0.3)  # some padding
    return ref, r, ev, ev_w


def _hand_nig(m0, s0_sq, vals, w, kappa0):
    """The conjugate update of docs/method.md (3.1) written out with plain Python floats."""
    n = sum(w)
    rbar = sum(wi * x for wi, x in zip(w, vals)) / n
    ss = sum(wi * (x - rbar) ** 2 for wi, x in zip(w, vals))
    a0 = kappa0 / 2 + 1
    b0 = (a0 - 1) * s0_sq
    kn = kappa0 + n
    mun = (kappa0 * m0 + n * rbar) / kn
    an = a0 + n / 2
    bn = b0 + ss / 2 + kappa0 * n * (rbar - m0) ** 2 / (2 * kn)
    return mun, kn, an, bn, math.sqrt(bn * (kn + 1) / (an * kn))


def test_nig_posterior_matches_closed_form_and_scipy_t():
    rng = np.random.default_rng(7)
    ref, r, ev, ev_w = _random_case(rng)
    prior = prior_from(ref)
    rows = np.arange(len(ref))
    kappa0 = 3.0
    log_f = _est("nig", kappa0)(r, prior, rows, ev, ev_w)
    vals, w = np.concatenate([r, ev], 1), np.concatenate([np.ones_like(r), ev_w], 1)
    m0, s0 = prior.moments(rows)
    post = nig_posterior(m0, s0, vals, w, kappa0, 1e-4)
    for b, rs in enumerate(ref):
        assert m0[b] == pytest.approx(np.mean(rs)) and s0[b] == pytest.approx(np.var(rs, ddof=1))
        mun, kn, an, bn, scale = _hand_nig(float(np.mean(rs)), float(np.var(rs, ddof=1)), vals[b].tolist(),
                                           w[b].tolist(), kappa0)
        got = (post.mu[b], post.kappa[b], post.alpha[b], post.beta[b], post.scale[b])
        assert got == pytest.approx((mun, kn, an, bn, scale), rel=1e-12), f"context {b}: (μn, κn, αn, βn, scale) {got} != {(mun, kn, an, bn, scale)}"
        want = stats.t(df=2 * an, loc=mun, scale=scale).logcdf(r[b])
        np.testing.assert_allclose(log_f[b], want, rtol=1e-9, atol=1e-12,
                                   err_msg=f"context {b}: predictive log-CDF differs from scipy.stats.t")


def test_nig_predictive_matches_numerical_posterior_integration():
    """Independent of the conjugate algebra: integrate Φ((t-μ)/σ) against prior × weighted
    likelihood on a (μ, log σ²) grid and compare with the Student-t predictive."""
    rng = np.random.default_rng(3)
    ref = [f32(rng.normal(0.3, 0.8, size=12))]
    prior = prior_from(ref)
    r = np.array([[0.9, 1.4, 0.2, 1.1, 2.0]])
    ev, ev_w = np.array([[0.5, -0.3, 1.7]]), np.array([[0.5, 0.25, 0.9]])
    kappa0 = 4.0
    log_f = _est("nig", kappa0)(r, prior, np.array([0]), ev, ev_w)[0]
    m0, s0_sq = float(np.mean(ref[0])), float(np.var(ref[0], ddof=1))
    a0, b0 = kappa0 / 2 + 1, (kappa0 / 2) * s0_sq
    vals, w = np.concatenate([r[0], ev[0]]), np.concatenate([np.ones(5), ev_w[0]])
    mu = np.linspace(-2.0, 3.0, 1201)[:, None]
    log_s2 = np.linspace(-5.0, 2.5, 1201)[None, :]
    s2 = np.exp(log_s2)
    log_post = (stats.norm.logpdf(mu, m0, np.sqrt(s2 / kappa0)) + stats.invgamma.logpdf(s2, a0, scale=b0)
                + log_s2  # Jacobian of σ² = exp(log σ²)
                + sum(wi * stats.norm.logpdf(x, mu, np.sqrt(s2)) for wi, x in zip(w, vals)))
    p = np.exp(log_post - log_post.max())
    p /= p.sum()
    want = np.array([(p * stats.norm.cdf((t - mu) / np.sqrt(s2))).sum() for t in r[0]])
    np.testing.assert_allclose(np.exp(log_f), want, atol=2e-4,
                               err_msg="nig predictive CDF differs from the numerically integrated posterior")


def test_nig_sequential_updates_equal_batch_update():
    """Conjugacy: updating one reward at a time (each posterior the next prior) ends where one
    batch update ends."""
    m0, s0_sq, kappa0 = 0.2, 0.7, 4.0
    xs = [0.3, 1.9, -0.4, 0.8]
    mu, k, a, b = m0, kappa0, kappa0 / 2 + 1, (kappa0 / 2) * s0_sq
    for x in xs:
        mu, k, a, b = (k * mu + x) / (k + 1), k + 1, a + 0.5, b + k * (x - mu) ** 2 / (2 * (k + 1))
    post = nig_posterior(np.array([m0]), np.array([s0_sq]), np.array([xs]), np.ones((1, 4)), kappa0, 1e-4)
    assert (post.mu[0], post.kappa[0], post.alpha[0], post.beta[0]) == pytest.approx((mu, k, a, b), rel=1e-12)


@pytest.mark.parametrize("kappa0", [1e12, math.inf])
def test_nig_large_kappa0_is_the_prior_predictive(kappa0):
    rng = np.random.default_rng(11)
    ref, r, ev, ev_w = _random_case(rng)
    prior = prior_from(ref)
    rows = np.arange(len(ref))
    log_f = _est("nig", kappa0)(r, prior, rows, ev, ev_w)
    m0, s0_sq = prior.moments(rows)
    # the prior predictive t(2α0, m0, sqrt(β0(κ0+1)/(α0κ0))) tends to N(m0, s0²) as κ0 → ∞
    want = stats.norm.logcdf(r, m0[:, None], np.sqrt(s0_sq)[:, None])
    tol = 0.0 if math.isinf(kappa0) else 1e-6
    np.testing.assert_allclose(log_f, want, rtol=1e-12 if tol == 0 else 0, atol=tol,
                               err_msg=f"κ0={kappa0}: nig should ignore the evidence and give the prior predictive")


def test_nig_zero_kappa0_is_evidence_only():
    rng = np.random.default_rng(5)
    ref, r, ev, ev_w = _random_case(rng)
    prior = prior_from(ref)
    log_f = _est("nig", 0.0)(r, prior, np.arange(len(ref)), ev, ev_w)
    for b in range(len(ref)):
        vals = np.concatenate([r[b], ev[b]])
        w = np.concatenate([np.ones(r.shape[1]), ev_w[b]])
        n = w.sum()
        rbar = (w * vals).sum() / n
        ss = (w * (vals - rbar) ** 2).sum()
        an = 1 + n / 2  # α0 = 1, β0 = 0, κn = n, μn = r̄
        want = stats.t(df=2 * an, loc=rbar, scale=math.sqrt(0.5 * ss * (n + 1) / (an * n))).logcdf(r[b])
        np.testing.assert_allclose(log_f[b], want, rtol=1e-9,
                                   err_msg=f"context {b}: κ0 = 0 must be the evidence-only predictive")


# ---- empirical CDF, dp, finiteness ------------------------------------------------------------


def test_reference_cdf_mid_rank_ties_by_hand():
    prior = prior_from([[0.0, 0.0, 0.5, 1.0]])
    t = np.array([[0.0, 0.5, 0.7, 1.0, 2.0, -1.0]])
    # (1 + #below + ½·#equal) / (M + 1), M = 4
    want = np.array([[(1 + 0 + 1) / 5, (1 + 2 + 0.5) / 5, 4 / 5, (1 + 3 + 0.5) / 5, 5 / 5, 1 / 5]])
    ref, mask = prior.rewards(np.array([0]))
    np.testing.assert_allclose(ref_cdf(t, ref, mask), want, err_msg="F̂ with mid-rank ties")
    np.testing.assert_allclose(_est("static")(t, prior, np.array([0])), np.log(want),
                               err_msg="static must be log F̂")


def test_float32_rollout_rewards_tie_float64_reference_rewards():
    """The batch carries rewards as float32, reference rewards come as float64: a rollout with
    the same NDCG as a reference rollout must still count as a tie (½), not as better."""
    ndcg = 1 / math.log2(3)  # not representable in float32
    prior = prior_from([[0.0, ndcg, 1.0]])
    r = np.array([[np.float32(ndcg)]], dtype=np.float64)
    assert _est("static")(r, prior, np.array([0]))[0, 0] == pytest.approx(math.log((1 + 1 + 0.5) / 4))


def test_dp_zero_kappa0_is_evidence_mid_rank_cdf_and_inf_is_static():
    rng = np.random.default_rng(2)
    ref = rng.integers(0, 4, size=(3, 7)) / 4  # tied, discrete rewards
    prior = prior_from(ref)
    rows = np.arange(3)
    r = rng.integers(0, 6, size=(3, 5)) / 4
    ev, ev_w = rng.integers(0, 6, size=(3, 4)) / 4, np.array([[0.5, 0.25, 0, 0], [1, 1, 1, 0.1], [0, 0, 0, 0]])
    got = _est("dp", 0.0)(r, prior, rows, ev, ev_w)
    for b in range(3):
        vals = list(r[b]) + list(ev[b])
        ws = [1.0] * 5 + list(ev_w[b])
        for i, t in enumerate(r[b]):
            mass = sum(w * ((v < t) + 0.5 * (v == t)) for v, w in zip(vals, ws))
            assert got[b, i] == pytest.approx(math.log(mass / sum(ws))), f"dp κ0=0, context {b}, rollout {i}"
    np.testing.assert_allclose(_est("dp", math.inf)(r, prior, rows, ev, ev_w),
                               _est("static")(r, prior, rows), err_msg="dp with κ0=∞ must equal static")
    # the general case by hand, one context
    kappa0 = 4.0
    got = _est("dp", kappa0)(r, prior, rows, ev, ev_w)
    refm, mask = prior.rewards(rows)
    f_ref = ref_cdf(r, refm, mask)
    vals, ws = list(r[1]) + list(ev[1]), [1.0] * 5 + list(ev_w[1])
    for i, t in enumerate(r[1]):
        mass = sum(w * ((v < t) + 0.5 * (v == t)) for v, w in zip(vals, ws))
        assert got[1, i] == pytest.approx(math.log((kappa0 * f_ref[1, i] + mass) / (kappa0 + sum(ws))))


@pytest.mark.parametrize("name", ESTIMATOR_NAMES)
@pytest.mark.parametrize("kappa0", [0.0, 4.0, 1e12, math.inf])
def test_log_f_is_finite_for_any_input(name, kappa0):
    prior = prior_from([[0.0] * 16, [0.3] * 1, [0.0, 1.0, 0.0, 1.0], []], n_rows=5)  # zero variance, 1 rollout, none
    rows = np.array([0, 1, 2, 3, 4])
    cases = {
        "all equal": np.full((5, 8), 0.0),
        "all equal, above": np.full((5, 8), 0.7),
        "huge drift": np.full((5, 8), 1e6) + np.arange(8),
        "far below": np.full((5, 8), -1e6) - np.arange(8),
        "extreme": np.tile([-1e300, -1e30, -1.0, 0.0, 1.0, 1e30, 1e300, 0.0], (5, 1)),
    }
    est = _est(name, kappa0)
    for label, r in cases.items():
        for ev, ev_w in [(None, None), (np.full((5, 3), 0.0), np.array([[1.0, 0.5, 0.0]] * 5))]:
            log_f = est(r, prior, rows, ev, ev_w)
            assert np.isfinite(log_f).all() and (log_f <= 0).all() and (log_f >= LOG_F_FLOOR).all(), (
                f"{name}, κ0={kappa0}, {label}, evidence={ev is not None}: log F not finite in (-745, 0]: {log_f}")
            w = bon_weights(log_f, 8)
            assert np.isfinite(w).all() and np.allclose(w.sum(1), 1.0), f"{name} {label}: weights not a distribution"


def test_population_fallback_for_contexts_without_reference():
    prior = prior_from([[0.0, 0.0, 0.0, 1.0], [], [0.5, 0.25]])
    ref, mask = prior.rewards(np.array([1, 0, 2]))
    assert mask[0].sum() == 64 and mask[1].sum() == 4 and mask[2].sum() == 2
    pool = [0.0, 0.0, 0.0, 1.0, 0.5, 0.25]
    assert set(ref[0][mask[0]]) <= set(pool), "population quantiles must be observed rewards (ties kept)"
    assert np.mean(ref[0][mask[0]] == 0.0) == pytest.approx(0.5, abs=1 / 64), "half the pooled rewards are 0"
    m, v = prior.moments(np.array([1, 0]))
    assert m[0] == pytest.approx(np.mean(pool)) and v[0] == pytest.approx(np.var(pool, ddof=1))
    assert m[1] == pytest.approx(0.25) and v[1] == pytest.approx(np.var([0, 0, 0, 1], ddof=1))


def test_prior_rejects_bad_frames_and_estimator_names():
    good = pd.DataFrame({"row": [0, 1], "sample": [0, 0], "reward": [0.1, 0.2]})
    with pytest.raises(DataError, match="row"):
        RefPrior.from_frame(good, n_rows=1)
    with pytest.raises(DataError, match="column"):
        RefPrior.from_frame(good.drop(columns="reward"), n_rows=2)
    with pytest.raises(DataError, match="duplicate"):
        RefPrior.from_frame(pd.concat([good, good]), n_rows=2)
    with pytest.raises(ValueError, match="dp"):
        _est("bogus")
    # κ0 and the variance floor are checked where the options are defined (BladeConfig), not again here
    from blade.align.blade_objective import BladeConfig

    for bad in ({"kappa0": -1.0}, {"kappa0": math.nan}, {"var_floor": 0.0}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            BladeConfig(**bad)


# ---- evidence buffer --------------------------------------------------------------------------


def test_evidence_buffer_decay_weights_pruning_and_state_round_trip():
    buf = EvidenceBuffer(gamma=0.5)
    buf.add(np.array([3, 7]), np.array([[0.1, 0.2], [0.9, 0.8]]), step=0)
    buf.add(np.array([3]), np.array([[0.4, 0.5]]), step=2)
    ev, ev_w = buf.evidence(np.array([3, 7, 11]), step=3)
    got = {b: sorted(zip(ev_w[b][ev_w[b] > 0].tolist(), ev[b][ev_w[b] > 0].tolist())) for b in range(3)}
    want = {0: [(0.125, 0.1), (0.125, 0.2), (0.5, 0.4), (0.5, 0.5)], 1: [(0.125, 0.8), (0.125, 0.9)], 2: []}
    for b in range(3):
        assert np.allclose(got[b], want[b]) and len(got[b]) == len(want[b]), (
            f"context {b}: (γ^age, reward) pairs {got[b]} != {want[b]} (γ = 0.5; 0 weight = padding)")
    # rewards seen in the current step are not earlier evidence
    ev, ev_w = buf.evidence(np.array([3]), step=2)
    assert sorted(ev_w[0][ev_w[0] > 0].tolist()) == pytest.approx([0.25, 0.25])

    state = json.loads(json.dumps(buf.state_dict()))  # must survive JSON
    other = EvidenceBuffer(gamma=0.5)
    other.load_state_dict(state)
    for a, b in zip(buf.evidence(np.array([3, 7]), 5), other.evidence(np.array([3, 7]), 5)):
        np.testing.assert_array_equal(a, b, err_msg="evidence differs after a state round trip")
    with pytest.raises(ValueError, match="gamma"):
        EvidenceBuffer(gamma=0.9).load_state_dict(state)

    # 0.5^9 ≈ 2e-3 is kept, 0.5^10 ≈ 9.8e-4 < 1e-3 is dropped for good
    ev, ev_w = buf.evidence(np.array([7]), step=9)
    assert ev_w[0].tolist() == pytest.approx([0.5**9] * 2)
    ev, ev_w = buf.evidence(np.array([7, 3]), step=10)
    assert np.allclose(ev_w, [[0, 0], [0.5**8] * 2]) and len(buf) == 2, (
        f"entries below weight 1e-3 must be dropped (pruned lazily, when their context is queried): {ev_w}")

    none = EvidenceBuffer(gamma=0.0)
    none.add(np.array([1]), np.array([[0.3]]), step=0)
    assert none.evidence(np.array([1]), step=1)[0].shape == (1, 0) and len(none) == 0, "γ = 0 keeps nothing"
    with pytest.raises(ValueError, match="gamma"):
        EvidenceBuffer(gamma=1.5)
