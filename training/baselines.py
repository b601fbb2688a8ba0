"""Baseline recommenders behind one interface, so the evaluation harness treats them and the neural models alike:
popularity, repurchase, item-kNN, implicit ALS, implicit BPR and EASE^R.

Every model is fitted on a train frame (user_id, item_id, event_type, event_timestamp) and scores any user x item
grid; ids it never saw in train score -inf. Each class carries a small hyperparameter `grid` for tuning.
"""

from dataclasses import dataclass
from itertools import product
from typing import ClassVar, Protocol, runtime_checkable

import numpy as np
import pandas as pd
import scipy.sparse as sp
from implicit.cpu.als import AlternatingLeastSquares
from implicit.cpu.bpr import BayesianPersonalizedRanking
from threadpoolctl import threadpool_limits

from core.contract import EVENT_WEIGHTS

WEIGHTINGS = ("binary", "count", "event")


@runtime_checkable
class Recommender(Protocol):
    """What the harness needs from a model. A class may also carry `grid: dict[str, list]`, the hyperparameter
    values tune() tries (its constructor takes them as keyword arguments)."""

    name: str

    def fit(self, train: pd.DataFrame, catalog: pd.DataFrame, as_of: pd.Timestamp | None) -> "Recommender":
        """Learn from train events only; as_of is the split's cutoff (None: the end of train)."""
        ...

    def score(self, users: np.ndarray, items: np.ndarray, target: str) -> np.ndarray:
        """float32 [len(users), len(items)], higher = better; -inf for items it cannot score (ids never seen in
        train). `target` ('new', 'all', 'buy', 'default') lets a model pick a head."""
        ...


def grid_points(grid: dict[str, list]) -> list[dict]:
    """Every combination of a hyperparameter grid, in a fixed order."""
    keys = list(grid)
    return [dict(zip(keys, values)) for values in product(*(grid[key] for key in keys))]


@dataclass
class Interactions:
    """The train user x item matrix under a weighting: binary (1 per pair), count (1 + log of the pair's events,
    damped so one wholesaler's hundred repeats do not swamp a pair) or event (the pair's strongest event type)."""

    users: pd.Index
    items: pd.Index
    matrix: sp.csr_matrix  # float32, users x items

    @classmethod
    def build(cls, train: pd.DataFrame, weighting: str = "binary") -> "Interactions":
        if weighting not in WEIGHTINGS:
            raise ValueError(f"unknown weighting {weighting!r}; choose one of {', '.join(WEIGHTINGS)}")
        users, user_codes = _codes(train["user_id"])
        items, item_codes = _codes(train["item_id"])
        pairs = pd.DataFrame({"u": user_codes, "i": item_codes})
        if weighting == "event":
            pairs["w"] = train["event_type"].map(EVENT_WEIGHTS).fillna(1.0).to_numpy()
            values = pairs.groupby(["u", "i"])["w"].max()
        else:
            values = pairs.groupby(["u", "i"]).size().astype(float)
            values = 1.0 + np.log(values) if weighting == "count" else values.clip(upper=1.0)
        rows, cols = values.index.get_level_values(0), values.index.get_level_values(1)
        matrix = sp.csr_matrix(
            (values.to_numpy(np.float32), (rows, cols)), shape=(len(users), len(items)), dtype=np.float32
        )
        return cls(users, items, matrix)

    def user_rows(self, users: np.ndarray) -> np.ndarray:
        return self.users.get_indexer(pd.Index(users).astype(str))

    def item_columns(self, items: np.ndarray) -> np.ndarray:
        return self.items.get_indexer(pd.Index(items).astype(str))

    def history(self, rows: np.ndarray) -> sp.csr_matrix:
        """The matrix rows of these users; an unknown user (row -1) gets an empty history."""
        known = sp.diags((rows >= 0).astype(np.float32))
        return (known @ self.matrix[np.maximum(rows, 0)]).tocsr()


def _codes(values: pd.Series) -> tuple[pd.Index, np.ndarray]:
    index = pd.Index(np.sort(values.astype(str).unique()))
    return index, index.get_indexer(values.astype(str))


def _to_requested(internal: np.ndarray, columns: np.ndarray) -> np.ndarray:
    """Scores over the model's own item columns -> scores over the requested items (-inf where unknown)."""
    out = np.full((internal.shape[0], len(columns)), -np.inf, dtype=np.float32)
    known = columns >= 0
    out[:, known] = internal[:, columns[known]]
    return out


