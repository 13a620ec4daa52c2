"""SASRec: the standard sequential-recommender reference row (Kang & McAuley 2018, "Self-Attentive
Sequential Recommendation", ICDM).

A small causal transformer over item-id sequences, fitted on the train split only and selected on
the valid split, so the tables show where the LLM-style list policy stands against the usual
sequential baseline of the field. Choices, and where they differ from the paper:

- **Model** (paper §III): learned item and position embeddings, pre-norm self-attention blocks with
  a point-wise feed-forward layer of the same width, dropout on embeddings and residual branches,
  item scores = final state · item embedding (the input embedding shared as output, paper §III-D).
- **Loss**: full softmax cross-entropy over the catalogue, not the paper's binary cross-entropy
  against one sampled negative (§III-E): the catalogues here are a few thousand items, and the full
  softmax is the stronger and now usual way to train SASRec (Klenitskiy & Vasilev 2023, "Turning
  Dross Into Gold Loss: is BERT4Rec really better than SASRec?"). A reference row, so it has no
  equation in docs/method.md.
- **Training sequences**: in BIGRec-style splits every prefix of a user's sequence is its own train
  row. ``positions: all`` (the paper's setup, §III-E) keeps one sequence per user — the rows
  ``history + [target]`` that no other row extends (row B extends row A when B's history is A's
  history plus A's target, cut to the same window) — and puts the next-item loss at every
  position: each transition once, at a sixth of the rows on Video_Games. Transitions seen only
  in windows that slid away (a user longer than the data's history window) are lost: 11% of the
  train transitions on Video_Games. ``positions: last`` keeps every row with the loss on its
  target only: every transition once, with exactly the context the row gives, and six times the
  rows per epoch.
- **Selection**: early stopping on NDCG@10 of the valid selection slice (the same fixed,
  seed-independent rows SFT and alignment select on, sized by this row's own ``selection_rows``,
  1000 like ``evaluate.selection_rows``); the best epoch's weights are kept. The test split is
  never read here.
- **Lists**: the top-K items by score, K distinct catalogue items. History items are not excluded
  (``exclude_history`` off), as for every other row of these tables: BIGRec and D3 rank the whole
  catalogue for the next item, and a user's next item repeats a history item in some rows (on the
  synthetic default in about 30% of them).
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd
import torch
import torch.nn as nn
import torch.nn.functional as F

from blade.config import option
from blade.errors import DataError
from blade.metrics import ItemIndex, ndcg_at_k
from blade.seeding import seed_everything


@dataclass
class SASRecConfig:
    epochs: int = option(200, help="maximum passes over the train split")
    hidden: int = option(64, help="embedding and hidden width")
    layers: int = option(2, help="self-attention blocks")
    heads: int = option(1, help="attention heads (the paper uses 1)")
    dropout: float = option(0.3, help="dropout on embeddings, residual branches and attention probabilities")
    lr: float = option(1e-3, help="Adam learning rate")
    weight_decay: float = option(0.0, help="AdamW weight decay")
    max_len: int = option(50, help="longest input sequence (older items are cut)")
    batch_size: int = option(128, help="train rows per optimiser step")
    patience: int = option(10, help="stop after this many epochs without a valid NDCG@10 improvement (RecBole's "
                                    "stopping_step 10; with 5, Goodreads' 250-row slice stopped it at epoch 7 inside its "
                                    "first-epochs plateau, test NDCG@10 0.0059, most-popular level)")
    positions: Literal["all", "last"] = option("all", help="next-item loss at every position or at the last only")
    selection_rows: int = option(1000, help="valid rows early stopping reads (the same fixed slice as "
                                            "evaluate.selection_rows; 0 = all)")
    exclude_history: bool = option(False, help="drop the context's history items from its list")
    device: str = option("auto", help="'auto' (cuda when available), 'cpu' or 'cuda'")

    def __post_init__(self) -> None:
        if min(self.epochs, self.hidden, self.layers, self.heads, self.max_len, self.batch_size, self.patience) < 1:
            raise ValueError("epochs, hidden, layers, heads, max_len, batch_size and patience must be positive")
        if self.hidden % self.heads:
            raise ValueError(f"hidden={self.hidden} must be divisible by heads={self.heads}")
        if not 0 <= self.dropout < 1 or not self.lr > 0 or self.weight_decay < 0 or self.selection_rows < 0:
            raise ValueError("dropout must lie in [0, 1), lr > 0, weight_decay and selection_rows >= 0")


class Block(nn.Module):
    """Pre-norm self-attention + point-wise feed-forward, both residual (paper §III-B/C)."""

    def __init__(self, d: int, heads: int, dropout: float):
        super().__init__()
        self.heads, self.p = heads, dropout
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv, self.out = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.ff = nn.Sequential(nn.Linear(d, d), nn.ReLU(), nn.Dropout(dropout), nn.Linear(d, d))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        """x (B, L, d); allowed (B, 1, L, L) bool: query i may attend key j."""
        B, L, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(B, L, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)  # (B, H, L, dh)
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, dropout_p=self.p if self.training else 0.0)
        x = x + self.drop(self.out(a.transpose(1, 2).reshape(B, L, d)))
        return x + self.drop(self.ff(self.ln2(x)))


class SASRec(nn.Module):
    """Item indices 1..n (0 = padding), left-padded sequences; scores over the n items.

    Positions count back from the last item (0 = most recent): the paper's right-aligned window of
    ``max_len`` with absolute positions, but a batch can drop its all-padding columns."""

    def __init__(self, n_items: int, cfg: SASRecConfig):
        super().__init__()
        self.items = nn.Embedding(n_items + 1, cfg.hidden, padding_idx=0)
        self.positions = nn.Embedding(cfg.max_len, cfg.hidden)
        self.blocks = nn.ModuleList(Block(cfg.hidden, cfg.heads, cfg.dropout) for _ in range(cfg.layers))
        self.drop, self.norm = nn.Dropout(cfg.dropout), nn.LayerNorm(cfg.hidden)
        self.scale = cfg.hidden ** 0.5
        # scaled item embeddings start at unit size per dimension, and so do the initial scores
        # (LayerNorm output · an item embedding); torch's N(0, 1) default would start them at ~√d
        nn.init.normal_(self.items.weight, std=cfg.hidden ** -0.5)
        nn.init.normal_(self.positions.weight, std=cfg.hidden ** -0.5)
        with torch.no_grad():
            self.items.weight[0].zero_()

    def forward(self, seq: torch.Tensor) -> torch.Tensor:
        """seq (B, L) item indices, left-padded with 0 → hidden states (B, L, d)."""
        B, L = seq.shape
        real = seq > 0  # (B, L)
        recency = torch.arange(L - 1, -1, -1, device=seq.device)  # (L,): L-1 … 0
        x = self.items(seq) * self.scale + self.positions(recency)  # (B, L, d)
        x = self.drop(x) * real.unsqueeze(-1)
        causal = torch.ones(L, L, dtype=torch.bool, device=seq.device).tril()  # (L, L)
        # causal and no padding keys; every query keeps itself, so no row is empty (padded queries
        # are never read)
        allowed = (causal & real[:, None, :]) | torch.eye(L, dtype=torch.bool, device=seq.device)  # (B, L, L)
        allowed = allowed.unsqueeze(1)  # (B, 1, L, L)
        for block in self.blocks:
            x = block(x, allowed) * real.unsqueeze(-1)
        return self.norm(x)

    def scores(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden (..., d) → scores over items (..., n): the item embeddings as output layer."""
        return hidden @ self.items.weight[1:].T


