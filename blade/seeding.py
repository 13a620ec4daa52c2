"""The one place the suite seeds its random number generators."""

import os
import random

import numpy as np


def seed_everything(seed: int) -> np.random.Generator:
    """Seed Python, NumPy and (if imported) torch; return a NumPy Generator for local use.

    Deterministic torch kernels are requested so that the same seed and config give the same
    metrics on CPU.
    """
    random.seed(seed)
    np.random.seed(seed % 2**32)
    os.environ.setdefault("PYTHONHASHSEED", str(seed))
    try:
        import torch
    except ImportError:  # data-only use of the package
        return np.random.default_rng(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    return np.random.default_rng(seed)


def torch_generator(device, *keys: int):
    """A ``torch.Generator`` on ``device`` seeded from ``keys`` (e.g. ``seed, step``): a function of
    the keys alone, so a resumed run draws what the uninterrupted one drew."""
    import torch

    state = int(np.random.SeedSequence([int(k) for k in keys]).generate_state(1)[0])
    return torch.Generator(device=device).manual_seed(state)
