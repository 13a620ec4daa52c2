"""The one place the suite seeds its random number generators."""

import os
import random

import numpy as np

# Every seeded run computes with this many CPU threads (torch's intra-op pool: OpenMP and MKL).
# The thread count is part of the arithmetic: ATen and MKL split large reductions and products
# across threads and add the partial results in a thread-dependent order. Measured on the default
# SFT (seed 0) on an Intel Xeon (AVX-512): 1, 2, 4 and 8 threads gave four different weight files
# and test NDCG@10 from 0.332 to 0.346. Pinned, neither the core count nor OMP_NUM_THREADS changes
# a result. One thread, because it is the count every machine has (none is oversubscribed) and the
# tiny model's products are too small to scale: 3 SFT epochs of the default config took 19.0/22.7 s
# at 1 thread against 16.3/19.1 s at 2 and 14.1/18.2 s at 16 on that Xeon (two rounds). On the
# 2-core AMD EPYC (AVX2) machines 1 and 2 threads gave byte-identical default SFT weights (test
# NDCG@10 0.3461 both), though a large float sum there differs between 1 and 2 threads too.
CPU_THREADS = 1


def seed_everything(seed: int) -> np.random.Generator:
    """Seed Python, NumPy and (if imported) torch, pin torch's CPU thread count; return a NumPy
    Generator for local use.

    With deterministic torch kernels, the same seed and config give byte-identical results on
    machines with the same CPU instruction set (README, Reproducibility); the instruction set the
    kernels use (``torch.backends.cpu.get_cpu_capability()``) still changes the last bits.
    """
    random.seed(seed)
    np.random.seed(seed % 2**32)
    os.environ.setdefault("PYTHONHASHSEED", str(seed))
    try:
        import torch
    except ImportError:  # data-only use of the package
        return np.random.default_rng(seed)
    torch.manual_seed(seed)
    pin_cpu_threads()
    use_deterministic_kernels(torch)
    return np.random.default_rng(seed)


def use_deterministic_kernels(torch) -> None:
    """``torch.use_deterministic_algorithms(True, warn_only=True)`` for eager kernels, without its
    ``import torch._inductor.config``: that import pulls in torch._dynamo, 1.9 s of every job's
    start-up on these machines (about 2 of the default DAG's 30 minutes), for a flag that only
    compiled graphs read, and the suite compiles nothing. torch is pinned (pyproject.toml); if
    a later version lacks the private setter, the public call is used."""
    setter = getattr(torch._C, "_set_deterministic_algorithms", None)
    if setter is None:
        torch.use_deterministic_algorithms(True, warn_only=True)
    else:
        setter(True, warn_only=True)
    # Deterministic mode also fills every new uninitialised tensor with NaN (a debugging aid that
    # makes reads of uninitialised memory visible); the suite writes every buffer before reading
    # it, so the fill is pure cost: about 650 fills per constrained scoring call of the tiny model.
    torch.utils.deterministic.fill_uninitialized_memory = False


def pin_cpu_threads() -> None:
    """Compute with ``CPU_THREADS`` torch threads. ``seed_everything`` does this; a stage that
    draws nothing but must give the same bits (greedy decoding for evaluation) calls it alone."""
    import torch

    torch.set_num_threads(CPU_THREADS)


def torch_generator(device, *keys: int):
    """A ``torch.Generator`` on ``device`` seeded from ``keys`` (e.g. ``seed, step``): a function of
    the keys alone, so a resumed run draws what the uninterrupted one drew."""
    import torch

    state = int(np.random.SeedSequence([int(k) for k in keys]).generate_state(1)[0])
    return torch.Generator(device=device).manual_seed(state)
