"""The main table (docs/method.md §6.1) → ``results/tables/main.{csv,md,tex}``.

One table per dataset × reward setting (the CSV has a ``dataset`` and a ``reward_setting`` column;
the Markdown and LaTeX files one block per table): every expected row — SFT, the references, every
aligned method, BoN@N and Oracle BoN@N at BLADE's N — × Recall/NDCG at each cut-off and, at the list
cut-off (10), the pooled IFairLRS MGU/DGU (popularity, and genre where the dataset has genres),
coverage, ILD and tail share, on greedy test lists. Cells: mean ± sample std (ddof 1) over seeds of
each seed's ``metrics.json`` value (reference rows: seed 0 only).
- **bold**: the best value of the column, direction-aware (↓ = lower is better), Oracle BoN excluded
  (it reads the test target); ties are all bold;
- ``†`` on BLADE's cell: BLADE differs from the best *equal-cost* baseline of that column (SFT,
  references, aligned baselines: one list per user, no ground truth; an external row only when its
  cost.json says one sample per user, ``analysis.rows.equal_cost``) with Holm-adjusted paired
  t-test p < 0.05, read from ``significance.csv`` (pooled MGU/DGU by their per-user variants;
  coverage has no per-user value and no marker).
- ``selected step``: the alignment step the row's policy was selected at on valid, mean over seeds,
  how many seeds kept the SFT start (step 0) — alignment whose every seed shows "0" was discarded
  by selection, and the row *is* SFT — and the selection's MDE on its valid rows. Blank for rows no
  alignment selects.
External rows (``evaluate.external``) are labelled "(external)", and "(external, cost unknown)"
where they came without a cost.json. Expected rows come from the config; runs not found are listed
under each table ("Missing"), and a row with no run at all is kept with empty cells.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from analysis.common import (read_significance, BLADE, EXTERNAL, all_tables, blade_n, collect_metrics,
                             equal_cost_methods, expected_rows, fmt, higher_is_better, list_k, load_experiment,
                             markdown, mean_std, missing_note, order_rows, parser, per_user_name, pretty, run_cli,
                             tex_escape, write_csv, write_markdown, write_text)

MARK = "†"
SELECTED = "selection/step"  # metrics.json of an aligned row: the valid-selected step (blade/align/loop.py)
SELECTION_MDE = "selection/mde"  # ... and the selection's resolution on its valid rows


def selected_cell(line: pd.Series) -> str:
    """``mean step (k/n at 0; MDE m)``, or ``—`` for a row no alignment selects."""
    if not np.isfinite(line.get("selected_step", np.nan)):
        return "—"
    mde = line.get("selection_mde", np.nan)
    power = f"; MDE {mde:.4f}" if np.isfinite(mde) else ""
    return f"{line['selected_step']:.0f} ({int(line['seeds_at_start'])}/{int(line['n_seeds'])} at 0{power})"


def table_metrics(exp, available: Sequence[str]) -> list[str]:
    k = list_k(exp)
    names = [f"{m}@{c}" for m in ("recall", "ndcg") for c in exp.evaluate.ks]
    names += [f"{m}_{by}@{k}" for by in ("pop", "genre") for m in ("mgu", "dgu")]
    names += [f"coverage@{k}", f"ild@{k}", f"tail_share@{k}"]
    return [n for n in names if n in available]


def summarise(per_seed: pd.DataFrame, rows, metrics: Sequence[str]) -> pd.DataFrame:
    """One line per expected row: n_seeds and mean/std of each metric over its seeds."""
    lines = []
    for row in rows:
        mine = per_seed[per_seed["method"] == row.method] if len(per_seed) else per_seed
        line = {"dataset": row.dataset, "reward_setting": row.setting, "method": row.method, "role": row.role,
                "n_seeds": len(mine), "seeds_missing": " ".join(str(s) for s in row.seeds
                                                                 if s not in set(mine.get("seed", [])))}
        for m in metrics:
            line[m], line[f"{m}_std"] = mean_std(mine[m].tolist() if m in mine else [])
        steps = mine[SELECTED].dropna().to_numpy(float) if SELECTED in mine else np.array([])
        line["selected_step"] = float(steps.mean()) if len(steps) else np.nan
        line["seeds_at_start"] = int((steps == 0).sum()) if len(steps) else np.nan
        mde = mine[SELECTION_MDE].dropna().to_numpy(float) if SELECTION_MDE in mine else np.array([])
        line["selection_mde"] = float(mde.mean()) if len(mde) else np.nan
        lines.append(line)
    return pd.DataFrame(lines)


def best_rows(table: pd.DataFrame, metric: str, methods: Sequence[str] | None = None) -> list[str]:
    """Methods holding the column's best mean (direction-aware), among ``methods`` (default: all but oracle)."""
    pool = table[table["method"].isin(methods)] if methods is not None else table[table["role"] != "oracle"]
    values = pool[metric].to_numpy(float)
    if not np.isfinite(values).any():
        return []
    best = np.nanmax(values) if higher_is_better(metric) else np.nanmin(values)
    return pool["method"][np.isclose(values, best, rtol=0, atol=1e-12)].tolist()


