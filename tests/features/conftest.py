"""A small hand-checkable event lake, written straight in the lake's layout (the gate is tested elsewhere)."""

import sqlite3

import pandas as pd
import pytest

from core.layout import write_parquet
from ingest import synthetic
from training.offline_store import write_lake


def write_synthetic_shop(layout, n_events: int, n_users: int, n_items: int, days: int, seed: int) -> pd.DataFrame:
    """A synthetic shop's rule-abiding events in the lake (typed as the gate would store them) and its catalog."""
    source = synthetic.generate(n_events, n_users=n_users, n_items=n_items, days=days, start="2024-03-01", seed=seed)
    events = source.events.assign(event_timestamp=pd.to_datetime(source.events["event_timestamp"], utc=True))
    for column in ("quantity", "price"):
        events[column] = pd.to_numeric(events[column], errors="coerce").astype(float)
    events = events.drop_duplicates("event_id").reset_index(drop=True)
    write_lake(layout, events)
    write_parquet(source.catalog, layout.catalog)
    return events


def online_rows(home) -> list:
    """Every row of the SQLite online store, in a stable order: to compare the store before and after."""
    with sqlite3.connect(home / "feast" / "online.db") as db:
        tables = [t for (t,) in db.execute("select name from sqlite_master where type='table' order by name")]
        return [(t, db.execute(f"select * from {t} order by 1, 2").fetchall()) for t in tables]


@pytest.fixture
def shop(layout):
    """Three weeks of a small synthetic shop in the lake, with its catalog."""
    return write_synthetic_shop(layout, 6_000, n_users=300, n_items=200, days=21, seed=7)


def brute_force(events: pd.DataFrame, key: str, entity: str, stamp: pd.Timestamp) -> dict:
    """The feature definitions, computed the slow obvious way for one entity and one snapshot stamp."""
    mine = events[(events[key] == entity) & (events["event_timestamp"] < stamp)]
    last7 = mine[mine["event_timestamp"] >= stamp - pd.Timedelta(days=7)]
    last30 = mine[mine["event_timestamp"] >= stamp - pd.Timedelta(days=30)]
    return {
        "views_7d": int((last7["event_type"] == "view").sum()),
        "add_to_carts_7d": int((last7["event_type"] == "add_to_cart").sum()),
        "purchases_30d": int((last30["event_type"] == "purchase").sum()),
        "distinct_items_30d": last30["item_id"].nunique(),
        "last_event_age_s": int((stamp - mine["event_timestamp"].max()).total_seconds()) if len(mine) else None,
        "recent_items": list(mine.sort_values("event_timestamp", kind="stable")["item_id"].iloc[::-1][:20]),
        "active": len(last30) > 0,
    }
