"""The paper's claims (docs/method.md §6), decided by the data → ``results/tables/claims.{md,csv}``.

Every verdict is computed by a rule below — never typed by hand. α = 0.05. A claim is judged per
case (a dataset × reward setting), then overall: **reproduced** if every judged case is reproduced;
**not reproduced** if no case is reproduced and at least one is not; otherwise **inconclusive**
(mixed cases, or no case could be judged). "Pure-accuracy settings" are the reward settings whose
rewards all score accuracy (``ndcg``, and ``future``: graded accuracy against the user's train
future): the claims about accuracy (§6.1, 6.4, 6.5, 6.6) are judged there, since a list-wise
setting trades NDCG for its list metric by design. Metric: NDCG@10 on the test split.

Power. Every verdict that is not "reproduced" states its MDE: the smallest difference its paired
comparison detects with 80% power at α 0.05 (two-sided, before Holm; per-user differences, seeds
pooled by user as the test pools them; blade/power.py), in the metric's units. "Inconclusive, MDE
0.0009" and "inconclusive, MDE 0.02" are different results. A rule that is not a test (§6.3's
fall thresholds, §6.4's curve against a line) states why it has none.

- §6.1 Main table (pure-accuracy settings). Best baseline = the equal-cost baseline (SFT,
  references, aligned non-BLADE methods: one greedy list per user, no ground truth) with the best
  mean. Reproduced: BLADE's mean is higher and the Holm-adjusted paired t-test p < α
  (significance.csv); not reproduced: the best baseline's mean is higher with Holm p < α; else
  inconclusive (external rows: below).
- §6.2 List-wise objectives (settings with a fairness or diversity reward; targets as in
  listwise.py, tested on their per-user variants). Reproduced: every targeted metric is better
  than SFT's with Holm p < α AND BLADE's NDCG@10 loss vs SFT is at most that of every static
  method present (BOND, vBoN, ``estimator: static``). Not reproduced: a targeted metric is
  significantly worse than SFT's, or BLADE loses more NDCG@10 than every static method present.
  Else inconclusive (also when no static method ran). Own reward, a second case per setting: the
  setting's weighted-sum reward per user on test (analysis/own_reward.py), the objective the runs
  optimised. Reproduced: BLADE's is higher than SFT's and than every static method's, each with
  Holm p < α; not reproduced: SFT or a static method is higher with Holm p < α; else inconclusive.
- §6.3 Gradient decay (every setting). fall = 1 − (mean weight spread over the last 10% of
  steps) / (over the first 10%), on the seed-mean raw diagnostics. Reproduced: BLADE's fall < 10%
  and some static method's fall ≥ 20%. Not reproduced: BLADE's fall ≥ 20%, or every static
  method's fall < 10% (no decay to fix). Else inconclusive (also when no static method ran).
- §6.4 Breaking the static upper bound (pure-accuracy settings). Line = Oracle BoN@N of π_ref
  (N = BLADE's N), mean over seeds. Reproduced: BLADE's seed-mean snapshot curve ends above the
  line. Not reproduced: it never rises above the line. Else inconclusive (above at some step, not at
  the end). Training contexts, a second case per setting: on the contexts alignment trained on,
  BLADE's mean sampled reward (``reward_mean``) against E[max of N π_ref rewards] on the same
  contexts (``ref_bon_reward``: what the static target reaches, from the stored reference rollouts),
  per step over the last 10% of steps, seeds pooled. Reproduced: the mean difference is > 0 with a
  one-sample t-test p < α; not reproduced: < 0 with p < α; else inconclusive.
- §6.5 Cost–quality (pure-accuracy settings). BLADE's single-sample quality (sampled decoding)
  against BoN@N of π_ref at BLADE's N (the inference-reward BoN, N lists per user), paired t-test
  on users pooled over seeds. Reproduced: BLADE's mean ≥ BoN@N's. Not reproduced: lower with
  p < α. Else inconclusive.
- §6.6 Ablations (pure-accuracy settings; each ``estimator: static`` variant of BLADE). Reproduced:
  BLADE beats the variant with Holm p < α; not reproduced: the variant beats BLADE with Holm p < α;
  else inconclusive. κ0, γ, N and G are reported in ablation.md without a verdict: the paper's
  abstract states no direction for them.

External rows (``evaluate.external``, another codebase's lists) in §6.1: such a row is an
equal-cost baseline only when the cost.json of every seed found says ``samples_per_user`` = 1 (one
list per user, as BLADE's); without a cost.json its cost is unknown, and with more samples it is
not BLADE's cost: the row is then named in the evidence but decides no verdict. That it reads no
ground truth is the external model's own claim: the suite cannot check another codebase.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from analysis.common import (ALPHA, accuracy_only, read_significance, BLADE, EXTERNAL, all_tables, blade_n, collect_metrics,
                             curve_path, equal_cost_methods, expected_rows, higher_is_better, is_static, list_k,
                             load_experiment, markdown, missing_note, parser, per_user_name, pooled_per_user,
                             read_diagnostics, run_cli, write_csv, write_markdown)
from analysis.listwise import targets
from blade.power import paired_mde

REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE = "reproduced", "not reproduced", "inconclusive"
STATIC_FALL = 0.20    # a static method's spread must fall at least this much for decay to be shown
BLADE_FALL = 0.10     # BLADE's spread must fall less than this to count as holding its signal
EDGE = 0.10           # first and last 10% of steps
CLAIMS = {"6.1": "Main table: BLADE beats the best baseline", "6.2": "List-wise objectives: the targeted list "
          "metric improves without more accuracy lost than static BoN alignment", "6.3": "Gradient decay: static "
          "BoN alignment's signal decays, BLADE's does not", "6.4": "Breaking the static upper bound (Oracle BoN@N "
          "of π_ref)", "6.5": "Cost–quality: one BLADE sample is as good as BoN@N of π_ref",
          "6.6": "Ablation: the dynamic estimator beats the static one"}


@dataclass
class Case:
    claim: str
    case: str
    verdict: str
    evidence: str
    mde: str = ""  # the power of the verdict's comparison(s): shown wherever the verdict is not "reproduced"

    @property
    def shown(self) -> str:
        """The verdict as claims.md prints it: with its MDE unless reproduced."""
        return self.verdict if self.verdict == REPRODUCED or not self.mde else f"{self.verdict} (MDE {self.mde})"


def _mde(value, unit: str = "") -> str:
    """One MDE in the metric's units (``unit`` names what it measures where a case has several)."""
    text = "n/a" if value is None or not np.isfinite(value) else f"{value:.4f}"
    return f"{unit} {text}".strip()


