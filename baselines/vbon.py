"""vBoN, variational Best-of-N (Amini, Vieira, Ash, Cotterell 2024/ICLR 2025, "Variational
Best-of-N Alignment", arXiv 2407.06057): fine-tune π_θ to minimise the backward KL to the BoN
distribution of the *reference*, π_BoN(π_ref) ≈ N·π_ref·F_ref(r)^(N−1) (docs/method.md (2.1)).
Up to a constant, −KL(π_θ ‖ π_BoN)/(N−1) is the vBoN objective

    J(θ) = E_{y~π_θ}[log F_ref(r(x, y))] − 1/(N−1)·KL(π_θ ‖ π_ref)          (docs/method.md (5.5))

an RL objective with reward log F_ref(r) and KL coefficient 1/(N−1). Here (online,
``data = "policy"``, G lists per context from π_θ):

- F_ref is the static smoothed mid-rank CDF of the context's M reference rewards
  (docs/method.md (2.2), :class:`blade.align.estimators.StaticEstimator`), as vBoN estimates F
  from reference samples;
- the reward term is REINFORCE with a leave-one-out baseline (docs/method.md (3.6),
  :func:`blade.align.objective.backward_kl_loss` with signal log F̂_ref); the paper trains with PPO —
  the loop's one-step, critic-free policy gradient is the shared protocol for every online method;
- the KL term is the k3 estimate on sampled tokens (docs/method.md (3.8)) with weight 1/(N−1)
  (``kl_coef`` overrides it).

Relation to BLADE ``estimator: static, loss: backward``: BLADE's backward loss is the same
REINFORCE estimator with signal (N−1)·log F̂_ref, plus β_kl·KL(π_θ ‖ π_ref). So vBoN's total loss
× (N−1) equals BLADE(static, backward) with ``beta_kl = 1`` exactly (tested). What differs is the
KL weight: BLADE's target π*_t ∝ π_θt·F^(N−1) is anchored at the *current* policy, so its only pull
toward π_ref is the small β_kl (0.05 in (N−1)-scaled units, i.e. 0.05/(N−1) here), while vBoN's
target π_BoN(π_ref) is anchored at π_ref with unit weight in those units: it stops at the static
upper bound by construction (docs/method.md §3, "two kinds of static").
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from blade.align.estimators import RefPrior, StaticEstimator
from blade.align.objective import (Objective, RolloutBatch, as_numpy, backward_kl_loss, bon_diagnostics, bon_weights,
                                   k3_kl)
from blade.align.registry import register
from blade.config import option
from blade.lazy import torch


@dataclass
class VBoNConfig:
    n: int = option(8, help="N of the BoN target π_BoN(π_ref) (vBoN's N); sets the KL weight 1/(N−1)")
    kl_coef: float | None = option(None, help="weight of the k3 KL(π_θ ‖ π_ref); null (default) = 1/(N−1), the "
                                              "vBoN objective")

    def __post_init__(self) -> None:
        if self.n < 2:
            raise ValueError(f"n (the BoN N) must be >= 2 — N = 1 is π_ref itself; got {self.n}")
        if self.kl_coef is not None and not (self.kl_coef >= 0 and math.isfinite(self.kl_coef)):
            raise ValueError(f"kl_coef must be a finite number >= 0 or null, got {self.kl_coef}")


@register("vbon")
class VBoNObjective(Objective):
    """RL with reward log F̂_ref(r) and KL weight 1/(N−1) (docs/method.md (5.5))."""

    config_class = VBoNConfig
    data = "policy"
    target = "static"  # π_BoN(π_ref) with the fixed F̂_ref (docs/method.md (5.5), §2 "static upper bound")

    def __init__(self, config: VBoNConfig | None, prior: RefPrior):
        self.config = config or VBoNConfig()
        if prior is None:
            raise ValueError("vbon needs the reference prior (the reference rollouts' rewards) for F̂_ref")
        self.prior = prior
        self.kl_coef = 1.0 / (self.config.n - 1) if self.config.kl_coef is None else self.config.kl_coef
        # the static estimator ignores κ0 and the variance floor; any valid values do
        self.estimator = StaticEstimator(kappa0=math.inf, var_floor=1.0)

    def __call__(self, batch: RolloutBatch) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
        n = self.config.n
        rows = np.asarray(batch.rows, dtype=np.int64)
        rewards = as_numpy(batch.rewards)                                          # (B, G)
        log_f = self.estimator(rewards, self.prior, rows)                          # (B, G) log F̂_ref, finite
        logp = batch.logp                                                          # (B, G), grad
        signal = torch.as_tensor(log_f, dtype=logp.dtype, device=logp.device)
        # vBoN objective, reward term: E_π[log F̂_ref(r)] by REINFORCE + LOO baseline; docs/method.md (5.5), (3.6)
        align = backward_kl_loss(signal, logp)
        kl = k3_kl(batch.token_logp, batch.ref_token_logp, batch.mask).mean()     # mean over lists
        # vBoN objective, KL term: 1/(N−1)·KL(π_θ ‖ π_ref), k3; docs/method.md (5.5), (3.8)
        penalty = self.kl_coef * kl
        # the weights π_BoN(π_ref) would put on these lists: diagnostics only (the gradient-decay curves)
        w = bon_weights(log_f, n)
        diag = bon_diagnostics(log_f, w, n, rewards=rewards, kl=kl.item(), loss_backward=align.item(),
                               loss_kl=penalty.item())
        return align, penalty, diag
