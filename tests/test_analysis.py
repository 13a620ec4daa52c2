"""The analysis stage on a FAKE results tree with known values: tables, tests, claims, figures.

The tree holds what the DAG writes for 1 dataset × 1 reward setting (`ndcg`) × 2 aligned methods
(blade, blade_static) × 2 seeds, plus SFT (2 seeds), the references (seed 0) and the BoN rows
(N = 1, 8). Per-user values are built from closed forms below, so every number the analysis
prints can be recomputed by hand here.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from statsmodels.stats.multitest import multipletests

from analysis import ablation, claims, figures, listwise, main_table, runtime, significance
from analysis.common import expected_rows
from blade.errors import ConfigError
from blade.experiment import resolve

U = 40  # users (rows of the test split)
KS = (5, 10, 20)
CONFIG = {
    "run": {"datasets": ["fake"], "seeds": [0, 1], "methods": ["blade", "blade_static"], "rewards": ["ndcg"]},
    "datasets": {"fake": {"source": "synthetic", "params": {"n_users": U, "n_items": 30, "seed": 0}}},
    "rewards": {"ndcg": {"weights": {"ndcg": 1.0}}},
    "evaluate": {"bon_n": [1, 8], "ks": list(KS)},
    "methods": {"blade": {"objective": "blade"}, "blade_static": {"objective": "blade", "estimator": "static"}},
}
# Mean NDCG@10 per row: BLADE well above every equal-cost baseline (§6.1 reproduced), below the
# oracle line (§6.4 not reproduced), its one sample level with BoN@8 (§6.5 inconclusive, crafted below).
QUALITY = {"sft": 0.30, "mostpop": 0.10, "cooc": 0.35, "blade": 0.55, "blade_static": 0.40, "bon_n1": 0.30,
           "bon_n8": 0.45, "oracle_bon_n1": 0.30, "oracle_bon_n8": 0.95}
MGU = {"sft": 0.20, "mostpop": 0.50, "cooc": 0.25, "blade": 0.12, "blade_static": 0.18, "bon_n1": 0.2,
       "bon_n8": 0.21, "oracle_bon_n1": 0.2, "oracle_bon_n8": 0.22}
SELECTED = {"blade": [20, 0], "blade_static": [0, 0]}  # the valid-selected step of each seed
USER = np.random.default_rng(123).normal(0, 0.1, U)  # a per-user effect shared by every row (pairing matters)


def per_user(method: str, seed: int) -> pd.DataFrame:
    noise = 0.0 if "bon" in method else np.random.default_rng([len(method), seed]).normal(0, 0.02, U)
    ndcg10 = np.clip(QUALITY[method] + USER + noise, 0, 1)
    cols = {"row": np.arange(U), "context_id": np.arange(U) + 1000}
    for k in KS:
        scale = {5: 0.8, 10: 1.0, 20: 1.1}[k]
        cols[f"recall@{k}"] = np.clip(ndcg10 * scale + 0.1, 0, 1)
        cols[f"ndcg@{k}"] = np.clip(ndcg10 * scale, 0, 1)
        cols[f"mgu_pop_user@{k}"] = MGU[method] + 0.01 * np.cos(np.arange(U) + seed)
        cols[f"dgu_pop_user@{k}"] = 2 * MGU[method] + 0.01 * np.sin(np.arange(U) + seed)
        cols[f"tail_share@{k}"] = np.full(U, 0.1 + QUALITY[method] / 10)
        cols[f"ild@{k}"] = np.full(U, 0.5)
    cols["invalid_rate"] = np.zeros(U)
    return pd.DataFrame(cols)


def pooled(method: str, seed: int) -> dict[str, float]:
    out = {}
    for k in KS:
        out[f"mgu_pop@{k}"] = MGU[method] + 0.001 * seed
        out[f"dgu_pop@{k}"] = 2 * MGU[method] + 0.001 * seed
        out[f"coverage@{k}"] = 0.2 + QUALITY[method] / 4 + 0.01 * seed
        out[f"gini@{k}"] = 0.8 - QUALITY[method] / 4
        out[f"entropy@{k}"] = 3.0
    return out


def write_eval(root: Path, directory: str, method: str, seed: int, frame: pd.DataFrame, cost: float | None,
               sample: bool = False, extra: dict | None = None) -> None:
    out = root / "eval" / "fake" / directory / method / f"seed{seed}" / "test" / ("sample" if sample else "")
    out.mkdir(parents=True, exist_ok=True)
    frame.to_parquet(out / "per_user.parquet", index=False)
    metrics = {c: float(frame[c].mean()) for c in frame.columns if c not in ("row", "context_id")}
    metrics.update(pooled(method, seed))
    if cost is not None:
        metrics.update({"cost/samples_per_user": cost, "cost/tokens_per_user": 10 * cost,
                        "cost/seconds_per_user": 0.01})
    (out / "metrics.json").write_text(json.dumps({"split": "test", "n_rows": U, **metrics, **(extra or {})}))


def sampled_blade(seed: int) -> pd.DataFrame:
    """BLADE's sampled decoding: BoN@8's NDCG@10 ± 0.1 alternating, a hair lower on average."""
    frame = per_user("bon_n8", 0)
    d = np.where(np.arange(U) % 2 == 0, 0.1, -0.1)
    d[0] -= 0.04
    for k in KS:
        frame[f"ndcg@{k}"] = frame[f"ndcg@{k}"] + d
    return frame


def spread(method: str, seed: int, steps: int = 50) -> np.ndarray:
    """BLADE's weight spread holds (≈1.0); the static estimator's falls linearly 1.0 → 0.3."""
    t = np.arange(1, steps + 1)
    if method == "blade":
        return 1.0 + 0.005 * np.sin(t) + 0.01 * seed
    return 1.0 - 0.7 * (t - 1) / (steps - 1) + 0.01 * seed


def build_tree(root: Path) -> Path:
    exp = resolve(CONFIG)
    for seed in (0, 1):
        write_eval(root, "none", "sft", seed, per_user("sft", seed), 1.0)
        write_eval(root, "none", "sft", seed, per_user("sft", seed), 1.0, sample=True)
        for method in ("blade", "blade_static"):
            write_eval(root, "ndcg", method, seed, per_user(method, seed), 1.0,
                       extra={"selection/step": SELECTED[method][seed], "selection/mde": 0.01})
            write_eval(root, "ndcg", method, seed, sampled_blade(seed) if method == "blade"
                       else per_user(method, seed), 1.0, sample=True)
            run = root / "models" / "fake" / "ndcg" / method / f"seed{seed}"
            run.mkdir(parents=True, exist_ok=True)
            s = spread(method, seed)
            steps = np.arange(1, len(s) + 1)
            pd.DataFrame({"step": steps, "loss": 1 / steps, "grad_norm": s, "grad_norm_align": 0.5 * s,
                          "weight_spread": s, "ess": 8 - s, "saturated_frac": 1 - s, "signal_std": 2 * s,
                          "kl": 0.01 * steps, "reward_mean": 0.3 + 0.001 * steps,
                          "ref_bon_reward": 0.4 + 0.002 * np.sin(steps),  # above BLADE's training reward
                          "tied_frac": (0.2 + 0.1 * seed) if method == "blade" else 0.9}
                         ).to_parquet(run / "diagnostics.parquet")
            (run / "align_config.json").write_text(json.dumps({"method": exp.methods[method],
                                                               "align": {"group_size": 8}, "seed": seed}))
            (run / "run_info.json").write_text(json.dumps({"tags": {"git_commit": "abc123"}}))
            curve = root / "curves" / "fake" / "ndcg" / method / f"seed{seed}.parquet"
            curve.parent.mkdir(parents=True, exist_ok=True)
            top = 0.6 if method == "blade" else 0.4
            pd.DataFrame({"step": [0, 25, 50], "ndcg@10": [0.3, (0.3 + top) / 2, top + 0.01 * seed]}).to_parquet(curve)
        for n in (1, 8):
            for kind in ("bon", "oracle_bon"):
                write_eval(root, "ndcg", f"{kind}_n{n}", seed, per_user(f"{kind}_n{n}", seed), float(n))
    for ref in ("mostpop", "cooc"):
        write_eval(root, "none", ref, 0, per_user(ref, 0), None)
    bench = root / "benchmarks" / "align" / "fake" / "ndcg" / "blade"
    bench.mkdir(parents=True)
    header = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"
    for seed, (sec, rss) in enumerate([(10.0, 500.0), (14.0, 700.0)]):
        (bench / f"seed{seed}.tsv").write_text(header + f"{sec}\t0:00:10\t{rss}\t1\t1\t1\t0\t0\t90\t{sec * 2}\n")
    (root / "benchmarks" / "prepare").mkdir(parents=True)
    (root / "benchmarks" / "prepare" / "fake.tsv").write_text(header + "3.0\t0:00:03\t100.5\t1\t1\t1\t0\t0\t90\t2\n")
    return root


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    return build_tree(tmp_path_factory.mktemp("results"))


@pytest.fixture(scope="module")
def exp():
    return resolve(CONFIG)


@pytest.fixture(scope="module")
def sig(tree, exp) -> pd.DataFrame:
    frame, missing = significance.significance(tree, exp, resamples=999)
    assert missing == []
    return frame


def hand_pooled(method: str, metric: str, seeds=(0, 1)) -> np.ndarray:
    return np.mean([per_user(method, s)[metric].to_numpy() for s in seeds], axis=0)


# ------------------------------------------------------------------------------- significance
def test_significance_matches_scipy_on_hand_pooled_arrays(sig):
    blade_vs_cooc = sig[(sig["baseline"] == "cooc") & (sig["metric"] == "ndcg@10")].iloc[0]
    x, y = hand_pooled("blade", "ndcg@10"), hand_pooled("cooc", "ndcg@10", seeds=(0,))  # references: seed 0 only
    ref = stats.ttest_rel(x, y)
    assert blade_vs_cooc["p_ttest"] == pytest.approx(ref.pvalue, rel=1e-9)
    assert blade_vs_cooc["t_stat"] == pytest.approx(ref.statistic, rel=1e-9)
    d = x - y
    assert blade_vs_cooc["diff"] == pytest.approx(d.mean())
    assert blade_vs_cooc["d_z"] == pytest.approx(d.mean() / d.std(ddof=1))
    half = stats.t.ppf(0.975, U - 1) * d.std(ddof=1) / math.sqrt(U)
    assert (blade_vs_cooc["ci_low"], blade_vs_cooc["ci_high"]) == pytest.approx((d.mean() - half, d.mean() + half))
    assert blade_vs_cooc["seeds_blade"] == 2 and blade_vs_cooc["seeds_baseline"] == 1
    assert blade_vs_cooc["significant"] and blade_vs_cooc["better"] == "blade"


def test_holm_and_p_values_are_valid(sig):
    assert set(sig["baseline"]) == {"sft", "mostpop", "cooc", "blade_static", "bon_n8"}  # no oracle, BoN at N=8 only
    for col in ("p_ttest", "p_perm", "p_ttest_holm", "p_perm_holm"):
        assert sig[col].between(0, 1).all(), col
    assert (sig["p_ttest_holm"] >= sig["p_ttest"] - 1e-15).all()
    assert (sig["p_perm_holm"] >= sig["p_perm"] - 1e-15).all()
    one = sig[sig["baseline"] == "sft"].set_index("metric")
    assert one["p_ttest_holm"].to_numpy() == pytest.approx(multipletests(one["p_ttest"], method="holm")[1])
    # a lower-is-better metric: BLADE's MGU is lower, so BLADE is the better one
    assert one.loc["mgu_pop_user@10", "better"] == "blade" and not one.loc["mgu_pop_user@10", "higher_is_better"]


def test_sign_flip_equals_scipy_exact_permutation_test():
    rng = np.random.default_rng(5)
    d = rng.normal(0.3, 1.0, size=(9, 2))
    ours = significance.sign_flip_pvalues(d, resamples=10_000)
    for j in range(2):
        ref = stats.permutation_test((d[:, j],), lambda a, axis: np.mean(a, axis=axis), permutation_type="samples",
                                     n_resamples=np.inf, alternative="two-sided")
        assert ours[j] == pytest.approx(ref.pvalue, rel=1e-12)
    # randomised: never 0, and a large shift is detected
    big = significance.sign_flip_pvalues(np.full((50, 1), 1.0) + rng.normal(0, 0.1, (50, 1)), resamples=999)
    assert big[0] == pytest.approx(1 / 1000)
    zero = significance.sign_flip_pvalues(np.zeros((30, 1)), resamples=999)
    assert zero[0] == 1.0


def test_degenerate_differences_do_not_break_holm():
    a = pd.DataFrame({"m": [0.5, 0.5, 0.5], "n": [1.0, 0.0, 1.0]})
    b = pd.DataFrame({"m": [0.5, 0.5, 0.5], "n": [0.0, 0.0, 0.0]})
    out = significance.paired_tests(a, b, ["m", "n"], resamples=99).set_index("metric")
    assert out.loc["m", "p_ttest"] == 1.0 and out.loc["m", "d_z"] == 0.0
    assert out[["p_ttest_holm", "p_perm_holm"]].apply(lambda c: c.between(0, 1)).all().all()


# -------------------------------------------------------------------------------- main table
def test_main_table_rows_columns_and_values(tree, exp, sig):
    tables, missing = main_table.build(tree, exp, sig)
    assert missing == [] and len(tables) == 1
    frame = tables[0]["frame"].set_index("method")
    assert list(frame.index) == ["sft", "mostpop", "cooc", "bon_n8", "oracle_bon_n8", "blade_static", "blade"]
    metrics = ["recall@5", "recall@10", "recall@20", "ndcg@5", "ndcg@10", "ndcg@20", "mgu_pop@10", "dgu_pop@10",
               "coverage@10", "ild@10", "tail_share@10"]
    assert tables[0]["metrics"] == metrics
    a, b = per_user("blade", 0)["ndcg@10"].mean(), per_user("blade", 1)["ndcg@10"].mean()
    assert frame.loc["blade", "ndcg@10"] == pytest.approx((a + b) / 2)
    assert frame.loc["blade", "ndcg@10_std"] == pytest.approx(abs(a - b) / math.sqrt(2))  # sample std, 2 seeds
    assert frame.loc["cooc", "n_seeds"] == 1 and math.isnan(frame.loc["cooc", "ndcg@10_std"])
    assert frame.loc["blade", "mgu_pop@10"] == pytest.approx(MGU["blade"] + 0.0005)  # pooled number from metrics.json
    # bold: the oracle is excluded (it has the highest NDCG); MGU is lower-is-better
    assert "ndcg@10" in frame.loc["blade", "bold"].split(";") and "ndcg@10" not in frame.loc["oracle_bon_n8", "bold"]
    assert "mgu_pop@10" in frame.loc["blade", "bold"].split(";")
    assert "coverage@10" in frame.loc["oracle_bon_n8", "bold"].split(";") or "coverage@10" in frame.loc["blade", "bold"]
    # the significance marker: BLADE vs the best equal-cost baseline (cooc) on NDCG@10; none on coverage
    marked = frame.loc["blade", "marked"].split(";")
    assert "ndcg@10" in marked and "coverage@10" not in marked and frame.loc["sft", "marked"] == ""
    md = main_table.to_markdown(tables, "test")
    assert "**0.5" in md and "†" in md and "Missing: none" in md
    # the selected-step column: mean over seeds, and how many seeds kept the SFT start
    assert frame.loc["blade", "selected_step"] == 10 and frame.loc["blade", "seeds_at_start"] == 1
    assert "| 10 (1/2 at 0; MDE 0.0100) |" in md and "| 0 (2/2 at 0; MDE 0.0100) |" in md and "selected step" in md
    assert math.isnan(frame.loc["sft", "selected_step"])
    assert "\\textbf{" in main_table.to_latex(tables, "test")


def test_main_table_cli_writes_three_files(tree, sig, tmp_path):
    sig.to_csv(tmp_path / "sig.csv", index=False)
    main_table.main(["--results", str(tree), "--config-json", json.dumps(CONFIG), "--significance",
                     str(tmp_path / "sig.csv"), "--out", str(tmp_path / "main")])
    csv = pd.read_csv(tmp_path / "main.csv")
    assert {"dataset", "reward_setting", "method", "n_seeds", "ndcg@10", "ndcg@10_std", "bold", "marked"} <= set(csv)
    assert len(csv) == 7 and (tmp_path / "main.tex").stat().st_size > 0 and (tmp_path / "main.md").is_file()


# ------------------------------------------------------------------------------------- claims
def test_claims_decided_by_the_rules(tree, exp, sig):
    cases, missing = claims.claims(tree, exp, sig)
    verdict = claims.verdicts(cases)
    assert missing == []
    assert verdict["6.1"] == "reproduced"        # BLADE ≫ cooc (best baseline) on NDCG@10
    assert verdict["6.4"] == "not reproduced"    # BLADE's curve ends at 0.6, Oracle BoN@8 is 0.95
    training = next(c for c in cases if c.case.endswith("training contexts"))
    assert training.verdict == "not reproduced"  # reward_mean 0.35 at the end < ref_bon_reward 0.4
    diffs = [0.3 + 0.001 * t - 0.4 - 0.002 * np.sin(t) for t in range(46, 51) for _ in (0, 1)]
    assert f"diff {np.mean(diffs):.4f}" in training.evidence
    assert training.mde == f"{claims.paired_mde(np.array(diffs)):.4f}" and "(MDE " in training.shown
    assert verdict["6.5"] == "inconclusive"      # one sample a hair below BoN@8, far from significant
    assert verdict["6.3"] == "reproduced"        # static spread falls ~65%, BLADE's ~0%
    decay = [c for c in cases if c.claim == "6.3"]
    assert all("BLADE's groups with all-equal rewards: 25.0%" in c.evidence for c in decay)  # mean of 0.2, 0.3
    assert verdict["6.6"] == "reproduced"        # BLADE ≫ estimator: static
    assert verdict["6.2"] == "inconclusive"      # no list-wise setting was run
    md = claims.to_markdown(cases, missing)
    assert "| §6.1 |" in md and "STATIC_FALL" not in md and "Rules" in md and "fall" in md
    # every verdict that is not "reproduced" carries its MDE; a reproduced one does not need it
    for case in cases:
        assert ("(MDE " in case.shown) == (case.verdict != "reproduced"), case
    cost = next(c for c in cases if c.claim == "6.5")
    d = sampled_blade(0)["ndcg@10"].to_numpy() - per_user("bon_n8", 0)["ndcg@10"].to_numpy()  # both seeds alike
    assert cost.mde == f"{claims.paired_mde(d):.4f}"
    assert f"inconclusive (MDE {cost.mde})" in md


def test_claim_rules_on_crafted_numbers():
    assert claims.compare_verdict(0.5, 0.4, 0.01) == "reproduced"
    assert claims.compare_verdict(0.4, 0.5, 0.01) == "not reproduced"
    assert claims.compare_verdict(0.5, 0.4, 0.2) == "inconclusive"
    assert claims.compare_verdict(0.1, 0.2, 0.01, higher=False) == "reproduced"  # lower-is-better
    assert claims.fall([1.0] * 5 + [0.5] * 5) == pytest.approx(0.5)
    assert claims.decay_verdict(0.05, [0.3]) == "reproduced"
    assert claims.decay_verdict(0.25, [0.3]) == "not reproduced"
    assert claims.decay_verdict(0.05, [0.05, 0.08]) == "not reproduced"  # nothing decays: no problem to fix
    assert claims.decay_verdict(0.15, [0.3]) == "inconclusive"
    assert claims.decay_verdict(0.05, []) == "inconclusive"
    assert claims.bound_verdict([0.3, 0.5, 0.7], 0.6) == "reproduced"
    assert claims.bound_verdict([0.3, 0.7, 0.5], 0.6) == "inconclusive"
    assert claims.bound_verdict([0.3, 0.5], 0.6) == "not reproduced"
    assert claims.cost_verdict(0.5, 0.5, 0.9) == "reproduced"
    assert claims.cost_verdict(0.4, 0.5, 0.01) == "not reproduced"
    assert claims.listwise_verdict([("blade", True), ("blade", True)], 0.01, [0.02, 0.05]) == "reproduced"
    assert claims.listwise_verdict([("blade", True)], 0.06, [0.02, 0.05]) == "not reproduced"
    assert claims.listwise_verdict([("baseline", True)], 0.0, [0.02]) == "not reproduced"
    assert claims.listwise_verdict([("blade", False)], 0.01, [0.02]) == "inconclusive"
    assert claims.listwise_verdict([("blade", True)], 0.01, []) == "inconclusive"
    assert claims.overall(["reproduced", "reproduced"]) == "reproduced"
    assert claims.overall(["not reproduced", "inconclusive"]) == "not reproduced"
    assert claims.overall(["reproduced", "not reproduced"]) == "inconclusive"
    assert claims.overall([]) == "inconclusive"
    assert claims.own_reward_verdict([("blade", True), ("blade", True)]) == "reproduced"
    assert claims.own_reward_verdict([("blade", True), ("baseline", True)]) == "not reproduced"
    assert claims.own_reward_verdict([("blade", True), ("blade", False)]) == "inconclusive"
    assert claims.training_verdict([0.1, 0.12, 0.11, 0.09])[0] == "reproduced"
    assert claims.training_verdict([-0.1, -0.12, -0.11, -0.09])[0] == "not reproduced"
    assert claims.training_verdict([0.1, -0.1, 0.05, -0.06])[0] == "inconclusive"


# ------------------------------------------------------------------------ listwise, ablation
def test_listwise_and_ablation_tables(tree, exp, sig):
    frame, missing = listwise.listwise(tree, exp)
    assert missing == [] and list(frame["method"]) == ["sft", "blade", "blade_static"]
    blade = frame.set_index("method").loc["blade"]
    sft_ndcg = np.mean([per_user("sft", s)["ndcg@10"].mean() for s in (0, 1)])
    assert blade["target_metric"] == "ndcg@10" and blade["accuracy_paid"] == pytest.approx(sft_ndcg - blade["accuracy"])
    assert bool(frame.set_index("method").loc["blade_static", "static"]) and not bool(blade["static"])
    assert listwise.targets(resolve({**CONFIG, "rewards": {"ndcg": {"weights": {"ndcg": 1, "fairness": 0.5}}}}),
                            "ndcg", 10) == ["mgu_pop@10", "dgu_pop@10"]
    table, missing = ablation.ablation(tree, exp, sig)
    rows = table.set_index("method")
    assert list(table["method"]) == ["blade", "blade_static"]
    assert rows.loc["blade", "group"] == "default" and rows.loc["blade_static", "group"] == "estimator"
    assert rows.loc["blade_static", "setting"] == "estimator=static"
    assert rows.loc["blade_static", "options_from"].endswith("align_config.json")
    assert rows.loc["blade_static", "weight_spread_end"] == pytest.approx(
        np.mean([spread("blade_static", s)[-5:].mean() for s in (0, 1)]))
    assert "estimator=static" in ablation.to_markdown(table, missing, 10)


# ----------------------------------------------------------------------------- partial runs
def test_missing_runs_are_reported_not_dropped(tree, exp, tmp_path):
    import shutil

    partial = tmp_path / "partial"
    shutil.copytree(tree, partial)
    shutil.rmtree(partial / "eval/fake/ndcg/blade_static/seed1")         # one seed of a method failed
    shutil.rmtree(partial / "eval/fake/none/cooc")                        # a whole row failed
    shutil.rmtree(partial / "models/fake/ndcg/blade_static/seed1")
    sig, missing = significance.significance(partial, exp, resamples=99)
    assert "fake/ndcg/blade_static/seed1" in missing and "fake/none/cooc/seed0" in missing
    assert "cooc" not in set(sig["baseline"]) and sig[sig["baseline"] == "blade_static"]["seeds_baseline"].eq(1).all()
    tables, missing = main_table.build(partial, exp, sig)
    frame = tables[0]["frame"].set_index("method")
    assert frame.loc["cooc", "n_seeds"] == 0 and math.isnan(frame.loc["cooc", "ndcg@10"])   # kept, empty
    assert frame.loc["blade_static", "n_seeds"] == 1 and frame.loc["blade_static", "seeds_missing"] == "1"
    md = main_table.to_markdown(tables, "test")
    assert "Missing (2): fake/ndcg/blade_static/seed1, fake/none/cooc/seed0" in md
    cases, missing = claims.claims(partial, exp, sig)
    assert "fake/ndcg/blade_static/seed1/diagnostics" in missing
    assert "fake/ndcg/blade_static/seed1" in claims.to_markdown(cases, missing)


# ----------------------------------------------------------------------------------- figures
def test_figures_are_written_and_not_blank(tree, exp, tmp_path):
    import matplotlib.image

    paths, missing = figures.figures(tree, exp, tmp_path)
    assert missing == []
    names = {p.name for p in paths}
    assert names == {f"{n}.{e}" for n in figures.FIGURES for e in ("png", "pdf")}
    for path in paths:
        assert path.stat().st_size > 1000, path
        if path.suffix == ".png":
            pixels = matplotlib.image.imread(path)
            assert pixels.std() > 0.05, path  # lines and text, not a blank canvas
    data = figures.diagnostics_data(tree, exp, ["weight_spread"], True, [])
    assert set(data["method"]) == {"blade", "blade_static"}


# ----------------------------------------------------------------------------------- runtime
def test_runtime_aggregates_benchmarks(tree):
    jobs = runtime.read_benchmarks(tree / "benchmarks")
    assert sorted(jobs["job"]) == ["fake", "fake/ndcg/blade/seed0", "fake/ndcg/blade/seed1"]
    rules = runtime.per_rule(jobs).set_index("rule")
    assert rules.loc["align", "total_s"] == 24.0 and rules.loc["align", "peak_rss_mb"] == 700.0
    assert rules.loc["align", "jobs"] == 2 and rules.loc["prepare", "mean_s"] == 3.0
    assert "| **all** | 3 | 27.0 |" in runtime.to_markdown(jobs)


def test_expected_rows_follow_the_config(exp):
    rows = expected_rows(exp, "fake", "ndcg")
    assert [(r.method, r.directory, r.seeds) for r in rows[:3]] == [("sft", "none", (0, 1)), ("mostpop", "none", (0,)),
                                                                    ("cooc", "none", (0,))]
    assert {r.method for r in rows} >= {"bon_n1", "bon_n8", "oracle_bon_n1", "oracle_bon_n8", "blade", "blade_static"}
    assert not any(r.method.startswith("bon") for r in expected_rows(exp, "fake", "ndcg", split="valid"))


# --------------------------------------------------------------------------------- snapshots
def test_snapshot_curve_scores_each_snapshot_on_test(tmp_path):
    import torch

    from analysis import snapshots
    from blade.data import load_prepared
    from blade.metrics import ndcg_at_k, recall_at_k
    from blade.model.config import PolicyConfig
    from blade.model.policy import Policy
    from blade.data import PreparedData
    from blade.eval.lists import policy_lists
    from tests.helpers import tiny_dataset

    data = tiny_dataset(tmp_path / "data")
    items, splits, _ = load_prepared(data)
    run = tmp_path / "run"
    torch.manual_seed(0)
    policy = Policy.build(PolicyConfig(codec="atomic", layers=1, hidden=16, heads=2, kv_heads=1, intermediate=32,
                                       device="cpu"), items)
    policy.save(run / "snapshots" / "step000000")
    with torch.no_grad():  # a different policy at step 4
        for p in policy.model.parameters():
            p.add_(torch.randn_like(p))
    policy.save(run / "snapshots" / "step000004")
    (run / "align_config.json").write_text(json.dumps({"reward": {"weights": {"ndcg": 1.0}}, "align": {"k": 10}}))
    out = tmp_path / "curve.parquet"
    snapshots.main(["--run", str(run), "--data", str(data), "--config-json",
                    json.dumps({"evaluate": {"k": 10, "ks": [5, 10], "batch_size": 64}}), "--out", str(out)])
    curve = pd.read_parquet(out)
    assert curve["step"].tolist() == [0, 4]
    targets = splits["test"]["target"].to_numpy()
    for step, line in zip((0, 4), curve.itertuples(index=False)):
        lists, _ = policy_lists(Policy.load(run / "snapshots" / f"step{step:06d}"), PreparedData.load(data), "test", 10, 64)
        row = dict(zip(curve.columns, line))
        assert row["ndcg@10"] == pytest.approx(ndcg_at_k(lists, targets, 10).mean())
        assert row["recall@5"] == pytest.approx(recall_at_k(lists, targets, 5).mean())
        assert row["reward"] == pytest.approx(row["ndcg@10"])  # the `ndcg` reward on K = 10 items is NDCG@10
        assert row["invalid_rate"] == 0 and "mgu_pop@10" in row
    assert curve.loc[0, "ndcg@10"] != curve.loc[1, "ndcg@10"] or curve.loc[0, "recall@10"] != curve.loc[1, "recall@10"]
    with pytest.raises(Exception, match="no snapshots"):
        snapshots.snapshot_dirs(tmp_path)


def test_snapshot_curve_reads_back_an_already_scored_policy(tmp_path, monkeypatch):
    """A snapshot with the fingerprint of a policy already scored on test (the selected ``best/``,
    the SFT start) takes that policy's lists: the same numbers, no second decoding; any other
    snapshot is decoded."""
    import torch

    from blade.data import PreparedData
    from blade.eval import lists as eval_lists
    from blade.eval.config import EvalConfig
    from blade.eval.scoring import policy_fingerprint, score_row, snapshot_curve
    from blade.model.config import PolicyConfig
    from blade.model.policy import Policy
    from blade.data import load_prepared
    from tests.helpers import tiny_dataset

    data_dir = tiny_dataset(tmp_path / "data")
    items, _, _ = load_prepared(data_dir)
    data = PreparedData.load(data_dir)
    run = tmp_path / "run"
    torch.manual_seed(0)
    policy = Policy.build(PolicyConfig(codec="atomic", layers=1, hidden=16, heads=2, kv_heads=1, intermediate=32,
                                       device="cpu"), items)
    policy.save(run / "snapshots" / "step000000")
    with torch.no_grad():
        for p in policy.model.parameters():
            p.add_(torch.randn_like(p))
    policy.save(run / "snapshots" / "step000004")
    policy.save(run / "best")  # selected at step 4
    (run / "align_config.json").write_text(json.dumps({"reward": {"weights": {"ndcg": 1.0}}, "align": {"k": 10}}))
    evaluation = EvalConfig(k=10, ks=[5, 10], batch_size=64, splits=["test"], samples=0)
    score_row(tmp_path / "eval", data, evaluation, 0, "d", "m", None, policy=Policy.load(run / "best"))
    assert policy_fingerprint(run / "best") == policy_fingerprint(run / "snapshots" / "step000004")
    assert policy_fingerprint(run / "best") != policy_fingerprint(run / "snapshots" / "step000000")
    plain = snapshot_curve(run, data, "test", evaluation)

    decoded = []
    real = eval_lists.policy_lists
    monkeypatch.setattr(eval_lists, "policy_lists", lambda *a, **kw: decoded.append(1) or real(*a, **kw))
    reused = snapshot_curve(run, data, "test", evaluation, scored={run / "best": tmp_path / "eval"})
    assert len(decoded) == 1  # step 0 only: step 4 is best/'s lists
    metrics = [c for c in plain.columns if not c.startswith("cost/")]
    pd.testing.assert_frame_equal(plain[metrics], reused[metrics])
    stored = json.loads((tmp_path / "eval" / "test" / "cost.json").read_text())
    assert reused.loc[1, "cost/tokens_per_user"] == stored["tokens_per_user"]
    # a folder whose files differ is not taken for the policy, whatever its name
    (run / "best" / "policy.json").write_text((run / "best" / "policy.json").read_text().replace("16", "17", 1))
    decoded.clear()
    snapshot_curve(run, data, "test", evaluation, scored={run / "best": tmp_path / "eval"})
    assert len(decoded) == 2


# ------------------------------------------------------------------------------ report pages
def test_markdown_pages_render_as_html(tree, exp):
    from analysis.common import markdown, markdown_to_html
    from analysis.provenance import provenance

    page = markdown_to_html("# T <x>\n\n" + markdown(["a", "b|c"], [["**1**", "`x`"]]) + "- note\n  more\n", "t")
    assert "<h1>T &lt;x&gt;</h1>" in page and "<th>b|c</th>" in page and "<td><strong>1</strong></td>" in page
    assert "<code>x</code>" in page and "<li>note more</li>" in page
    text = provenance(tree, exp, CONFIG)
    assert "| abc123 | no | 4 |" in text and "git commit:" in text and "kappa0: 4.0" in text


def test_the_sweep_trains_under_the_first_reward_setting_only():
    config = {**CONFIG, "run": {**CONFIG["run"], "rewards": ["ndcg", "ndcg+fairness"], "sweep": ["blade_nig"]},
              "rewards": {"ndcg": {"weights": {"ndcg": 1.0}}, "ndcg+fairness": {"weights": {"ndcg": 1.0, "fairness": 0.5}}},
              "methods": {**CONFIG["methods"], "blade_nig": {"objective": "blade", "estimator": "nig"}}}
    exp = resolve(config)
    assert exp.aligned == ["blade", "blade_static", "blade_nig"]
    assert exp.methods_for("ndcg") == exp.aligned and exp.methods_for("ndcg+fairness") == ["blade", "blade_static"]
    first = {r.method: r.role for r in expected_rows(exp, "fake", "ndcg")}
    assert first["blade_nig"] == "variant"
    assert "blade_nig" not in {r.method for r in expected_rows(exp, "fake", "ndcg+fairness")}
    with pytest.raises(ConfigError, match="run.sweep names 'blade_dp'"):
        resolve({**config, "run": {**config["run"], "sweep": ["blade_dp"]}})


def test_the_sweep_also_trains_under_sweep_rewards():
    config = {**CONFIG, "run": {**CONFIG["run"], "rewards": ["ndcg", "graded", "ndcg+fairness"],
                                "sweep": ["blade_nig"], "sweep_rewards": ["graded"]},
              "rewards": {"ndcg": {"weights": {"ndcg": 1.0}}, "graded": {"weights": {"future": 1.0}},
                          "ndcg+fairness": {"weights": {"ndcg": 1.0, "fairness": 0.5}}},
              "methods": {**CONFIG["methods"], "blade_nig": {"objective": "blade", "estimator": "nig"}}}
    exp = resolve(config)
    assert "blade_nig" in exp.methods_for("graded") and "blade_nig" not in exp.methods_for("ndcg+fairness")
    assert {r.method: r.role for r in expected_rows(exp, "fake", "graded")}["blade_nig"] == "variant"
    # graded accuracy is a pure-accuracy setting: the accuracy claims are judged under it
    assert claims.pure_accuracy(exp, "graded") and not claims.pure_accuracy(exp, "ndcg+fairness")
    with pytest.raises(ConfigError, match="run.sweep_rewards names 'nope'"):
        resolve({**config, "run": {**config["run"], "sweep_rewards": ["nope"]}})


def test_vs_sft_tests_every_aligned_row_against_its_start(tree, exp):
    from scipy import stats
    from statsmodels.stats.multitest import multipletests

    from analysis import vs_sft
    from blade.power import paired_mde

    frame, missing = vs_sft.vs_sft(tree, exp)
    assert missing == [] and set(frame["method"]) == {"blade", "blade_static"} and set(frame["metric"]) == {"ndcg@10"}
    sft = hand_pooled("sft", "ndcg@10")
    p = {m: stats.ttest_rel(hand_pooled(m, "ndcg@10"), sft).pvalue for m in ("blade", "blade_static")}
    holm = dict(zip(p, multipletests(list(p.values()), method="holm")[1]))
    for line in frame.itertuples():
        mine = hand_pooled(line.method, "ndcg@10")
        assert line.diff == pytest.approx((mine - sft).mean())
        assert line.p_ttest == pytest.approx(p[line.method]) and line.p_holm == pytest.approx(holm[line.method])
        assert line.mde == pytest.approx(paired_mde(mine, sft))
    blade = frame.set_index("method").loc["blade"]
    assert blade["significant"] and blade["selected_step"] == 10 and blade["seeds_at_start"] == 1
    md = vs_sft.to_markdown(frame, missing, "test")
    assert "| blade | ndcg@10 |" in md and "10 (1/2 at 0)" in md and "higher" in md
