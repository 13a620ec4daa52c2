"""A method from a module outside the package, registered by config alone, runs through the DAG
and reaches the tables; a diverging method fails its own job with a clear message, the others'
results are kept, and the analysis of the partial run names the missing rows."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pandas as pd
import pytest
import yaml

from tests.conftest import ROOT

CONFIG = {
    "run": {"datasets": ["tiny"], "seeds": [0], "methods": ["rloo", "broken"], "rewards": ["ndcg"]},
    "datasets": {"tiny": {"source": "synthetic", "params": {"n_users": 120, "n_items": 40, "seed": 4}}},
    "sft": {"epochs": 1, "batch_size": 64, "warmup_steps": 2},
    "rewards": {"ndcg": {"weights": {"ndcg": 1.0}}},
    "rollout": {"m": 4, "max_contexts": 100},
    "align": {"steps": 3, "contexts_per_step": 8, "group_size": 4, "eval_every": 3},
    "evaluate": {"selection_rows": 60, "splits": ["test"], "samples": 0, "bon_n": [], "references": ["mostpop"]},
    "methods": {"rloo": {"objective": "rloo", "module": "tests.ext_methods.rloo", "beta_kl": 0.02},
                "broken": {"objective": "diverges", "module": "tests.ext_methods.rloo"}},
}


@pytest.mark.slow
def test_external_method_runs_by_config_and_a_failing_one_is_isolated(tmp_path):
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(CONFIG))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    target = "results/eval/tiny/ndcg/rloo/seed0/test/metrics.json"
    done = subprocess.run([sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile"), "--directory",
                           str(tmp_path), "--cores", "2", "--keep-going", "--configfile", str(tmp_path / "c.yaml")],
                          capture_output=True, text=True, cwd=ROOT, env=env)
    assert done.returncode != 0  # the broken method fails
    res = tmp_path / "results"
    metrics = json.loads((tmp_path / target).read_text())  # ... and the external one went through
    assert 0 <= metrics["ndcg@10"] <= 1 and metrics["invalid_rate"] == 0
    config = json.loads((res / "models/tiny/ndcg/rloo/seed0/align_config.json").read_text())
    assert config["method"] == {"objective": "rloo", "module": "tests.ext_methods.rloo", "beta_kl": 0.02}
    log = (res / "logs/align/tiny/ndcg/broken/seed0.log").read_text()
    assert "the loss is not finite at step 1" in log and "Traceback" not in log
    assert not (res / "models/tiny/ndcg/broken/seed0/summary.json").exists()
    # the analysis of the partial run: the rloo row is there, the broken one is named as missing
    out = tmp_path / "main"
    configs = ["--config", str(ROOT / "config/config.yaml"), str(tmp_path / "c.yaml")]
    sig = subprocess.run([sys.executable, "-m", "analysis.significance", "--results", str(res), *configs, "--out",
                          str(tmp_path / "sig.csv")], capture_output=True, text=True, cwd=ROOT, env=env)
    assert sig.returncode == 0, sig.stderr[-2000:]
    table = subprocess.run([sys.executable, "-m", "analysis.main_table", "--results", str(res),
                            "--significance", str(tmp_path / "sig.csv"), *configs, "--out", str(out)],
                           capture_output=True, text=True, cwd=ROOT, env=env)
    assert table.returncode == 0, table.stderr[-2000:]
    main = pd.read_csv(f"{out}.csv")
    assert main.set_index("method").loc["rloo", "n_seeds"] == 1
    assert main.set_index("method").loc["broken", "n_seeds"] == 0
    assert "broken" in open(f"{out}.md").read().split("issing")[-1]
