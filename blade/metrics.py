"""Evaluation metrics for list-wise recommendation with one ground-truth target per row
(docs/method.md (4.5)–(4.9)).

Conventions (shared by every function):
- ``lists``: int (U, K) recommended item ids, rank 1 first; ``-1`` marks an empty slot.
- ``targets``: int (U,) the one held-out item of each row.
- A slot is *valid* when its id is in the catalogue and not repeated earlier in the same row.
  Invalid slots give no hit and no exposure; they are counted only by ``invalid_rate``.
- Per-user metrics return a float array (U,); NaN where a row has nothing to measure (no valid
  item, or < 2 valid items for ILD). ``aggregate`` (nan-mean) is the one place they are averaged.
- Catalogue-level metrics (Gini, coverage, entropy, IFairLRS MGU/DGU) return one float: they
  describe the exposure over all users' lists pooled. MGU/DGU also have a per-user form
  (``mgu_dgu_user``, metric names ``…_user@K``) for paired tests; the plain names are the paper's.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from blade.errors import DataError

GROUPINGS = ("pop", "genre")


class ItemIndex:
    """Item id -> row of an id array: the one lookup every module uses (metrics, rewards, the
    reference recommenders). ``index_of`` maps unknown ids (and -1) to -1, never raises."""

    def __init__(self, item_ids) -> None:
        self.ids = np.asarray(item_ids, dtype=np.int64).reshape(-1)  # (n,)
        n = len(self.ids)
        if len(np.unique(self.ids)) != n:
            raise DataError("item ids must be unique")
        self._order = np.argsort(self.ids)
        self._lookup = None
        if n and self.ids.min() >= 0 and self.ids.max() < 16 * n + 1024:  # usual: ids 0..n-1
            self._lookup = np.full(self.ids.max() + 1, -1, dtype=np.int64)
            self._lookup[self.ids] = np.arange(n)

    def __len__(self) -> int:
        return len(self.ids)

    def index_of(self, ids) -> np.ndarray:
        """Row of each id (same shape); -1 for ids not in the index."""
        ids = np.asarray(ids, dtype=np.int64)
        if not len(self.ids):
            return np.full(ids.shape, -1, dtype=np.int64)
        if self._lookup is not None:  # a table lookup is ~50x faster than searchsorted here
            ok = (ids >= 0) & (ids < len(self._lookup))
            return np.where(ok, self._lookup[np.where(ok, ids, 0)], -1)
        sorted_ids = self.ids[self._order]
        pos = np.clip(np.searchsorted(sorted_ids, ids), 0, len(self.ids) - 1)
        return np.where(sorted_ids[pos] == ids, self._order[pos], -1)


@dataclass
class Catalogue:
    """Item-side information, all arrays aligned with ``item_ids``. Build it from a prepared
    dataset with :func:`build_catalogue` (the one place the number of groups is decided)."""

    item_ids: np.ndarray  # (n,) catalogue item ids, unique
    pop_group: np.ndarray  # (n,) 0 = head ... G-1 = tail, from train counts (preprocessing)
    train_pop: np.ndarray  # (n,) train interaction counts
    genres: list[list[str]] | None = None  # per item; an item may have several or none
    history: list[list[int]] | None = None  # per *row of lists*: that user's history item ids
    n_groups: int | None = None  # G; default pop_group.max() + 1 (hand-built catalogues only)
    # Derived once in __post_init__ (treat the catalogue as read-only afterwards): id lookup,
    # flattened history, per-grouping (n, G) item->group weights and cached history counts.

    def __post_init__(self) -> None:
        self.index = ItemIndex(self.item_ids)
        self.item_ids = self.index.ids
        self.pop_group = np.asarray(self.pop_group, dtype=np.int64)
        self.train_pop = np.asarray(self.train_pop, dtype=np.float64)
        n = len(self.item_ids)
        if len(self.pop_group) != n or len(self.train_pop) != n:
            raise DataError("Catalogue.pop_group and train_pop must align with item_ids")
        if self.n_groups is None:
            self.n_groups = int(self.pop_group.max()) + 1
        if self.pop_group.min() < 0 or self.pop_group.max() >= self.n_groups:
            raise DataError(f"Catalogue.pop_group must lie in [0, {self.n_groups})")
        self._hist_counts = {}
        if self.history is not None:  # flattened once: (row, catalogue index) per history entry
            lens = np.fromiter(map(len, self.history), dtype=np.int64, count=len(self.history))
            flat = self.index_of(np.fromiter((i for h in self.history for i in h), np.int64, lens.sum()))
            self._hist_row = np.repeat(np.arange(len(self.history)), lens)[flat >= 0]
            self._hist_idx = flat[flat >= 0]
        one_hot = np.eye(self.n_groups)[self.pop_group]  # (n, G)
        # Two genre weightings, both (n, Gg): ``weights`` gives every item unit exposure (1/len
        # per genre: group shares, the fairness reward, stats.json); ``counts`` is IFairLRS's
        # counting (1 per genre of the item), used by MGU/DGU.
        self._weights, self._counts = {"pop": one_hot}, {"pop": one_hot}
        if self.genres is not None:
            if len(self.genres) != n:
                raise DataError("Catalogue.genres must align with item_ids")
            self.genre_names = sorted({g for gs in self.genres for g in gs})
            col = {g: j for j, g in enumerate(self.genre_names)}
            hot = np.zeros((n, len(self.genre_names)))
            for i, gs in enumerate(self.genres):  # once per item, not on the hot path
                hot[i, [col[g] for g in set(gs)]] = 1.0
            self.genre_hot = hot  # (n, Gg) multi-hot, for Jaccard
            self._counts["genre"] = hot
            self._weights["genre"] = hot / np.maximum(hot.sum(1, keepdims=True), 1.0)

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    def index_of(self, ids: np.ndarray) -> np.ndarray:
        """Catalogue row of each id (same shape); -1 for ids not in the catalogue."""
        return self.index.index_of(ids)

    def _grouping(self, table: dict, by: str) -> np.ndarray:
        if by not in GROUPINGS:
            raise ValueError(f"unknown grouping {by!r}; valid: {GROUPINGS}")
        if by not in table:
            raise DataError("grouping 'genre' needs Catalogue.genres")
        return table[by]

    def weights(self, by: str) -> np.ndarray:
        """(n, G) unit-exposure weights: a multi-genre item counts 1/len(genres) per genre."""
        return self._grouping(self._weights, by)

    def counts(self, by: str) -> np.ndarray:
        """(n, G) IFairLRS group counts: a multi-genre item counts once per genre."""
        return self._grouping(self._counts, by)


def build_catalogue(items: pd.DataFrame, stats: dict, history: list[list[int]] | None = None) -> Catalogue:
    """The catalogue of a prepared dataset (``items.parquet`` + ``stats.json``), used by evaluation,
    rewards and everything else that needs groups.

    The number of popularity groups is ``stats["popularity"]["n_groups"]`` (the configured count),
    never ``pop_group.max() + 1``: an empty tail group still is a group, so MGU/DGU (a mean over
    groups) and the fairness target mean the same G everywhere. Genres exist when some item has a
    non-empty genre list. ``history``: one list per row of the lists to be scored (MGU reference)."""
    try:
        n_groups = int(stats["popularity"]["n_groups"])
    except (KeyError, TypeError, ValueError):
        raise DataError("stats.json has no popularity.n_groups; re-run `blade prepare`") from None
    for col in ("item_id", "pop_group", "train_pop", "genres"):
        if col not in items.columns:
            raise DataError(f"items.parquet has no '{col}' column (columns: {list(items.columns)}); "
                            "re-run `blade prepare`")
    genres = None
    if items["genres"].map(lambda g: g is not None and len(g) > 0).any():
        genres = [list(g) if g is not None else [] for g in items["genres"]]
    pop_group = items["pop_group"].to_numpy()
    if len(pop_group) and pop_group.max() >= n_groups:
        raise DataError(f"items.parquet pop_group reaches {int(pop_group.max())} but stats.json popularity.n_groups "
                        f"is {n_groups}; the two files come from different runs — re-run `blade prepare`")
    return Catalogue(item_ids=items["item_id"].to_numpy(), pop_group=pop_group,
                     train_pop=items["train_pop"].to_numpy(), genres=genres, history=history, n_groups=n_groups)


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


def _valid_index(lists: np.ndarray, cat: Catalogue | ItemIndex | None) -> np.ndarray:
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
    """Recall@k = HR@k = 1[target in top k] (one relevant item per row; docs/method.md (4.5))."""
    return (_hit_rank(lists, targets, k, catalogue) >= 0).astype(float)


def ndcg_at_k(lists, targets, k: int, catalogue: Catalogue | None = None) -> np.ndarray:
    """NDCG@k, binary relevance, one relevant item: IDCG = 1, so NDCG = 1/log2(rank + 1)
    (rank 1-based) if the target is in the top k, else 0 (Järvelin & Kekäläinen 2002; docs/method.md (4.5))."""
    r = _hit_rank(lists, targets, k, catalogue)
    return np.where(r >= 0, 1.0 / np.log2(np.maximum(r, 0) + 2.0), 0.0)


def invalid_rate(lists, catalogue, per_row: bool = True):
    """Fraction of the K slots that are -1, not in the catalogue, or repeat an earlier slot.

    ``catalogue``: a :class:`Catalogue`, an :class:`ItemIndex` or the catalogue's item ids
    (array-like, CPU tensors included). ``per_row``: (U,) one rate per row; else one float, the
    share over all slots (0.0 for no slots), as the samplers log it."""
    lists = np.asarray(lists, dtype=np.int64)
    if lists.ndim != 2:
        raise ValueError(f"lists must be (U, K), got shape {lists.shape}")
    if not hasattr(catalogue, "index_of"):
        catalogue = ItemIndex(np.asarray(catalogue))
    bad = _valid_index(lists, catalogue) < 0  # (U, K)
    if per_row:
        return bad.mean(1) if bad.shape[1] else np.zeros(len(bad))
    return float(bad.mean()) if bad.size else 0.0


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
    """(U, G) share of each group among the valid items of each top-k list, every item with unit
    exposure (``Catalogue.weights``): the fairness reward's and the tail share's basis."""
    idx = _valid_index(_topk(lists, k), catalogue)
    return _shares(_group_counts(idx, catalogue.weights(by)))


def _history_counts(catalogue: Catalogue, n_rows: int, by: str) -> np.ndarray:
    """(U, G) IFairLRS group counts of each row's history; zeros when ``catalogue.history`` is None."""
    counts = np.zeros((n_rows, catalogue.counts(by).shape[1]))
    if catalogue.history is None:
        return counts
    if len(catalogue.history) != n_rows:
        raise DataError(f"Catalogue.history has {len(catalogue.history)} rows, lists {n_rows}")
    if by not in catalogue._hist_counts:  # cached: every k reuses it
        c, row, idx = catalogue.counts(by), catalogue._hist_row, catalogue._hist_idx
        for g in range(c.shape[1]):
            counts[:, g] = np.bincount(row, weights=c[idx, g], minlength=n_rows)
        catalogue._hist_counts[by] = counts
    return catalogue._hist_counts[by]


