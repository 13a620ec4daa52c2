"""Small pieces the baseline objectives share: the list log-ratio ``h``, the zero penalty of
methods without a KL term, a per-context seeded generator for the offline methods' random picks
and the read mask of their picked lists. Not a method (registers nothing). The reward diagnostics
every method logs and the rewards as numpy are :mod:`blade.align.objective`'s
(``reward_diagnostics``, ``as_numpy``), shared with BLADE.

torch is imported lazily (:mod:`blade.lazy`): validating a method's config must not import it.
"""

from __future__ import annotations

import numpy as np

from blade.align.objective import RolloutBatch
from blade.lazy import torch


def list_log_ratio(batch: RolloutBatch) -> torch.Tensor:
    """``h = log π_θ(y|x) − log π_ref(y|x)`` of every list (docs/method.md (3.9): constrained
    log-probs summed over the list's tokens). (B, G), grad through ``token_logp``."""
    return ((batch.token_logp - batch.ref_token_logp) * batch.mask).sum(-1)


def zero_penalty(like: torch.Tensor) -> torch.Tensor:
    """The penalty term of a method that has none: a 0-dim zero on ``like``'s device and dtype."""
    return torch.zeros((), dtype=like.dtype, device=like.device)


def masked_mean(x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Mean of ``x`` over the entries where ``keep`` holds; an exact 0 (still in the graph, so
    ``backward`` works) when none does — a batch of all-tied contexts carries no preference."""
    keep = keep.to(x.dtype)
    return (x * keep).sum() / keep.sum().clamp(min=1.0)


def context_rng(step: int, row: int, salt: int) -> np.random.Generator:
    """A generator for one context's random choices at one step (``salt`` tells the methods
    apart): the same batch gives the same picks, so a resumed run replays them."""
    return np.random.default_rng([int(salt), int(step), int(row)])


def pair_mask(rewards: np.ndarray, *picks: np.ndarray) -> np.ndarray:
    """(B, G) bool: True at each context's picked lists (each pick an index array (B,) or (B, m)),
    for an offline objective's ``lists_read``."""
    keep = np.zeros(np.shape(rewards), dtype=bool)
    ar = np.arange(keep.shape[0])
    for idx in picks:
        idx = np.asarray(idx)
        keep[ar[:, None] if idx.ndim == 2 else ar, idx] = True
    return keep
