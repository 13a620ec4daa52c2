"""The SFT sample size of config/llm.yaml, chosen on valid: SFT runs of the LLM policy on fixed
samples of train rows at one budget of optimiser steps (e.g. 1,024 rows × 4 epochs against 4,096
rows × 1 epoch: 256 steps of 16 rows each), every epoch scored on SFT's valid selection slice.
Selection reads valid only. Prints one Markdown table (valid NDCG@10 per epoch, steps, wall time)
and writes it, with each run's log, under --out.

    python benchmarks/llm_sft_size.py --runs 1024x4 4096x1 --threads 1 --out results/llm_sft_size

Every option not given here is config/llm.yaml's (on top of config/config.yaml, as in the DAG);
the dataset is prepared and the base model converted by the DAG's rules first
(``snakemake --configfile config/llm.yaml results/data/video_games_llm/stats.json
results/models/base/smollm2-135m-instruct/base_model.json``). A killed run resumes from its
checkpoint when the script is started again.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from blade.experiment import resolve  # noqa: E402


def merged(*paths: Path) -> dict:
    """The config files merged as Snakemake merges --configfile (later files update earlier ones)."""
    def update(a: dict, b: dict) -> dict:
        for k, v in b.items():
            a[k] = update(a.get(k, {}), v) if isinstance(v, dict) and isinstance(a.get(k), dict) else v
        return a
    out: dict = {}
    for p in paths:
        update(out, yaml.safe_load(p.read_text()))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default=str(ROOT / "config/llm.yaml"))
    ap.add_argument("--runs", nargs="+", default=["1024x4", "4096x1"], help="ROWSxEPOCHS per run")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="results/llm_sft_size")
    args = ap.parse_args()
    exp = resolve(merged(ROOT / "config/config.yaml", Path(args.config)))
    dataset = exp.run.datasets[0]
    data = Path("results/data") / dataset
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "BLADE_TRACKING": "off", "PYTHONUNBUFFERED": "1"}
    rows = []
    for run in args.runs:
        n, epochs = (int(x) for x in run.split("x"))
        sft = {**exp.section("sft"), "train_rows": n, "epochs": epochs, "patience": epochs}
        cfg = {"policy": exp.section("policy"), "sft": sft, "evaluate": exp.section("evaluate")}
        run_dir = out / run
        started = time.perf_counter()
        with open(out / f"{run}.log", "a") as log:
            done = subprocess.run([sys.executable, "-m", "blade.cli", "sft", "--data", str(data), "--out", str(run_dir),
                                   "--seed", "0", "--config-json", json.dumps(cfg)], env=env, stdout=log,
                                  stderr=subprocess.STDOUT, cwd=ROOT)
        wall = time.perf_counter() - started
        if done.returncode:
            rows.append(f"| {run} | failed (rc {done.returncode}, see {run}.log) | | | |")
            continue
        log = pd.read_parquet(run_dir / "train_log.parquet")
        curve = ", ".join(f"{v:.4f}" for v in log[f"valid/{exp.sft.select_metric}"])
        rows.append(f"| {n} | {epochs} | {int(log['step'].iloc[-1])} | {curve} | {wall:.0f} |")
    table = "\n".join([
        f"SFT sample size on {dataset} ({exp.policy.model}, {exp.policy.dtype}, {args.threads} thread(s)): valid "
        f"{exp.sft.select_metric} on SFT's {exp.evaluate.selection_rows}-row selection slice after each epoch",
        "", "| train rows | epochs | steps | valid per epoch | wall s |", "| --- | --- | --- | --- | --- |", *rows])
    (out / "sft_size.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
