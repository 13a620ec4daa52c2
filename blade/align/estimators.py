"""Estimators of the BoN target's reward CDF ``F_x`` (docs/method.md (2.1)–(2.2), (3.1)–(3.2)), behind one interface.

Every BoN-family objective weights a rollout by ``F_x(r)^(N-1)`` (BOND Thm 1 / vBoN): how likely
the reference is to produce a reward no better than ``r``. The estimators differ only in what they
believe ``F_x`` is:

- ``static`` — the smoothed, mid-rank empirical CDF of the ``M`` reference rollouts (§2). It
  saturates at 1 above the reference's best reward, which is what causes gradient decay.
- ``nig`` — Normal–Inverse-Gamma posterior predictive (Student-t), prior from the reference,
  evidence from the current (and decayed earlier) rollouts (§3).
- ``dp`` — Dirichlet-process posterior mean with the reference's empirical CDF as base measure
  (§3, the default): a mixture of the static CDF and the evidence's mid-rank CDF.

All take the same call ``estimator(r, prior, rows, ev, ev_w) -> log F (B, G)``, vectorised over
contexts in float64 numpy, and never return ``-inf`` (the weights are ``exp((N-1)·log F)``).
:class:`RefPrior` holds the reference rollouts; :class:`EvidenceBuffer` keeps earlier rewards for
the decay ``γ``.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Mapping

import numpy as np
import pandas as pd

from blade.errors import DataError

# log F is clipped here: the log of the smallest positive double, so F itself stays representable.
# Only reached in absurd tails (a reward hundreds of posterior scales below the posterior mean).
LOG_F_FLOOR = math.log(np.finfo(np.float64).smallest_subnormal)  # ≈ -744.4

N_POPULATION_QUANTILES = 64

_F32_MAX = float(np.finfo(np.float32).max)


def on_reward_grid(x: np.ndarray) -> np.ndarray:
    """Rewards as float64 values on the float32 grid. The batch contract carries rewards as
    float32 while reference rewards are stored as float64; rounding both to the same grid keeps a
    rollout that ties a reference rollout (list rewards tie a lot) an exact tie for the mid-rank
    CDF. Values beyond float32's range are clipped to it."""
    return np.clip(np.asarray(x, dtype=np.float64), -_F32_MAX, _F32_MAX).astype(np.float32).astype(np.float64)


# ---------------------------------------------------------------------------------------------
# Reference prior
# ---------------------------------------------------------------------------------------------