def _train_share(catalogue: Catalogue, by: str) -> np.ndarray:
    """(G,) group share of the train interactions (IFairLRS counting): the reference where a row
    has no history."""
    c = catalogue.train_pop @ catalogue.counts(by)
    return c / c.sum() if c.sum() > 0 else np.full(len(c), np.nan)


def mgu_dgu(lists, catalogue: Catalogue, k: int, by: str = "pop") -> tuple[float, float]:
    """IFairLRS MGU@k and DGU@k, the numbers a reader of the paper expects (docs/method.md (4.6)).

    Source: Jiang et al., "Item-side Fairness of Large Language Model-based Recommendation System"
    (IFairLRS, WWW 2024); official code JiangM-C/IFairLRS, code/evaluate_all_pop.py and
    evaluate_all.py, which sum group counts over all users' top-k lists and over all users'
    histories. With c(g) a group count pooled over users (an item counts once for each group it is
    in: one popularity group, or each of its genres)::

        GU(g) = c_rec(g) / Σ_g' c_rec(g') − c_hist(g) / Σ_g' c_hist(g')
        MGU = mean_g |GU(g)|,  DGU = max_g GU(g) − min_g GU(g)

    The official code only writes the counts; normalising each by its total over groups (so that
    both sides are distributions) is this suite's reading of the paper. Invalid slots add no count.
    Without histories the train-interaction share is the reference. NaN when no list holds a
    counted item."""
    idx = _valid_index(_topk(lists, k), catalogue)
    rec = _group_counts(idx, catalogue.counts(by)).sum(0)  # (G,)
    hist = _history_counts(catalogue, idx.shape[0], by).sum(0)  # (G,)
    ref = hist / hist.sum() if hist.sum() > 0 else _train_share(catalogue, by)
    if rec.sum() == 0:  # there is no exposure to compare
        return float("nan"), float("nan")
    gu = rec / rec.sum() - ref
    return float(np.abs(gu).mean()), float(gu.max() - gu.min())


