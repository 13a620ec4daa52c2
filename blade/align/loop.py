"""The alignment loop (`blade align`): one loop for BLADE and every baseline.

Each step: draw B contexts (from the train rows that have reference rollouts), sample G lists per
context from the current policy (constrained, temperature/top-p), score them with the configured
list reward, build the :class:`RolloutBatch` (policy token log-probs with grad, reference and
sampling-policy log-probs without — all constrained, docs/method.md (3.9): the distribution the
lists were drawn from), call the method's Objective, step on its alignment term plus regulariser
(clipped). Methods differ only in their Objective, so a comparison differs only in the objective.

Every step's diagnostics (the Objective's — weight spread, ESS, saturated fraction, signal std, KL,
rewards — plus the gradient norms of the whole loss and of the alignment term alone, and the time
split rollout/score/update) go to MLflow and to
``diagnostics.parquet``: the data of the gradient-decay curves. Every ``eval_every`` steps the
greedy lists of alignment's own valid rows are scored — disjoint from the rows SFT early-stopped on
(blade/eval/selection.py), with each step's minimum detectable difference from the start
(``valid/mde``); the best valid policy (the SFT start included, so alignment that hurts is visible
and never selected) is kept in ``best/``, and every evaluated policy
in ``snapshots/step{S:06d}/`` (for test-vs-step curves scored after training; selection never reads
them). A checkpoint at each evaluation makes a killed run resume: contexts and sampling seeds are
functions of ``[seed, step]`` (a snapshot written before a kill is rewritten identically).
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from blade.align.objective import RolloutBatch
from blade.align.registry import Method
from blade.align.estimators import RefPrior, expected_best_of
from blade.align.rollout import check_rollout_reward, sample_groups
from blade.align.config import AlignConfig
from blade.data.prepared import PreparedData
from blade.distributed import group
from blade.eval.config import EvalConfig
from blade.eval.selection import alignment_slice, paired_mde, valid_scores
from blade.io import write_json, write_parquet
from blade.model.policy import Policy
from blade.model.reference import frozen, reference_policy
from blade.rewards import ListReward, RewardConfig
from blade.seeding import seed_everything, torch_generator
from blade.train.checkpoint import load_checkpoint, resumable, save_checkpoint


def _pad_lists(lists, T: int) -> tuple[torch.Tensor, torch.Tensor]:
    logp, mask = lists.logp[:, :T], lists.mask[:, :T]
    if logp.shape[1] < T:
        logp = torch.nn.functional.pad(logp, (0, T - logp.shape[1]))
        mask = torch.nn.functional.pad(mask, (0, T - mask.shape[1]), value=False)
    return logp, mask


def align(data: PreparedData, sft_dir: str | Path, rollouts: str | Path, out_dir: str | Path, method: Method,
          cfg: AlignConfig, reward_cfg: RewardConfig, seed: int, tracker=None, device: str | None = None,
          evaluation: EvalConfig | None = None) -> dict:
    out = Path(out_dir)
    ckpt, best_dir = out / "checkpoint", out / "best"
    seed_everything(seed)
    procs = group()  # one process, or this one's share of a data-parallel launch
    train, valid = data.train, data.valid
    evaluation = evaluation or EvalConfig()
    # valid rows disjoint from SFT's early-stopping rows: no winner's curse towards the SFT start
    valid = alignment_slice(valid, evaluation.selection_rows, evaluation.align_selection_rows)
    reward = ListReward(reward_cfg, data.items, train, data.stats)
    ref_frame = pd.read_parquet(rollouts)
    check_rollout_reward(ref_frame, reward_cfg, rollouts)
    ref_k = len(ref_frame["items"].iloc[0])
    if ref_k != cfg.k:
        from blade.errors import ConfigError

        raise ConfigError(f"align.k={cfg.k} but the reference rollouts in {rollouts} have K={ref_k}; set rollout.k = align.k")
    prior = RefPrior.from_frame(ref_frame, len(train))
    pool = np.unique(ref_frame["row"].to_numpy())
    objective = method.build(prior)

    stored = ReferenceGroups(ref_frame) if objective.data == "reference" else None
    # the step budget is left out: nothing in the loop depends on it (constant learning rate), so a run
    # extended to more steps continues from its checkpoint to the straight run's result (tests)
    run = {"method": method.as_dict(), "align": {k: v for k, v in dataclasses.asdict(cfg).items() if k != "steps"},
           "reward": dataclasses.asdict(reward_cfg), "evaluate": dataclasses.asdict(evaluation), "seed": seed}
    resume, fingerprint = resumable(ckpt, run, [*data.training_files, rollouts, Path(sft_dir) / "best"], procs)
    policy = Policy.load(ckpt if resume else Path(sft_dir) / "best", device)
    ref = reference_policy(policy, Path(sft_dir) / "best", device)  # LoRA: SFT's adapter beside the trained one
    # an EMA anchor policy for the methods that ask for one (J-BOND), starting at π_ref
    anchor = None
    if objective.anchor_ema is not None:
        anchor = frozen(Policy.load(ckpt / "anchor" if resume else Path(sft_dir) / "best", device))
    params = [p for p in policy.model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    state: dict[str, Any] = {"step": 0, "best": -1.0, "best_step": -1, "log": [], "valid": [], "objective": {},
                             "fingerprint": fingerprint}
    if resume:
        state = load_checkpoint(ckpt, opt)
        objective.load_state_dict(state["objective"])
        print(f"resuming from {ckpt} at step {state['step']}")
    else:  # step 0 = the SFT start: the baseline every later valid score is compared with
        _evaluate(policy, valid, cfg, evaluation, reward, state, 0, best_dir, tracker)
    histories, targets = train["history"].tolist(), train["target"].to_numpy()
    bon_n = method.as_dict().get("n")  # a BoN-family method's N; None for the others
    B = cfg.contexts_per_step
    bar = tqdm(range(state["step"], cfg.steps), desc=f"align {method.objective}", mininterval=5)
    for step in bar:
        rows = np.random.default_rng([seed, step]).choice(pool, size=B, replace=len(pool) < B)
        gen = torch_generator(policy.device, seed, step, 1)
        row = alignment_step(policy, ref, objective, reward, opt, params, cfg, rows, histories, targets, step, gen,
                             stored, anchor)
        if bon_n:  # what the static BoN@N target reaches on this step's contexts (the §6.4 training-context line)
            row["ref_bon_reward"] = float(expected_best_of(*prior.rewards(rows), bon_n).mean())
        state["log"].append(row)
        if tracker:
            tracker.log_metrics({f"align/{k}": v for k, v in row.items() if k != "step"}, step=step + 1,
                                defer=True)
        state["step"] = step + 1
        if state["step"] % cfg.eval_every == 0 or state["step"] == cfg.steps:
            _evaluate(policy, valid, cfg, evaluation, reward, state, state["step"], best_dir, tracker)
            state["objective"] = objective.state_dict()
            if procs.main:
                save_checkpoint(ckpt, policy, opt, state, extras={"anchor": anchor} if anchor is not None else None)
                write_parquet(out / "diagnostics.parquet", pd.DataFrame(state["log"]))
            procs.barrier()  # a resumed launch reads the checkpoint every process saw written
    if not procs.main:
        return {}
    write_parquet(out / "diagnostics.parquet", pd.DataFrame(state["log"]))
    write_parquet(out / "valid_curve.parquet", pd.DataFrame(state["valid"]))
    write_json(out / "align_config.json", {"align": dataclasses.asdict(cfg), "reward": dataclasses.asdict(reward_cfg),
                                           "evaluate": dataclasses.asdict(evaluation), "method": method.as_dict(), "seed": seed})
    start = state["valid"][0][f"valid/{cfg.select_metric}"]
    mdes = [r["valid/mde"] for r in state["valid"][1:] if np.isfinite(r["valid/mde"])]
    return {"best_step": state["best_step"], f"valid/{cfg.select_metric}": state["best"],
            f"valid/{cfg.select_metric}/start": start, "steps": state["step"], "selection/rows": len(valid),
            # the selection's resolution: the median over candidate steps of the difference from the start
            # a paired test on these rows detects with 80% power (α 0.05), in select_metric's units
            "selection/mde": float(np.median(mdes)) if mdes else float("nan")}


def alignment_step(policy: Policy, ref: Policy, objective, reward: ListReward, opt: torch.optim.Optimizer,
                   params: list[torch.Tensor], cfg: AlignConfig, rows: np.ndarray, histories: list[list[int]],
                   targets: np.ndarray, step: int, gen: torch.Generator, stored: ReferenceGroups | None = None,
                   anchor: Policy | None = None) -> dict[str, float]:
    """One step of the loop; returns its diagnostics with the time split (``seconds/*``).

    The batch's lists are G fresh samples of the current policy per context, or — for an objective
    with ``data = "reference"`` (offline preference methods) — the context's M stored reference
    rollouts, already scored under the same reward setting (G = M, sampled by π_ref)."""
    B = len(rows)
    clock = [time.perf_counter()]

    def lap():
        if policy.device.type == "cuda":
            torch.cuda.synchronize(policy.device)
        clock.append(time.perf_counter())
        return clock[-1] - clock[-2]

    if stored is None:
        G = cfg.group_size
        policy.model.eval()  # rollouts from the deterministic network
        lists, prompts = sample_groups(policy, [histories[r] for r in rows], cfg.k, G, cfg.temperature, cfg.top_p,
                                       cfg.batch_size, gen)
        group().check_same("rollout lists", lists.items.numpy())  # data-parallel: one batch in every process
        t_rollout = lap()
        ctx = np.repeat(rows, G)
        scores = reward([histories[r] for r in ctx], targets[ctx], lists.items.numpy(), rows=ctx)
        conts = [tok[:n] for tok, n in zip(lists.tokens.tolist(), lists.mask.sum(1).tolist())]  # mask: a prefix
        invalid = lists.invalid_rate
    else:
        items, scores = stored.lists(rows)                                          # (B, M, K), {name: (B·M,)}
        G = items.shape[1]
        prompt_of = [policy.codec.prompt(histories[r], cfg.k) for r in rows]
        prompts = [p for p in prompt_of for _ in range(G)]
        conts = [policy.codec.list_tokens(lst) for lst in items.reshape(B * G, -1).tolist()]
        invalid = 0.0  # sampled by the constrained sampler when the rollouts were made
        t_rollout = lap()
    t_score = lap()
    policy.model.train()
    # the lists the loss reads (an offline method's pair of M): only those are scored
    read = None if stored is None else objective.lists_read(
        np.asarray(scores["reward"], dtype=np.float32).astype(np.float64).reshape(B, G), rows, step)
    # constrained log-probs (the sampler's masks replayed), for the policy and π_ref alike
    token_logp, mask, ref_logp = _scored(policy, ref, prompts, conts, read)  # (B·G, T); token_logp with grad
    T = token_logp.shape[1]
    if stored is None:
        old_logp = _pad_lists(lists, T)[0].to(policy.device)  # the sampler's constrained log-probs at temperature 1
    else:
        old_logp = ref_logp  # the stored lists were sampled by π_ref
    t_forward = lap()
    anchor_logp = anchor_rewards = None
    if anchor is not None:
        anchor_logp, anchor_rewards = _anchor_view(anchor, objective, reward, cfg, rows, histories, targets, prompts,
                                                   conts, T, gen)
    batch = RolloutBatch(
        rows=rows, rewards=torch.as_tensor(scores["reward"], dtype=torch.float32, device=policy.device).view(B, G),
        token_logp=token_logp.view(B, G, T), ref_token_logp=ref_logp.view(B, G, T),
        old_token_logp=old_logp.view(B, G, T), mask=mask.view(B, G, T), step=step,
        anchor_token_logp=None if anchor_logp is None else anchor_logp.view(B, G, T), anchor_rewards=anchor_rewards)
    align_loss, penalty, diag = objective(batch)
    if not (torch.isfinite(align_loss) and torch.isfinite(penalty)):
        from blade.errors import TrainingError

        raise TrainingError(f"objective {getattr(objective, 'name', '?')!r}: the loss is not finite at step {step + 1} "
                            f"(alignment term {float(align_loss):.4g}, penalty {float(penalty):.4g}); lower align.lr "
                            "or check the method's options — the run stops here, other methods' results are kept")
    t_objective = lap()
    opt.zero_grad(set_to_none=True)
    # The alignment term's gradient alone — the regulariser's is a floor that would hide gradient
    # decay — costs a second backward pass through the shared graph (about +30% per step on CPU), so
    # it is measured every `grad_norm_every` steps (and at step 1); other steps take one backward.
    measure = (step + 1) % cfg.grad_norm_every == 0 or step == 0
    gnorm_align = float("nan")
    procs = group()  # data-parallel: each process backpropagates its share of the lists; gradients are summed
    if measure and penalty.requires_grad and align_loss.requires_grad:
        align_loss.backward(retain_graph=True)
        procs.sum_gradients(params)
        gnorm_align = float(torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None]))
        # the penalty's gradient on its own (summed once), then plus the alignment term's
        stash = [p.grad for p in params]
        for p in params:
            p.grad = None
        penalty.backward()
        procs.sum_gradients(params)
        for p, g in zip(params, stash):
            if g is not None:
                p.grad = g if p.grad is None else p.grad + g
    else:
        total = align_loss + penalty
        if total.requires_grad:
            total.backward()
        procs.sum_gradients(params)
        if measure:  # no regulariser (or no alignment gradient): the total is the alignment term's
            gnorm_align = float(torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None]))
    t_backward = lap()
    gnorm = float(torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip))  # the total, before clipping
    opt.step()
    if anchor is not None:
        _ema_update(anchor, policy, objective.anchor_ema)
    t_opt = lap()
    return {"step": step + 1, "loss": float((align_loss + penalty).detach()), "loss_align": float(align_loss.detach()),
            "loss_penalty": float(penalty.detach()), "grad_norm": gnorm, "grad_norm_align": gnorm_align, **diag,
            **{f"reward/{k}": float(v.mean()) for k, v in scores.items() if k != "reward"},
            "invalid_rate": invalid, "seconds/rollout": t_rollout, "seconds/score": t_score,
            "seconds/forward": t_forward, "seconds/objective": t_objective, "seconds/backward": t_backward,
            "seconds/optimizer": t_opt}


def _scored(policy: Policy, ref: Policy, prompts: list[list[int]], conts: list[list[int]],
            read: np.ndarray | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Constrained per-token log-probs of the policy (with grad) and π_ref, and the mask (B·G, T),
    of every list, or (``read``: (B, G) bool) of the read ones only — the rest get log-prob 0 and
    mask False, and cost nothing."""
    keep = None if read is None else np.flatnonzero(np.asarray(read).reshape(-1))
    if keep is not None and len(keep) == len(conts):
        keep = None
    if keep is not None:
        prompts, conts, n = [prompts[i] for i in keep], [conts[i] for i in keep], len(conts)
    token_logp, mask, ref_logp = _scored_shared(policy, ref, prompts, conts)       # (L, T), token_logp with grad
    if keep is None:
        return token_logp, mask, ref_logp
    # back to (B·G, T): an unread list points at row 0 and is zeroed (its gradient too)
    at = torch.zeros(n, dtype=torch.long, device=token_logp.device)
    at[torch.as_tensor(keep, device=at.device)] = torch.arange(len(keep), device=at.device)
    on = torch.zeros(n, dtype=torch.bool, device=at.device)
    on[torch.as_tensor(keep, device=at.device)] = True
    on = on[:, None]
    return torch.where(on, token_logp[at], 0.0), mask[at] & on, torch.where(on, ref_logp[at], 0.0)


def _scored_shared(policy: Policy, ref: Policy, prompts: list[list[int]], conts: list[list[int]]):
    """:func:`_scored`'s forward passes; in a data-parallel launch each process runs those of its
    share of the lists and the shares are gathered (its own keeping its graph, blade/distributed.py)."""
    procs, n = group(), len(conts)
    if procs.world > 1:
        share = procs.share(n)
        prompts, conts = [prompts[i] for i in share], [conts[i] for i in share]
    if not conts:  # fewer lists than processes: an empty share, still on the graph (zero gradient)
        anchor = next(p for p in policy.model.parameters() if p.requires_grad)
        token_logp = torch.zeros((0, 1), device=policy.device) + 0.0 * anchor.reshape(-1)[0]
        mask, ref_logp = torch.zeros((0, 1), dtype=torch.bool, device=policy.device), torch.zeros((0, 1), device=policy.device)
    else:
        allowed = policy.allowed_tokens(conts)  # the constraint replayed once for both (None: not read)
        token_logp, mask = policy.token_logprobs(prompts, conts, constrained=True, allowed=allowed)  # (L_share, T)
        with torch.no_grad():
            ref_logp, _ = ref.token_logprobs(prompts, conts, constrained=True, allowed=allowed)
    if procs.world == 1:
        return token_logp, mask, ref_logp
    token_logp = procs.gather_rows(token_logp, n)                                 # (L, T_max)
    ref_logp = procs.gather_rows(ref_logp, n)
    mask = procs.gather_rows(mask.to(token_logp.dtype), n) > 0.5                    # gloo moves no bool tensors
    return token_logp, mask, ref_logp


class ReferenceGroups:
    """The stored reference rollouts by context: the lists and rewards offline methods train on."""

    def __init__(self, frame: pd.DataFrame):
        frame = frame.sort_values(["row", "sample"], kind="stable")
        self.rows = frame["row"].drop_duplicates().to_numpy()
        m = frame.groupby("row").size()
        if m.nunique() != 1:
            from blade.errors import DataError

            raise DataError(f"reference rollouts hold {m.min()}..{m.max()} lists per context; offline methods need "
                            "the same M for every context (re-run `blade rollout`)")
        self.m = int(m.iloc[0])
        self.items = np.stack(frame["items"].to_numpy()).reshape(len(self.rows), self.m, -1)  # (C, M, K)
        skip = {"row", "sample", "items"}
        self.scores = {c: frame[c].to_numpy().reshape(len(self.rows), self.m) for c in frame.columns if c not in skip}

    def lists(self, rows: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        at = np.searchsorted(self.rows, rows)  # every drawn row is in the pool, which these rows are
        return self.items[at], {name: v[at].reshape(-1) for name, v in self.scores.items()}


def _anchor_view(anchor: Policy, objective, reward: ListReward, cfg: AlignConfig, rows: np.ndarray,
                 histories: list[list[int]], targets: np.ndarray, prompts: list[list[int]], conts: list[list[int]],
                 T: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The anchor's constrained log-probs of the batch's lists (B·G, T) and the rewards of
    ``objective.anchor_samples`` fresh anchor samples per context (B, Ga) — its BoN quantiles."""
    with torch.no_grad():
        logp, _ = anchor.token_logprobs(prompts, conts, constrained=True)
        logp = torch.nn.functional.pad(logp, (0, T - logp.shape[1]))
        Ga = objective.anchor_samples
        if Ga < 1:
            return logp, None
        lists, _ = sample_groups(anchor, [histories[r] for r in rows], cfg.k, Ga, cfg.temperature, cfg.top_p,
                                 cfg.batch_size, gen)
        ctx = np.repeat(rows, Ga)
        r = reward([histories[i] for i in ctx], targets[ctx], lists.items.numpy(), rows=ctx)["reward"]
    return logp, torch.as_tensor(r, dtype=torch.float32, device=anchor.device).view(len(rows), Ga)


def _ema_update(anchor: Policy, policy: Policy, eta: float) -> None:
    """anchor ← (1 − η)·anchor + η·θ over the trained parameters (J-BOND's moving anchor)."""
    with torch.no_grad():
        trained = dict(policy.model.named_parameters())
        for name, p in anchor.model.named_parameters():
            if trained[name].requires_grad:
                p.lerp_(trained[name], eta)


def _evaluate(policy: Policy, valid: pd.DataFrame, cfg: AlignConfig, evaluation: EvalConfig, reward: ListReward,
              state: dict, step: int, best_dir: Path, tracker) -> None:
    scores, invalid = valid_scores(policy, valid, cfg.k, evaluation.ks, evaluation.batch_size, reward)
    metrics = {"invalid_rate": invalid, **{name: float(v.mean()) for name, v in scores.items()}}
    chosen = scores[cfg.select_metric]  # (rows,) per valid row
    if step == 0:
        state["start_scores"] = chosen.tolist()  # the SFT start's per-row scores: what each later step is paired with
    start = np.asarray(state["start_scores"], dtype=float)
    metrics["mde"] = paired_mde(chosen, start) if step else float("nan")
    metrics["diff"] = float((chosen - start).mean())
    row = {"step": step, **{f"valid/{k}": v for k, v in metrics.items()}}
    state["valid"].append(row)
    if tracker:
        tracker.log_metrics({k: v for k, v in row.items() if k != "step"}, step=step)
    procs = group()  # data-parallel: the main process's score decides, and only it writes
    score = procs.agree(metrics[cfg.select_metric])
    print(f"step {step}: " + " ".join(f"{k}={v:.4g}" for k, v in metrics.items()))
    main = procs.main
    # every evaluated policy, for test-vs-step curves scored after training (LoRA: the adapter only)
    if main:
        policy.save(best_dir.parent / "snapshots" / f"step{step:06d}")
    if score > state["best"]:
        state.update(best=score, best_step=step)
        if main:
            policy.save(best_dir)
