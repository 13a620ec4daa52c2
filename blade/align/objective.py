"""The alignment-objective interface, its registry, the shared BoN diagnostics, and BLADE.

One trainer drives every alignment method through :class:`Objective`: it samples ``G`` lists per
context, scores them, fills a :class:`RolloutBatch` and asks the objective for a loss and a dict of
diagnostics. A baseline is one file that subclasses :class:`Objective`, declares its config
dataclass as ``config_class`` and registers itself with ``@register("name")``; the trainer builds
it by name with :func:`build_objective`.

BLADE (METHOD.md §3): the self-evolving BoN target ``π*_t(y|x) ∝ π_θt(y|x)·F_post(r(x,y))^(N-1)``
over the current rollouts, with ``F_post`` from :mod:`blade.align.estimators`, matched by forward
KL with self-normalised importance weights (default), backward KL (REINFORCE) or their Jeffreys mix,
plus ``β_kl``·KL(π_θ ‖ π_ref) by the k3 estimator.
"""

from __future__ import annotations

import abc
import importlib
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

from blade.align.estimators import ESTIMATORS, EvidenceBuffer, RefPrior, make_estimator
from blade.config import from_dict, option
from blade.errors import ConfigError


@dataclass
class RolloutBatch:
    rows: np.ndarray               # (B,) train-split rows of the contexts
    rewards: torch.Tensor          # (B, G) float32 combined list reward (no grad)
    token_logp: torch.Tensor       # (B, G, T) per-token log π_θ of the sampled lists, WITH grad, 0 on padding
    ref_token_logp: torch.Tensor   # (B, G, T) per-token log π_ref, no grad, 0 on padding
    old_token_logp: torch.Tensor   # (B, G, T) per-token log-prob under the policy that sampled, no grad
    mask: torch.Tensor             # (B, G, T) bool, True on real tokens
    step: int                      # optimiser step (for evidence decay)

    @property
    def logp(self) -> torch.Tensor:
        """(B, G) log π_θ(y|x) of each list: its tokens' log-probs summed (padding masked)."""
        return (self.token_logp * self.mask).sum(-1)


class Objective(abc.ABC):
    """An alignment loss over one :class:`RolloutBatch`. ``state_dict`` holds whatever must survive
    a resume (JSON-serialisable); stateless objectives keep the defaults."""

    name: str
    config_class: type | None = None

    @abc.abstractmethod
    def __call__(self, batch: RolloutBatch) -> tuple[torch.Tensor, dict[str, float]]:
        """Return ``(loss, diagnostics)``; the loss is a scalar with grad through ``token_logp``."""

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:  # noqa: B027 — stateless by default
        pass


# ---------------------------------------------------------------------------------------------
# Registry
# ---------------------------------------------------------------------------------------------

OBJECTIVES: dict[str, type[Objective]] = {}


def register(name: str) -> Callable[[type[Objective]], type[Objective]]:
    """Class decorator: make an :class:`Objective` buildable by ``name``."""

    def deco(cls: type[Objective]) -> type[Objective]:
        if name in OBJECTIVES and OBJECTIVES[name] is not cls:
            raise ValueError(f"objective {name!r} is registered twice ({OBJECTIVES[name].__qualname__}, {cls.__qualname__})")
        cls.name = name
        OBJECTIVES[name] = cls
        return cls

    return deco


def objective_class(name: str) -> type[Objective]:
    """The objective registered as ``name``. A name not yet registered is looked up as module
    ``baselines.<name>``, whose import registers it — so a baseline is one file plus one config entry."""
    if name not in OBJECTIVES:
        try:
            importlib.import_module(f"baselines.{name}")
        except ModuleNotFoundError as exc:
            if exc.name not in ("baselines", f"baselines.{name}"):
                raise  # the baseline exists but one of its own imports is missing: a real error
    if name not in OBJECTIVES:
        raise ConfigError(f"objective: unknown method {name!r}; choose one of {sorted(OBJECTIVES)}")
    return OBJECTIVES[name]


def objective_config(name: str, config: Mapping[str, Any] | None, where: str | None = None) -> Any:
    """Validate an objective's options against its ``config_class`` (None when it has none)."""
    cls = objective_class(name)
    return from_dict(cls.config_class, config or {}, where or f"objective.{name}") if cls.config_class else None


def build_objective(name: str, config: Mapping[str, Any] | None, prior: RefPrior | None) -> Objective:
    """Build the objective registered as ``name`` from a plain config mapping."""
    return objective_class(name)(objective_config(name, config), prior)


# ---------------------------------------------------------------------------------------------
# Pieces shared by the BoN family
# ---------------------------------------------------------------------------------------------


