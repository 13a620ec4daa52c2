"""RLOO (Ahmadian et al. 2024, Eq. 4) as a researcher would add it from their own package — the
example of docs/adding-a-baseline.md — plus a deliberately broken method whose loss is NaN."""

from __future__ import annotations

from dataclasses import dataclass

from blade.align.objective import Objective, RolloutBatch, k3_kl
from blade.align.registry import register
from blade.config import option
from blade.lazy import torch


@dataclass
class RLOOConfig:
    beta_kl: float = option(0.05, help="weight of the k3 KL(π_θ ‖ π_ref) penalty")

    def __post_init__(self) -> None:
        if not self.beta_kl >= 0:
            raise ValueError(f"beta_kl must be >= 0, got {self.beta_kl}")


@register("rloo")
class RLOO(Objective):
    config_class = RLOOConfig
    data = "policy"

    def __init__(self, config: RLOOConfig | None, prior):
        self.config = config or RLOOConfig()

    def __call__(self, batch: RolloutBatch):
        r = batch.rewards                                    # (B, G), no grad
        G = r.shape[1]
        adv = r - (r.sum(1, keepdim=True) - r) / (G - 1)     # leave-one-out baseline (Eq. 4)
        align = -(adv * batch.logp).mean()
        kl = k3_kl(batch.token_logp, batch.ref_token_logp, batch.mask).mean()
        return align, self.config.beta_kl * kl, {"kl": kl.item(), "reward_mean": r.mean().item()}


@register("diverges")
class Diverges(Objective):
    """Returns a NaN loss: the loop must stop this run with a clear message and keep the others."""

    def __init__(self, config, prior):
        pass

    def __call__(self, batch: RolloutBatch):
        nan = batch.logp.sum() * float("nan")
        return nan, torch.zeros(()), {}
