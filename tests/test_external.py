"""External rows (``evaluate.external``): recommendations made by another codebase, scored by
`blade evaluate` (rule score_external) and put in the tables, the significance tests, the claims
and the cost–quality figure like every row.

One DAG run (module fixture) on the .test config narrowed to what an external row meets — BLADE
under one reward setting, the test split, one reference — brings in two external rows: ``pop``,
a byte-for-byte copy of the mostpop reference's lists without a cost sidecar (cost unknown; its
numbers must equal mostpop's), and ``rand``, seeded random item ids with a cost.json saying one
sample per user (an equal-cost baseline). The negative checks run only the external rows' jobs.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from scipy import stats

from analysis import claims
from analysis.common import equal_cost_methods, expected_rows
from analysis.figures import external_points
from analysis.rows import equal_cost
from blade.errors import ConfigError
from blade.eval.config import ExternalRow
from blade.experiment import resolve
from tests.conftest import ROOT

TEST_CONFIG = str(ROOT / ".test" / "config.yaml")
NARROW = {"run": {"methods": ["blade"], "rewards": ["ndcg"], "sweep": []},
          "evaluate": {"splits": ["test"], "references": ["mostpop"], "bon_n": []}}
EXTERNAL = {"pop": {"path": "external/{dataset}/pop_{split}.jsonl"},       # seed 0 only (no {seed})
            "rand": {"path": "external/rand_{split}_seed{seed}.jsonl"}}    # seeds [] = run.seeds
COST = {"samples_per_user": 1, "tokens_per_user": 20, "seconds_per_user": 0.001}
ROW = "results/eval/tiny/none/{name}/seed0/test"


def snakemake(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile"), "--directory",
                           str(workdir), "--cores", "2", *args], capture_output=True, text=True, cwd=ROOT)


def write_config(path: Path, external: dict, **evaluate) -> str:
    config = {"run": NARROW["run"], "evaluate": {**NARROW["evaluate"], **evaluate, "external": external}}
    path.write_text(yaml.safe_dump(config))
    return str(path)


def config_of(external: dict, **changes) -> dict:
    base = yaml.safe_load(Path(TEST_CONFIG).read_text())
    base["run"].update(NARROW["run"])
    base["evaluate"].update({**NARROW["evaluate"], "external": external})
    return {**base, **changes}


@pytest.fixture(scope="module")
def dag(tmp_path_factory):
    """The narrowed DAG with the two external rows; the files are written after `prepare` (they
    need the split's rows and the catalogue), so the DAG runs in two steps."""
    work = tmp_path_factory.mktemp("external")
    extra = write_config(work / "extra.yaml", EXTERNAL)
    # step 1: the data and the mostpop lists `pop` copies. The external files are missing now, and
    # the DAG still builds: they are no inputs (their job would fail, and it is not asked for)
    first = snakemake(work, f"{ROW.format(name='mostpop')}/recs.jsonl", "--configfile", TEST_CONFIG, extra)
    assert first.returncode == 0, first.stderr[-3000:]
    (work / "external/tiny").mkdir(parents=True)
    shutil.copyfile(work / ROW.format(name="mostpop") / "recs.jsonl", work / "external/tiny/pop_test.jsonl")
    items = pd.read_parquet(work / "results/data/tiny/items.parquet")["item_id"].to_numpy()
    rows = len(pd.read_parquet(work / "results/data/tiny/test.parquet"))
    rng = np.random.default_rng(0)
    lines = [json.dumps({"row": r, "items": rng.choice(items, 20, replace=False).tolist()}) for r in range(rows)]
    (work / "external/rand_test_seed0.jsonl").write_text("\n".join(lines) + "\n")
    (work / "external/rand_test_seed0.cost.json").write_text(json.dumps(COST))
    done = snakemake(work, "--configfile", TEST_CONFIG, extra)
    assert done.returncode == 0, done.stderr[-3000:]
    return work, extra


# ------------------------------------------------------------------------- the config, no DAG
def test_external_row_seeds_paths_and_cost_sidecar():
    seeded = ExternalRow(path="ext/{dataset}/{split}_seed{seed}.jsonl")
    assert seeded.seeds_for([0, 1, 2]) == (0, 1, 2)  # [] = run.seeds where the path holds {seed}
    assert ExternalRow(path="ext/{split}_seed{seed}.jsonl", seeds=[3, 5]).seeds_for([0]) == (3, 5)
    assert ExternalRow(path="ext/{split}.jsonl").seeds_for([0, 1]) == (0,)  # one file: seed 0, like a reference
    assert seeded.path_for("tiny", "test", 2) == "ext/tiny/test_seed2.jsonl"
    assert ExternalRow.cost_path("ext/tiny/test_seed2.jsonl") == "ext/tiny/test_seed2.cost.json"
    # another run of this suite: its row folder's cost.json (blade score writes recs.jsonl beside it)
    assert ExternalRow.cost_path("results/eval/d/none/sft/seed0/test/recs.jsonl") == \
        "results/eval/d/none/sft/seed0/test/cost.json"
    for bad in ({"path": "ext/test.jsonl"}, {"path": "ext/{split}.jsonl", "seeds": [1]},
                {"path": "ext/{split}_{seed}.jsonl", "seeds": [1, 1]}):
        with pytest.raises(ValueError):
            ExternalRow(**bad)


def test_external_rows_are_named_checked_and_expected():
    with pytest.raises(ConfigError, match="evaluate.external.mostpop: 'mostpop' is already a row"):
        resolve(config_of({"mostpop": {"path": "x/{split}.jsonl"}}))
    with pytest.raises(ConfigError, match=r"evaluate.external.mine.seed: unknown option — did you mean 'seeds'"):
        resolve(config_of({"mine": {"path": "x/{split}.jsonl", "seed": [0]}}))
    exp = resolve(config_of({"mine": {"path": "x/{split}_{seed}.jsonl", "seeds": [0, 4]}, **EXTERNAL}))
    rows = {r.method: r for r in expected_rows(exp, "tiny", "ndcg")}
    assert [(rows[m].role, rows[m].directory, rows[m].seeds) for m in ("mine", "pop", "rand")] == [
        ("external", "none", (0, 4)), ("external", "none", (0,)), ("external", "none", (0,))]
    # equal-cost: by role, and an external row only with one sample per user in every seed's cost.json
    assert equal_cost("sft") and equal_cost("baseline") and not equal_cost("bon", [1])
    assert equal_cost("external", [1, 1.0]) and not equal_cost("external", [])
    assert not equal_cost("external", [1, math.nan]) and not equal_cost("external", [4])
    per_seed = pd.DataFrame({"method": ["mine", "mine", "rand", "pop"], "cost/samples_per_user": [1, 1, 2, math.nan]})
    assert equal_cost_methods([rows[m] for m in ("sft", "mine", "pop", "rand")], per_seed) == ["sft", "mine"]


def test_the_dag_scores_every_split_and_seed_of_an_external_row(tmp_path):
    """A dry run: one job per split of evaluate.splits and seed of the row; a missing file does
    not stop the DAG from being built."""
    extra = write_config(tmp_path / "extra.yaml", {"mine": {"path": "x/{split}_{seed}.jsonl", "seeds": [0, 3]},
                                                   "one": {"path": "x/one_{split}.jsonl"}},
                         splits=["valid", "test"])
    plan = snakemake(tmp_path, "-n", "--configfile", TEST_CONFIG, extra)
    assert plan.returncode == 0, plan.stderr[-3000:]
    jobs = {line.strip() for line in plan.stdout.splitlines() if "external=" in line}
    assert jobs == {f"wildcards: dataset=tiny, external={name}, seed={seed}, split={split}"
                    for name, seeds in (("mine", (0, 3)), ("one", (0,))) for seed in seeds
                    for split in ("valid", "test")}


# ------------------------------------------------------------------------------- the DAG run
@pytest.mark.slow
def test_external_rows_reach_every_table(dag):
    work, _ = dag
    res = work / "results"
    pop, rand, mostpop = (work / ROW.format(name=n) for n in ("pop", "rand", "mostpop"))
    # copied in beside the metrics; the sidecar as cost.json, or none (cost unknown)
    assert (pop / "recs.jsonl").read_bytes() == (work / "external/tiny/pop_test.jsonl").read_bytes()
    assert json.loads((rand / "cost.json").read_text()) == COST and not (pop / "cost.json").exists()
    assert json.loads((rand / "metrics.json").read_text())["cost/samples_per_user"] == 1
    assert not any(k.startswith("cost/") for k in json.loads((pop / "metrics.json").read_text()))
    # the copy of mostpop's lists is scored exactly as mostpop: per user and in the main table
    pd.testing.assert_frame_equal(pd.read_parquet(pop / "per_user.parquet"), pd.read_parquet(mostpop / "per_user.parquet"))
    main = pd.read_csv(res / "tables/main.csv").set_index("method")
    assert main.loc[["pop", "rand"], "role"].tolist() == ["external"] * 2
    assert main.loc[["pop", "rand"], "n_seeds"].tolist() == [1, 1]
    metrics = [c for c in main.columns if "@" in c]
    pd.testing.assert_series_equal(main.loc["pop", metrics], main.loc["mostpop", metrics], check_names=False)
    md = (res / "tables/main.md").read_text()
    assert "| pop (external, cost unknown) |" in md and "| rand (external) |" in md
    assert "not equal-cost baselines (their cost.json does not say one sample per user, or there is none): pop." in md
    assert "Missing: none" in md
    listwise = pd.read_csv(res / "tables/listwise.csv")
    assert {"pop", "rand"} <= set(listwise.loc[listwise["role"] == "external", "method"])
    # §6.1: rand (one sample per user) is in the baseline pool; pop (cost unknown) is named, not judged
    main_claim = pd.read_csv(res / "tables/claims.csv").query("claim == 6.1")["evidence"].iloc[0]
    assert "external rows not judged against (cost unknown or above one sample per user): pop " in main_claim
    assert "rand" not in main_claim.split("not judged against")[1]
    assert "External rows (``evaluate.external``, another codebase's lists) in §6.1" in (
        res / "tables/claims.md").read_text()
    assert "External rows" not in claims.rules(external=False)  # a run without them reports as before
    # the figure: rand at its cost, pop off the cost axis
    exp = resolve(config_of(EXTERNAL))
    points = external_points(res, exp, "tiny", "ndcg", "ndcg@10", "test", []).set_index("method")
    assert points.loc["rand", "samples"] == 1 and math.isnan(points.loc["pop", "samples"])
    assert math.isclose(points.loc["pop", "mean"], main.loc["mostpop", "ndcg@10"])
    # every row's metrics reach provenance's inputs (all_metrics): nothing left to do
    assert "Nothing to be done" in snakemake(work, "-n", "--configfile", TEST_CONFIG, dag[1]).stdout


def holm_by_hand(p: np.ndarray) -> np.ndarray:
    """Holm's step-down adjustment: the i-th smallest p times (m − i), running maximum, capped at 1."""
    order = np.argsort(p)
    adjusted = np.maximum.accumulate((len(p) - np.arange(len(p))) * p[order])
    out = np.empty_like(p)
    out[order] = np.minimum(adjusted, 1.0)
    return out


@pytest.mark.slow
@pytest.mark.parametrize("name", ["pop", "rand"])
def test_significance_against_an_external_row_by_hand(dag, name):
    work, _ = dag
    sig = pd.read_csv(work / "results/tables/significance.csv")
    mine = sig[(sig["baseline"] == name) & (sig["reward_setting"] == "ndcg")]
    assert set(mine["role"]) == {"external"} and len(mine) > 1
    blade = pd.read_parquet(work / "results/eval/tiny/ndcg/blade/seed0/test/per_user.parquet")
    other = pd.read_parquet(work / ROW.format(name=name) / "per_user.parquet")
    paired = blade.merge(other, on=["row", "context_id"], suffixes=("_b", "_o"))
    assert len(paired) == len(blade) == 200
    line = mine.set_index("metric").loc["ndcg@10"]
    test = stats.ttest_rel(paired["ndcg@10_b"], paired["ndcg@10_o"])
    assert line["n_users"] == 200 and math.isclose(line["p_ttest"], test.pvalue, rel_tol=1e-9, abs_tol=1e-300)
    assert math.isclose(line["diff"], (paired["ndcg@10_b"] - paired["ndcg@10_o"]).mean(), abs_tol=1e-12)
    assert math.isclose(line["baseline_mean"], other["ndcg@10"].mean(), abs_tol=1e-12)
    # Holm across the metrics of this comparison, recomputed by hand
    tested = mine[np.isfinite(mine["p_ttest"])]
    assert np.allclose(tested["p_ttest_holm"], holm_by_hand(tested["p_ttest"].to_numpy()), rtol=1e-9, atol=0)
    assert (tested["p_ttest_holm"] >= tested["p_ttest"]).all()
    assert bool(line["significant"]) == (line["p_ttest_holm"] < 0.05)


@pytest.mark.slow
def test_bad_external_files_fail_their_own_jobs_and_partial_names_them(dag, tmp_path):
    """A malformed file stops its job with file and line; a missing one names the config key; a
    bad cost sidecar names itself. A partial analysis then builds every table and names them missing."""
    work = tmp_path / "work"
    shutil.copytree(dag[0], work, symlinks=True)  # mtimes kept: the finished rows stay up to date
    (work / "external/bad_test.jsonl").write_text('{"row": 0, "items": [1, 2]}\n{"row": 1, "items": [3]}\n'
                                                  '{"row": 2, "items": [4, oops]}\n')
    shutil.copyfile(work / "external/tiny/pop_test.jsonl", work / "external/badcost_test.jsonl")
    (work / "external/badcost_test.cost.json").write_text('{"samples": 1}')
    bad = {"bad": {"path": "external/bad_{split}.jsonl"}, "absent": {"path": "external/nowhere/{split}.jsonl"},
           "badcost": {"path": "external/badcost_{split}.jsonl"}}
    extra = write_config(tmp_path / "bad.yaml", {**EXTERNAL, **bad})
    targets = [f"{ROW.format(name=n)}/metrics.json" for n in bad]
    done = snakemake(work, *targets, "--keep-going", "--configfile", TEST_CONFIG, extra)
    assert done.returncode != 0
    said = done.stdout + done.stderr
    assert ("evaluate.external.absent.path = 'external/nowhere/{split}.jsonl': no file external/nowhere/test.jsonl"
            in said)
    log = (work / "results/logs/score_external/tiny/bad/seed0/test.log").read_text()
    assert "evaluate.external.bad.path: external/bad_test.jsonl line 3: not valid JSON" in log
    assert "external/bad_test.jsonl line 3" in said
    assert "the cost sidecar external/badcost_test.cost.json must be a JSON object" in said
    assert "unknown keys: ['samples']" in said
    for name in bad:  # nothing half-written is left as a result
        assert not (work / ROW.format(name=name) / "metrics.json").exists()
        assert not (work / ROW.format(name=name) / "cost.json").exists()
    partial = snakemake(work, "--configfile", TEST_CONFIG, extra, "--config", "partial=True")
    assert partial.returncode == 0, partial.stderr[-3000:]
    assert "rule score_external" not in partial.stdout + partial.stderr  # the failed jobs are not retried
    main = pd.read_csv(work / "results/tables/main.csv").set_index("method")
    assert main.loc[list(bad), "n_seeds"].tolist() == [0, 0, 0] and main.loc[["pop", "rand"], "n_seeds"].tolist() == [1, 1]
    missing = (work / "results/tables/main.md").read_text().split("Missing (")[1]
    assert all(f"tiny/none/{name}/seed0" in missing for name in bad)
    sig = pd.read_csv(work / "results/tables/significance.csv")
    assert {"pop", "rand"} <= set(sig["baseline"]) and not set(bad) & set(sig["baseline"])
