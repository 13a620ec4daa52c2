"""Test scores of an aligned run's per-step snapshots → ``results/curves/{ds}/{reward}/{method}/seed{s}.parquet``
(docs/method.md §6.4: test NDCG vs step). The DAG's ``align`` job writes this file itself
(``blade align --curve``); this command scores a run again, e.g. one trained outside the DAG.

What it computes: :func:`blade.eval.scoring.snapshot_curve`.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from analysis.common import run_cli
from blade.eval.scoring import snapshot_curve, snapshot_dirs  # noqa: F401 — snapshot_dirs re-exported


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
    from blade.data import PreparedData
    from blade.eval.config import EvalConfig
    from blade.io import write_parquet

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    evaluation = from_dict(EvalConfig, json.loads(args.config_json).get("evaluate"), "evaluate")
    frame = snapshot_curve(args.run, PreparedData.load(args.data), args.split, evaluation, args.device)
    write_parquet(args.out, frame)
    print(f"{len(frame)} snapshots scored on {args.split} → {args.out}")


if __name__ == "__main__":
    run_cli(main)
