"""The Snakemake DAG on the .test config, end to end, as CI and a user run it."""

import json
import os
import random
import signal
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from matplotlib.image import imread
import numpy as np
import pandas as pd
import pytest
import yaml

from tests.conftest import ROOT

SNAKEMAKE = [sys.executable, "-m", "snakemake"]


def snakemake(workdir: Path, *args: str):
    return subprocess.run(
        [*SNAKEMAKE, "--snakefile", str(ROOT / "Snakefile"), "--directory", str(workdir), "--cores", "2", *args],
        capture_output=True, text=True, cwd=ROOT,
    )


TEST_CONFIG = str(ROOT / ".test" / "config.yaml")
# Tables a kill-and-rerun must reproduce exactly (runtime.* measures the runs themselves, so it differs)
TABLES = ("main.csv", "significance.csv", "listwise.csv", "ablation.csv", "claims.md")


@pytest.fixture(scope="module")
def dag_run(tmp_path_factory):
    """The whole DAG on the .test config, uninterrupted, with its wall time."""
    workdir = tmp_path_factory.mktemp("dag")
    started = time.monotonic()
    done = snakemake(workdir, "--configfile", TEST_CONFIG)
    assert done.returncode == 0, done.stderr[-3000:]
    return workdir, time.monotonic() - started


@pytest.mark.slow
def test_whole_dag_on_test_config(dag_run):
    tmp_path, _ = dag_run
    res = tmp_path / "results"
    stats = json.loads((res / "data/tiny/stats.json").read_text())
    assert stats["n_rows"]["test"] == 200 and stats["n_items"] == 60
    assert (res / "logs/prepare/tiny.log").read_text().startswith("prepared")
    assert (res / "benchmarks/prepare/tiny.tsv").is_file()
    settings, methods = ("ndcg", "ndcg+fairness"), ("blade", "blade_static", "dpo", "bond")
    rows = [("none", m) for m in ("sft", "mostpop", "cooc")] + [(r, m) for r in settings for m in methods]
    for reward, method in rows:
        for split in ("valid", "test"):
            metrics = json.loads((res / f"eval/tiny/{reward}/{method}/seed0/{split}/metrics.json").read_text())
            assert 0 <= metrics["ndcg@10"] <= metrics["recall@10"] <= 1, (method, split, metrics)
            assert metrics["invalid_rate"] == 0, (method, split)
        if method not in ("mostpop", "cooc"):  # every trained row is also scored on sampled lists
            sampled = json.loads((res / f"eval/tiny/{reward}/{method}/seed0/test/sample/metrics.json").read_text())
            assert sampled["samples_per_row"] == 2 and sampled["cost/samples_per_user"] == 1
    for reward in settings:
        for n in (1, 8):  # Best-of-N rows with their inference cost; the oracle reads the target
            bon = json.loads((res / f"eval/tiny/{reward}/bon_n{n}/seed0/test/metrics.json").read_text())
            oracle = json.loads((res / f"eval/tiny/{reward}/oracle_bon_n{n}/seed0/test/metrics.json").read_text())
            assert bon["cost/samples_per_user"] == n and oracle["ndcg@10"] >= bon["ndcg@10"] - (n == 1) * 1e-12
        rollouts = pd.read_parquet(res / f"rollouts/tiny/{reward}/ref/seed0.parquet")
        assert rollouts.groupby("row").size().eq(8).all() and rollouts["row"].nunique() == 300
        assert ("fairness" in rollouts) == (reward == "ndcg+fairness")  # each setting scored with its own reward
        for method in methods:
            run = res / f"models/tiny/{reward}/{method}/seed0"
            diag = pd.read_parquet(run / "diagnostics.parquet")
            assert diag["step"].tolist() == list(range(1, 7)) and np.isfinite(diag["loss"]).all()
            weights = json.loads((run / "align_config.json").read_text())["reward"]["weights"]
            assert weights == ({"ndcg": 1.0, "fairness": 0.5} if reward == "ndcg+fairness" else {"ndcg": 1.0})
            assert sorted(p.name for p in (run / "snapshots").iterdir()) == ["step000000", "step000003", "step000006"]
            # the curve's step 0 is the SFT row and its selected step the row itself (those two are read back)
            curve = pd.read_parquet(res / f"curves/tiny/{reward}/{method}/seed0.parquet").set_index("step")
            best = json.loads((run / "summary.json").read_text())["best_step"]
            for step, row in ((0, "none/sft"), (best, f"{reward}/{method}")):
                scored = json.loads((res / f"eval/tiny/{row}/seed0/test/metrics.json").read_text())
                assert curve.loc[step, "ndcg@10"] == scored["ndcg@10"], (method, step)
    # the sweep (run.sweep) trains under the first reward setting only, and reaches the ablation table
    assert (res / "eval/tiny/ndcg/blade_nig/seed0/test/metrics.json").is_file()
    assert not (res / "models/tiny/ndcg+fairness/blade_nig").exists()
    ablation = pd.read_csv(res / "tables/ablation.csv")
    assert set(ablation.loc[ablation["reward_setting"] == "ndcg", "method"]) >= {"blade", "blade_static", "blade_nig"}
    # the analysis stage: tables, tests, claims, figures
    main = pd.read_csv(res / "tables/main.csv")
    assert set(main["method"]) >= {"sft", "mostpop", "cooc", *methods, "bon_n8", "oracle_bon_n8"}
    assert set(main["reward_setting"]) == set(settings) and {"ndcg@10", "mgu_pop@10", "ild@10"} <= set(main)
    sig = pd.read_csv(res / "tables/significance.csv")
    for col in ("p_ttest", "p_perm"):
        assert sig[col].between(0, 1).all() and (sig[f"{col}_holm"] >= sig[col] - 1e-12).all()
        assert sig[f"{col}_holm"].between(0, 1).all()
    claims = (res / "tables/claims.md").read_text()
    assert all(f"§6.{i}" in claims for i in range(1, 7))
    for fig in ("gradient_decay", "static_bound", "cost_quality", "training"):
        image = imread(res / f"figures/{fig}.png")
        assert image.std() > 0.01, fig  # a drawn figure, not a blank canvas
    runs = sqlite3.connect(res / "mlflow.db").execute("select name, status from runs").fetchall()
    stages = {name.split("__")[-1] for name, _ in runs}
    assert {"sft", "rollout", "align", "evaluate_valid", "evaluate_test"} <= stages, stages
    assert any(name.startswith("tiny__ndcg+fairness__bond__seed0") for name, _ in runs), runs
    assert all(status == "FINISHED" for _, status in runs), runs
    again = snakemake(tmp_path, "--configfile", TEST_CONFIG)
    assert "Nothing to be done" in again.stdout + again.stderr
    report = snakemake(tmp_path, "--configfile", TEST_CONFIG, "--report", str(res / "report.html"))
    assert report.returncode == 0, report.stderr[-2000:]
    assert (res / "report.html").stat().st_size > 10_000


