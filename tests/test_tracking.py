"""Tracking: run identity, tags, params, metrics and artifacts read back through MLflow's own
client; failure status; many jobs logging into one fresh SQLite store at once; the off switch."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from blade import tracking
from blade.tracking import config_hash, flatten_params, run_metadata, track

ROOT = Path(__file__).resolve().parents[1]
CONFIG = {"model": {"dim": 32, "layers": [1, 2]}, "lr": 0.001, "name": "tiny"}


@pytest.fixture
def store(tmp_path, monkeypatch):
    """Points tracking at a SQLite file in tmp_path that does not exist yet; returns a function
    giving an MlflowClient on it (called only after logging: the client creates the schema)."""
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    monkeypatch.delenv("BLADE_TRACKING", raising=False)
    return lambda: MlflowClient(uri)


def runs(client, experiment="blade"):
    exp = client.get_experiment_by_name(experiment)
    return client.search_runs([exp.experiment_id]) if exp else []


def test_run_records_identity_config_metrics_and_artifacts(store, tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "weights.txt").write_text("w")
    with track("align", "synthetic", "blade", 3, CONFIG, run_dir=tmp_path / "out") as tr:
        for step in range(5):
            tr.log_metrics({"train/loss": 1.0 / (step + 1), "train/kl": step * 0.5}, step=step)
        tr.log_final({"valid/ndcg@10": 0.25})
        tr.log_artifact(tmp_path / "out" / "weights.txt")

    client = store()
    (run,) = runs(client)
    assert run.info.run_name == "synthetic__blade__seed3__align"
    assert run.info.status == "FINISHED"
    tags = run.data.tags
    assert {k: tags[k] for k in ("dataset", "method", "seed", "stage")} == {
        "dataset": "synthetic", "method": "blade", "seed": "3", "stage": "align"}
    assert tags["config_hash"] == config_hash(CONFIG)
    assert tags["git_commit"] == run_metadata(CONFIG)["git_commit"] != ""

    params = run.data.params
    assert params["model.dim"] == "32" and params["lr"] == "0.001" and params["name"] == "tiny"
    assert json.loads(params["model.layers"]) == [1, 2]
    assert params["versions.python"] and params["versions.mlflow"] and params["versions.numpy"]

    history = client.get_metric_history(run.info.run_id, "train/loss")
    assert [(m.step, m.value) for m in sorted(history, key=lambda m: m.step)] == [
        (s, pytest.approx(1.0 / (s + 1))) for s in range(5)]
    assert len(client.get_metric_history(run.info.run_id, "train/kl")) == 5
    assert run.data.metrics["valid/ndcg_at_10"] == pytest.approx(0.25)  # "@" is not allowed
    assert [a.path for a in client.list_artifacts(run.info.run_id)] == ["weights.txt"]

    info = json.loads((tmp_path / "out" / "run_info.json").read_text())
    assert info["run_id"] == run.info.run_id and info["run_name"] == run.info.run_name
    assert info["config"] == CONFIG and info["tags"]["config_hash"] == tags["config_hash"]
    assert info["versions"]["mlflow"] == params["versions.mlflow"]


def test_deferred_metrics_keep_their_steps_and_are_flushed_even_when_the_run_fails(store, monkeypatch):
    sent = []
    with pytest.raises(RuntimeError, match="boom"):
        with track("align", "synthetic", "blade", 0, CONFIG) as tr:
            real = tr.client.log_batch
            monkeypatch.setattr(tr.client, "log_batch", lambda *a, **kw: (sent.append(len(kw.get("metrics") or [])), real(*a, **kw)))
            for step in range(1, 1201):  # 1,200 steps x 1 metric: over MLflow's 1,000 per batch
                tr.log_metrics({"align/loss": float(step)}, step=step, defer=True)
            assert sent == []  # nothing sent while deferred
            tr.log_metrics({"valid/reward": 0.5}, step=1200)  # an undeferred call sends everything
            assert sent == [1000, 201]
            tr.log_metrics({"align/loss": -1.0}, step=1201, defer=True)
            raise RuntimeError("boom")
    client = store()
    (run,) = runs(client)
    assert run.info.status == "FAILED"
    history = sorted(client.get_metric_history(run.info.run_id, "align/loss"), key=lambda m: m.step)
    assert [(m.step, m.value) for m in history] == [(s, float(s)) for s in range(1, 1201)] + [(1201, -1.0)]


def test_config_hash_is_stable_and_content_sensitive():
    reordered = {"name": "tiny", "lr": 0.001, "model": {"layers": [1, 2], "dim": 32}}
    assert config_hash(CONFIG) == config_hash(reordered) == run_metadata(CONFIG)["config_hash"]
    assert len(config_hash(CONFIG)) == 12
    assert config_hash(CONFIG) != config_hash({**CONFIG, "lr": 0.002})
    assert config_hash(CONFIG) != config_hash({**CONFIG, "model": {"dim": 32, "layers": [2, 1]}})


def test_flatten_params_joins_keys_and_truncates_long_values():
    flat = flatten_params({"a": {"b": {"c": 1}, "e": {}}, "l": ["x", 2], "long": "z" * 10_000, "n": None})
    assert flat["a.b.c"] == "1" and flat["a.e"] == "{}" and flat["n"] == "None"
    assert json.loads(flat["l"]) == ["x", 2]
    assert len(flat["long"]) == tracking.PARAM_LIMIT and flat["long"].endswith("...")


def test_failing_block_marks_run_failed_and_reraises(store):
    with pytest.raises(RuntimeError, match="boom"):
        with track("sft", "synthetic", "sft", 0, CONFIG):
            raise RuntimeError("boom")
    (run,) = runs(store())
    assert run.info.status == "FAILED"


def test_retry_backs_off_on_locked_database_only(monkeypatch):
    monkeypatch.setattr(tracking.time, "sleep", lambda s: None)
    calls = []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise RuntimeError("wrapped") from sqlite3.OperationalError("database is locked")
        return "ok"

    assert tracking._retry(flaky) == "ok" and len(calls) == 3
    with pytest.raises(ValueError):
        tracking._retry(lambda: (_ for _ in ()).throw(ValueError("not a lock")))


def test_tracking_off_logs_nothing(tmp_path, monkeypatch):
    db = tmp_path / "mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{db}")
    monkeypatch.setenv("BLADE_TRACKING", "off")
    with track("sft", "synthetic", "sft", 0, CONFIG, run_dir=tmp_path) as tr:
        tr.log_metrics({"train/loss": 1.0}, step=0)
        tr.log_final({"valid/ndcg@10": 0.1})
        tr.log_artifacts(tmp_path)
    assert not db.exists()
    info = json.loads((tmp_path / "run_info.json").read_text())
    assert info["run_id"] is None and info["tags"]["config_hash"] == config_hash(CONFIG)


# Each job imports MLflow first (slow), signals it is ready, then waits for "go" so that all of
# them hit the fresh store together: schema creation, experiment creation and metric writes collide.
JOB = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    import mlflow.tracking
    from blade.tracking import track
    seed, sync = int(sys.argv[1]), Path(sys.argv[2])
    (sync / f"ready{seed}").touch()
    while not (sync / "go").exists():
        time.sleep(0.01)
    with track("align", "synthetic", "blade", seed, {"seed": seed, "lr": 0.1}) as tr:
        for step in range(20):
            tr.log_metrics({"train/loss": seed + step / 100}, step=step)
        tr.log_final({"valid/ndcg@10": seed / 10})
""")


