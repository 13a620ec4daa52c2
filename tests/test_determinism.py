"""The README's reproducibility promise, tested at exactly its scope.

Promise: the same seed and config, with the pinned packages, give byte-identical results on
machines whose CPUs run torch's kernels with the same instruction set — in a fresh process or
after other work in the same one, whatever OMP_NUM_THREADS or the core count. The thread count is
made irrelevant by pinning it (``blade.seeding.CPU_THREADS``), because on its own it is part of
the arithmetic. The instruction set is outside the promise: it changes the last bits of the
weights, and through model selection a metric in its third decimal.
"""

import json
import os
import random
import subprocess
import sys

import numpy as np
import pytest
import torch

from blade.data import PreparedData
from blade.model.config import PolicyConfig
from blade.seeding import CPU_THREADS, seed_everything
from blade.train.config import SFTConfig
from blade.train.sft import train_sft
from tests.conftest import ROOT
from tests.helpers import tiny_dataset

SFT = {"policy": {"hidden": 32, "heads": 2, "kv_heads": 1, "intermediate": 64, "device": "cpu"},
       "sft": {"epochs": 2, "batch_size": 32, "warmup_steps": 5}}


def _sft_weights(data, out, **env: str) -> bytes:
    """Train SFT (seed 0) with the CLI in a fresh process; the selected weights' bytes."""
    done = subprocess.run(
        [sys.executable, "-m", "blade.cli", "sft", "--data", str(data), "--out", str(out), "--seed", "0",
         "--config-json", json.dumps(SFT)],
        capture_output=True, text=True, cwd=ROOT, env={**os.environ, "BLADE_TRACKING": "off", **env})
    assert done.returncode == 0, done.stderr[-2000:]
    return (out / "best" / "model.safetensors").read_bytes()


@pytest.fixture(scope="module")
def sft_run(tmp_path_factory):
    """One fresh-process SFT run: the dataset and its weights."""
    base = tmp_path_factory.mktemp("determinism")
    data = tiny_dataset(base / "data")
    return data, _sft_weights(data, base / "reference", OMP_NUM_THREADS="1")


def test_thread_count_is_part_of_the_arithmetic():
    # Why the count is pinned: ATen sums a large tensor in one chunk per thread, so the same
    # numbers add up differently at 1 and 2 threads.
    before = torch.get_num_threads()
    values = torch.randn(1 << 20, generator=torch.Generator().manual_seed(0))
    try:
        sums = []
        for threads in (1, 2):
            torch.set_num_threads(threads)
            sums.append(values.sum().item())
    finally:
        torch.set_num_threads(before)
    assert sums[0] != sums[1]
    assert sums[0] == pytest.approx(sums[1], rel=1e-5)  # the last bits only


def test_seeding_pins_the_thread_count():
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(CPU_THREADS + 1)
        seed_everything(0)
        assert torch.get_num_threads() == CPU_THREADS
    finally:
        torch.set_num_threads(before)


def test_seeding_turns_on_deterministic_kernels_without_importing_the_compiler():
    # The private setter skips torch.use_deterministic_algorithms' import of torch._dynamo (1.9 s
    # of each job's start-up); the flags it sets must be the public call's.
    code = ("import sys, torch\nfrom blade.seeding import seed_everything\nseed_everything(0)\n"
            "print(torch.are_deterministic_algorithms_enabled(), "
            "torch.is_deterministic_algorithms_warn_only_enabled(), 'torch._dynamo' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.split() == ["True", "True", "False"]


@pytest.mark.slow
def test_same_seed_gives_the_same_weights_whatever_the_thread_setting(sft_run, tmp_path):
    data, reference = sft_run
    assert _sft_weights(data, tmp_path / "four", OMP_NUM_THREADS="4") == reference


@pytest.mark.slow
def test_same_seed_gives_the_same_weights_after_other_work_in_the_process(sft_run, tmp_path):
    # run order: whatever ran before in this process (RNG draws, another thread setting) is reset
    data, reference = sft_run
    torch.rand(7)
    np.random.rand(3)
    random.random()
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        train_sft(PreparedData.load(data), tmp_path / "in_process", PolicyConfig(**SFT["policy"]), SFTConfig(**SFT["sft"]), seed=0)
    finally:
        torch.set_num_threads(before)
    assert (tmp_path / "in_process" / "best" / "model.safetensors").read_bytes() == reference


@pytest.mark.slow
def test_the_kernels_instruction_set_is_outside_the_promise(sft_run, tmp_path):
    if torch.backends.cpu.get_cpu_capability() == "DEFAULT":
        pytest.skip("this CPU already runs torch's portable (non-vector) kernels")
    data, reference = sft_run
    portable = _sft_weights(data, tmp_path / "portable", ATEN_CPU_CAPABILITY="default")
    assert portable != reference