def mgu_dgu_user(lists, catalogue: Catalogue, k: int, by: str = "pop") -> tuple[np.ndarray, np.ndarray]:
    """Per-user MGU@k, DGU@k (docs/method.md (4.7)): :func:`mgu_dgu` with each user's own list and
    history in place of the pooled counts (the train share where the user has no history). The
    suite's extension, so that methods can be compared by paired per-user tests; its mean is *not*
    the paper's number. NaN for a row without counted items."""
    rec = _shares(_group_counts(_valid_index(_topk(lists, k), catalogue), catalogue.counts(by)))  # (U, G)
    hist = _history_counts(catalogue, rec.shape[0], by)
    ref = np.where(hist.sum(1, keepdims=True) > 0, _shares(hist), _train_share(catalogue, by)[None, :])
    gu = rec - ref
    return np.abs(gu).mean(1), gu.max(1) - gu.min(1)


def tail_share_at_k(lists, catalogue: Catalogue, k: int) -> np.ndarray:
    """Share of the valid top-k items in the tail popularity group G−1."""
    return group_shares(lists, catalogue, k, "pop")[:, -1]


# ---------------------------------------------------------------- diversity
ItemDistance = Callable[[np.ndarray], np.ndarray]  # catalogue rows (U, k) -> (U, k, k) distances in [0, 1]


