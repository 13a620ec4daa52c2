"""Constrained list log-probs (docs/method.md (3.9)): the training forward scores a list under the
distribution the sampler draws it from, and that is what makes BLADE's gradient right.

A tiny atomic-codec policy over 5 items, lists of K = 3: all 60 ordered lists are enumerated
exactly, with full forward passes and Python sets of the items still allowed — independent of
blade's trie and mask. Then
(a) the constrained list probabilities sum to 1, the training forward
    (``token_logprobs(constrained=True)``) gives them, and the sampler draws from them (its
    ``logp``/``sample_logp`` and its frequencies);
(b) BLADE's forward-loss gradient equals the exact ∇KL(π* ‖ π_θ) of the constrained list
    distribution, docs/method.md (3.5): on a group whose lists occur in proportion to π (the
    large-G limit, up to rounding) and on 20 000 lists drawn by the sampler (within 4 standard
    errors of the self-normalised estimate);
(c) the −1/G baseline term's expected gradient is zero under the constrained log-probs — exactly by
    enumeration, and to sampling error — but not under the model's own (unconstrained) log-probs:
    there it is the gradient of the expected log allowed mass, a bias of the whole estimator.
Removing the mask from the training forward fails (a), (b) and (c).
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd
import pytest
import torch

from blade.align.estimators import RefPrior
from blade.align.blade_objective import BladeConfig, BladeObjective
from blade.align.objective import RolloutBatch, forward_kl_loss
from blade.model.policy import Policy, PolicyConfig
from blade.sampling import ListSampler

ITEMS = pd.DataFrame({"item_id": [3, 5, 7, 9, 11], "title": list("abcde"), "genres": [["x"]] * 5})
K, N = 3, 4                                                  # list length; the BoN N of the target
LISTS = list(itertools.permutations(ITEMS["item_id"].tolist(), K))  # all 60 ordered lists
VALUE = dict(zip(ITEMS["item_id"], [1.0, 0.1, 0.6, 0.3, 0.0]))
REFERENCE = [0.3, 0.6, 0.9, 1.0, 1.2, 1.5]                   # the static prior's reference rewards
G_SAMPLED = 20_000


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def pol() -> Policy:
    torch.manual_seed(1)
    policy = Policy.build(PolicyConfig(codec="atomic", layers=1, hidden=16, heads=2, kv_heads=1, intermediate=32,
                                       device="cpu"), ITEMS)
    with torch.no_grad():  # tied embeddings: larger logits, a distribution far from uniform
        policy.model.get_output_embeddings().weight.mul_(10.0)
    policy.model.eval()
    return policy


@pytest.fixture(scope="module")
def prompt(pol) -> list[int]:
    return pol.codec.prompt([7, 3], K)


def reward(lst) -> float:
    """A DCG-like list reward: the items' values discounted by position."""
    return sum(VALUE[i] / math.log2(k + 2) for k, i in enumerate(lst))


def static_f(r: float) -> float:
    """F̂_ref(r) by hand: smoothed mid-rank CDF of the reference rewards, docs/method.md (2.2)."""
    return (1 + sum(v < r for v in REFERENCE) + 0.5 * sum(v == r for v in REFERENCE)) / (len(REFERENCE) + 1)


def exact_list_logp(pol: Policy, prompt: list[int], lists) -> torch.Tensor:
    """(L,) float64 log π(y|x) of each list under the constrained policy, with grad: at each slot the
    softmax of the full forward's logits over the item tokens not yet listed (Python sets)."""
    tok = {i: pol.codec.tokenizer.convert_tokens_to_ids(f"<i{i}>") for i in ITEMS["item_id"]}
    ids = torch.tensor([prompt + [tok[i] for i in lst] for lst in lists])
    logits = pol.model(input_ids=ids).logits[:, len(prompt) - 1:-1].double()  # (L, K, V)
    out = []
    for r, lst in enumerate(lists):
        terms = [logits[r, t, tok[i]] - logits[r, t, [tok[j] for j in tok if j not in lst[:t]]].logsumexp(0)
                 for t, i in enumerate(lst)]
        out.append(torch.stack(terms).sum())
    return torch.stack(out)


def train_token_logp(pol: Policy, prompt: list[int], lists, constrained: bool):
    """The training forward, as the alignment loop calls it: (L, T) token log-probs and mask."""
    return pol.token_logprobs([prompt] * len(lists), [pol.codec.list_tokens(lst) for lst in lists],
                              constrained=constrained)


def params_of(pol: Policy) -> list[torch.Tensor]:
    return [p for p in pol.model.parameters() if p.requires_grad]


def flat_grad(value: torch.Tensor, params: list[torch.Tensor], retain: bool = False) -> torch.Tensor:
    grads = torch.autograd.grad(value, params, retain_graph=retain, allow_unused=True)
    return torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1).double() for g, p in zip(grads, params)])


