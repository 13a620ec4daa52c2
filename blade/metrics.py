"""Evaluation metrics for list-wise recommendation with one ground-truth target per row (METHOD.md §4).

Conventions (shared by every function):
- ``lists``: int (U, K) recommended item ids, rank 1 first; ``-1`` marks an empty slot.
- ``targets``: int (U,) the one held-out item of each row.
- A slot is *valid* when its id is in the catalogue and not repeated earlier in the same row.
  Invalid slots give no hit and no exposure; they are counted only by ``invalid_rate``.
- Per-user metrics return a float array (U,); NaN where a row has nothing to measure (no valid
  item, or < 2 valid items for ILD). ``aggregate`` (nan-mean) is the one place they are averaged.
- Catalogue-level metrics (Gini, coverage, entropy, pooled MGU/DGU) return one float: they
  describe the exposure distribution over all users' lists and have no per-user form.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from blade.errors import DataError

GROUPINGS = ("pop", "genre")


@dataclass
class Catalogue:
    """Item-side information, all arrays aligned with ``item_ids``."""

    item_ids: np.ndarray  # (n,) catalogue item ids, unique
    pop_group: np.ndarray  # (n,) 0 = head ... G-1 = tail, from train counts (preprocessing)
    train_pop: np.ndarray  # (n,) train interaction counts
    genres: list[list[str]] | None = None  # per item; an item may have several or none
    history: list[list[int]] | None = None  # per *row of lists*: that user's history item ids
    n_groups: int | None = None  # G; default pop_group.max() + 1
    # Derived once in __post_init__ (treat the catalogue as read-only afterwards): id lookup,
    # flattened history, per-grouping (n, G) item->group weights and cached history counts.

    def __post_init__(self) -> None:
        self.item_ids = np.asarray(self.item_ids, dtype=np.int64)
        self.pop_group = np.asarray(self.pop_group, dtype=np.int64)
        self.train_pop = np.asarray(self.train_pop, dtype=np.float64)
        n = len(self.item_ids)
        if len(np.unique(self.item_ids)) != n:
            raise DataError("Catalogue.item_ids must be unique")
        if len(self.pop_group) != n or len(self.train_pop) != n:
            raise DataError("Catalogue.pop_group and train_pop must align with item_ids")
        if self.n_groups is None:
            self.n_groups = int(self.pop_group.max()) + 1
        if self.pop_group.min() < 0 or self.pop_group.max() >= self.n_groups:
            raise DataError(f"Catalogue.pop_group must lie in [0, {self.n_groups})")
        self._order = np.argsort(self.item_ids)
        self._lookup, self._hist_counts = None, {}
        if self.item_ids.min() >= 0 and self.item_ids.max() < 16 * n + 1024:  # usual: ids 0..n-1
            self._lookup = np.full(self.item_ids.max() + 1, -1, dtype=np.int64)
            self._lookup[self.item_ids] = np.arange(n)
        if self.history is not None:  # flattened once: (row, catalogue index) per history entry
            lens = np.fromiter(map(len, self.history), dtype=np.int64, count=len(self.history))
            flat = self.index_of(np.fromiter((i for h in self.history for i in h), np.int64, lens.sum()))
            self._hist_row = np.repeat(np.arange(len(self.history)), lens)[flat >= 0]
            self._hist_idx = flat[flat >= 0]
        self._weights = {"pop": np.eye(self.n_groups)[self.pop_group]}  # one-hot (n, G)
        if self.genres is not None:
            if len(self.genres) != n:
                raise DataError("Catalogue.genres must align with item_ids")
            self.genre_names = sorted({g for gs in self.genres for g in gs})
            col = {g: j for j, g in enumerate(self.genre_names)}
            hot = np.zeros((n, len(self.genre_names)))
            for i, gs in enumerate(self.genres):  # once per item, not on the hot path
                hot[i, [col[g] for g in set(gs)]] = 1.0
            self.genre_hot = hot  # (n, Gg) multi-hot, for Jaccard
            # An item with several genres counts 1/len toward each (task choice; see mgu_dgu).
            self._weights["genre"] = hot / np.maximum(hot.sum(1, keepdims=True), 1.0)

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    def index_of(self, ids: np.ndarray) -> np.ndarray:
        """Catalogue row of each id (same shape); -1 for ids not in the catalogue."""
        ids = np.asarray(ids, dtype=np.int64)
        if self._lookup is not None:  # a table lookup is ~50x faster than searchsorted here
            ok = (ids >= 0) & (ids < len(self._lookup))
            return np.where(ok, self._lookup[np.where(ok, ids, 0)], -1)
        sorted_ids = self.item_ids[self._order]
        pos = np.clip(np.searchsorted(sorted_ids, ids), 0, self.n_items - 1)
        return np.where(sorted_ids[pos] == ids, self._order[pos], -1)

    def weights(self, by: str) -> np.ndarray:
        if by not in GROUPINGS:
            raise ValueError(f"unknown grouping {by!r}; valid: {GROUPINGS}")
        if by not in self._weights:
            raise DataError("grouping 'genre' needs Catalogue.genres")
        return self._weights[by]


def _topk(lists: np.ndarray, k: int) -> np.ndarray:
    lists = np.asarray(lists, dtype=np.int64)
    if lists.ndim != 2 or not 1 <= k <= lists.shape[1]:
        raise ValueError(f"k={k} must lie in [1, K] for lists of shape {lists.shape}")
    return lists[:, :k]


def _first_occurrence(lists: np.ndarray) -> np.ndarray:
    """(U, K) bool: True where the id does not appear earlier in its row."""
    order = np.argsort(lists, axis=1, kind="stable")  # equal ids keep rank order
    srt = np.take_along_axis(lists, order, axis=1)
    first_sorted = np.ones_like(srt, dtype=bool)
    first_sorted[:, 1:] = srt[:, 1:] != srt[:, :-1]
    first = np.empty_like(first_sorted)
    np.put_along_axis(first, order, first_sorted, axis=1)
    return first


def _valid_index(lists: np.ndarray, cat: Catalogue | None) -> np.ndarray:
    """(U, K) catalogue row of each slot, -1 for invalid slots (missing, unknown, repeated)."""
    idx = cat.index_of(lists) if cat is not None else np.where(lists >= 0, lists, -1)
    return np.where(_first_occurrence(lists) & (idx >= 0), idx, -1)


# ---------------------------------------------------------------- accuracy (per user)
def _hit_rank(lists, targets, k, cat=None) -> np.ndarray:
    """0-based rank of the target's first valid occurrence in the top k, -1 if absent."""
    top = _topk(lists, k)
    hit = (top == np.asarray(targets, dtype=np.int64)[:, None]) & (_valid_index(top, cat) >= 0)
    return np.where(hit.any(1), hit.argmax(1), -1)  # (U,)


