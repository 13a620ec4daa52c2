"""Benchmark of the DAG's job-level speed-ups, each as a ratio of two ways of doing the same work,
timed in one run on the same machine.

On the tiny model most of a short job is interpreter start (torch, transformers and MLflow
imports: several seconds), so the DAG does related work in one process. Each pair here runs the
same ``blade`` commands the rules run, as subprocesses, and prints wall time, the ratio and the
peak resident memory of the largest process:

- **scoring**: a trained row's lists and metrics on valid, test and sampled test — as 6 processes
  (``blade recommend`` + ``blade evaluate`` per split: the DAG before) against 1 (``blade score``,
  what ``blade sft``/``blade align`` now do in-process after training);
- **rollouts**: reference rollouts for the 3 reward settings of the default — 3 processes, one
  draw each, against 1 process drawing once and scoring 3 ways (``"rewards"``);
- **best-of-n**: the Best-of-N rows of the 3 reward settings, each evaluated — 3 processes against
  1 (one shared draw).

Each side's outputs are checked to agree (the same lists; the same metrics), so a ratio never
compares different work. Set-up: the embedded synthetic dataset (``--n-users``) and a tiny SFT
policy trained for one epoch (timing only). Timings vary with machine load; read the ratios.

    python benchmarks/bench_jobs.py                  # ~3 minutes on 2 cores
    python benchmarks/bench_jobs.py --only scoring
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

REWARDS = {"ndcg": {"weights": {"ndcg": 1.0}}, "ndcg+fairness": {"weights": {"ndcg": 1.0, "fairness": 0.5}},
           "ndcg+diversity": {"weights": {"ndcg": 1.0, "diversity": 0.5}}}
BLADE = [sys.executable, "-m", "blade.cli"]


def _run(args: list[str]) -> float:
    started = time.perf_counter()
    done = subprocess.run(args, capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, "BLADE_TRACKING": os.environ.get("BLADE_TRACKING", "on")})
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(args[:4])} failed:\n{done.stderr[-2000:]}")
    return time.perf_counter() - started


def _side(commands: list[list[str]]) -> tuple[float, float]:
    """(wall seconds, peak RSS MiB of the largest child so far) of running ``commands`` one by one."""
    seconds = sum(_run(c) for c in commands)
    return seconds, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024


def bench_scoring(tmp: Path, data: Path, model: Path, evaluate: dict) -> tuple[list, list, callable]:
    sep = tmp / "scoring_sep"
    cmds = []
    for split, samples in (("valid", 0), ("test", 0), ("test", evaluate["samples"])):
        where = sep / split / ("sample" if samples else "")
        cmds.append([*BLADE, "recommend", "--model", str(model), "--data", str(data), "--split", split, "--k",
                     str(evaluate["k"]), "--samples", str(samples), "--out", str(where / "recs.jsonl")])
        cmds.append([*BLADE, "evaluate", "--recs", str(where / "recs.jsonl"), "--data", str(data), "--split", split,
                     "--ks", ",".join(map(str, evaluate["ks"])), "--out", str(where), "--method", "sft"])
    one = [[*BLADE, "score", "--model", str(model), "--data", str(data), "--root", str(tmp / "scoring_one"),
            "--method", "sft", "--config-json", json.dumps({"evaluate": evaluate})]]

    def same() -> bool:
        return all(json.loads((tmp / "scoring_sep" / d / "metrics.json").read_text())["ndcg@10"]
                   == json.loads((tmp / "scoring_one" / d / "metrics.json").read_text())["ndcg@10"]
                   for d in ("valid", "test", "test/sample"))
    return cmds, one, same


def bench_rollouts(tmp: Path, data: Path, model: Path, rollout: dict) -> tuple[list, list, callable]:
    sep = [[*BLADE, "rollout", "--data", str(data), "--model", str(model), "--reward-setting", name,
            "--out", str(tmp / "roll_sep" / f"{name}.parquet"),
            "--config-json", json.dumps({"rollout": rollout, "reward": cfg})] for name, cfg in REWARDS.items()]
    one = [[*BLADE, "rollout", "--data", str(data), "--model", str(model), "--out",
            str(tmp / "roll_one" / "{reward}.parquet"), "--config-json", json.dumps({"rollout": rollout,
                                                                                     "rewards": REWARDS})]]

    def same() -> bool:
        import pandas as pd

        return all(pd.read_parquet(tmp / "roll_sep" / f"{n}.parquet").equals(pd.read_parquet(tmp / "roll_one" / f"{n}.parquet"))
                   for n in REWARDS)
    return sep, one, same


def bench_bon(tmp: Path, data: Path, model: Path, evaluate: dict) -> tuple[list, list, callable]:
    out = "results/{method}/test/recs.jsonl"
    sep = [[*BLADE, "bon", "--model", str(model), "--data", str(data), "--split", "test", "--evaluate",
            "--reward-setting", name, "--out", str(tmp / "bon_sep" / name / out),
            "--config-json", json.dumps({"evaluate": evaluate, "reward": cfg})] for name, cfg in REWARDS.items()]
    one = [[*BLADE, "bon", "--model", str(model), "--data", str(data), "--split", "test", "--evaluate",
            "--out", str(tmp / "bon_one" / "{reward}" / out),
            "--config-json", json.dumps({"evaluate": evaluate, "rewards": REWARDS})]]

    def same() -> bool:
        return all((tmp / "bon_sep" / n / "results" / m / "test/recs.jsonl").read_bytes()
                   == (tmp / "bon_one" / n / "results" / m / "test/recs.jsonl").read_bytes()
                   for n in REWARDS for m in ("bon_n8", "oracle_bon_n8"))
    return sep, one, same


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default="scoring,rollouts,best-of-n", help="comma-separated pairs to time")
    ap.add_argument("--n-users", type=int, default=1500)
    args = ap.parse_args()
    wanted = [s.strip() for s in args.only.split(",") if s.strip()]
    with tempfile.TemporaryDirectory(prefix="bench_jobs_") as tmp_name:
        tmp = Path(tmp_name)
        os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{tmp / 'mlflow.db'}")
        data, sft = tmp / "data", tmp / "sft"
        _run([*BLADE, "prepare", "--spec", json.dumps({"source": "synthetic", "params": {"n_users": args.n_users}}),
              "--out", str(data)])
        _run([*BLADE, "sft", "--data", str(data), "--out", str(sft), "--config-json",
              json.dumps({"sft": {"epochs": 1}})])
        model = sft / "best"
        evaluate = {"k": 20, "ks": [5, 10, 20], "samples": 4, "bon_n": [1, 2, 4, 8, 16]}
        pairs = {"scoring": lambda: bench_scoring(tmp, data, model, evaluate),
                 "rollouts": lambda: bench_rollouts(tmp, data, model, {"m": 16, "max_contexts": 1500}),
                 "best-of-n": lambda: bench_bon(tmp, data, model, evaluate)}
        print(f"{'pair':<11}{'before':>24}{'after':>24}{'ratio':>8}{'peak RSS':>10}  same outputs")
        for name in wanted:
            before_cmds, after_cmds, same = pairs[name]()
            before, _ = _side(before_cmds)
            after, peak = _side(after_cmds)
            print(f"{name:<11}{f'{len(before_cmds)} processes {before:6.1f} s':>24}"
                  f"{f'{len(after_cmds)} process {after:6.1f} s':>24}{before / after:>7.2f}x{peak:>7.0f}MiB  {same()}")


if __name__ == "__main__":
    main()
