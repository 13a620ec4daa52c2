"""Ablations and sensitivity (docs/method.md §6.6) → ``results/tables/ablation.{csv,md}``.

Rows: every aligned entry with ``objective: blade`` (the default ``blade`` and its variants), per
dataset × reward setting. Each variant's options are read from what its run actually used — the
``method`` and ``align`` entries of ``results/models/…/align_config.json`` (the config's entry
where no run exists yet) — and compared with the ``blade`` entry's: the options that differ name
its group (``estimator``, ``κ0``, ``γ``, ``N``, ``G`` = align.group_size, or several joined by
``+``) and its setting (``estimator=nig``). Columns: NDCG@10 and Recall@10 (greedy test,
mean ± std over seeds), the setting's targeted list metric, ΔNDCG@10 vs ``blade`` with the
Holm-adjusted paired t-test p from ``significance.csv``, and the alignment signal that stays at
the end of training (mean weight spread over the last 10% of steps, from ``diagnostics.parquet``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

from analysis.common import (BLADE, all_tables, collect_metrics, expected_rows, fmt, list_k, load_experiment,
                             markdown, mean_std, missing_note, model_dir, parser, pretty, read_diagnostics, read_json,
                             run_cli, write_csv, write_markdown)
from analysis.listwise import targets

# option → how the table names it; the order is the order of the groups in the table
NAMES = {"estimator": "estimator", "kappa0": "κ0", "gamma": "γ", "n": "N", "group_size": "G", "loss": "loss",
         "beta_kl": "β_kl", "beta_j": "β_j", "var_floor": "var_floor"}
TAIL = 0.1  # the last 10% of steps: "the signal left at the end"


def run_options(results, row, exp) -> tuple[dict, str]:
    """(options, where they came from): the method entry plus G from the first run's align_config.json,
    else the config's entry and align section."""
    for seed in row.seeds:
        path = model_dir(results, row, seed) / "align_config.json"
        if path.is_file():
            cfg = read_json(path)
            if "method" not in cfg:
                from blade.errors import DataError

                raise DataError(f"{path} has no 'method' entry; rerun `blade align`")
            return {**cfg["method"], "group_size": cfg.get("align", {}).get("group_size")}, str(path)
    return {**exp.methods[row.method], "group_size": exp.align.group_size}, "config"


def differences(options: dict, default: dict) -> dict:
    """Options whose value differs from the default entry's (objective/module excluded)."""
    keys = [k for k in {*options, *default} if k not in ("objective", "module")]
    return {k: options.get(k) for k in keys if not _same(options.get(k), default.get(k))}


def _same(a, b) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a == b or (math.isnan(a) and math.isnan(b))
    return a == b


def _order(key: str) -> int:
    return list(NAMES).index(key) if key in NAMES else len(NAMES)


def tail_spread(diag: pd.DataFrame) -> float:
    """Mean weight spread over each seed's last 10% of steps, averaged over seeds."""
    if "weight_spread" not in diag or not len(diag):
        return math.nan
    values = []
    for _, one in diag.sort_values("step").groupby("seed"):
        n = max(1, math.ceil(TAIL * len(one)))
        values.append(one["weight_spread"].tail(n).mean())
    return float(np.nanmean(values))


