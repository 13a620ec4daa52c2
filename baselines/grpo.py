"""GRPO (Shao et al. 2024, "DeepSeekMath", arXiv 2402.03300, Eq. 3 objective, Eq. 4 KL estimator)
in the form of TRL 1.16's ``GRPOTrainer`` (``_generate_and_score_completions`` for the advantages,
``_compute_loss`` for the loss), pinned to TRL 1.16.0's defaults except where docs/method.md §5 sets a value
(β = 0.04 — TRL's default is 0.0, i.e. no reference model; G = 8 is the loop's ``group_size``).

Online (``data = "policy"``): G lists per context from the current policy. Per list i of context x
and token t (docs/method.md (5.4)):

    A_i     = (r_i − mean_j r_j) / (std_j r_j + 1e-4)          std unbiased (TRL's nanstd), scale_rewards=group
    ρ_it    = exp(log π_θ(y_it) − log π_old(y_it))             per-token ratio to the sampling policy
    ℓ_it    = −min(ρ_it·A_i, clip(ρ_it, 1−ε, 1+ε_high)·A_i)    clipped surrogate (PPO / GRPO Eq. 3)
    kl_it   = k3 = exp(ref − logp) − (ref − logp) − 1           docs/method.md (3.8); GRPO Eq. 4
    align   = agg(ℓ),   penalty = β·agg(kl·ρ)                   ρ·kl: TRL 1.16 use_bias_correction_kl=True

``agg`` follows ``loss_type``: ``dapo`` (TRL 1.16's default: sum over every real token of the
batch / number of real tokens — TRL divides by ``num_items_in_batch``, the generation batch's token
count, which is this batch's with one process, no accumulation and one iteration per generation),
``grpo`` (each list's token mean, then the mean over lists: the original GRPO Eq. 3) or ``dr_grpo``
(token sum / (lists · T), T the batch's padded token length, standing in for TRL's
``max_completion_length``). Log-probs are of the constrained lists (docs/method.md (3.9)).

TRL's ``use_bias_correction_kl`` multiplies the per-token KL by the (differentiable) ratio ρ; its
value is 1 on-policy but its gradient adds ``kl·∇log π``; ``kl_ratio_correction: false`` gives the
original GRPO penalty. The loop makes one optimiser step per batch (TRL's ``num_iterations = 1``),
so ρ = 1 in value and the clip only acts if the sampler and the training forward disagree; the
clip is still in the gradient path exactly as in TRL.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, get_args

from blade.align.estimators import RefPrior
from blade.align.objective import Objective, RolloutBatch, k3_kl, reward_diagnostics
from blade.align.registry import register
from blade.config import option
from blade.lazy import torch

TRL_VERSION = "1.16.0"  # the TRL release whose GRPOTrainer defaults and loss this file follows


# The choices, once: from_dict checks a config against them, __post_init__ a directly built one
ScaleRewards = Literal["group", "batch", "none"]
LossType = Literal["dapo", "grpo", "dr_grpo"]


@dataclass
class GRPOConfig:
    beta: float = option(0.04, help="β of the k3 KL(π_θ ‖ π_ref) penalty (docs/method.md §5; TRL 1.16 default 0.0)")
    epsilon: float = option(0.2, help="clipping ε: ratio clipped to [1−ε, 1+ε_high] (TRL default 0.2)")
    epsilon_high: float | None = option(None, help="upper clipping ε_high; null = ε (TRL default)")
    scale_rewards: ScaleRewards = option(
        "group", help="advantage scaling (TRL 1.16 default 'group'): divide (r − group mean) by the group std + 1e-4, "
                      "the batch std + 1e-4, or not at all (Dr. GRPO)")
    loss_type: LossType = option(
        "dapo", help="token aggregation (TRL 1.16 default 'dapo'): 'dapo' = mean over all real tokens of the batch, "
                     "'grpo' = per-list token mean then mean over lists, 'dr_grpo' = token sum / (lists·T)")
    kl_ratio_correction: bool = option(
        True, help="multiply the per-token KL by the ratio π_θ/π_old (TRL 1.16 use_bias_correction_kl, default true)")

    def __post_init__(self) -> None:
        if not (self.beta >= 0 and math.isfinite(self.beta)):
            raise ValueError(f"beta must be a finite number >= 0, got {self.beta}")
        if not 0.0 < self.epsilon < 1.0:
            raise ValueError(f"epsilon must lie in (0, 1), got {self.epsilon}")
        if self.epsilon_high is not None and not (self.epsilon_high > 0 and math.isfinite(self.epsilon_high)):
            raise ValueError(f"epsilon_high must be a finite number > 0 or null, got {self.epsilon_high}")
        if self.scale_rewards not in get_args(ScaleRewards):
            raise ValueError(f"scale_rewards must be one of {sorted(get_args(ScaleRewards))}, got {self.scale_rewards!r}")
        if self.loss_type not in get_args(LossType):
            raise ValueError(f"loss_type must be one of {sorted(get_args(LossType))}, got {self.loss_type!r}")


def group_advantages(rewards: torch.Tensor, scale: str) -> torch.Tensor:
    """TRL 1.16 ``_generate_and_score_completions`` (sum_then_normalize): ``r − group mean``,
    divided by the unbiased std of the group (or of the whole batch) + 1e-4 unless ``scale`` is
    'none'. A tied group gets advantage 0. rewards (B, G) → (B, G)."""
    adv = rewards - rewards.mean(1, keepdim=True)
    if scale == "group":
        adv = adv / (rewards.std(1, correction=1, keepdim=True) + 1e-4)
    elif scale == "batch":
        adv = adv / (rewards.std(correction=1) + 1e-4)
    return adv


def aggregate(per_token: torch.Tensor, mask: torch.Tensor, loss_type: str) -> torch.Tensor:
    """TRL 1.16 ``_compute_loss``'s reduction of a (B, G, T) per-token loss over the real tokens."""
    m = mask.to(per_token.dtype)
    if loss_type == "dapo":
        return (per_token * m).sum() / m.sum().clamp(min=1.0)
    if loss_type == "grpo":
        return ((per_token * m).sum(-1) / m.sum(-1).clamp(min=1.0)).mean()
    # dr_grpo: a constant normaliser; lists · padded length
    return (per_token * m).sum() / (m.shape[0] * m.shape[1] * m.shape[2])


