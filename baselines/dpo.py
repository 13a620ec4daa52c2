"""DPO (Rafailov et al. 2023, "Direct Preference Optimization", Eq. 7) on the reference rollouts.

Offline (``data = "reference"``): each step the loop hands over a context's M stored lists from
π_ref with their rewards. The preference pair is the context's best (``y_w``, highest reward) and
worst (``y_l``, lowest) list; the loss is the sigmoid DPO loss

    L = −log σ(β·(h_w − h_l)),   h = log π_θ(y|x) − log π_ref(y|x)   (docs/method.md (5.1))

with list log-probs under the constrained policy (docs/method.md (3.9)), averaged over the
contexts that have a pair. Checked against TRL 1.16 ``DPOTrainer._compute_loss`` with
``loss_type="sigmoid"`` (tests/test_baselines.py).

Choices not fixed by the paper: a context whose M rewards all tie has no preference and is left
out (its share is logged as ``tied_frac``; ``pair_frac`` = 1 − tied_frac); among tied best (or
worst) lists the first in sample order is taken — the rollouts are i.i.d., so that is a uniformly
random one. No KL term beyond DPO's implicit one: the penalty is 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from baselines._common import list_log_ratio, masked_mean, pair_mask, zero_penalty
from blade.align.estimators import RefPrior
from blade.align.objective import Objective, RolloutBatch, as_numpy, reward_diagnostics
from blade.align.registry import register
from blade.config import option
from blade.lazy import F, torch


@dataclass
class DPOConfig:
    beta: float = option(0.1, help="β of the sigmoid DPO loss −log σ(β(h_w − h_l)) (DPO paper / TRL default 0.1)")

    def __post_init__(self) -> None:
        if not (self.beta > 0 and math.isfinite(self.beta)):
            raise ValueError(f"beta must be a finite number > 0, got {self.beta}")


def best_worst(rewards: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per context the index of the first highest- and first lowest-reward list, and whether they
    differ in reward (False = all tied, no pair). rewards (B, G) → (B,), (B,), (B,) bool."""
    return rewards.argmax(1), rewards.argmin(1), rewards.max(1) > rewards.min(1)


@register("dpo")
class DPOObjective(Objective):
    """Sigmoid DPO on best-vs-worst reference rollouts (docs/method.md (5.1))."""

    config_class = DPOConfig
    data = "reference"
    target = "none"  # a preference loss on reference pairs: no BoN target

    def __init__(self, config: DPOConfig | None, prior: RefPrior | None = None):
        self.config = config or DPOConfig()

    def lists_read(self, rewards: np.ndarray, rows: np.ndarray, step: int) -> np.ndarray:
        """The best and the worst list of each context: the only ones the loss reads."""
        return pair_mask(rewards, *best_worst(rewards)[:2])

    def __call__(self, batch: RolloutBatch) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
        beta = self.config.beta
        rewards = as_numpy(batch.rewards)                                          # (B, G)
        w_idx, l_idx, has_pair = best_worst(rewards)                               # (B,) each
        h = list_log_ratio(batch)                                                  # (B, G), grad
        ar = torch.arange(h.shape[0], device=h.device)
        h_w = h[ar, torch.as_tensor(w_idx, device=h.device)]                       # (B,)
        h_l = h[ar, torch.as_tensor(l_idx, device=h.device)]                       # (B,)
        keep = torch.as_tensor(has_pair, device=h.device)
        # DPO Eq. 7; docs/method.md (5.1): −log σ(β(h_w − h_l)); logsigmoid is stable for any margin
        per_pair = -F.logsigmoid(beta * (h_w - h_l))                               # (B,)
        loss = masked_mean(per_pair, keep)
        with torch.no_grad():
            margin = (h_w - h_l)[keep]
            diag = {"loss_dpo": loss.item(), "pair_frac": float(has_pair.mean()),
                    "margin": margin.mean().item() if margin.numel() else 0.0,
                    "pair_accuracy": (margin > 0).double().mean().item() if margin.numel() else 0.0,
                    **reward_diagnostics(rewards)}
        return loss, zero_penalty(loss), diag
