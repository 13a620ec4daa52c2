"""The fused constrained list log-prob of one-token codes (blade/model/list_softmax.py) against the
general path it replaces — the sampler's mask filled into the logits (``mask_list_logits_``), then
the log-softmax — in values and in gradients (hidden states, head weight and bias, given logits),
over several chunks and lists of different lengths, with the softmax kept for the backward and
recomputed there; its rescue of positions whose allowed mass
underflows next to a blocked logit, against the exact value; and its refusal of non-lists."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

import blade.model.list_softmax as list_softmax
from blade.model.constraint import TrieTables, mask_list_logits_, padded_lists
from blade.model.list_softmax import atomic_head_logp, atomic_list_logp
from blade.model.policy import Policy, PolicyConfig

ITEMS = pd.DataFrame({"item_id": np.arange(10, 40), "title": [f"t{i}" for i in range(30)], "genres": [["g"]] * 30})
D = 8


@pytest.fixture(scope="module")
def tables() -> TrieTables:
    pol = Policy.build(PolicyConfig(codec="atomic", layers=1, hidden=D, heads=2, kv_heads=1, intermediate=16), ITEMS)
    return TrieTables(pol.codec, pol.vocab_size, torch.device("cpu")), pol.codec


@pytest.fixture
def small_chunks(monkeypatch, tables):
    monkeypatch.setattr(list_softmax, "CHUNK", 50 * tables[0].vocab)  # 50 positions a chunk: several chunks


def _lists(codec, seed: int, n: int = 64, k: int = 6):
    rng = np.random.default_rng(seed)
    conts = [codec.list_tokens(rng.permutation(ITEMS["item_id"].to_numpy())[:m].tolist())
             for m in rng.integers(1, k + 1, size=n)]
    return padded_lists(conts, codec.pad_id)


def _general(t: TrieTables, logits: torch.Tensor, target, mask) -> torch.Tensor:
    z = logits.float().clone()
    mask_list_logits_(t, z, target, mask)
    R, T, V = z.shape
    return -F.cross_entropy(z.reshape(-1, V), target.reshape(-1), reduction="none").view(R, T) * mask


def _value_and_grads(fn, *params):
    for p in params:
        p.grad = None
    out = fn()
    (out.exp().sum() + (out ** 2).sum()).backward()  # a nonlinear function: every position's gradient differs
    return [out.detach()] + [p.grad.clone() for p in params]


@pytest.mark.parametrize("keep", [True, False], ids=["softmax-kept", "recomputed"])
def test_fused_head_and_given_logits_equal_the_masked_log_softmax(tables, small_chunks, monkeypatch, keep):
    t, codec = tables
    if not keep:
        monkeypatch.setattr(list_softmax, "KEEP", 0)
    target, mask = _lists(codec, 0)
    R, T = target.shape
    torch.manual_seed(0)
    head = torch.nn.Linear(D, t.vocab, bias=True)
    with torch.no_grad():
        head.weight.mul_(4.0)
    h = torch.randn(R, T, D, requires_grad=True)
    params = (h, head.weight, head.bias)
    want = _value_and_grads(lambda: _general(t, head(h), target, mask), *params)
    fused = _value_and_grads(lambda: atomic_head_logp(t, h, head, target, mask), *params)
    given = _value_and_grads(lambda: atomic_list_logp(t, head(h), target, mask), *params)
    assert float(want[0][mask].abs().min()) > 0 and float(want[0][~mask].abs().max()) == 0
    for w, f, g in zip(want, fused, given):
        scale = float(w.abs().max())
        torch.testing.assert_close(f, w, rtol=0, atol=2e-6 * scale)
        torch.testing.assert_close(g, w, rtol=0, atol=2e-6 * scale)
    assert float(fused[0][~mask].abs().max()) == 0.0 and float(fused[1][~mask].abs().max()) == 0.0
    with torch.no_grad():  # the reference's pass: the same values, nothing kept
        torch.testing.assert_close(atomic_head_logp(t, h, head, target, mask), want[0], rtol=0, atol=2e-6)
    # a retained graph's second backward (the loop's alignment term, then its penalty) reads the
    # kept softmax again: it must still be there, unchanged
    for p in params:
        p.grad = None
    out = atomic_head_logp(t, h, head, target, mask)
    loss = out.exp().sum() + (out ** 2).sum()
    loss.backward(retain_graph=True)
    loss.backward()
    for w, p in zip(want[1:], params):
        torch.testing.assert_close(p.grad, 2 * w, rtol=0, atol=4e-6 * float(w.abs().max()))


def test_a_position_whose_allowed_mass_underflows_is_rescued_exactly(tables):
    t, codec = tables
    target, mask = padded_lists([codec.list_tokens([12, 30, 17]), codec.list_tokens([11])], codec.pad_id)
    R, T = target.shape
    logits = torch.zeros(R, T, t.vocab)
    logits[0, 1, target[0, 0]] = 300.0           # the token listed at slot 0, blocked at slot 1: e^-300 underflows
    logits[0, 2, t.non_item_tokens] = 400.0      # non-item tokens, blocked everywhere
    logits.requires_grad_()
    logp = atomic_list_logp(t, logits, target, mask)
    n = len(ITEMS)
    expected = torch.tensor([-math.log(n), -math.log(n - 1), -math.log(n - 2)])  # equal allowed logits
    torch.testing.assert_close(logp[0], expected, rtol=0, atol=1e-5)
    logp[0].sum().backward()
    g = logits.grad[0]
    assert float(g[1, target[0, 0]]) == 0.0 and float(g[2, t.non_item_tokens].abs().max()) == 0.0
    assert float(g[1, target[0, 1]]) == pytest.approx(1 - 1 / (n - 1), abs=1e-6)  # onehot − softmax


@pytest.mark.parametrize("fault", ["repeat", "non_item"])
def test_a_list_that_is_not_a_list_is_named_by_row_and_position(tables, fault):
    t, codec = tables
    target, mask = _lists(codec, 2, n=8, k=4)
    target[3], mask[3] = torch.tensor(codec.list_tokens([12, 30, 17, 19])), True
    target[3, 2] = target[3, 0] if fault == "repeat" else codec.pad_id
    with pytest.raises(ValueError, match="list 3: token .* at position 2"):
        atomic_list_logp(t, torch.zeros(*target.shape, t.vocab), target, mask)


def test_list_blocks_built_once_serve_every_scorer_alike(tables):
    """``ListBlocks`` depend on the lists only: passed in (as the alignment step shares them between
    the policy and π_ref), they give the bits of blocks built inside; lists of another shape are refused."""
    t, codec = tables
    target, mask = _lists(codec, 4)
    torch.manual_seed(4)
    hidden = torch.randn(*target.shape, D)
    head = torch.nn.Linear(D, t.vocab)
    blocks = list_softmax.ListBlocks(t, target, mask, t.vocab)
    with torch.no_grad():
        inside = atomic_head_logp(t, hidden, head, target, mask)
        for _ in range(2):  # used twice, as by two policies
            assert torch.equal(atomic_head_logp(t, hidden, head, target, mask, blocks), inside)
        with pytest.raises(ValueError, match="list blocks of lists shaped"):
            atomic_head_logp(t, hidden[:-1], head, target[:-1], mask[:-1], blocks)