def recall_at_k(lists, targets, k: int, catalogue: Catalogue | None = None) -> np.ndarray:
    """Recall@k = HR@k = 1[target in top k] (one relevant item per row)."""
    return (_hit_rank(lists, targets, k, catalogue) >= 0).astype(float)


def ndcg_at_k(lists, targets, k: int, catalogue: Catalogue | None = None) -> np.ndarray:
    """NDCG@k, binary relevance, one relevant item: IDCG = 1, so NDCG = 1/log2(rank + 1)
    (rank 1-based) if the target is in the top k, else 0 (Järvelin & Kekäläinen 2002)."""
    r = _hit_rank(lists, targets, k, catalogue)
    return np.where(r >= 0, 1.0 / np.log2(np.maximum(r, 0) + 2.0), 0.0)


def invalid_rate(lists, catalogue: Catalogue) -> np.ndarray:
    """Fraction of the row's K slots that are -1, not in the catalogue, or repeat an earlier slot."""
    lists = np.asarray(lists, dtype=np.int64)
    return (_valid_index(lists, catalogue) < 0).mean(1)


# ---------------------------------------------------------------- group exposure (per user)
def _group_counts(idx: np.ndarray, w: np.ndarray) -> np.ndarray:
    """(U, G) summed group weights of the valid slots; idx (U, k) with -1 for invalid."""
    w_ext = np.vstack([w, np.zeros((1, w.shape[1]))])  # row -1 -> zero weight
    counts = np.zeros((idx.shape[0], w.shape[1]))
    for j in range(idx.shape[1]):  # loop over list positions (<= K), never over users
        counts += w_ext[idx[:, j]]
    return counts


