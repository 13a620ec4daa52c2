"""The decoder passes' RMSNorm with grad (blade/model/decoder.py): the fused forward gives the same
bits as the model's own norm module, and the written-out backward the gradients of the composite
``F.rms_norm`` (float tolerance: a different reduction order), for the input and the weight."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from transformers.models.qwen2.modeling_qwen2 import Qwen2RMSNorm

from blade.model.decoder import DecoderParts, _RMSNorm


@pytest.mark.parametrize("shape", [(37, 16), (5, 9, 16)])
def test_rms_norm_equals_the_module_and_its_gradients_the_composite(shape):
    torch.manual_seed(0)
    norm = Qwen2RMSNorm(shape[-1], eps=1e-6)
    with torch.no_grad():
        norm.weight.copy_(torch.rand(shape[-1]) + 0.5)
    x = (3.0 * torch.randn(*shape)).requires_grad_()
    g = torch.randn(*shape)

    def grads(y):
        x.grad = norm.weight.grad = None
        y.backward(g)
        return x.grad.clone(), norm.weight.grad.clone()

    got = DecoderParts._norm(DecoderParts.__new__(DecoderParts), norm, x)
    assert got.grad_fn is not None and "RMSNorm" in type(got.grad_fn).__name__  # the fused path ran
    assert torch.equal(got, norm(x))                                              # the module's own bits
    got_dx, got_dw = grads(got)
    want_dx, want_dw = grads(F.rms_norm(x, (shape[-1],), norm.weight, 1e-6))
    torch.testing.assert_close(got_dx, want_dx, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got_dw, want_dw, rtol=1e-5, atol=1e-6)


def test_rms_norm_with_a_frozen_weight_gives_the_input_gradient_only():
    torch.manual_seed(1)
    x = torch.randn(8, 16, requires_grad=True)
    w = torch.rand(16) + 0.5
    dx, = torch.autograd.grad(_RMSNorm.apply(x, w, 1e-6).square().sum(), x)
    want, = torch.autograd.grad(F.rms_norm(x, (16,), w, 1e-6).square().sum(), x)
    torch.testing.assert_close(dx, want, rtol=1e-5, atol=1e-6)
