"""The trained baselines' losses (baselines/*.py) against values computed here, by hand, from each
paper's formula — including tied groups, all-tied batches and very negative log-probs — and DPO
and GRPO against TRL 1.16's own loss code on the same inputs. Plus configs (paper defaults, range
checks, `blade options`), what each method asks the loop for, and that importing a baseline does
not import torch (a dry run validates method configs)."""

from __future__ import annotations

import dataclasses
import math
import subprocess
import sys
import typing
from collections import defaultdict
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

from baselines.bond import BONDConfig, BONDObjective
from baselines.bonbon import BoNBoNConfig, BoNBoNObjective, bon_margin
from baselines.dpo import DPOConfig, DPOObjective
from baselines.grpo import GRPOConfig, GRPOObjective
from baselines.sdpo import SDPOConfig, SDPOObjective
from baselines.vbon import VBoNConfig, VBoNObjective
from blade.align.estimators import RefPrior
from blade.align.blade_objective import BladeConfig, BladeObjective
from blade.align.objective import RolloutBatch
from blade.align.objective import TargetKind
from blade.align.registry import objective_class, objective_config
from blade.errors import ConfigError
from tests.conftest import ROOT
from tests.objectives import objectives_in, shipped_objectives

# Every baselines/<name>.py that registers an objective, found by scanning (tests/objectives.py):
# the generic checks below cover a new baseline without naming it.
NAMES = objectives_in("baselines")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ---------------------------------------------------------------------------------------------
# Builders and hand formulas (numpy / plain torch, none of the modules' helpers)
# ---------------------------------------------------------------------------------------------


def make_batch(rewards, T: int = 4, seed: int = 0, scale: float = 1.0, ref_noise: float = 0.3,
               old_noise: float = 0.0, anchor_noise: float | None = None, anchor_rewards=None, step: int = 3):
    """A RolloutBatch over rewards (B, G) with random per-token log-probs (a float64 leaf with grad,
    0 on padding), random list lengths 1..T, a reference near the policy, and optional off-policy
    sampling log-probs / anchor log-probs. Returns (batch, leaf)."""
    rewards = np.asarray(rewards, dtype=np.float64)
    B, G = rewards.shape
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, T + 1, (B, G), generator=gen)
    mask = torch.arange(T)[None, None, :] < lengths[..., None]                     # (B, G, T)
    base = -(torch.rand(B, G, T, generator=gen, dtype=torch.float64) * 2.0 + 0.05) * scale
    leaf = base.masked_fill(~mask, 0.0).requires_grad_(True)

    def near(noise):
        return (leaf.detach() + noise * torch.randn(B, G, T, generator=gen, dtype=torch.float64)).masked_fill(~mask, 0.0)

    anchor = None if anchor_noise is None else near(anchor_noise)
    a_r = None if anchor_rewards is None else torch.as_tensor(np.asarray(anchor_rewards), dtype=torch.float32)
    batch = RolloutBatch(rows=np.arange(B), rewards=torch.as_tensor(rewards, dtype=torch.float32), token_logp=leaf,
                         ref_token_logp=near(ref_noise), old_token_logp=near(old_noise), mask=mask, step=step,
                         anchor_token_logp=anchor, anchor_rewards=a_r)
    return batch, leaf