def _left_pad(seqs: list[np.ndarray], length: int) -> np.ndarray:
    """(R, length) int64: each sequence's last ``length`` entries, right-aligned, 0 in front."""
    out = np.zeros((len(seqs), length), dtype=np.int64)
    for r, s in enumerate(seqs):
        s = s[-length:]
        if len(s):
            out[r, length - len(s):] = s
    return out


def extended_rows(train: pd.DataFrame) -> np.ndarray:
    """(R,) bool: some train row extends this one — its history is this row's history plus its
    target, cut to the window (the longest train history)."""
    width = max(map(len, train["history"]), default=0)
    histories = {tuple(h) for h in train["history"]}
    return np.fromiter((tuple([*h, t][-width:]) in histories for h, t in zip(train["history"], train["target"])),
                       bool, len(train))


def training_pairs(seqs: list[np.ndarray], max_len: int, positions: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs and next-item labels (R, max_len) from 1-based item sequences (history + target):
    position i of the input predicts label i, the item after it; 0 = padding or no label. A label
    needs a non-empty input prefix; ``positions="last"`` keeps the last label (the target) only."""
    full = torch.from_numpy(_left_pad(seqs, max_len + 1))  # (R, max_len + 1)
    inputs, labels = full[:, :-1], full[:, 1:]
    labels = labels.masked_fill(inputs == 0, 0)  # the first item is never predicted from nothing
    if positions == "last":
        labels = torch.cat([torch.zeros_like(labels[:, :-1]), labels[:, -1:]], dim=1)
    return inputs, labels


def _trim(*padded: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Drop the leading columns that are padding in every row of the first tensor."""
    lengths = (padded[0] > 0).sum(1)  # (B,)
    width = max(int(lengths.max()), 1)
    return tuple(t[:, -width:] for t in padded)


def _indices(index: ItemIndex, histories) -> list[np.ndarray]:
    """Item ids → 1-based model indices (unknown ids dropped, as they have no embedding)."""
    out = []
    for h in histories:
        ix = index.index_of(np.asarray(h, dtype=np.int64))
        out.append(ix[ix >= 0] + 1)
    return out


class SASRecRecommender:
    """Fit on train (early stopping on valid), then :meth:`recommend` top-K item-id lists."""

    def __init__(self, item_ids: np.ndarray, cfg: SASRecConfig | None = None, seed: int = 0):
        self.cfg = cfg or SASRecConfig()
        self.index = ItemIndex(item_ids)
        self.seed = seed
        seed_everything(seed)  # the weights' initialisation and dropout
        self.device = torch.device("cuda" if self.cfg.device == "auto" and torch.cuda.is_available()
                                   else ("cpu" if self.cfg.device == "auto" else self.cfg.device))
        self.model = SASRec(len(self.index.ids), self.cfg).to(self.device)
        self.log: list[dict] = []

    def fit(self, train: pd.DataFrame, valid: pd.DataFrame, verbose: bool = True) -> dict:
        from blade.eval.selection import selection_slice

        cfg = self.cfg
        valid = selection_slice(valid, cfg.selection_rows)
        if cfg.positions == "all":
            train = train[~extended_rows(train)]  # one sequence per user
        targets = self.index.index_of(train["target"].to_numpy(dtype=np.int64)) + 1
        if (targets == 0).any():  # a prepared train split never has them
            raise DataError("train split names target ids that are not in the catalogue; re-run `blade prepare`")
        seqs = [np.append(h, t) for h, t in zip(_indices(self.index, train["history"]), targets)]
        inputs, labels = training_pairs(seqs, cfg.max_len, cfg.positions)
        opt = torch.optim.AdamW(self.model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        best, best_state, stale, started = -1.0, None, 0, time.perf_counter()
        for epoch in range(cfg.epochs):
            self.model.train()
            order = torch.from_numpy(np.random.default_rng([self.seed, epoch]).permutation(len(inputs)))
            losses = []
            for start in range(0, len(order), cfg.batch_size):
                idx = order[start:start + cfg.batch_size]
                x, y = _trim(inputs[idx], labels[idx])
                x, y = x.to(self.device), y.to(self.device)  # (B, L') each
                labelled = y > 0  # (B, L); scores only where there is a label: the softmax is the cost
                logits = self.model.scores(self.model(x)[labelled])  # (N, n)
                loss = F.cross_entropy(logits, y[labelled] - 1)  # mean over the N labelled positions
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                losses.append(loss.item())
            score = float(ndcg_at_k(self.recommend(valid["history"].tolist(), 10), valid["target"].to_numpy(), 10).mean())
            self.log.append({"epoch": epoch + 1, "train_loss": float(np.mean(losses)), "valid/ndcg@10": score,
                             "seconds": round(time.perf_counter() - started, 2)})
            if verbose:
                print(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in self.log[-1].items()),
                      flush=True)
            if score > best:
                best, best_state, stale = score, copy.deepcopy(self.model.state_dict()), 0
            else:
                stale += 1
                if stale >= cfg.patience:
                    break
        self.model.load_state_dict(best_state)
        best_epoch = max(self.log, key=lambda r: r["valid/ndcg@10"])["epoch"]
        return {"best_epoch": best_epoch, "valid/ndcg@10": best, "epochs_run": len(self.log)}

    @torch.no_grad()
    def recommend(self, histories: list, k: int, batch: int = 1024) -> np.ndarray:
        """(U, k) item ids: the k highest-scoring distinct items after each history."""
        if not 1 <= k <= len(self.index.ids):
            raise ValueError(f"sasrec: k={k} must lie in 1..{len(self.index.ids)} (the catalogue size)")
        self.model.eval()
        seqs = _indices(self.index, histories)
        out = np.empty((len(seqs), k), dtype=np.int64)
        for start in range(0, len(seqs), batch):
            chunk = seqs[start:start + batch]
            x = _trim(torch.from_numpy(_left_pad(chunk, self.cfg.max_len)))[0].to(self.device)  # (b, L)
            s = self.model.scores(self.model(x)[:, -1])  # (b, n): the state after the last item
            if self.cfg.exclude_history:  # the whole history, also beyond max_len
                whole = torch.from_numpy(_left_pad(chunk, max(map(len, chunk), default=0) or 1)).to(self.device)
                s = s.masked_fill(_history_mask(whole, s.size(1)), float("-inf"))
            top = s.topk(k, dim=1).indices.cpu().numpy()  # (b, k) 0-based item indices, best first
            out[start:start + batch] = self.index.ids[top]
        return out


def _history_mask(x: torch.Tensor, n: int) -> torch.Tensor:
    """(b, n) bool: item i (0-based) is in the row's history (x holds 1-based indices, 0 = pad)."""
    mask = torch.zeros(x.size(0), n + 1, dtype=torch.bool, device=x.device)
    mask.scatter_(1, x, True)
    return mask[:, 1:]


def sasrec_lists(train: pd.DataFrame, valid: pd.DataFrame, frame: pd.DataFrame, item_ids: np.ndarray, k: int,
                 seed: int = 0, cfg: SASRecConfig | None = None) -> np.ndarray:
    """Fit SASRec on train (early stopping on valid) and return (rows of ``frame``, k) item ids."""
    rec = SASRecRecommender(item_ids, cfg, seed)
    summary = rec.fit(train, valid)
    print(f"sasrec: {summary}", flush=True)
    return rec.recommend(frame["history"].tolist(), k)
