"""Choose a reward setting and an alignment budget on valid, before any test read (issue: a protocol
in which methods can differ).

Given a prepared dataset and an SFT start, it draws the reference rollouts once under every
candidate reward setting, runs each method under each setting for ``--steps`` steps (one seed or
more), and prints, per run and step, what alignment's own valid rows say: valid NDCG@10, the valid
reward, the difference from the SFT start and its minimum detectable difference (80% power), and
the training diagnostics (share of tied groups, weight spread). Nothing here reads the test split:
the runs get no ``--eval-root``/``--curve``, and the summary is written to ``OUT/probe.md`` and
``OUT/probe.csv``.

    python benchmarks/protocol_probe.py --data results/data/video_games \
        --sft results/models/video_games/sft/seed0 --out results/probe/video_games \
        --setting ndcg=ndcg:1 --setting graded=future:1 --setting cooc=ndcg:1,relevance:1 \
        --method blade --method blade_static --method grpo --steps 120 --eval-every 10 --jobs 2

A setting is ``NAME=REWARD:WEIGHT[,REWARD:WEIGHT…]``; a method is an entry of config/config.yaml's
``methods`` (or ``NAME=OBJECTIVE[:OPTION=VALUE…]``, e.g. ``blade_k1=blade:kappa0=1``).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

ROOT = Path(__file__).resolve().parents[1]


def parse_setting(text: str) -> tuple[str, dict]:
    name, _, spec = text.partition("=")
    weights = {}
    for part in spec.split(","):
        reward, _, weight = part.partition(":")
        weights[reward] = float(weight or 1)
    return name, {"weights": weights}


def parse_method(text: str, defined: dict) -> tuple[str, dict]:
    if "=" not in text:
        if text not in defined:
            sys.exit(f"--method {text}: not an entry of config/config.yaml methods ({sorted(defined)}); "
                     "write NAME=OBJECTIVE[:OPTION=VALUE...]")
        return text, dict(defined[text])
    name, _, spec = text.partition("=")
    objective, *options = spec.split(":")
    entry = {"objective": objective}
    for option in options:
        key, _, value = option.partition("=")
        entry[key] = yaml.safe_load(value)
    return name, entry


def run(cmd: list[str], log: Path) -> None:
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as f:
        done = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT)
    if done.returncode:
        sys.exit(f"failed ({done.returncode}): {' '.join(cmd)}; see {log}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True)
    p.add_argument("--sft", required=True, help="an SFT run directory (with best/)")
    p.add_argument("--out", required=True)
    p.add_argument("--setting", action="append", required=True)
    p.add_argument("--method", action="append", required=True)
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--steps", type=int, default=120)
    p.add_argument("--eval-every", type=int, default=10)
    p.add_argument("--contexts", type=int, default=32, help="align.contexts_per_step")
    p.add_argument("--config", default="config/config.yaml", help="where methods and the evaluate section come from")
    p.add_argument("--jobs", type=int, default=1, help="runs at once (one torch thread each)")
    args = p.parse_args()
    base = yaml.safe_load((ROOT / args.config).read_text())
    settings = dict(parse_setting(s) for s in args.setting)
    methods = dict(parse_method(m, base.get("methods", {})) for m in args.method)
    out = Path(args.out)
    blade = [sys.executable, "-m", "blade.cli"]
    evaluate = {"splits": ["valid"], "inference_splits": [], "samples": 0, "bon_n": [], "references": []}
    for seed in args.seeds:  # one draw of reference lists per seed, scored under every setting
        rollouts = out / "rollouts" / f"seed{seed}"
        if not all((rollouts / f"{name}.parquet").is_file() for name in settings):
            cfg = {"rollout": {}, "rewards": settings}
            run([*blade, "rollout", "--data", args.data, "--model", f"{args.sft}/best", "--out",
                 str(rollouts / "{reward}.parquet"), "--seed", str(seed), "--dataset", "probe", "--config-json",
                 json.dumps(cfg)], out / "logs" / f"rollout_seed{seed}.log")
    jobs = []
    for seed in args.seeds:
        for name, reward in settings.items():
            for method, entry in methods.items():
                run_dir = out / name / method / f"seed{seed}"
                if (run_dir / "summary.json").is_file():
                    continue
                cfg = {"align": {"steps": args.steps, "eval_every": args.eval_every,
                                 "contexts_per_step": args.contexts},
                       "evaluate": evaluate, "reward": reward, "method": entry}
                jobs.append(([*blade, "align", "--data", args.data, "--sft", args.sft, "--rollouts",
                              str(out / "rollouts" / f"seed{seed}" / f"{name}.parquet"), "--out", str(run_dir),
                              "--seed", str(seed), "--dataset", "probe", "--method", method, "--reward-setting", name,
                              "--config-json", json.dumps(cfg)], out / "logs" / f"{name}_{method}_seed{seed}.log"))
    with ThreadPoolExecutor(args.jobs) as pool:
        list(pool.map(lambda job: run(*job), jobs))
    summarise(out, settings, methods, args.seeds)


def run_record(run_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame, int | None] | None:
    """(valid curve, diagnostics, selected step) of a finished run, or of a stopped one from its last
    checkpoint (selected step None: the run did not finish); None when nothing was written."""
    if (run_dir / "summary.json").is_file():
        summary = json.loads((run_dir / "summary.json").read_text())
        return (pd.read_parquet(run_dir / "valid_curve.parquet"), pd.read_parquet(run_dir / "diagnostics.parquet"),
                summary["best_step"])
    state = run_dir / "checkpoint" / "trainer_state.json"
    if not state.is_file():
        return None
    state = json.loads(state.read_text())
    return pd.DataFrame(state["valid"]), pd.DataFrame(state["log"]), None


def summarise(out: Path, settings, methods, seeds: list[int]) -> pd.DataFrame:
    lines = []
    for name in settings:
        for method in methods:
            for seed in seeds:
                record = run_record(out / name / method / f"seed{seed}")
                if record is None:
                    continue
                curve, diag, best = record
                for _, row in curve.iterrows():
                    step = int(row["step"])
                    window = diag[(diag["step"] > step - 10) & (diag["step"] <= step)]
                    lines.append({"setting": name, "method": method, "seed": seed, "step": step,
                                  "finished": best is not None, "selected": step == best,
                                  "valid_ndcg@10": row["valid/ndcg@10"], "valid_reward": row["valid/reward"],
                                  "diff_from_start": row["valid/diff"], "mde": row["valid/mde"],
                                  "train_reward": window["reward_mean"].mean() if len(window) else np.nan,
                                  "tied_frac": window["tied_frac"].mean() if "tied_frac" in window else np.nan,
                                  "kl": window["kl"].mean() if "kl" in window else np.nan})
    frame = pd.DataFrame(lines)
    frame.to_csv(out / "probe.csv", index=False)
    with open(out / "probe.md", "w") as f:
        f.write("# Protocol probe (valid split only; alignment's selection rows)\n\n")
        f.write("| " + " | ".join(frame.columns) + " |\n|" + " --- |" * len(frame.columns) + "\n")
        for _, row in frame.iterrows():
            f.write("| " + " | ".join(f"{v:.4f}" if isinstance(v, float) else str(v) for v in row) + " |\n")
    last = frame.sort_values("step").groupby(["setting", "method", "seed"]).tail(1)
    print(last.to_string(index=False))
    return frame


if __name__ == "__main__":
    main()
