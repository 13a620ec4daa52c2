"""The SFT warm-up's options (torch-free, so that validating a config never imports torch)."""

from __future__ import annotations

from dataclasses import dataclass

from blade.config import option


def check_select_metric(metric: str, k: int, allow_reward: bool = False) -> None:
    """Model selection reads recall@N or ndcg@N of greedy valid lists of length k (N <= k), or —
    for alignment — ``reward``: the valid mean of the run's own reward setting on those lists."""
    if allow_reward and metric == "reward":
        return
    name, _, n = metric.partition("@")
    if name not in ("recall", "ndcg") or not n.isdigit() or not 1 <= int(n) <= k:
        choices = "'reward', " if allow_reward else ""
        raise ValueError(f"select_metric must be {choices}recall@N or ndcg@N with 1 <= N <= k={k}, got {metric!r}")


@dataclass
class SFTConfig:
    epochs: int = option(20, help="maximum passes over the train split")
    batch_size: int = option(128, help="train rows per optimiser step")
    lr: float = option(3e-3, help="AdamW learning rate (tiny model from scratch; ~1e-4 for LoRA on an LLM)")
    weight_decay: float = option(0.0, help="AdamW weight decay")
    warmup_steps: int = option(50, help="linear learning-rate warm-up steps, then cosine decay")
    grad_clip: float = option(1.0, help="max gradient norm")
    target_len: int = option(3, help="items in the supervised target list (target + user's next items)")
    k: int = option(10, help="list length for the valid-split model selection")
    select_metric: str = option("ndcg@10", help="valid metric that picks the best epoch: recall@N or ndcg@N")
    patience: int = option(4, help="stop after this many epochs without a valid improvement")

    def __post_init__(self) -> None:
        if min(self.epochs, self.batch_size, self.k, self.target_len, self.patience) < 1:
            raise ValueError("epochs, batch_size, k, target_len and patience must be positive")
        if not self.lr > 0 or self.weight_decay < 0 or self.warmup_steps < 0 or not self.grad_clip > 0:
            raise ValueError("lr and grad_clip must be > 0, weight_decay and warmup_steps >= 0")
        check_select_metric(self.select_metric, self.k)
