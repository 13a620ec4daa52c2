"""Benchmark of one alignment step (``blade.align.loop.alignment_step``) on the tiny model.

Prints the median time of each part of a step — rollout (constrained sampling of B·G lists),
scoring (the list reward), forward (constrained policy log-probs with grad + reference log-probs:
two forwards, each with the sampler's mask replayed), objective (the estimator and loss), backward
(the alignment term's, then the KL penalty's on the retained graph: two passes, so that the
alignment term's own gradient norm is logged), optimizer — plus steps/second and peak memory.
``--beta-kl 0`` has no penalty and so one backward pass: the difference is the cost of
``grad_norm_align``. The model is
built from config (no SFT needed for timing: it starts untrained), the prior comes from random
reference rewards, and the dataset is the embedded synthetic one.

    python benchmarks/bench_align_step.py                        # default config's tiny model, CPU
    python benchmarks/bench_align_step.py --estimator static     # compare estimators in one go:
    python benchmarks/bench_align_step.py --estimator dp,nig,static
    python benchmarks/bench_align_step.py --device cuda --dtype bfloat16 --hidden 1024 --layers 8 --heads 16 --kv-heads 4
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from blade.align.estimators import RefPrior  # noqa: E402
from blade.align.loop import AlignConfig, alignment_step  # noqa: E402
from blade.align.registry import build_objective  # noqa: E402
from blade.data import prepare  # noqa: E402
from blade.data.canonical import load_prepared  # noqa: E402
from blade.model.policy import Policy, PolicyConfig  # noqa: E402
from blade.rewards import ListReward, RewardConfig  # noqa: E402
from blade.seeding import seed_everything  # noqa: E402

PARTS = ("rollout", "score", "forward", "objective", "backward", "optimizer")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--estimator", default="dp", help="comma-separated: dp,nig,static")
    ap.add_argument("--steps", type=int, default=8, help="timed steps per estimator (after 2 warm-up steps)")
    ap.add_argument("--contexts", type=int, default=32, help="B")
    ap.add_argument("--group", type=int, default=8, help="G")
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--n-users", type=int, default=1500)
    ap.add_argument("--n-items", type=int, default=300)
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--kv-heads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--reward", default="ndcg", help="comma-separated reward names, weight 1 each")
    ap.add_argument("--beta-kl", type=float, default=None, help="BLADE's β_kl (default: its config default)")
    args = ap.parse_args()

    seed_everything(0)
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        prepare({"source": "synthetic", "params": {"n_users": args.n_users, "n_items": args.n_items, "seed": 0}}, data)
        items, splits, stats = load_prepared(data)
    train = splits["train"]
    policy_cfg = PolicyConfig(hidden=args.hidden, layers=args.layers, heads=args.heads, kv_heads=args.kv_heads,
                              intermediate=4 * args.hidden, dtype=args.dtype, device=args.device)
    policy = Policy.build(policy_cfg, items)
    ref = Policy.build(policy_cfg, items)
    ref.model.load_state_dict(policy.model.state_dict())
    ref.model.requires_grad_(False)
    reward = ListReward(RewardConfig(weights={n: 1.0 for n in args.reward.split(",")}), items, train, stats)
    rng = np.random.default_rng(0)
    m, n_ctx = 16, min(len(train), 4096)
    prior = RefPrior.from_frame(pd.DataFrame({"row": np.repeat(np.arange(n_ctx), m), "sample": np.tile(np.arange(m), n_ctx),
                                              "reward": rng.random(n_ctx * m)}), len(train))
    cfg = AlignConfig(contexts_per_step=args.contexts, group_size=args.group, k=args.k, batch_size=args.contexts * args.group)
    histories, targets = train["history"].tolist(), train["target"].to_numpy()
    n_params = sum(p.numel() for p in policy.model.parameters())
    print(f"device {args.device} {args.dtype}; model {n_params / 1e6:.2f}M parameters; catalogue {len(items)} items; "
          f"B={args.contexts} G={args.group} K={args.k}; torch threads {torch.get_num_threads()}")
    print(f"{'estimator':<10}" + "".join(f"{p:>11}" for p in PARTS) + f"{'total':>11}{'steps/s':>9}{'lists/s':>9}")
    for name in args.estimator.split(","):
        options = {"estimator": name} | ({} if args.beta_kl is None else {"beta_kl": args.beta_kl})
        objective = build_objective("blade", options, prior)
        params = [p for p in policy.model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=1e-4)
        rows_log = []
        for step in range(args.steps + 2):
            rows = rng.choice(n_ctx, size=args.contexts, replace=False)
            gen = torch.Generator(device=policy.device).manual_seed(step)
            t = time.perf_counter()
            row = alignment_step(policy, ref, objective, reward, opt, params, cfg, rows, histories, targets, step, gen)
            row["total"] = time.perf_counter() - t
            if step >= 2:
                rows_log.append(row)
        med = {p: statistics.median(r[f"seconds/{p}"] for r in rows_log) for p in PARTS}
        total = statistics.median(r["total"] for r in rows_log)
        print(f"{name:<10}" + "".join(f"{1000 * med[p]:>9.1f}ms" for p in PARTS) + f"{1000 * total:>9.1f}ms"
              f"{1 / total:>9.2f}{args.contexts * args.group / total:>9.0f}")
        shares = ", ".join(f"{p} {100 * med[p] / sum(med.values()):.0f}%" for p in PARTS)
        print(f"{'':<10}split: {shares}")
    if torch.cuda.is_available() and args.device.startswith("cuda"):
        print(f"peak GPU memory {torch.cuda.max_memory_allocated() / 2**20:.0f} MiB")
    print(f"peak resident memory {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")


if __name__ == "__main__":
    main()