@pytest.mark.slow
def test_parallel_jobs_do_not_lose_or_corrupt_runs(store, tmp_path):
    jobs, steps = 6, 20
    assert not (tmp_path / "mlflow.db").exists()  # the jobs race to create the schema
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [subprocess.Popen([sys.executable, "-c", JOB, str(s), str(tmp_path)], cwd=tmp_path, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for s in range(jobs)]
    deadline = time.monotonic() + 60
    while len(list(tmp_path.glob("ready*"))) < jobs and time.monotonic() < deadline:
        if any(p.poll() not in (None, 0) for p in procs):
            break
        time.sleep(0.05)
    (tmp_path / "go").touch()
    outputs = [p.communicate(timeout=120)[0] for p in procs]
    assert [p.returncode for p in procs] == [0] * jobs, "\n".join(outputs)

    client = store()
    found = runs(client)
    assert sorted(r.info.run_name for r in found) == [f"synthetic__blade__seed{s}__align" for s in range(jobs)]
    for run in found:
        seed = int(run.data.tags["seed"])
        assert run.info.status == "FINISHED"
        history = sorted(client.get_metric_history(run.info.run_id, "train/loss"), key=lambda m: m.step)
        assert [(m.step, m.value) for m in history] == [
            (s, pytest.approx(seed + s / 100)) for s in range(steps)]
        assert run.data.metrics["valid/ndcg_at_10"] == pytest.approx(seed / 10)
