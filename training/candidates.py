"""The ranker's candidates and their features, in numpy: one implementation for training, evaluation and serving.

Per user: the n best items by retrieval score plus every item of the user's own history; per candidate the 23
RANKER_FEATURES. Training calls it for thousands of users at once (label windows, evaluation), serving for one user
per request, so it works on flat arrays keyed by (user, item) codes: no per-row Python, no pandas groupby (at one
user a groupby costs more than the arithmetic, and at one user building a DataFrame costs more than the features).
The features read the user's ranker_v1 row (their history and activity) and the candidates' item rows through
`retrieval.columns`, which is Feast's point-in-time join offline and the online store in serving: the same numbers
either way. The work comes in two parts: `shortlist`, what the users' rows and the models decide (the candidates,
their scores and ranks, similarities, the users' own records), and `Shortlist.features`, what the clock decides (the
ages, and the items' rows as fresh or stale at that moment), so serving can keep a returning user's shortlist.
"""

from collections.abc import Mapping
from dataclasses import dataclass, fields

import numpy as np
import pandas as pd

from core.contract import EVENT_WEIGHTS
from core.positions import positions_of
from features.build import HISTORY_LENGTH
from training.examples import RANKER_SERVICE, numbers, zero_blanks

RANKER_FEATURES = (
    "retrieval_score", "log_retrieval_rank", "in_history", "history_views", "history_carts", "history_purchases",
    "log_age_since_user_item", "log_history_position", "user_views_7d", "user_add_to_carts_7d",
    "user_purchases_30d", "log_user_last_event_age", "user_distinct_items_30d", "item_views_7d",
    "item_add_to_carts_7d", "item_purchases_30d", "item_conversion_rate_30d", "log_item_first_seen_age",
    "log_price", "history_max_similarity", "history_mean_similarity", "ease_score", "history_intent",
)  # fmt: skip
ITEM_NUMBERS = ("item_popularity__views_7d", "item_popularity__add_to_carts_7d", "item_popularity__purchases_30d",
                "item_popularity__conversion_rate_30d", "item_popularity__first_seen_age_s", "item_catalog__price")
RECENCY_CAP_S = 3.2e7  # about a year: 'never' reads as older than anything seen
VIEW, CART, PURCHASE = 0, 1, 2  # user_history's type codes (core.contract.EVENT_TYPES order)


@dataclass
class Past:
    """Every user's history events, flat: position of the user in the request, item id, type, time, and the
    event's position in the user's history (0 = newest)."""

    user: np.ndarray  # int64
    item_id: np.ndarray  # object
    type: np.ndarray  # int64
    time: np.ndarray  # int64 unix seconds
    position: np.ndarray  # int64

    @classmethod
    def of(cls, history: Mapping) -> "Past":
        """From the users' ranker_v1 columns (a joined frame, or the online store's arrays)."""
        lists = [[_as_array(v, dtype) for v in np.asarray(history[f"user_history__history_{name}"], dtype=object)]
                 for name, dtype in (("items", object), ("types", np.int64), ("times", np.int64))]  # fmt: skip
        sizes = np.fromiter((len(v) for v in lists[0]), np.int64, count=len(lists[0]))
        flat = [np.concatenate(column) if sizes.sum() else np.zeros(0, dtype) for column, dtype in
                zip(lists, (object, np.int64, np.int64), strict=True)]  # fmt: skip
        starts = np.repeat(np.cumsum(sizes) - sizes, sizes)
        return cls(np.repeat(np.arange(len(sizes)), sizes), flat[0].astype(object), flat[1].astype(np.int64),
                   flat[2].astype(np.int64), np.arange(sizes.sum()) - starts)  # fmt: skip


@dataclass
class Candidates:
    """One row per (user, item) candidate, as flat arrays."""

    user: np.ndarray  # int64 position into the users asked for
    item: np.ndarray  # int64 position into the items asked for
    item_id: np.ndarray  # object
    retrieval_score: np.ndarray
    retrieval_rank: np.ndarray  # int64, 0 = best
    history_max_similarity: np.ndarray
    history_mean_similarity: np.ndarray
    ease_score: np.ndarray

    def __len__(self) -> int:
        return len(self.user)

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame({f.name: getattr(self, f.name) for f in fields(self)})


