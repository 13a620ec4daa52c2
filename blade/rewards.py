"""List-wise rewards r(x, y) for alignment and inference-time Best-of-N (docs/method.md (4.1)–(4.4)).

Every reward scores a whole recommended list, lies in [0, 1] and is a plain function over numpy
arrays; :class:`ListReward` combines the configured ones with the weights of :class:`RewardConfig`
and returns each component under its own name (so each is logged) plus ``"reward"``, the weighted
sum (which lies in [0, Σ weights]; it is not renormalised).

Conventions shared with :mod:`blade.metrics`: ``lists`` is int (R, K), rank 1 first; a slot is
*valid* when its id is in the catalogue and does not repeat an earlier slot of the row. An invalid
slot (``-1``, an unknown id, a repeat) scores 0 for that slot in every reward and never raises.

Built-in rewards (names are the ``weights`` keys):

- ``ndcg``: NDCG@K against the context's ground-truth next item (:func:`blade.metrics.ndcg_at_k`).
- ``future``: graded NDCG@K against the context's own future: its target (gain 1), then the same
  user's next distinct *train* targets (gain 1/(1+j) for the j-th, j < ``future_len``;
  :func:`blade.data.continuation.continuation_lists`, the lists SFT's ``target_len`` reads),
  normalised by the ideal DCG of those gains. Only train contexts have a known future, and only
  when the caller passes their train row ids (``rows``: alignment and the reference rollouts do);
  elsewhere — valid and test rows, whose futures would be later splits — it reads the target alone
  and equals ``ndcg``. It grades near misses that ``ndcg`` scores 0, so fewer groups tie.
- ``relevance``: DCG of a train-only reward model's scores of the list's items divided by the
  ideal DCG of that model's own top-K for the history (:class:`RelevanceModel`; default model
  :class:`blade.reference.CoOccurrence`). The ratio is 1 exactly for the model's own top-K list
  and is scale-free per history. It needs no ground truth, so inference-time BoN uses it too.
- ``fairness``: ``valid_share · (1 − ½·Σ_g |p_list(g) − p_target(g)|)`` over popularity groups or
  genres (``fairness_by``); ``p_target`` is read from the dataset's ``stats.json``
  (``fairness_target``), never typed into code.
- ``diversity``: intra-list diversity, the mean over *all* K(K−1)/2 slot pairs of a pairwise
  distance (a pair with an invalid slot scores 0): ``1 − Jaccard`` of genre sets where the dataset
  has genres, else ``1 − cosine`` of item embeddings factorised from the train co-occurrence rows
  (:class:`CooccurrenceEmbedding`; ``diversity_by``, ``diversity_dim``). :func:`item_distance` is
  the one place this distance is chosen: evaluation's ``ild@K`` uses it too.

Adding a reward is one function and a name; it then becomes a valid ``weights`` key::

    from blade.rewards import register_reward

    @register_reward("novelty")
    def novelty(batch, env):                    # batch: RewardBatch, env: the ListReward
        share = env.catalogue.train_pop / env.catalogue.train_pop.sum()
        slot = np.where(batch.idx >= 0, 1.0 - share[np.maximum(batch.idx, 0)], 0.0)  # (R, K)
        return slot.mean(1)                     # (R,) in [0, 1]

The function receives the :class:`RewardBatch` (histories, targets, lists and the catalogue row
of every slot, -1 when invalid) and the :class:`ListReward` (its ``config``, ``catalogue``,
``stats``, ``train`` and lazily built ``cooccurrence`` / ``relevance_model`` / ``embedding``); it must return
(R,) floats in [0, 1]. Register before a :class:`RewardConfig` naming it is built (the config
checks its keys against the registry).
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Literal, Protocol, get_args

import numpy as np
import pandas as pd
import scipy.sparse as sp
from scipy.sparse.linalg import svds

from blade.config import option
from blade.errors import ConfigError, DataError
from blade.metrics import (
    Catalogue,
    ItemDistance,
    ItemIndex,
    _valid_index,
    build_catalogue,
    genre_distance,
    group_shares,
    ild_at_k,
    invalid_rate,
    ndcg_at_k,
)
from blade.reference import CoOccurrence

# The choices of RewardConfig's fairness and diversity options, written once: the Literal types
# from_dict checks a config against, and the tuples the functions below check a direct call with.
FairnessBy = Literal["pop", "genre"]
FairnessTarget = Literal["train_share", "item_share", "uniform"]
DiversityBy = Literal["auto", "genre", "cooccurrence"]
FAIRNESS_BY: tuple[str, ...] = get_args(FairnessBy)
FAIRNESS_TARGETS: tuple[str, ...] = get_args(FairnessTarget)
DIVERSITY_BY: tuple[str, ...] = get_args(DiversityBy)
# The rewards that read the ground truth (the target, a train future): none of them can score a list
# at inference time, where inference-time Best-of-N replaces them by ``relevance``.
GROUND_TRUTH_REWARDS: tuple[str, ...] = ("ndcg", "future")


def _discounts(k: int) -> np.ndarray:
    return 1.0 / np.log2(np.arange(k) + 2.0)  # (k,) DCG position discounts 1/log2(rank + 1)


# ---------------------------------------------------------------- relevance model
class Scorer(Protocol):
    """A train-only reward model: ``scores(histories)`` -> (U, n) floats >= 0, aligned with ``item_ids``."""

    item_ids: np.ndarray

    def scores(self, histories: list[list[int]]) -> np.ndarray: ...


class RelevanceModel:
    """Normalised DCG of a reward model's scores over a list: the ``relevance`` reward.

    ``score = Σ_k s(y_k)/log2(k+1) / Σ_k s_(k)/log2(k+1)``, with ``s`` the model's scores for the
    history (>= 0) and ``s_(k)`` its k-th largest score over the catalogue. The denominator is the
    largest DCG any list of K distinct items can reach (rearrangement inequality), so the ratio lies
    in [0, 1] and is 1 for the model's own top-K. Invalid slots contribute 0.

    Cost: one ``scorer.scores`` call per *unique* history (rollouts of the same context share one),
    in batches of ``max_cells`` / n_items rows of a dense (rows, n_items) score matrix, plus a
    Python loop over each unique history's items inside :meth:`CoOccurrence.scores`.
    """

    def __init__(self, scorer: Scorer, max_cells: int = 1 << 22):
        self.scorer = scorer
        self.index = ItemIndex(scorer.item_ids)  # item id -> column of the scorer's output
        self.item_ids = self.index.ids
        self._rows_per_batch = max(1, max_cells // len(self.item_ids))  # bounds score-matrix memory

    @classmethod
    def cooccurrence(cls, train: pd.DataFrame, item_ids: np.ndarray, decay: float = 0.7) -> RelevanceModel:
        """The default model: item-item co-occurrence fitted on the train split only."""
        return cls(CoOccurrence(train, item_ids, decay=decay))

    def score_lists(self, histories: Sequence[Sequence[int]], lists: np.ndarray) -> np.ndarray:
        """(R,) relevance in [0, 1] of each list (R, K) for its history."""
        lists = np.asarray(lists, dtype=np.int64)
        if lists.ndim != 2 or len(histories) != lists.shape[0]:
            raise ValueError(f"need one history per list; got {len(histories)} histories, lists {lists.shape}")
        R, K = lists.shape
        idx = _valid_index(lists, self.index)  # (R, K) scorer column, -1 = invalid slot
        unique: dict[tuple[int, ...], int] = {}
        inv = np.fromiter((unique.setdefault(tuple(h), len(unique)) for h in histories), np.int64, R)  # (R,)
        uniq_hists = [list(h) for h in unique]
        rows = np.argsort(inv, kind="stable")  # list rows grouped by unique history
        bounds = np.searchsorted(inv[rows], np.arange(0, len(uniq_hists) + self._rows_per_batch,
                                                      self._rows_per_batch))
        disc = _discounts(K)
        n = len(self.item_ids)
        out = np.zeros(R)
        for b, start in enumerate(range(0, len(uniq_hists), self._rows_per_batch)):
            s = np.asarray(self.scorer.scores(uniq_hists[start:start + self._rows_per_batch]), float)  # (B, n)
            if s.size and s.min() < 0:  # the [0, 1] bound needs non-negative scores
                raise ValueError("the relevance scorer returned negative scores; map them to >= 0 first "
                                 "(e.g. a softmax over the catalogue)")
            kk = min(K, n)
            top = -np.sort(-np.partition(s, n - kk, axis=1)[:, n - kk:], axis=1)  # (B, kk) descending
            ideal = top @ disc[:kk]  # (B,)
            r = rows[bounds[b]:bounds[b + 1]]  # list rows whose history is in this batch
            got = np.where(idx[r] >= 0, s[inv[r, None] - start, np.maximum(idx[r], 0)], 0.0)  # (r, K)
            with np.errstate(invalid="ignore", divide="ignore"):
                out[r] = np.where(ideal[inv[r] - start] > 0, (got @ disc) / ideal[inv[r] - start], 0.0)
        return np.clip(out, 0.0, 1.0)  # the clip only absorbs round-off when the list *is* the ideal


# ---------------------------------------------------------------- plain reward functions
def ndcg_reward(lists: np.ndarray, targets: np.ndarray, catalogue: Catalogue | None = None) -> np.ndarray:
    """(R,) NDCG@K of each list against its one target, K = the list length."""
    lists = np.asarray(lists, dtype=np.int64)
    return ndcg_at_k(lists, targets, lists.shape[1], catalogue)


def target_distribution(stats: dict[str, Any], by: str, target: str) -> np.ndarray:
    """(G,) target group distribution read from a dataset's ``stats.json``.

    ``by="pop"``: ``stats["popularity"][target]`` (a list over groups 0..G-1). ``by="genre"``:
    ``stats["genres"][target]`` (a mapping) ordered by ``stats["genres"]["names"]`` (sorted, the
    order of :attr:`Catalogue.genre_names`). ``target="uniform"``: 1/G. Renormalised to sum 1
    (stats.json rounds shares to 6 decimals)."""
    if by not in FAIRNESS_BY:
        raise ConfigError(f"fairness_by: {by!r} is not allowed; choose one of {list(FAIRNESS_BY)}")
    if target not in FAIRNESS_TARGETS:
        raise ConfigError(f"fairness_target: {target!r} is not allowed; choose one of {list(FAIRNESS_TARGETS)}")
    if by == "pop":
        section = stats.get("popularity")
        if not section or "n_groups" not in section:
            raise DataError("stats.json has no 'popularity' section with 'n_groups'; re-run `blade prepare`")
        n = int(section["n_groups"])
        p = np.ones(n) if target == "uniform" else np.asarray(section.get(target, []), dtype=float)
        if p.shape != (n,):
            raise DataError(f"stats.json popularity.{target} must list {n} group shares, got {section.get(target)!r}")
    else:
        section = stats.get("genres")
        if not section:
            raise ConfigError("fairness_by: 'genre' needs genres, but this dataset has none (stats.json genres "
                              "is null); use fairness_by: pop, or give fairness weight 0")
        names = list(section["names"])
        if target == "uniform":
            p = np.ones(len(names))
        else:
            shares = section.get(target)
            if not isinstance(shares, dict) or set(shares) != set(names):
                raise DataError(f"stats.json genres.{target} must map every genre in genres.names to a share")
            p = np.array([shares[g] for g in names], dtype=float)
    if (p < 0).any() or p.sum() <= 0:
        raise DataError(f"stats.json {by}.{target} is not a distribution: {p.tolist()}")
    return p / p.sum()


def fairness_reward(lists: np.ndarray, catalogue: Catalogue, target: np.ndarray, by: str = "pop") -> np.ndarray:
    """(R,) ``valid_share · (1 − ½·Σ_g |p_list(g) − p_target(g)|)``.

    ``p_list`` is the group distribution of the list's valid items (:func:`group_shares`; a
    multi-genre item counts 1/len(genres) per genre, an item without genre is left out, as in
    stats.json). Scaling by the share of valid slots makes an invalid slot worth 0: a full valid
    list gets 1 − total variation, an all-invalid list (or one whose valid items have no genre) 0."""
    lists = np.asarray(lists, dtype=np.int64)
    shares = group_shares(lists, catalogue, lists.shape[1], by)  # (R, G), NaN where nothing valid
    target = np.asarray(target, dtype=float)
    if shares.shape[1] != len(target):
        raise DataError(f"fairness target has {len(target)} groups but the catalogue has {shares.shape[1]} "
                        f"for fairness_by={by!r}; stats.json and items.parquet disagree — re-run `blade prepare`")
    fair = 1.0 - 0.5 * np.abs(shares - target[None, :]).sum(1)
    return np.clip(np.nan_to_num(fair, nan=0.0), 0.0, 1.0) * (1.0 - invalid_rate(lists, catalogue))


class CooccurrenceEmbedding:
    """Item embeddings from train co-occurrence: the fallback diversity basis without genres.

    ``A = C + Cᵀ`` (C: train co-occurrence counts, :class:`CoOccurrence`) has one row per item:
    how often it precedes or follows every other item. Rows are L2-normalised and factorised by a
    rank-``dim`` truncated SVD ``Â ≈ U Σ Vᵀ``; an item's embedding is its row of ``U Σ``, so
    embedding dot products approximate the cosines ``Â Âᵀ`` of the co-occurrence rows, exactly
    when ``dim`` >= rank(A). (The exact sparse Gram matrix was tried first: on a 10k-item Zipf
    catalogue it held 60M non-zeros, 0.7 GB, and its element lookups took 2 s per 10k lists.)
    Embeddings are re-normalised, so the similarity is a cosine, clipped to [0, 1] (negative
    cosines of the truncated embeddings count as fully dissimilar). An item with no co-occurrence
    has a zero embedding: distance 1 to every other item and 0 to another such item (the
    convention ILD uses for genre-less items)."""

    def __init__(self, counts: sp.spmatrix, dim: int = 64):
        a = sp.csr_matrix(counts + counts.T, dtype=float)
        norm = np.sqrt(np.asarray(a.multiply(a).sum(1)).ravel())  # (n,)
        self.empty = norm == 0
        a = sp.diags(np.where(self.empty, 0.0, 1.0 / np.maximum(norm, 1e-300))) @ a  # (n, n) unit rows
        n = a.shape[0]
        if dim >= n - 1:  # full rank is cheap here (and svds needs dim < n): exact cosines
            u, sing, _ = np.linalg.svd(a.toarray(), full_matrices=False)
        else:  # ARPACK, seeded so the reward is deterministic; ~0.4 s for 10k items at dim 64
            u, sing, _ = svds(a, k=dim, random_state=0)
        emb = u * sing  # (n, d); row i ≈ Â_i, of length <= 1
        length = np.linalg.norm(emb, axis=1, keepdims=True)
        # An empty row's SVD embedding is round-off (~1e-17), not zero: normalising it would give
        # the item a random direction. Lengths below 1e-6 (empty rows, or rows the truncation
        # drops) are set to the zero embedding, i.e. cosine 0 to every other item.
        keep = (length > 1e-6) & ~self.empty[:, None]
        self.vectors = np.where(keep, emb / np.maximum(length, 1e-300), 0.0).astype(np.float32)  # (n, d)

    def distance(self, idx: np.ndarray) -> np.ndarray:
        """(U, k, k) 1 − cosine between the catalogue rows ``idx`` (U, k), all >= 0."""
        v = self.vectors[idx]  # (U, k, d)
        d = 1.0 - np.clip(np.einsum("ukd,ujd->ukj", v, v), 0.0, 1.0)
        both_empty = self.empty[idx][:, :, None] & self.empty[idx][:, None, :]
        return np.where(both_empty, 0.0, d)


def diversity_basis(catalogue: Catalogue, by: str = "auto") -> str:
    """``'genre'`` or ``'cooccurrence'``: what ``diversity_by`` means on this catalogue."""
    _choice(by, DIVERSITY_BY, "diversity_by")
    if by == "genre" and catalogue.genres is None:
        raise ConfigError("diversity_by: 'genre' needs genres, but this dataset has none; use "
                          "diversity_by: cooccurrence (or auto)")
    return "genre" if by == "genre" or (by == "auto" and catalogue.genres is not None) else "cooccurrence"


def item_distance(catalogue: Catalogue, train: pd.DataFrame, by: str = "auto", dim: int | None = None,
                  embedding: CooccurrenceEmbedding | None = None) -> ItemDistance:
    """The item distance of the ``diversity`` reward and of evaluation's ``ild@K`` (one function, so
    the two cannot drift): 1 − Jaccard of genre sets (:func:`blade.metrics.genre_distance`), or
    1 − cosine of :class:`CooccurrenceEmbedding` fitted on ``train`` only (``dim``: its rank, default
    the ``diversity_dim`` default; ``embedding``: one already built, e.g. by :class:`ListReward`)."""
    if diversity_basis(catalogue, by) == "genre":
        return genre_distance(catalogue)
    if embedding is None:
        dim = RewardConfig().diversity_dim if dim is None else dim
        embedding = CooccurrenceEmbedding(CoOccurrence(train, catalogue.item_ids).counts, dim=dim)
    return embedding.distance


def diversity_reward(lists: np.ndarray, catalogue: Catalogue, distance: ItemDistance) -> np.ndarray:
    """(R,) mean of ``distance`` over all K(K−1)/2 slot pairs, a pair with an invalid slot counting 0:
    :func:`ild_at_k` (the mean over valid pairs) times the share of valid pairs. K=1: 0."""
    lists = np.asarray(lists, dtype=np.int64)
    R, K = lists.shape
    if K < 2:
        return np.zeros(R)
    v = (_valid_index(lists, catalogue) >= 0).sum(1)  # (R,) valid slots
    return np.nan_to_num(ild_at_k(lists, catalogue, K, distance), nan=0.0) * v * (v - 1) / (K * (K - 1))


# ---------------------------------------------------------------- registry
@dataclass(frozen=True)
class RewardBatch:
    """What every registered reward receives."""

    histories: Sequence[Sequence[int]]  # R histories, oldest item first
    targets: np.ndarray | None          # (R,) ground-truth next items; None at inference time
    lists: np.ndarray                   # (R, K) recommended item ids, -1 = empty slot
    idx: np.ndarray                     # (R, K) catalogue row of each slot, -1 = invalid slot
    rows: np.ndarray | None = None      # (R,) train row of each context, where the caller knows it


RewardFn = Callable[[RewardBatch, "ListReward"], np.ndarray]
REWARDS: dict[str, RewardFn] = {}


def register_reward(name: str) -> Callable[[RewardFn], RewardFn]:
    """Decorator: make ``fn(batch, env) -> (R,) in [0, 1]`` the reward called ``name``."""

    def add(fn: RewardFn) -> RewardFn:
        if name in REWARDS:
            raise ValueError(f"a reward named {name!r} is already registered ({REWARDS[name].__qualname__})")
        REWARDS[name] = fn
        return fn

    return add


@register_reward("ndcg")
def _ndcg(batch: RewardBatch, env: ListReward) -> np.ndarray:
    if batch.targets is None:
        raise ValueError("the 'ndcg' reward needs the ground-truth targets; give it weight 0 at inference time")
    return ndcg_reward(batch.lists, batch.targets, env.catalogue)


def future_reward(lists: np.ndarray, idx: np.ndarray, futures: Sequence[Sequence[int]], future_len: int) -> np.ndarray:
    """(R,) graded NDCG of each list (R, K) against its future (target first): the j-th distinct
    future item has gain 1/(1+j) (j < ``future_len``); ``idx`` (R, K) marks invalid slots (-1),
    which score 0. With a one-item future this is :func:`ndcg_reward`."""
    lists = np.asarray(lists, dtype=np.int64)
    R, K = lists.shape
    width = max(1, min(future_len, max((len(f) for f in futures), default=1)))
    fut = np.full((R, width), -2, dtype=np.int64)  # -2 never matches a slot (invalid slots are >= -1)
    for i, f in enumerate(futures):
        f = list(dict.fromkeys(f))[:width]
        fut[i, :len(f)] = f
    gains = 1.0 / (1.0 + np.arange(width))                                  # (width,)
    hit = (lists[:, :, None] == fut[:, None, :]) & (idx >= 0)[:, :, None]  # (R, K, width)
    disc = _discounts(K)
    dcg = (hit * gains).sum(2) @ disc                                       # (R,)
    n_known = (fut >= 0).sum(1)                                             # (R,) >= 1
    ideal_gain = np.where(np.arange(width)[None, :] < n_known[:, None], gains[None, :], 0.0)[:, :min(K, width)]
    ideal = ideal_gain @ disc[:min(K, width)]
    return np.clip(dcg / ideal, 0.0, 1.0)


@register_reward("relevance")
def _relevance(batch: RewardBatch, env: ListReward) -> np.ndarray:
    return env.relevance_model.score_lists(batch.histories, batch.lists)


@register_reward("fairness")
def _fairness(batch: RewardBatch, env: ListReward) -> np.ndarray:
    return fairness_reward(batch.lists, env.catalogue, env.fairness_target, env.config.fairness_by)


@register_reward("diversity")
def _diversity(batch: RewardBatch, env: ListReward) -> np.ndarray:
    return diversity_reward(batch.lists, env.catalogue, env.distance)


@register_reward("future")
def _future(batch: RewardBatch, env: ListReward) -> np.ndarray:
    if batch.targets is None:
        raise ValueError("the 'future' reward needs the ground-truth targets; give it weight 0 at inference time")
    if batch.rows is None:  # not train contexts: the target alone
        futures = [[int(t)] for t in batch.targets]
    else:
        known = env.futures
        futures = [known[r] for r in batch.rows]
        if any(f[0] != t for f, t in zip(futures, batch.targets)):
            raise ValueError("the 'future' reward got train row ids whose targets are not the contexts' targets")
    return future_reward(batch.lists, batch.idx, futures, env.config.future_len)


# ---------------------------------------------------------------- config and combination
def _choice(value: str, valid: tuple[str, ...], key: str) -> None:
    if value not in valid:
        raise ConfigError(f"{key}: {value!r} is not allowed; choose one of {list(valid)}")


@dataclass
class RewardConfig:
    """Which list-wise rewards make r(x, y), and their options (docs/method.md (4.1)–(4.4))."""

    weights: dict[str, float] = option(
        {"ndcg": 1.0},
        help="reward name -> weight; r = Σ weight·reward. Names: ndcg, future, relevance, fairness, diversity "
        "(plus any registered with register_reward). Weights >= 0, at least one > 0; 0 = not computed",
    )
    fairness_by: FairnessBy = option(
        "pop", help="groups of the fairness reward: popularity groups (every dataset has them) or genres")
    fairness_target: FairnessTarget = option(
        "train_share",
        help="target group distribution, read from stats.json: 'train_share' = share of train "
        "interactions (the reference of the MGU/DGU metrics), 'item_share' = share of catalogue items "
        "(equal exposure per item), 'uniform' = 1/G",
    )
    diversity_by: DiversityBy = option(
        "auto",
        help="pairwise distance of the diversity reward: 'genre' = 1 − Jaccard of genre sets, "
        "'cooccurrence' = 1 − cosine of item embeddings from train co-occurrence rows, 'auto' = genre "
        "if the dataset has genres, else cooccurrence",
    )
    diversity_dim: int = option(
        64, help="'cooccurrence' diversity: rank of the SVD item embeddings (exact cosines when >= the catalogue size)")
    cooccurrence_decay: float = option(
        0.7, help="relevance model: weight decay^age of each history item (age 0 = most recent), in [0, 1]")
    future_len: int = option(
        5, help="'future' reward: the target and the user's next future_len − 1 distinct train targets are graded "
                "(gain 1/(1+j)); 1 = plain ndcg")

    def __post_init__(self) -> None:
        for name, weight in self.weights.items():
            if name not in REWARDS:
                close = difflib.get_close_matches(name, list(REWARDS), n=1)
                hint = f" — did you mean '{close[0]}'?" if close else ""
                raise ConfigError(f"weights.{name}: unknown reward{hint} Valid rewards: {', '.join(REWARDS)}")
            if not (isinstance(weight, (int, float)) and math.isfinite(weight)) or weight < 0:
                raise ConfigError(f"weights.{name}: weight must be a finite number >= 0, got {weight!r}")
        if not any(w > 0 for w in self.weights.values()):
            raise ConfigError(f"weights: at least one reward needs a weight > 0, got {self.weights}")
        _choice(self.fairness_by, FAIRNESS_BY, "fairness_by")
        _choice(self.fairness_target, FAIRNESS_TARGETS, "fairness_target")
        _choice(self.diversity_by, DIVERSITY_BY, "diversity_by")
        if self.diversity_dim < 1:
            raise ConfigError(f"diversity_dim must be >= 1, got {self.diversity_dim}")
        if not isinstance(self.future_len, int) or self.future_len < 1:
            raise ConfigError(f"future_len must be an integer >= 1, got {self.future_len!r}")
        if not 0.0 <= self.cooccurrence_decay <= 1.0:
            raise ConfigError(f"cooccurrence_decay must lie in [0, 1], got {self.cooccurrence_decay}")

    @property
    def active(self) -> dict[str, float]:
        """The rewards that are computed (weight > 0)."""
        return {n: float(w) for n, w in self.weights.items() if w > 0}


class ListReward:
    """The combined reward of one dataset, built once: ``reward(histories, targets, lists)``.

    Returns ``{name: (R,)}`` for every reward with weight > 0, plus ``"reward"`` (R,), their
    weighted sum. Everything a configured reward needs (fairness target, relevance model,
    embedding) is built here, so configuration errors surface before training starts."""

    def __init__(self, config: RewardConfig, items: pd.DataFrame, train: pd.DataFrame, stats: dict[str, Any]):
        self.config, self.items, self.train, self.stats = config, items, train, stats
        self.catalogue = build_catalogue(items, stats)  # no per-row history: rewards need none
        active = config.active
        # None when diversity is not computed, so an unused diversity_by is never an error
        self.diversity_basis = diversity_basis(self.catalogue, config.diversity_by) if "diversity" in active else None
        if "fairness" in active:
            self.fairness_target = target_distribution(stats, config.fairness_by, config.fairness_target)
            if config.fairness_by == "genre" and list(stats["genres"]["names"]) != self.catalogue.genre_names:
                raise DataError("stats.json genres.names differ from the genres in items.parquet; "
                                "re-run `blade prepare`")
        if "future" in active:
            self.futures  # noqa: B018
        if "relevance" in active:
            self.relevance_model  # noqa: B018 — build now, not inside the first training step
        if "diversity" in active:
            self.distance  # noqa: B018

    @cached_property
    def cooccurrence(self) -> CoOccurrence:
        """Item-item co-occurrence fitted on the train split (shared by relevance and diversity)."""
        return CoOccurrence(self.train, self.catalogue.item_ids, decay=self.config.cooccurrence_decay)

    @cached_property
    def futures(self) -> list[list[int]]:
        """Each train row's target then its user's next distinct train targets (``future`` reward)."""
        from blade.data.continuation import continuation_lists

        return continuation_lists(self.train, self.config.future_len)

    @cached_property
    def relevance_model(self) -> RelevanceModel:
        return RelevanceModel(self.cooccurrence)

    @cached_property
    def embedding(self) -> CooccurrenceEmbedding:
        """Co-occurrence item embeddings (the diversity basis when the dataset has no genres)."""
        return CooccurrenceEmbedding(self.cooccurrence.counts, dim=self.config.diversity_dim)

    @cached_property
    def distance(self) -> ItemDistance:
        """The diversity reward's item distance (:func:`item_distance`)."""
        by = self.diversity_basis or diversity_basis(self.catalogue, self.config.diversity_by)
        return item_distance(self.catalogue, self.train, by,
                             embedding=self.embedding if by == "cooccurrence" else None)

    def __call__(self, histories: Sequence[Sequence[int]], targets: np.ndarray | None,
                 lists: np.ndarray, rows: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """``rows``: the train row of each context, when the contexts are train rows (a reward that
        reads a context's train future needs it; the others ignore it)."""
        lists = np.asarray(lists, dtype=np.int64)
        if lists.ndim != 2 or lists.shape[1] < 1:
            raise ValueError(f"lists must be (R, K) with K >= 1, got shape {lists.shape}")
        R = lists.shape[0]
        if len(histories) != R:
            raise ValueError(f"got {len(histories)} histories for {R} lists")
        if targets is not None:
            targets = np.asarray(targets, dtype=np.int64)
            if targets.shape != (R,):
                raise ValueError(f"targets must be (R,) = ({R},), got {targets.shape}")
        if rows is not None:
            rows = np.asarray(rows, dtype=np.int64)
            if rows.shape != (R,) or (len(rows) and (rows.min() < 0 or rows.max() >= len(self.train))):
                raise ValueError(f"rows must be (R,) = ({R},) train row ids in [0, {len(self.train)})")
        batch = RewardBatch(histories, targets, lists, _valid_index(lists, self.catalogue), rows)
        out: dict[str, np.ndarray] = {}
        total = np.zeros(R)
        for name, weight in self.config.active.items():
            value = np.asarray(REWARDS[name](batch, self), dtype=float)
            if value.shape != (R,) or not np.all((value >= 0.0) & (value <= 1.0)):
                bad = value.shape if value.shape != (R,) else f"range [{np.nanmin(value)}, {np.nanmax(value)}]"
                raise ValueError(f"reward {name!r} must return ({R},) values in [0, 1]; got {bad}")
            out[name] = value
            total += weight * value
        out["reward"] = total
        return out
