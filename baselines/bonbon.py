"""BoNBoN alignment (Gui, Gârbacea, Veitch 2024, "BoNBoN Alignment for Large Language Models and
the Sweetness of Best-of-n Sampling", NeurIPS 2024, arXiv 2406.00832) on the reference rollouts.

Offline (``data = "reference"``): per context, ``n`` of its M stored π_ref lists are drawn (all
of them when M = n); their best ``y_b`` and worst ``y_w`` (by reward) form the training pair:

    L = α·L_SFT-BoN + (1−α)·L_IPO-BoN                                        (docs/method.md (5.3))
    L_SFT-BoN = −log π_θ(y_b|x)
    L_IPO-BoN = (h_b − h_w − 1/(2β*_n))²,  1/(2β*_n) = (n−1)·H_{n−1},  H_k = Σ_{i=1..k} 1/i

with ``h = log π_θ(y|x) − log π_ref(y|x)`` of the constrained lists (docs/method.md (3.9)).

The target margin, derived (it is the paper's β*_n): the BoN distribution is
π_n(y) = n·π_ref(y)·F(r(y))^(n−1) for continuous rewards, so log π_n/π_ref = log n + (n−1)·log F.
For the best of n, F ~ Beta(n, 1) and E[log F] = −1/n; for the worst, F ~ Beta(1, n) and
E[log F] = ψ(1) − ψ(n+1) = −H_n. The expected log-ratio gap between the best and the worst of n is
(n−1)·(H_n − 1/n) = (n−1)·H_{n−1} — the IPO target 1/(2β) with β*_n = 1/(2(n−1)H_{n−1}). For n = 8
it is 7·H_7 ≈ 18.15. ``margin`` overrides it (e.g. for per-token scales).

Normalisation, as the authors' code (github gl-ybnbxb/BoNBoN, ``trainers.py``: ``_get_batch_logps``
with ``average_log_prob=False``): both the NLL and the log-ratios are per-list sums over tokens, not
per-token means — which is why α is as small as 0.005. Each term is averaged over its contexts.

Choices not fixed by the paper (list rewards tie; the paper's rewards are continuous): the SFT
term uses every context (the best of n is a BoN sample even when rewards tie — BoN then breaks the
tie at random, here the first of the randomly ordered subset), the IPO term only contexts whose
best and worst differ (an all-tied subset has no best-vs-worst gap to fit; ``pair_frac`` logs the
share). The subset of n is drawn per (step, context row), so different steps see different pairs
when M > n. No KL term beyond IPO's: penalty 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from baselines._common import (
    context_rng,
    list_log_ratio,
    masked_mean,
    pair_mask,
    zero_penalty,
)
from blade.align.estimators import RefPrior
from blade.align.objective import Objective, RolloutBatch, as_numpy, reward_diagnostics
from blade.align.registry import register
from blade.config import option
from blade.lazy import torch

_SALT = 8  # tells this method's random picks apart from other methods' (see context_rng)


@dataclass
class BoNBoNConfig:
    n: int = option(8, help="n of best-of-n: the pair is the best and worst of n reference lists (needs M >= n)")
    alpha: float = option(0.005, help="weight α of the SFT-BoN term (NLL of the best list); 1−α weighs IPO-BoN")
    margin: float | None = option(
        None, help="IPO target margin 1/(2β); null (default) = the analytic BoN gap (n−1)·H_{n−1} of the BoNBoN paper")

    def __post_init__(self) -> None:
        if self.n < 2:
            raise ValueError(f"n must be >= 2 (best and worst of n), got {self.n}")
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"alpha must lie in [0, 1], got {self.alpha}")
        if self.margin is not None and not (self.margin >= 0 and math.isfinite(self.margin)):
            raise ValueError(f"margin must be a finite number >= 0 or null, got {self.margin}")


def bon_margin(n: int) -> float:
    """``1/(2β*_n) = (n−1)·H_{n−1}``: expected log π_n/π_ref gap between the best and the worst of
    n samples under the BoN distribution (BoNBoN paper; derivation in the module docstring)."""
    return (n - 1) * sum(1.0 / k for k in range(1, n))


def best_worst_of_n(rewards: np.ndarray, rows: np.ndarray, step: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Per context, the best and worst of a random subset of n of its G lists (first in the
    subset's random order among ties). rewards (B, G) → best (B,), worst (B,) indices into G."""
    B, G = rewards.shape
    if G < n:
        raise ValueError(f"bonbon: n={n} but the batch holds only {G} reference lists per context; "
                         f"set rollout.m >= n or lower n")
    best, worst = np.empty(B, dtype=np.int64), np.empty(B, dtype=np.int64)
    for b in range(B):
        sub = context_rng(step, rows[b], _SALT).permutation(G)[:n] if G > n else np.arange(G)
        r = rewards[b, sub]
        best[b], worst[b] = sub[r.argmax()], sub[r.argmin()]
    return best, worst