def candidate_features(retrieval, users, items, vectors: np.ndarray, scores: np.ndarray, n: int,
                       ranks: np.ndarray | None = None) -> tuple[Candidates, np.ndarray]:  # fmt: skip
    """(candidates, their RANKER_FEATURES [rows, 23] float32): each user's n best items by score, then their own
    past items (those in items) in the order of their history. vectors: the items' two-tower vectors (the ones
    scores came from). ranks: each item's rank among every item, where items is only a part of them (serving
    scores a few hundred of the catalog); by default the ranks within items."""
    candidates, short = shortlist(retrieval, users, items, vectors, scores, n, ranks)
    return candidates, short.features(retrieval)


@dataclass
class Shortlist:
    """The candidates' features as far as the users' rows and the models decide them; `features` adds what the
    clock decides (the ages, and the items' rows, blanked where not fresh at the retrieval's moment). Serving
    keeps a returning user's shortlist, so a request that reads the same row only computes the clock's part."""

    known: np.ndarray  # float32 [candidates, RANKER_FEATURES], the clock's columns left at 0
    found: np.ndarray  # bool: the candidate is in its user's history
    last: np.ndarray  # float64: the user's last event on the item, unix seconds (0 where not found)
    last_event_age: np.ndarray  # float64: the user's last_event_age_s as their row holds it (NaN where blank)
    items: np.ndarray  # object: the candidates' distinct item ids
    item_rows: np.ndarray  # int64: each candidate's position in items

    def item_numbers(self, retrieval) -> dict[str, np.ndarray]:
        """What `features` reads of the candidates' items: ITEM_NUMBERS, a row per distinct item, as the
        retrieval's moment judges their rows (blanks 0)."""
        return retrieval.number_columns(RANKER_SERVICE, "item_id", self.items, ITEM_NUMBERS)

    def features(self, retrieval, item_numbers: dict[str, np.ndarray] | None = None) -> np.ndarray:
        """RANKER_FEATURES at the retrieval's moment: ages count from its scored_at (<= as_of, the snapshot's
        midnight, whose rows count their ages from as_of); the items' rows are read as of it. item_numbers:
        self.item_numbers(retrieval), given by a caller that keeps them (serving, while no row's status changes)."""
        as_of, now = retrieval.as_of, retrieval.scored_at
        ahead_s = (as_of - now).total_seconds()  # the snapshot's ages count from as_of: take back the time after now
        since = np.where(self.found, now.value // 10**9 - self.last, RECENCY_CAP_S)
        table = self.item_numbers(retrieval) if item_numbers is None else item_numbers

        def item(column):
            return table[column][self.item_rows]

        columns = {
            "log_age_since_user_item": np.log1p(np.clip(since, 0, RECENCY_CAP_S)),
            "log_user_last_event_age": np.log1p(np.maximum(zero_blanks(self.last_event_age) - ahead_s, 0)),
            "item_views_7d": np.log1p(item("item_popularity__views_7d")),
            "item_add_to_carts_7d": np.log1p(item("item_popularity__add_to_carts_7d")),
            "item_purchases_30d": np.log1p(item("item_popularity__purchases_30d")),
            "item_conversion_rate_30d": item("item_popularity__conversion_rate_30d"),
            "log_item_first_seen_age": np.log1p(np.maximum(item("item_popularity__first_seen_age_s") - ahead_s, 0)),
            "log_price": np.log1p(np.maximum(item("item_catalog__price"), 0)),
        }
        features = self.known.copy()
        for name, values in columns.items():
            features[:, RANKER_FEATURES.index(name)] = values
        return features


def shortlist(retrieval, users, items, vectors: np.ndarray, scores: np.ndarray, n: int,
              ranks: np.ndarray | None = None) -> tuple[Candidates, Shortlist]:  # fmt: skip
    """candidate_features' candidates, and their Shortlist: the work that reads the users' rows and the models
    but not the clock. Arguments as candidate_features'."""
    history = retrieval.columns(RANKER_SERVICE, "user_id", users)
    past = Past.of(history)
    n_users, n_items = scores.shape
    n = min(n, n_items)
    top = np.argpartition(-scores, n - 1, axis=1)[:, :n]
    # Every id named here (the items, the past events' items) hashed once, to integer codes: what follows
    # matches codes, where looking the ids up again in each step cost a serving request ~0.2 ms.
    item_ids = np.asarray(items, dtype=object)
    codes, named = pd.factorize(np.concatenate([item_ids, past.item_id]))
    item_code, past_code = codes[:n_items], codes[n_items:]
    item_of_code = np.full(len(named), -1)
    item_of_code[item_code] = np.arange(n_items)
    own_item = item_of_code[past_code]  # each past event's item among items (-1: not there)
    keys = np.concatenate([np.repeat(np.arange(n_users), n) * n_items + top.ravel(),
                           (past.user * n_items + own_item)[own_item >= 0]])  # fmt: skip
    keys = pd.unique(keys)  # first occurrence kept: the top items, then the past items not among them
    user, item = keys // n_items, keys % n_items
    if ranks is None:
        ranks = np.empty(scores.shape, np.int64)
        np.put_along_axis(ranks, np.argsort(-scores, axis=1), np.arange(n_items)[None, :], axis=1)
    highest, mean = _history_similarity(retrieval, own_item, vectors, past, user, item)
    ease_column = retrieval.similarity.columns(named)  # per code
    ease = retrieval.similarity.column_scores(past.user, ease_column[past_code], user, ease_column[item_code[item]])
    candidates = Candidates(user, item, item_ids[item], scores[user, item], ranks[user, item], highest, mean, ease)
    own = _own_record(past, past_code, user, item_code[item], len(named))
    return candidates, _shortlist(history, candidates, own, item_code[item], named)


def _history_similarity(retrieval, past_rows: np.ndarray, vectors: np.ndarray, past: Past, user, item):
    """(max, mean) cosine between each candidate's item vector and those of its user's past events (0 without a
    past): the item-to-item view of the same model, which the user vector's single summary can blur. past_rows:
    each past event's row of vectors, -1 for items outside them, which are embedded here."""
    missing = pd.unique(past.item_id[past_rows < 0]) if (past_rows < 0).any() else ()
    if len(missing):
        past_rows = past_rows.copy()
        past_rows[past_rows < 0] = len(vectors) + positions_of(missing, past.item_id[past_rows < 0])
        vectors = np.concatenate([vectors, retrieval.items(missing)])
    unit = vectors / (np.linalg.norm(vectors, axis=1, keepdims=True) + 1e-9)
    highest, mean = np.zeros(len(user)), np.zeros(len(user))
    for rows, theirs in _by_user(user, past.user, past_rows):
        # Each distinct past item once, weighted by its events: histories repeat items (viewed, carted, bought,
        # bought again), and the candidates x events product was the largest part of this function per request.
        distinct, events = np.unique(theirs, return_counts=True)
        similarity = unit[item[rows]] @ unit[distinct].T
        highest[rows], mean[rows] = similarity.max(1), similarity @ (events / events.sum())
    return highest, mean


def _by_user(user: np.ndarray, past_user: np.ndarray, past_rows: np.ndarray):
    """(each user's candidate rows, the past_rows of their events), for users with both."""
    if not len(past_user) or not len(user):
        return
    if not user.any() and not past_user.any():  # one user (a serving request): no grouping to do
        yield slice(None), past_rows
        return
    # Rows of each user, in both lists: candidates come grouped by user (top rows first, then past ones).
    cand_order = np.argsort(user, kind="stable")
    cand_bounds = np.searchsorted(user[cand_order], np.arange(user.max() + 2))
    past_bounds = np.searchsorted(past_user, np.arange(user.max() + 2))  # past is grouped by user already
    for u in np.unique(past_user):
        if u > user.max():
            break
        rows = cand_order[cand_bounds[u] : cand_bounds[u + 1]]
        if len(rows):
            yield rows, past_rows[past_bounds[u] : past_bounds[u + 1]]


def _shortlist(history: Mapping, frame: Candidates, own: tuple, codes: np.ndarray, named: np.ndarray) -> Shortlist:
    """The RANKER_FEATURES no clock changes, per candidate row: from the users' ranker_v1 rows (history), their
    own record of each item (_own_record) and the retrieval columns. codes: each candidate's item code; named:
    the id of each code."""
    found, views, carts, purchases, last, first_position = own
    distinct, item_rows = np.unique(codes, return_inverse=True)  # any order of the distinct ids will do
    user_rows = frame.user

    def number(column):
        return zero_blanks(numbers(history[column])[user_rows])

    columns = {
        "retrieval_score": frame.retrieval_score.astype(np.float64),
        "log_retrieval_rank": np.log1p(frame.retrieval_rank.astype(np.float64)),
        "in_history": found.astype(np.float64),
        "history_views": np.log1p(views),
        "history_carts": np.log1p(carts),
        "history_purchases": np.log1p(purchases),
        "log_history_position": np.log1p(first_position),
        "user_views_7d": np.log1p(number("user_activity__views_7d")),
        "user_add_to_carts_7d": np.log1p(number("user_activity__add_to_carts_7d")),
        "user_purchases_30d": np.log1p(number("user_activity__purchases_30d")),
        "user_distinct_items_30d": np.log1p(number("user_activity__distinct_items_30d")),
        "history_max_similarity": frame.history_max_similarity.astype(np.float64),
        "history_mean_similarity": frame.history_mean_similarity.astype(np.float64),
        "ease_score": frame.ease_score.astype(np.float64),
        # The user's events on the item weighted by intent (view 1, cart 3, purchase 4), as repurchase's "event"
        # weighting sums them: three separate log counts cannot add up to it (Taobao 'buy' recall@20 0.269 ->
        # 0.274, NDCG@20 0.150 -> 0.151, mean of 5 ranker seeds on the same candidates).
        "history_intent": np.log1p(EVENT_WEIGHTS["view"] * views + EVENT_WEIGHTS["add_to_cart"] * carts
                                   + EVENT_WEIGHTS["purchase"] * purchases),
    }  # fmt: skip
    known = np.zeros((len(RANKER_FEATURES), len(codes)), np.float32)  # filled a feature at a time, then seen as
    for row, name in zip(known, RANKER_FEATURES, strict=True):  # [candidates, features]: no float64 stack
        if name in columns:
            row[:] = columns[name]
    last_event_age = numbers(history["user_activity__last_event_age_s"])[user_rows]
    return Shortlist(np.ascontiguousarray(known.T), found, last, last_event_age, named[distinct], item_rows)


def _own_record(past: Past, past_codes: np.ndarray, users: np.ndarray, codes: np.ndarray, width: int):
    """Per candidate (its user, its item's code; past_codes: each past event's item code; codes below width), the
    user's own record of the item: (in the history, views, carts, purchases, the last event's time, the newest
    event's position; HISTORY_LENGTH where never)."""
    rows = len(users)
    if not len(past.item_id):
        zeros = np.zeros(rows)
        return np.zeros(rows, bool), zeros, zeros, zeros, zeros, np.full(rows, float(HISTORY_LENGTH))
    pairs, inverse = np.unique(past.user * width + past_codes, return_inverse=True)
    counts = [np.bincount(inverse, weights=past.type == kind, minlength=len(pairs)) for kind in (VIEW, CART, PURCHASE)]
    last = np.full(len(pairs), np.iinfo(np.int64).min)
    np.maximum.at(last, inverse, past.time)
    first = np.full(len(pairs), np.iinfo(np.int64).max)
    np.minimum.at(first, inverse, past.position)
    wanted = users * width + codes
    at = np.minimum(np.searchsorted(pairs, wanted), len(pairs) - 1)
    found = pairs[at] == wanted
    views, carts, purchases = (np.where(found, count[at], 0.0) for count in counts)
    return (found, views, carts, purchases, np.where(found, last[at], 0).astype(np.float64),
            np.where(found, first[at], HISTORY_LENGTH).astype(np.float64))  # fmt: skip


def _as_array(value, dtype) -> np.ndarray:
    """A list-valued feature as an array (empty where the join found no row)."""
    return np.asarray([] if value is None or isinstance(value, float) else value, dtype=dtype)
