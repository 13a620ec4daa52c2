"""``blade sft``: BIGRec-style supervised warm-up of the list policy (π_ref of every method).

Supervised target list. Each train row (history, target) is taught the list "target, then the
user's next distinct items" (up to ``target_len`` items): the user's actual future, in order. The
list policy generates items autoregressively with the list so far in context, so teaching only the
first slot (BIGRec's single next item) would leave every later slot untrained; the user's own
continuation is the one list-shaped supervision the data holds without leaking valid/test items.
The continuation is read from the train split only: rows are linked by ``user_id`` (in time
order) where the split has one, otherwise by history continuity (row B continues row A when B's
history is A's history plus A's target, truncated to the same window) when that link is unique.
Rows with no known continuation are taught their single target.

Prefix rows (``prefixes``, off by default). A dataset whose rows are single windows (Goodreads:
one record per context, no user id) holds each transition inside a history only once, behind a
long context; SASRec trains on every position of a sequence. With ``prefixes`` each train row's
sequence (history, then target) also gives the rows (history[:i] → history[i]) for i = 1 …
len(history) − 1, each taught the rest of that sequence, then the row's own continuation, as its
target list. A prefix row equal to a train row or to an earlier prefix row, (history, target)
alike, is dropped: the data's own rows keep their weight of one.

Regularisation (all ``SFTConfig`` options, off by default). ``target_decay`` weights slot s of the
target list by target_decay**s, so the next item can count more than the user's later ones.
``label_smoothing`` ε replaces each token's NLL by (1-ε)·NLL + ε·(mean NLL over the vocabulary)
(Szegedy et al. 2016, "Rethinking the Inception Architecture", §7; the SFT warm-up has no equation
in docs/method.md). ``dropout`` is applied to this training run only, through forward hooks and the
attention modules' own ``attention_dropout`` attribute (Qwen2/Llama have no hidden dropout to
configure): it is not written into the saved model config, so alignment, which scores log-prob
ratios against π_ref, never trains with it. ``min_lr_ratio`` puts a floor under the cosine decay.

Model selection uses the valid split only (greedy lists, ``select_metric``); the test split is
never read here.
"""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from tqdm import tqdm

from blade.data.continuation import continuation_lists
from blade.data.prepared import PreparedData
from blade.distributed import group
from blade.eval.config import EvalConfig
from blade.eval.selection import selection_slice, valid_metrics
from blade.io import write_json, write_parquet
from blade.model.policy import Policy, PolicyConfig
from blade.seeding import seed_everything
from blade.train.checkpoint import load_checkpoint, resumable, save_checkpoint
from blade.train.config import SFTConfig


def prefix_rows(train: pd.DataFrame, targets: list[list[int]], target_len: int) -> tuple[list[list[int]], list[list[int]]]:
    """(histories, target lists) of the prefix rows of ``train`` (module docstring), in row order;
    ``targets`` are the train rows' own target lists (:func:`continuation_lists`)."""
    seen = {(tuple(map(int, h)), int(t)) for h, t in zip(train["history"], train["target"])}
    histories, lists = [], []
    for h, own in zip(train["history"], targets):
        future = [*map(int, h), *own]  # the sequence, then the continuation beyond its target
        for i in range(1, len(h)):
            key = (tuple(future[:i]), future[i])
            if key in seen:
                continue
            seen.add(key)
            histories.append(future[:i])
            lists.append(list(dict.fromkeys(future[i:]))[:target_len])  # distinct, in order
    return histories, lists


def _lr_factor(step: int, warmup: int, total: int, floor: float = 0.0) -> float:
    """Linear warm-up to 1, then cosine decay from 1 to ``floor`` at ``total`` steps."""
    if step < warmup:
        return (step + 1) / warmup
    cosine = 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))
    return floor + (1 - floor) * cosine


def add_dropout(model, p: float) -> None:
    """Dropout with rate ``p`` (active in ``model.train()`` only) on the input embeddings' output,
    on each decoder layer's attention and MLP outputs before they join the residual stream (GPT-2's
    embd/resid dropout), and on the attention probabilities (the attribute Qwen2/Llama attention
    reads in training). Hooks live on this model object only; nothing is saved with the weights."""
    if p <= 0:
        return

    def drop(module, args, out):
        return F.dropout(out, p, module.training)

    def drop_first(module, args, out):  # attention modules return (output, weights)
        return (F.dropout(out[0], p, module.training), *out[1:])

    model.get_input_embeddings().register_forward_hook(drop)
    layers = [m for m in model.modules() if hasattr(m, "self_attn") and hasattr(m, "mlp")]
    if not layers:
        raise ValueError(f"sft.dropout: found no decoder layers (self_attn + mlp) in {type(model).__name__}")
    for layer in layers:
        layer.self_attn.register_forward_hook(drop_first)
        layer.mlp.register_forward_hook(drop)
        if hasattr(layer.self_attn, "attention_dropout"):
            layer.self_attn.attention_dropout = p