class MatrixRecommender:
    """A model over the train interaction matrix: fit builds it, score maps users and items onto it."""

    name = "matrix"
    grid: ClassVar[dict[str, list]] = {}
    weighting = "binary"

    def fit(self, train: pd.DataFrame, catalog: pd.DataFrame, as_of: pd.Timestamp | None) -> "MatrixRecommender":
        self.data = Interactions.build(train, self.weighting)
        self._fit(self.data.matrix)
        return self

    def score(self, users: np.ndarray, items: np.ndarray, target: str) -> np.ndarray:
        internal = self._score(self.data.user_rows(users))
        return _to_requested(internal, self.data.item_columns(items))

    def _fit(self, matrix: sp.csr_matrix) -> None:
        raise NotImplementedError

    def _score(self, rows: np.ndarray) -> np.ndarray:
        """Scores [len(rows), n_items] over the model's own items; row -1 is a user unseen in train."""
        raise NotImplementedError


class Popularity:
    """Items by their number of train events, optionally counted over the last `window_days` before as_of only;
    ties (and items outside the window) are broken by all-time counts."""

    name = "popularity"
    grid: ClassVar[dict[str, list]] = {"window_days": [None, 1, 7, 30]}

    def __init__(self, window_days: float | None = None):
        self.window_days = window_days

    def fit(self, train: pd.DataFrame, catalog: pd.DataFrame, as_of: pd.Timestamp | None) -> "Popularity":
        total = train["item_id"].value_counts().astype(float)
        counts = total / (total.max() + 1)  # < 1: only breaks ties among window counts
        if self.window_days is not None:
            end = as_of if as_of is not None else train["event_timestamp"].max()
            recent = train[train["event_timestamp"] >= end - pd.Timedelta(days=self.window_days)]
            counts = counts + recent["item_id"].value_counts().reindex(total.index, fill_value=0)
        self.scores = counts.sort_index()
        return self

    def score(self, users: np.ndarray, items: np.ndarray, target: str) -> np.ndarray:
        row = self.scores.reindex(pd.Index(items).astype(str)).fillna(-np.inf).to_numpy(np.float32)
        return np.repeat(row[None, :], len(users), axis=0)


class Repurchase:
    """The user's own past items by interaction frequency (ties by recency), then popularity.

    Frequency counts events (`weighting="count"`) or sums their event-type weights (`"event"`: a purchase counts
    more than a view). Own items score 1 + frequency + recency in [0, 1), always above the popularity fallback,
    which is scaled into [0, 1).
    """

    name = "repurchase"
    grid: ClassVar[dict[str, list]] = {"weighting": ["count", "event"], "window_days": [None, 7]}

    def __init__(self, weighting: str = "count", window_days: float | None = None):
        self.weighting = weighting
        self.window_days = window_days

    def fit(self, train: pd.DataFrame, catalog: pd.DataFrame, as_of: pd.Timestamp | None) -> "Repurchase":
        self.users, user_codes = _codes(train["user_id"])
        self.items, item_codes = _codes(train["item_id"])
        if self.weighting == "event":
            weight = train["event_type"].map(EVENT_WEIGHTS).fillna(1.0).to_numpy()
        else:
            weight = np.ones(len(train))
        seconds = train["event_timestamp"].astype("int64").to_numpy() // 10**9
        pairs = pd.DataFrame({"u": user_codes, "i": item_codes, "w": weight, "t": seconds})
        grouped = pairs.groupby(["u", "i"]).agg(frequency=("w", "sum"), last=("t", "max"))
        span = seconds.max() - seconds.min() + 1
        own = 1.0 + grouped["frequency"] + (grouped["last"] - seconds.min()) / span
        rows, cols = grouped.index.get_level_values(0), grouped.index.get_level_values(1)
        self.own = sp.csr_matrix((own.to_numpy(np.float64), (rows, cols)), shape=(len(self.users), len(self.items)))
        popularity = Popularity(self.window_days).fit(train, catalog, as_of).scores.reindex(self.items)
        self.popularity = (popularity / (popularity.max() + 1)).to_numpy(np.float64)
        return self

    def score(self, users: np.ndarray, items: np.ndarray, target: str) -> np.ndarray:
        rows = self.users.get_indexer(pd.Index(users).astype(str))
        internal = np.repeat(self.popularity[None, :], len(rows), axis=0)
        for position, row in enumerate(rows):
            if row >= 0:
                start, end = self.own.indptr[row], self.own.indptr[row + 1]
                internal[position, self.own.indices[start:end]] = self.own.data[start:end]
        return _to_requested(internal.astype(np.float32), self.items.get_indexer(pd.Index(items).astype(str)))