@pytest.mark.slow
def test_killed_dag_reruns_to_the_same_tables(dag_run, tmp_path):
    """Kill snakemake and its jobs at a (seeded) random point, rerun with --rerun-incomplete: the
    tables equal the uninterrupted run's — checkpoints, rollout chunks and atomic writes at work."""
    reference, seconds = dag_run
    delay = random.Random(0).uniform(0.2, 0.6) * seconds
    proc = subprocess.Popen([*SNAKEMAKE, "--snakefile", str(ROOT / "Snakefile"), "--directory", str(tmp_path),
                             "--cores", "2", "--configfile", TEST_CONFIG], cwd=ROOT, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        proc.wait(timeout=delay)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the whole process group: snakemake and the running jobs
        proc.wait()
    assert not (tmp_path / "results/tables/main.csv").exists(), "killed too late to test anything"
    # a SIGKILLed snakemake leaves its lock behind (a crash would too): unlock, then rerun
    assert snakemake(tmp_path, "--configfile", TEST_CONFIG, "--unlock").returncode == 0
    done = snakemake(tmp_path, "--configfile", TEST_CONFIG, "--rerun-incomplete")
    assert done.returncode == 0, done.stderr[-3000:]
    for name in TABLES:
        assert (tmp_path / "results/tables" / name).read_bytes() == (reference / "results/tables" / name).read_bytes(), name


def test_config_typo_fails_before_any_job(tmp_path):
    config = yaml.safe_load((ROOT / ".test" / "config.yaml").read_text())
    config["datasets"]["tiny"]["params"]["n_user"] = 10
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(config))
    done = snakemake(tmp_path, "--configfile", str(tmp_path / "bad.yaml"), "-n")
    assert done.returncode != 0
    assert "datasets.tiny.params.n_user: unknown option — did you mean 'n_users'?" in done.stdout + done.stderr
    config["datasets"]["tiny"]["source"] = "csv"
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(config))
    done = snakemake(tmp_path, "--configfile", str(tmp_path / "bad.yaml"), "-n")
    assert done.returncode != 0 and "'csv' is not one of" in done.stdout + done.stderr


