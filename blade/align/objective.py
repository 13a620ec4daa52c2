"""The alignment-objective interface and the pieces the Best-of-N family shares.

One trainer drives every alignment method through :class:`Objective`: it fills a
:class:`RolloutBatch` — G lists per context, sampled from the current policy or (offline methods)
read from the stored reference rollouts; every log-prob in it is the constrained one,
docs/method.md (3.9) — and asks the objective for its alignment term, its regulariser and a dict of
diagnostics. A method is one file that subclasses :class:`Objective`, declares its config dataclass
as ``config_class`` and registers itself with ``@register("name")`` (:mod:`blade.align.registry`);
BLADE's is :mod:`blade.align.blade_objective`, the baselines' are under ``baselines/``.

An objective also says what kind of Best-of-N target it trains toward (``target``, read through
:meth:`Objective.target_kind`): the analysis groups the rows by it (the "static" side of the
gradient-decay and static-bound comparisons, docs/method.md §2, §6.3–§6.4), so no table keeps its
own list of method names.

Shared here: the SNIS weights (3.4), the k3 KL (3.8), the forward (3.5) and backward (3.6) KL
losses, the per-step diagnostics of the gradient-decay curves (docs/method.md §3.7) and the reward
diagnostics every method logs.
"""

from __future__ import annotations

import abc
import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from blade.lazy import torch  # imported on first use: config validation must not import torch

# What an objective's loss matches (docs/method.md §2–§3):
# - "static": a Best-of-N target weighted by an empirical reward CDF that the policy's own rewards
#   do not update — F̂_ref of the stored reference rollouts (vBoN, BLADE `estimator: static`) or a
#   BoN anchor's (BOND): the static BoN alignment of docs/method.md §2 and §6.3–§6.4, capped by BoN@N
#   of π_ref or stalling where its rollouts saturate the CDF;
# - "dynamic": BLADE's self-evolving target, F_post updated with the current rollouts' rewards (3.1)/(3.2);
# - "none": no BoN target CDF in the loss (DPO, S-DPO, GRPO, BoNBoN, a plain RL method).
TargetKind = Literal["static", "dynamic", "none"]


@dataclass
class RolloutBatch:
    rows: np.ndarray               # (B,) train-split rows of the contexts
    rewards: torch.Tensor          # (B, G) float32 combined list reward (no grad)
    # Every per-token log-prob is the CONSTRAINED one (docs/method.md (3.9)): the softmax
    # renormalised over the tokens the sampler allows there (Policy.token_logprobs(constrained=True)).
    token_logp: torch.Tensor       # (B, G, T) per-token log π_θ of the sampled lists, WITH grad, 0 on padding
    ref_token_logp: torch.Tensor   # (B, G, T) per-token log π_ref, no grad, 0 on padding
    old_token_logp: torch.Tensor   # (B, G, T) per-token log-prob under the policy that sampled (temperature 1), no grad
    mask: torch.Tensor             # (B, G, T) bool, True on real tokens
    step: int                      # optimiser step (for evidence decay)
    # filled only for objectives that declare an anchor (anchor_ema, e.g. BOND), else None:
    anchor_token_logp: torch.Tensor | None = None  # (B, G, T) per-token log π_anchor of the batch's lists, no grad
    anchor_rewards: torch.Tensor | None = None     # (B, Ga) rewards of Ga lists sampled from π_anchor, same contexts

    @property
    def logp(self) -> torch.Tensor:
        """(B, G) log π_θ(y|x) of each list: its tokens' log-probs summed (padding masked)."""
        return (self.token_logp * self.mask).sum(-1)


