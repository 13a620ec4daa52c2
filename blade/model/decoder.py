"""The pieces of a Llama/Qwen2 decoder that the suite's own forward passes run by hand: the list
sampler's KV-cached decoding (blade/sampling.py) and the prompt-sharing training forward
(blade/model/shared_prompt.py). Both call the model's own modules (norms, projections, MLP, rotary
embedding, LM head), so LoRA layers, biases and the configured activation apply, with the same
operations as the modules' code: float32 RMSNorm through the fused ``F.rms_norm`` and the rotary
embedding as ``x·cos + roll(x)·±sin`` give the same bits as the modules' own ``forward``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from blade.model.wrappers import unwrap_peft


class DecoderParts:
    BLOCKS = {("Qwen2DecoderLayer", "Qwen2Attention"), ("LlamaDecoderLayer", "LlamaAttention")}
    NORMS = {"Qwen2RMSNorm", "LlamaRMSNorm"}

    @classmethod
    def supports(cls, model) -> bool:
        """Whether ``model`` (LoRA-wrapped or not) is made of the decoder blocks these passes know,
        with full attention everywhere and no attention dropout in training."""
        base = unwrap_peft(model)
        body = getattr(base, "model", None)
        layers = getattr(body, "layers", None)
        if not layers or not isinstance(getattr(base, "lm_head", None), torch.nn.Module) or any(
                not hasattr(body, n) for n in ("embed_tokens", "norm", "rotary_emb")):
            return False
        if any(t != "full_attention" for t in (getattr(base.config, "layer_types", None) or ())):
            return False  # sliding-window layers
        if base.training and getattr(base.config, "attention_dropout", 0.0):
            return False  # attention dropout is the model's own business
        return all((type(b).__name__, type(b.self_attn).__name__) in cls.BLOCKS and b.self_attn.head_dim % 2 == 0
                   for b in layers)

    def __init__(self, model):
        base = unwrap_peft(model)
        self.body, self.head, self.layers = base.model, base.lm_head, list(base.model.layers)
        self.hd = self.layers[0].self_attn.head_dim
        self.H, self.KH = base.config.num_attention_heads, base.config.num_key_value_heads

    def _norm(self, mod, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.float32 and type(mod).__name__ in self.NORMS:
            return F.rms_norm(x, mod.weight.shape, mod.weight, mod.variance_epsilon)
        return mod(x)

    def _rotary(self, x: torch.Tensor, pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(cos, ±sin) for positions ``pos`` (N,), shaped (N, 1, head_dim) to broadcast over heads."""
        cos, sin = self.body.rotary_emb(x, pos[None])
        h = self.hd // 2
        return cos[0, :, None], torch.cat((-sin[0, :, :h], sin[0, :, h:]), -1)[:, None]

    def _rope(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        # x·cos + rotate_half(x)·sin, with rotate_half(x) = (-x2, x1) = roll(x)·(-1, 1)
        return x * cos + x.roll(self.hd // 2, -1) * sin


def distinct_rows(rows) -> tuple[list[int], list[int]]:
    """(first, inverse) of a sequence of token rows: each distinct row's first index, and each row's
    index among the distinct ones, in order of appearance. By hashing in Python: ``torch.unique(dim=0)``
    sorts, several ms per batch on a CPU."""
    at: dict[tuple[int, ...], int] = {}
    first, inverse = [], []
    for i, r in enumerate(rows):
        u = at.setdefault(tuple(r), len(at))
        if u == len(first):
            first.append(i)
        inverse.append(u)
    return first, inverse
