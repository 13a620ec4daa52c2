"""The embedded default dataset: a seeded generator with learnable sequential structure.

Generative story (each knob is an option below):
- Items have a primary genre (uniform) and, with probability ``p_second_genre``, a second one.
  Their popularity weight is Zipf-like, ``w = 1 / rank**zipf_exponent`` over a random permutation,
  so most-popular is a real competitor (popularity bias exists).
- Each item has ``n_successors`` successor items of its primary genre (drawn ∝ sqrt(w), so tail
  items appear among them): the sequential signal a history-aware model can learn.
- A user starts in a genre drawn ∝ the genre's total weight. At each step, with probability
  ``p_markov`` the next item is a uniform successor of the previous item; otherwise the user
  switches genre with probability ``p_genre_switch`` and draws an item of the current genre ∝ w.
- Split per user, leave-last-out (SASRec/BIGRec style): the last interaction is the test row, the
  second-to-last the valid row, every earlier position (from the second) a train row; each row's
  history is everything before it.

The same ``seed`` and options give identical files.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from blade.config import option
from blade.data.canonical import DatasetSpec, RawDataset

_ADJ = ["Silent", "Crimson", "Hidden", "Broken", "Golden", "Last", "Frozen", "Wild", "Iron", "Secret",
        "Lost", "Burning", "Distant", "Hollow", "Bright", "Shadow", "Electric", "Ancient", "Little", "Endless"]
_NOUN = ["Kingdom", "River", "Garden", "Empire", "Signal", "Harbor", "Forest", "Engine", "Crown", "Voyage",
         "Machine", "Island", "Letter", "Tower", "Legacy", "Storm", "Circle", "Promise", "Frontier", "Mirror"]
_GENRES = ["action", "puzzle", "romance", "mystery", "science", "history", "fantasy", "sports",
           "horror", "comedy", "travel", "music"]


@dataclass
class Params:
    n_users: int = option(1500, help="number of users (each gives one valid and one test row)")
    n_items: int = option(300, help="catalogue size")
    n_genres: int = option(6, help=f"number of genres (at most {len(_GENRES)})")
    p_second_genre: float = option(0.3, help="probability that an item has a second genre")
    min_len: int = option(6, help="shortest user sequence (>= 4: two train rows, valid, test)")
    max_len: int = option(16, help="longest user sequence")
    zipf_exponent: float = option(1.0, help="popularity weight of the item of rank r is 1/r**exponent")
    n_successors: int = option(4, help="successor items per item (the sequential signal)")
    p_markov: float = option(0.5, help="probability that the next item is a successor of the previous one")
    p_genre_switch: float = option(0.15, help="probability of switching genre at a non-Markov step")
    seed: int = option(0, help="generator seed; same seed and options give identical files")

    def __post_init__(self) -> None:
        if not 1 <= self.n_genres <= len(_GENRES):
            raise ValueError(f"n_genres must be in 1..{len(_GENRES)}, got {self.n_genres}")
        if self.min_len < 4 or self.max_len < self.min_len:
            raise ValueError(f"need 4 <= min_len <= max_len, got min_len={self.min_len}, max_len={self.max_len}")
        if self.n_items < max(10, self.n_successors + 1) or self.n_users < 1:
            raise ValueError("n_items must be >= max(10, n_successors + 1) and n_users >= 1")
        for name in ("p_second_genre", "p_markov", "p_genre_switch"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be a probability in [0, 1], got {getattr(self, name)}")


def _catalogue(p: Params, rng: np.random.Generator) -> tuple[pd.DataFrame, np.ndarray, np.ndarray, np.ndarray]:
    n = p.n_items
    primary = rng.integers(0, p.n_genres, size=n)
    second = np.where(rng.random(n) < p.p_second_genre, rng.integers(0, p.n_genres, size=n), -1)
    ranks = rng.permutation(n) + 1
    weight = 1.0 / ranks.astype(float) ** p.zipf_exponent
    genres = [sorted({_GENRES[a]} | ({_GENRES[b]} if b >= 0 else set())) for a, b in zip(primary, second)]
    titles = [f"{_ADJ[rng.integers(len(_ADJ))]} {_NOUN[rng.integers(len(_NOUN))]} {i} ({_GENRES[g]})"
              for i, g in enumerate(primary)]
    successors = np.empty((n, p.n_successors), dtype=np.int64)
    for i in range(n):
        pool = np.flatnonzero((primary == primary[i]) & (np.arange(n) != i))
        if len(pool) < p.n_successors:  # a tiny genre: fall back to the whole catalogue
            pool = np.flatnonzero(np.arange(n) != i)
        w = np.sqrt(weight[pool])
        successors[i] = rng.choice(pool, size=p.n_successors, replace=False, p=w / w.sum())
    items = pd.DataFrame({"item_id": np.arange(n), "title": titles, "genres": genres})
    return items, primary, weight, successors


def _sequences(p: Params, rng, primary, weight, successors) -> list[np.ndarray]:
    by_genre = [np.flatnonzero(primary == g) for g in range(p.n_genres)]
    genre_w = np.array([weight[ix].sum() for ix in by_genre])
    seqs = []
    for _ in range(p.n_users):
        length = int(rng.integers(p.min_len, p.max_len + 1))
        genre = int(rng.choice(p.n_genres, p=genre_w / genre_w.sum()))
        seq = np.empty(length, dtype=np.int64)
        for t in range(length):
            if t > 0 and rng.random() < p.p_markov:
                seq[t] = successors[seq[t - 1], rng.integers(p.n_successors)]
                genre = int(primary[seq[t]])
                continue
            if rng.random() < p.p_genre_switch or len(by_genre[genre]) == 0:
                genre = int(rng.choice(p.n_genres, p=genre_w / genre_w.sum()))
            pool = by_genre[genre]
            seq[t] = rng.choice(pool, p=weight[pool] / weight[pool].sum())
        seqs.append(seq)
    return seqs


def load(params: Params, spec: DatasetSpec, where: str) -> RawDataset:
    rng = np.random.default_rng(params.seed)
    items, primary, weight, successors = _catalogue(params, rng)
    seqs = _sequences(params, rng, primary, weight, successors)
    rows: dict[str, list[dict]] = {"train": [], "valid": [], "test": []}
    day = 86_400
    for u, seq in enumerate(seqs):
        start = 1_500_000_000 + int(rng.integers(0, 365)) * day
        n = len(seq)
        for t in range(1, n):
            split = "test" if t == n - 1 else "valid" if t == n - 2 else "train"
            rows[split].append({
                "context_id": f"{split}-u{u}-t{t}", "user_id": f"u{u}", "history": seq[:t].tolist(),
                "target": int(seq[t]), "timestamp": start + t * day, "origin": f"synthetic user {u} step {t}",
            })
    splits = {name: pd.DataFrame(r) for name, r in rows.items()}
    info = {"n_sequences": len(seqs), "mean_sequence_length": float(np.mean([len(s) for s in seqs]))}
    return RawDataset(items=items, splits=splits, info=info)
