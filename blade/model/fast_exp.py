"""``exp`` in place, as ``exp2(x·log2 e)`` where that is the faster kernel: torch's CPU ``exp``
runs at about 0.9 ns an element on these machines whatever the SIMD level, the scaling pass plus
``exp2`` at 0.4 ns (AVX-512) or 0.55 ns (AVX2): a (130, 1004) float32 block, exp 114 µs against
mul + exp2 50 µs on AVX-512, 110 against 73 µs on AVX2. The constrained softmax over a step's
(n, V) logits and the sampler's weights at every decoding step are exponentiations of whole blocks.

The result differs from exact exp by the rounding of the product and exp2's few ulps: relative
error ≤ |x|·2⁻²⁴ + 1e-6 (tested; measured 5e-7 near x = −10, 3.8e-6 near −87; torch's exp: 6e-8),
float tolerance for every log-prob computed from it. ``exp2(0) = 1`` exactly, so a row's maximum keeps weight 1. Without SIMD (``ATEN_CPU_CAPABILITY=
default``, where exp2 is the slower one) and off the CPU, plain ``exp_``.
"""

from __future__ import annotations

import math

import torch

LOG2E = 1.0 / math.log(2.0)
_EXP2_FASTER = torch.backends.cpu.get_cpu_capability() != "DEFAULT"


def exp_(x: torch.Tensor) -> torch.Tensor:
    """``x.exp_()``, by ``exp2`` where that is faster (float32 on a SIMD CPU)."""
    if _EXP2_FASTER and x.device.type == "cpu" and x.dtype == torch.float32:
        return x.mul_(LOG2E).exp2_()
    return x.exp_()
