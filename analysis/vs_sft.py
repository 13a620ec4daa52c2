"""Every aligned row against its own start, SFT → ``results/tables/vs_sft.{csv,md}``.

Does alignment change test accuracy at all? A benchmark whose methods all tie with their start
ranks nothing, and a tie is only informative next to the effect the test could have seen. For each
dataset × reward-setting table and each aligned row (BLADE, its variants, the baselines):
- the paired t-test of the row's per-user NDCG@10 (and, in a list-wise setting, ``own_reward``, the
  setting's weighted-sum reward: analysis/own_reward.py) minus SFT's, users pooled over seeds as
  analysis/significance.py pools them (:func:`analysis.significance.paired_tests`);
- Holm across the rows of one table, per metric (``p_holm``; ``significant`` = p_holm < 0.05);
- the MDE of that test at 80% power (blade/power.py), and the step selection kept, mean over
  seeds (``selected_step``; ``seeds_at_start`` = seeds that kept the SFT start itself).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from analysis.common import (ALPHA, accuracy_only, all_tables, collect_metrics, expected_rows, list_k, markdown,
                             missing_note, parser, pooled_per_user, run_cli, write_csv, write_markdown)
from analysis.own_reward import OWN_REWARD, OwnReward

ALIGNED_ROLES = ("blade", "variant", "baseline")
COLUMNS = ["dataset", "reward_setting", "method", "role", "metric", "n_users", "seeds", "method_mean", "sft_mean",
           "diff", "ci_low", "ci_high", "mde", "p_ttest", "p_holm", "significant", "selected_step", "seeds_at_start"]


def vs_sft(results, exp, split: str = "test") -> tuple[pd.DataFrame, list[str]]:
    from analysis.significance import holm, paired_tests

    missing: list[str] = []
    parts = []
    for dataset, setting in all_tables(exp):
        rows = expected_rows(exp, dataset, setting, split, bon_ns=[])
        sft_row = next((r for r in rows if r.method == "sft"), None)
        sft, _ = pooled_per_user(results, sft_row, split, missing=missing) if sft_row else (None, 0)
        if sft is None:
            continue
        metrics = [f"ndcg@{list_k(exp)}"]
        own = None
        if not accuracy_only(exp, setting):
            own = OwnReward(results, exp, dataset, setting, split)
            sft = own.add_to(sft, results, sft_row)
            metrics.append(OWN_REWARD)
        lines = []
        for row in [r for r in rows if r.role in ALIGNED_ROLES]:
            frame, seeds = pooled_per_user(results, row, split, missing=missing)
            if frame is None:
                continue
            if own is not None:
                frame = own.add_to(frame, results, row)
            tests = paired_tests(frame, sft, [m for m in metrics if m in frame and m in sft], resamples=0)
            steps = _steps(results, row, split)
            for t in tests.itertuples(index=False):
                lines.append({"dataset": dataset, "reward_setting": setting, "method": row.method, "role": row.role,
                              "metric": t.metric, "n_users": t.n_users, "seeds": seeds, "method_mean": t.blade_mean,
                              "sft_mean": t.baseline_mean, "diff": t.diff, "ci_low": t.ci_low, "ci_high": t.ci_high,
                              "mde": t.mde, "p_ttest": t.p_ttest, **steps})
        if not lines:
            continue
        table = pd.DataFrame(lines)
        table["p_holm"] = np.nan
        for metric, idx in table.groupby("metric").groups.items():  # Holm across this table's rows, per metric
            table.loc[idx, "p_holm"] = holm(table.loc[idx, "p_ttest"].to_numpy())
        table["significant"] = table["p_holm"] < ALPHA
        parts.append(table)
    frame = pd.concat(parts, ignore_index=True)[COLUMNS] if parts else pd.DataFrame(columns=COLUMNS)
    return frame, sorted(set(missing))


def _steps(results, row, split: str) -> dict[str, float]:
    per_seed = collect_metrics(results, [row], split)
    steps = per_seed["selection/step"].dropna().to_numpy(float) if "selection/step" in per_seed else np.array([])
    return {"selected_step": float(steps.mean()) if len(steps) else np.nan,
            "seeds_at_start": int((steps == 0).sum()) if len(steps) else np.nan}


def to_markdown(frame: pd.DataFrame, missing: Sequence[str], split: str) -> str:
    out = [f"# Every aligned row against SFT ({split} split, paired per-user t-test, Holm across a table's rows)", "",
           "diff = row − SFT; MDE = the smallest difference the test detects with 80% power (α 0.05); selected "
           "step = mean over seeds (seeds that kept the SFT start).", ""]
    for (dataset, setting), part in frame.groupby(["dataset", "reward_setting"], sort=False):
        out += [f"## {dataset} · {setting}", ""]
        body = []
        for r in part.itertuples(index=False):
            verdict = ("higher" if r.diff > 0 else "lower") if r.significant else "no significant difference"
            step = "—" if not np.isfinite(r.selected_step) else f"{r.selected_step:.0f} ({int(r.seeds_at_start)}/{r.seeds} at 0)"
            body.append([r.method, r.metric, f"{r.method_mean:.4f}", f"{r.sft_mean:.4f}", f"{r.diff:+.4f}",
                         f"[{r.ci_low:+.4f}, {r.ci_high:+.4f}]", f"{r.mde:.4f}", f"{r.p_holm:.2g}", verdict, step])
        out += [markdown(["row", "metric", "row mean", "SFT", "diff", "95% CI", "MDE", "p (Holm)", "verdict",
                          "selected step"], body), ""]
    out += [missing_note(missing), ""]
    return "\n".join(out)


def main(argv: Sequence[str] | None = None) -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--out", default="results/tables/vs_sft", help="output stem: writes STEM.csv and STEM.md")
    args = p.parse_args(argv)
    from analysis.common import load_experiment

    exp = load_experiment(args)
    frame, missing = vs_sft(args.results, exp, args.split)
    write_csv(f"{args.out}.csv", frame)
    write_markdown(f"{args.out}.md", to_markdown(frame, missing, args.split))
    print(f"{len(frame)} comparisons with SFT, {int(frame['significant'].sum()) if len(frame) else 0} significant. "
          f"{missing_note(missing)}")


if __name__ == "__main__":
    run_cli(main)
