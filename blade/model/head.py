"""The LM head at a few columns: the logits of chosen vocabulary rows only, from final hidden states.
Title codes allow a few hundred of a real vocabulary's tokens at a position, so both the policy's
constrained scorer (``Policy._sparse_head_logp``) and the sampler's decoding steps
(blade/sampling.py) multiply by those rows of the head's weight alone."""

from __future__ import annotations

import torch


def plain_linear(head) -> bool:
    """A plain ``Linear`` LM head (not LoRA's modules_to_save wrapper): its weight can be read by rows."""
    return type(head) is torch.nn.Linear


def head_at(head: torch.nn.Linear, h: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """Logits (n, U) of hidden states ``h`` (n, D) at vocabulary columns ``cols`` (U,), in the head's dtype."""
    z = h @ head.weight[cols].T
    return z if head.bias is None else z + head.bias[cols]
