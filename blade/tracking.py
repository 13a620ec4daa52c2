"""MLflow tracking for every stage: one run per (stage, dataset, method, seed).

    with track("align", "synthetic", "blade", 0, config, run_dir=out) as tr:
        tr.log_metrics({"train/loss": loss}, step=step)   # per step; "@" in names becomes "_at_"
        tr.log_final({"valid/ndcg@10": ndcg})
        tr.log_artifacts(out)

The store is ``sqlite:///results/mlflow.db`` (relative to the working directory, i.e. the project
root under Snakemake) unless ``MLFLOW_TRACKING_URI`` names another one (a tracking server on a
cluster). ``MLFLOW_EXPERIMENT_NAME`` overrides the experiment ("blade"). ``BLADE_TRACKING=off``
makes :func:`track` a no-op that still writes ``run_info.json`` (unit tests of other stages).

Parallel Snakemake jobs share one SQLite file, which fails in two known ways (mlflow#6490,
mlflow#12259, hydraflow#245): (1) several processes creating the schema or the experiment at once
race ("duplicate column name", "experiment already exists"); (2) writers collide with
"database is locked" once MLflow's 20 s busy_timeout runs out. (1) is serialised by an
``fcntl.flock`` on ``<db>.lock`` around store initialisation and experiment creation; (2) by
retrying each client call with exponential backoff and jitter. A locked SQLite write is rolled
back as a whole, so repeating the call cannot log anything twice.
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import platform
import random
import re
import sqlite3
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from functools import cache
from pathlib import Path
from typing import Any, TypeVar

from blade.io import _json_default, write_json  # the same JSON conventions as every result file

DEFAULT_URI = "sqlite:///results/mlflow.db"
DEFAULT_EXPERIMENT = "blade"
LIBRARIES = ("torch", "transformers", "peft", "numpy", "pandas", "mlflow")
PARAM_LIMIT = 6000  # mlflow.utils.validation.MAX_PARAM_VAL_LENGTH in MLflow 3.x
RETRIES = 8  # sleeps 0.2, 0.4, … capped at 5 s (±50 % jitter): ~16 s on top of MLflow's busy_timeout
T = TypeVar("T")


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_URI


def use_tracking_uri(uri: str) -> None:
    """Make ``uri`` the tracking URI of this process and of every job it starts (config
    ``run.tracking_uri``; empty leaves $MLFLOW_TRACKING_URI or the SQLite default)."""
    if uri:
        os.environ["MLFLOW_TRACKING_URI"] = uri


def _sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI (relative or absolute); None for a server."""
    return Path(uri.removeprefix("sqlite:///").split("?")[0]) if uri.startswith("sqlite:///") else None


def config_hash(config: Mapping[str, Any]) -> str:
    """First 12 hex of sha256 over canonical JSON: key order and whitespace do not matter."""
    text = json.dumps(config, sort_keys=True, separators=(",", ":"), default=_json_default)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


@cache
def _git_state() -> tuple[str, bool]:
    """(commit, dirty) of the repository holding this file; ("unknown", False) outside git."""
    here = Path(__file__).resolve().parent

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=here, capture_output=True, text=True, check=True).stdout

    try:
        return git("rev-parse", "HEAD").strip(), bool(git("status", "--porcelain").strip())
    except (OSError, subprocess.CalledProcessError):
        return "unknown", False


@cache
def library_versions() -> dict[str, str]:
    # Versions come from package metadata: importing torch/transformers only to read
    # __version__ would cost seconds per job. find_spec skips packages that are not installed.
    versions = {"python": platform.python_version()}
    for name in LIBRARIES:
        if importlib.util.find_spec(name) is not None:
            versions[name] = importlib.metadata.version(name)
    return versions


def run_metadata(config: Mapping[str, Any]) -> dict[str, Any]:
    """What a stage stores beside its weights so they can be traced to code and config."""
    commit, dirty = _git_state()
    return {"config_hash": config_hash(config), "git_commit": commit, "git_dirty": dirty,
            "versions": library_versions()}


