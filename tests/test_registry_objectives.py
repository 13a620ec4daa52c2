"""The smoke tests find the objectives by scanning, not by a list (tests/objectives.py): the scan
finds every module that registers one, and a new objective written in a package of its own is
found by the same scan, trained and scored through the commands the DAG runs, and classified by
the analysis from what the objective says of itself — with no edit anywhere else."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap

import pandas as pd
import pytest

from blade.align import registry
from tests.conftest import ROOT
from tests.objectives import SHIPPED_PACKAGES, objectives_in, shipped_objectives, smoke_method

_REGISTERS = re.compile(r'^@register\("([^"]+)"\)', re.M)

MY_OBJ = '''
"""A researcher's own objective: REINFORCE on log F̂_ref with a leave-one-out baseline
(docs/method.md (3.6), with vBoN's signal (5.5)) plus β_kl·k3 KL(π_θ ‖ π_ref) (3.8)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from blade.align.estimators import StaticEstimator
from blade.align.objective import Objective, as_numpy, backward_kl_loss, k3_kl, reward_diagnostics
from blade.align.registry import register
from blade.config import option
from blade.lazy import torch


@dataclass
class MyConfig:
    beta_kl: float = option(0.05, help="weight of the k3 KL(π_θ ‖ π_ref) penalty")

    def __post_init__(self) -> None:
        if not self.beta_kl >= 0:
            raise ValueError(f"beta_kl must be >= 0, got {self.beta_kl}")


@register("my_obj")
class MyObjective(Objective):
    config_class = MyConfig
    target = "static"  # F̂_ref of the stored reference rollouts, never updated

    def __init__(self, config, prior):
        self.config, self.prior = config or MyConfig(), prior
        self.estimator = StaticEstimator(kappa0=math.inf, var_floor=1.0)  # both ignored by the static CDF

    def __call__(self, batch):
        rewards = as_numpy(batch.rewards)
        log_f = self.estimator(rewards, self.prior, np.asarray(batch.rows, dtype=np.int64))
        logp = batch.logp
        # docs/method.md (3.6): REINFORCE, leave-one-out baseline, signal log F̂_ref
        align = backward_kl_loss(torch.as_tensor(log_f, dtype=logp.dtype, device=logp.device), logp)
        # docs/method.md (3.8): k3 KL to π_ref
        kl = k3_kl(batch.token_logp, batch.ref_token_logp, batch.mask).mean()
        return align, self.config.beta_kl * kl, {"kl": kl.item(), "my_signal": float(log_f.mean()),
                                                  **reward_diagnostics(rewards)}
'''


def _registered_by_text(directory) -> list[str]:
    return sorted(n for path in directory.glob("*.py") for n in _REGISTERS.findall(path.read_text()))


def test_the_scan_finds_every_module_that_registers_an_objective():
    """What the smoke tests train is what the files register: read the ``@register`` lines, compare."""
    for package in SHIPPED_PACKAGES:
        by_text = _registered_by_text(ROOT.joinpath(*package.split(".")))
        assert by_text and objectives_in(package) == by_text, package
    assert shipped_objectives() == [n for p in SHIPPED_PACKAGES for n in objectives_in(p)]


@pytest.fixture
def own_package(tmp_path, monkeypatch):
    """tmp_path/mypkg/my_obj.py on sys.path, registering into a copy of the registry (so the name
    is gone after the test)."""
    pkg = tmp_path / "mypkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "my_obj.py").write_text(textwrap.dedent(MY_OBJ).lstrip())
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(registry, "OBJECTIVES", dict(registry.OBJECTIVES))
    yield tmp_path
    for name in [m for m in sys.modules if m == "mypkg" or m.startswith("mypkg.")]:
        del sys.modules[name]


def _cli(*args: str, cwd, env) -> None:
    done = subprocess.run([sys.executable, "-m", "blade.cli", *args], capture_output=True, text=True, cwd=cwd, env=env)
    assert done.returncode == 0, f"blade {args[0]}: {done.stderr[-3000:]}"


@pytest.mark.slow
def test_a_new_objective_is_found_trained_scored_and_classified_with_no_other_edit(own_package):
    from analysis.rows import is_static, role
    from blade.experiment import resolve

    # found by the scan the smoke tests use, as a new baselines/<name>.py would be
    assert objectives_in("mypkg") == ["my_obj"]
    entry = smoke_method("my_obj", module="mypkg.my_obj")
    assert entry == {"objective": "my_obj", "module": "mypkg.my_obj"}
    # the analysis reads its kind from the objective: on the static side, a baseline row
    exp = resolve({"run": {"datasets": ["s"], "methods": ["mine", "blade"]}, "datasets": {"s": {"source": "synthetic"}},
                   "methods": {"mine": entry, "blade": {"objective": "blade"}}})
    assert (is_static("mine", exp), role("mine", exp), is_static("blade", exp)) == (True, "baseline", False)

    # trained and scored through the commands the DAG runs (workflow/rules/*.smk), at a tiny budget
    tmp = own_package
    env = {**os.environ, "BLADE_TRACKING": "off", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT), str(tmp)])}
    spec = {"source": "synthetic", "params": {"n_users": 120, "n_items": 30, "n_genres": 3, "seed": 4}}
    evaluate = {"selection_rows": 40, "splits": ["test"], "samples": 0, "bon_n": []}
    reward = {"weights": {"ndcg": 1.0}}
    _cli("prepare", "--spec", json.dumps(spec), "--out", str(tmp / "data"), cwd=tmp, env=env)
    _cli("sft", "--data", str(tmp / "data"), "--out", str(tmp / "sft"), "--config-json", json.dumps(
        {"policy": {"hidden": 32, "heads": 2, "kv_heads": 1, "intermediate": 64, "device": "cpu"},
         "sft": {"epochs": 1, "batch_size": 64, "warmup_steps": 2}, "evaluate": evaluate}), cwd=tmp, env=env)
    _cli("rollout", "--data", str(tmp / "data"), "--model", str(tmp / "sft" / "best"), "--out", str(tmp / "ref.parquet"),
         "--config-json", json.dumps({"rollout": {"m": 4, "max_contexts": 40}, "reward": reward}), cwd=tmp, env=env)
    _cli("align", "--data", str(tmp / "data"), "--sft", str(tmp / "sft"), "--rollouts", str(tmp / "ref.parquet"),
         "--out", str(tmp / "run"), "--method", "mine", "--eval-root", str(tmp / "eval"), "--device", "cpu",
         "--config-json", json.dumps({"align": {"steps": 2, "contexts_per_step": 4, "group_size": 4, "eval_every": 2},
                                      "reward": reward, "evaluate": evaluate, "method": exp.methods["mine"]}),
         cwd=tmp, env=env)

    diag = pd.read_parquet(tmp / "run" / "diagnostics.parquet")
    assert diag["step"].tolist() == [1, 2] and diag["my_signal"].between(-50, 0).all()  # its own diagnostic, log F ≤ 0
    assert (diag["grad_norm_align"] > 0).any()
    metrics = json.loads((tmp / "eval" / "test" / "metrics.json").read_text())
    assert 0 <= metrics["ndcg@10"] <= metrics["recall@10"] <= 1, metrics
    assert metrics["invalid_rate"] == 0
