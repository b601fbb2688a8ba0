"""The suites as code: every expectation is annotated; the catalog feed gate quarantines bad items."""

import pandas as pd
import pytest

from core.layout import write_parquet
from validation.catalog import apply_feeds
from validation.suites import catalog_suite, event_suite


@pytest.mark.parametrize("suite", [event_suite(), catalog_suite()], ids=["events", "catalog"])
def test_every_expectation_names_its_rule_and_what_it_guards_against(suite):
    rules = [e.meta["rule"] for e in suite.expectations]
    assert len(rules) == len(set(rules))
    assert all(e.notes and len(e.notes) > 15 for e in suite.expectations)


def test_catalog_feeds_upsert_and_quarantine_bad_items(layout):
    first_seen = pd.Timestamp("2024-01-01", tz="UTC")
    feed = pd.DataFrame(
        {
            "item_id": ["a", "b", "b", None, "c"],
            "title": ["A", "B", "B again", "nobody", "C"],
            "description": None,
            "category": ["x", "y", "y", "z", None],
            "price": [1.0, 2.0, 2.0, 3.0, -1.0],
            "first_seen": first_seen,
        }
    )
    write_parquet(feed, layout.landing / "catalog" / "1-shop.parquet")
    write_parquet(feed.iloc[:1].assign(title="A, renamed"), layout.landing / "catalog" / "2-update.parquet")
    results = apply_feeds(layout)
    assert [(r.received, r.accepted, r.quarantined) for r in results] == [(5, 2, 3), (1, 1, 0)]
    catalog = pd.read_parquet(layout.catalog).set_index("item_id")
    assert list(catalog.index) == ["a", "b"] and catalog.loc["a", "title"] == "A, renamed"
    bad = pd.read_parquet(layout.quarantine / "catalog" / "1-shop.parquet")
    assert sorted(bad["reason"]) == ["category_missing;price_negative", "item_id_missing", "item_id_repeated"]
    again = apply_feeds(layout)  # idempotent
    assert again == results
