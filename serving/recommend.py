"""The request path of /recommend and /similar_items as plain functions over one Champion: no HTTP, no globals.

Personalised: the user's online features -> user tower -> candidates (every item with the exact index, the
index's nearest CANDIDATE_POOL plus the user's own past items with HNSW) -> the ranker on features computed from
online values by training's own code -> filters (exclude, not in the catalog, optionally already bought) -> top k.
Scores and order are what offline scoring of the same champion gives at the same moment (tests/serving/
test_parity.py). A user unknown to the store, or with no fresh feature, gets recent popularity, or with
session_items the items closest to them; the answer says which.
"""

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from features.online import FRESH, MISSING, STALE, STORE_ERRORS, UNAVAILABLE
from serving.champion import Champion
from training.candidates import shortlist
from training.examples import RANKER_SERVICE
from training.models import Ranker

CANDIDATE_POOL = 1000  # with HNSW: items the index returns for the ranker's candidates and ranks
USER_VIEWS = ("user_activity", "user_history")
PURCHASE = 2  # user_history's type code of a purchase (core.contract.EVENT_TYPES order)


@dataclass
class Answer:
    items: list[tuple[str, float, str]]  # (item_id, score, reason)
    statuses: dict[str, str] = field(default_factory=dict)  # view -> fresh / stale / missing
    fallback: str | None = None  # why the answer is not personalised
    store_error: str | None = None  # the online store could not be read (the answer is the fallback)


class UnknownItem(LookupError):
    """An item neither the champion nor the catalog knows."""


def recommend(champion: Champion, user_id: str, k: int, exclude=(), session_items=(), exclude_purchased=False,
              now=None) -> Answer:  # fmt: skip
    """The top k for one user at the clock moment now. Should the online store fail (Redis down) when the user's
    row must be read (a remembered user's is not), the answer is the cold start's, which needs no store
    (popularity as of the champion's load, or the session's neighbours), and says so."""
    try:
        return _recommend(champion, user_id, k, exclude, session_items, exclude_purchased, now)
    except STORE_ERRORS as error:
        problem = f"online store unavailable ({type(error).__name__}: {error})"
        allowed = _allowed(champion, list(exclude))
        answer = _cold(champion, allowed, k, session_items, dict.fromkeys(USER_VIEWS, UNAVAILABLE), problem)
        answer.store_error = problem
        return answer


def _recommend(champion: Champion, user_id: str, k: int, exclude, session_items, exclude_purchased, now) -> Answer:
    retrieval = champion.at(now)
    user = retrieval.columns(RANKER_SERVICE, "user_id", [user_id])
    history = _list(user["user_history__history_items"][0])
    user_status = {view: retrieval.statuses.get(view, MISSING) for view in USER_VIEWS}
    blocked = list(exclude)
    if exclude_purchased:
        types = _list(user["user_history__history_types"][0])
        blocked += [item for item, kind in zip(history, types, strict=False) if kind == PURCHASE]
    allowed = _allowed(champion, blocked)

    if all(status == MISSING for status in user_status.values()):
        return _cold(champion, allowed, k, session_items, user_status, "unknown user: no features in the store")
    if not any(status == FRESH for status in user_status.values()):
        return _cold(champion, allowed, k, session_items, user_status, "no fresh features for this user")

    picked = _personalised(champion, retrieval, user_id, history, allowed, k)
    own = set(history)
    items = [(item, score, "repurchase" if item in own else "retrieved") for item, score in picked]
    return Answer(items, dict(sorted(retrieval.statuses.items())))


def similar_items(champion: Champion, item_id: str, k: int) -> tuple[list[tuple[str, float, str]], bool]:
    """(the k catalog items whose vectors are closest to item_id's, whether item_id's vector came from its text)."""
    row = champion.position.of([item_id])[0]
    if row < 0:
        raise UnknownItem(f"item {item_id!r} is neither in the catalog nor known to the model")
    found = _nearest(champion, champion.vectors[row], k, skip={row})
    return found, bool(champion.from_text[row])


def _personalised(champion: Champion, retrieval, user_id: str, history: list, allowed: np.ndarray, k: int):
    """[(item_id, score)]: the ranker's order of the user's candidates (10 + P(interact)), then, should filters
    leave fewer than k, the rest by retrieval score (score - 100): what offline scoring ranks (TwoTowerRecommender
    .score, FittedRanker.rerank), computed over the candidates alone."""
    ranker = champion.recommender.ranker
    # the history's distinct items' index rows, in its order: remembered with the row they come from
    past = retrieval.remembered(user_id, "past", lambda: champion.position.of(list(dict.fromkeys(history))))
    final = {}
    if ranker is not None:
        rows, features = _ranker_features(champion, retrieval, user_id, past, ranker.config.candidates)
        probability = ranker.probabilities(features)[:, Ranker.TASKS.index("interact")]
        keep = allowed[rows]
        kept_rows, kept_scores = rows[keep], 10.0 + probability[keep]
        best_k = np.argsort(-kept_scores, kind="stable")[:k]  # stable: ties keep the candidates' order
        final = dict(zip(kept_rows[best_k].tolist(), kept_scores[best_k].tolist(), strict=True))
    if len(final) < k:  # fewer than k candidates survived the filters: the rest in retrieval order, as offline
        scores, order = _retrieve(champion, retrieval.users(np.asarray([user_id], dtype=object)), past)
        for row in order if order is not None else np.argsort(-scores):
            if len(final) == k:
                break
            if allowed[row] and row not in final:
                final[row] = float(scores[row] - 100.0)
    return [(str(champion.item_ids[row]), score) for row, score in final.items()]


