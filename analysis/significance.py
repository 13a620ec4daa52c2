"""Paired significance tests: BLADE against every other row of each dataset × reward-setting table
→ ``results/tables/significance.csv`` (docs/method.md §6.1).

For each comparison (BLADE vs one other row) and each per-user metric:
- per-user values **pooled over seeds by user**: each user's value averaged over the seeds found,
  then paired with the other row's by split row (reference rows have one seed);
- the paired t-test (``scipy.stats.ttest_rel``), its 95% CI of the mean difference, and Cohen's
  ``d_z = mean(d) / sd(d)`` (d = BLADE − other, per user);
- a paired sign-flip randomisation test of the mean difference (two-sided);
- Holm correction (``statsmodels`` ``multipletests(method="holm")``) across the metrics of the
  comparison, for each test separately. ``significant`` reads the Holm-adjusted t-test p < 0.05.
- ``mde``: the minimum detectable difference of that paired t-test at 80% power and α 0.05
  (two-sided, before Holm; blade/power.py), in the metric's units: what a non-significant
  difference could still hide.
In a list-wise setting every comparison also tests ``own_reward``, the setting's weighted-sum
reward per user (analysis/own_reward.py): the objective the runs were trained on.
Pooled MGU/DGU are tested on their per-user variants (``mgu_pop_user@K``); catalogue-level numbers
(coverage, Gini, entropy) have no per-user value and no test. Oracle BoN rows are not compared
(they read the test target); of the BoN rows only BoN@N at BLADE's N is. External rows
(``evaluate.external``, role ``external``) are compared like every other row (paired by split row,
Holm across the metrics of their comparison); their per-user file is ``blade evaluate``'s.

Why the sign-flip test is written here: it is ``scipy.stats.permutation_test`` with
``permutation_type="samples"`` on the paired differences (the tests check the two agree exactly on
small samples), but scipy's generic loop takes ~4 s per test at 1,500 users and 9,999 resamples;
one sign matrix shared by a comparison's metrics costs one matrix product (~0.1 s).
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy import stats
from statsmodels.stats.multitest import multipletests

from analysis.common import (ALPHA, BLADE, Row, accuracy_only, all_tables, blade_n, expected_rows, higher_is_better,
                             list_k, missing_note, parser, pooled_per_user, run_cli, write_csv)
from analysis.own_reward import OWN_REWARD, OwnReward
from blade.power import paired_mde

RESAMPLES = 9999
COLUMNS = ["dataset", "reward_setting", "split", "baseline", "role", "metric", "higher_is_better", "n_users",
           "seeds_blade", "seeds_baseline", "blade_mean", "baseline_mean", "diff", "ci_low", "ci_high", "d_z", "mde",
           "t_stat", "p_ttest", "p_ttest_holm", "p_perm", "p_perm_holm", "significant", "better"]


def tested_metrics(exp, columns: Sequence[str]) -> list[str]:
    """The per-user columns every comparison tests: Recall/NDCG at each cut-off, and at the list
    cut-off the per-user MGU/DGU variants, ILD and tail share (those present in ``columns``)."""
    k = list_k(exp)
    names = [f"{m}@{c}" for c in exp.evaluate.ks for m in ("recall", "ndcg")]
    names += [f"{m}_{by}_user@{k}" for by in ("pop", "genre") for m in ("mgu", "dgu")]
    names += [f"ild@{k}", f"tail_share@{k}", OWN_REWARD]
    return [n for n in names if n in columns]


def sign_flip_pvalues(diffs: np.ndarray, resamples: int = RESAMPLES, rng: np.random.Generator | None = None,
                      batch: int = 1000) -> np.ndarray:
    """Two-sided paired randomisation p-values, one per column of ``diffs`` (U users, M metrics; NaN
    = no pair for that metric). Under H0 each user's difference is as likely to have either sign,
    so the null distribution of Σ d is that of Σ s_u·d_u over random signs s. Exact (all 2^U sign
    vectors, as scipy enumerates them) when 2^U <= ``resamples``; else ``resamples`` random sign
    vectors and p = (1 + #{|null| >= |obs|}) / (resamples + 1), which is never 0."""
    d = np.nan_to_num(np.asarray(diffs, dtype=np.float64), nan=0.0)  # a missing pair adds nothing to either sum
    d = d.reshape(len(d), -1)
    users, _ = d.shape
    observed = np.abs(d.sum(0))  # the sum has the mean's null distribution up to the fixed n
    tol = 1e-9 * np.maximum(np.abs(d).sum(0), 1e-300)  # float ties with the observed value count as ≥
    exact = users < 63 and 2**users <= resamples
    if exact:
        signs = 1 - 2 * ((np.arange(2**users)[:, None] >> np.arange(users)) & 1)  # (2^U, U) every sign vector
        hits = (np.abs(signs @ d) >= observed - tol).sum(0)
        return hits / 2**users
    rng = rng or np.random.default_rng(0)
    hits = np.zeros(d.shape[1])
    for start in range(0, resamples, batch):
        n = min(batch, resamples - start)
        signs = rng.integers(0, 2, size=(n, users), dtype=np.int8) * 2 - 1  # (n, U)
        hits += (np.abs(signs @ d) >= observed - tol).sum(0)
    return (1 + hits) / (resamples + 1)


def holm(pvalues: Sequence[float]) -> np.ndarray:
    """Holm-adjusted p-values (statsmodels); NaN entries (no test) stay NaN and are not counted."""
    p = np.asarray(pvalues, dtype=float)
    out = np.full_like(p, np.nan)
    ok = np.isfinite(p)
    if ok.any():
        out[ok] = multipletests(p[ok], method="holm")[1]
    return out


def paired_tests(blade: pd.DataFrame, other: pd.DataFrame, metrics: Sequence[str], resamples: int = RESAMPLES,
                 rng: np.random.Generator | None = None) -> pd.DataFrame:
    """One line per metric: the paired t-test, sign-flip test, effect sizes and Holm-adjusted p's
    of ``blade`` − ``other`` (per-user frames indexed by user; rows paired on the index)."""
    joined = pd.merge(blade[list(metrics)], other[list(metrics)], left_index=True, right_index=True,
                      suffixes=("_a", "_b"))
    a = joined[[f"{m}_a" for m in metrics]].to_numpy(float)
    b = joined[[f"{m}_b" for m in metrics]].to_numpy(float)
    diffs = a - b  # (U, M), NaN where either side has nothing to measure
    p_perm = sign_flip_pvalues(diffs, resamples, rng)
    lines = []
    for j, metric in enumerate(metrics):
        ok = np.isfinite(diffs[:, j])
        x, y, d = a[ok, j], b[ok, j], diffs[ok, j]
        line = {"metric": metric, "higher_is_better": higher_is_better(metric), "n_users": int(ok.sum()),
                "blade_mean": float(x.mean()) if len(x) else np.nan,
                "baseline_mean": float(y.mean()) if len(y) else np.nan, "diff": float(d.mean()) if len(d) else np.nan}
        line.update(_t_test(x, y, d))
        line["mde"] = paired_mde(d)  # NaN below 2 pairs
        line["p_perm"] = float(p_perm[j]) if len(d) >= 2 else np.nan
        lines.append(line)
    out = pd.DataFrame(lines)
    out["p_ttest_holm"] = holm(out["p_ttest"])
    out["p_perm_holm"] = holm(out["p_perm"])
    out["significant"] = out["p_ttest_holm"] < ALPHA
    sign = np.sign(out["diff"]) * np.where(out["higher_is_better"], 1, -1)
    out["better"] = np.select([sign > 0, sign < 0], ["blade", "baseline"], "tie")
    return out


def _t_test(x: np.ndarray, y: np.ndarray, d: np.ndarray) -> dict[str, float]:
    nan = {"t_stat": np.nan, "p_ttest": np.nan, "ci_low": np.nan, "ci_high": np.nan, "d_z": np.nan}
    if len(d) < 2:
        return nan
    sd = d.std(ddof=1)
    if sd <= 1e-12 * max(1.0, abs(float(d.mean()))):  # every user differs by the same amount (up to rounding):
        # t is undefined and there is no doubt about the sign
        mean = float(d.mean())
        same = abs(mean) <= 1e-12  # no difference at all
        return {"t_stat": np.nan, "p_ttest": 1.0 if same else 0.0, "ci_low": mean, "ci_high": mean,
                "d_z": 0.0 if same else np.copysign(np.inf, mean)}
    res = stats.ttest_rel(x, y)
    ci = res.confidence_interval(1 - ALPHA)
    return {"t_stat": float(res.statistic), "p_ttest": float(res.pvalue), "ci_low": float(ci.low),
            "ci_high": float(ci.high), "d_z": float(d.mean() / sd)}


def compare_rows(results, blade: Row, others: Sequence[Row], split: str, exp, resamples: int = RESAMPLES,
                 sample: bool = False, missing: list[str] | None = None) -> pd.DataFrame:
    """BLADE against each row of ``others`` on one table's per-user metrics."""
    base, n_blade = pooled_per_user(results, blade, split, sample, missing)
    if base is None:
        return pd.DataFrame(columns=COLUMNS)
    own = None if sample or accuracy_only(exp, blade.setting) else OwnReward(results, exp, blade.dataset,
                                                                               blade.setting, split)
    if own is not None:
        base = own.add_to(base, results, blade)
    metrics = tested_metrics(exp, base.columns)
    parts = []
    for other in others:
        frame, n_other = pooled_per_user(results, other, split, sample, missing)
        if frame is None:
            continue
        if own is not None:
            frame = own.add_to(frame, results, other)
        key = zlib.crc32(f"{blade.dataset}|{blade.setting}|{other.method}|{split}".encode())
        tests = paired_tests(base, frame, [m for m in metrics if m in frame.columns], resamples,
                             np.random.default_rng([key]))
        parts.append(tests.assign(dataset=blade.dataset, reward_setting=blade.setting, split=split,
                                  baseline=other.method, role=other.role, seeds_blade=n_blade, seeds_baseline=n_other))
    return pd.concat(parts, ignore_index=True)[COLUMNS] if parts else pd.DataFrame(columns=COLUMNS)


def significance(results, exp, split: str = "test", resamples: int = RESAMPLES) -> tuple[pd.DataFrame, list[str]]:
    """Every table's comparisons, and the expected runs that were missing."""
    missing: list[str] = []
    parts = []
    for dataset, setting in all_tables(exp):
        rows = expected_rows(exp, dataset, setting, split, bon_ns=[blade_n(exp)])
        blade = next((r for r in rows if r.method == BLADE), None)
        if blade is None:
            continue
        others = [r for r in rows if r.method != BLADE and r.role != "oracle"]
        parts.append(compare_rows(results, blade, others, split, exp, resamples, missing=missing))
    frame = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=COLUMNS)
    return frame, sorted(set(missing))


def main(argv: Sequence[str] | None = None) -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--out", default="results/tables/significance.csv", help="the CSV to write")
    p.add_argument("--resamples", type=int, default=RESAMPLES, help="sign-flip resamples (default 9999)")
    args = p.parse_args(argv)
    from analysis.common import load_experiment

    exp = load_experiment(args)
    frame, missing = significance(args.results, exp, args.split, args.resamples)
    write_csv(args.out, frame)
    print(f"{len(frame)} tests written to {args.out}. {missing_note(missing)}")


if __name__ == "__main__":
    run_cli(main)
