"""The Snakemake DAG on the .test config, end to end, as CI and a user run it."""

import json
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

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


@pytest.mark.slow
def test_whole_dag_on_test_config(tmp_path):
    done = snakemake(tmp_path, "--configfile", str(ROOT / ".test" / "config.yaml"))
    assert done.returncode == 0, done.stderr[-3000:]
    stats = json.loads((tmp_path / "results/data/tiny/stats.json").read_text())
    assert stats["n_rows"]["test"] == 200 and stats["n_items"] == 60
    assert (tmp_path / "results/logs/prepare/tiny.log").read_text().startswith("prepared")
    assert (tmp_path / "results/benchmarks/prepare/tiny.tsv").is_file()
    rows = [("none", m) for m in ("sft", "mostpop", "cooc")]
    rows += [(r, m) for r in ("ndcg", "ndcg+fairness") for m in ("blade", "blade_static")]
    for reward, method in rows:
        for split in ("valid", "test"):
            metrics = json.loads((tmp_path / f"results/eval/tiny/{reward}/{method}/seed0/{split}/metrics.json").read_text())
            assert 0 <= metrics["ndcg@10"] <= metrics["recall@10"] <= 1, (method, split, metrics)
            assert metrics["invalid_rate"] == 0, (method, split)
    for reward in ("ndcg", "ndcg+fairness"):
        rollouts = pd.read_parquet(tmp_path / f"results/rollouts/tiny/{reward}/ref/seed0.parquet")
        assert rollouts.groupby("row").size().eq(8).all() and rollouts["row"].nunique() == 300
        assert ("fairness" in rollouts) == (reward == "ndcg+fairness")  # each setting scored with its own reward
        for method in ("blade", "blade_static"):
            run = tmp_path / f"results/models/tiny/{reward}/{method}/seed0"
            diag = pd.read_parquet(run / "diagnostics.parquet")
            assert diag["step"].tolist() == list(range(1, 7)) and diag["weight_spread"].notna().all()
            weights = json.loads((run / "align_config.json").read_text())["reward"]["weights"]
            assert weights == ({"ndcg": 1.0, "fairness": 0.5} if reward == "ndcg+fairness" else {"ndcg": 1.0})
    runs = sqlite3.connect(tmp_path / "results/mlflow.db").execute(
        "select name, status from runs").fetchall()
    stages = {name.split("__")[-1] for name, _ in runs}
    assert any(name.startswith("tiny__ndcg+fairness__blade__seed0") for name, _ in runs), runs
    assert {"sft", "rollout", "align", "evaluate_valid", "evaluate_test"} <= stages, stages
    assert all(status == "FINISHED" for _, status in runs), runs
    again = snakemake(tmp_path, "--configfile", str(ROOT / ".test" / "config.yaml"))
    assert "Nothing to be done" in again.stdout + again.stderr


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


def test_lint_is_clean(tmp_path):
    done = subprocess.run([*SNAKEMAKE, "--lint", "--snakefile", str(ROOT / "Snakefile")], capture_output=True, text=True, cwd=ROOT)
    assert "Congratulations, your workflow is in a good condition!" in done.stdout + done.stderr, done.stdout + done.stderr


@pytest.mark.shared_data
@pytest.mark.slow
def test_paper_config_prepares_real_datasets(video_games, goodreads, tmp_path):
    # run from a scratch directory whose ../shared/data resolves like the project root's
    work = tmp_path / "main"
    work.mkdir()
    (tmp_path / "shared").symlink_to(ROOT.parent / "shared")
    shutil.copytree(ROOT / "config", work / "config")
    # the targets go first: --configfile takes every path that follows it
    done = snakemake(work, "results/data/video_games/stats.json", "results/data/goodreads/stats.json",
                     "--configfile", str(ROOT / "config" / "paper.yaml"))
    assert done.returncode == 0, done.stderr[-3000:]
    vg = json.loads((work / "results/data/video_games/stats.json").read_text())
    assert vg["n_rows"] == {"train": 49133, "valid": 6142, "test": 6142}


def test_profiles_parse_and_local_profile_plans_the_dag(tmp_path):
    for name in ("local", "slurm"):
        profile = yaml.safe_load((ROOT / "workflow" / "profiles" / name / "config.yaml").read_text())
        assert profile["rerun-incomplete"] is True, name
    slurm = yaml.safe_load((ROOT / "workflow" / "profiles" / "slurm" / "config.yaml").read_text())
    assert {"sft", "rollout", "align"} <= set(slurm["set-resources"]), "the GPU stages need GPU resources"
    done = snakemake(tmp_path, "--profile", str(ROOT / "workflow" / "profiles" / "local"),
                     "--configfile", str(ROOT / ".test" / "config.yaml"), "-n")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "align" in done.stdout and "rollout" in done.stdout
