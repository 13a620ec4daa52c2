"""Attention for the suite's hand-run decoder passes (blade/model/decoder.py): the list sampler's
decoding steps and prefill, and the prompt-sharing training forward.

On a CPU, ``scaled_dot_product_attention``'s kernel costs a millisecond or more per call on these
passes' many short rows (a decoding step: one query per list over ~20 keys; the training forward: a
list's ~10 tokens over its prompt's and its own), whatever their arithmetic. There, attention
runs as two batched products with the query heads grouped by their key/value head (no repeated
keys), the softmax written out (max, exp, sum, divide) where it is small — torch's softmax kernel
costs ~0.35 ms a call here however small — and, with grad, its own backward pass from the kept
weights. Measured on the tiny model's alignment batches (B 32 × G 8, 2 layers): a decoding step's
attention 0.74 → 0.32 ms, the training forward's 11.7 → 7.7 ms with its backward.

Kept weights cost memory: with grad, only up to ``SMALL_ATTENTION`` bytes of them per call (an
LLM's lists — SmolLM2, 32 lists of 150 tokens over 350 keys and 9 heads: 15M weights a layer — keep
SDPA, which keeps one log-sum-exp per query). Off the CPU, SDPA throughout.

bfloat16 (and float16) models: scores and the weighted values are products in the model's dtype,
the softmax and its backward in float32 — the models' own eager attention, to its error
(tests/test_attention.py) — and keys/values sliced from a cache are made contiguous first. SDPA's
CPU kernel is slow in bfloat16: SmolLM2's 16 lists of 140 tokens over 230 keys, forward and
backward of one layer, 87 ms against 28 ms here; a decoding step's attention 0.80 → 0.31 ms.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from blade.model.fast_exp import exp_

SMALL_SOFTMAX = 2**17    # weights up to which the softmax is written out (measured faster below ~125k)
SMALL_ATTENTION = 2**24  # bytes of weights (16 MiB: 4M float32, 8M bfloat16) up to which attention with grad keeps them


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor, scale: float) -> torch.Tensor:
    """Queries q (N, H, S, hd) over keys/values (N, KH, L, hd), H a multiple of KH (head h reads
    key/value head h // (H/KH)), under an additive mask (N, 1, S, L) → (N, H, S, hd)."""
    N, H, S, hd = q.shape
    KH, L = k.shape[1], k.shape[2]
    grad = torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad)
    if q.device.type == "cpu" and (not grad or N * H * S * L * q.element_size() <= SMALL_ATTENTION):
        return _GroupedAttention.apply(q, k, v, mask, scale)
    if S == 1:  # one query per row: the query heads of a key/value head attend together (no repeat_kv)
        return F.scaled_dot_product_attention(q.view(N, KH, H // KH, hd), k, v, attn_mask=mask,
                                              scale=scale).view(N, H, 1, hd)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale, enable_gqa=H != KH)


class _GroupedAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, mask, scale):
        N, H, S, hd = q.shape
        KH, L = k.shape[1], k.shape[2]
        g = H // KH
        low = k.dtype != torch.float32  # bfloat16/float16: the softmax in float32, as the models' eager attention
        if low:
            # a KV cache's first L positions are batches spaced by the cache's length, not L: bfloat16
            # products over such strides take a slow kernel (decoding SmolLM2: 1.03 → 0.41 ms a layer)
            k, v = k.contiguous(), v.contiguous()
        qg = q.reshape(N, KH, g * S, hd)                                                 # (N, KH, g·S, hd)
        w = torch.matmul(qg, k.transpose(-1, -2))                                        # (N, KH, g·S, L)
        w = (w.float() if low else w).mul_(scale)
        w = w.view(N, KH, g, S, L).add_(mask[:, :, None])
        if w.numel() <= SMALL_SOFTMAX:
            w = exp_(w.sub_(w.amax(-1, keepdim=True)))
            w = w.div_(w.sum(-1, keepdim=True))
        else:
            w = w.softmax(-1)
        w = w.view(N, KH, g * S, L)
        if low:
            w = w.to(k.dtype)
        ctx.save_for_backward(qg, k, v, w)
        ctx.scale, ctx.q_shape = scale, q.shape
        return torch.matmul(w, v).view(N, H, S, hd)

    @staticmethod
    def backward(ctx, do):
        qg, k, v, w = ctx.saved_tensors
        N, H, S, hd = ctx.q_shape
        dog = do.reshape(qg.shape)                                                       # (N, KH, g·S, hd)
        dv = torch.matmul(w.transpose(-1, -2), dog)                                      # (N, KH, L, hd)
        dw = torch.matmul(dog, v.transpose(-1, -2))                                      # (N, KH, g·S, L)
        if w.dtype != torch.float32:  # the softmax's backward in float32, as its forward
            ds = _softmax_backward(dw.float(), w.float(), ctx.scale).to(w.dtype)
        else:
            ds = _softmax_backward(dw, w, ctx.scale)
        dq = torch.matmul(ds, k).view(N, H, S, hd)
        dk = torch.matmul(ds.transpose(-1, -2), qg)
        return dq, dk, dv, None, None


def _softmax_backward(dw: torch.Tensor, w: torch.Tensor, scale: float) -> torch.Tensor:
    """d(scores) from d(weights) ``dw`` and the weights ``w`` of a softmax over the last dimension,
    times the scores' scale: ``(dw − Σ dw·w)·w·scale``, in place in ``dw``."""
    return dw.sub_((dw * w).sum(-1, keepdim=True)).mul_(w).mul_(scale)
