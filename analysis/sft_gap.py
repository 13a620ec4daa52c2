"""Where the SFT policy stands against the classic rows, row by row: a diagnostic for a dataset on
which SFT trails item co-occurrence (docs/results/README.md, "The SFT start").

    python -m analysis.sft_gap --results results --dataset video_games --split test [--fit]

Reads the per-row metrics the run wrote (results/eval/{dataset}/none/{row}/seed*/{split}/per_user.parquet)
and splits the rows of the split by two properties computed from the train split alone:

- whether the context's last item is followed by the target somewhere in train (as consecutive
  items of a history, or a history's last item and its target): a transition a first-order
  co-occurrence model has counted;
- how often the target occurs in train (cold, 1–4, 5–19, ≥ 20).

``--fit`` also decodes the selected SFT policy (its first seed) on 1,000 train rows and on the valid
selection slice: how well it fits what it was trained on, against held-out rows.
Prints one Markdown table per property: share of rows and mean NDCG@10 of each row type.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from blade.data import load_prepared

ROWS = ("sft", "cooc", "sasrec", "mostpop")
BUCKETS = ((0, 0, "cold (0)"), (1, 4, "1-4"), (5, 19, "5-19"), (20, None, ">= 20"))


def train_transitions(train: pd.DataFrame) -> set[tuple[int, int]]:
    """Every (a, b) with b right after a in a train history, or a = a history's last item and b its target."""
    pairs = set()
    for history, target in zip(train["history"], train["target"]):
        seq = [*map(int, history), int(target)]
        pairs.update(zip(seq[:-1], seq[1:]))
    return pairs


def row_properties(train: pd.DataFrame, frame: pd.DataFrame) -> pd.DataFrame:
    seen = train_transitions(train)
    counts = train["target"].value_counts()
    last = [int(h[-1]) for h in frame["history"]]
    target = frame["target"].astype(int).to_numpy()
    freq = counts.reindex(target, fill_value=0).to_numpy()
    bucket = np.select([(freq >= lo) & (freq <= (hi if hi is not None else np.inf)) for lo, hi, _ in BUCKETS],
                       [name for *_, name in BUCKETS], default="?")
    return pd.DataFrame({"row": np.arange(len(frame)), "transition_in_train": [(a, b) in seen for a, b in zip(last, target)],
                         "target_train_count": bucket})


def per_row_ndcg(results: Path, dataset: str, split: str, k: int = 10) -> dict[str, pd.Series]:
    """Mean over seeds of each row type's per-row NDCG@k (rows found on disk only)."""
    out = {}
    for name in ROWS:
        files = sorted((results / "eval" / dataset / "none" / name).glob(f"seed*/{split}/per_user.parquet"))
        if files:
            frames = [pd.read_parquet(f, columns=["row", f"ndcg@{k}"]).set_index("row")[f"ndcg@{k}"] for f in files]
            out[f"{name} ({len(files)} seed{'s' if len(files) > 1 else ''})"] = pd.concat(frames, axis=1).mean(axis=1)
    return out


def gap_tables(results: Path, dataset: str, split: str) -> str:
    _, splits, _ = load_prepared(results / "data" / dataset)
    props = row_properties(splits["train"], splits[split]).set_index("row")
    scores = per_row_ndcg(results, dataset, split)
    if not scores:
        raise SystemExit(f"sft_gap: no per_user.parquet under {results}/eval/{dataset}/none/*/seed*/{split}/")
    table = props.join(pd.DataFrame(scores))
    text = [f"# SFT against the classic rows on {dataset} {split} ({len(table)} rows), NDCG@10 by row group", ""]
    for prop in ("transition_in_train", "target_train_count"):
        groups = table.groupby(prop, sort=True)
        head = "| " + prop + " | share of rows | " + " | ".join(scores) + " |"
        text += [head, "|" + " --- |" * (2 + len(scores))]
        for value, part in groups:
            cells = " | ".join(f"{part[c].mean():.4f}" for c in scores)
            text.append(f"| {value} | {len(part) / len(table):.1%} | {cells} |")
        cells = " | ".join(f"{table[c].mean():.4f}" for c in scores)
        text += [f"| all | 100% | {cells} |", ""]
    return "\n".join(text)


def fit_table(results: Path, dataset: str, rows: int = 1000) -> str:
    from blade.eval.config import EvalConfig
    from blade.model.policy import Policy
    from blade.seeding import pin_cpu_threads
    from blade.eval.selection import selection_slice, valid_metrics

    pin_cpu_threads()
    _, splits, _ = load_prepared(results / "data" / dataset)
    found = sorted((results / "models" / dataset / "sft").glob("seed*/best"))
    if not found:
        raise SystemExit(f"sft_gap --fit: no SFT policy under {results}/models/{dataset}/sft/seed*/best")
    policy = Policy.load(found[0], "cpu")
    train = splits["train"].sample(n=min(rows, len(splits["train"])), random_state=0)
    valid = selection_slice(splits["valid"], EvalConfig().selection_rows)
    fit = {name: valid_metrics(policy, frame, 10, [10], 256)["ndcg@10"] for name, frame in
           (("train (1,000 rows it was trained on)", train), ("valid selection slice", valid))}
    return "\n".join([f"| SFT {found[0].parent.name} | NDCG@10 |", "| --- | --- |", *(f"| {k} | {v:.4f} |" for k, v in fit.items())])


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--results", default="results")
    p.add_argument("--dataset", required=True)
    p.add_argument("--split", default="test", choices=["valid", "test"])
    p.add_argument("--fit", action="store_true", help="also decode the first SFT seed on train and valid rows")
    args = p.parse_args(argv)
    print(gap_tables(Path(args.results), args.dataset, args.split))
    if args.fit:
        print(fit_table(Path(args.results), args.dataset))


if __name__ == "__main__":
    main()