def ablation(results, exp, sig: pd.DataFrame | None, split: str = "test") -> tuple[pd.DataFrame, list[str]]:
    k = list_k(exp)
    accuracy, recall = f"ndcg@{k}", f"recall@{k}"
    lines, missing = [], []
    for dataset, setting in all_tables(exp):
        rows = [r for r in expected_rows(exp, dataset, setting, split, bon_ns=[]) if r.role in ("blade", "variant")]
        if not any(r.method == BLADE for r in rows):
            continue
        per_seed = collect_metrics(results, rows, split, missing=missing)
        options = {r.method: run_options(results, r, exp) for r in rows}
        default = options[BLADE][0]
        target = targets(exp, setting, k)[0]
        base = None
        for row in sorted(rows, key=lambda r: (r.method != BLADE, min((_order(d) for d in differences(
                options[r.method][0], default)), default=-1), r.method)):
            diff = differences(options[row.method][0], default)
            mine = per_seed[per_seed["method"] == row.method] if len(per_seed) else per_seed
            ndcg, ndcg_std = mean_std(mine[accuracy].tolist() if accuracy in mine else [])
            base = ndcg if row.method == BLADE else base
            line = {"dataset": dataset, "reward_setting": setting, "method": row.method,
                    "group": "+".join(NAMES.get(d, d) for d in sorted(diff, key=_order)) or "default",
                    "setting": ", ".join(f"{NAMES.get(d, d)}={diff[d]}" for d in sorted(diff, key=_order)) or "—",
                    "options_from": options[row.method][1], "n_seeds": len(mine), accuracy: ndcg,
                    f"{accuracy}_std": ndcg_std}
            for metric in (recall, target):
                line[metric], line[f"{metric}_std"] = mean_std(mine[metric].tolist() if metric in mine else [])
            line["delta_vs_blade"] = ndcg - base if base is not None else math.nan
            line["p_holm_vs_blade"] = _p(sig, dataset, setting, row.method, accuracy)
            line["weight_spread_end"] = tail_spread(read_diagnostics(results, row, missing))
            line["target_metric"] = target
            lines.append(line)
    empty = ["dataset", "reward_setting", "method", "group", "setting", "target_metric"]
    return pd.DataFrame(lines, columns=None if lines else empty), sorted(set(missing))


def _p(sig, dataset, setting, method, metric) -> float:
    if sig is None or method == BLADE or not len(sig):
        return math.nan
    hit = sig[(sig["dataset"] == dataset) & (sig["reward_setting"] == setting) & (sig["baseline"] == method)
              & (sig["metric"] == metric)]
    return float(hit["p_ttest_holm"].iloc[0]) if len(hit) else math.nan


def to_markdown(frame: pd.DataFrame, missing: list[str], k: int) -> str:
    out = ["# Ablations and sensitivity (BLADE variants, test split, greedy lists)\n"]
    if not len(frame):
        out.append("No BLADE entry or variant is in run.methods or run.sweep: nothing to ablate.\n")
    acc, rec = f"ndcg@{k}", f"recall@{k}"
    for (dataset, setting), block in frame.groupby(["dataset", "reward_setting"], sort=False):
        target = block["target_metric"].iloc[0]
        header = ["group", "method", "setting", "n", pretty(acc), pretty(rec)]
        header += [pretty(target)] if target not in (acc, rec) else []
        header += ["Δ NDCG vs blade", "Holm p", "spread (end)"]
        body = []
        for line in block.to_dict("records"):
            cells = [line["group"], line["method"], line["setting"], str(line["n_seeds"]),
                     fmt(line[acc], line[f"{acc}_std"]), fmt(line[rec], line[f"{rec}_std"])]
            cells += [fmt(line[target], line[f"{target}_std"])] if target not in (acc, rec) else []
            cells += [fmt(line["delta_vs_blade"]), fmt(line["p_holm_vs_blade"], digits=3),
                      fmt(line["weight_spread_end"], digits=3)]
            body.append(cells)
        out += [f"## {dataset} · reward setting `{setting}`\n", markdown(header, body)]
    out += ["- Holm p: BLADE vs the variant on NDCG@10, paired t-test, Holm across the comparison's metrics "
            "(significance.csv). spread (end): mean weight spread over the last 10% of steps.",
            f"- {missing_note(missing)}", ""]
    return "\n".join(out)


def main(argv: Sequence[str] | None = None) -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--significance", default="results/tables/significance.csv", help="significance.csv to read")
    p.add_argument("--out", default="results/tables/ablation", help="output stem: writes STEM.csv and STEM.md")
    args = p.parse_args(argv)
    exp = load_experiment(args)
    from pathlib import Path

    sig = pd.read_csv(args.significance) if Path(args.significance).is_file() else None
    frame, missing = ablation(args.results, exp, sig, args.split)
    write_csv(f"{args.out}.csv", frame)
    write_markdown(f"{args.out}.md", to_markdown(frame, missing, list_k(exp)))
    print(f"ablation: {len(frame)} rows. {missing_note(missing)}")


if __name__ == "__main__":
    run_cli(main)