class ItemKNN(MatrixRecommender):
    """Item-item cosine similarity over the user-item matrix, sim(i, j) = x_i.x_j / (|x_i| |x_j| + shrink), each
    item keeping its `neighbours` most similar items; a user's score for j sums sim(i, j) over their items i."""

    name = "item_knn"
    grid: ClassVar[dict[str, list]] = {"neighbours": [50, 200], "shrink": [0.0, 10.0], "weighting": ["binary", "event"]}

    def __init__(self, neighbours: int = 100, shrink: float = 0.0, weighting: str = "binary"):
        self.neighbours = neighbours
        self.shrink = shrink
        self.weighting = weighting

    def _fit(self, matrix: sp.csr_matrix) -> None:
        gram = (matrix.T @ matrix).tocoo()
        norms = np.sqrt(np.asarray(matrix.power(2).sum(axis=0))).ravel()
        similarity = gram.data / (norms[gram.row] * norms[gram.col] + self.shrink)
        off_diagonal = gram.row != gram.col  # an item is not its own neighbour
        row, col, similarity = gram.row[off_diagonal], gram.col[off_diagonal], similarity[off_diagonal]
        # Keep each row's top neighbours: sort by (row, -similarity), rank within row.
        order = np.lexsort((-similarity, row))
        row, col, similarity = row[order], col[order], similarity[order]
        starts = np.searchsorted(row, row, side="left")
        keep = (np.arange(len(row)) - starts) < self.neighbours
        n_items = matrix.shape[1]
        self.similarity = sp.csr_matrix(
            (similarity[keep].astype(np.float32), (row[keep], col[keep])), shape=(n_items, n_items)
        )

    def _score(self, rows: np.ndarray) -> np.ndarray:
        return (self.data.history(rows) @ self.similarity).toarray()


class EASE(MatrixRecommender):
    """EASE^R (Steck 2019): B = I - P / diag(P) with P = (X^T X + lam I)^-1, diag(B) = 0; score = X_u B.

    The inverse costs min(users, items)^3: with fewer users than items (Taobao: 815 users, 50k items) the same
    P comes from the user side by Woodbury, P = (I - X^T (X X^T + lam I)^-1 X) / lam, exact and cheap. Only when
    both sides exceed `max_items` is EASE restricted to the `max_items` most popular items (by train users), the
    other items then scoring -inf.
    """

    name = "ease"
    grid: ClassVar[dict[str, list]] = {"lam": [50.0, 200.0, 500.0], "weighting": ["binary", "event"]}

    def __init__(self, lam: float = 200.0, max_items: int = 15000, weighting: str = "binary"):
        self.lam = lam
        self.max_items = max_items
        self.weighting = weighting

    def _fit(self, matrix: sp.csr_matrix) -> None:
        n_users, n_items = matrix.shape
        self.columns = np.arange(n_items)
        if min(n_users, n_items) > self.max_items:
            popular = np.argsort(-np.asarray((matrix > 0).sum(axis=0)).ravel(), kind="stable")
            self.columns = np.sort(popular[: self.max_items])
            matrix = matrix[:, self.columns].tocsr()
        self.n_items = n_items
        if matrix.shape[1] <= n_users or min(n_users, n_items) > self.max_items:
            self.mode = "items"
            inverse = _regularised_inverse((matrix.T @ matrix).toarray(), self.lam)
            self.weights = -inverse / np.diag(inverse)[None, :]
            np.fill_diagonal(self.weights, 0.0)
        else:
            self.mode = "users"
            self.matrix = matrix
            inverse = _regularised_inverse((matrix @ matrix.T).toarray(), self.lam)  # (X X^T + lam I)^-1
            self.projected = np.asarray(matrix.T @ inverse).T  # M X, users x items
            quadratic = np.asarray(matrix.multiply(self.projected).sum(axis=0)).ravel()  # x_j^T M x_j
            self.p_diagonal = (1.0 - quadratic) / self.lam

    def weight_rows(self, rows: np.ndarray) -> np.ndarray:
        """Dense rows of B (over self.columns, positions into them): B[j, i] = -P[j, i] / P[i, i], B[i, i] = 0."""
        if self.mode == "items":
            return self.weights[rows]
        # P is symmetric, so its rows are columns: P[rows] = (I[rows] - X[:, rows]^T M X) / lam.
        p_rows = -np.asarray(self.matrix[:, rows].T @ self.projected) / self.lam
        p_rows[np.arange(len(rows)), rows] += 1.0 / self.lam
        weights = -p_rows / self.p_diagonal[None, :]
        weights[np.arange(len(rows)), rows] = 0.0
        return weights

    def _score(self, rows: np.ndarray) -> np.ndarray:
        history = self.data.history(rows)[:, self.columns]
        if self.mode == "items":
            scores = np.asarray(history @ self.weights)
        else:  # X_u B = X_u - (X_u P) / diag(P), with X_u P = (X_u - (X_u X^T) M X) / lam
            kernel = (history @ self.matrix.T).toarray()
            p_rows = (history.toarray() - kernel @ self.projected) / self.lam
            scores = history.toarray() - p_rows / self.p_diagonal[None, :]
        if len(self.columns) == self.n_items:
            return scores
        full = np.full((len(rows), self.n_items), -np.inf, dtype=np.float32)
        full[:, self.columns] = scores
        return full


