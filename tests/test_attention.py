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