def significant_vs_best(table: pd.DataFrame, sig: pd.DataFrame, metric: str,
                        pool: Sequence[str]) -> tuple[str | None, bool]:
    """(best equal-cost baseline of the column — among the methods ``pool`` — and whether BLADE's
    difference from it is significant)."""
    best = best_rows(table, metric, pool)
    tested = per_user_name(metric)
    if not best or tested is None or sig is None or not len(sig):
        return (best[0] if best else None), False
    row = table.iloc[0]
    hit = sig[(sig["dataset"] == row["dataset"]) & (sig["reward_setting"] == row["reward_setting"])
              & (sig["baseline"] == best[0]) & (sig["metric"] == tested)]
    return best[0], bool(len(hit) and bool(hit["significant"].iloc[0]))


def build(results, exp, sig: pd.DataFrame | None, split: str = "test") -> tuple[list[dict], list[str]]:
    """Per table: its frame (one line per row, with ``bold`` and ``marked`` metric lists), the
    metrics shown, the best baseline per metric, and its missing runs."""
    tables, all_missing = [], []
    for dataset, setting in all_tables(exp):
        rows = expected_rows(exp, dataset, setting, split, bon_ns=[blade_n(exp)])
        missing: list[str] = []
        per_seed = collect_metrics(results, rows, split, missing=missing)
        metrics = table_metrics(exp, per_seed.columns)
        table = order_rows(summarise(per_seed, rows, metrics)).reset_index(drop=True)
        bold = {m: best_rows(table, m) for m in metrics}
        pool = equal_cost_methods(rows, per_seed)
        marked, versus = [], {}
        for m in metrics:
            versus[m], significant = significant_vs_best(table, sig, m, pool)
            if significant:
                marked.append(m)
        table["bold"] = [";".join(m for m in metrics if method in bold[m]) for method in table["method"]]
        table["marked"] = [";".join(marked) if method == BLADE else "" for method in table["method"]]
        tables.append({"dataset": dataset, "setting": setting, "frame": table, "metrics": metrics,
                       "versus": versus, "missing": missing, "uncosted": _uncosted(per_seed),
                       "not_equal_cost": [r.method for r in rows if r.role == EXTERNAL and r.method not in pool]})
        all_missing += missing
    return tables, sorted(set(all_missing))


def _uncosted(per_seed: pd.DataFrame) -> set[str]:
    """The methods found with a seed that has no cost (no cost/samples_per_user: no cost.json)."""
    if not len(per_seed):
        return set()
    if "cost/samples_per_user" not in per_seed:
        return set(per_seed["method"])
    return set(per_seed.loc[per_seed["cost/samples_per_user"].isna(), "method"])


def _label(method: str, role: str, uncosted: set[str] = frozenset()) -> str:
    if role == "oracle":
        return f"{method} (oracle: reads the target)"
    if role == "bon":
        return f"{method} ({method.split('_n')[-1]} lists/user)"
    if role == EXTERNAL:
        return f"{method} (external, cost unknown)" if method in uncosted else f"{method} (external)"
    return method


