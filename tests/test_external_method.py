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
    "run": {"datasets": ["tiny"], "seeds": [0], "methods": ["rloo", "broken"], "rewards": ["ndcg"], "sweep": []},
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
    # the analysis of the partial run (partial=True: only the analysis, of the files that exist):
    # every table comes out, the rloo row is there, the broken one is named as missing
    partial = subprocess.run([sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile"), "--directory",
                              str(tmp_path), "--cores", "2", "--configfile", str(tmp_path / "c.yaml"),
                              "--config", "partial=True"], capture_output=True, text=True, cwd=ROOT, env=env)
    assert partial.returncode == 0, partial.stderr[-3000:]
    assert "rule align" not in partial.stdout + partial.stderr  # the failed job is not retried
    tables = res / "tables"
    main = pd.read_csv(tables / "main.csv")
    assert main.set_index("method").loc["rloo", "n_seeds"] == 1
    assert main.set_index("method").loc["broken", "n_seeds"] == 0
    assert "broken" in (tables / "main.md").read_text().split("issing")[-1]
    for name in ("listwise", "claims", "runtime"):
        assert (tables / f"{name}.md").read_text().strip(), name
    assert (res / "figures" / "gradient_decay.png").stat().st_size > 0