# ------------------------------------------------------------------------------------- rules
def compare_verdict(blade_mean: float, other_mean: float, p: float, higher: bool = True) -> str:
    """BLADE vs one other row on one metric: better/worse with p < α, else inconclusive."""
    if any(not np.isfinite(v) for v in (blade_mean, other_mean, p)):
        return INCONCLUSIVE
    sign = (blade_mean - other_mean) * (1 if higher else -1)
    if p < ALPHA and sign > 0:
        return REPRODUCED
    if p < ALPHA and sign < 0:
        return NOT_REPRODUCED
    return INCONCLUSIVE


def listwise_verdict(target_tests: Sequence[tuple[str, bool]], paid_blade: float, paid_static: Sequence[float]) -> str:
    """``target_tests``: (better, significant) of BLADE vs SFT per targeted metric (better is
    "blade", "baseline" or "tie"); ``paid_*``: NDCG@10 lost vs SFT."""
    paid_static = [p for p in paid_static if np.isfinite(p)]
    if not target_tests or not np.isfinite(paid_blade):
        return INCONCLUSIVE
    if any(better == "baseline" and sig for better, sig in target_tests):
        return NOT_REPRODUCED
    if paid_static and paid_blade > max(paid_static):
        return NOT_REPRODUCED
    improved = all(better == "blade" and sig for better, sig in target_tests)
    if improved and paid_static and paid_blade <= min(paid_static):
        return REPRODUCED
    return INCONCLUSIVE