def slot_weights(codec, lst: list[int], decay: float) -> list[float]:
    """One weight per token of ``codec.list_tokens(lst)``: decay**s for every token of slot s."""
    return [decay ** s for s, item in enumerate(lst) for _ in codec.list_tokens([item])]


class _LogitsTap:
    """Keeps the LM head's last output (R, T+1, V) during a ``with`` block: label smoothing needs
    the whole distribution, ``Policy.token_logprobs`` returns the targets' log-probs only."""

    def __init__(self, model):
        self.model, self.logits = model, None

    def __enter__(self):
        self.handle = self.model.get_output_embeddings().register_forward_hook(self._keep)
        return self

    def _keep(self, module, args, out):
        self.logits = out

    def __exit__(self, *exc):
        self.handle.remove()


LENGTH_WINDOW = 50  # batches per window that sft.length_batches sorts by length


def epoch_batches(rng: np.random.Generator, lengths: np.ndarray, cfg: SFTConfig) -> list[np.ndarray]:
    """One epoch's batches of row indices. Plain: consecutive slices of a shuffled order. With
    ``length_batches``, the shuffled order is sorted by length (longest first) within windows of
    ``LENGTH_WINDOW`` batches, sliced, and the batches shuffled: each batch pads to a length close to
    its rows' own, and the order stays random at the level of batches (the megabatch scheme of
    transformers' ``group_by_length``). Either way every row is seen once per epoch."""
    order = rng.permutation(len(lengths))
    B = cfg.batch_size
    if cfg.length_batches:
        window = B * LENGTH_WINDOW
        order = np.concatenate([w[np.argsort(-lengths[w], kind="stable")]
                                for w in np.split(order, range(window, len(order), window))])
    batches = [order[b: b + B] for b in range(0, len(order), B)]
    if cfg.length_batches:
        batches = [batches[i] for i in rng.permutation(len(batches))]
    return batches


def sft_loss(policy: Policy, prompts: list[list[int]], conts: list[list[int]], weights: list[list[float]],
             label_smoothing: float, total_weight: float | None = None) -> torch.Tensor:
    """Weighted token NLL of the target lists: Σ_t w_t ℓ_t / Σ_t w_t with ℓ_t = -log p(y_t) (ε = 0),
    or (1-ε)(-log p(y_t)) + ε·mean_v(-log p(v)) — cross-entropy against the smoothed one-hot
    (Szegedy et al. 2016, §7). ``total_weight``: the denominator, when these rows are one process's
    share of a batch (blade/distributed.py); default Σ_t w_t of these rows."""
    with _LogitsTap(policy.model) as tap:
        logp, mask = policy.token_logprobs(prompts, conts)  # (R, T), 0 on padding
    w = torch.zeros_like(logp)  # (R, T)
    for r, row in enumerate(weights):
        w[r, :len(row)] = torch.tensor(row, dtype=w.dtype)
    nll = -logp
    if label_smoothing:
        uniform = -torch.log_softmax(tap.logits[:, :-1].float(), dim=-1).mean(-1)  # (R, T)
        nll = (1 - label_smoothing) * nll + label_smoothing * uniform
    denominator = (w * mask).sum().clamp(min=1e-12) if total_weight is None else total_weight
    return (w * nll * mask).sum() / denominator