def _ranker_features(champion: Champion, retrieval, user_id: str, past: np.ndarray, n: int):
    """(each candidate's index row, their RANKER_FEATURES at the retrieval's moment). The candidates and their
    training.candidates.Shortlist are remembered for a returning user while their row's freshness stays the same
    (OnlineRetrieval.remembered), and the shortlist's item columns while the catalog's does: both are a function
    of those rows and the champion, so their request only computes the clock's columns.

    With the exact index every item is scored, and the candidates are the same as offline: the n best and the
    user's past items, with their ranks among every item (how many items score higher: offline's argsort of the
    whole row gives the same, but for exact ties, which it orders arbitrarily). With HNSW the index's nearest
    CANDIDATE_POOL and the past items are scored and ranked among themselves."""

    def build():
        scores, order = _retrieve(champion, retrieval.users(np.asarray([user_id], dtype=object)), past)
        if order is None:
            ascending = np.sort(scores)  # a candidate's rank is how many items score higher: no argsort of all

            def rank(rows):
                return len(scores) - np.searchsorted(ascending, scores[rows], side="right")

            best = np.argpartition(-scores, min(n, len(scores)) - 1)[:n]
        else:
            ranks = np.empty(len(scores), np.int64)
            ranks[order] = np.arange(len(order))
            rank, best = ranks.__getitem__, order[:n]
        rows = pd.unique(np.concatenate([best, past[past >= 0]]))
        candidates, short = shortlist(retrieval, np.asarray([user_id], dtype=object), champion.item_ids[rows],
                                      champion.vectors[rows], scores[rows][None, :], n, rank(rows)[None, :])  # fmt: skip
        return rows[candidates.item], short

    if (past < 0).any():  # past items outside the index are embedded from their rows, whose freshness can change
        rows, short = build()
        return rows, short.features(retrieval)
    rows, short = retrieval.remembered(user_id, "shortlist", build)
    return rows, short.features(retrieval, retrieval.remembered_item_numbers(user_id, short))


def _retrieve(champion: Champion, user: np.ndarray, past: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """(every index row's retrieval score, -inf where not scored; the scored rows in retrieval order, or None
    with the exact index, where every row is scored and the order is sorted only when needed)."""
    if champion.exact:
        return (user @ champion.vectors.T)[0], None
    _, found = champion.index.search(np.ascontiguousarray(user, dtype=np.float32), CANDIDATE_POOL)
    pool = pd.unique(np.concatenate([found[0][found[0] >= 0], past[past >= 0]]))
    scores = np.full(len(champion.item_ids), -np.inf, np.float32)
    scores[pool] = user[0] @ champion.vectors[pool].T
    return scores, pool[np.argsort(-scores[pool])]


def _cold(champion: Champion, allowed: np.ndarray, k: int, session_items, statuses: dict, why: str) -> Answer:
    """Items similar to the session when it names known items, else recent popularity."""
    rows = champion.position.of(session_items)
    rows = rows[rows >= 0]
    if len(rows):
        centre = champion.vectors[rows].mean(0)
        found = _nearest(champion, centre, k, skip=set(rows.tolist()), allowed=allowed)
        return Answer(found, statuses, f"{why}: items similar to the session's {len(rows)} known item(s)")
    order = _first_allowed(champion.by_popularity, allowed, k)
    status = {**statuses, "item_popularity": FRESH if champion.popularity_fresh else STALE}
    note = "" if champion.popularity_fresh else " (no item has fresh popularity at this clock: order is arbitrary)"
    picked = [(str(champion.item_ids[i]), float(champion.popularity[i]), "popular") for i in order]
    return Answer(picked, status, f"{why}: recent popularity{note}")


def _nearest(champion: Champion, vector: np.ndarray, k: int, skip: set, allowed=None) -> list:
    """The k allowed catalog items nearest to vector by the index, skipping rows in skip."""
    allowed = champion.in_catalog if allowed is None else allowed
    query = np.ascontiguousarray(vector[None, :], dtype=np.float32)
    wanted = k + len(skip)
    while True:  # filters can drop rows: widen the search until k are left or the index is exhausted
        scores, rows = champion.index.search(query, min(wanted, len(champion.item_ids)))
        kept = [(r, s) for r, s in zip(rows[0], scores[0], strict=True) if r >= 0 and r not in skip and allowed[r]]
        if len(kept) >= k or wanted >= len(champion.item_ids):
            return [(str(champion.item_ids[r]), float(s), "similar") for r, s in kept[:k]]
        wanted *= 4


def _first_allowed(rows: np.ndarray, allowed: np.ndarray, k: int) -> np.ndarray:
    """The first k of rows that are allowed, in rows' order: a look at the head, widened only should filters
    leave fewer (filtering every row cost a 55k-item catalog's cold request ~0.1 ms, sorting them ~2 ms)."""
    wanted = 4 * k
    while True:
        head = rows[:wanted]
        picked = head[allowed[head]][:k]
        if len(picked) == k or wanted >= len(rows):
            return picked
        wanted *= 4


def _allowed(champion: Champion, blocked: list) -> np.ndarray:
    """The catalog's rows less the blocked items' (unknown ids in an exclude list are ignored): the champion's
    own read-only mask when nothing is blocked, as most requests go (no copy of a 55k-item mask)."""
    if not blocked:
        return champion.in_catalog
    rows = champion.position.of(blocked)
    allowed = champion.in_catalog.copy()
    allowed[rows[rows >= 0]] = False
    return allowed


def _list(value) -> list:
    return [] if value is None or isinstance(value, float) else list(value)
