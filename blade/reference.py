"""Classic reference recommenders: most-popular and item-to-item co-occurrence.

Both are fitted on the train split only and return top-K lists of item ids, the same format every
other method's recommendations take. They are the sanity rows of the results tables and, for the
co-occurrence model, the default ``relevance`` reward model.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.sparse as sp

from blade.errors import DataError
from blade.metrics import ItemIndex


def most_popular(train: pd.DataFrame, item_ids: np.ndarray, n_contexts: int, k: int) -> np.ndarray:
    """The same K most frequent train targets for every context: (n_contexts, K)."""
    item_ids = ItemIndex(item_ids).ids
    counts = train["target"].value_counts().reindex(item_ids, fill_value=0).to_numpy()
    top = item_ids[np.lexsort((item_ids, -counts))[:k]]  # ties broken by item id
    return np.tile(top, (n_contexts, 1))


class CoOccurrence:
    """Scores item j for a history by Σ_i decay^age(i) · C[i, j], where C[i, j] counts the train
    rows whose last history item is i and whose target is j (in BIGRec-style splits every prefix
    of a user's sequence is a train row, so this counts each consecutive pair once). Ties, and
    histories of unseen items, fall back to popularity, scaled below one count.
    """

    def __init__(self, train: pd.DataFrame, item_ids: np.ndarray, decay: float = 0.7):
        self.index = ItemIndex(item_ids)
        self.item_ids = self.index.ids
        self.decay = decay
        n = len(self.item_ids)
        src_ix = self.index.index_of(np.fromiter((h[-1] for h in train["history"]), np.int64, len(train)))
        dst_ix = self.index.index_of(train["target"].to_numpy(dtype=np.int64))
        if (src_ix < 0).any() or (dst_ix < 0).any():  # a prepared train split never has them
            raise DataError("train split names item ids that are not in the catalogue; re-run `blade prepare`")
        self.counts = sp.csr_matrix((np.ones(len(src_ix)), (src_ix, dst_ix)), shape=(n, n))
        pop = train["target"].value_counts().reindex(self.item_ids, fill_value=0).to_numpy(float)
        self.prior = 1e-3 * pop / max(pop.max(), 1.0)

    def scores(self, histories: list[list[int]]) -> np.ndarray:
        """(U, n_items) scores."""
        lens = np.fromiter(map(len, histories), np.int64, len(histories))  # (U,)
        flat = np.fromiter((i for h in histories for i in h), np.int64, int(lens.sum()))
        rows = np.repeat(np.arange(len(histories)), lens)
        age = np.repeat(np.cumsum(lens), lens) - np.arange(len(flat)) - 1  # 0 = most recent item
        cols = self.index.index_of(flat)
        known = cols >= 0  # unseen items carry no co-occurrence
        weights = sp.csr_matrix((self.decay ** age[known], (rows[known], cols[known])),
                                shape=(len(histories), len(self.item_ids)))
        return np.asarray((weights @ self.counts).todense()) + self.prior

    def recommend(self, histories: list[list[int]], k: int, batch: int = 4096) -> np.ndarray:
        out = np.empty((len(histories), k), dtype=np.int64)
        for start in range(0, len(histories), batch):
            s = self.scores(histories[start:start + batch])
            top = np.argpartition(-s, kth=min(k, s.shape[1] - 1), axis=1)[:, :k]
            order = np.take_along_axis(s, top, axis=1).argsort(axis=1, kind="stable")[:, ::-1]
            out[start:start + batch] = self.item_ids[np.take_along_axis(top, order, axis=1)]
        return out