@register("bonbon")
class BoNBoNObjective(Objective):
    """α·SFT on the best of n + (1−α)·IPO best-vs-worst with the analytic BoN margin (docs/method.md (5.3))."""

    config_class = BoNBoNConfig
    data = "reference"
    # "none", though BoNBoN's fixed point is π_BoN(π_ref) (so BoN@n of π_ref caps it too): its loss
    # holds no BoN target CDF — it fits a best-vs-worst pair of stored lists to the constant margin
    # (n−1)·H_{n−1} plus an NLL, so its signal cannot saturate as the policy improves, and it logs
    # none of the §3.7 weight diagnostics. The static side of the §6.3/§6.4 comparisons is the
    # CDF-weighted methods docs/method.md names (vBoN, BOND, BLADE `estimator: static`).
    target = "none"

    def __init__(self, config: BoNBoNConfig | None, prior: RefPrior | None = None):
        self.config = config or BoNBoNConfig()
        self.margin = bon_margin(self.config.n) if self.config.margin is None else self.config.margin

    def lists_read(self, rewards: np.ndarray, rows: np.ndarray, step: int) -> np.ndarray:
        """The best and the worst of each context's n-subset: the only lists the loss reads."""
        return pair_mask(rewards, *best_worst_of_n(rewards, np.asarray(rows, dtype=np.int64), step, self.config.n))

    def __call__(self, batch: RolloutBatch) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
        cfg = self.config
        rewards = as_numpy(batch.rewards)                                          # (B, G)
        rows = np.asarray(batch.rows, dtype=np.int64)
        best, worst = best_worst_of_n(rewards, rows, batch.step, cfg.n)            # (B,) each
        ar = np.arange(len(best))
        has_pair = rewards[ar, best] > rewards[ar, worst]                          # (B,)
        dev = batch.token_logp.device
        b_idx, w_idx = torch.as_tensor(best, device=dev), torch.as_tensor(worst, device=dev)
        ar_t = torch.arange(len(best), device=dev)
        logp_b = batch.logp[ar_t, b_idx]                                           # (B,) log π_θ(y_b|x), grad
        h = list_log_ratio(batch)                                                  # (B, G), grad
        gap = h[ar_t, b_idx] - h[ar_t, w_idx]                                      # (B,) h_b − h_w
        # BoNBoN: L_SFT-BoN = −log π_θ(y_b|x), per-list sum; docs/method.md (5.3)
        loss_sft = -logp_b.mean()
        # BoNBoN: L_IPO-BoN = (h_b − h_w − 1/(2β*_n))², 1/(2β*_n) = (n−1)·H_{n−1}; docs/method.md (5.3)
        loss_ipo = masked_mean((gap - self.margin) ** 2, torch.as_tensor(has_pair, device=dev))
        # BoNBoN: α·L_SFT-BoN + (1−α)·L_IPO-BoN; docs/method.md (5.3)
        loss = cfg.alpha * loss_sft + (1.0 - cfg.alpha) * loss_ipo
        with torch.no_grad():
            g = gap[torch.as_tensor(has_pair, device=dev)]
            diag = {"loss_sft": loss_sft.item(), "loss_ipo": loss_ipo.item(), "pair_frac": float(has_pair.mean()),
                    "margin": g.mean().item() if g.numel() else 0.0, "margin_target": self.margin,
                    **reward_diagnostics(rewards)}
        return loss, zero_penalty(loss), diag
