"""A synthetic shop for scale tests: Zipf item popularity, sessions, a view -> add_to_cart -> purchase funnel,
titled and categorised items, and a controllable share of bad rows of known kinds.

Vectorised numpy throughout: 10 million events take well under a minute on two cores.
"""

import numpy as np
import pandas as pd

from core.contract import CATALOG_COLUMNS
from ingest.source import SourceData, empty_excluded

NAME = "synthetic"
ADJECTIVES = ["vintage", "classic", "rustic", "modern", "little", "giant", "pastel", "retro", "woodland", "festive"]
COLOURS = ["red", "blue", "green", "ivory", "pink", "gold", "silver", "black", "white", "lilac"]
NOUNS = ["mug", "lantern", "tote bag", "candle", "notebook", "cushion", "clock", "tin", "garland", "tea set"]
CATEGORIES = ["kitchen", "lighting", "bags", "home", "stationery", "garden", "gifts", "party", "toys", "decor"]
# The kinds of damage a real feed shows, each caught by one rule of the gate.
BAD_KINDS = ("missing_user", "unknown_type", "future", "negative_quantity", "negative_price", "repeat", "no_time")


def generate(
    n_events: int,
    n_users: int = 100_000,
    n_items: int = 20_000,
    bad_share: float = 0.0,
    seed: int = 0,
    start: str = "2024-01-01",
    days: int = 30,
    zipf_a: float = 1.1,  # item popularity ~ 1 / rank**a
    p_cart: float = 0.10,  # share of views followed by an add_to_cart
    p_buy: float = 0.30,  # share of add_to_carts followed by a purchase
) -> SourceData:
    rng = np.random.default_rng(seed)
    t0 = pd.Timestamp(start, tz="UTC").value // 10**9
    # Funnel sizes are fixed up front so that exactly n_events come out.
    n_views = max(1, round(n_events / (1 + p_cart + p_cart * p_buy)))
    n_carts = min(n_views, round(n_views * p_cart))
    n_buys = min(n_carts, n_events - n_views - n_carts)

    # Sessions of ~5 views by users of skewed activity; views within a session are 10-120 s apart.
    n_sessions = max(1, n_views // 5)
    session_user = _zipf_choice(rng, n_users, n_sessions, 1.0)
    session_start = t0 + rng.integers(0, days * 86400, n_sessions)
    session = np.sort(rng.integers(0, n_sessions, n_views))
    step = rng.integers(10, 120, n_views)
    first = np.r_[True, session[1:] != session[:-1]]
    offset = np.cumsum(step) - np.maximum.accumulate(np.where(first, np.cumsum(step) - step, 0))
    view_time = session_start[session] + offset
    view_item = _zipf_choice(rng, n_items, n_views, zipf_a)

    cart = rng.choice(n_views, n_carts, replace=False)
    buy = rng.choice(cart, max(n_buys, 0), replace=False)
    rows = np.concatenate([np.arange(n_views), cart, buy])
    kind = np.repeat([0, 1, 2], [n_views, len(cart), len(buy)])
    seconds = view_time[rows] + np.array([0, 30, 120])[kind]
    order = np.argsort(seconds, kind="stable")
    rows, kind, seconds = rows[order], kind[order], seconds[order]

    item_price = np.round(rng.lognormal(1.5, 0.8, n_items), 2)
    n = len(rows)
    events = pd.DataFrame(
        {
            "event_id": np.char.add("syn-", np.arange(n).astype(str)),
            "user_id": np.char.add("u", session_user[session[rows]].astype(str)),
            "item_id": np.char.add("i", view_item[rows].astype(str)),
            "event_type": np.array(["view", "add_to_cart", "purchase"])[kind],
            "event_timestamp": pd.to_datetime(seconds, unit="s", utc=True),
            "session_id": np.char.add("s", session[rows].astype(str)),
            "quantity": np.where(kind == 0, np.nan, rng.integers(1, 4, n)).astype(float),
            "price": np.where(kind == 0, np.nan, item_price[view_item[rows]]),
        }
    )
    _damage(events, rng, bad_share)
    return SourceData(
        name=NAME,
        events=events,
        catalog=_catalog(rng, n_items, item_price, t0),
        excluded=empty_excluded(["event_id"]),
        raw_rows=n,
        timezone="UTC",
    )


def _zipf_choice(rng: np.random.Generator, n: int, size: int, a: float) -> np.ndarray:
    """Draw ids 0..n-1 with P(rank r) ~ 1 / r**a; ranks are shuffled so id order says nothing."""
    weights = 1.0 / np.arange(1, n + 1) ** a
    ranks = np.searchsorted(np.cumsum(weights) / weights.sum(), rng.random(size))
    return rng.permutation(n)[np.minimum(ranks, n - 1)]


def _damage(events: pd.DataFrame, rng: np.random.Generator, bad_share: float) -> None:
    """Spoil bad_share of the rows in place, cycling through BAD_KINDS."""
    n_bad = round(bad_share * len(events))
    if n_bad == 0:
        return
    bad = rng.choice(np.arange(1, len(events)), n_bad, replace=False)
    for k, kind in enumerate(BAD_KINDS):
        idx = bad[k :: len(BAD_KINDS)]
        if kind == "missing_user":
            events.loc[idx, "user_id"] = ""
        elif kind == "unknown_type":
            events.loc[idx, "event_type"] = "wishlist"
        elif kind == "future":
            events.loc[idx, "event_timestamp"] = events["event_timestamp"].max() + pd.Timedelta(days=30)
        elif kind == "negative_quantity":
            events.loc[idx, "quantity"] = -1.0
        elif kind == "negative_price":
            events.loc[idx, "price"] = -5.0
        elif kind == "repeat":  # re-sent: the same id as the row before it
            events.loc[idx, "event_id"] = events["event_id"].to_numpy()[idx - 1]
        elif kind == "no_time":
            events.loc[idx, "event_timestamp"] = pd.NaT


def _catalog(rng: np.random.Generator, n_items: int, price: np.ndarray, t0: int) -> pd.DataFrame:
    words = [rng.integers(0, len(w), n_items) for w in (ADJECTIVES, COLOURS, NOUNS)]
    title = [f"{ADJECTIVES[a]} {COLOURS[c]} {NOUNS[n]}" for a, c, n in zip(*words)]
    return pd.DataFrame(
        {
            "item_id": np.char.add("i", np.arange(n_items).astype(str)),
            "title": title,
            "description": None,
            "category": np.array(CATEGORIES)[rng.integers(0, len(CATEGORIES), n_items)],
            "price": price,
            "first_seen": pd.Timestamp(t0, unit="s", tz="UTC"),
        },
        columns=list(CATALOG_COLUMNS),
    )