def list_jacobian(pol: Policy, prompt: list[int], constrained: bool) -> torch.Tensor:
    """(60, P): ∇_θ log π(y|x) of every list through the training forward."""
    params = params_of(pol)
    logp, mask = train_token_logp(pol, prompt, LISTS, constrained)
    per_list = (logp * mask).sum(-1)
    return torch.stack([flat_grad(per_list[j], params, retain=True) for j in range(len(LISTS))])


def exact_forward_kl_gradient(pol: Policy, prompt: list[int]) -> tuple[torch.Tensor, np.ndarray]:
    """∇_θ KL(π* ‖ π_θ) = −Σ_y π*(y)·∇log π_θ(y) with π* ∝ π_θ·F̂(r)^(N−1) held fixed, by enumeration
    (independent path); also returns π (60,)."""
    logp = exact_list_logp(pol, prompt, LISTS)
    pi = logp.detach().exp().numpy()
    f = np.array([static_f(reward(lst)) for lst in LISTS])
    target = pi * f ** (N - 1)
    target /= target.sum()
    return flat_grad(-(torch.as_tensor(target) * logp).sum(), params_of(pol)), pi


def blade_gradient(pol: Policy, prompt: list[int], ys: np.ndarray, constrained: bool) -> torch.Tensor:
    """Autograd of BLADE's forward loss (β_kl = 0, static F̂) on one group holding lists ``ys``
    (indices into LISTS), with the token log-probs of the training forward."""
    logp, mask = train_token_logp(pol, prompt, LISTS, constrained)
    prior = RefPrior.from_frame(pd.DataFrame({"row": np.zeros(len(REFERENCE), dtype=np.int64),
                                              "sample": np.arange(len(REFERENCE)), "reward": REFERENCE}), 1)
    rewards = torch.tensor([[reward(LISTS[j]) for j in ys]], dtype=torch.float32)
    tok = logp[ys][None]  # (1, G, T): every rollout's tokens, gradients summed back onto its list
    batch = RolloutBatch(rows=np.array([0]), rewards=rewards, token_logp=tok, ref_token_logp=tok.detach(),
                         old_token_logp=tok.detach(), mask=mask[ys][None], step=0)
    align, penalty, _ = BladeObjective(BladeConfig(estimator="static", n=N, beta_kl=0.0), prior)(batch)
    return flat_grad(align + penalty, params_of(pol))


@pytest.fixture(scope="module")
def sampled(pol, prompt) -> np.ndarray:
    """G_SAMPLED lists drawn by the sampler (temperature 1, top-p 1), as indices into LISTS."""
    lists = ListSampler(pol, K, batch_size=G_SAMPLED).generate([prompt] * G_SAMPLED,
                                                              generator=torch.Generator().manual_seed(0))
    index = {lst: j for j, lst in enumerate(LISTS)}
    return np.array([index[tuple(row)] for row in lists.items.tolist()])


# ---- (a) the constrained list distribution ------------------------------------------------------


def test_constrained_list_probabilities_sum_to_one_and_are_what_the_sampler_draws(pol, prompt):
    with torch.no_grad():
        exact = exact_list_logp(pol, prompt, LISTS)
        logp, mask = train_token_logp(pol, prompt, LISTS, constrained=True)
        raw, _ = train_token_logp(pol, prompt, LISTS, constrained=False)
    p = exact.exp()
    assert float(p.sum()) == pytest.approx(1.0, abs=1e-12)
    assert 4 / len(LISTS) < float(p.max()) < 0.3 and int((p > 0.005).sum()) >= 20, "far from uniform, not degenerate"
    torch.testing.assert_close((logp * mask).sum(-1).double(), exact, atol=2e-5, rtol=0,
                               msg="the training forward's constrained list log-prob != the exact one")
    assert float(raw.sum(-1).double().exp().sum()) < 0.9, "the model's own log-probs leave mass on invalid lists"

    n = G_SAMPLED
    lists = ListSampler(pol, K, batch_size=n).generate([prompt] * n, generator=torch.Generator().manual_seed(1))
    index = {lst: j for j, lst in enumerate(LISTS)}
    ids = torch.tensor([index[tuple(row)] for row in lists.items.tolist()])
    torch.testing.assert_close(lists.logp.sum(1).double(), exact[ids], atol=2e-5, rtol=0)
    torch.testing.assert_close(lists.sample_logp.sum(1).double(), exact[ids], atol=2e-5, rtol=0)  # T 1, top-p 1
    counts = torch.bincount(ids, minlength=len(LISTS)).double()
    chi2 = float(((counts - n * p) ** 2 / (n * p)).sum())
    dof = len(LISTS) - 1
    assert chi2 < dof + 5 * math.sqrt(2 * dof), f"sampler frequencies vs exact constrained π: χ² = {chi2:.1f}"


