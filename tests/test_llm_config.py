"""config/llm.yaml, the real-LLM run: its DAG as written (a dry run, base_model rule included), and
the same file end to end on a slice of Video_Games with SmolLM2 itself — the converted checkpoint
(the session's, tests/conftest.py) → LoRA SFT on titles → rollouts → BLADE → evaluation on the
fixed test sample → analysis — at a budget of seconds; and the `blade base-model` command.

Only sizes change in the second; the model, codec, LoRA, dtype, reward setting and protocol are
the config's own."""

from __future__ import annotations

import json
import shutil

import pandas as pd
import pytest
import yaml

from tests.conftest import ROOT
from tests.test_paper_config import _job_counts
from tests.test_workflow import snakemake

LLM = ROOT / "config" / "llm.yaml"
MODEL = "smollm2-135m-instruct"


def test_llm_config_dag_resolves(tmp_path):
    work = tmp_path / "work"
    shutil.copytree(ROOT / "config", work / "config")
    done = snakemake(work, "-n", "--configfile", str(LLM))
    assert done.returncode == 0, done.stderr[-3000:]
    cfg = yaml.safe_load(LLM.read_text())
    counts = _job_counts(done.stdout)
    assert counts["base_model"] == 1 and counts["prepare"] == 1 and counts["sft"] == 1
    assert counts["align"] == len(cfg["run"]["methods"]) * len(cfg["run"]["rewards"]) * len(cfg["run"]["seeds"])
    assert f"results/models/base/{MODEL}/base_model.json" in done.stdout


def test_gpu_overlay_is_the_full_version_of_the_llm_run(tmp_path):
    """config/llm_gpu.yaml: llm.yaml's model and methods at full size — 3 seeds, the whole test split."""
    work = tmp_path / "work"
    shutil.copytree(ROOT / "config", work / "config")
    done = snakemake(work, "-n", "--configfile", str(LLM), str(ROOT / "config/llm_gpu.yaml"))
    assert done.returncode == 0, done.stderr[-3000:]
    cfg, gpu = yaml.safe_load(LLM.read_text()), yaml.safe_load((ROOT / "config/llm_gpu.yaml").read_text())
    counts = _job_counts(done.stdout)
    assert counts["sft"] == 3 and counts["align"] == 3 * len(cfg["run"]["methods"]) * len(cfg["run"]["rewards"])
    assert gpu["datasets"]["video_games_llm"]["test_rows"] == 0 and gpu["policy"]["device"] == "cuda"


def test_tiny_row_config_scores_the_llm_runs_rows_and_joins_its_tables(tmp_path):
    """config/llm_tiny.yaml trains the tiny model on the very test sample llm.yaml scores (the same
    source and `test_rows`; the sample's generator is fixed, blade/data/canonical.py) and selects on
    the same number of valid rows; config/llm_vs_tiny.yaml adds its SFT lists to llm.yaml's tables as
    an external row without rerunning anything else of the DAG."""
    llm, tiny = yaml.safe_load(LLM.read_text()), yaml.safe_load((ROOT / "config/llm_tiny.yaml").read_text())
    (ours,), (theirs,) = llm["run"]["datasets"], tiny["run"]["datasets"]
    assert tiny["datasets"][theirs] == llm["datasets"][ours] and tiny["policy"]["kind"] == "tiny"
    assert tiny["evaluate"]["selection_rows"] == llm["evaluate"]["selection_rows"]
    overlay = yaml.safe_load((ROOT / "config/llm_vs_tiny.yaml").read_text())
    assert overlay["evaluate"]["external"]["tiny_sft"]["path"].startswith(f"results/eval/{theirs}/none/sft/seed0/")
    work = tmp_path / "work"
    shutil.copytree(ROOT / "config", work / "config")
    done = snakemake(work, "-n", "--configfile", str(LLM), str(ROOT / "config/llm_vs_tiny.yaml"))
    assert done.returncode == 0, done.stderr[-3000:]
    alone = _job_counts(snakemake(work, "-n", "--configfile", str(LLM)).stdout)
    assert _job_counts(done.stdout) == {**alone, "score_external": 1, "total": alone["total"] + 1}
    done = snakemake(work, "-n", f"results/eval/{theirs}/none/sft/seed0/test/metrics.json",
                     "--configfile", str(ROOT / "config/llm_tiny.yaml"))  # its SFT row only, as its header says
    assert done.returncode == 0, done.stderr[-3000:]
    assert _job_counts(done.stdout) == {"prepare": 1, "sft": 1, "total": 2}