class RefPrior:
    """Per-context reward arrays of the reference rollouts (the "historical" prior of §3).

    A context without reference rollouts falls back to the population (all reference rewards
    pooled). *Reconstruction:* the pooled rewards are kept compactly as
    ``N_POPULATION_QUANTILES`` (64) evenly spaced quantiles at levels ``(k + ½)/64`` using the
    inverted-CDF rule, so every quantile is an observed reward and discrete, tied rewards (NDCG is
    mostly 0) keep their ties; such a context's ``F̂_ref`` is then the CDF of those 64 values.
    Its ``mean``/``var`` (for ``nig``) are the exact pooled moments.

    Variances are unbiased (ddof = 1); a context with a single rollout has variance 0, which the
    estimators floor at ``var_floor``. Rewards are stored on the float32 grid (:func:`on_reward_grid`).
    """

    def __init__(self, values: np.ndarray, count: np.ndarray, pop_quantiles: np.ndarray, pop_mean: float,
                 pop_var: float):
        self.values = np.asarray(values, dtype=np.float64)    # (n_rows, M_max), padding beyond count
        self.count = np.asarray(count, dtype=np.int64)        # (n_rows,)
        self.pop_quantiles = np.asarray(pop_quantiles, dtype=np.float64)  # (Q,)
        self.pop_mean, self.pop_var = float(pop_mean), float(pop_var)
        col = np.arange(self.values.shape[1])
        valid = col[None, :] < self.count[:, None]
        safe = np.where(valid, self.values, 0.0)
        n = np.maximum(self.count, 1)
        self._mean = safe.sum(1) / n
        ss = (np.where(valid, self.values - self._mean[:, None], 0.0) ** 2).sum(1)
        self._var = np.where(self.count > 1, ss / np.maximum(self.count - 1, 1), 0.0)

    @property
    def n_rows(self) -> int:
        return len(self.count)

    @classmethod
    def from_frame(cls, df: pd.DataFrame, n_rows: int) -> RefPrior:
        """From reference rollouts with columns ``row`` (train-split row of the context, in
        ``[0, n_rows)``), ``sample`` and ``reward``; one line per rollout."""
        missing = [c for c in ("row", "sample", "reward") if c not in df.columns]
        if missing:
            raise DataError(f"reference rollouts lack column(s) {missing}; expected row, sample, reward")
        if len(df) == 0:
            raise DataError("reference rollouts are empty; the prior needs at least one reference reward")
        rows = df["row"].to_numpy()
        if not np.issubdtype(rows.dtype, np.integer):
            raise DataError(f"reference rollouts: column 'row' must hold integers, got {rows.dtype}")
        rows = rows.astype(np.int64)
        if rows.min() < 0 or rows.max() >= n_rows:
            raise DataError(f"reference rollouts: 'row' must lie in [0, {n_rows}), found {rows.min()}..{rows.max()}")
        rewards = df["reward"].to_numpy(dtype=np.float64)
        if not np.isfinite(rewards).all():
            raise DataError("reference rollouts: 'reward' holds NaN or infinite values")
        rewards = on_reward_grid(rewards)
        if df.duplicated(["row", "sample"]).any():
            raise DataError("reference rollouts: duplicate (row, sample) pairs; each rollout must appear once")
        order = np.argsort(rows, kind="stable")
        rows, rewards = rows[order], rewards[order]
        count = np.bincount(rows, minlength=n_rows)
        start = np.concatenate([[0], np.cumsum(count)[:-1]])
        slot = np.arange(len(rows)) - start[rows]  # position of each rollout within its context
        values = np.zeros((n_rows, int(count.max())), dtype=np.float64)
        values[rows, slot] = rewards
        levels = (np.arange(N_POPULATION_QUANTILES) + 0.5) / N_POPULATION_QUANTILES
        quantiles = np.quantile(rewards, levels, method="inverted_cdf")
        pop_var = float(rewards.var(ddof=1)) if len(rewards) > 1 else 0.0
        return cls(values, count, quantiles, float(rewards.mean()), pop_var)

    def _check(self, rows: np.ndarray) -> np.ndarray:
        rows = np.asarray(rows, dtype=np.int64)
        if rows.size and (rows.min() < 0 or rows.max() >= self.n_rows):
            raise IndexError(f"context rows must lie in [0, {self.n_rows}) of the prior, got {rows.min()}..{rows.max()}")
        return rows

    def rewards(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Reference rewards of the contexts, padded: ``ref (B, M)`` float64, ``ref_mask (B, M)``
        bool. Contexts without rollouts get the population quantiles."""
        rows = self._check(rows)
        cnt = self.count[rows]                                 # (B,)
        fallback = cnt == 0
        M = int(cnt.max(initial=0))
        if fallback.any():
            M = max(M, len(self.pop_quantiles))
        ref = np.zeros((len(rows), M), dtype=np.float64)
        take = min(M, self.values.shape[1])
        ref[:, :take] = self.values[rows, :take]
        mask = np.arange(M)[None, :] < cnt[:, None]            # (B, M)
        if fallback.any():
            Q = len(self.pop_quantiles)
            ref[fallback, :Q] = self.pop_quantiles
            mask[fallback, :Q] = True
        return np.where(mask, ref, 0.0), mask

    def moments(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Reference mean ``m0 (B,)`` and variance ``s0² (B,)``; population moments where a
        context has no rollouts."""
        rows = self._check(rows)
        fallback = self.count[rows] == 0
        return (np.where(fallback, self.pop_mean, self._mean[rows]),
                np.where(fallback, self.pop_var, self._var[rows]))


# ---------------------------------------------------------------------------------------------
# CDF building blocks
# ---------------------------------------------------------------------------------------------


def mid_rank_mass(t: np.ndarray, values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """``Σ_j w_j·(1[v_j < t] + ½·1[v_j = t])`` for every query: t (B, G), values/weights (B, E)
    → (B, G). Mid-rank ties: list rewards tie a lot, and a tie is neither better nor worse."""
    t3, v3 = t[:, :, None], values[:, None, :]                # (B, G, 1), (B, 1, E)
    below = (v3 < t3) + 0.5 * (v3 == t3)                       # (B, G, E)
    return (below * weights[:, None, :]).sum(-1)


def expected_best_of(ref: np.ndarray, ref_mask: np.ndarray, n: int) -> np.ndarray:
    """(B,) E[max of n iid draws] of each context's reward under π_ref, estimated without bias from
    its M stored rewards (the U-statistic of the order statistics: with r_(1) <= … <= r_(M), weight
    C(i−1, n−1)/C(M, n) on r_(i)); n > M uses n = M. The reward the static BoN@n target reaches on
    these contexts — what static alignment is capped at (docs/method.md §6.4). ref/ref_mask (B, M)."""
    m = ref_mask.sum(1)                                                        # (B,)
    srt = np.sort(np.where(ref_mask, ref, np.inf), axis=1)                     # (B, M) ascending, padding last
    i = np.arange(1, ref.shape[1] + 1)[None, :]                                # (1, M) ranks
    k = np.minimum(n, m)[:, None]                                              # (B, 1)
    with np.errstate(over="ignore", invalid="ignore"):
        logw = (_log_comb(i - 1, k - 1) - _log_comb(m[:, None], k))
    w = np.where((i <= m[:, None]) & (i >= k), np.exp(logw), 0.0)            # (B, M), rows sum to 1
    return (np.where(np.isfinite(srt), srt, 0.0) * w).sum(1)


def _log_comb(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    from scipy.special import gammaln

    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return gammaln(a + 1) - gammaln(b + 1) - gammaln(np.maximum(a - b, 0) + 1)


def dp_saturation_cap(kappa0: float, group: int) -> float:
    """The largest ``F`` the ``dp`` estimator gives a group's best rollout with no earlier evidence:
    ``(κ0 + G − ½)/(κ0 + G)`` (the prior's CDF at most 1, the rollout counting half of itself). With
    κ0 4 and G 8 it is 11.5/12 ≈ 0.958, below the 0.99 of ``saturated_frac``: BLADE's saturated
    fraction is 0 by construction there, not by measurement (the figures say so)."""
    return 1.0 if math.isinf(kappa0) else (kappa0 + group - 0.5) / (kappa0 + group)


def ref_cdf(t: np.ndarray, ref: np.ndarray, ref_mask: np.ndarray) -> np.ndarray:
    """Smoothed mid-rank empirical CDF of the reference (docs/method.md (2.2)):
    ``F̂(t) = (1 + #{j: r_j < t} + ½·#{j: r_j = t}) / (M + 1)``, in ``[1/(M+1), 1]``.
    t (B, G), ref/ref_mask (B, M) → (B, G)."""
    m = ref_mask.sum(1, keepdims=True)                         # (B, 1)
    return (1.0 + mid_rank_mass(t, ref, ref_mask.astype(np.float64))) / (m + 1.0)


def _evidence(r: np.ndarray, ev: np.ndarray | None, ev_w: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """Current group (weight 1) and earlier evidence (weight γ^age, 0 = padding): (B, G+E) each."""
    if ev is None or ev.shape[1] == 0:
        return r, np.ones_like(r)
    if ev_w is None or ev_w.shape != ev.shape:
        raise ValueError(f"evidence weights must have the evidence's shape {ev.shape}")
    return np.concatenate([r, ev], 1), np.concatenate([np.ones_like(r), ev_w], 1)


def _finite_log(log_f: np.ndarray) -> np.ndarray:
    """Clip to ``[LOG_F_FLOOR, 0]``; NaN (only from overflowing, absurd rewards) becomes the floor."""
    return np.clip(np.nan_to_num(log_f, nan=LOG_F_FLOOR, neginf=LOG_F_FLOOR, posinf=0.0), LOG_F_FLOOR, 0.0)


def student_t_logcdf(z: np.ndarray, df: np.ndarray) -> np.ndarray:
    """log CDF of the standard Student-t, accurate in both tails and finite everywhere.

    Upper half: ``log1p(-sf)`` keeps rewards far above the posterior mean *distinct* (plain
    ``log(cdf)`` rounds them all to 0 — the very saturation BLADE removes). Lower tail, where
    scipy's cdf underflows: the Mills-ratio asymptote ``log f(z) + log((ν+z²)/((ν+1)|z|))``.
    ``df = inf`` is the normal (``log_ndtr`` is accurate in both tails)."""
    from scipy import special, stats  # here, not at import: validating a config must stay cheap

    z, df = np.broadcast_arrays(np.asarray(z, np.float64), np.asarray(df, np.float64))
    out = np.empty(z.shape, dtype=np.float64)
    normal = np.isinf(df)
    out[normal] = special.log_ndtr(z[normal])
    t = ~normal
    zt, dft = z[t], df[t]
    upper = zt > 0
    res = np.empty_like(zt)
    res[upper] = np.log1p(-stats.t.sf(zt[upper], dft[upper]))
    low = ~upper
    res[low] = stats.t.logcdf(zt[low], dft[low])
    bad = low & ~(res > -700.0)                                # underflowed or about to
    if bad.any():
        zb, nb = zt[bad], dft[bad]
        res[bad] = stats.t.logpdf(zb, nb) + np.log((nb + zb**2) / ((nb + 1.0) * np.abs(zb)))
    out[t] = res
    return _finite_log(out)


# ---------------------------------------------------------------------------------------------
# Estimators
# ---------------------------------------------------------------------------------------------


class Estimator(abc.ABC):
    """``log F(r)`` for the current rewards ``r (B, G)`` of contexts ``rows`` given the prior and
    optional earlier evidence ``ev (B, E)`` with weights ``ev_w (B, E)`` (0 = padding)."""

    name: str

    def __init__(self, kappa0: float, var_floor: float):
        # κ0 >= 0 and var_floor > 0 are checked once, where the options are defined (BladeConfig);
        # the estimators trust their caller
        self.kappa0, self.var_floor = float(kappa0), float(var_floor)

    def __call__(self, r: np.ndarray, prior: RefPrior, rows: np.ndarray, ev: np.ndarray | None = None,
                 ev_w: np.ndarray | None = None) -> np.ndarray:
        r = on_reward_grid(r)
        if r.ndim != 2 or r.shape[0] != len(rows):
            raise ValueError(f"rewards must be (B, G) with B = len(rows) = {len(rows)}, got {r.shape}")
        if ev is not None:
            ev = on_reward_grid(ev)
            ev_w = None if ev_w is None else np.asarray(ev_w, dtype=np.float64)
        return _finite_log(self._log_cdf(r, prior, np.asarray(rows, dtype=np.int64), ev, ev_w))

    @abc.abstractmethod
    def _log_cdf(self, r, prior, rows, ev, ev_w) -> np.ndarray: ...


class StaticEstimator(Estimator):
    """``log F̂_ref`` (docs/method.md (2.2)): ignores the evidence and κ0 — the gradient-decay ablation."""

    name = "static"

    def _log_cdf(self, r, prior, rows, ev, ev_w):
        ref, mask = prior.rewards(rows)
        return np.log(ref_cdf(r, ref, mask))


class DPEstimator(Estimator):
    """Dirichlet-process posterior mean with base measure ``F̂_ref`` (docs/method.md (3.2), ``dp``):
    ``F_post(t) = (κ0·F̂_ref(t) + Σ_i c_i·(1[r_i < t] + ½·1[r_i = t])) / (κ0 + Σ_i c_i)``.
    κ0 = ∞ is the prior alone; κ0 = 0 the evidence's mid-rank CDF (≥ ½/Σc > 0: a reward counts
    half of itself, so log F stays finite)."""

    name = "dp"

    def _log_cdf(self, r, prior, rows, ev, ev_w):
        ref, mask = prior.rewards(rows)
        if math.isinf(self.kappa0):
            return np.log(ref_cdf(r, ref, mask))
        vals, w = _evidence(r, ev, ev_w)                         # (B, G+E)
        mass = mid_rank_mass(r, vals, w)                         # (B, G)
        total = w.sum(1, keepdims=True)                          # (B, 1) ≥ G
        base = ref_cdf(r, ref, mask) if self.kappa0 > 0 else 0.0
        return np.log((self.kappa0 * base + mass) / (self.kappa0 + total))


class NIGPosterior:
    """Normal–Inverse-Gamma posterior parameters, one per context (each (B,)); see :func:`nig_posterior`."""

    def __init__(self, mu: np.ndarray, kappa: np.ndarray, alpha: np.ndarray, beta: np.ndarray, scale: np.ndarray):
        self.mu, self.kappa, self.alpha, self.beta, self.scale = mu, kappa, alpha, beta, scale

    @property
    def df(self) -> np.ndarray:
        return 2.0 * self.alpha


def nig_posterior(m0: np.ndarray, s0_sq: np.ndarray, vals: np.ndarray, w: np.ndarray, kappa0: float,
                  var_floor: float) -> NIGPosterior:
    """Conjugate update of docs/method.md (3.1) (``nig``), evidence ``vals (B, E)`` with weights ``w (B, E)``:
    ``α0 = κ0/2 + 1, β0 = (α0-1)·s0²``; ``κn = κ0 + n, μn = (κ0·μ0 + n·r̄)/κn, αn = α0 + n/2,
    βn = β0 + ½·Σ w_i(r_i - r̄)² + κ0·n·(r̄ - μ0)²/(2κn)``, with ``n = Σ w_i`` and ``r̄`` the
    weighted mean (a weight is a fractional observation: the likelihood raised to ``w_i``).
    Predictive scale ``sqrt(βn·(κn+1)/(αn·κn))``.

    *Reconstruction* (``var_floor``): ``s0²`` is floored — list rewards such as NDCG are often all
    0 for a context, and ``β0 = 0`` would make the predictive a point mass — and so is the
    predictive scale², for ``κ0 = 0`` with an all-tied group. κ0 = ∞ is the prior predictive's
    limit, ``N(m0, s0²)`` (df = ∞, scale² = β0/α0·(κ0+1)/κ0 → s0²)."""
    s0_sq = np.maximum(s0_sq, var_floor)
    n = w.sum(1)                                                 # (B,) > 0: the current group counts
    rbar = (w * vals).sum(1) / n
    ss = (w * (vals - rbar[:, None]) ** 2).sum(1)
    if math.isinf(kappa0):
        inf = np.full_like(n, np.inf)
        return NIGPosterior(np.asarray(m0, np.float64), inf, inf, inf, np.sqrt(s0_sq))
    alpha0 = kappa0 / 2.0 + 1.0
    beta0 = (alpha0 - 1.0) * s0_sq
    kn = kappa0 + n
    mu = (kappa0 * m0 + n * rbar) / kn
    an = alpha0 + n / 2.0
    bn = beta0 + 0.5 * ss + kappa0 * n * (rbar - m0) ** 2 / (2.0 * kn)
    scale_sq = np.maximum(bn * (kn + 1.0) / (an * kn), var_floor)
    return NIGPosterior(mu, kn, an, bn, np.sqrt(scale_sq))


class NIGEstimator(Estimator):
    """Student-t posterior predictive of the Normal–Inverse-Gamma model (docs/method.md (3.1), ``nig``):
    ``F_post(t) = StudentT(2αn, μn, sqrt(βn(κn+1)/(αn·κn))).cdf(t)``."""

    name = "nig"

    def _log_cdf(self, r, prior, rows, ev, ev_w):
        m0, s0_sq = prior.moments(rows)
        vals, w = _evidence(r, ev, ev_w)
        # absurd rewards (|r| ~ 1e300) overflow the moments; the result is then clipped to finite
        with np.errstate(over="ignore", invalid="ignore"):
            post = nig_posterior(m0, s0_sq, vals, w, self.kappa0, self.var_floor)
            z = (r - post.mu[:, None]) / post.scale[:, None]     # (B, G)
            return student_t_logcdf(z, np.broadcast_to(post.df[:, None], z.shape))


ESTIMATORS: dict[str, type[Estimator]] = {c.name: c for c in (StaticEstimator, NIGEstimator, DPEstimator)}


def make_estimator(name: str, kappa0: float, var_floor: float) -> Estimator:
    if name not in ESTIMATORS:
        raise ValueError(f"unknown estimator {name!r}; choose one of {sorted(ESTIMATORS)}")
    return ESTIMATORS[name](kappa0=kappa0, var_floor=var_floor)


# ---------------------------------------------------------------------------------------------
# Evidence with decay
# ---------------------------------------------------------------------------------------------


class EvidenceBuffer:
    """Earlier rewards per context, weighted ``γ^age`` with ``age`` = steps since they were seen
    (docs/method.md §3.1, "Evidence"). Entries whose weight falls below ``min_weight`` (1e-3) are
    dropped for good; ``γ = 0`` keeps nothing. Only strictly earlier steps count as evidence, so
    calling :meth:`evidence` after :meth:`add` in the same step does not count the current group
    twice. With ``γ = 1`` nothing decays and the buffer grows by G rewards per visit."""

    def __init__(self, gamma: float, min_weight: float = 1e-3):
        if not 0.0 <= gamma <= 1.0:
            raise ValueError(f"gamma must lie in [0, 1], got {gamma}")
        self.gamma, self.min_weight = float(gamma), float(min_weight)
        self._entries: dict[int, list[tuple[int, float]]] = {}  # row -> [(step, reward), ...]
        # the largest age whose weight γ^age is still >= min_weight
        if self.gamma == 1.0:
            self.max_age = math.inf
        elif self.gamma == 0.0:
            self.max_age = 0
        else:
            self.max_age = math.floor(math.log(self.min_weight) / math.log(self.gamma) + 1e-9)

    def __len__(self) -> int:
        return sum(len(v) for v in self._entries.values())

    def add(self, rows: np.ndarray, rewards: np.ndarray, step: int) -> None:
        """Store ``rewards (B, G)`` of contexts ``rows (B,)`` seen at ``step``."""
        if self.gamma == 0.0:
            return
        rewards = np.asarray(rewards, dtype=np.float64)
        for row, rs in zip(np.asarray(rows, dtype=np.int64).tolist(), rewards.tolist()):
            self._entries.setdefault(int(row), []).extend((int(step), float(x)) for x in rs)

    def evidence(self, rows: np.ndarray, step: int) -> tuple[np.ndarray, np.ndarray]:
        """``ev (B, E)``, ``ev_w (B, E)`` for contexts ``rows`` at ``step``; weight 0 = padding."""
        per_row = []
        for row in np.asarray(rows, dtype=np.int64).tolist():
            kept = [(s, x) for s, x in self._entries.get(row, []) if step - s <= self.max_age]
            if row in self._entries:  # prune what has decayed away
                if kept:
                    self._entries[row] = kept
                else:
                    del self._entries[row]
            per_row.append([(self.gamma ** (step - s), x) for s, x in kept if s < step])
        E = max((len(p) for p in per_row), default=0)
        ev = np.zeros((len(per_row), E), dtype=np.float64)
        ev_w = np.zeros((len(per_row), E), dtype=np.float64)
        for b, p in enumerate(per_row):
            if p:
                ev_w[b, :len(p)], ev[b, :len(p)] = zip(*p)
        return ev, ev_w

    def state_dict(self) -> dict:
        """JSON-serialisable: ``{"gamma", "min_weight", "entries": {row: [[step, reward], ...]}}``."""
        return {"gamma": self.gamma, "min_weight": self.min_weight,
                "entries": {str(k): [[s, x] for s, x in v] for k, v in self._entries.items()}}

    def load_state_dict(self, state: Mapping) -> None:
        if float(state["gamma"]) != self.gamma:
            raise ValueError(f"evidence state was saved with gamma={state['gamma']}, this run uses gamma={self.gamma}")
        self._entries = {int(k): [(int(s), float(x)) for s, x in v] for k, v in state["entries"].items()}
