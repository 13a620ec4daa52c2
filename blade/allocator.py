"""Freed memory kept for reuse: glibc's ``malloc`` tuned once per process (``blade`` commands).

By default glibc serves every block above its mmap threshold (128 KiB, raised dynamically) with a
fresh ``mmap`` and unmaps it when freed, and it trims the heap top beyond twice that threshold.
A training or decoding step allocates the same large temporaries every time (the tiny model's
alignment step: its activations and their gradients, a few MiB each), so untuned, every step can
fault their pages in again: 8,142 minor faults per B 32 x G 8 GRPO step of the benchmark's tiny
model (297 ms a step; tuned: 1 fault, 256 ms), measured on these VMs, where a fault costs
microseconds. Pinning the mmap threshold at its maximum (32 MiB on 64-bit) and the trim threshold
at 2 GiB keeps freed blocks in the heap for the next step, the peak resident memory unchanged
(``benchmarks/bench_align_step.py`` prints both; ``--malloc default`` turns this off there).
Blocks above 32 MiB are still mapped per use. It changes where memory comes from, never a value.
"""

from __future__ import annotations

import ctypes
import sys

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's malloc.h
MMAP_MAX = 32 * 2**20   # glibc caps M_MMAP_THRESHOLD at HEAP_MAX_SIZE / 2: 32 MiB on 64-bit
TRIM = 2**31 - 1        # an int: freed heap top up to 2 GiB stays mapped


def keep_freed_memory() -> bool:
    """Tune glibc's malloc as above; False (nothing changed) off glibc (macOS, musl) or if refused."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return mallopt(M_MMAP_THRESHOLD, MMAP_MAX) == 1 and mallopt(M_TRIM_THRESHOLD, TRIM) == 1
