"""The list constraint's mask for given lists (blade/model/constraint.py): the closed form of one-token
codes equals the sampler's step-by-step :class:`ListMask`, and scoring masks every position in one
fill (no per-position writes into a tensor on the autograd graph)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from blade.model.constraint import BIG, ListMask, TrieTables, blocked_tokens, mask_list_logits_, padded_lists
from blade.model.policy import Policy, PolicyConfig

ITEMS = pd.DataFrame({"item_id": np.arange(10, 22), "title": [f"t{i}" for i in range(12)], "genres": [["g"]] * 12})


@pytest.fixture(scope="module")
def atomic() -> tuple[TrieTables, Policy]:
    pol = Policy.build(PolicyConfig(codec="atomic", layers=1, hidden=8, heads=2, kv_heads=1, intermediate=16), ITEMS)
    return TrieTables(pol.codec, pol.vocab_size, torch.device("cpu")), pol


def _lists(pol, rng, n: int, k: int):
    lens = rng.integers(1, k + 1, size=n)
    conts = [pol.codec.list_tokens(rng.permutation(ITEMS["item_id"].to_numpy())[:m].tolist()) for m in lens]
    return padded_lists(conts, pol.codec.pad_id)


def test_one_token_closed_form_equals_the_samplers_replay(atomic):
    t, pol = atomic
    target, mask = _lists(pol, np.random.default_rng(0), 64, 6)
    R, T = target.shape
    lists = ListMask(t, R, T)
    replay = torch.empty((R, T, t.vocab), dtype=torch.bool)
    for p in range(T):
        replay[:, p] = lists.next(mask[:, p]) < 0
        lists.advance(target[:, p])
    got = blocked_tokens(t, target, mask)
    assert torch.equal(got, replay)
    assert int((~got[mask]).sum(-1).min()) == len(ITEMS) - T + 1  # the last position still allows |I| - (T-1)
    assert torch.equal((~got[~mask]).nonzero()[:, 1].unique(), torch.tensor([pol.codec.pad_id]))  # padding only


def test_masked_logits_are_x_minus_big_and_their_gradient_flows_once(atomic):
    t, pol = atomic
    target, mask = _lists(pol, np.random.default_rng(1), 16, 5)
    x = torch.randn(*target.shape, t.vocab, requires_grad=True)
    logits = x * 1.0
    mask_list_logits_(t, logits, target, mask)
    blocked = blocked_tokens(t, target, mask)
    expected = x.detach() - BIG * blocked.float()  # the sampler's masked scores (logits + 1e30·neg)
    assert torch.equal(logits.detach(), expected)
    logits.log_softmax(-1).gather(2, target[..., None]).sum().backward()
    assert float(x.grad[blocked].abs().max()) == 0.0 and float(x.grad[~blocked].abs().sum()) > 0


def test_a_repeated_item_is_named_by_row_and_position(atomic):
    t, pol = atomic
    target, mask = _lists(pol, np.random.default_rng(2), 8, 4)
    target[3, 2], mask[3, :3] = target[3, 0], True
    with pytest.raises(ValueError, match="list 3: token .* at position 2"):
        mask_list_logits_(t, torch.zeros(*target.shape, t.vocab), target, mask)