def genre_distance(catalogue: Catalogue) -> ItemDistance:
    """d(i, j) = 1 − Jaccard(genre sets); two genre-less items: 0 (identical empty sets)."""
    if catalogue.genres is None:
        raise DataError("genre distance needs item genres; this catalogue has none")
    hot = catalogue.genre_hot.astype(np.float32)

    def distance(idx: np.ndarray) -> np.ndarray:
        h = hot[idx]  # (U, k, Gg)
        inter = np.einsum("ukg,ujg->ukj", h, h)
        size = h.sum(2)
        union = size[:, :, None] + size[:, None, :] - inter
        return np.where(union > 0, 1.0 - inter / np.maximum(union, 1.0), 0.0)

    return distance


def ild_at_k(lists, catalogue: Catalogue, k: int, distance: ItemDistance | None = None,
             chunk: int = 8192) -> np.ndarray:
    """Intra-list diversity (docs/method.md (4.8)): mean over pairs i<j of valid top-k items of
    d(i, j) (Ziegler et al. 2005). NaN for rows with fewer than 2 valid items.

    ``distance`` is the ``diversity`` reward's item distance (:func:`blade.rewards.item_distance`):
    1 − Jaccard of genre sets where the dataset has genres, else 1 − cosine of train co-occurrence
    embeddings. Default: the genre distance (a catalogue without genres must pass one)."""
    if distance is None:
        if catalogue.genres is None:
            raise DataError("ILD without genres needs the diversity reward's item distance: pass "
                            "distance=blade.rewards.item_distance(catalogue, train)")
        distance = genre_distance(catalogue)
    idx = _valid_index(_topk(lists, k), catalogue)
    ok = idx >= 0
    pair = np.triu(np.ones((k, k), dtype=bool), 1)[None] & ok[:, :, None] & ok[:, None, :]  # (U, k, k)
    n_pairs = pair.sum((1, 2))
    out = np.full(idx.shape[0], np.nan)
    for s in range(0, idx.shape[0], chunk):  # chunks bound the (U, k, k) memory, not per user
        d = distance(np.maximum(idx[s : s + chunk], 0))
        with np.errstate(invalid="ignore", divide="ignore"):
            out[s : s + chunk] = np.where(n_pairs[s : s + chunk] > 0,
                                          (d * pair[s : s + chunk]).sum((1, 2)) / n_pairs[s : s + chunk], np.nan)
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


def evaluate_lists(lists, targets, catalogue: Catalogue, ks, distance: ItemDistance | None = None):
    """Per-user metric table (U rows) and a summary dict (means + catalogue-level numbers).

    Names: ``mgu_{pop,genre}@k`` / ``dgu_…@k`` in the summary are the IFairLRS pooled numbers
    (:func:`mgu_dgu`); the per-user table holds ``mgu_…_user@k`` (:func:`mgu_dgu_user`), whose
    means the summary carries under the same ``_user`` names. Genre columns appear only when the
    catalogue has genres. ``distance``: the item distance of ``ild@k`` (see :func:`ild_at_k`).
    The summary adds ``gini@k``, ``coverage@k`` and ``entropy@k``."""
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
            cols[f"mgu_{by}_user@{k}"], cols[f"dgu_{by}_user@{k}"] = mgu_dgu_user(lists, catalogue, k, by)
            extra[f"mgu_{by}@{k}"], extra[f"dgu_{by}@{k}"] = mgu_dgu(lists, catalogue, k, by)
        cols[f"tail_share@{k}"] = tail_share_at_k(lists, catalogue, k)
        cols[f"ild@{k}"] = ild_at_k(lists, catalogue, k, distance)
        extra[f"gini@{k}"] = gini_at_k(lists, catalogue, k)
        extra[f"coverage@{k}"] = coverage_at_k(lists, catalogue, k)
        extra[f"entropy@{k}"] = entropy_at_k(lists, catalogue, k)
    cols["invalid_rate"] = invalid_rate(lists, catalogue)
    per_user = pd.DataFrame(cols)
    return per_user, {**aggregate(per_user), **extra}
