"""A small shop with taste: users in groups that each buy from their own shelf, so a model that learns anything
beats popularity, and a broken one visibly does not."""

import numpy as np
import pandas as pd
import pytest

from core.layout import write_parquet
from training.offline_store import write_lake

T0 = pd.Timestamp("2024-01-01", tz="UTC")
GROUPS, SHELF, USERS_PER_GROUP, DAYS = 4, 25, 30, 28


def tasteful_shop(seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(purchase events, catalog): each user buys ~25 times from their group's shelf, titles name the shelf."""
    rng = np.random.default_rng(seed)
    rows = []
    for group in range(GROUPS):
        for u in range(USERS_PER_GROUP):
            n = rng.integers(15, 35)
            items = rng.zipf(1.3, n) % SHELF + group * SHELF
            days = np.sort(rng.integers(0, DAYS * 24 * 3600, n))
            rows += [(f"u{group}-{u}", f"i{i}", int(s)) for i, s in zip(items, days, strict=True)]
    events = pd.DataFrame(rows, columns=["user_id", "item_id", "seconds"])
    events["event_type"] = "purchase"
    events["event_timestamp"] = pd.Timestamp("2024-03-01", tz="UTC") + pd.to_timedelta(events.pop("seconds"), "s")
    shelves = ["kitchen mug", "garden lantern", "party garland", "toy train"]
    ids = np.arange(GROUPS * SHELF)
    catalog = pd.DataFrame({"item_id": [f"i{i}" for i in ids],
                            "title": [f"{shelves[i // SHELF]} number {i}" for i in ids], "description": None,
                            "category": [shelves[i // SHELF].split()[1] for i in ids], "price": 2.5,
                            "first_seen": pd.Timestamp("2024-03-01", tz="UTC")})  # fmt: skip
    return events.sort_values("event_timestamp", kind="stable").reset_index(drop=True), catalog


def events_from(rows: list[tuple], step: pd.Timedelta) -> pd.DataFrame:
    """Events from (user, item, steps after T0[, event_type]) tuples; the event type defaults to purchase."""
    records = [
        {"user_id": r[0], "item_id": r[1], "event_timestamp": T0 + r[2] * step,
         "event_type": r[3] if len(r) > 3 else "purchase"}
        for r in rows
    ]  # fmt: skip
    return pd.DataFrame(records, columns=["user_id", "item_id", "event_type", "event_timestamp"])


@pytest.fixture
def tasteful_lake(shoprec_home):
    """The tasteful shop in this test's lake and catalog, as the gate would have stored it."""
    from core.layout import Layout

    events, catalog = tasteful_shop()
    layout = Layout(shoprec_home.home)
    write_lake(layout, events)
    write_parquet(catalog, layout.catalog)
    return events, catalog
