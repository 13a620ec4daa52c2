"""The alignment loop (`blade align`): one loop for BLADE and every baseline.

Each step: draw B contexts (from the train rows that have reference rollouts), sample G lists per
context from the current policy (constrained, temperature/top-p), score them with the configured
list reward, build the :class:`RolloutBatch` (policy token log-probs with grad, reference and
sampling-policy log-probs without), call the method's Objective, clip, step. Methods differ only
in their Objective, so a comparison differs only in the objective.

Every step's diagnostics (the Objective's — weight spread, ESS, saturated fraction, signal std, KL,
rewards — plus gradient norm and the time split rollout/score/update) go to MLflow and to
``diagnostics.parquet``: the data of the gradient-decay curves. Every ``eval_every`` steps the
greedy lists of a fixed valid slice are scored; the best valid policy (the SFT start included, so
alignment that hurts is visible and never selected) is kept in ``best/``. A checkpoint at each
evaluation makes a killed run resume: contexts and sampling seeds are functions of ``[seed, step]``.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from blade.align.objective import RolloutBatch, build_objective
from blade.align.estimators import RefPrior
from blade.align.rollout import sample_groups
from blade.config import option
from blade.data.canonical import load_prepared
from blade.io import write_json, write_parquet
from blade.model.policy import Policy
from blade.rewards import ListReward, RewardConfig
from blade.seeding import seed_everything, torch_generator
from blade.train.checkpoint import load_checkpoint, save_checkpoint
from blade.train.sft import check_select_metric, selection_slice, valid_metrics


@dataclass
class AlignConfig:
    steps: int = option(200, help="optimiser steps")
    contexts_per_step: int = option(32, help="B: contexts per step")
    group_size: int = option(8, help="G: lists sampled per context per step")
    k: int = option(10, help="list length K (must equal the rollouts' K)")
    lr: float = option(3e-4, help="AdamW learning rate")
    weight_decay: float = option(0.0, help="AdamW weight decay")
    grad_clip: float = option(1.0, help="max gradient norm")
    temperature: float = option(1.0, help="rollout sampling temperature")
    top_p: float = option(1.0, help="rollout nucleus threshold")
    eval_every: int = option(20, help="steps between valid evaluations (and checkpoints)")
    valid_rows: int = option(1000, help="valid rows used for model selection (0 = all)")
    select_metric: str = option("ndcg@10", help="valid metric that picks the best step")
    batch_size: int = option(512, help="lists per sampler batch")

    def __post_init__(self) -> None:
        if min(self.steps, self.contexts_per_step, self.group_size, self.k, self.eval_every, self.batch_size) < 1:
            raise ValueError("steps, contexts_per_step, group_size, k, eval_every and batch_size must be positive")
        if self.group_size < 2:
            raise ValueError("group_size must be >= 2: group-relative weights need two rollouts")
        check_select_metric(self.select_metric, self.k)


def method_objective(method: dict[str, Any], where: str) -> tuple[str, dict[str, Any]]:
    """Split a `methods:` entry ``{objective: NAME, **options}`` into the name and its options."""
    from blade.errors import ConfigError

    if not isinstance(method, dict) or "objective" not in method:
        raise ConfigError(f"{where}: a method needs `objective: NAME` plus that objective's options")
    options = {k: v for k, v in method.items() if k != "objective"}
    return method["objective"], options


def _pad_lists(lists, T: int) -> tuple[torch.Tensor, torch.Tensor]:
    logp, mask = lists.logp[:, :T], lists.mask[:, :T]
    if logp.shape[1] < T:
        logp = torch.nn.functional.pad(logp, (0, T - logp.shape[1]))
        mask = torch.nn.functional.pad(mask, (0, T - mask.shape[1]), value=False)
    return logp, mask


def align(data_dir: str | Path, sft_dir: str | Path, rollouts: str | Path, out_dir: str | Path, method: dict[str, Any],
          cfg: AlignConfig, reward_cfg: RewardConfig, seed: int, tracker=None, device: str | None = None) -> dict:
    out = Path(out_dir)
    ckpt, best_dir = out / "checkpoint", out / "best"
    seed_everything(seed)
    items, splits, stats = load_prepared(data_dir)
    train, valid = splits["train"], splits["valid"]
    valid = selection_slice(valid, cfg.valid_rows)  # the same fixed slice SFT selects on
    reward = ListReward(reward_cfg, items, train, stats)
    ref_frame = pd.read_parquet(rollouts)
    ref_k = len(ref_frame["items"].iloc[0])
    if ref_k != cfg.k:
        from blade.errors import ConfigError

        raise ConfigError(f"align.k={cfg.k} but the reference rollouts in {rollouts} have K={ref_k}; set rollout.k = align.k")
    prior = RefPrior.from_frame(ref_frame, len(train))
    pool = np.unique(ref_frame["row"].to_numpy())
    name, options = method_objective(method, "method")
    objective = build_objective(name, options, prior)

    ref = Policy.load(Path(sft_dir) / "best", device)
    ref.model.eval()
    ref.model.requires_grad_(False)
    resume = (ckpt / "trainer_state.json").is_file()
    policy = Policy.load(ckpt if resume else Path(sft_dir) / "best", device)
    params = [p for p in policy.model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    state: dict[str, Any] = {"step": 0, "best": -1.0, "best_step": -1, "log": [], "valid": [], "objective": {}}
    if resume:
        state = load_checkpoint(ckpt, opt)
        objective.load_state_dict(state["objective"])
        print(f"resuming from {ckpt} at step {state['step']}")
    else:  # step 0 = the SFT start: the baseline every later valid score is compared with
        _evaluate(policy, valid, cfg, state, 0, best_dir, tracker)
    histories, targets = train["history"].tolist(), train["target"].to_numpy()
    B = cfg.contexts_per_step
    bar = tqdm(range(state["step"], cfg.steps), desc=f"align {name}", mininterval=5)
    for step in bar:
        rows = np.random.default_rng([seed, step]).choice(pool, size=B, replace=len(pool) < B)
        gen = torch_generator(policy.device, seed, step, 1)
        row = alignment_step(policy, ref, objective, reward, opt, params, cfg, rows, histories, targets, step, gen)
        state["log"].append(row)
        if tracker:
            tracker.log_metrics({f"align/{k}": v for k, v in row.items() if k != "step"}, step=step + 1)
        state["step"] = step + 1
        if state["step"] % cfg.eval_every == 0 or state["step"] == cfg.steps:
            _evaluate(policy, valid, cfg, state, state["step"], best_dir, tracker)
            state["objective"] = objective.state_dict()
            save_checkpoint(ckpt, policy, opt, state)
            write_parquet(out / "diagnostics.parquet", pd.DataFrame(state["log"]))
    write_parquet(out / "diagnostics.parquet", pd.DataFrame(state["log"]))
    write_parquet(out / "valid_curve.parquet", pd.DataFrame(state["valid"]))
    write_json(out / "align_config.json", {"align": dataclasses.asdict(cfg), "reward": dataclasses.asdict(reward_cfg),
                                           "method": method, "seed": seed})
    start = state["valid"][0][f"valid/{cfg.select_metric}"]
    return {"best_step": state["best_step"], f"valid/{cfg.select_metric}": state["best"],
            f"valid/{cfg.select_metric}/start": start, "steps": state["step"]}


def alignment_step(policy: Policy, ref: Policy, objective, reward: ListReward, opt: torch.optim.Optimizer,
                   params: list[torch.Tensor], cfg: AlignConfig, rows: np.ndarray, histories: list[list[int]],
                   targets: np.ndarray, step: int, gen: torch.Generator) -> dict[str, float]:
    """One step of the loop; returns its diagnostics with the time split (``seconds/*``)."""
    B, G = len(rows), cfg.group_size
    clock = [time.perf_counter()]

    def lap():
        if policy.device.type == "cuda":
            torch.cuda.synchronize(policy.device)
        clock.append(time.perf_counter())
        return clock[-1] - clock[-2]

    policy.model.eval()  # rollouts from the deterministic network
    lists, prompts = sample_groups(policy, [histories[r] for r in rows], cfg.k, G, cfg.temperature, cfg.top_p,
                                   cfg.batch_size, gen)
    t_rollout = lap()
    ctx = np.repeat(rows, G)
    scores = reward([histories[r] for r in ctx], targets[ctx], lists.items.numpy())
    t_score = lap()
    conts = [tok[m].tolist() for tok, m in zip(lists.tokens, lists.mask)]
    policy.model.train()
    token_logp, mask = policy.token_logprobs(prompts, conts)  # (B·G, T), with grad
    with torch.no_grad():
        ref_logp, _ = ref.token_logprobs(prompts, conts)
    T = token_logp.shape[1]
    old_logp, _ = _pad_lists(lists, T)
    t_forward = lap()
    batch = RolloutBatch(
        rows=rows, rewards=torch.as_tensor(scores["reward"], dtype=torch.float32, device=policy.device).view(B, G),
        token_logp=token_logp.view(B, G, T), ref_token_logp=ref_logp.view(B, G, T),
        old_token_logp=old_logp.to(policy.device).view(B, G, T), mask=mask.view(B, G, T), step=step)
    loss, diag = objective(batch)
    t_objective = lap()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    t_backward = lap()
    gnorm = float(torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip))
    opt.step()
    t_opt = lap()
    return {"step": step + 1, "loss": float(loss.detach()), "grad_norm": gnorm, **diag,
            **{f"reward/{k}": float(v.mean()) for k, v in scores.items() if k != "reward"},
            "invalid_rate": lists.invalid_rate, "seconds/rollout": t_rollout, "seconds/score": t_score,
            "seconds/forward": t_forward, "seconds/objective": t_objective, "seconds/backward": t_backward,
            "seconds/optimizer": t_opt}


def _evaluate(policy: Policy, valid: pd.DataFrame, cfg: AlignConfig, state: dict, step: int, best_dir: Path,
              tracker) -> None:
    metrics = valid_metrics(policy, valid, cfg.k, cfg.batch_size)
    row = {"step": step, **{f"valid/{k}": v for k, v in metrics.items()}}
    state["valid"].append(row)
    if tracker:
        tracker.log_metrics({k: v for k, v in row.items() if k != "step"}, step=step)
    score = metrics[cfg.select_metric]
    print(f"step {step}: " + " ".join(f"{k}={v:.4g}" for k, v in metrics.items()))
    if score > state["best"]:
        state.update(best=score, best_step=step)
        policy.save(best_dir)