def bon_weights(log_f: np.ndarray, n: int) -> np.ndarray:
    """``w_i = softmax_i((N-1)·log F(r_i))`` over each context's G rollouts (METHOD.md §3): the
    self-normalised importance weights of ``π* ∝ π_θt·F^(N-1)`` for rollouts drawn from ``π_θt``.
    log_f (B, G) float64 → (B, G)."""
    s = (n - 1) * np.asarray(log_f, dtype=np.float64)
    s = s - s.max(1, keepdims=True)
    e = np.exp(s)
    return e / e.sum(1, keepdims=True)


def k3_kl(token_logp: torch.Tensor, ref_token_logp: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-list k3 estimate of KL(π_θ ‖ π_ref) on sampled tokens (Schulman's k3, as in TRL's GRPO):
    per token ``exp(ref - logp) - (ref - logp) - 1`` (≥ 0, unbiased, 0 iff equal), summed over the
    list's real tokens. (B, G, T) → (B, G), with grad through ``token_logp``."""
    d = (ref_token_logp - token_logp).masked_fill(~mask, 0.0)
    return ((torch.exp(d) - d - 1.0) * mask).sum(-1)


def _np(x: np.ndarray | torch.Tensor) -> np.ndarray:
    if torch.is_tensor(x):
        x = x.detach().cpu().double().numpy()
    return np.asarray(x, dtype=np.float64)


def bon_diagnostics(log_f: np.ndarray | torch.Tensor, w: np.ndarray | torch.Tensor, n: int,
                    rewards: np.ndarray | torch.Tensor | None = None, kl: float | None = None,
                    **losses: float) -> dict[str, float]:
    """The per-step diagnostics every BoN-family method logs (METHOD.md §3; the gradient-decay
    curves of §6.3). log_f, w, rewards: (B, G).

    - ``weight_spread``: mean over contexts of ``Σ_i |w_i - 1/G|`` (0 = no signal, uniform weights)
    - ``ess``: mean effective sample size ``1 / Σ_i w_i²`` (G = uniform, 1 = one winner)
    - ``saturated_frac``: share of rollouts with ``F ≥ 0.99`` (where the static target is flat)
    - ``signal_std``: mean within-group std (ddof 0) of ``(N-1)·log F``
    - ``tied_frac`` (with rewards): share of contexts whose G rewards are all equal — every
      estimator gives such a group uniform weights, so this separates "ties" from "saturation"
      as the cause of a falling spread
    - ``kl``, ``reward_mean``, ``reward_max`` and any ``loss_*`` passed in, when given.
    The trainer adds the gradient norm."""
    log_f, w = _np(log_f), _np(w)
    G = w.shape[1]
    out = {
        "weight_spread": float(np.abs(w - 1.0 / G).sum(1).mean()),
        "ess": float((1.0 / (w**2).sum(1)).mean()),
        "saturated_frac": float((log_f >= math.log(0.99)).mean()),
        "signal_std": float(((n - 1) * log_f).std(1).mean()),
    }
    if kl is not None:
        out["kl"] = float(kl)
    if rewards is not None:
        r = _np(rewards)
        out["reward_mean"], out["reward_max"] = float(r.mean()), float(r.max())
        out["tied_frac"] = float((r == r[:, :1]).all(1).mean())
    out.update({k: float(v) for k, v in losses.items()})
    return out


# ---------------------------------------------------------------------------------------------
# BLADE
# ---------------------------------------------------------------------------------------------


@dataclass
class BladeConfig:
    estimator: Literal["dp", "nig", "static"] = option(
        "dp", help="target CDF estimator: 'dp' (Dirichlet-process posterior, default), 'nig' (Normal–Inverse-Gamma "
                   "posterior predictive) or 'static' (reference empirical CDF only; the gradient-decay ablation)")
    n: int = option(8, help="N of the Best-of-N target: weights ∝ F(r)^(N-1)")
    kappa0: float = option(4.0, help="prior strength κ0 in pseudo-rollouts (0 = evidence only, .inf = prior only)")
    gamma: float = option(0.0, help="per-step decay γ of earlier rollouts' evidence for the same context (0 = current only)")
    beta_kl: float = option(0.05, help="weight β_kl of the k3 KL(π_θ ‖ π_ref) penalty")
    loss: Literal["forward", "backward", "jeffreys"] = option(
        "forward", help="'forward' KL via self-normalised importance weights, 'backward' KL via REINFORCE with reward "
                        "(N-1)·log F and a leave-one-out baseline, or 'jeffreys' = (1-β_j)·forward + β_j·backward")
    beta_j: float = option(0.5, help="jeffreys: weight β_j of the backward (mode-seeking) KL, as BOND's J-BOND")
    var_floor: float = option(
        1e-4, help="nig: floor on the reference variance s0² and the predictive scale² (reconstruction: list rewards "
                   "are often constant per context, e.g. all-zero NDCG)")

    def __post_init__(self) -> None:
        if self.estimator not in ESTIMATORS:
            raise ValueError(f"estimator must be one of {sorted(ESTIMATORS)}, got {self.estimator!r}")
        if self.loss not in ("forward", "backward", "jeffreys"):
            raise ValueError(f"loss must be one of ['backward', 'forward', 'jeffreys'], got {self.loss!r}")
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


def forward_kl_loss(w: torch.Tensor, logp: torch.Tensor) -> torch.Tensor:
    """METHOD.md §3, L_BLADE (first term): ``-mean_x Σ_i (w_i - 1/G)·log π_θ(y_i|x)``. Its gradient
    is the SNIS estimate of ∇KL(π* ‖ π_θ) = -E_π*[∇log π_θ]; the ``-1/G`` baseline has zero mean
    under on-policy sampling (E_π[∇log π] = 0) and only removes variance. w (B, G) no grad."""
    G = logp.shape[1]
    return -((w - 1.0 / G) * logp).sum(1).mean()


def backward_kl_loss(signal: torch.Tensor, logp: torch.Tensor) -> torch.Tensor:
    """METHOD.md §3, ``loss: backward`` (vBoN's objective): REINFORCE with reward
    ``s_i = (N-1)·log F(r_i)`` and the leave-one-out baseline ``A_i = s_i - mean_{j≠i} s_j``,
    loss ``-mean_x (1/G)·Σ_i A_i·log π_θ(y_i|x)``; its gradient estimates ∇KL(π_θ ‖ π*) at the
    anchor π_θt = π_θ (the log π_θ - log π_θt term has zero-mean score). signal (B, G) no grad."""
    G = logp.shape[1]
    if G < 2:
        raise ValueError("loss 'backward'/'jeffreys' needs G >= 2 rollouts per context for the leave-one-out baseline")
    adv = signal - (signal.sum(1, keepdim=True) - signal) / (G - 1)  # = G/(G-1)·(s_i - mean s)
    return -(adv * logp).mean(1).mean()


@register("blade")
class BladeObjective(Objective):
    """BLADE (METHOD.md §3). One call: ``log F_post`` of the rewards (no grad), SNIS weights, the
    chosen KL to the target, plus ``β_kl``·k3 KL to π_ref; with ``γ > 0`` the group's rewards are
    then remembered as evidence for later visits of the same context.

    The weights need no importance ratio: the target is anchored at the sampling policy π_θt, so
    ``w`` are exactly its SNIS weights. ``old_token_logp`` is only read for the ``logp_drift``
    diagnostic (mean |log π_θ - log π_old| per list): nonzero means the batch is reused off-policy
    or the sampler and the training forward disagree, where the ``-1/G`` and LOO baselines stop
    being exactly zero-mean."""

    config_class = BladeConfig

    def __init__(self, config: BladeConfig | None, prior: RefPrior):
        self.config = config or BladeConfig()
        if prior is None:
            raise ValueError("BLADE needs the reference prior (the reference rollouts' rewards)")
        self.prior = prior
        self.estimator = make_estimator(self.config.estimator, self.config.kappa0, self.config.var_floor)
        # 'static' ignores evidence, so it keeps none
        use_evidence = self.config.gamma > 0 and self.config.estimator != "static"
        self.evidence = EvidenceBuffer(self.config.gamma) if use_evidence else None

    def __call__(self, batch: RolloutBatch) -> tuple[torch.Tensor, dict[str, float]]:
        cfg = self.config
        rows = np.asarray(batch.rows, dtype=np.int64)
        rewards = batch.rewards.detach().cpu().double().numpy()                    # (B, G)
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
        else:  # BOND's Jeffreys divergence: (1-β)·KL(π* ‖ π) + β·KL(π ‖ π*); β = 1 is backward
            align = (1.0 - cfg.beta_j) * losses["loss_forward"] + cfg.beta_j * losses["loss_backward"]

        kl = k3_kl(batch.token_logp, batch.ref_token_logp, batch.mask).mean()     # mean over lists
        loss = align + cfg.beta_kl * kl

        with torch.no_grad():
            drift = ((batch.token_logp - batch.old_token_logp) * batch.mask).sum(-1).abs().mean()
        diag = bon_diagnostics(log_f, w_np, cfg.n, rewards=rewards, kl=kl.item(),
                               **{k: v.item() for k, v in losses.items()})
        diag["loss"] = loss.item()
        diag["logp_drift"] = drift.item()
        return loss, diag

    def state_dict(self) -> dict:
        return {"evidence": self.evidence.state_dict()} if self.evidence is not None else {}

    def load_state_dict(self, state: dict) -> None:
        if self.evidence is not None and "evidence" in state:
            self.evidence.load_state_dict(state["evidence"])
