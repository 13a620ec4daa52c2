"""glibc's malloc tuned by every ``blade`` command (blade/allocator.py): a step's large temporaries are
reused from the heap instead of being mapped and faulted in again each step. Measured as what it is
for: the minor page faults of repeated constrained forward + backward passes (the alignment step's
scoring) in a fresh interpreter, tuned and not."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc: Linux only")

WORKER = r"""
import json, resource, sys, tempfile
import numpy as np, pandas as pd, torch
if sys.argv[1] == "tuned":
    from blade.allocator import keep_freed_memory
    assert keep_freed_memory()
from blade.model.policy import Policy, PolicyConfig
torch.manual_seed(0); torch.set_num_threads(1)
n = 1000
items = pd.DataFrame({"item_id": np.arange(n), "title": [f"t{i}" for i in range(n)], "genres": [["g"]] * n})
pol = Policy.build(PolicyConfig(hidden=32, layers=1, heads=2, kv_heads=1, intermediate=64), items)
rng = np.random.default_rng(0)
prompts = [pol.codec.prompt(rng.choice(n, 8, replace=False).tolist(), 10) for _ in range(16) for _ in range(8)]
conts = [pol.codec.list_tokens(rng.choice(n, 10, replace=False).tolist()) for _ in prompts]
def step():
    lp, _ = pol.token_logprobs(prompts, conts, constrained=True)
    lp.sum().backward()
for _ in range(int(sys.argv[2])):
    step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(6):
    step()
print(json.dumps((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 6))
"""


def _faults(mode: str, warmup: int = 5) -> float:
    out = subprocess.run([sys.executable, "-c", WORKER, mode, str(warmup)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_tuned_malloc_stops_refaulting_each_steps_temporaries():
    default, tuned = _faults("default"), _faults("tuned")
    assert default > 500, f"glibc's default faulted only {default} pages per step: nothing to compare"
    # measured: default 1,700-4,400 pages per step, tuned 0-210 (what remains is not the step's temporaries)
    assert tuned < default / 4, (tuned, default)
