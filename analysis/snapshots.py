"""Test scores of an aligned run's per-step snapshots → ``results/curves/{ds}/{reward}/{method}/seed{s}.parquet``
(docs/method.md §6.4: test NDCG vs step).

The alignment loop saves the policy at every evaluation step (``snapshots/step{S:06d}/``, step 0 =
the SFT start) and selects on the valid split only. After training, this scores each snapshot's
greedy constrained lists on the TEST split with the evaluation's own code (``blade.evaluation``:
same metrics, same ILD distance, same padding rules) and, on the first ``align.k`` items, the
run's own reward setting (``reward`` and ``reward/<component>``). One line per snapshot: ``step``
and every number ``metrics.json`` would hold. Nothing reads this file back into training or model
selection: it only draws the static-upper-bound figure and feeds the §6.4 claim.
"""

from __future__ import annotations

import argparse
import tempfile
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from analysis.common import read_json, run_cli
from blade.errors import DataError


def snapshot_dirs(run_dir: str | Path) -> list[tuple[int, Path]]:
    """(step, directory) of every saved snapshot, by step."""
    root = Path(run_dir) / "snapshots"
    found = []
    for path in root.glob("step*"):
        digits = path.name.removeprefix("step")
        if path.is_dir() and digits.isdigit():
            found.append((int(digits), path))
    if not found:
        raise DataError(f"{root}: no snapshots (step*/ folders); the alignment run saves one per evaluation step — "
                        "rerun `blade align` for this run")
    return sorted(found)


def score_snapshots(run_dir: str | Path, data_dir: str | Path, split: str, evaluation, device: str | None = None,
                    ) -> pd.DataFrame:
    from blade.data.canonical import load_prepared
    from blade.evaluation import evaluate, write_recs
    from blade.recommend import policy_lists
    from blade.rewards import ListReward, RewardConfig
    from blade.config import from_dict

    run_dir = Path(run_dir)
    align_cfg = run_dir / "align_config.json"
    if not align_cfg.is_file():
        raise DataError(f"{align_cfg} does not exist: {run_dir} is not a finished alignment run")
    cfg = read_json(align_cfg)
    items, splits, stats = load_prepared(data_dir)
    frame = splits[split]
    histories, targets = frame["history"].tolist(), frame["target"].to_numpy()
    reward = ListReward(from_dict(RewardConfig, cfg.get("reward", {}), "reward"), items, splits["train"], stats)
    k_align = int(cfg.get("align", {}).get("k", evaluation.k))
    lines = []
    with tempfile.TemporaryDirectory(prefix="snapshot_eval_") as tmp:
        for step, snap in snapshot_dirs(run_dir):
            lists, cost = policy_lists(snap, data_dir, split, evaluation.k, evaluation.batch_size, device)  # (rows, k)
            write_recs(Path(tmp) / "recs.jsonl", lists)
            summary = evaluate(Path(tmp) / "recs.jsonl", data_dir, split, tmp, evaluation.ks)
            scores = reward(histories, targets, lists[:, :k_align])
            lines.append({"step": step, **{k: v for k, v in summary.items() if k != "split"},
                          **{("reward" if k == "reward" else f"reward/{k}"): float(v.mean())
                             for k, v in scores.items()},
                          **{f"cost/{k}": v for k, v in cost.items()}})
            print(f"step {step}: ndcg@10={summary.get('ndcg@10', float('nan')):.4f}")
    return pd.DataFrame(lines)


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", required=True, help="an alignment run: results/models/{ds}/{reward}/{method}/seed{s}")
    p.add_argument("--data", required=True, help="the prepared dataset: results/data/{ds}")
    p.add_argument("--split", default="test", choices=["valid", "test"], help="split to score (default: test)")
    p.add_argument("--config-json", default="{}", help='{"evaluate": {...}} (k, ks, batch_size; defaults otherwise)')
    p.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--out", required=True, help="the Parquet file to write")
    args = p.parse_args(argv)
    import json

    from blade.config import from_dict
    from blade.experiment import EvalConfig
    from blade.io import write_parquet

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    evaluation = from_dict(EvalConfig, json.loads(args.config_json).get("evaluate"), "evaluate")
    frame = score_snapshots(args.run, args.data, args.split, evaluation, args.device)
    write_parquet(args.out, frame)
    print(f"{len(frame)} snapshots scored on {args.split} → {args.out}")


if __name__ == "__main__":
    run_cli(main)
