"""Data-parallel SFT and alignment (blade/distributed.py): two CPU processes over gloo, started the
way the rules start them (`accelerate launch`, run.processes = 2), give one process's result up to
the order of float additions — the same valid curve and selected epoch/step, the same losses, and
weights equal to float tolerance."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import ROOT
from tests.helpers import tiny_dataset



def launch(processes: int = 2) -> list[str]:
    """The rules' launch command (workflow/rules/common.smk, run.processes > 1)."""
    return [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(processes), "--num_machines",
            "1", "--main_process_port", "0", "--mixed_precision", "no", "--dynamo_backend", "no", "--multi_gpu", "-m",
            "blade.cli"]


ONE = [sys.executable, "-m", "blade.cli"]
POLICY = {"hidden": 32, "heads": 2, "kv_heads": 1, "intermediate": 64, "device": "cpu"}
EVALUATE = {"selection_rows": 60, "batch_size": 64}
REWARD = {"weights": {"ndcg": 1.0, "diversity": 0.5}}
pytestmark = pytest.mark.slow


def _run(prefix: list[str], *args: str) -> None:
    env = {**os.environ, "BLADE_TRACKING": "off", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    done = subprocess.run([*prefix, *args], capture_output=True, text=True, cwd=ROOT, env=env, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]


def _weights(directory) -> dict[str, torch.Tensor]:
    return load_file(str(directory / "model.safetensors"))


def _assert_close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], atol: float) -> None:
    assert a.keys() == b.keys()
    worst = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert worst < atol, f"largest weight difference {worst:.3g}"


@pytest.fixture(scope="module")
def sft_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp")
    data = tiny_dataset(root / "data")
    cfg = json.dumps({"policy": POLICY, "sft": {"epochs": 2, "batch_size": 32, "warmup_steps": 5},
                      "evaluate": EVALUATE})
    for name, prefix in (("one", ONE), ("two", launch())):
        _run(prefix, "sft", "--data", str(data), "--out", str(root / name), "--seed", "0", "--config-json", cfg)
    return root, data


def test_sft_on_two_processes_matches_one(sft_runs):
    root, _ = sft_runs
    one, two = (pd.read_parquet(root / n / "train_log.parquet") for n in ("one", "two"))
    np.testing.assert_allclose(two["train_loss"], one["train_loss"], rtol=1e-5)
    # summed, not averaged (half the norm); later steps drift by float order through Adam, hence 1%
    np.testing.assert_allclose(two["train_grad_norm"], one["train_grad_norm"], rtol=1e-2)
    np.testing.assert_allclose(two["valid/ndcg@10"], one["valid/ndcg@10"], atol=1e-9)
    _assert_close(_weights(root / "one" / "best"), _weights(root / "two" / "best"), atol=1e-4)
    assert json.loads((root / "two" / "summary.json").read_text())["epochs_run"] == 2  # written once, by the main process


@pytest.mark.parametrize("method,contexts,group,processes", [
    ("blade", 6, 4, 2),  # online: fresh samples every step
    ("dpo", 6, 4, 2),    # offline: the stored lists, 2 of 8 read per context
    ("blade", 3, 3, 2),  # 9 lists: shares of 5 and 4
    ("blade", 1, 2, 3),  # 2 lists, 3 processes: one share is empty
])
def test_alignment_on_several_processes_matches_one(sft_runs, method, contexts, group, processes):
    root, data = sft_runs
    rollouts = root / "rollouts.parquet"
    if not rollouts.is_file():
        _run(ONE, "rollout", "--data", str(data), "--model", str(root / "one" / "best"), "--out", str(rollouts),
             "--seed", "0", "--config-json", json.dumps({"rollout": {"m": 8, "max_contexts": 64}, "reward": REWARD}))
    cfg = json.dumps({"align": {"steps": 4, "contexts_per_step": contexts, "group_size": group, "eval_every": 2,
                                "lr": 3e-3}, "reward": REWARD, "evaluate": EVALUATE, "method": {"objective": method}})
    run = f"{method}_{contexts}x{group}"
    for name, prefix in (("one", ONE), ("two", launch(processes))):
        _run(prefix, "align", "--data", str(data), "--sft", str(root / "one"), "--rollouts", str(rollouts),
             "--out", str(root / f"{run}_{name}"), "--seed", "0", "--method", method, "--config-json", cfg)
    one, two = (pd.read_parquet(root / f"{run}_{n}" / "diagnostics.parquet") for n in ("one", "two"))
    for column in ("loss", "loss_align", "grad_norm", "grad_norm_align"):
        np.testing.assert_allclose(two[column], one[column], rtol=1e-4, atol=1e-7, err_msg=column)
    assert (one["grad_norm"] > 0).all()  # the comparison is about a gradient that moves the weights
    _assert_close(_weights(root / f"{run}_one" / "snapshots" / "step000004"),
                  _weights(root / f"{run}_two" / "snapshots" / "step000004"), atol=1e-4)