def flatten_params(config: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested keys joined with "."; lists as JSON; values cut to MLflow's length limit."""
    out: dict[str, str] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(flatten_params(value, f"{name}."))
            continue
        structured = isinstance(value, (list, tuple, Mapping))
        text = json.dumps(value, default=_json_default) if structured else str(value)
        # Too long a value makes MLflow reject the whole batch; the full config is in run_info.json.
        out[name] = text if len(text) <= PARAM_LIMIT else text[: PARAM_LIMIT - 3] + "..."
    return out


def mlflow_key(name: str) -> str:
    """MLflow names allow only [/\\w.\\- :]; metric names like "recall@10" become "recall_at_10"."""
    return re.sub(r"[^/\w.\- :]", "_", name.replace("@", "_at_"))


def _is_locked(exc: BaseException) -> bool:
    """True for SQLite lock contention, however deep MLflow/SQLAlchemy wrapped it. Any sqlite3
    OperationalError counts: the rarer ones ("disk I/O error" on a busy disk) are transient too."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, sqlite3.OperationalError) or "database is locked" in str(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _retry(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    for delay in [min(5.0, 0.1 * 2**k) for k in range(1, RETRIES)]:
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            if not _is_locked(exc):
                raise
            # Jitter keeps jobs that collided once from retrying in lockstep and colliding again.
            time.sleep(delay * random.uniform(0.5, 1.5))
    return fn(*args, **kwargs)  # the last attempt's error propagates


@contextmanager
def _init_lock(uri: str) -> Iterator[None]:
    """Exclusive flock on ``<db>.lock`` for SQLite stores; nothing to lock for a server."""
    db = _sqlite_path(uri)
    if db is None:
        yield
        return
    db.parent.mkdir(parents=True, exist_ok=True)
    with open(f"{db}.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)  # released when the file closes, also if the job dies
        yield


_clients: dict[tuple[str, str], tuple[Any, str]] = {}


def _client_and_experiment(uri: str, name: str) -> tuple[Any, str]:
    """Build the store (runs schema migrations on a fresh DB) and get/create the experiment, once
    per process and under the init lock, so concurrent first runs do not race each other."""
    if (uri, name) in _clients:
        return _clients[(uri, name)]
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    with _init_lock(uri):
        client = MlflowClient(uri)  # builds the store and migrates a fresh DB; MLflow locks nothing here
        exp = _retry(client.get_experiment_by_name, name)
        if exp is not None:
            exp_id = exp.experiment_id
        else:
            # Artifacts beside the DB (results/mlartifacts), not in ./mlruns of whatever cwd.
            db = _sqlite_path(uri)
            art = (db.parent / "mlartifacts").resolve().as_uri() if db is not None else None
            try:
                exp_id = _retry(client.create_experiment, name, artifact_location=art)
            except MlflowException:  # a server has no file lock: another job may have won the race
                exp_id = _retry(client.get_experiment_by_name, name).experiment_id
    _clients[(uri, name)] = (client, exp_id)
    return client, exp_id


class Tracker:
    """Handle yielded by :func:`track`; with ``client=None`` (tracking off) every call is a no-op."""

    def __init__(self, client: Any = None, run_id: str | None = None) -> None:
        self.client, self.run_id = client, run_id
        self._pending: list = []  # deferred metrics, sent with the next flushed call or at end()

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None, defer: bool = False) -> None:
        """Log ``metrics`` at ``step``. ``defer=True`` (per-step training rows) keeps them until the
        next call without it or ``end()``: each batch is one SQLite transaction (about 40 ms here), and
        a step row every step cost the default DAG's alignment jobs 1.7 s each. Every value keeps its
        own step; a killed job loses only the deferred rows, which diagnostics.parquet also holds."""
        if self.client is not None and metrics:
            from mlflow.entities import Metric

            now = int(time.time() * 1000)
            self._pending += [Metric(mlflow_key(k), float(v), now, step or 0) for k, v in metrics.items()]
            if not defer:
                self.flush()

    def flush(self) -> None:
        """Send the deferred metrics, in batches under MLflow's 1,000-metric limit."""
        while self.client is not None and self._pending:
            batch, self._pending = self._pending[:1000], self._pending[1000:]
            _retry(self.client.log_batch, self.run_id, metrics=batch)

    def log_final(self, metrics: Mapping[str, float]) -> None:
        """Final (summary) metrics, at step 0; they are what the run's metrics table shows."""
        self.log_metrics(metrics)

    def log_params(self, params: Mapping[str, str]) -> None:
        if self.client is not None:
            from mlflow.entities import Param

            batch = [Param(mlflow_key(k), v) for k, v in params.items()]
            _retry(self.client.log_batch, self.run_id, params=batch)

    def log_artifact(self, path: str | Path) -> None:
        if self.client is not None:
            _retry(self.client.log_artifact, self.run_id, str(path))

    def log_artifacts(self, directory: str | Path) -> None:
        if self.client is not None:
            _retry(self.client.log_artifacts, self.run_id, str(directory))

    def end(self, status: str) -> None:
        if self.client is not None:
            self.flush()
            _retry(self.client.set_terminated, self.run_id, status)


@contextmanager
def track(stage: str, dataset: str, method: str, seed: int, config: Mapping[str, Any],
          run_dir: str | Path | None = None, reward: str | None = None) -> Iterator[Tracker]:
    """Open the MLflow run ``{dataset}__{reward}__{method}__seed{seed}__{stage}`` (no ``{reward}``
    part for runs trained under no reward setting); see the module docstring."""
    meta = run_metadata(config)
    run_name = "__".join([dataset, *([reward] if reward else []), method, f"seed{seed}", stage])
    tags = {"dataset": dataset, "method": method, "seed": str(seed), "stage": stage,
            "config_hash": meta["config_hash"], "git_commit": meta["git_commit"]}
    if reward:
        tags["reward"] = reward
    if meta["git_dirty"]:
        tags["dirty"] = "true"
    tracker = Tracker()
    if os.environ.get("BLADE_TRACKING", "on").lower() not in ("off", "0", "false"):
        client, exp_id = _client_and_experiment(
            tracking_uri(), os.environ.get("MLFLOW_EXPERIMENT_NAME") or DEFAULT_EXPERIMENT)
        tracker = Tracker(client, _retry(client.create_run, exp_id, run_name=run_name, tags=tags).info.run_id)
    try:
        params = flatten_params(config) | {f"versions.{k}": v for k, v in meta["versions"].items()}
        tracker.log_params(params)
        if run_dir is not None:  # written before the stage's work so it can ship with its artifacts
            write_json(Path(run_dir) / "run_info.json", {"run_id": tracker.run_id, "run_name": run_name,
                       "tags": tags, "config": dict(config), "versions": meta["versions"]})
        yield tracker
    except BaseException as exc:
        tracker.end("KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED")
        raise
    tracker.end("FINISHED")


def run_stage(stage: str, dataset: str, method: str, seed: int, resolved: Mapping[str, Any],
              work: Callable[[Any], dict], summary_path: str | Path, run_dir: str | Path | None = None,
              reward: str | None = None, artifacts: tuple[str | Path, ...] = ()) -> dict:
    """Track ``work(tracker) -> summary`` as one MLflow run (:func:`track`), log the summary's
    numbers as final metrics and ``artifacts`` as the run's files, and write the summary
    atomically. In a data-parallel launch only the main process tracks and writes
    (blade/distributed.py); the others only work."""
    from blade.distributed import group

    if not group().main:
        return work(None)

    with track(stage, dataset, method, seed, resolved, run_dir=run_dir, reward=reward) as tracker:
        summary = work(tracker)
        tracker.log_final({k: v for k, v in summary.items() if isinstance(v, (int, float)) and not isinstance(v, bool)})
        for path in artifacts:
            if Path(path).is_file():
                tracker.log_artifact(str(path))
            elif Path(path).is_dir():
                tracker.log_artifacts(str(path))
    write_json(summary_path, summary)
    return summary
