"""BLADE's objective (docs/method.md §3): the self-evolving Best-of-N target
``π*_t(y|x) ∝ π_θt(y|x)·F_post(r(x,y))^(N-1)`` (3.3) over the current rollouts, with ``F_post`` from
:mod:`blade.align.estimators` ((3.1) nig, (3.2) dp, or the static (2.2)), matched by forward KL with
self-normalised importance weights (3.4)–(3.5) (default), backward KL (3.6) or their Jeffreys mix
(3.7), plus ``β_kl``·KL(π_θ ‖ π_ref) by the k3 estimator (3.8).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, get_args

import numpy as np

from blade.align.estimators import EvidenceBuffer, RefPrior, make_estimator
from blade.align.objective import (Objective, RolloutBatch, TargetKind, as_numpy, backward_kl_loss, bon_diagnostics,
                                   bon_weights, forward_kl_loss, k3_kl)
from blade.align.registry import register
from blade.config import option
from blade.lazy import torch  # imported on first use: config validation must not import torch

# The choices of `estimator` and `loss`, written once: the type from_dict checks a config against
# (its message lists them) and __post_init__ checks a directly built config against.
# Estimator names are those of blade.align.estimators.ESTIMATORS (tests/test_objective.py checks).
EstimatorName = Literal["dp", "nig", "static"]
Loss = Literal["forward", "backward", "jeffreys"]


@dataclass
class BladeConfig:
    estimator: EstimatorName = option(
        "dp", help="target CDF estimator: 'dp' (Dirichlet-process posterior, default), 'nig' (Normal–Inverse-Gamma "
                   "posterior predictive) or 'static' (reference empirical CDF only; the gradient-decay ablation)")
    n: int = option(8, help="N of the Best-of-N target: weights ∝ F(r)^(N-1)")
    kappa0: float = option(4.0, help="prior strength κ0 in pseudo-rollouts (0 = evidence only, .inf = prior only)")
    gamma: float = option(0.0, help="per-step decay γ of earlier rollouts' evidence for the same context (0 = current only)")
    beta_kl: float = option(0.05, help="weight β_kl of the k3 KL(π_θ ‖ π_ref) penalty")
    loss: Loss = option(
        "forward", help="'forward' KL via self-normalised importance weights, 'backward' KL via REINFORCE with reward "
                        "(N-1)·log F and a leave-one-out baseline, or 'jeffreys' = (1-β_j)·forward + β_j·backward")
    beta_j: float = option(0.5, help="jeffreys: weight β_j of the backward (mode-seeking) KL, as BOND's J-BOND")
    var_floor: float = option(
        1e-4, help="nig: floor on the reference variance s0² and the predictive scale² (reconstruction: list rewards "
                   "are often constant per context, e.g. all-zero NDCG)")

    def __post_init__(self) -> None:
        if self.estimator not in get_args(EstimatorName):
            raise ValueError(f"estimator must be one of {sorted(get_args(EstimatorName))}, got {self.estimator!r}")
        if self.loss not in get_args(Loss):
            raise ValueError(f"loss must be one of {sorted(get_args(Loss))}, got {self.loss!r}")
        if self.n < 2:
            raise ValueError(f"n (the BoN N) must be >= 2 — N = 1 is π_ref itself and gives no signal; got {self.n}")
        if not self.kappa0 >= 0:  # also rejects NaN
            raise ValueError(f"kappa0 must be >= 0 (.inf allowed), got {self.kappa0}")
        if not 0.0 <= self.gamma <= 1.0:
            raise ValueError(f"gamma must lie in [0, 1], got {self.gamma}")
        if not (self.beta_kl >= 0 and math.isfinite(self.beta_kl)):
            raise ValueError(f"beta_kl must be a finite number >= 0, got {self.beta_kl}")
        if not 0.0 <= self.beta_j <= 1.0:
            raise ValueError(f"beta_j must lie in [0, 1], got {self.beta_j}")
        if not (self.var_floor > 0 and math.isfinite(self.var_floor)):
            raise ValueError(f"var_floor must be a finite number > 0, got {self.var_floor}")


@register("blade")
class BladeObjective(Objective):
    """BLADE (docs/method.md §3: (3.1)–(3.8)). One call: ``log F_post`` of the rewards (no grad), SNIS weights, the
    chosen KL to the target, plus ``β_kl``·k3 KL to π_ref; with ``γ > 0`` the group's rewards are
    then remembered as evidence for later visits of the same context.

    The weights need no importance ratio: the target is anchored at the sampling policy π_θt, so
    ``w`` are exactly its SNIS weights. ``old_token_logp`` is only read for the ``logp_drift``
    diagnostic (mean |log π_θ - log π_old| per list): both are constrained log-probs, so on-policy
    it is float rounding (~1e-6); larger means the batch is reused off-policy or the sampler and the
    training forward disagree (dropout, a different mask), where the ``-1/G`` and LOO baselines stop
    being exactly zero-mean. Returns ``(align, β_kl·KL, diagnostics)``."""

    config_class = BladeConfig
    target = "dynamic"  # the default estimator, dp: the posterior target (3.2)

    @classmethod
    def target_kind(cls, options: BladeConfig | None) -> TargetKind:
        """``static`` with ``estimator: static`` (F̂_ref alone inside BLADE's loop: the gradient-decay
        ablation, docs/method.md §2), else ``dynamic`` (the posterior F_post, (3.1)/(3.2))."""
        return "static" if (options or BladeConfig()).estimator == "static" else "dynamic"

    def __init__(self, config: BladeConfig | None, prior: RefPrior):
        self.config = config or BladeConfig()
        if prior is None:
            raise ValueError("BLADE needs the reference prior (the reference rollouts' rewards)")
        self.prior = prior
        self.estimator = make_estimator(self.config.estimator, self.config.kappa0, self.config.var_floor)
        # 'static' ignores evidence, so it keeps none
        use_evidence = self.config.gamma > 0 and self.config.estimator != "static"
        self.evidence = EvidenceBuffer(self.config.gamma) if use_evidence else None

    def __call__(self, batch: RolloutBatch) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
        cfg = self.config
        rows = np.asarray(batch.rows, dtype=np.int64)
        rewards = as_numpy(batch.rewards)                                          # (B, G)
        ev = ev_w = None
        if self.evidence is not None:
            ev, ev_w = self.evidence.evidence(rows, batch.step)                    # (B, E) each
        log_f = self.estimator(rewards, self.prior, rows, ev, ev_w)                # (B, G) float64, finite
        if self.evidence is not None:
            self.evidence.add(rows, rewards, batch.step)
        w_np = bon_weights(log_f, cfg.n)                                           # (B, G)

        logp = batch.logp                                                          # (B, G), grad
        dev, dt = logp.device, logp.dtype
        w = torch.as_tensor(w_np, dtype=dt, device=dev)
        losses: dict[str, torch.Tensor] = {}
        if cfg.loss in ("forward", "jeffreys"):
            losses["loss_forward"] = forward_kl_loss(w, logp)
        if cfg.loss in ("backward", "jeffreys"):
            signal = torch.as_tensor((cfg.n - 1) * log_f, dtype=dt, device=dev)
            losses["loss_backward"] = backward_kl_loss(signal, logp)
        if cfg.loss == "forward":
            align = losses["loss_forward"]
        elif cfg.loss == "backward":
            align = losses["loss_backward"]
        else:  # BOND's Jeffreys divergence: (1-β)·KL(π* ‖ π) + β·KL(π ‖ π*); docs/method.md (3.7); β = 1 is backward
            align = (1.0 - cfg.beta_j) * losses["loss_forward"] + cfg.beta_j * losses["loss_backward"]

        kl = k3_kl(batch.token_logp, batch.ref_token_logp, batch.mask).mean()     # mean over lists
        # β_kl = 0: no regulariser at all (a zero without graph, so the loop needs one backward only)
        penalty = cfg.beta_kl * kl if cfg.beta_kl > 0 else torch.zeros((), dtype=dt, device=dev)

        with torch.no_grad():
            drift = ((batch.token_logp - batch.old_token_logp) * batch.mask).sum(-1).abs().mean()
        diag = bon_diagnostics(log_f, w_np, cfg.n, rewards=rewards, kl=kl.item(),
                               **{k: v.item() for k, v in losses.items()})
        diag["loss"] = (align + penalty).item()
        diag["logp_drift"] = drift.item()
        return align, penalty, diag

    def state_dict(self) -> dict:
        return {"evidence": self.evidence.state_dict()} if self.evidence is not None else {}

    def load_state_dict(self, state: dict) -> None:
        if self.evidence is not None and "evidence" in state:
            self.evidence.load_state_dict(state["evidence"])