def _shares(counts: np.ndarray) -> np.ndarray:
    tot = counts.sum(1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(tot > 0, counts / tot, np.nan)


def group_shares(lists, catalogue: Catalogue, k: int, by: str = "pop") -> np.ndarray:
    """(U, G) share of each group among the valid items of each top-k list."""
    idx = _valid_index(_topk(lists, k), catalogue)
    return _shares(_group_counts(idx, catalogue.weights(by)))


def _reference_counts(catalogue: Catalogue, n_rows: int, by: str) -> tuple[np.ndarray, np.ndarray]:
    """Per-row history group counts (U, G) and the train-interaction group share (G,).

    Rows without history (or all rows, when ``catalogue.history`` is None) fall back to the
    train share in per-user metrics."""
    w = catalogue.weights(by)
    train = catalogue.train_pop @ w / catalogue.train_pop.sum()
    counts = np.zeros((n_rows, w.shape[1]))
    if catalogue.history is not None:
        if len(catalogue.history) != n_rows:
            raise DataError(f"Catalogue.history has {len(catalogue.history)} rows, lists {n_rows}")
        if by not in catalogue._hist_counts:
            row, idx = catalogue._hist_row, catalogue._hist_idx
            for g in range(w.shape[1]):
                counts[:, g] = np.bincount(row, weights=w[idx, g], minlength=n_rows)
            catalogue._hist_counts[by] = counts
        counts = catalogue._hist_counts[by]
    return counts, train


def group_unfairness(lists, catalogue: Catalogue, k: int, by: str = "pop") -> np.ndarray:
    """(U, G) GU_u(g) = p_rec,u(g) − p_ref,u(g); reference = u's history shares, else train shares."""
    rec = group_shares(lists, catalogue, k, by)
    hist, train = _reference_counts(catalogue, rec.shape[0], by)
    ref = np.where(hist.sum(1, keepdims=True) > 0, _shares(hist), train[None, :])
    return rec - ref


def mgu_dgu(lists, catalogue: Catalogue, k: int, by: str = "pop") -> tuple[np.ndarray, np.ndarray]:
    """Per-user MGU@k = mean_g |GU_u(g)| and DGU@k = max_g GU_u(g) − min_g GU_u(g).

    Source: Jiang et al., "Item-side Fairness of Large Language Model-based Recommendation
    System" (IFairLRS, WWW 2024). The paper's GU compares a group's share of the top-K
    recommendations with its share of the users' history interactions, *pooled over all test
    users* (official code JiangM-C/IFairLRS, code/evaluate_all_pop.py: counts summed over users);
    that pooled number is ``mgu_dgu_pooled``. This per-user form is the suite's extension so that
    paired per-user tests are possible. Genres: the official code counts a multi-genre item once
    per genre; here it counts 1/len(genres) per genre so every item has unit exposure."""
    gu = group_unfairness(lists, catalogue, k, by)
    return np.abs(gu).mean(1), gu.max(1) - gu.min(1)


def mgu_dgu_pooled(lists, catalogue: Catalogue, k: int, by: str = "pop") -> tuple[float, float]:
    """IFairLRS MGU@k, DGU@k with GU(g) = Σ_u c_rec,u(g)/Σ_u n_rec,u − Σ_u c_hist,u(g)/Σ_u n_hist,u
    (counts pooled over users); train shares stand in for histories when none are given."""
    idx = _valid_index(_topk(lists, k), catalogue)
    rec = _group_counts(idx, catalogue.weights(by)).sum(0)
    hist, train = _reference_counts(catalogue, idx.shape[0], by)
    ref = hist.sum(0) / hist.sum() if hist.sum() > 0 else train
    if rec.sum() == 0:  # no list holds a valid item: there is no exposure to compare
        return float("nan"), float("nan")
    gu = rec / rec.sum() - ref
    return float(np.abs(gu).mean()), float(gu.max() - gu.min())


def tail_share_at_k(lists, catalogue: Catalogue, k: int) -> np.ndarray:
    """Share of the valid top-k items in the tail popularity group G−1."""
    return group_shares(lists, catalogue, k, "pop")[:, -1]


# ---------------------------------------------------------------- diversity
def ild_at_k(lists, catalogue: Catalogue, k: int, chunk: int = 8192) -> np.ndarray:
    """Intra-list diversity: mean over pairs i<j of valid top-k items of d(i, j) (Ziegler et al. 2005).

    d = 1 − Jaccard(genre sets) when the catalogue has genres (two empty sets: d = 0); otherwise
    d = |g_i − g_j| / (G − 1) on popularity groups (0 when G = 1), a coarse proxy that only
    measures popularity spread. NaN for rows with fewer than 2 valid items."""
    idx = _valid_index(_topk(lists, k), catalogue)
    ok = idx >= 0
    pair = np.triu(np.ones((k, k), dtype=bool), 1)[None] & ok[:, :, None] & ok[:, None, :]
    out = np.empty(idx.shape[0])
    for s in range(0, idx.shape[0], chunk):  # chunks bound the (U, k, k) memory, not per user
        ix, pm = np.maximum(idx[s : s + chunk], 0), pair[s : s + chunk]
        if catalogue.genres is not None:
            h = catalogue.genre_hot[ix].astype(np.float32)  # (u, k, Gg)
            inter = np.einsum("ukg,ujg->ukj", h, h)
            size = h.sum(2)
            union = size[:, :, None] + size[:, None, :] - inter
            d = np.where(union > 0, 1.0 - inter / np.maximum(union, 1.0), 0.0)
        else:
            g = catalogue.pop_group[ix].astype(float)
            d = np.abs(g[:, :, None] - g[:, None, :]) / max(catalogue.n_groups - 1, 1)
        n_pairs = pm.sum((1, 2))
        with np.errstate(invalid="ignore", divide="ignore"):
            out[s : s + chunk] = np.where(n_pairs > 0, (d * pm).sum((1, 2)) / n_pairs, np.nan)
    return out


def exposure_counts(lists, catalogue: Catalogue, k: int) -> np.ndarray:
    """(n,) how many top-k lists contain each catalogue item (valid slots only)."""
    idx = _valid_index(_topk(lists, k), catalogue)
    return np.bincount(idx[idx >= 0], minlength=catalogue.n_items).astype(float)


def gini_at_k(lists, catalogue: Catalogue, k: int) -> float:
    """Gini of item exposure over the whole catalogue (zero-exposure items included); one number.

    With counts sorted ascending c_(1) <= ... <= c_(n): Gini = Σ_i (2i − n − 1) c_(i) / (n Σ_i c_i).
    Uniform exposure -> 0; all exposure on one item -> (n − 1)/n."""
    c = np.sort(exposure_counts(lists, catalogue, k))
    n = len(c)
    return float(((2 * np.arange(1, n + 1) - n - 1) * c).sum() / (n * c.sum())) if c.sum() else 0.0


def coverage_at_k(lists, catalogue: Catalogue, k: int) -> float:
    """Distinct items in any top-k list / catalogue size; one number."""
    return float((exposure_counts(lists, catalogue, k) > 0).mean())


def entropy_at_k(lists, catalogue: Catalogue, k: int) -> float:
    """Shannon entropy (nats) of the exposure distribution p_i = c_i / Σ c; one number, max ln n."""
    c = exposure_counts(lists, catalogue, k)
    p = c[c > 0] / c.sum()
    return float(-(p * np.log(p)).sum())


# ---------------------------------------------------------------- aggregation
def aggregate(per_user: pd.DataFrame) -> dict[str, float]:
    """The one place per-user metrics are averaged (nan-mean: rows with nothing to measure skip).

    A metric with nothing to measure in any row (e.g. ILD@1) is left out rather than written as NaN,
    which strict JSON readers reject."""
    out = {}
    for c in per_user.columns:
        values = per_user[c].to_numpy(float)
        if np.isfinite(values).any():
            out[c] = float(np.nanmean(values))
    return out


def evaluate_lists(lists, targets, catalogue: Catalogue, ks=(5, 10, 20)):
    """Per-user metric table (U rows) and a summary dict (means + catalogue-level numbers).

    Genre columns appear only when the catalogue has genres. Summary adds ``gini@k``,
    ``coverage@k``, ``entropy@k`` and the paper's pooled ``mgu_{pop,genre}_pooled@k`` / ``dgu_…``."""
    lists = np.asarray(lists, dtype=np.int64)
    targets = np.asarray(targets, dtype=np.int64)
    if lists.ndim != 2 or targets.shape != (lists.shape[0],):
        raise ValueError(f"lists must be (U, K) and targets (U,); got {lists.shape}, {targets.shape}")
    groupings = [g for g in GROUPINGS if g == "pop" or catalogue.genres is not None]
    cols, extra = {}, {}
    for k in ks:
        cols[f"recall@{k}"] = recall_at_k(lists, targets, k, catalogue)
        cols[f"ndcg@{k}"] = ndcg_at_k(lists, targets, k, catalogue)
        for by in groupings:
            cols[f"mgu_{by}@{k}"], cols[f"dgu_{by}@{k}"] = mgu_dgu(lists, catalogue, k, by)
            extra[f"mgu_{by}_pooled@{k}"], extra[f"dgu_{by}_pooled@{k}"] = mgu_dgu_pooled(
                lists, catalogue, k, by)
        cols[f"tail_share@{k}"] = tail_share_at_k(lists, catalogue, k)
        cols[f"ild@{k}"] = ild_at_k(lists, catalogue, k)
        extra[f"gini@{k}"] = gini_at_k(lists, catalogue, k)
        extra[f"coverage@{k}"] = coverage_at_k(lists, catalogue, k)
        extra[f"entropy@{k}"] = entropy_at_k(lists, catalogue, k)
    cols["invalid_rate"] = invalid_rate(lists, catalogue)
    per_user = pd.DataFrame(cols)
    return per_user, {**aggregate(per_user), **extra}
