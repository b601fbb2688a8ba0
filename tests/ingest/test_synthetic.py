"""The synthetic shop: exact size, a funnel, skewed popularity, damage of known kinds, reproducible."""

import numpy as np

from ingest import synthetic


def test_shape_funnel_and_popularity():
    events = synthetic.generate(200_000, n_users=5_000, n_items=2_000, seed=3).events
    assert len(events) == 200_000 and events["event_id"].is_unique
    counts = events["event_type"].value_counts()
    assert counts["view"] > counts["add_to_cart"] > counts["purchase"] > 0
    assert 0.08 < counts["add_to_cart"] / counts["view"] < 0.12
    assert events["event_timestamp"].is_monotonic_increasing
    views = events.loc[events["event_type"] == "view", "item_id"].value_counts()
    top_share = views.iloc[: len(views) // 100].sum() / views.sum()
    assert top_share > 0.2  # Zipf: the top 1% of items draw a large share of views
    purchases = events[events["event_type"] == "purchase"]
    assert (purchases["quantity"] >= 1).all() and (purchases["price"] > 0).all()


def test_damage_share_and_reproducibility():
    a = synthetic.generate(10_000, bad_share=0.01, seed=7).events
    b = synthetic.generate(10_000, bad_share=0.01, seed=7).events
    assert a.equals(b)
    assert (a["user_id"] == "").sum() == len(range(0, 100, len(synthetic.BAD_KINDS)))
    assert (a["event_type"] == "wishlist").sum() > 0
    assert a["event_timestamp"].isna().sum() > 0
    assert np.isclose((a["quantity"] == -1).sum() + (a["price"] == -5).sum(), 2 * 100 / 7, atol=2)