def test_sft_by_dataset_changes_only_that_datasets_sft_job(tmp_path):
    config = yaml.safe_load((ROOT / ".test" / "config.yaml").read_text())
    config["datasets"]["windows"] = dict(config["datasets"]["tiny"])
    config["run"]["datasets"] = ["tiny", "windows"]
    config["sft_by_dataset"] = {"windows": {"prefixes": True, "lr": 0.01}}
    (tmp_path / "two.yaml").write_text(yaml.safe_dump(config))
    done = snakemake(tmp_path, "results/models/tiny/sft/seed0/summary.json", "results/models/windows/sft/seed0/summary.json",
                     "-n", "-p", "--configfile", str(tmp_path / "two.yaml"))
    assert done.returncode == 0, done.stderr[-3000:]
    sft = {}
    for line in done.stdout.splitlines():
        if " sft --data results/data/" in line:
            cfg = json.loads(line.split("--config-json ")[1].split(" > ")[0].strip("'"))
            sft[line.split("--dataset ")[1].split()[0]] = cfg["sft"]
    assert set(sft) == {"tiny", "windows"}
    assert sft["windows"]["prefixes"] is True and sft["windows"]["lr"] == 0.01
    assert sft["tiny"]["prefixes"] is False and sft["tiny"]["lr"] == 3e-3
    assert {k: v for k, v in sft["windows"].items() if k not in ("prefixes", "lr")} == \
        {k: v for k, v in sft["tiny"].items() if k not in ("prefixes", "lr")}
    config["sft_by_dataset"] = {"windows": {"prefix": True}}
    (tmp_path / "two.yaml").write_text(yaml.safe_dump(config))
    done = snakemake(tmp_path, "-n", "--configfile", str(tmp_path / "two.yaml"))
    assert done.returncode != 0
    assert "sft_by_dataset.windows.prefix: unknown option — did you mean 'prefixes'?" in done.stdout + done.stderr


def test_lint_is_clean(tmp_path):
    done = subprocess.run([*SNAKEMAKE, "--lint", "--snakefile", str(ROOT / "Snakefile")], capture_output=True, text=True, cwd=ROOT)
    assert "Congratulations, your workflow is in a good condition!" in done.stdout + done.stderr, done.stdout + done.stderr


@pytest.mark.shared_data
@pytest.mark.slow
def test_real_config_prepares_real_datasets(video_games, goodreads, tmp_path):
    # run from a scratch directory whose ../shared/data resolves like the project root's
    work = tmp_path / "main"
    work.mkdir()
    (tmp_path / "shared").symlink_to(ROOT.parent / "shared")
    shutil.copytree(ROOT / "config", work / "config")
    # the targets go first: --configfile takes every path that follows it
    done = snakemake(work, "results/data/video_games/stats.json", "results/data/goodreads/stats.json",
                     "--configfile", str(ROOT / "config" / "real.yaml"))
    assert done.returncode == 0, done.stderr[-3000:]
    vg = json.loads((work / "results/data/video_games/stats.json").read_text())
    assert vg["n_rows"] == {"train": 49133, "valid": 6142, "test": 6142}


def test_profiles_parse_and_local_profile_plans_the_dag(tmp_path):
    for name in ("local", "slurm"):
        profile = yaml.safe_load((ROOT / "workflow" / "profiles" / name / "config.yaml").read_text())
        assert profile["rerun-incomplete"] is True, name
    slurm = yaml.safe_load((ROOT / "workflow" / "profiles" / "slurm" / "config.yaml").read_text())
    assert {"sft", "rollout", "align"} <= set(slurm["set-resources"]), "the GPU stages need GPU resources"
    rules = {line.split()[1].rstrip(":") for smk in (ROOT / "workflow" / "rules").glob("*.smk")
             for line in smk.read_text().splitlines() if line.startswith("rule ")}
    assert set(slurm["set-resources"]) <= rules, f"resources for rules that do not exist: {set(slurm['set-resources']) - rules}"
    done = snakemake(tmp_path, "--profile", str(ROOT / "workflow" / "profiles" / "local"),
                     "--configfile", str(ROOT / ".test" / "config.yaml"), "-n")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "align" in done.stdout and "rollout" in done.stdout