def fall(series: Sequence[float]) -> float:
    """1 − mean(last 10%) / mean(first 10%) of a per-step series (NaN if it cannot be measured)."""
    values = np.asarray(series, dtype=float)
    values = values[np.isfinite(values)]
    if len(values) < 2:
        return math.nan
    n = max(1, math.ceil(EDGE * len(values)))
    first, last = values[:n].mean(), values[-n:].mean()
    return math.nan if first <= 0 else float(1 - last / first)


def decay_verdict(blade_fall: float, static_falls: Sequence[float]) -> str:
    static_falls = [f for f in static_falls if np.isfinite(f)]
    if not np.isfinite(blade_fall):
        return INCONCLUSIVE
    if blade_fall >= STATIC_FALL or (static_falls and all(f < BLADE_FALL for f in static_falls)):
        return NOT_REPRODUCED
    if blade_fall < BLADE_FALL and any(f >= STATIC_FALL for f in static_falls):
        return REPRODUCED
    return INCONCLUSIVE


def bound_verdict(curve: Sequence[float], line: float) -> str:
    """``curve``: BLADE's seed-mean test metric per snapshot step, in step order."""
    curve = [c for c in curve if np.isfinite(c)]
    if not curve or not np.isfinite(line):
        return INCONCLUSIVE
    if curve[-1] > line:
        return REPRODUCED
    if max(curve) <= line:
        return NOT_REPRODUCED
    return INCONCLUSIVE


def cost_verdict(blade_mean: float, bon_mean: float, p: float) -> str:
    if not (np.isfinite(blade_mean) and np.isfinite(bon_mean)):
        return INCONCLUSIVE
    if blade_mean >= bon_mean:
        return REPRODUCED
    return NOT_REPRODUCED if np.isfinite(p) and p < ALPHA else INCONCLUSIVE


def overall(verdicts: Sequence[str]) -> str:
    if verdicts and all(v == REPRODUCED for v in verdicts):
        return REPRODUCED
    if NOT_REPRODUCED in verdicts and REPRODUCED not in verdicts:
        return NOT_REPRODUCED
    return INCONCLUSIVE


# ---------------------------------------------------------------------------------- evidence
def pure_accuracy(exp, setting: str) -> bool:
    return accuracy_only(exp, setting)


def _f(x: float, digits: int = 4) -> str:
    return "—" if x is None or not np.isfinite(x) else f"{x:.{digits}f}"


def _p(x: float) -> str:
    return "—" if not np.isfinite(x) else (f"{x:.2e}" if x < 1e-3 else f"{x:.3f}")


def _test(sig: pd.DataFrame, dataset: str, setting: str, other: str, metric: str) -> pd.Series | None:
    if sig is None or not len(sig):
        return None
    hit = sig[(sig["dataset"] == dataset) & (sig["reward_setting"] == setting) & (sig["baseline"] == other)
              & (sig["metric"] == metric)]
    return hit.iloc[0] if len(hit) else None


def _means(results, exp, dataset, setting, metric, split, missing, sample=False) -> dict[str, float]:
    rows = expected_rows(exp, dataset, setting, split)
    per_seed = collect_metrics(results, rows, split, sample, missing)
    if not len(per_seed) or metric not in per_seed:
        return {}
    return per_seed.groupby("method")[metric].mean().to_dict()


def main_claim(results, exp, sig, split, missing) -> list[Case]:
    metric = f"ndcg@{list_k(exp)}"
    cases = []
    for dataset, setting in all_tables(exp):
        if not pure_accuracy(exp, setting):
            continue
        means = _means(results, exp, dataset, setting, metric, split, missing)
        rows = expected_rows(exp, dataset, setting, split, bon_ns=[])
        externals = [r for r in rows if r.role == EXTERNAL]  # equal-cost by their cost.json only
        equal = set(equal_cost_methods(rows, collect_metrics(results, externals, split)))
        pool = {r.method: means[r.method] for r in rows if r.method in equal and r.method in means}
        unjudged = [r.method for r in externals if r.method not in equal]
        aside = (f"; external rows not judged against (cost unknown or above one sample per user): "
                 + ", ".join(f"{m} {_f(means.get(m, math.nan))}" for m in unjudged)) if unjudged else ""
        name = f"{dataset} · {setting}"
        if BLADE not in means or not pool:
            cases.append(Case("6.1", name, INCONCLUSIVE, "BLADE or every baseline is missing" + aside))
            continue
        best = max(pool, key=pool.get)
        test = _test(sig, dataset, setting, best, metric)
        p = float(test["p_ttest_holm"]) if test is not None else math.nan
        ev = (f"BLADE {_f(means[BLADE])} vs best baseline {best} {_f(pool[best])}; "
              + (f"diff {test['diff']:+.4f} [95% CI {test['ci_low']:+.4f}, {test['ci_high']:+.4f}], "
                 f"d_z {test['d_z']:.3f}, Holm p {_p(p)}" if test is not None else "no test in significance.csv")
              + aside)
        cases.append(Case("6.1", name, compare_verdict(means[BLADE], pool[best], p), ev,
                          _mde(test["mde"] if test is not None else None)))
    return cases


