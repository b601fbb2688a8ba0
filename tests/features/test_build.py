"""Feature tables against the feature definitions computed the obvious way, plus idempotence and incrementality."""

import hashlib

import pandas as pd
import pytest

from features import build as build_module
from features.build import build, build_pending
from tests.features.conftest import brute_force, write_lake


def digest(folder) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*.parquet"))}


def test_snapshots_match_the_definitions(layout, shop):
    report = build(layout)
    assert report.first_day == "2024-03-01" and report.last_day == "2024-03-21"
    users = pd.read_parquet(layout.features / "user_activity")
    items = pd.read_parquet(layout.features / "item_popularity")
    assert report.rows["user_activity"] == len(users) and report.rows["item_popularity"] == len(items)
    assert (users["event_timestamp"] == users["event_timestamp"].dt.normalize()).all(), "stamped at midnight UTC"
    for row in users.sample(40, random_state=1).itertuples():
        expected = brute_force(shop, "user_id", row.user_id, row.event_timestamp)
        assert expected.pop("active")
        got = {k: getattr(row, k) for k in expected}
        got["recent_items"] = list(got["recent_items"])
        assert got == expected, (row.user_id, row.event_timestamp)
    for row in items.sample(40, random_state=2).itertuples():
        expected = brute_force(shop, "item_id", row.item_id, row.event_timestamp)
        assert (row.views_7d, row.add_to_carts_7d, row.purchases_30d) == (
            expected["views_7d"], expected["add_to_carts_7d"], expected["purchases_30d"])  # fmt: skip
        assert row.first_seen_age_s >= 0


def test_user_history_is_the_users_past_before_each_active_day(layout, shop, monkeypatch):
    monkeypatch.setattr(build_module, "HISTORY_LENGTH", 50)  # shorter than some users' past, so the cut is tested
    build(layout)
    history = pd.read_parquet(layout.features / "user_history")
    active_days = shop.assign(day=shop["event_timestamp"].dt.normalize()).drop_duplicates(["user_id", "day"])
    assert len(history) == len(active_days), "one row per user and day the user was active"
    assert history["history_items"].map(len).max() == 50, "the longest pasts are cut to HISTORY_LENGTH"
    types = {"view": 0, "add_to_cart": 1, "purchase": 2}
    for row in history.sample(40, random_state=3).itertuples():
        mine = shop[(shop["user_id"] == row.user_id) & (shop["event_timestamp"] < row.event_timestamp)]
        mine = mine.sort_values("event_timestamp", kind="stable").iloc[::-1][:50]
        assert list(row.history_items) == list(mine["item_id"])
        assert list(row.history_types) == [types[t] for t in mine["event_type"]]
        assert list(row.history_times) == list(mine["event_timestamp"].astype("int64") // 10**9)


def test_every_active_user_gets_a_snapshot_and_no_one_else(layout, shop):
    build(layout)
    users = pd.read_parquet(layout.features / "user_activity")
    stamp = pd.Timestamp("2024-03-15", tz="UTC")
    window = shop[(shop["event_timestamp"] < stamp) & (shop["event_timestamp"] >= stamp - pd.Timedelta(days=30))]
    assert set(users.loc[users["event_timestamp"] == stamp, "user_id"]) == set(window["user_id"])


def test_conversion_rate_is_smoothed_towards_the_shop_rate(layout, shop):
    build(layout)
    items = pd.read_parquet(layout.features / "item_popularity")
    unseen = items[(items["purchases_30d"] == 0)]
    assert (unseen["conversion_rate_30d"] > 0).all() and (unseen["conversion_rate_30d"] < 1).all()


def test_rebuilding_rewrites_the_same_bytes(layout, shop):
    build(layout)
    first = digest(layout.features)
    build(layout)
    assert digest(layout.features) == first


def test_incremental_build_rebuilds_days_a_late_event_can_change(layout, settings, shop):
    build_pending(layout, settings)
    full = digest(layout.features / "user_activity")
    # A late event on the last day, as the gate would accept it: the last snapshot changes, nothing else.
    late = shop.iloc[[0]].assign(event_id="late-1", event_timestamp=pd.Timestamp("2024-03-21T23:00:00Z"))
    write_lake(layout, late, batch_id="b2")
    report = build_pending(layout, settings)
    assert report.first_day == "2024-03-18"
    after = digest(layout.features / "user_activity")
    assert [day for day in full if full[day] != after[day]] == ["2024-03-21.parquet"]
    build(layout)  # a full rebuild agrees with the incremental one
    assert digest(layout.features / "user_activity") == after


def test_catalog_features_carry_unit_length_text_embeddings(layout, shop):
    build(layout)
    catalog = pd.read_parquet(layout.features / "item_catalog.parquet")
    vectors = pd.DataFrame(catalog["text_embedding"].tolist()).to_numpy()
    assert vectors.shape == (200, 384)
    assert abs((vectors**2).sum(axis=1) - 1).max() < 1e-4
    report = build(layout)
    assert report.embedded_texts == 0, "unchanged texts come from the cache"


def test_an_empty_lake_builds_nothing(layout):
    report = build(layout)
    assert report.first_day is None and report.rows == {"item_catalog": 0}


@pytest.mark.parametrize("view", ["user_activity", "item_popularity"])
def test_feature_rows_never_count_events_at_or_after_their_stamp(layout, shop, view):
    build(layout)
    rows = pd.read_parquet(layout.features / view)
    key = "user_id" if view == "user_activity" else "item_id"
    first_event = shop.groupby(key)["event_timestamp"].min()
    assert (rows["event_timestamp"].to_numpy() > first_event.reindex(rows[key]).to_numpy()).all()
