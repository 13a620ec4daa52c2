"""List-wise objectives (docs/method.md §6.2) → ``results/tables/listwise.{csv,md}``.

For each dataset × reward setting × method (SFT and every aligned method): the list metric the
setting targets and the accuracy paid for it, both relative to SFT (π_ref), on greedy test lists:
- the targeted metric follows the setting's reward weights: ``fairness`` → the pooled MGU and DGU
  of the groups the fairness reward uses (``fairness_by``: popularity or genre; lower is better),
  ``diversity`` → ILD; a setting with neither (``ndcg``) targets NDCG itself — one line per target;
- ``target_gain``: the change vs SFT, signed so that > 0 is an improvement (MGU/DGU falling);
- ``accuracy_paid``: SFT's NDCG@10 minus the method's (> 0 = accuracy lost).
Means over seeds; deltas are differences of those means. ``static`` marks static BoN alignment
(BOND, vBoN, ``estimator: static``), what §6.2 compares BLADE's accuracy loss with. External rows
(``evaluate.external``: another codebase's lists, trained under no setting of this suite) appear in
every setting's block, against the same SFT, so a list-wise model from elsewhere can be read beside
the aligned ones; the references are not listed (they target nothing).
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from analysis.common import (EXTERNAL, all_tables, collect_metrics, expected_rows, fmt, higher_is_better, is_static,
                             list_k, load_experiment, markdown, mean_std, missing_note, parser, pretty, run_cli,
                             write_csv, write_markdown)

COLUMNS = ["dataset", "reward_setting", "method", "role", "static", "n_seeds", "target_metric", "target", "target_std",
           "target_delta", "target_gain", "accuracy_metric", "accuracy", "accuracy_std", "accuracy_paid"]


def targets(exp, setting: str, k: int) -> list[str]:
    """The list metrics a reward setting targets (pooled names), from its reward weights."""
    cfg = exp.rewards[setting]
    used = {name for name, w in cfg.weights.items() if w > 0}
    out = []
    if "fairness" in used:
        out += [f"mgu_{cfg.fairness_by}@{k}", f"dgu_{cfg.fairness_by}@{k}"]
    if "diversity" in used:
        out.append(f"ild@{k}")
    return out or [f"ndcg@{k}"]


def listwise(results, exp, split: str = "test") -> tuple[pd.DataFrame, list[str]]:
    k = list_k(exp)
    accuracy = f"ndcg@{k}"
    lines, missing = [], []
    for dataset, setting in all_tables(exp):
        rows = [r for r in expected_rows(exp, dataset, setting, split, bon_ns=[])
                if r.role in ("sft", EXTERNAL, "blade", "variant", "baseline")]
        per_seed = collect_metrics(results, rows, split, missing=missing)
        stats = {}
        for row in rows:
            mine = per_seed[per_seed["method"] == row.method] if len(per_seed) else per_seed
            stats[row.method] = {m: mean_std(mine[m].tolist() if m in mine else [])
                                 for m in [accuracy, *targets(exp, setting, k)]}
            stats[row.method]["n"] = len(mine)
        sft = stats["sft"]
        for row in rows:
            s = stats[row.method]
            for target in targets(exp, setting, k):
                delta = s[target][0] - sft[target][0]
                lines.append({"dataset": dataset, "reward_setting": setting, "method": row.method, "role": row.role,
                              "static": is_static(row.method, exp), "n_seeds": s["n"], "target_metric": target,
                              "target": s[target][0], "target_std": s[target][1], "target_delta": delta,
                              "target_gain": delta if higher_is_better(target) else -delta,
                              "accuracy_metric": accuracy, "accuracy": s[accuracy][0], "accuracy_std": s[accuracy][1],
                              "accuracy_paid": sft[accuracy][0] - s[accuracy][0]})
    return pd.DataFrame(lines, columns=COLUMNS), sorted(set(missing))


def to_markdown(frame: pd.DataFrame, missing: list[str], split: str) -> str:
    out = [f"# List-wise objectives ({split} split, greedy lists; deltas vs SFT)\n"]
    for dataset, block in frame.groupby("dataset", sort=False):
        header = ["reward setting", "method", "n", "target", "value", "gain vs SFT", "NDCG@10", "accuracy paid"]
        body = [[line.reward_setting, line.method + (" (static)" if line.static else " (external)"
                                                     if line.role == EXTERNAL else ""), str(line.n_seeds),
                 pretty(line.target_metric), fmt(line.target, line.target_std), fmt(line.target_gain),
                 fmt(line.accuracy, line.accuracy_std), fmt(line.accuracy_paid)] for line in block.itertuples()]
        out += [f"## {dataset}\n", markdown(header, body)]
    out += ["- gain vs SFT > 0: the targeted metric improved (MGU/DGU fell; ILD or NDCG rose); "
            "accuracy paid > 0: NDCG@10 lost against SFT.", f"- {missing_note(missing)}", ""]
    return "\n".join(out)


def main(argv: Sequence[str] | None = None) -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--out", default="results/tables/listwise", help="output stem: writes STEM.csv and STEM.md")
    args = p.parse_args(argv)
    exp = load_experiment(args)
    frame, missing = listwise(args.results, exp, args.split)
    write_csv(f"{args.out}.csv", frame)
    write_markdown(f"{args.out}.md", to_markdown(frame, missing, args.split))
    print(f"listwise: {len(frame)} lines. {missing_note(missing)}")


if __name__ == "__main__":
    run_cli(main)
