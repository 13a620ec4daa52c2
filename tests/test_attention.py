"""The decoder passes' attention (blade/model/attention.py): the grouped-product path with its own
backward equals ``scaled_dot_product_attention`` (values and gradients of queries, keys and values),
with grouped key/value heads, masked keys, one query per row (a decoding step) and several (the
training forward), with the softmax written out and through torch's kernel."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import blade.model.attention as attention


@pytest.mark.parametrize("S,small_softmax", [(1, True), (7, True), (7, False)])
def test_grouped_attention_equals_sdpa_with_gradients(monkeypatch, S, small_softmax):
    if not small_softmax:
        monkeypatch.setattr(attention, "SMALL_SOFTMAX", 0)
    torch.manual_seed(0)
    N, H, KH, L, hd = 6, 6, 2, 11, 8
    q = torch.randn(N, S, H, hd).transpose(1, 2).requires_grad_()   # strided, as the passes give it
    k = torch.randn(N, KH, L, hd, requires_grad=True)
    v = torch.randn(N, KH, L, hd, requires_grad=True)
    see = torch.rand(N, 1, S, L) > 0.4
    see[..., -1] = True                                                # every query sees a key
    mask = torch.zeros(N, 1, S, L).masked_fill_(~see, float("-inf"))
    do = torch.randn(N, H, S, hd)

    def run(fn):
        for x in (q, k, v):
            x.grad = None
        out = fn()
        out.backward(do)
        return [out.detach()] + [x.grad.clone() for x in (q, k, v)]

    want = run(lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=0.3, enable_gqa=True))
    got = run(lambda: attention._GroupedAttention.apply(q, k, v, mask, 0.3))
    for w, g in zip(want, got):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        torch.testing.assert_close(attention.attend(q, k, v, mask, 0.3), want[0], rtol=1e-5, atol=1e-5)


def _eager(q, k, v, mask, scale):
    """The models' eager attention (transformers' ``eager_attention_forward``): scores in the inputs'
    dtype, the softmax in float32 cast back, then the weighted values; grouped heads repeated."""
    g = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(g, 1), v.repeat_interleave(g, 1)
    w = torch.matmul(q, k.transpose(-1, -2)) * scale + mask
    return torch.matmul(w.softmax(-1, dtype=torch.float32).to(q.dtype), v)


@pytest.mark.parametrize("S", [1, 9])
def test_bfloat16_grouped_attention_is_as_accurate_as_eager_attention(S, monkeypatch):
    """bfloat16 models (config/llm.yaml): the grouped path computes its softmax and the softmax's
    backward in float32, as the models' eager attention does, over keys/values sliced from a longer
    cache (made contiguous first: a bfloat16 product over cache strides takes a slow kernel). Its
    error against float64 attention is within 1.1 times the eager attention's in bfloat16, values
    and gradients; and the byte budget sends bfloat16 weights to it where float32 would go to SDPA."""
    torch.manual_seed(1)
    N, H, KH, L, hd = 4, 6, 2, 40, 16
    q64 = torch.randn(N, S, H, hd, dtype=torch.float64).transpose(1, 2)
    cache = torch.randn(2, N, KH, L + 13, hd, dtype=torch.float64) * 2
    see = torch.rand(N, 1, S, L) > 0.3
    see[..., -1] = True
    mask64 = torch.zeros(N, 1, S, L, dtype=torch.float64).masked_fill_(~see, float("-inf"))
    do64 = torch.randn(N, H, S, hd, dtype=torch.float64)

    def run(fn, dtype):
        q = q64.to(dtype, copy=True).requires_grad_()
        kv = cache.to(dtype, copy=True).requires_grad_()
        k, v = kv[0, :, :, :L], kv[1, :, :, :L]  # the first L positions of a longer cache
        out = fn(q, k, v, mask64.to(dtype), 0.25)
        out.backward(do64.to(dtype))
        return [x.double() for x in (out.detach(), q.grad, kv.grad[0, :, :, :L], kv.grad[1, :, :, :L])]

    exact = run(_eager, torch.float64)
    ref = run(_eager, torch.bfloat16)
    got = run(attention._GroupedAttention.apply, torch.bfloat16)
    for name, e, r, g in zip(("out", "dq", "dk", "dv"), exact, ref, got):
        err, ref_err = float((g - e).abs().max()), float((r - e).abs().max())
        assert err <= 1.1 * ref_err, (name, err, ref_err)
        assert err < 0.05 * float(e.abs().max()), (name, err)
    with torch.no_grad():
        q, kv = q64.to(torch.bfloat16), cache.to(torch.bfloat16)
        torch.testing.assert_close(attention.attend(q, kv[0, :, :, :L], kv[1, :, :, :L], mask64.to(torch.bfloat16), 0.25),
                                   got[0].to(torch.bfloat16), rtol=0, atol=0)
    # the budget is in bytes: weights that float32 would keep over it, bfloat16 keeps under it
    monkeypatch.setattr(attention, "SMALL_ATTENTION", N * H * S * L * 3)
    calls, apply = [], attention._GroupedAttention.apply
    monkeypatch.setattr(attention._GroupedAttention, "apply", lambda *a: calls.append(a[0].dtype) or apply(*a))
    for dtype in (torch.float32, torch.bfloat16):
        q, kv = q64.to(dtype).requires_grad_(), cache.to(dtype)
        attention.attend(q, kv[0, :, :, :L], kv[1, :, :, :L], mask64.to(dtype), 0.25)
    assert calls == [torch.bfloat16]
