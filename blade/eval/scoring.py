"""Scoring lists: a recommendations file into per-user metrics, a row on every evaluation split,
and the per-step snapshot curve of an alignment run.

:func:`evaluate` writes ``per_user.parquet`` (one row per context: ``row``, ``context_id`` and one
column per metric) and ``metrics.json`` (means and catalogue-level numbers). ``mgu_pop@K`` /
``dgu_pop@K`` (and ``…_genre@K``) in ``metrics.json`` are the IFairLRS numbers, group counts pooled
over users; the per-user variants for paired tests are the ``…_user@K`` columns (and their means).

A row's evaluation is several small pieces — greedy lists on valid and test, S sampled lists on
the inference splits, the per-step snapshot curve — each a few seconds of work behind several
seconds of interpreter start (torch, transformers and MLflow imports). Run as separate jobs they
cost more in start-up than in work, so the producing job (``blade sft``/``align``, or
``blade score`` for a reference row or any saved policy) scores its own row here
(:func:`score_row`); ``blade bon`` evaluates its rows likewise. The files are the ones
``blade recommend`` and ``blade evaluate`` write, in the same places::

    {root}/{split}/recs.jsonl, cost.json, metrics.json, per_user.parquet   greedy, every evaluate.splits
    {root}/{split}/sample/…                                                 sampled, evaluate.inference_splits

with ``root = results/eval/{dataset}/{reward setting}/{method}/seed{seed}``; each evaluation is
its own MLflow run (:func:`evaluate_tracked`).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from blade.data.prepared import PreparedData
from blade.errors import ConfigError, DataError
from blade.eval.recs import is_int, read_recs, write_recs
from blade.io import sha256_file, write_json, write_parquet


def evaluate(recs: str | Path, data: PreparedData, split: str, out_dir: str | Path, ks,
             diversity_dim: int | None = None) -> dict:
    """Score a recommendations file against ``split``: per-user metrics and their means.

    ``ild@K`` uses the ``diversity`` reward's item distance (:func:`blade.rewards.item_distance`,
    ``diversity_by: auto``): genre Jaccard where the dataset has genres, else co-occurrence
    embeddings fitted on the train split only (rank ``diversity_dim``, default the reward's).

    Every metric, ``invalid_rate`` included, is measured on the top K = max(ks) slots of each
    list: items beyond K are ignored, and a list shorter than K has its empty slots counted as
    misses and as invalid (the recommender failed to fill them), so every row has the same
    denominator whatever the other rows' lengths. ``invalid_slots`` counts those slots."""
    from blade.metrics import evaluate_lists
    from blade.rewards import item_distance

    ks = tuple(ks)
    if not ks or not all(is_int(k) and k >= 1 for k in ks):
        raise ConfigError(f"cut-offs ks must be positive integers, got {list(ks)}")
    frame = data.split(split)
    samples = read_recs(recs, len(frame), split)  # (S, rows, K)
    K = max(ks)
    samples = np.pad(samples, ((0, 0), (0, 0), (0, max(0, K - samples.shape[2]))), constant_values=-1)[:, :, :K]
    catalogue = data.catalogue(split)
    distance = item_distance(catalogue, data.train, "auto", diversity_dim)
    targets = frame["target"].to_numpy()
    # sampled decoding: every metric is the mean over the S lists of a row (pooled numbers: over S)
    parts = [evaluate_lists(lists, targets, catalogue, ks, distance) for lists in samples]
    per_user = sum(p for p, _ in parts) / len(parts) if len(parts) > 1 else parts[0][0]
    summary = {key: float(np.mean([s[key] for _, s in parts])) for key in parts[0][1]}
    per_user.insert(0, "context_id", frame["context_id"].to_numpy())
    per_user.insert(0, "row", np.arange(len(frame)))
    out = Path(out_dir)
    write_parquet(out / "per_user.parquet", per_user)
    # A number with nothing to measure (NaN) is left out: strict JSON readers reject NaN.
    summary = {"split": split, "n_rows": len(frame), "samples_per_row": len(samples),
               **{k: v for k, v in summary.items() if not (isinstance(v, float) and not np.isfinite(v))}}
    write_json(out / "metrics.json", summary)
    return summary


def invalid_slots(summary: dict) -> int:
    """How many list slots a summary's ``invalid_rate`` stands for (rows × samples × K slots),
    so that one bad id in a large file is seen as 1, not as a rate that rounds to 0."""
    K = max(int(k.split("@")[1]) for k in summary if k.startswith("ndcg@"))
    slots = summary["n_rows"] * summary.get("samples_per_row", 1) * K
    return int(round(summary.get("invalid_rate", 0.0) * slots))


def evaluate_tracked(recs: str | Path, data: PreparedData, split: str, out: str | Path, ks, dataset: str,
                     method: str, seed: int, reward_name: str | None, extra: dict | None = None) -> dict:
    """:func:`evaluate` as its own MLflow run (``evaluate_{split}``), with the lists' cost (a
    ``cost.json`` beside ``recs``, written for policy rows) and ``extra`` (an aligned row's
    ``selection/*``: the step its policy was selected at) among its numbers."""
    from blade.tracking import run_stage

    resolved = {"recs": str(recs), "data": str(data.directory), "split": split, "ks": list(ks),
                "reward_setting": reward_name}
    cost_file = Path(recs).with_name("cost.json")

    def work(tracker) -> dict:
        summary = evaluate(recs, data, split, out, ks)
        if cost_file.is_file():  # what the lists cost at inference (policy rows only)
            summary.update({f"cost/{k}": v for k, v in json.loads(cost_file.read_text()).items()})
        summary.update(extra or {})
        return summary

    return run_stage(f"evaluate_{split}", dataset, method, seed, resolved, summary_path=f"{out}/metrics.json",
                     run_dir=out, reward=reward_name, work=work, artifacts=(out,))


def score_row(root: str | Path, data: PreparedData, evaluation, seed: int, dataset: str, method: str,
              reward_name: str | None, policy=None, reference: str | None = None,
              extra: dict | None = None) -> dict[str, dict]:
    """Write and evaluate a policy's (a loaded ``policy``) or a reference recommender's lists for
    every split of ``evaluation.splits`` (greedy) and, for a policy with ``evaluation.samples`` > 0,
    every split of ``evaluation.inference_splits`` (sampled). Returns ``{"test": summary,
    "test/sample": …}``. ``extra`` goes into every metrics.json written (:func:`evaluate_tracked`)."""
    from blade.eval.lists import recommend

    jobs = [(split, 0) for split in evaluation.splits]
    if policy is not None and evaluation.samples:
        jobs += [(split, evaluation.samples) for split in evaluation.inference_splits]
    out = {}
    for split, samples in jobs:
        where = Path(root) / split / ("sample" if samples else "")
        recommend(where / "recs.jsonl", data, split, evaluation.k, evaluation.batch_size, policy, reference, samples,
                  seed)
        name = f"{split}/sample" if samples else split
        out[name] = evaluate_tracked(where / "recs.jsonl", data, split, where, evaluation.ks, dataset, method, seed,
                                     reward_name, extra)
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


def policy_fingerprint(directory: str | Path) -> str:
    """The sha256 of each file a saved policy decodes with: its weights (``*.safetensors``), codec
    and resolved config. Two folders with the same fingerprint give the same greedy lists (decoding is
    deterministic, README "Reproducibility"), so one's scored lists stand for the other's."""
    directory = Path(directory)
    files = sorted(directory.glob("*.safetensors")) + [directory / "codec.json", directory / "policy.json"]
    return ",".join(f"{path.name}:{sha256_file(path)}" for path in files if path.is_file())


def _scored_lists(known: dict[str, Path], snap: Path, n_rows: int, split: str) -> tuple[np.ndarray, dict] | None:
    """The greedy lists (rows, K) and cost already written for a policy with ``snap``'s
    fingerprint (``known``: fingerprint → the ``{split}/`` folder :func:`score_row` wrote), if any."""
    where = known.get(policy_fingerprint(snap))
    if where is None or not (where / "recs.jsonl").is_file() or not (where / "cost.json").is_file():
        return None
    return read_recs(where / "recs.jsonl", n_rows, split)[0], json.loads((where / "cost.json").read_text())


def snapshot_curve(run_dir: str | Path, data: PreparedData, split: str, evaluation,
                   device: str | None = None, scored: dict[str | Path, str | Path] | None = None) -> pd.DataFrame:
    """Test scores of an aligned run's per-step snapshots (docs/method.md §6.4: test NDCG vs step).

    The alignment loop saves the policy at every evaluation step (``snapshots/step{S:06d}/``, step
    0 = the SFT start) and selects on the valid split only. This scores each snapshot's greedy
    constrained lists on ``split`` (test) with the evaluation's own code (same metrics, same ILD
    distance, same padding rules) and, on the first ``align.k`` items, the run's own reward setting
    (``reward`` and ``reward/<component>``). One line per snapshot: ``step`` and every number
    ``metrics.json`` would hold. Nothing reads it back into training or model selection: it only
    draws the static-upper-bound figure and feeds the §6.4 claim.

    ``scored`` maps a saved policy folder to the evaluation root :func:`score_row` scored it under:
    a snapshot with the same :func:`policy_fingerprint` takes that root's ``{split}/`` lists and
    their cost instead of being decoded again, which gives the same numbers."""
    from blade.config import from_dict
    from blade.eval.lists import policy_lists
    from blade.model.policy import Policy
    from blade.rewards import ListReward, RewardConfig

    run_dir = Path(run_dir)
    align_cfg = run_dir / "align_config.json"
    if not align_cfg.is_file():
        raise DataError(f"{align_cfg} does not exist: {run_dir} is not a finished alignment run")
    cfg = json.loads(align_cfg.read_text())
    frame = data.split(split)
    histories, targets = frame["history"].tolist(), frame["target"].to_numpy()
    reward = ListReward(from_dict(RewardConfig, cfg.get("reward", {}), "reward"), data.items, data.train, data.stats)
    k_align = int(cfg.get("align", {}).get("k", evaluation.k))
    # a snapshot whose policy was already scored on this split (the selected one: ``best/`` is saved
    # from the same weights) is read back, not decoded again: on an LLM a test pass is minutes
    known = {policy_fingerprint(policy_dir): Path(root) / split for policy_dir, root in (scored or {}).items()
             if Path(policy_dir).is_dir()}
    lines = []
    with tempfile.TemporaryDirectory(prefix="snapshot_eval_") as tmp:
        for step, snap in snapshot_dirs(run_dir):
            reused = _scored_lists(known, snap, len(frame), split)
            if reused is None:
                policy = Policy.load(snap, device)
                lists, cost = policy_lists(policy, data, split, evaluation.k, evaluation.batch_size)  # (rows, k)
            else:
                lists, cost = reused
            write_recs(Path(tmp) / "recs.jsonl", lists)
            summary = evaluate(Path(tmp) / "recs.jsonl", data, split, tmp, evaluation.ks)
            scores = reward(histories, targets, lists[:, :k_align])
            lines.append({"step": step, **{k: v for k, v in summary.items() if k != "split"},
                          **{("reward" if k == "reward" else f"reward/{k}"): float(v.mean())
                             for k, v in scores.items()},
                          **{f"cost/{k}": v for k, v in cost.items()}})
            print(f"snapshot step {step}: {split} ndcg@10={summary.get('ndcg@10', float('nan')):.4f}"
                  + (" (its lists read back: the same policy was already scored)" if reused else ""))
    return pd.DataFrame(lines)
