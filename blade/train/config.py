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
    min_lr_ratio: float = option(0.0, help="the cosine decay's floor, as a fraction of lr (0 = decay to zero)")
    grad_clip: float = option(1.0, help="max gradient norm")
    dropout: float = option(0.0, help="SFT-only dropout on the embeddings, each attention and MLP output "
                                      "(residual branches) and the attention probabilities; off at alignment")
    label_smoothing: float = option(0.0, help="label smoothing ε of the token NLL: (1-ε)·NLL + ε·(mean NLL over "
                                              "the vocabulary)")
    target_len: int = option(3, help="items in the supervised target list (target + user's next items)")
    target_decay: float = option(1.0, help="weight of the target list's slot s is target_decay**s (slot 0 = the "
                                           "next item); 1 = every slot alike, 0 = the next item only")
    prefixes: bool = option(False, help="also train on every prefix of each train row's sequence (history[:i] -> "
                                        "history[i], i >= 1; the next-item positions SASRec trains on), taught "
                                        "the same continuation; a prefix equal to a train row is taught once")
    k: int = option(10, help="list length for the valid-split model selection")
    select_metric: str = option("ndcg@10", help="valid metric that picks the best epoch: recall@N or ndcg@N")
    patience: int = option(4, help="stop after this many epochs without a valid improvement")
    train_rows: int = option(0, help="train on a fixed sample of this many train rows (the first of a seed-0 "
                                     "permutation, the same for every seed; 0 = all): BIGRec fine-tunes on 1,024, "
                                     "SPRec on 4,096; their continuations still come from the whole split")
    length_batches: bool = option(False, help="batch rows of similar length (prompt + target): each epoch's shuffled "
                                              "order is sorted by length within windows of 50 batches, cut into "
                                              "batches and the batches shuffled, so padding stops doubling an LLM's "
                                              "step; off = plain shuffled batches")

    def __post_init__(self) -> None:
        if self.train_rows < 0:
            raise ValueError(f"train_rows must be >= 0 (0 = the whole train split), got {self.train_rows}")
        if min(self.epochs, self.batch_size, self.k, self.target_len, self.patience) < 1:
            raise ValueError("epochs, batch_size, k, target_len and patience must be positive")
        if not self.lr > 0 or self.weight_decay < 0 or self.warmup_steps < 0 or not self.grad_clip > 0:
            raise ValueError("lr and grad_clip must be > 0, weight_decay and warmup_steps >= 0")
        for key in ("min_lr_ratio", "target_decay"):
            if not 0 <= getattr(self, key) <= 1:
                raise ValueError(f"{key} must lie in [0, 1], got {getattr(self, key)}")
        for key in ("dropout", "label_smoothing"):
            if not 0 <= getattr(self, key) < 1:
                raise ValueError(f"{key} must lie in [0, 1), got {getattr(self, key)}")
        check_select_metric(self.select_metric, self.k)
