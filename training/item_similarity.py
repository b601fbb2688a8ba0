"""Item-to-item weights learned in closed form by EASE^R from train events, kept sparse, for the ranker.

The ranker's `ease_score` feature is the sum of the weights from a user's past items to a candidate. EASE^R is
the strongest baseline for items new to a user on Online Retail; as a feature, the ranker weighs its item-to-item
view against the two-tower's instead of the two competing. Each item keeps only its `neighbours` largest
weights (by magnitude), so the matrix is small enough to ship with the artefact and serving needs no events.
"""

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from core.positions import Positions
from training.baselines import EASE


@dataclass
class ItemSimilarity:
    items: pd.Index  # item ids as strings: the rows and columns of weights
    weights: sp.csr_matrix  # float32 items x items; row j holds j's strongest weights to other items
    _positions: Positions | None = field(default=None, init=False, repr=False, compare=False)  # id -> row

    @classmethod
    def fit(cls, events: pd.DataFrame, lam: float = 200.0, neighbours: int = 100, max_items: int = 15000,
            block: int = 1024) -> "ItemSimilarity":  # fmt: skip
        """EASE^R on the events' binary user x item matrix (the `max_items` most popular items where both users
        and items outnumber it), pruned row by row in blocks so the dense matrix never exists whole."""
        ease = EASE(lam=lam, max_items=max_items).fit(events, None, None)
        n = len(ease.columns)
        keep = min(neighbours, n)
        rows, cols, values = [], [], []
        for start in range(0, n, block):
            ids = np.arange(start, min(start + block, n))
            dense = ease.weight_rows(ids).astype(np.float32)
            top = np.argpartition(-np.abs(dense), keep - 1, axis=1)[:, :keep]
            rows.append(np.repeat(ids, keep))
            cols.append(top.ravel())
            values.append(np.take_along_axis(dense, top, axis=1).ravel())
        weights = sp.csr_matrix((np.concatenate(values), (np.concatenate(rows), np.concatenate(cols))),
                                shape=(n, n), dtype=np.float32)  # fmt: skip
        weights.eliminate_zeros()
        return cls(ease.data.items[ease.columns], weights)

    def scores(self, past, pairs) -> np.ndarray:
        """For each (user, item_id) row of pairs, the sum of weights from the distinct items of that user in past
        (columns user, item_id: frames or dicts of arrays; user is any integer key); 0 where either side is
        unknown to the model."""
        return self.column_scores(past["user"], self.columns(past["item_id"]), pairs["user"],
                                  self.columns(pairs["item_id"]))  # fmt: skip

    def column_scores(self, past_users, history_cols: np.ndarray, pair_users, cols: np.ndarray) -> np.ndarray:
        """scores with the items given as their columns (`columns`): callers that map ids once reuse them."""
        pair_users, past_users = np.asarray(pair_users), np.asarray(past_users)
        if not len(pair_users):
            return np.zeros(0, np.float32)
        if (pair_users == pair_users[0]).all():  # one user (a serving request): the sum of their rows, no matrices
            mine = np.unique(history_cols[(history_cols >= 0) & (past_users == pair_users[0])])
            starts = self.weights.indptr[mine]
            sizes = self.weights.indptr[mine + 1] - starts  # not np.diff of every row's bounds
            at = np.repeat(starts - np.cumsum(sizes) + sizes, sizes) + np.arange(sizes.sum())  # their rows' entries
            reached = np.bincount(self.weights.indices[at], self.weights.data[at], minlength=len(self.items))
            return np.where(cols >= 0, reached[cols], 0.0).astype(np.float32)
        users, pair_rows = np.unique(pair_users, return_inverse=True)
        history_rows = np.minimum(np.searchsorted(users, past_users), len(users) - 1)
        known = (history_cols >= 0) & (users[history_rows] == past_users)  # users of past that pairs has
        # A user's repeated item counts once: the csr constructor would sum duplicates, so clip them to 1.
        history = sp.csr_matrix((np.ones(int(known.sum()), np.float32), (history_rows[known], history_cols[known])),
                                shape=(len(users), len(self.items)))  # fmt: skip
        history.data[:] = 1.0
        reached = (history @ self.weights).tocsr()
        out = np.zeros(len(pair_users), np.float32)
        found = cols >= 0
        if found.any():
            out[found] = np.asarray(reached[pair_rows[found], cols[found]]).ravel()
        return out

    def columns(self, item_ids) -> np.ndarray:
        """Each id's row and column of weights, -1 for an id the model does not know."""
        ids = np.asarray(item_ids, dtype=object)
        if len(ids) and not isinstance(ids[0], str):  # ids are text in the event contract; tests pass numbers
            ids = ids.astype(str)
        if self._positions is None:
            self._positions = Positions(self.items)
        return self._positions.of(ids)

    def save(self, path: Path) -> None:
        w = self.weights
        np.savez_compressed(path, items=self.items.to_numpy(str), indptr=w.indptr, indices=w.indices, data=w.data)

    @classmethod
    def load(cls, path: Path) -> "ItemSimilarity":
        with np.load(path, allow_pickle=False) as saved:
            n = len(saved["items"])
            weights = sp.csr_matrix((saved["data"], saved["indices"], saved["indptr"]), shape=(n, n))
            return cls(pd.Index(saved["items"].astype(object)), weights)