@pytest.mark.slow
@pytest.mark.shared_data
def test_llm_config_runs_end_to_end_on_a_slice(tmp_path, video_games, smollm2_base):
    work = tmp_path / "work"
    shutil.copytree(ROOT / "config", work / "config")
    # the session's converted checkpoint stands in for the base_model rule's output (the conversion
    # itself is tests/test_smollm2.py's); the rule's command runs on it, a no-op, in the CLI test below
    (work / "results/models/base").mkdir(parents=True)
    (work / f"results/models/base/{MODEL}").symlink_to(smollm2_base, target_is_directory=True)
    override = {
        "run": {"methods": ["blade"]},
        "datasets": {"video_games_llm": {"test_rows": 6, "params": {"path": str(video_games)}}},
        "sft": {"train_rows": 16, "batch_size": 8, "epochs": 1, "warmup_steps": 1, "k": 3, "select_metric": "ndcg@3"},
        "rollout": {"m": 4, "max_contexts": 2, "k": 3, "batch_size": 8},
        "align": {"steps": 1, "contexts_per_step": 1, "group_size": 2, "k": 3, "eval_every": 1, "batch_size": 8},
        "evaluate": {"selection_rows": 4, "align_selection_rows": 4, "k": 3, "ks": [3], "bon_n": [],
                     "references": ["mostpop"], "batch_size": 8},
    }
    (tmp_path / "override.yaml").write_text(yaml.safe_dump(override))
    done = snakemake(work, "--configfile", str(LLM), str(tmp_path / "override.yaml"))
    assert done.returncode == 0, done.stderr[-4000:]
    res = work / "results"
    base = json.loads((res / f"models/base/{MODEL}/base_model.json").read_text())
    assert base["model"] == MODEL and len(base["gguf_sha256"]) == 64
    stats = json.loads((res / "data/video_games_llm/stats.json").read_text())
    assert stats["n_rows"]["test"] == 6 and stats["dropped"]["test_outside_sample"] == 6142 - 6
    sft = res / "models/video_games_llm/sft/seed0/best"
    adapter = json.loads((sft / "adapter_config.json").read_text())
    assert adapter["r"] == 8 and set(adapter["target_modules"]) == {"q_proj", "v_proj"}
    assert json.loads((sft / "policy.json").read_text())["path"] == f"results/models/base/{MODEL}"
    test_ids = set(pd.read_parquet(res / "data/video_games_llm/test.parquet")["context_id"])
    for method, reward in (("sft", "none"), ("blade", "graded"), ("mostpop", "none")):
        metrics = json.loads((res / f"eval/video_games_llm/{reward}/{method}/seed0/test/metrics.json").read_text())
        assert metrics["invalid_rate"] == 0 and 0 <= metrics["ndcg@3"] <= 1, (method, metrics)
        per_user = pd.read_parquet(res / f"eval/video_games_llm/{reward}/{method}/seed0/test/per_user.parquet")
        assert len(per_user) == 6, method  # every row of the table on the same fixed sample
    assert len(test_ids) == 6
    main = (res / "tables/main.md").read_text()
    assert "blade" in main and "mostpop" in main


def test_base_model_command_reports_a_finished_conversion(smollm2_base):
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "blade.cli", "base-model", "--model", MODEL, "--out", str(smollm2_base)],
                          capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    sha = json.loads((smollm2_base / "base_model.json").read_text())["gguf_sha256"]
    assert f"base model {MODEL}: {smollm2_base} ({sha[:12]}" in done.stdout
    bad = subprocess.run([sys.executable, "-m", "blade.cli", "base-model", "--model", "smollm3"], capture_output=True,
                         text=True, cwd=ROOT)
    assert bad.returncode == 2 and "unknown base model 'smollm3'" in bad.stderr
