"""Options of the reference rollouts and of the one alignment loop (torch-free, so that validating
a config never imports torch)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from blade.config import option
from blade.train.config import check_select_metric


def _check_sampling(temperature: float, top_p: float) -> None:
    # temperature 0 would divide the logits by zero in the sampler; greedy decoding is its own mode
    if not (temperature > 0 and math.isfinite(temperature)):
        raise ValueError(f"temperature must be a finite number > 0, got {temperature}")
    if not 0 < top_p <= 1:
        raise ValueError(f"top_p must lie in (0, 1], got {top_p}")


@dataclass
class RolloutConfig:
    m: int = option(16, help="reference lists per training context (docs/method.md: M)")
    k: int = option(10, help="list length K (must equal align.k)")
    temperature: float = option(1.0, help="sampling temperature of π_ref (> 0)")
    top_p: float = option(1.0, help="nucleus sampling threshold in (0, 1]")
    max_contexts: int = option(3000, help="train rows that get rollouts (a fixed seeded subset); 0 = all")
    chunk: int = option(512, help="contexts per seeded chunk (also the restart granularity)")
    batch_size: int = option(512, help="lists per sampler batch")

    def __post_init__(self) -> None:
        if min(self.m, self.k, self.chunk, self.batch_size) < 1:
            raise ValueError("m, k, chunk and batch_size must be positive")
        _check_sampling(self.temperature, self.top_p)
        if self.max_contexts < 0:
            raise ValueError("max_contexts must be >= 0 (0 = all train rows)")


@dataclass
class AlignConfig:
    steps: int = option(100, help="optimiser steps")
    contexts_per_step: int = option(128, help="B: contexts per step (32 gave noise-level valid changes on the "
                                              "synthetic default)")
    group_size: int = option(8, help="G: lists sampled per context per step")
    k: int = option(10, help="list length K (must equal rollout.k)")
    lr: float = option(3e-4, help="AdamW learning rate")
    weight_decay: float = option(0.0, help="AdamW weight decay")
    grad_clip: float = option(1.0, help="max gradient norm")
    temperature: float = option(1.0, help="rollout sampling temperature (> 0)")
    top_p: float = option(1.0, help="rollout nucleus threshold in (0, 1]")
    eval_every: int = option(10, help="steps between valid evaluations (selection candidates), snapshots and checkpoints")
    select_metric: str = option("reward", help="what picks the best step on valid: 'reward' (the valid mean of the "
                                               "run's own reward setting on greedy lists) or recall@N / ndcg@N")
    batch_size: int = option(512, help="lists per sampler batch")
    grad_norm_every: int = option(5, help="steps between measurements of the alignment term's own gradient norm "
                                          "(`grad_norm_align`; it costs a second backward pass, ~+30% of a CPU step)")

    def __post_init__(self) -> None:
        if min(self.steps, self.contexts_per_step, self.group_size, self.k, self.eval_every, self.batch_size,
               self.grad_norm_every) < 1:
            raise ValueError("steps, contexts_per_step, group_size, k, eval_every, batch_size and grad_norm_every "
                             "must be positive")
        if self.group_size < 2:
            raise ValueError("group_size must be >= 2: group-relative weights need two rollouts")
        if not self.lr > 0 or self.weight_decay < 0 or not self.grad_clip > 0:
            raise ValueError("lr and grad_clip must be > 0 and weight_decay >= 0")
        _check_sampling(self.temperature, self.top_p)
        check_select_metric(self.select_metric, self.k, allow_reward=True)
