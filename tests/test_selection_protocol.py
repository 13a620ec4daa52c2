"""The selection protocol: alignment selects on valid rows disjoint from SFT's early-stopping rows,
records the step it kept and the resolution of its selection (the MDE), and the power helper
agrees with an independent noncentral-t computation."""

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from blade.align.config import AlignConfig, RolloutConfig
from blade.align.loop import align
from blade.align.registry import Method
from blade.align.rollout import reference_rollouts
from blade.data import PreparedData
from blade.errors import ConfigError
from blade.eval.config import EvalConfig
from blade.eval.selection import alignment_slice, selection_slice
from blade.model.config import PolicyConfig
from blade.power import mde_from_sd, paired_mde
from blade.rewards import RewardConfig
from blade.train.config import SFTConfig
from blade.train.sft import train_sft
from tests.helpers import tiny_dataset

SMALL_POLICY = PolicyConfig(hidden=32, heads=2, kv_heads=1, intermediate=64)
EVAL = EvalConfig(selection_rows=60)


def _ids(frame: pd.DataFrame) -> set:
    return set(frame.index.tolist())


def test_the_two_slices_partition_valid_and_are_seed_independent():
    valid = pd.DataFrame({"x": np.arange(250)}, index=np.arange(1000, 1250))
    sft, rest = selection_slice(valid, 60), alignment_slice(valid, 60)
    assert len(sft) == 60 and len(rest) == 190
    assert not _ids(sft) & _ids(rest) and _ids(sft) | _ids(rest) == _ids(valid)
    assert _ids(alignment_slice(valid, 60, 50)) < _ids(rest) and len(alignment_slice(valid, 60, 50)) == 50
    assert _ids(selection_slice(valid, 60)) == _ids(sft)  # fixed: no seed enters
    with pytest.raises(ConfigError, match="none is left for alignment's selection"):
        alignment_slice(valid, 0)  # SFT reads all of valid
    # SFT takes at most half of valid, so alignment always has the other half
    small_sft, small_align = selection_slice(valid, 200), alignment_slice(valid, 200)
    assert len(small_sft) == 125 and len(small_align) == 125 and not _ids(small_sft) & _ids(small_align)


def test_alignment_selects_on_rows_sft_never_early_stopped_on(tmp_path, monkeypatch):
    """Spy on the rows each selection scores in a real SFT + alignment run."""
    import blade.align.loop as loop
    import blade.train.sft as sft_module

    seen = {"sft": [], "align": []}
    real_sft, real_align = sft_module.valid_metrics, loop.valid_scores

    def sft_spy(policy, split, *a, **kw):
        seen["sft"].append(_ids(split))
        return real_sft(policy, split, *a, **kw)

    def align_spy(policy, split, *a, **kw):
        seen["align"].append(_ids(split))
        return real_align(policy, split, *a, **kw)

    monkeypatch.setattr(sft_module, "valid_metrics", sft_spy)
    monkeypatch.setattr(loop, "valid_scores", align_spy)
    data_dir = tiny_dataset(tmp_path / "data")
    data = PreparedData.load(data_dir)
    train_sft(data, tmp_path / "sft", SMALL_POLICY, SFTConfig(epochs=2, batch_size=32, warmup_steps=5), seed=0,
              evaluation=EVAL)
    reward = RewardConfig(weights={"ndcg": 1.0})
    reference_rollouts(data, tmp_path / "sft" / "best", tmp_path / "ref.parquet",
                       RolloutConfig(m=4, k=10, max_contexts=60), reward, seed=0)
    cfg = AlignConfig(steps=4, contexts_per_step=6, group_size=4, k=10, eval_every=2, lr=1e-3)
    summary = align(data, tmp_path / "sft", tmp_path / "ref.parquet", tmp_path / "run",
                    Method.from_entry({"objective": "blade"}, "method"), cfg, reward, seed=0, evaluation=EVAL)
    sft_rows, align_rows = set.union(*seen["sft"]), set.union(*seen["align"])
    assert len(seen["sft"]) == 2 and all(s == seen["sft"][0] for s in seen["sft"]) and len(sft_rows) == 60
    assert len(seen["align"]) == 3 and all(s == seen["align"][0] for s in seen["align"])  # steps 0, 2, 4
    assert not sft_rows & align_rows, "alignment selected on rows SFT early-stopped on"
    assert sft_rows | align_rows == _ids(data.valid)  # every other valid row (align_selection_rows 0)
    assert summary["selection/rows"] == len(data.valid) - 60
    curve = pd.read_parquet(tmp_path / "run" / "valid_curve.parquet")
    assert math.isnan(curve["valid/mde"].iloc[0]) and (curve["valid/mde"].iloc[1:] >= 0).all()
    assert summary["selection/mde"] == pytest.approx(float(np.median(curve["valid/mde"].iloc[1:])))
    assert summary["best_step"] in curve["step"].tolist()
    # the training-context line of §6.4: BoN@N of π_ref's rewards on every step's contexts
    diag = pd.read_parquet(tmp_path / "run" / "diagnostics.parquet")
    assert diag["ref_bon_reward"].between(0, 1).all()


def test_mde_is_the_effect_a_paired_t_test_detects_with_80_percent_power():
    """The MDE solved by statsmodels, checked against power computed from scipy's noncentral t."""
    for n, sd in ((10, 0.3), (200, 1.0), (5000, 0.05)):
        mde = mde_from_sd(sd, n)
        crit = stats.t.ppf(0.975, n - 1)
        nc = mde / sd * math.sqrt(n)
        power = stats.nct.sf(crit, n - 1, nc) + stats.nct.cdf(-crit, n - 1, nc)
        assert power == pytest.approx(0.80, abs=1e-4)
    assert mde_from_sd(1.0, 100_000) == pytest.approx((stats.norm.ppf(0.975) + stats.norm.ppf(0.8)) / math.sqrt(1e5),
                                                      rel=1e-3)
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=300), rng.normal(size=300)
    assert paired_mde(a, b) == pytest.approx(mde_from_sd(float(np.std(a - b, ddof=1)), 300))
    assert math.isnan(paired_mde([1.0])) and paired_mde([0.2, 0.2, 0.2]) == pytest.approx(0.0, abs=1e-12)