def _regularised_inverse(gram: np.ndarray, lam: float) -> np.ndarray:
    """(gram + lam I)^-1. A plain LU inverse: OpenBLAS's Cholesky inverse (potri) measured slower here. float32
    above 8k rows, for memory."""
    gram = gram.astype(np.float64 if len(gram) <= 8000 else np.float32, copy=False)
    gram[np.diag_indices_from(gram)] += lam
    return np.linalg.inv(gram)


class _ImplicitFactors(MatrixRecommender):
    """Shared by ALS and BPR: fit an implicit CPU model, score = user factors . item factors."""

    num_threads = 0
    seed = 42

    def _fit(self, matrix: sp.csr_matrix) -> None:
        # implicit runs its own threads; OpenBLAS threads on top of them only contend (implicit checks, and warns,
        # when the model is built).
        with threadpool_limits(1, "blas"):
            model = self._model()
            model.fit(matrix, show_progress=False)
        self.user_factors = np.asarray(model.user_factors)
        self.item_factors = np.asarray(model.item_factors)

    def _score(self, rows: np.ndarray) -> np.ndarray:
        users = self.user_factors[np.maximum(rows, 0)] * (rows >= 0)[:, None]
        return users @ self.item_factors.T

    def _model(self):
        raise NotImplementedError


class ALS(_ImplicitFactors):
    """Implicit-feedback ALS (Hu, Koren & Volinsky 2008) via implicit.cpu.als; confidence = 1 + alpha * weight."""

    name = "als"
    grid: ClassVar[dict[str, list]] = {
        "factors": [32, 128],
        "regularization": [10.0, 40.0],
        "alpha": [5.0, 50.0],
        "weighting": ["binary", "event"],
    }

    def __init__(self, factors: int = 64, regularization: float = 0.05, alpha: float = 1.0, iterations: int = 15,
                 weighting: str = "binary", num_threads: int = 0, seed: int = 42):  # fmt: skip
        self.factors, self.regularization, self.alpha, self.iterations = factors, regularization, alpha, iterations
        self.weighting, self.num_threads, self.seed = weighting, num_threads, seed

    def _model(self):
        return AlternatingLeastSquares(
            factors=self.factors, regularization=self.regularization, alpha=self.alpha, iterations=self.iterations,
            num_threads=self.num_threads, random_state=self.seed,
        )  # fmt: skip


class BPR(_ImplicitFactors):
    """Bayesian personalised ranking (Rendle et al. 2009) via implicit.cpu.bpr; uses the matrix's non-zeros only."""

    name = "bpr"
    grid: ClassVar[dict[str, list]] = {
        "factors": [64],
        "learning_rate": [0.01, 0.05],
        "regularization": [0.01],
        "iterations": [50, 100],
    }

    def __init__(self, factors: int = 64, learning_rate: float = 0.01, regularization: float = 0.01,
                 iterations: int = 100, num_threads: int = 0, seed: int = 42):  # fmt: skip
        self.factors, self.learning_rate, self.regularization = factors, learning_rate, regularization
        self.iterations, self.num_threads, self.seed = iterations, num_threads, seed

    def _model(self):
        return BayesianPersonalizedRanking(
            factors=self.factors, learning_rate=self.learning_rate, regularization=self.regularization,
            iterations=self.iterations, num_threads=self.num_threads, random_state=self.seed,
        )  # fmt: skip