def lists(tok: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (tok * mask).sum(-1)


def softplus(x: float) -> float:
    return float(np.logaddexp(0.0, x))


def mid_rank_cdf(r: float, sample: list[float]) -> float:
    """docs/method.md (2.2) by hand: (1 + #{s < r} + ½·#{s = r}) / (M + 1)."""
    below = sum(s < r for s in sample)
    ties = sum(s == r for s in sample)
    return (1.0 + below + 0.5 * ties) / (len(sample) + 1.0)


def on_f32(values) -> list[float]:
    """Rewards travel as float32 (the batch) and are compared on that grid (RefPrior stores them so)."""
    return [float(np.float32(v)) for v in values]


def loo_loss(signal: np.ndarray, logp: torch.Tensor) -> torch.Tensor:
    """REINFORCE with a leave-one-out baseline, by hand: −mean_x (1/G)·Σ_i (s_i − mean_{j≠i} s_j)·logp_i."""
    B, G = signal.shape
    total = 0.0
    for b in range(B):
        for i in range(G):
            others = [signal[b, j] for j in range(G) if j != i]
            total = total - (signal[b, i] - sum(others) / len(others)) * logp[b, i]
    return total / (B * G)


def k3_by_hand(lp: torch.Tensor, ref: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over lists of Σ_t [exp(ref − lp) − (ref − lp) − 1] over real tokens."""
    d = ref - lp
    per_token = torch.where(mask, torch.exp(d) - d - 1.0, torch.zeros_like(d))
    return per_token.sum(-1).mean()


def prior_from(ref: list[list[float]]) -> RefPrior:
    df = pd.DataFrame({"row": np.array([b for b, rs in enumerate(ref) for _ in rs], dtype=np.int64),
                       "sample": [j for rs in ref for j in range(len(rs))],
                       "reward": [float(x) for rs in ref for x in rs]})
    return RefPrior.from_frame(df, len(ref))


def total(out) -> torch.Tensor:
    """align + penalty of an objective's return (BLADE may still return (loss, diag))."""
    return out[0] + out[1] if len(out) == 3 else out[0]


def grad_of(loss: torch.Tensor, leaf: torch.Tensor) -> torch.Tensor:
    (g,) = torch.autograd.grad(loss, leaf, allow_unused=True, retain_graph=True)
    return torch.zeros_like(leaf) if g is None else g


# rewards with a tied best, a tied worst, an all-tied context and a plain one
REWARDS = [[0.2, 0.9, 0.9, 0.1, 0.5],
           [0.3, 0.3, 0.3, 0.3, 0.3],
           [0.0, 0.4, 0.0, 0.7, 0.2],
           [1.0, 0.0, 0.5, 0.5, 0.25]]


# ---------------------------------------------------------------------------------------------
# Configs, registry, what the loop is asked for, torch-free import
# ---------------------------------------------------------------------------------------------


def test_defaults_are_the_papers():
    assert DPOConfig().beta == 0.1
    assert (SDPOConfig().beta, SDPOConfig().m, SDPOConfig().negatives) == (1.0, 3, "random")
    assert (BoNBoNConfig().n, BoNBoNConfig().alpha, BoNBoNConfig().margin) == (8, 0.005, None)
    g = GRPOConfig()
    assert (g.beta, g.epsilon, g.epsilon_high, g.scale_rewards, g.loss_type, g.kl_ratio_correction) == \
        (0.04, 0.2, None, "group", "dapo", True)
    assert (VBoNConfig().n, VBoNConfig().kl_coef) == (8, None)
    b = BONDConfig()
    assert (b.n, b.beta_j, b.eta, b.anchor) == (8, 0.5, 0.02, "ema")


def test_grpo_defaults_match_installed_trl():
    """Pinned: the defaults we follow are TRL 1.16.0's (β is docs/method.md §5's 0.04, not TRL's 0.0)."""
    import trl
    from trl import GRPOConfig as TRLGRPOConfig

    assert trl.__version__ == "1.16.0"
    fields = {f.name: f.default for f in dataclasses.fields(TRLGRPOConfig)}
    assert (fields["epsilon"], fields["epsilon_high"], fields["scale_rewards"], fields["loss_type"],
            fields["use_bias_correction_kl"], fields["importance_sampling_level"], fields["beta"]) == \
        (0.2, None, "group", "dapo", True, "token", 0.0)


def test_data_source_and_anchor_requests():
    prior = prior_from([[0.1, 0.2]])
    assert {n: objective_class(n).data for n in ("dpo", "sdpo", "bonbon", "grpo", "vbon", "bond")} == \
        {"dpo": "reference", "sdpo": "reference", "bonbon": "reference", "grpo": "policy", "vbon": "policy",
         "bond": "policy"}
    assert all(objective_class(n).data in ("policy", "reference") for n in NAMES)
    ema = BONDObjective(BONDConfig(), prior)
    assert (ema.anchor_ema, ema.anchor_samples) == (0.02, 8)
    fixed = BONDObjective(BONDConfig(anchor="reference"), prior)
    assert (fixed.anchor_ema, fixed.anchor_samples) == (None, 0)
    assert GRPOObjective(None).anchor_ema is None


@pytest.mark.parametrize("name, options, message", [
    ("dpo", {"beta": 0}, "beta must be a finite number > 0"),
    ("sdpo", {"m": 0}, "m (negatives per context) must be >= 1"),
    ("sdpo", {"negatives": "hardest"}, "is not allowed"),
    ("bonbon", {"alpha": 1.5}, "alpha must lie in [0, 1]"),
    ("bonbon", {"n": 1}, "n must be >= 2"),
    ("grpo", {"epsilon": 1.0}, "epsilon must lie in (0, 1)"),
    ("grpo", {"loss_type": "bnpo"}, "is not allowed"),
    ("vbon", {"n": 1}, "n (the BoN N) must be >= 2"),
    ("vbon", {"kl_coef": -1.0}, "kl_coef must be a finite number >= 0"),
    ("bond", {"eta": 0.0}, "eta must lie in (0, 1]"),
    ("bond", {"beta_j": 2.0}, "beta_j must lie in [0, 1]"),
    ("bond", {"anchor_samples": 0}, "anchor_samples must be >= 1"),
    ("dpo", {"betta": 0.2}, "did you mean 'beta'"),
])
def test_bad_options_are_clear_errors(name, options, message):
    with pytest.raises(ConfigError) as info:
        objective_config(name, options)
    assert message in str(info.value) and f"objective.{name}" in str(info.value)


@pytest.mark.parametrize("name", NAMES)
def test_blade_options_lists_every_option(name, capsys):
    from blade.cli import main

    assert main(["options", name]) == 0
    out = capsys.readouterr().out
    config_class = objective_class(name).config_class
    for f in dataclasses.fields(config_class) if config_class else ():
        assert f"`{f.name}`" in out and f.metadata["help"] in out


def test_importing_the_baselines_does_not_import_torch():
    """Every baseline module (found by scanning), its config validation and its target kind: what
    a dry run and the analysis do, torch-free."""
    code = ("import sys\n"
            "from tests.objectives import objectives_in\n"
            "from blade.align.registry import objective_class, objective_config\n"
            "names = objectives_in('baselines')\n"
            "assert names, 'no baseline found'\n"
            "for n in names: objective_class(n).target_kind(objective_config(n, {}))\n"
            "assert 'torch' not in sys.modules, sorted(m for m in sys.modules if m.startswith('torch'))[:5]\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr


def test_every_objective_says_what_target_it_has():
    """The kinds the analysis groups rows by (analysis/rows.py is_static): the published static BoN
    methods are static, the preference and RL baselines have no BoN target, and every shipped
    objective (a new one included) names one of the kinds, for its defaults."""
    kinds = {n: objective_class(n).target_kind(objective_config(n, {})) for n in shipped_objectives()}
    assert set(kinds.values()) <= set(typing.get_args(TargetKind)), kinds
    assert {n: kinds[n] for n in ("vbon", "bond", "dpo", "sdpo", "grpo", "bonbon", "blade")} == \
        {"vbon": "static", "bond": "static", "dpo": "none", "sdpo": "none", "grpo": "none", "bonbon": "none",
         "blade": "dynamic"}
    # BOND is static with either anchor (the EMA anchor's own CDF, or F̂_ref)
    assert objective_class("bond").target_kind(objective_config("bond", {"anchor": "reference"})) == "static"


# ---------------------------------------------------------------------------------------------
# DPO
# ---------------------------------------------------------------------------------------------


def dpo_by_hand(batch, beta: float) -> torch.Tensor:
    """DPO Eq. 7 per context with a pair: −log σ(β(h_w − h_l)) = softplus(−β(h_w − h_l)), best/worst
    = first highest/lowest reward; mean over contexts with a pair."""
    r = batch.rewards.double().numpy()
    h = lists(batch.token_logp, batch.mask) - lists(batch.ref_token_logp, batch.mask)
    terms = []
    for b in range(r.shape[0]):
        if r[b].max() == r[b].min():
            continue
        w, lo = int(np.argmax(r[b])), int(np.argmin(r[b]))
        x = beta * (h[b, w] - h[b, lo])
        terms.append(torch.nn.functional.softplus(-x))  # = −log σ(x); checked against math below
        assert math.isclose(terms[-1].item(), softplus(-x.item()), rel_tol=1e-12, abs_tol=1e-12)
    return torch.stack(terms).mean() if terms else torch.zeros((), dtype=torch.float64)


@pytest.mark.parametrize("beta, scale", [(0.1, 1.0), (2.0, 1.0), (0.1, 1e3)])
def test_dpo_against_hand_formula(beta, scale):
    batch, leaf = make_batch(REWARDS, scale=scale)
    align, penalty, diag = DPOObjective(DPOConfig(beta=beta))(batch)
    expect = dpo_by_hand(batch, beta)
    assert torch.isfinite(align)
    assert align.item() == pytest.approx(expect.item(), rel=1e-10, abs=1e-12)
    assert torch.allclose(grad_of(align, leaf), grad_of(expect, leaf), atol=1e-12)
    assert penalty.item() == 0.0 and penalty.dim() == 0
    assert diag["pair_frac"] == 0.75 and diag["tied_frac"] == 0.25
    assert diag["reward_bon_group"] == pytest.approx(np.mean([0.9, 0.3, 0.7, 1.0]))


def test_dpo_pairs_best_with_worst_and_ignores_ties():
    """Context 0: best = list 1 (first of the tied 0.9s), worst = list 3; the all-tied context gets no gradient."""
    batch, leaf = make_batch(REWARDS)
    align, _, _ = DPOObjective(None)(batch)
    g = grad_of(align, leaf).abs().sum(-1)                                         # (B, G)
    assert (g[0] > 0).tolist() == [False, True, False, True, False]
    assert (g[1] == 0).all()
    assert (grad_of(align, leaf)[~batch.mask] == 0).all()                          # padding carries no gradient


def test_dpo_all_tied_batch_is_zero_and_finite():
    batch, leaf = make_batch([[0.5] * 4] * 3)
    align, _, diag = DPOObjective(None)(batch)
    assert align.item() == 0.0 and diag["pair_frac"] == 0.0
    assert (grad_of(align, leaf) == 0).all()


def trl_dpo_loss(chosen_tok, rejected_tok, chosen_mask, rejected_mask, ref_chosen, ref_rejected, beta):
    """TRL 1.16 ``DPOTrainer._compute_loss`` (loss_type sigmoid, reverse KL, precomputed reference
    log-probs) on given per-token log-probs: a stub model returns them as its fused head's
    ``log_probs`` (0 where the label is masked, as TRL's fused head gives), a stub trainer the
    attributes the method reads. Returns TRL's loss tensor."""
    from trl.trainer.dpo_trainer import DPOTrainer

    per_token = torch.cat([chosen_tok, rejected_tok], 0)                           # (2P, T)
    P, T = chosen_tok.shape
    completion = torch.cat([chosen_mask, rejected_mask], 0).long()
    completion = torch.cat([torch.zeros(2 * P, 1, dtype=torch.long), completion], 1)  # (2P, T+1): a prompt token
    identity = lambda x: x  # noqa: E731
    trainer = SimpleNamespace(
        model=SimpleNamespace(training=True), accelerator=SimpleNamespace(device="cpu", gather_for_metrics=identity,
                                                                         gather=identity),
        aux_loss_enabled=False, ld_alpha=None, precompute_ref_logps=True, f_divergence_type="reverse_kl",
        loss_types=["sigmoid"], loss_weights=[1.0], beta=beta, use_weighting=False,
        _metrics=defaultdict(lambda: defaultdict(list)), _total_train_tokens=0, _tp_size=1)
    outputs = SimpleNamespace(log_probs=per_token, entropy=torch.zeros_like(per_token),
                              mean_logits=torch.zeros_like(per_token), is_top1=torch.zeros_like(per_token, dtype=torch.bool))
    model = lambda **kwargs: outputs  # noqa: E731
    inputs = {"input_ids": torch.zeros(2 * P, T + 1, dtype=torch.long), "attention_mask": torch.ones_like(completion),
              "completion_mask": completion, "ref_chosen_logps": ref_chosen, "ref_rejected_logps": ref_rejected}
    return DPOTrainer._compute_loss(trainer, model, inputs, return_outputs=False)


@pytest.mark.parametrize("beta, scale", [(0.1, 1.0), (0.5, 1e3)])
def test_dpo_against_trl(beta, scale):
    rewards = [r for r in REWARDS if max(r) > min(r)]                              # TRL has no notion of a tie
    batch, leaf = make_batch(rewards, scale=scale, seed=4)
    align, _, _ = DPOObjective(DPOConfig(beta=beta))(batch)
    r = np.asarray(rewards)
    ar = np.arange(len(r))
    w, lo = r.argmax(1), r.argmin(1)
    m = batch.mask
    ref = lists(batch.ref_token_logp, m)
    ours_grad = grad_of(align, leaf)
    trl_loss = trl_dpo_loss(leaf[ar, w] * m[ar, w], leaf[ar, lo] * m[ar, lo], m[ar, w], m[ar, lo],
                            ref[ar, w], ref[ar, lo], beta)
    assert align.item() == pytest.approx(trl_loss.item(), rel=1e-10, abs=1e-12)
    assert torch.allclose(ours_grad, grad_of(trl_loss, leaf), atol=1e-12)


# ---------------------------------------------------------------------------------------------
# S-DPO
# ---------------------------------------------------------------------------------------------


def sdpo_by_hand(batch, beta, negatives: dict[int, list[int]]) -> torch.Tensor:
    """S-DPO: −log σ(−log Σ_j exp(β(h_lj − h_w))) per context, written as the paper writes it."""
    r = batch.rewards.double().numpy()
    h = lists(batch.token_logp, batch.mask) - lists(batch.ref_token_logp, batch.mask)
    terms = []
    for b, negs in negatives.items():
        w = int(np.argmax(r[b]))
        inner = sum(torch.exp(beta * (h[b, j] - h[b, w])) for j in negs)
        terms.append(-torch.nn.functional.logsigmoid(-torch.log(inner)))
    return torch.stack(terms).mean()


def test_sdpo_lowest_negatives_against_hand_formula():
    batch, leaf = make_batch(REWARDS)
    align, penalty, diag = SDPOObjective(SDPOConfig(beta=1.0, m=3, negatives="lowest"))(batch)
    # strictly below the best, lowest first (stable): ctx 0 → 3, 0, 4; ctx 2 → 0, 2, 4; ctx 3 → 1, 4, 2
    expect = sdpo_by_hand(batch, 1.0, {0: [3, 0, 4], 2: [0, 2, 4], 3: [1, 4, 2]})
    assert align.item() == pytest.approx(expect.item(), rel=1e-10)
    assert torch.allclose(grad_of(align, leaf), grad_of(expect, leaf), atol=1e-12)
    assert penalty.item() == 0.0 and diag["pair_frac"] == 0.75 and diag["negatives_mean"] == 3.0


def test_sdpo_random_negatives_are_distinct_lower_lists():
    """m = 2 distinct negatives among the lists strictly below the best (3 in context 0, 4 in
    context 1), never a list tying the best; the loss is the formula over the drawn ones."""
    rewards = [[0.2, 0.9, 0.9, 0.1, 0.5], [0.5, 0.9, 0.5, 0.5, 0.5]]
    batch, leaf = make_batch(rewards, seed=2)
    obj = SDPOObjective(SDPOConfig(beta=0.7, m=2))
    align, _, diag = obj(batch)
    used = grad_of(align, leaf).abs().sum(-1) > 0                                  # (B, G): lists in the loss
    assert used[0, 1] and used[1, 1] and not used[0, 2]                            # the best; never a tied best
    assert used[0].sum() == 3 and used[1].sum() == 3                               # best + m = 2 negatives
    negs = {b: [j for j in range(5) if used[b, j] and j != 1] for b in range(2)}
    expect = sdpo_by_hand(batch, 0.7, negs)
    assert align.item() == pytest.approx(expect.item(), rel=1e-10)
    again, _, _ = obj(batch)                                                       # same (step, row): same picks
    assert again.item() == align.item()


def test_sdpo_with_one_negative_is_dpo():
    batch, _ = make_batch(REWARDS, seed=5)
    sdpo, _, _ = SDPOObjective(SDPOConfig(beta=0.3, m=1, negatives="lowest"))(batch)
    dpo, _, _ = DPOObjective(DPOConfig(beta=0.3))(batch)
    assert sdpo.item() == pytest.approx(dpo.item(), rel=1e-12)


def test_sdpo_fewer_lower_lists_than_m_and_extreme_logps():
    """One list below the best → a one-term softmax (= DPO); −1e3-scale log-probs stay finite."""
    batch, leaf = make_batch([[0.9, 0.9, 0.1, 0.9], [0.2, 0.2, 0.2, 0.2]], scale=1e3, seed=6)
    align, _, diag = SDPOObjective(SDPOConfig(beta=1.0, m=3))(batch)
    expect = sdpo_by_hand(batch, 1.0, {0: [2]})
    assert torch.isfinite(align) and align.item() == pytest.approx(expect.item(), rel=1e-10)
    assert diag["negatives_mean"] == 1.0 and diag["pair_frac"] == 0.5
    assert torch.isfinite(grad_of(align, leaf)).all()


def test_sdpo_all_tied_batch_is_zero():
    batch, leaf = make_batch([[0.0] * 4] * 2)
    align, _, _ = SDPOObjective(None)(batch)
    assert align.item() == 0.0 and (grad_of(align, leaf) == 0).all()


# ---------------------------------------------------------------------------------------------
# BoNBoN
# ---------------------------------------------------------------------------------------------


def test_bonbon_margin_is_the_bon_best_worst_gap():
    """(n−1)·H_{n−1} by hand, and by Monte Carlo from the BoN density's log-ratio (n−1)·log F with
    F of n i.i.d. samples uniform: E[(n−1)(log max U − log min U)]."""
    assert bon_margin(8) == pytest.approx(7 * (1 + 1 / 2 + 1 / 3 + 1 / 4 + 1 / 5 + 1 / 6 + 1 / 7))
    assert bon_margin(2) == pytest.approx(1.0)
    u = np.random.default_rng(0).random((200_000, 8))
    mc = (7 * (np.log(u.max(1)) - np.log(u.min(1)))).mean()
    assert mc == pytest.approx(bon_margin(8), abs=0.1)
    assert BoNBoNObjective(None).margin == pytest.approx(18.15, abs=0.01)


@pytest.mark.parametrize("alpha, scale", [(0.005, 1.0), (0.3, 1.0), (0.005, 1e3)])
def test_bonbon_against_hand_formula(alpha, scale):
    rewards = [[0.2, 0.9, 0.9, 0.1], [0.3, 0.3, 0.3, 0.3], [0.0, 0.4, 0.0, 0.7]]
    batch, leaf = make_batch(rewards, scale=scale, seed=7)
    n = 4                                                                          # G = n: every list is in the subset
    align, penalty, diag = BoNBoNObjective(BoNBoNConfig(n=n, alpha=alpha))(batch)
    lp = lists(batch.token_logp, batch.mask)
    h = lp - lists(batch.ref_token_logp, batch.mask)
    margin = 3 * (1 + 1 / 2 + 1 / 3)
    best, worst = [1, 0, 3], [3, 0, 0]                                             # first max / first min
    sft = -sum(lp[b, best[b]] for b in range(3)) / 3                               # every context, per-list NLL
    ipo = sum((h[b, best[b]] - h[b, worst[b]] - margin) ** 2 for b in (0, 2)) / 2  # contexts with a gap
    expect = alpha * sft + (1 - alpha) * ipo
    assert torch.isfinite(align)
    assert align.item() == pytest.approx(expect.item(), rel=1e-10)
    assert torch.allclose(grad_of(align, leaf), grad_of(expect, leaf), rtol=1e-9, atol=1e-9)
    assert penalty.item() == 0.0 and diag["pair_frac"] == pytest.approx(2 / 3)


def test_bonbon_subsets_n_of_m_and_needs_m_at_least_n():
    rewards = np.random.default_rng(1).random((6, 16))
    batch, leaf = make_batch(rewards, seed=8)
    obj = BoNBoNObjective(BoNBoNConfig(n=8, alpha=0.5))
    align, _, _ = obj(batch)
    assert obj(batch)[0].item() == align.item()                                    # seeded by (step, row)
    used = (grad_of(align, leaf).abs().sum(-1) > 0).sum(1)
    assert (used == 2).all()                                                       # one best, one worst per context
    with pytest.raises(ValueError, match="n=8 but the batch holds only 4"):
        obj(make_batch([[0.1, 0.2, 0.3, 0.4]])[0])


def test_bonbon_all_tied_batch_keeps_only_the_sft_term():
    batch, leaf = make_batch([[0.5] * 4] * 2, seed=9)
    align, _, diag = BoNBoNObjective(BoNBoNConfig(n=4, alpha=0.25))(batch)
    lp = lists(batch.token_logp, batch.mask)
    assert align.item() == pytest.approx(0.25 * -(lp[0, 0] + lp[1, 0]).item() / 2, rel=1e-12)
    assert diag["loss_ipo"] == 0.0


# ---------------------------------------------------------------------------------------------
# GRPO
# ---------------------------------------------------------------------------------------------


def grpo_by_hand(batch, beta, eps, loss_type="dapo", scale="group", kl_ratio=True) -> torch.Tensor:
    """GRPO Eq. 3/4 as TRL 1.16 aggregates it, token by token."""
    r = batch.rewards.double().numpy()
    B, G, T = batch.mask.shape
    lp, old, ref, m = batch.token_logp, batch.old_token_logp, batch.ref_token_logp, batch.mask
    batch_std = float(np.std(r, ddof=1))
    per_list, tokens, summed = [], 0, 0.0
    for b in range(B):
        mean, std = float(np.mean(r[b])), float(np.std(r[b], ddof=1))
        for g in range(G):
            a = r[b, g] - mean
            a = a / (std + 1e-4) if scale == "group" else a / (batch_std + 1e-4) if scale == "batch" else a
            acc = 0.0
            for t in range(T):
                if not m[b, g, t]:
                    continue
                rho = torch.exp(lp[b, g, t] - old[b, g, t])
                pg = -torch.minimum(rho * a, torch.clamp(rho, 1 - eps, 1 + eps) * a)
                d = ref[b, g, t] - lp[b, g, t]
                kl = torch.exp(d) - d - 1
                acc = acc + pg + beta * kl * (rho if kl_ratio else 1.0)
            n_tok = int(m[b, g].sum())
            per_list.append(acc / n_tok)
            summed, tokens = summed + acc, tokens + n_tok
    if loss_type == "grpo":
        return sum(per_list) / len(per_list)
    if loss_type == "dr_grpo":
        return summed / (B * G * T)
    return summed / tokens


@pytest.mark.parametrize("loss_type", ["dapo", "grpo", "dr_grpo"])
@pytest.mark.parametrize("scale", ["group", "batch", "none"])
def test_grpo_against_hand_formula(loss_type, scale):
    # old_noise makes the ratio leave [0.8, 1.2] on some tokens, so the clip is exercised
    batch, leaf = make_batch(REWARDS, old_noise=0.4, seed=11)
    cfg = GRPOConfig(beta=0.04, epsilon=0.2, loss_type=loss_type, scale_rewards=scale)
    align, penalty, diag = GRPOObjective(cfg)(batch)
    expect = grpo_by_hand(batch, 0.04, 0.2, loss_type, scale)
    assert (align + penalty).item() == pytest.approx(expect.item(), rel=1e-9, abs=1e-12)
    assert torch.allclose(grad_of(align + penalty, leaf), grad_of(expect, leaf), rtol=1e-8, atol=1e-12)
    assert 0 < diag["clip_ratio"] < 1


def test_grpo_clipping_acts_and_tied_groups_only_feel_the_kl():
    batch, leaf = make_batch(REWARDS, old_noise=0.4, seed=11)
    align, penalty, _ = GRPOObjective(GRPOConfig(beta=0.0))(batch)
    unclipped = grpo_by_hand(batch, 0.0, 1e9)                                      # ε → ∞: no clipping
    assert abs(align.item() - unclipped.item()) > 1e-3
    g = grad_of(align, leaf)
    assert (g[1] == 0).all()                                                       # all-tied group: advantage 0
    assert penalty.item() == 0.0


def test_grpo_all_tied_batch_has_no_policy_gradient():
    batch, leaf = make_batch([[0.7] * 4] * 3, old_noise=0.3, seed=10)
    align, penalty, diag = GRPOObjective(None)(batch)
    assert align.item() == 0.0 and (grad_of(align, leaf) == 0).all()
    assert penalty.item() > 0 and diag["advantage_abs"] == 0.0 and diag["tied_frac"] == 1.0


def test_grpo_without_kl_ratio_correction_and_extreme_logps():
    batch, leaf = make_batch(REWARDS, scale=1e3, ref_noise=0.5, old_noise=0.1, seed=12)
    align, penalty, _ = GRPOObjective(GRPOConfig(kl_ratio_correction=False))(batch)
    expect = grpo_by_hand(batch, 0.04, 0.2, kl_ratio=False)
    assert torch.isfinite(align + penalty)
    assert (align + penalty).item() == pytest.approx(expect.item(), rel=1e-9)


def trl_grpo_loss(batch, beta, eps, loss_type) -> torch.Tensor:
    """TRL 1.16 ``GRPOTrainer._compute_loss`` on the batch's per-token log-probs: the policy forward
    (``_get_per_token_logps_and_entropies``) is stubbed to return them, the advantages are
    computed as TRL's ``_generate_and_score_completions`` does (group mean, ``nanstd`` + 1e-4)."""
    from trl.trainer.grpo_trainer import GRPOTrainer
    from trl.trainer.utils import nanstd

    B, G, T = batch.mask.shape
    N = B * G
    per_token = batch.token_logp.reshape(N, T)
    rewards = batch.rewards.reshape(N).double()
    mean = rewards.view(-1, G).mean(1).repeat_interleave(G)
    std = nanstd(rewards.view(-1, G), dim=1).repeat_interleave(G)
    advantages = (rewards - mean) / (std + 1e-4)
    mask = batch.mask.reshape(N, T).long()
    identity = lambda x: x  # noqa: E731
    trainer = SimpleNamespace(
        _get_per_token_logps_and_entropies=lambda *a, **k: (per_token, torch.zeros_like(per_token), None),
        aux_loss_enabled=False, top_entropy_quantile=1.0, off_policy_mask_threshold=None,
        importance_sampling_level="token", beta=beta, loss_type=loss_type, epsilon_low=eps, epsilon_high=eps,
        args=SimpleNamespace(use_bias_correction_kl=True, delta=None, steps_per_generation=1),
        use_vllm=False, vllm_importance_sampling_correction=False, model=SimpleNamespace(training=True),
        current_gradient_accumulation_steps=1, max_completion_length=T, _entropy_bonus_enabled=False,
        accelerator=SimpleNamespace(num_processes=1, reduce=lambda t, reduction: t, gather=identity,
                                    gather_for_metrics=identity),
        _metrics=defaultdict(lambda: defaultdict(list)))
    inputs = {"prompt_ids": torch.zeros(N, 1, dtype=torch.long), "prompt_mask": torch.ones(N, 1, dtype=torch.long),
              "completion_ids": torch.zeros(N, T, dtype=torch.long), "completion_mask": mask,
              "advantages": advantages, "old_per_token_logps": batch.old_token_logp.reshape(N, T),
              "ref_per_token_logps": batch.ref_token_logp.reshape(N, T), "num_items_in_batch": mask.sum()}
    return GRPOTrainer._compute_loss(trainer, None, inputs)


@pytest.mark.parametrize("loss_type", ["dapo", "grpo", "dr_grpo"])
@pytest.mark.parametrize("scale", [1.0, 1e3])
def test_grpo_against_trl(loss_type, scale):
    batch, leaf = make_batch(REWARDS, scale=scale, old_noise=0.4, seed=13)
    align, penalty, _ = GRPOObjective(GRPOConfig(loss_type=loss_type))(batch)
    ours = align + penalty
    trl_loss = trl_grpo_loss(batch, 0.04, 0.2, loss_type)
    assert ours.item() == pytest.approx(trl_loss.item(), rel=1e-9, abs=1e-12)
    assert torch.allclose(grad_of(ours, leaf), grad_of(trl_loss, leaf), rtol=1e-8, atol=1e-12)


# ---------------------------------------------------------------------------------------------
# vBoN
# ---------------------------------------------------------------------------------------------

REF = [[0.1, 0.5, 0.5, 0.9], [0.3, 0.3, 0.3], [0.0, 0.2, 0.4, 0.6, 0.8], [0.5, 0.25]]


def vbon_by_hand(batch, ref, n, kl_coef=None):
    """vBoN: −E[log F̂_ref(r)] by REINFORCE + LOO, plus 1/(N−1)·k3 KL(π_θ ‖ π_ref)."""
    r = batch.rewards.double().numpy()
    log_f = np.array([[math.log(mid_rank_cdf(x, on_f32(ref[b]))) for x in r[b]] for b in range(len(r))])
    lp = lists(batch.token_logp, batch.mask)
    kl = k3_by_hand(batch.token_logp, batch.ref_token_logp, batch.mask)
    return loo_loss(log_f, lp) + (1.0 / (n - 1) if kl_coef is None else kl_coef) * kl


@pytest.mark.parametrize("n, scale", [(8, 1.0), (4, 1.0), (8, 1e3)])
def test_vbon_against_hand_formula(n, scale):
    batch, leaf = make_batch(REWARDS, scale=scale, seed=14)
    align, penalty, diag = VBoNObjective(VBoNConfig(n=n), prior_from(REF))(batch)
    expect = vbon_by_hand(batch, REF, n)
    assert torch.isfinite(align + penalty)
    assert (align + penalty).item() == pytest.approx(expect.item(), rel=1e-9, abs=1e-12)
    assert torch.allclose(grad_of(align + penalty, leaf), grad_of(expect, leaf), rtol=1e-8, atol=1e-12)
    assert penalty.item() == pytest.approx(k3_by_hand(batch.token_logp, batch.ref_token_logp, batch.mask).item() / (n - 1))
    for key in ("weight_spread", "ess", "saturated_frac", "signal_std", "reward_mean", "reward_bon_group", "kl"):
        assert key in diag


def test_vbon_is_blade_static_backward_with_unit_kl_scaled():
    """vBoN × (N−1) = BLADE(estimator static, loss backward, beta_kl 1): same target, same estimator."""
    batch, leaf = make_batch(REWARDS, seed=15)
    prior = prior_from(REF)
    v = total(VBoNObjective(VBoNConfig(n=8), prior)(batch))
    b = total(BladeObjective(BladeConfig(estimator="static", loss="backward", beta_kl=1.0, n=8), prior)(batch))
    assert (7 * v).item() == pytest.approx(b.item(), rel=1e-9)
    assert torch.allclose(7 * grad_of(v, leaf), grad_of(b, leaf), rtol=1e-8, atol=1e-12)


def test_vbon_all_tied_group_has_no_reward_gradient():
    batch, leaf = make_batch([[0.3] * 4, [0.3] * 4], seed=16)
    align, _, _ = VBoNObjective(None, prior_from([[0.1, 0.5], [0.3, 0.3]]))(batch)
    assert align.item() == 0.0 and (grad_of(align, leaf) == 0).all()


# ---------------------------------------------------------------------------------------------
# BOND / J-BOND
# ---------------------------------------------------------------------------------------------

ANCHOR_R = [[0.1, 0.9, 0.5], [0.3, 0.3, 0.3], [0.2, 0.2, 0.6], [0.5, 0.0, 1.0]]


def bond_by_hand(batch, n, beta_j, log_f: np.ndarray, anchor_lp: torch.Tensor) -> torch.Tensor:
    """J-BOND's Jeffreys mix, by hand: forward by SNIS with weights ∝ F^(N−1)·π_a/π_old, backward by
    REINFORCE + LOO with reward (N−1)·log F − log π_θ/π_a."""
    m = batch.mask
    lp, old = lists(batch.token_logp, m), lists(batch.old_token_logp, m).numpy()
    a = anchor_lp.numpy()
    B, G = log_f.shape
    fwd = 0.0
    for b in range(B):
        s = [(n - 1) * log_f[b, i] + a[b, i] - old[b, i] for i in range(G)]
        z = sum(math.exp(x - max(s)) for x in s)
        w = [math.exp(x - max(s)) / z for x in s]
        fwd = fwd - sum((w[i] - 1.0 / G) * lp[b, i] for i in range(G))
    fwd = fwd / B
    signal = np.array([[(n - 1) * log_f[b, i] - (lp[b, i].item() - a[b, i]) for i in range(G)] for b in range(B)])
    return (1 - beta_j) * fwd + beta_j * loo_loss(signal, lp)


@pytest.mark.parametrize("beta_j, scale", [(0.5, 1.0), (0.0, 1.0), (1.0, 1.0), (0.5, 1e3)])
def test_bond_ema_anchor_against_hand_formula(beta_j, scale):
    batch, leaf = make_batch(REWARDS, scale=scale, old_noise=0.2, anchor_noise=0.3, anchor_rewards=ANCHOR_R, seed=17)
    align, penalty, diag = BONDObjective(BONDConfig(n=4, beta_j=beta_j, anchor_samples=3))(batch)
    r = batch.rewards.double().numpy()
    log_f = np.array([[math.log(mid_rank_cdf(x, on_f32(ANCHOR_R[b]))) for x in r[b]] for b in range(len(r))])
    expect = bond_by_hand(batch, 4, beta_j, log_f, lists(batch.anchor_token_logp, batch.mask))
    assert torch.isfinite(align)
    assert align.item() == pytest.approx(expect.item(), rel=1e-8, abs=1e-10)
    assert torch.allclose(grad_of(align, leaf), grad_of(expect, leaf), rtol=1e-7, atol=1e-10)
    assert penalty.item() == 0.0                                                   # beta_kl default 0
    assert diag["anchor_reward_mean"] == pytest.approx(np.mean(ANCHOR_R), rel=1e-6)
    for key in ("weight_spread", "ess", "saturated_frac", "signal_std", "reward_bon_group", "loss_forward"):
        assert key in diag


def test_bond_reference_anchor_on_policy_is_blade_static_jeffreys():
    """Anchor π_ref with π_θ = π_old = π_ref: the importance ratios and the log π_θ/π_a reward
    vanish, and J-BOND's loss is BLADE's static Jeffreys loss."""
    batch, leaf = make_batch(REWARDS, ref_noise=0.0, old_noise=0.0, seed=18)
    prior = prior_from(REF)
    ours = total(BONDObjective(BONDConfig(anchor="reference", beta_kl=0.05), prior)(batch))
    blade = total(BladeObjective(BladeConfig(estimator="static", loss="jeffreys", beta_j=0.5, beta_kl=0.05), prior)(batch))
    assert ours.item() == pytest.approx(blade.item(), rel=1e-9, abs=1e-12)
    assert torch.allclose(grad_of(ours, leaf), grad_of(blade, leaf), rtol=1e-8, atol=1e-12)


def test_bond_reference_anchor_off_policy_against_hand_formula():
    batch, leaf = make_batch(REWARDS, ref_noise=0.4, old_noise=0.2, seed=19)
    align, penalty, _ = BONDObjective(BONDConfig(anchor="reference", beta_kl=0.1), prior_from(REF))(batch)
    r = batch.rewards.double().numpy()
    log_f = np.array([[math.log(mid_rank_cdf(x, on_f32(REF[b]))) for x in r[b]] for b in range(len(r))])
    expect = bond_by_hand(batch, 8, 0.5, log_f, lists(batch.ref_token_logp, batch.mask)) \
        + 0.1 * k3_by_hand(batch.token_logp, batch.ref_token_logp, batch.mask)
    assert (align + penalty).item() == pytest.approx(expect.item(), rel=1e-8)
    assert torch.allclose(grad_of(align + penalty, leaf), grad_of(expect, leaf), rtol=1e-7, atol=1e-10)


def test_bond_all_tied_on_anchor_gives_no_gradient():
    batch, leaf = make_batch([[0.4] * 3] * 2, ref_noise=0.0, old_noise=0.0, anchor_noise=0.0,
                             anchor_rewards=[[0.4] * 3] * 2, seed=20)
    align, _, diag = BONDObjective(BONDConfig(n=4, anchor_samples=3))(batch)
    assert abs(align.item()) < 1e-12 and grad_of(align, leaf).abs().max() < 1e-12
    assert diag["weight_spread"] == pytest.approx(0.0, abs=1e-12) and diag["tied_frac"] == 1.0


def test_bond_ema_without_anchor_fields_is_a_clear_error():
    batch, _ = make_batch(REWARDS)
    with pytest.raises(ValueError, match="anchor_token_logp and batch.anchor_rewards"):
        BONDObjective(None)(batch)