def train_sft(data: PreparedData, out_dir: str | Path, policy_cfg: PolicyConfig, cfg: SFTConfig, seed: int,
              tracker=None, evaluation: EvalConfig | None = None) -> dict:
    """Train, select on valid, write the best policy to ``out_dir`` (resumes from ``out_dir/checkpoint``)."""
    out = Path(out_dir)
    ckpt, best_dir = out / "checkpoint", out / "best"
    seed_everything(seed)
    procs = group()  # one process, or this one's share of a data-parallel launch
    items, train, valid = data.items, data.train, data.valid
    evaluation = evaluation or EvalConfig()
    valid = selection_slice(valid, evaluation.selection_rows)
    run = {"sft": dataclasses.asdict(cfg), "evaluate": dataclasses.asdict(evaluation), "seed": seed,
           "policy": {k: v for k, v in dataclasses.asdict(policy_cfg).items() if k != "device"}}  # resumes on any device
    resume, fingerprint = resumable(ckpt, run, data.training_files, procs)
    policy = Policy.load(ckpt, policy_cfg.device) if resume else Policy.build(policy_cfg, items)
    add_dropout(policy.model, cfg.dropout)  # on both the fresh and the resumed model
    codec = policy.codec
    histories, targets = list(train["history"]), continuation_lists(train, cfg.target_len)
    if 0 < cfg.train_rows < len(train):  # a fixed sample; continuations read the whole split
        keep = np.sort(np.random.default_rng(0).permutation(len(train))[:cfg.train_rows])
        train, histories, targets = train.iloc[keep], [histories[i] for i in keep], [targets[i] for i in keep]
        print(f"sft: a fixed sample of {len(keep)} of {len(data.train)} train rows")
    if cfg.prefixes:
        more_histories, more_targets = prefix_rows(train, targets, cfg.target_len)
        print(f"sft: {len(train)} train rows + {len(more_histories)} prefix rows")
        histories, targets = histories + more_histories, targets + more_targets
    prompts = [codec.prompt(h, cfg.k) for h in histories]
    conts = [codec.list_tokens(lst) for lst in targets]
    weights = [slot_weights(codec, lst, cfg.target_decay) for lst in targets]
    params = [p for p in policy.model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = math.ceil(len(prompts) / cfg.batch_size)
    lengths = np.array([len(p) + len(c) for p, c in zip(prompts, conts)])
    total = steps_per_epoch * cfg.epochs

    def lr_factor(step: int) -> float:
        return _lr_factor(step, cfg.warmup_steps, total, cfg.min_lr_ratio)

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor)
    state = {"epoch": 0, "step": 0, "best": -1.0, "best_epoch": -1, "stale": 0, "log": [], "fingerprint": fingerprint}
    if resume:
        state = load_checkpoint(ckpt, opt)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor, last_epoch=state["step"] - 1)
        print(f"resuming from {ckpt} after epoch {state['epoch']}")
    started = time.perf_counter()
    while state["epoch"] < cfg.epochs and state["stale"] < cfg.patience:
        epoch = state["epoch"]
        policy.model.train()
        batches = epoch_batches(np.random.default_rng([seed, epoch]), lengths, cfg)  # resumable data order
        losses, norms = [], []
        for b in tqdm(range(steps_per_epoch), desc=f"sft epoch {epoch + 1}/{cfg.epochs}", mininterval=5):
            idx = batches[b]
            total_weight = None  # one process: the batch's own Σ w (bit for bit as before data parallelism)
            if procs.world > 1:  # the whole batch's, in every process
                total_weight = float(sum(sum(weights[i]) for i in idx))
                idx = idx[procs.share(len(idx))]
            opt.zero_grad(set_to_none=True)
            if len(idx):
                loss = sft_loss(policy, [prompts[i] for i in idx], [conts[i] for i in idx],
                                [weights[i] for i in idx], cfg.label_smoothing, total_weight)
                loss.backward()
            else:  # a last batch smaller than the process count
                loss = torch.zeros((), device=policy.device)
            procs.sum_gradients(params)
            loss = procs.sum(loss.detach())
            gnorm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            opt.step()
            sched.step()
            state["step"] += 1
            losses.append(loss.item())
            norms.append(float(gnorm))
            if tracker:
                tracker.log_metrics({"train/loss": loss.item(), "train/grad_norm": float(gnorm),
                                     "train/lr": sched.get_last_lr()[0]}, step=state["step"], defer=True)
        metrics = valid_metrics(policy, valid, cfg.k, evaluation.ks, evaluation.batch_size)
        score = procs.agree(metrics[cfg.select_metric])  # data-parallel: the main process's decides
        row = {"epoch": epoch + 1, "step": state["step"], "train_loss": float(np.mean(losses)),
               "train_grad_norm": float(np.mean(norms)),
               **{f"valid/{k}": v for k, v in metrics.items()}, "seconds": round(time.perf_counter() - started, 2)}
        state["log"].append(row)
        if tracker:
            tracker.log_metrics({k: v for k, v in row.items() if k.startswith("valid/") or k == "train_loss"}, step=state["step"])
        print(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()))
        if score > state["best"]:
            state.update(best=score, best_epoch=epoch + 1, stale=0)
            if procs.main:
                policy.save(best_dir)
        else:
            state["stale"] += 1
        state["epoch"] = epoch + 1
        if procs.main:
            save_checkpoint(ckpt, policy, opt, state)
        procs.barrier()  # a resumed launch reads the checkpoint every process saw written
    if not procs.main:
        return {}
    write_parquet(out / "train_log.parquet", pd.DataFrame(state["log"]))
    write_json(out / "sft_config.json", {"sft": dataclasses.asdict(cfg), "policy": dataclasses.asdict(policy_cfg),
                                         "evaluate": dataclasses.asdict(evaluation), "seed": seed})
    summary = {"best_epoch": state["best_epoch"], f"valid/{cfg.select_metric}": state["best"], "epochs_run": state["epoch"],
               "stopped_early": state["stale"] >= cfg.patience}
    return summary