def listwise_claim(results, exp, sig, split, missing) -> list[Case]:
    k = list_k(exp)
    accuracy = f"ndcg@{k}"
    cases = []
    for dataset, setting in all_tables(exp):
        if pure_accuracy(exp, setting):
            continue
        means = _means(results, exp, dataset, setting, accuracy, split, missing)
        name = f"{dataset} · {setting}"
        if BLADE not in means or "sft" not in means:
            cases.append(Case("6.2", name, INCONCLUSIVE, "BLADE or SFT is missing"))
            continue
        tests, parts, powers = [], [], []
        for target in targets(exp, setting, k):
            test = _test(sig, dataset, setting, "sft", per_user_name(target))
            if test is None:
                parts.append(f"{target}: no test")
                continue
            tests.append((test["better"], bool(test["significant"])))
            powers.append(_mde(test.get("mde"), per_user_name(target)))
            parts.append(f"{per_user_name(target)} BLADE {_f(test['blade_mean'])} vs SFT {_f(test['baseline_mean'])} "
                         f"({'lower' if not higher_is_better(target) else 'higher'} is better; Holm p "
                         f"{_p(test['p_ttest_holm'])})")
        paid = {m: means["sft"] - v for m, v in means.items()}
        static_methods = [m for m in exp.methods_for(setting) if is_static(m, exp)]
        statics = {m: paid[m] for m in static_methods if m in paid}
        parts.append(f"NDCG@{k} lost vs SFT: BLADE {_f(paid[BLADE])}; static "
                     + (", ".join(f"{m} {_f(v)}" for m, v in statics.items()) or "none ran"))
        cases.append(Case("6.2", name, listwise_verdict(tests, paid[BLADE], list(statics.values())), "; ".join(parts),
                          ", ".join(powers) or "n/a (no test)"))
        cases.append(own_reward_case(sig, dataset, setting, static_methods))
    return cases


def own_reward_verdict(tests: Sequence[tuple[str, bool]]) -> str:
    """``tests``: (better, significant) of BLADE's own reward vs SFT and each static method."""
    if not tests:
        return INCONCLUSIVE
    if any(better == "baseline" and sig for better, sig in tests):
        return NOT_REPRODUCED
    return REPRODUCED if all(better == "blade" and sig for better, sig in tests) else INCONCLUSIVE


def own_reward_case(sig, dataset: str, setting: str, static_methods: Sequence[str]) -> Case:
    from analysis.own_reward import OWN_REWARD

    name = f"{dataset} · {setting} · own reward"
    tests, parts, powers = [], [], []
    for other in ["sft", *static_methods]:
        test = _test(sig, dataset, setting, other, OWN_REWARD)
        if test is None:
            parts.append(f"vs {other}: no test")
            continue
        tests.append((test["better"], bool(test["significant"])))
        powers.append(_mde(test.get("mde"), f"vs {other}"))
        parts.append(f"BLADE {_f(test['blade_mean'])} vs {other} {_f(test['baseline_mean'])} "
                     f"(Holm p {_p(test['p_ttest_holm'])})")
    if len(tests) < 1 + len(static_methods):  # a missing comparison cannot make the verdict reproduced
        verdict = NOT_REPRODUCED if own_reward_verdict(tests) == NOT_REPRODUCED else INCONCLUSIVE
    else:
        verdict = own_reward_verdict(tests)
    ev = f"the setting's weighted-sum reward on {setting!r}, per user: " + "; ".join(parts)
    return Case("6.2", name, verdict, ev, ", ".join(powers) or "n/a (no test)")


