"""Score a trained row in the process that made it: its lists on every evaluation split and their
metrics, in one go.

A row's evaluation is several small pieces — greedy lists on valid and test, S sampled lists on
the inference splits, the per-step snapshot curve — each a few seconds of work behind several
seconds of interpreter start (torch, transformers and MLflow imports). Run as separate jobs they
cost more in start-up than in work, so the producing job (``blade sft``/``align``, or
``blade score`` for a reference row or any saved policy) scores its own row here; ``blade bon``
evaluates its rows likewise (:func:`blade.stages.bon`). The files are
the ones the separate commands write, in the same places::

    {root}/{split}/recs.jsonl, cost.json, metrics.json, per_user.parquet   greedy, every evaluate.splits
    {root}/{split}/sample/…                                                 sampled, evaluate.inference_splits

with ``root = results/eval/{dataset}/{reward setting}/{method}/seed{seed}``; each evaluation is
its own MLflow run, as with ``blade evaluate``.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pandas as pd

from blade.errors import DataError


def score_row(root: str | Path, data: str | Path, evaluation, seed: int, dataset: str, method: str,
              reward_name: str | None, model: str | Path | None = None, reference: str | None = None,
              device: str | None = None) -> dict[str, dict]:
    """Write and evaluate a policy's (``model``) or a reference recommender's lists for every split
    of ``evaluation.splits`` (greedy) and, for a policy with ``evaluation.samples`` > 0, every split
    of ``evaluation.inference_splits`` (sampled). Returns ``{"test": summary, "test/sample": …}``."""
    from blade.recommend import recommend
    from blade.stages import evaluate

    jobs = [(split, 0) for split in evaluation.splits]
    if model is not None:
        from blade.model.policy import Policy

        model = Policy.load(model, device)  # loaded once for every split
        if evaluation.samples:
            jobs += [(split, evaluation.samples) for split in evaluation.inference_splits]
    out = {}
    for split, samples in jobs:
        where = Path(root) / split / ("sample" if samples else "")
        recommend(where / "recs.jsonl", data, split, evaluation.k, evaluation.batch_size, model, reference, device,
                  samples, seed)
        name = f"{split}/sample" if samples else split
        out[name] = evaluate(str(where / "recs.jsonl"), str(data), split, str(where), evaluation.ks, dataset, method,
                             seed, reward_name)
    return out


# ------------------------------------------------------------------------- the snapshot curve
def snapshot_dirs(run_dir: str | Path) -> list[tuple[int, Path]]:
    """(step, directory) of every saved snapshot of an alignment run, by step."""
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


def snapshot_curve(run_dir: str | Path, data_dir: str | Path, split: str, evaluation,
                   device: str | None = None) -> pd.DataFrame:
    """Test scores of an aligned run's per-step snapshots (docs/method.md §6.4: test NDCG vs step).

    The alignment loop saves the policy at every evaluation step (``snapshots/step{S:06d}/``, step
    0 = the SFT start) and selects on the valid split only. This scores each snapshot's greedy
    constrained lists on ``split`` (test) with the evaluation's own code (same metrics, same ILD
    distance, same padding rules) and, on the first ``align.k`` items, the run's own reward setting
    (``reward`` and ``reward/<component>``). One line per snapshot: ``step`` and every number
    ``metrics.json`` would hold. Nothing reads it back into training or model selection: it only
    draws the static-upper-bound figure and feeds the §6.4 claim."""
    from blade.config import from_dict
    from blade.data.canonical import load_prepared
    from blade.evaluation import evaluate, write_recs
    from blade.recommend import policy_lists
    from blade.rewards import ListReward, RewardConfig

    run_dir = Path(run_dir)
    align_cfg = run_dir / "align_config.json"
    if not align_cfg.is_file():
        raise DataError(f"{align_cfg} does not exist: {run_dir} is not a finished alignment run")
    cfg = json.loads(align_cfg.read_text())
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
            print(f"snapshot step {step}: {split} ndcg@10={summary.get('ndcg@10', float('nan')):.4f}")
    return pd.DataFrame(lines)
