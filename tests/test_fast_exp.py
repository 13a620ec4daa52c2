"""``exp_`` (blade/model/fast_exp.py) against torch's ``exp``: float tolerance over the range the
softmaxes feed it (shifted logits ≤ 0), exactly 1 at 0 (a row's maximum), 0 where exp underflows
and at the blocked scores' −1e30 and −inf; the plain path off SIMD gives exp's own bits."""

from __future__ import annotations

import torch

import blade.model.fast_exp as fast_exp


def test_exp_in_place_matches_exp():
    x = torch.cat([torch.linspace(-100.0, 0.0, 200_001), torch.tensor([0.0, -1e30, float("-inf"), -104.0])])
    want = x.double().exp()  # exact to float32's purposes
    got = fast_exp.exp_(x.clone()).double()
    assert got[200_001] == 1.0 and (got[-3:] == 0.0).all()
    normal = want > 1.2e-38  # below, float32 is subnormal or zero: absolute error under 1e-43 (a few of its steps)
    rel = ((got - want).abs() / want)[normal]
    bound = 1e-6 + x.double().abs()[normal] * 2.0**-24  # the product rounding, |x|·2⁻²⁴; exp2 within ~4 ulps
    assert bool((rel <= bound).all()), float((rel / bound).max())
    assert float((got - want)[~normal].abs().max()) < 1e-43


def test_plain_path_is_exp(monkeypatch):
    monkeypatch.setattr(fast_exp, "_EXP2_FASTER", False)
    x = torch.randn(1000)
    assert torch.equal(fast_exp.exp_(x.clone()), x.exp())
    d = torch.randn(100, dtype=torch.float64)
    assert torch.equal(fast_exp.exp_(d.clone()), d.exp())