def decay_claim(results, exp, missing) -> list[Case]:
    cases = []
    for dataset, setting in all_tables(exp):
        rows = {r.method: r for r in expected_rows(exp, dataset, setting, bon_ns=[])}
        falls, tied = {}, None
        for method in [m for m in exp.methods_for(setting) if m == BLADE or is_static(m, exp)]:
            diag = read_diagnostics(results, rows[method], missing)
            if "weight_spread" in diag and len(diag):
                falls[method] = fall(diag.groupby("step")["weight_spread"].mean().sort_index().to_numpy())
            if method == BLADE and "tied_frac" in diag and len(diag):
                tied = float(diag["tied_frac"].mean())  # groups whose G rewards are all equal: no signal
        static = {m: f for m, f in falls.items() if m != BLADE}
        ev = f"weight-spread fall, first→last 10% of steps: BLADE {_pct(falls.get(BLADE))}; static " + (
            ", ".join(f"{m} {_pct(f)}" for m, f in static.items()) or "none ran")
        if tied is not None:
            ev += f"; BLADE's groups with all-equal rewards: {_pct(tied)}"
        cases.append(Case("6.3", f"{dataset} · {setting}", decay_verdict(falls.get(BLADE, math.nan),
                                                                         list(static.values())), ev,
                          "n/a: a threshold rule on the fall, not a test"))
    return cases


def _pct(x) -> str:
    return "—" if x is None or not np.isfinite(x) else f"{100 * x:.1f}%"


def bound_claim(results, exp, split, missing) -> list[Case]:
    metric = f"ndcg@{list_k(exp)}"
    oracle = f"oracle_bon_n{blade_n(exp)}"
    cases = []
    for dataset, setting in all_tables(exp):
        if not pure_accuracy(exp, setting):
            continue
        line = _means(results, exp, dataset, setting, metric, split, missing).get(oracle, math.nan)
        rows = {r.method: r for r in expected_rows(exp, dataset, setting, split)}
        row = rows.get(BLADE)
        curves = []
        for seed in row.seeds if row else ():
            path = curve_path(results, row, seed)
            if path.is_file():
                curves.append(pd.read_parquet(path)[["step", metric]])
            else:
                missing.append(row.label(seed) + "/curve")
        curve = pd.concat(curves).groupby("step")[metric].mean().sort_index() if curves else pd.Series(dtype=float)
        ev = (f"{oracle} {_f(line)}; BLADE test {metric} by step: "
              + (", ".join(f"{s}: {_f(v)}" for s, v in curve.items()) or "no curve"))
        power = _oracle_mde(results, row, rows.get(oracle), split, metric)
        cases.append(Case("6.4", f"{dataset} · {setting}", bound_verdict(curve.tolist(), line), ev,
                          f"{_mde(power)} (BLADE's selected policy vs {oracle}, per user; the curve rule itself "
                          "is not a test)"))
        if row is not None:
            cases.append(training_bound_case(results, exp, row, missing))
    return cases


def _oracle_mde(results, blade, oracle, split: str, metric: str) -> float:
    if blade is None or oracle is None:
        return math.nan
    a, _ = pooled_per_user(results, blade, split)
    b, _ = pooled_per_user(results, oracle, split)
    if a is None or b is None or metric not in a or metric not in b:
        return math.nan
    joined = pd.merge(a[[metric]], b[[metric]], left_index=True, right_index=True, suffixes=("", "_o"))
    return paired_mde(joined[metric].to_numpy(float), joined[f"{metric}_o"].to_numpy(float))


