"""SFT warm-up: the supervised target lists, training, model selection on valid, kill and resume."""

import json
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from blade.data import PreparedData
from blade.model.policy import Policy, PolicyConfig
from blade.train.config import SFTConfig
from blade.eval.config import EvalConfig
from blade.eval.selection import selection_slice, valid_metrics
from blade.train.sft import continuation_lists, train_sft
from tests.conftest import ROOT
from tests.helpers import tiny_dataset

SMALL_POLICY = PolicyConfig(hidden=32, heads=2, kv_heads=1, intermediate=64)


def test_continuation_lists_by_user_in_time_order():
    train = pd.DataFrame({"user_id": ["a", "b", "a", "a", "a"], "timestamp": [1, 1, 3, 2, 4],
                          "history": [[9]] * 5, "target": [1, 7, 3, 2, 2]})
    # user a in time order: 1 (t1), 2 (t2), 3 (t3), 2 (t4); repeats are skipped
    assert continuation_lists(train, 3) == [[1, 2, 3], [7], [3, 2], [2, 3], [2]]


def test_continuation_lists_by_unique_history_link():
    train = pd.DataFrame({"user_id": [None] * 4, "timestamp": [None] * 4,
                          "history": [[1, 2], [2, 3], [5], [5]], "target": [3, 4, 6, 6]})
    # row 0 continues into row 1 (history [2, 3] = [1, 2, 3] truncated to width 2); [5]→[5, 6]
    # has no continuation row
    assert continuation_lists(train, 3) == [[3, 4], [4], [6], [6]]


def test_sft_learns_and_selects_on_valid(tmp_path):
    data = tiny_dataset(tmp_path / "data")
    items = pd.read_parquet(data / "items.parquet")
    valid = pd.read_parquet(data / "valid.parquet")
    untrained = valid_metrics(Policy.build(SMALL_POLICY, items), valid, 10, [5, 10], 256)
    summary = train_sft(PreparedData.load(data), tmp_path / "sft", SMALL_POLICY, SFTConfig(epochs=4, batch_size=32, warmup_steps=5), seed=0)
    log = pd.read_parquet(tmp_path / "sft" / "train_log.parquet")
    assert summary["best_epoch"] == int(log["valid/ndcg@10"].idxmax()) + 1
    best = Policy.load(tmp_path / "sft" / "best")
    trained = valid_metrics(best, valid, 10, [5, 10], 256)
    # selection read SFT's rows of valid (at most half of it: alignment selects on the others)
    rows = selection_slice(valid, EvalConfig().selection_rows)
    assert len(rows) == len(valid) // 2
    assert valid_metrics(best, rows, 10, [5, 10], 256)["ndcg@10"] == pytest.approx(summary["valid/ndcg@10"])
    assert trained["recall@10"] > untrained["recall@10"] + 0.1, (untrained, trained)
    assert trained["invalid_rate"] == 0
    assert log["train_loss"].iloc[-1] < log["train_loss"].iloc[0]


def _sft_cmd(data, out):
    cfg = {"policy": {"hidden": 32, "heads": 2, "kv_heads": 1, "intermediate": 64},
           "sft": {"epochs": 4, "batch_size": 16, "warmup_steps": 5, "patience": 10}}
    return [sys.executable, "-m", "blade.cli", "sft", "--data", str(data), "--out", str(out), "--seed", "1",
            "--config-json", json.dumps(cfg)]


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_result(tmp_path, monkeypatch):
    monkeypatch.setenv("BLADE_TRACKING", "off")
    data = tiny_dataset(tmp_path / "data")
    straight = subprocess.run(_sft_cmd(data, tmp_path / "a"), capture_output=True, text=True, cwd=ROOT)
    assert straight.returncode == 0, straight.stderr[-2000:]

    proc = subprocess.Popen(_sft_cmd(data, tmp_path / "b"), stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT)
    state = tmp_path / "b" / "checkpoint" / "trainer_state.json"
    deadline = time.time() + 300
    while time.time() < deadline and not (state.is_file() and json.loads(state.read_text())["epoch"] >= 1):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)  # no clean-up at all: the hardest kind of interruption
    proc.wait()
    assert json.loads(state.read_text())["epoch"] < 4, "the run finished before it could be killed"
    resumed = subprocess.run(_sft_cmd(data, tmp_path / "b"), capture_output=True, text=True, cwd=ROOT)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming from" in resumed.stdout
    log_a = pd.read_parquet(tmp_path / "a" / "train_log.parquet").drop(columns="seconds")
    log_b = pd.read_parquet(tmp_path / "b" / "train_log.parquet").drop(columns="seconds")
    pd.testing.assert_frame_equal(log_a, log_b[log_a.columns])  # the resumed log's keys come back sorted
    wa = load_file(str(tmp_path / "a" / "best" / "model.safetensors"))
    wb = load_file(str(tmp_path / "b" / "best" / "model.safetensors"))
    assert all(np.allclose(wa[k].numpy(), wb[k].numpy(), atol=1e-6) for k in wa)


def test_a_checkpoint_of_other_options_is_not_resumed(tmp_path, capsys):
    data = tiny_dataset(tmp_path / "data")
    one = SFTConfig(epochs=1, batch_size=32, warmup_steps=5, lr=1e-2)
    two = SFTConfig(epochs=2, batch_size=32, warmup_steps=5)
    train_sft(PreparedData.load(data), tmp_path / "b", SMALL_POLICY, one, seed=0)  # another run's checkpoint, after epoch 1
    capsys.readouterr()
    summary = train_sft(PreparedData.load(data), tmp_path / "b", SMALL_POLICY, two, seed=0)
    assert "removing it and starting afresh" in capsys.readouterr().out
    assert summary == train_sft(PreparedData.load(data), tmp_path / "a", SMALL_POLICY, two, seed=0)
    assert summary["epochs_run"] == 2 and len(pd.read_parquet(tmp_path / "b" / "train_log.parquet")) == 2
    wa = load_file(str(tmp_path / "a" / "best" / "model.safetensors"))
    wb = load_file(str(tmp_path / "b" / "best" / "model.safetensors"))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    # the same options again: the finished run's checkpoint is its own, nothing is retrained
    capsys.readouterr()
    assert train_sft(PreparedData.load(data), tmp_path / "b", SMALL_POLICY, two, seed=0) == summary
    out = capsys.readouterr().out
    assert "resuming from" in out and "starting afresh" not in out and "epoch=" not in out


def test_bad_sft_config_is_a_clear_error(tmp_path):
    done = subprocess.run([sys.executable, "-m", "blade.cli", "sft", "--data", str(tmp_path), "--out", str(tmp_path / "o"),
                           "--config-json", '{"sft": {"select_metric": "mrr@10"}}'], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 2 and "sft: select_metric must be recall@N or ndcg@N" in done.stderr
