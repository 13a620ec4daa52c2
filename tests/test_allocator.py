"""glibc's malloc tuned by every ``blade`` command (blade/allocator.py): a step's large temporaries are
reused from the heap instead of being mapped and faulted in again each step.

Measured on the pattern that costs an untuned step its faults, in a fresh interpreter, tuned and
not: each "step" allocates a few 4 MiB blocks as torch's CPU allocator does (``posix_memalign``,
64-byte aligned), writes them and frees them all, through ctypes, so that no small allocation of
Python's or torch's lands between them and changes the heap's layout from run to run. Untuned,
glibc serves the first step with mmap, then raises its mmap threshold to 4 MiB and its trim
threshold to twice that, so from then on the blocks come from the heap top and the 16 MiB freed
there at the end of a step are trimmed: every step faults every page in again. Tuned, the freed
heap stays mapped. A whole alignment step's faults (B 32 x G 8: about 8,000 pages per step untuned,
0-200 tuned) depend on how torch's small allocations fall between its large ones, which differs
from machine to machine (this test's earlier form, a constrained forward + backward, faulted 1,700
pages per step untuned on one VM and 1 on CI's), so ``benchmarks/bench_align_step.py --malloc
default|tuned`` prints them instead of a test asserting them."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc: Linux only")

BLOCKS, BLOCK_MIB = 4, 4
WORKER = r"""
import ctypes, json, resource, sys
if sys.argv[1] == "tuned":
    from blade.allocator import keep_freed_memory
    assert keep_freed_memory()
libc = ctypes.CDLL("libc.so.6")
libc.posix_memalign.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.c_size_t, ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
blocks, size = int(sys.argv[2]), int(sys.argv[3]) * 2**20
def step():
    temporaries = [ctypes.c_void_p() for _ in range(blocks)]
    for p in temporaries:
        assert libc.posix_memalign(ctypes.byref(p), 64, size) == 0
        ctypes.memset(p, 1, size)  # written: every page touched
    for p in temporaries:
        libc.free(p)
for _ in range(3):
    step()
faults = []
for _ in range(9):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    step()
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps(sorted(faults)[4]))  # the median step: one step may still move a block while the heap settles
"""


def _faults(mode: str) -> float:
    out = subprocess.run([sys.executable, "-c", WORKER, mode, str(BLOCKS), str(BLOCK_MIB)], cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_tuned_malloc_stops_refaulting_each_steps_temporaries():
    pages = BLOCKS * BLOCK_MIB * 2**20 // 4096  # 4,096: what one step writes
    default, tuned = _faults("default"), _faults("tuned")
    assert default > pages / 2, f"glibc's default faulted only {default} pages per step of {pages} written: nothing to compare"
    assert tuned < pages / 20, (tuned, default)