def training_verdict(diffs: Sequence[float]) -> tuple[str, float, float, float]:
    """(verdict, mean difference, p, MDE) of a one-sample t-test of per-step ``reward_mean −
    ref_bon_reward`` (the last 10% of steps, seeds pooled) against 0."""
    from scipy import stats

    d = np.asarray([x for x in diffs if np.isfinite(x)], dtype=float)
    if len(d) < 2:
        return INCONCLUSIVE, math.nan, math.nan, math.nan
    p = float(stats.ttest_1samp(d, 0.0).pvalue) if d.std(ddof=1) > 0 else (0.0 if d.mean() != 0 else 1.0)
    mean = float(d.mean())
    verdict = REPRODUCED if p < ALPHA and mean > 0 else NOT_REPRODUCED if p < ALPHA and mean < 0 else INCONCLUSIVE
    return verdict, mean, p, paired_mde(d)


def training_bound_case(results, exp, row, missing) -> Case:
    name = f"{row.dataset} · {row.setting} · training contexts"
    diag = read_diagnostics(results, row, missing)
    if not len(diag) or "ref_bon_reward" not in diag or "reward_mean" not in diag:
        return Case("6.4", name, INCONCLUSIVE, "no reward_mean / ref_bon_reward diagnostics (a run from before "
                                               "they were logged, or a missing run)", "n/a (no run)")
    steps = np.sort(diag["step"].unique())
    last = steps[-max(1, math.ceil(EDGE * len(steps))):]
    tail = diag[diag["step"].isin(last)]
    verdict, mean, p, power = training_verdict((tail["reward_mean"] - tail["ref_bon_reward"]).to_numpy(float))
    ev = (f"last {len(last)} steps × {tail['seed'].nunique()} seeds: BLADE's sampled reward {_f(tail['reward_mean'].mean())} "
          f"vs BoN@{blade_n(exp)} of π_ref on the same contexts {_f(tail['ref_bon_reward'].mean())} "
          f"(diff {_f(mean)}, one-sample t p {_p(p)})")
    return Case("6.4", name, verdict, ev, _mde(power))


def cost_claim(results, exp, split, missing) -> list[Case]:
    from analysis.significance import paired_tests

    metric = f"ndcg@{list_k(exp)}"
    n = blade_n(exp)
    cases = []
    for dataset, setting in all_tables(exp):
        if not pure_accuracy(exp, setting):
            continue
        rows = {r.method: r for r in expected_rows(exp, dataset, setting, split)}
        name = f"{dataset} · {setting}"
        if not (exp.evaluate.samples and split in exp.evaluate.inference_splits):
            cases.append(Case("6.5", name, INCONCLUSIVE, f"no sampled decoding on {split} (evaluate.samples, "
                                                         "evaluate.inference_splits)"))
            continue
        if BLADE not in rows or f"bon_n{n}" not in rows:
            cases.append(Case("6.5", name, INCONCLUSIVE, f"no BLADE row or no BoN@{n} row on {split}"))
            continue
        blade, _ = pooled_per_user(results, rows[BLADE], split, sample=True, missing=missing)
        bon, _ = pooled_per_user(results, rows[f"bon_n{n}"], split, missing=missing)
        if blade is None or bon is None or metric not in blade or metric not in bon:
            cases.append(Case("6.5", name, INCONCLUSIVE, "BLADE's sampled decoding or the BoN row is missing"))
            continue
        test = paired_tests(blade, bon, [metric]).iloc[0]
        curve = _means(results, exp, dataset, setting, metric, split, missing)
        matched = [m for m in exp.evaluate.bon_n if curve.get(f"bon_n{m}", math.inf) <= test["blade_mean"]]
        ev = (f"BLADE one sample {_f(test['blade_mean'])} vs BoN@{n} {_f(test['baseline_mean'])} "
              f"(diff {test['diff']:+.4f}, p {_p(test['p_ttest'])}); BoN@N curve: "
              + ", ".join(f"N={m} {_f(curve.get(f'bon_n{m}', math.nan))}" for m in exp.evaluate.bon_n)
              + f"; one BLADE sample matches BoN@N up to N = {max(matched) if matched else 'none'}")
        cases.append(Case("6.5", name, cost_verdict(test["blade_mean"], test["baseline_mean"], test["p_ttest"]), ev,
                          _mde(test["mde"])))
    return cases


