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

from features.online import FRESH, MISSING, STALE
from serving.champion import Champion
from training.examples import RANKER_SERVICE

CANDIDATE_POOL = 1000  # with HNSW: items the index returns for the ranker's candidates and ranks
USER_VIEWS = ("user_activity", "user_history")
PURCHASE = 2  # user_history's type code of a purchase (core.contract.EVENT_TYPES order)


@dataclass
class Answer:
    items: list[tuple[str, float, str]]  # (item_id, score, reason)
    statuses: dict[str, str] = field(default_factory=dict)  # view -> fresh / stale / missing
    fallback: str | None = None  # why the answer is not personalised


class UnknownItem(LookupError):
    """An item neither the champion nor the catalog knows."""


def recommend(champion: Champion, user_id: str, k: int, exclude=(), session_items=(), exclude_purchased=False,
              now=None) -> Answer:  # fmt: skip
    """The top k for one user at the clock moment now."""
    retrieval = champion.at(now)
    user = retrieval.features(RANKER_SERVICE, "user_id", [user_id]).iloc[0]
    history = _list(user.get("user_history__history_items"))
    user_status = {view: retrieval.statuses.get(view, MISSING) for view in USER_VIEWS}
    blocked = np.zeros(len(champion.item_ids), bool)
    _block(champion, blocked, exclude)
    if exclude_purchased:
        types = _list(user.get("user_history__history_types"))
        _block(champion, blocked, [item for item, kind in zip(history, types, strict=False) if kind == PURCHASE])
    allowed = champion.in_catalog & ~blocked

    if all(status == MISSING for status in user_status.values()):
        return _cold(champion, allowed, k, session_items, user_status, "unknown user: no features in the store")
    if not any(status == FRESH for status in user_status.values()):
        return _cold(champion, allowed, k, session_items, user_status, "no fresh features for this user")

    items, vectors, scores = _candidates(champion, retrieval, user_id, history)
    ranker = champion.recommender.ranker
    if ranker is not None:  # training's own reranking: candidates get 10 + P(interact), the rest trail below
        scores = ranker.rerank(retrieval, np.asarray([user_id], dtype=object), items, vectors, scores, "all")
    scores = scores[0]
    rows = champion.position.get_indexer(items)
    ok = allowed[rows]
    order = np.flatnonzero(ok)[np.argsort(-scores[ok], kind="stable")[:k]]
    own = set(history)
    picked = [(str(items[i]), float(scores[i]), "repurchase" if items[i] in own else "retrieved") for i in order]
    return Answer(picked, dict(sorted(retrieval.statuses.items())))


def similar_items(champion: Champion, item_id: str, k: int) -> tuple[list[tuple[str, float, str]], bool]:
    """(the k catalog items whose vectors are closest to item_id's, whether item_id's vector came from its text)."""
    row = champion.position.get_indexer([item_id])[0]
    if row < 0:
        raise UnknownItem(f"item {item_id!r} is neither in the catalog nor known to the model")
    found = _nearest(champion, champion.vectors[row], k, skip={row})
    return found, bool(champion.from_text[row])


def _candidates(champion: Champion, retrieval, user_id: str, history: list):
    """(items, their vectors, the user's scores [1, n]): every item with the exact index (what offline scoring
    ranks); with HNSW the index's nearest CANDIDATE_POOL and the user's past items, ranked among themselves."""
    user = retrieval.users(np.asarray([user_id], dtype=object))
    if champion.exact:
        return champion.item_ids, champion.vectors, user @ champion.vectors.T
    _, found = champion.index.search(np.ascontiguousarray(user, dtype=np.float32), CANDIDATE_POOL)
    past = champion.position.get_indexer(pd.unique(np.asarray(history, dtype=object)))
    rows = pd.unique(np.concatenate([found[0][found[0] >= 0], past[past >= 0]]))
    vectors = champion.vectors[rows]
    return champion.item_ids[rows], vectors, user @ vectors.T


def _cold(champion: Champion, allowed: np.ndarray, k: int, session_items, statuses: dict, why: str) -> Answer:
    """Items similar to the session when it names known items, else recent popularity."""
    rows = champion.position.get_indexer(list(session_items)) if len(session_items) else np.zeros(0, np.int64)
    rows = rows[rows >= 0]
    if len(rows):
        centre = champion.vectors[rows].mean(0)
        found = _nearest(champion, centre, k, skip=set(rows.tolist()), allowed=allowed)
        return Answer(found, statuses, f"{why}: items similar to the session's {len(rows)} known item(s)")
    popularity = np.where(allowed, champion.popularity, -np.inf)
    order = np.argsort(-popularity, kind="stable")[:k]
    order = order[np.isfinite(popularity[order])]
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


def _block(champion: Champion, blocked: np.ndarray, items) -> None:
    rows = champion.position.get_indexer(list(items)) if len(items) else np.zeros(0, np.int64)
    blocked[rows[rows >= 0]] = True  # unknown ids in an exclude list are ignored


def _list(value) -> list:
    return [] if value is None or isinstance(value, float) else list(value)