@register("grpo")
class GRPOObjective(Objective):
    """Group-relative clipped policy gradient with a k3 KL penalty (docs/method.md (5.4))."""

    config_class = GRPOConfig
    data = "policy"
    target = "none"  # group-normalised raw rewards: no BoN target

    def __init__(self, config: GRPOConfig | None, prior: RefPrior | None = None):
        self.config = config or GRPOConfig()

    def __call__(self, batch: RolloutBatch) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
        cfg = self.config
        eps_low = cfg.epsilon
        eps_high = cfg.epsilon if cfg.epsilon_high is None else cfg.epsilon_high
        logp, mask = batch.token_logp, batch.mask                                  # (B, G, T)
        rewards = batch.rewards.to(device=logp.device, dtype=torch.float64)       # (B, G)
        adv = group_advantages(rewards, cfg.scale_rewards).to(logp.dtype)[..., None]  # (B, G, 1)
        # padding: logp = old = 0 there, so the ratio is 1 and every term is masked in aggregate()
        ratio = torch.exp((logp - batch.old_token_logp).masked_fill(~mask, 0.0))   # (B, G, T) ρ, grad
        clipped = torch.clamp(ratio, 1.0 - eps_low, 1.0 + eps_high)
        # GRPO Eq. 3 (PPO clipped surrogate, per token); docs/method.md (5.4)
        per_token_pg = -torch.min(ratio * adv, clipped * adv)                      # (B, G, T)
        align = aggregate(per_token_pg, mask, cfg.loss_type)
        # GRPO Eq. 4 / docs/method.md (3.8): k3 per token — k3_kl sums its last axis, a trailing
        # singleton axis keeps one value per token
        per_token_kl = k3_kl(logp[..., None], batch.ref_token_logp[..., None], mask[..., None])  # (B, G, T)
        kl_term = per_token_kl * ratio if cfg.kl_ratio_correction else per_token_kl
        # TRL 1.16: per_token_loss + β·per_token_kl, same aggregation; docs/method.md (5.4)
        penalty = cfg.beta * aggregate(kl_term, mask, cfg.loss_type)
        with torch.no_grad():
            m = mask.to(logp.dtype)
            a = adv.expand_as(ratio)
            clip_region = ((ratio < 1 - eps_low) & (a < 0)) | ((ratio > 1 + eps_high) & (a > 0))
            diag = {"loss_policy": align.item(), "loss_kl": penalty.item(),
                    "kl": ((per_token_kl * m).sum() / m.sum().clamp(min=1.0)).item(),  # TRL's logged per-token mean
                    "clip_ratio": ((clip_region * m).sum() / m.sum().clamp(min=1.0)).item(),
                    "advantage_abs": adv.abs().mean().item(),
                    **reward_diagnostics(batch.rewards)}
        return align, penalty, diag