def _cells(line: pd.Series, metrics: Sequence[str], bold_fmt, mark: str) -> list[str]:
    cells = []
    for m in metrics:
        text = fmt(line[m], line[f"{m}_std"])
        if text != "—" and m in line["bold"].split(";"):
            text = bold_fmt(text)
        if m in line["marked"].split(";"):
            text += mark
        cells.append(text)
    return cells


def _notes(t: dict) -> list[str]:
    versus = ", ".join(f"{pretty(m)} {b}" for m, b in t["versus"].items() if b and per_user_name(m))
    return ["Mean ± std over seeds (n = seeds found); bold = best of the column, oracle excluded; "
            "↓ = lower is better. Selected step: the valid-selected alignment step, mean over seeds (seeds that "
            "kept the SFT start, step 0; the selection's MDE: the smallest valid difference from the start its rows "
            "detect with 80% power, in the selection metric's units).",
            f"{MARK} = BLADE differs from the best equal-cost baseline of the column with Holm-adjusted paired t-test "
            f"p < 0.05 (significance.csv). Best equal-cost baseline per column: {versus or 'none'}.",
            *([f"External rows shown but not equal-cost baselines (their cost.json does not say one sample per "
               f"user, or there is none): {', '.join(t['not_equal_cost'])}."] if t["not_equal_cost"] else []),
            missing_note(t["missing"])]


def to_markdown(tables: list[dict], split: str) -> str:
    out = [f"# Main table ({split} split, greedy lists)\n"]
    for t in tables:
        header = ["method", "n", *(pretty(m) for m in t["metrics"]), "selected step"]
        body = [[_label(line["method"], line["role"], t["uncosted"]), str(line["n_seeds"]),
                 *_cells(line, t["metrics"], lambda s: f"**{s}**", MARK), selected_cell(line)]
                for _, line in t["frame"].iterrows()]
        out += [f"## {t['dataset']} · reward setting `{t['setting']}`\n", markdown(header, body)]
        out += [f"- {note}" for note in _notes(t)] + [""]
    return "\n".join(out)


def to_latex(tables: list[dict], split: str) -> str:
    out = ["% Main table: needs \\usepackage{booktabs}. Generated by analysis/main_table.py; do not edit."]
    for t in tables:
        cols = "l" + "r" * (2 + len(t["metrics"]))
        header = " & ".join(tex_escape(h) for h in ["method", "n", *(pretty(m) for m in t["metrics"]), "selected step"])
        out += ["\\begin{table}[t]", "\\centering\\small", f"\\begin{{tabular}}{{{cols}}}", "\\toprule",
                header + " \\\\", "\\midrule"]
        for _, line in t["frame"].iterrows():
            cells = _cells(line, t["metrics"], lambda s: f"\x00{s}\x01", MARK)
            cells = [tex_escape(c).replace("\x00", "\\textbf{").replace("\x01", "}") for c in cells]
            out.append(" & ".join([tex_escape(_label(line["method"], line["role"], t["uncosted"])), str(line["n_seeds"]),
                                   *cells, tex_escape(selected_cell(line))])
                       + " \\\\")
        caption = f"{t['dataset']}, reward setting {t['setting']}, {split} split. " + " ".join(_notes(t))
        out += ["\\bottomrule", "\\end{tabular}", f"\\caption{{{tex_escape(caption)}}}",
                f"\\label{{tab:main:{t['dataset']}:{t['setting']}}}".replace("+", "-"), "\\end{table}", ""]
    return "\n".join(out)


def main(argv: Sequence[str] | None = None) -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--significance", default="results/tables/significance.csv", help="significance.csv to read")
    p.add_argument("--out", default="results/tables/main", help="output stem: writes STEM.csv, STEM.md, STEM.tex")
    args = p.parse_args(argv)
    exp = load_experiment(args)
    sig = read_significance(args.significance)
    tables, missing = build(args.results, exp, sig, args.split)
    frame = pd.concat([t["frame"] for t in tables], ignore_index=True)
    write_csv(f"{args.out}.csv", frame)
    write_markdown(f"{args.out}.md", to_markdown(tables, args.split))
    write_text(f"{args.out}.tex", to_latex(tables, args.split))
    print(f"main table: {len(frame)} rows in {len(tables)} tables. {missing_note(missing)}")


if __name__ == "__main__":
    run_cli(main)