class Objective(abc.ABC):
    """An alignment loss over one :class:`RolloutBatch`. ``state_dict`` holds whatever must survive
    a resume (JSON-serialisable); stateless objectives keep the defaults."""

    name: str
    config_class: type | None = None
    # What the loop feeds the objective (read per instance, so a config may set them in __init__):
    # "policy": G lists sampled from π_θ each step; "reference": the context's stored reference
    # rollouts (all M lists from π_ref, G = M, old_token_logp = ref_token_logp) — offline methods.
    data: Literal["policy", "reference"] = "policy"
    # anchor_ema = η: the loop keeps an EMA copy of the policy (anchor ← (1-η)·anchor + η·θ after
    # each step) and fills anchor_token_logp and, with anchor_samples = Ga > 0, anchor_rewards.
    anchor_ema: float | None = None
    anchor_samples: int = 0
    # The kind of BoN target the loss matches (TargetKind above); an objective whose kind depends on
    # its options overrides target_kind. The default, "none", is what a method that names no BoN
    # target has.
    target: TargetKind = "none"

    @classmethod
    def target_kind(cls, options: Any | None) -> TargetKind:
        """The target kind under ``options`` (the validated ``config_class`` instance, or None for
        the defaults). Torch-free: the analysis asks it of a resolved config without training."""
        return cls.target

    @abc.abstractmethod
    def __call__(self, batch: RolloutBatch) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
        """Return ``(align_loss, penalty_loss, diagnostics)``: the alignment term and the
        regulariser (e.g. β·KL(π_θ ‖ π_ref); ``torch.zeros(())`` when there is none), both scalars
        with grad through ``token_logp``. The loop steps on their sum and logs the gradient norm of
        the sum (``grad_norm``) and of the alignment term alone (``grad_norm_align``) — the
        regulariser's gradient is a floor that would hide gradient decay."""

    def lists_read(self, rewards: np.ndarray, rows: np.ndarray, step: int) -> np.ndarray | None:
        """Offline objectives: the (B, G) bool mask of the stored lists whose log-probs the loss
        reads, given their rewards (B, G) — e.g. DPO's best and worst of M = 16. The loop scores
        only those (forward and backward on 2 of 16 lists instead of all); the others reach
        ``__call__`` with log-probs 0 and mask False, so an objective that declares this must not
        read them. ``None`` (the default): every list is scored."""
        return None

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:  # noqa: B027 — stateless by default
        pass


# ---------------------------------------------------------------------------------------------
# Pieces shared by the BoN family
# ---------------------------------------------------------------------------------------------


def bon_weights(log_f: np.ndarray, n: int) -> np.ndarray:
    """``w_i = softmax_i((N-1)·log F(r_i))`` over each context's G rollouts (docs/method.md (3.4)): the
    self-normalised importance weights of ``π* ∝ π_θt·F^(N-1)`` for rollouts drawn from ``π_θt``.
    log_f (B, G) float64 → (B, G)."""
    s = (n - 1) * np.asarray(log_f, dtype=np.float64)
    s = s - s.max(1, keepdims=True)
    e = np.exp(s)
    return e / e.sum(1, keepdims=True)