def ablation_claim(results, exp, sig, split, missing) -> list[Case]:
    metric = f"ndcg@{list_k(exp)}"
    variants = [m for m in exp.aligned if m != BLADE and exp.methods[m].get("objective") == "blade"
                and exp.methods[m].get("estimator") == "static"]
    cases = []
    for dataset, setting in all_tables(exp):
        if not pure_accuracy(exp, setting):
            continue
        for variant in [v for v in variants if v in exp.methods_for(setting)]:
            test = _test(sig, dataset, setting, variant, metric)
            name = f"{dataset} · {setting} · vs {variant}"
            if test is None:
                cases.append(Case("6.6", name, INCONCLUSIVE, "no test in significance.csv (a run is missing)"))
                continue
            ev = (f"BLADE {_f(test['blade_mean'])} vs {variant} {_f(test['baseline_mean'])}, "
                  f"d_z {test['d_z']:.3f}, Holm p {_p(test['p_ttest_holm'])}")
            cases.append(Case("6.6", name, compare_verdict(test["blade_mean"], test["baseline_mean"],
                                                           test["p_ttest_holm"]), ev, _mde(test.get("mde"))))
    return cases


def claims(results, exp, sig: pd.DataFrame | None, split: str = "test") -> tuple[list[Case], list[str]]:
    missing: list[str] = []
    cases = (main_claim(results, exp, sig, split, missing) + listwise_claim(results, exp, sig, split, missing)
             + decay_claim(results, exp, missing) + bound_claim(results, exp, split, missing)
             + cost_claim(results, exp, split, missing) + ablation_claim(results, exp, sig, split, missing))
    return cases, sorted(set(missing))


def verdicts(cases: Sequence[Case]) -> dict[str, str]:
    """Overall verdict per claim (every claim listed, inconclusive where no case was judged)."""
    return {c: overall([x.verdict for x in cases if x.claim == c]) for c in CLAIMS}


def rules(external: bool = False) -> str:
    """The rules above, for claims.md: the paragraph on external rows only where the config has
    some (a run without them reports exactly what it did before external rows existed)."""
    text = __doc__.split("\n\n", 1)[1].strip()
    return text if external else text.split(f"\n\n{_EXTERNAL_RULES}")[0].replace(" (external rows: below)", "")


_EXTERNAL_RULES = "External rows (``evaluate.external``"


def to_markdown(cases: Sequence[Case], missing: Sequence[str], external: bool = False) -> str:
    rules_text = rules(external)
    out = ["# The paper's claims, as this run's data decide them\n",
           markdown(["claim", "what", "verdict"],
                    [[f"§{c}", CLAIMS[c], f"**{v}**"] for c, v in verdicts(cases).items()]),
           ""]
    for claim, title in CLAIMS.items():
        mine = [c for c in cases if c.claim == claim]
        out.append(f"## §{claim} {title} — {overall([c.verdict for c in mine])}\n")
        if mine:
            out.append(markdown(["case", "verdict", "evidence"], [[c.case, c.shown, c.evidence] for c in mine]))
        else:
            out.append("No case to judge (no run of the kind this claim needs is in the config).\n")
    out += ["## Missing runs\n", missing_note(missing), "", "## Rules (analysis/claims.py)\n", rules_text, ""]
    return "\n".join(out)


def main(argv: Sequence[str] | None = None) -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--significance", default="results/tables/significance.csv", help="significance.csv to read")
    p.add_argument("--out", default="results/tables/claims", help="output stem: writes STEM.md and STEM.csv")
    args = p.parse_args(argv)
    exp = load_experiment(args)
    cases, missing = claims(args.results, exp, read_significance(args.significance), args.split)
    write_markdown(f"{args.out}.md", to_markdown(cases, missing, external=bool(exp.evaluate.external)))
    write_csv(f"{args.out}.csv", pd.DataFrame([c.__dict__ for c in cases], columns=["claim", "case", "verdict",
                                                                                     "evidence", "mde"]))
    print(" ".join(f"§{c}: {v};" for c, v in verdicts(cases).items()) + f" {missing_note(missing)}")


if __name__ == "__main__":
    run_cli(main)
