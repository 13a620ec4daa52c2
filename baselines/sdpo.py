"""S-DPO, softmax DPO (Chen et al. 2024, "On Softmax Direct Preference Optimization for
Recommendation", NeurIPS 2024, arXiv 2406.09215; its loss L_S-DPO as the authors' code computes it in
``trainer/softmax_dpo_trainer.py::dpo_loss``) on the reference rollouts.

Offline (``data = "reference"``): per context the best of its M stored π_ref lists (highest reward)
is the preferred list ``y_w``, and ``m`` others are its negatives ``y_l1..y_lm``:

    L = −log σ(−log Σ_j exp(β·(h_lj − h_w))) = softplus(logsumexp_j β·(h_lj − h_w))   (docs/method.md (5.2))

with ``h = log π_θ(y|x) − log π_ref(y|x)`` of the constrained lists (docs/method.md (3.9)). m = 1
is the sigmoid DPO loss.

Negatives, following the authors' code (github chenyuxin1999/S-DPO, ``softmax_dpo.py``: the
negatives are ``random.sample`` of the candidates other than the positive, i.e. drawn uniformly
without replacement): ``negatives: random`` (default) draws m distinct lists uniformly among
those with a reward *strictly below* the best — a list tying the best is not dispreferred.
``negatives: lowest`` takes the m lowest-reward lists instead (the clearest negatives; an ablation).
A context with fewer than m lower lists uses those it has (its softmax runs over fewer terms;
``negatives_mean`` logs how many), and one with none (all rewards tie) is left out. The random
picks are seeded by (step, context row), so a resumed run replays them. No KL term: penalty 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, get_args

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
from blade.lazy import F, torch

_SALT = 5  # tells this method's random picks apart from other methods' (see context_rng)


Negatives = Literal["random", "lowest"]  # the choices, once: from_dict checks a config, __post_init__ a direct build


@dataclass
class SDPOConfig:
    beta: float = option(1.0, help="β of the softmax DPO loss (S-DPO paper and code default 1)")
    m: int = option(3, help="negatives per context (S-DPO's neg_num; the paper's default 3)")
    negatives: Negatives = option(
        "random", help="'random': m distinct lists drawn uniformly among those below the best (as the S-DPO code "
                       "samples negatives); 'lowest': the m lowest-reward lists")

    def __post_init__(self) -> None:
        if not (self.beta > 0 and math.isfinite(self.beta)):
            raise ValueError(f"beta must be a finite number > 0, got {self.beta}")
        if self.m < 1:
            raise ValueError(f"m (negatives per context) must be >= 1, got {self.m}")
        if self.negatives not in get_args(Negatives):
            raise ValueError(f"negatives must be {' or '.join(map(repr, get_args(Negatives)))}, got {self.negatives!r}")


def pick_negatives(rewards: np.ndarray, rows: np.ndarray, step: int, m: int, how: str) -> tuple[np.ndarray, np.ndarray,
                                                                                                  np.ndarray]:
    """Best list and up to ``m`` negatives (reward strictly below the best) per context.
    rewards (B, G) → best (B,), neg (B, m) indices (padding 0), neg_mask (B, m) bool."""
    B, G = rewards.shape
    best = rewards.argmax(1)
    neg = np.zeros((B, m), dtype=np.int64)
    neg_mask = np.zeros((B, m), dtype=bool)
    for b in range(B):
        below = np.flatnonzero(rewards[b] < rewards[b, best[b]])
        if below.size == 0:
            continue
        if how == "random":
            chosen = context_rng(step, rows[b], _SALT).choice(below, size=min(m, below.size), replace=False)
        else:  # lowest rewards first; a stable sort keeps ties in sample order
            chosen = below[np.argsort(rewards[b, below], kind="stable")][:m]
        neg[b, :chosen.size], neg_mask[b, :chosen.size] = chosen, True
    return best, neg, neg_mask


@register("sdpo")
class SDPOObjective(Objective):
    """Softmax DPO: best reference rollout vs m lower ones (docs/method.md (5.2))."""

    config_class = SDPOConfig
    data = "reference"
    target = "none"  # a softmax preference loss on reference lists: no BoN target

    def __init__(self, config: SDPOConfig | None, prior: RefPrior | None = None):
        self.config = config or SDPOConfig()

    def lists_read(self, rewards: np.ndarray, rows: np.ndarray, step: int) -> np.ndarray:
        """The best list and the chosen negatives of each context: the only lists the loss reads."""
        best, neg, neg_mask = pick_negatives(rewards, np.asarray(rows, dtype=np.int64), step, self.config.m,
                                             self.config.negatives)
        keep = pair_mask(rewards, best)
        keep[np.nonzero(neg_mask)[0], neg[neg_mask]] = True
        return keep

    def __call__(self, batch: RolloutBatch) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
        cfg = self.config
        rewards = as_numpy(batch.rewards)                                          # (B, G)
        rows = np.asarray(batch.rows, dtype=np.int64)
        best, neg, neg_mask = pick_negatives(rewards, rows, batch.step, cfg.m, cfg.negatives)
        h = list_log_ratio(batch)                                                  # (B, G), grad
        dev = h.device
        h_w = h.gather(1, torch.as_tensor(best, device=dev)[:, None])              # (B, 1)
        h_l = h.gather(1, torch.as_tensor(neg, device=dev))                        # (B, m)
        nm = torch.as_tensor(neg_mask, device=dev)
        keep = nm.any(1)                                                           # (B,) has ≥ 1 negative
        # S-DPO's L_S-DPO (authors' dpo_loss); docs/method.md (5.2): softplus(logsumexp_j β(h_lj − h_w)).
        # Missing negatives are −inf inside the logsumexp (zero weight); a context without any is
        # replaced by 0 (no −inf-only logsumexp, whose gradient is NaN) and masked out.
        z = (cfg.beta * (h_l - h_w)).masked_fill(~nm, -math.inf)
        z = z.masked_fill(~keep[:, None], 0.0)
        per_ctx = F.softplus(torch.logsumexp(z, 1))                                # (B,)
        loss = masked_mean(per_ctx, keep)
        with torch.no_grad():
            gap = (h_w - h_l)[nm]                                                  # every (best, negative) pair
            diag = {"loss_sdpo": loss.item(), "pair_frac": keep.double().mean().item(),
                    "negatives_mean": float(neg_mask.sum(1)[neg_mask.any(1)].mean()) if neg_mask.any() else 0.0,
                    "margin": gap.mean().item() if gap.numel() else 0.0,
                    "pair_accuracy": (gap > 0).double().mean().item() if gap.numel() else 0.0,
                    **reward_diagnostics(rewards)}
        return loss, zero_penalty(loss), diag