def k3_kl(token_logp: torch.Tensor, ref_token_logp: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-list k3 estimate of KL(π_θ ‖ π_ref) on sampled tokens, docs/method.md (3.8) (Schulman's
    k3, as in TRL's GRPO): per token ``exp(ref - logp) - (ref - logp) - 1`` (≥ 0, unbiased, 0 iff
    equal), summed over the list's real tokens. (B, G, T) → (B, G), with grad through ``token_logp``."""
    d = (ref_token_logp - token_logp).masked_fill(~mask, 0.0)
    return ((torch.exp(d) - d - 1.0) * mask).sum(-1)


def as_numpy(x: np.ndarray | torch.Tensor) -> np.ndarray:
    """``x`` as float64 numpy, detached and on the CPU if it is a tensor (rewards, weights, log F):
    the one way every objective turns a batch's numbers into numpy."""
    if torch.is_tensor(x):
        x = x.detach().cpu().double().numpy()
    return np.asarray(x, dtype=np.float64)


def reward_diagnostics(rewards: np.ndarray | torch.Tensor) -> dict[str, float]:
    """The reward diagnostics every method logs, rewards (B, G): ``reward_mean`` (all lists),
    ``reward_bon_group`` (mean over contexts of each group's best reward: the batch's BoN@G) and
    ``tied_frac`` (share of contexts whose G rewards all tie — every estimator gives such a group
    uniform weights, so this separates "ties" from "saturation" as the cause of a falling spread)."""
    r = as_numpy(rewards)
    return {"reward_mean": float(r.mean()), "reward_bon_group": float(r.max(1).mean()),
            "tied_frac": float((r == r[:, :1]).all(1).mean())}


def bon_diagnostics(log_f: np.ndarray | torch.Tensor, w: np.ndarray | torch.Tensor, n: int,
                    rewards: np.ndarray | torch.Tensor | None = None, kl: float | None = None,
                    **losses: float) -> dict[str, float]:
    """The per-step diagnostics every BoN-family method logs (docs/method.md §3.7; the gradient-decay
    curves of docs/method.md §6.3). log_f, w, rewards: (B, G).

    - ``weight_spread``: mean over contexts of ``Σ_i |w_i - 1/G|`` (0 = no signal, uniform weights)
    - ``ess``: mean effective sample size ``1 / Σ_i w_i²`` (G = uniform, 1 = one winner)
    - ``saturated_frac``: share of rollouts with ``F ≥ 0.99`` (where the static target is flat)
    - ``signal_std``: mean within-group std (ddof 0) of ``(N-1)·log F``
    - with rewards: :func:`reward_diagnostics` (``reward_mean``, ``reward_bon_group`` — the
      current policy's BoN@G —, ``tied_frac``) and ``reward_max`` (the best of the whole batch)
    - ``kl`` and any ``loss_*`` passed in, when given.
    The trainer adds the gradient norms (``grad_norm``, ``grad_norm_align``)."""
    log_f, w = as_numpy(log_f), as_numpy(w)
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
        r = as_numpy(rewards)
        shared = reward_diagnostics(r)
        # reward_max right after reward_mean: the diagnostics columns keep their order
        out.update(reward_mean=shared.pop("reward_mean"), reward_max=float(r.max()), **shared)
    out.update({k: float(v) for k, v in losses.items()})
    return out


# ---------------------------------------------------------------------------------------------
# The two ways the BoN family matches its target: forward KL (SNIS weights) and backward KL
# ---------------------------------------------------------------------------------------------


def forward_kl_loss(w: torch.Tensor, logp: torch.Tensor) -> torch.Tensor:
    """docs/method.md (3.5), L_fwd: ``-mean_x Σ_i (w_i - 1/G)·log π_θ(y_i|x)``. Its gradient
    is the SNIS estimate of ∇KL(π* ‖ π_θ) = -E_π*[∇log π_θ]; the ``-1/G`` baseline has zero mean
    under on-policy sampling (E_π[∇log π] = 0) and only removes variance. w (B, G) no grad."""
    G = logp.shape[1]
    return -((w - 1.0 / G) * logp).sum(1).mean()


def backward_kl_loss(signal: torch.Tensor, logp: torch.Tensor) -> torch.Tensor:
    """docs/method.md (3.6), ``loss: backward`` (vBoN's estimator, (5.5)): REINFORCE with reward
    ``s_i = (N-1)·log F(r_i)`` and the leave-one-out baseline ``A_i = s_i - mean_{j≠i} s_j``,
    loss ``-mean_x (1/G)·Σ_i A_i·log π_θ(y_i|x)``; its gradient estimates ∇KL(π_θ ‖ π*) at the
    anchor π_θt = π_θ (the log π_θ - log π_θt term has zero-mean score). signal (B, G) no grad."""
    G = logp.shape[1]
    if G < 2:
        raise ValueError("loss 'backward'/'jeffreys' needs G >= 2 rollouts per context for the leave-one-out baseline")
    adv = signal - (signal.sum(1, keepdim=True) - signal) / (G - 1)  # = G/(G-1)·(s_i - mean s)
    return -(adv * logp).mean(1).mean()