# ---- (b) BLADE's forward loss is ∇KL(π* ‖ π_θ) of the constrained distribution ---------------------


def test_forward_loss_gradient_is_exact_on_a_group_in_proportion_to_pi(pol, prompt):
    """The group holds each list round(G·π(y)) times (G = 200 000, largest remainders): the SNIS
    weights are then π* to rounding and the −1/G term averages ∇log π over π — zero only if the
    training forward's log π is the distribution's own."""
    exact, pi = exact_forward_kl_gradient(pol, prompt)
    G = 200_000
    counts = np.floor(G * pi).astype(np.int64)
    counts[np.argsort(G * pi - counts)[::-1][: G - counts.sum()]] += 1
    ys = np.repeat(np.arange(len(LISTS)), counts)
    got = blade_gradient(pol, prompt, ys, constrained=True)
    err = float((got - exact).norm() / exact.norm())
    assert err < 5e-3, f"forward-loss gradient vs exact ∇KL(π* ‖ π_θ): relative error {err:.2e}"


def _snis_standard_error(J: torch.Tensor, ys: np.ndarray) -> float:
    """Standard error (root of the trace of the covariance) of the SNIS gradient estimate
    −[Σ f_i s_i / Σ f_i − mean_i s_i], s_i = ∇log π(y_i), f_i = F̂(r_i)^(N−1), by the delta method:
    the influence of rollout i is −[f_i (s_i − A/B)/B − (s_i − C)], A = mean f s, B = mean f, C = mean s."""
    G = len(ys)
    p_hat = torch.as_tensor(np.bincount(ys, minlength=len(LISTS)) / G)                 # (60,)
    f = torch.tensor([static_f(reward(lst)) ** (N - 1) for lst in LISTS], dtype=torch.float64)
    A, B, C = (p_hat * f) @ J, float(p_hat @ f), p_hat @ J
    psi = -(f[:, None] * (J - A / B) / B - (J - C))                                     # (60, P)
    psi = psi - p_hat @ psi
    return math.sqrt(float(p_hat @ (psi**2).sum(1)) / G)


def test_forward_loss_gradient_on_sampled_lists_is_exact_to_sampling_error(pol, prompt, sampled):
    """20 000 lists drawn by the sampler: BLADE's gradient is within 4 standard errors of the exact
    ∇KL(π* ‖ π_θ); with the model's own log-probs it is far outside (the bias of the allowed mass)."""
    exact, _ = exact_forward_kl_gradient(pol, prompt)
    se = _snis_standard_error(list_jacobian(pol, prompt, constrained=True), sampled)
    got = blade_gradient(pol, prompt, sampled, constrained=True)
    dist = float((got - exact).norm())
    assert dist < 4 * se, f"|∇ − exact| = {dist:.4g} > 4 standard errors ({se:.4g}), |exact| = {float(exact.norm()):.4g}"
    unconstrained = float((blade_gradient(pol, prompt, sampled, constrained=False) - exact).norm())
    assert unconstrained > 10 * se, f"unconstrained log-probs: |∇ − exact| = {unconstrained:.4g}, SE {se:.4g}"


# ---- (c) the −1/G baseline term -------------------------------------------------------------------


def test_baseline_term_has_zero_expected_gradient_only_under_constrained_logprobs(pol, prompt, sampled):
    with torch.no_grad():
        pi = exact_list_logp(pol, prompt, LISTS).exp()
    J = list_jacobian(pol, prompt, constrained=True)
    J_raw = list_jacobian(pol, prompt, constrained=False)
    scale = math.sqrt(float(pi @ (J**2).sum(1)))  # RMS norm of one list's ∇log π
    # exactly, by enumeration: E_π[∇log π] = ∇Σ_y π(y) = 0 for the distribution's own log-prob ...
    assert float((pi @ J).norm()) < 1e-5 * scale, float((pi @ J).norm()) / scale
    # ... but the model's own log-prob adds ∇log(allowed mass): its expectation is no zero
    assert float((pi @ J_raw).norm()) > 0.05 * scale, float((pi @ J_raw).norm()) / scale

    # on the sampled group, through the loss: the baseline term alone is forward_kl_loss with w = 0,
    # i.e. (1/G)·Σ_i log π(y_i)
    se = scale / math.sqrt(len(sampled))
    for constrained, check in ((True, lambda d: d < 4 * se), (False, lambda d: d > 10 * se)):
        logp, mask = train_token_logp(pol, prompt, LISTS, constrained)
        per_rollout = (logp * mask).sum(-1)[sampled][None]                   # (1, G)
        g = flat_grad(forward_kl_loss(torch.zeros_like(per_rollout), per_rollout), params_of(pol))
        assert check(float(g.norm())), (constrained, float(g.norm()), se)
