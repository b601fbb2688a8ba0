"""The Feast store for real: point-in-time training sets without leakage, materialisation, and the online read
path with its staleness rule, on SQLite and on a real redis-server."""

import time

import pandas as pd
import pytest

from features.build import build
from features.online import MISSING, STALE, OnlineFeatures
from features.store import apply, materialize, open_store
from features.training_sets import training_set
from tests.features.conftest import brute_force, online_rows

END = pd.Timestamp("2024-03-22", tz="UTC")  # the lake's logical time: the end of the shop's last day


@pytest.fixture(params=["sqlite", "redis"])
def online_settings(request, settings):
    if request.param == "sqlite":
        return settings
    return on_redis(settings, request.getfixturevalue("redis_url"))


def on_redis(settings, redis_url: str, **more):
    """The production environment: Redis online store, SQL registry (SQLite here stands in for Postgres)."""
    return settings.model_copy(update={"feast_env": "production", "redis_url": redis_url,
                                       "feast_registry_url": f"sqlite:///{settings.home}/registry.db", **more})  # fmt: skip


@pytest.fixture
def store(layout, settings, shop):
    build(layout)
    store = open_store(settings)
    apply(store, settings)
    return store


def test_training_rows_see_only_events_before_them(store, shop):
    rows = shop.sample(300, random_state=3)[["user_id", "item_id", "event_timestamp", "event_type"]]
    joined = training_set(store, rows, "ranker_v1")
    assert len(joined) == len(rows) and (joined["event_type"].to_numpy() == rows["event_type"].to_numpy()).all()
    for row in joined.itertuples():
        # The row joins the snapshot stamped at the midnight before it, which counts events before that midnight.
        stamp = row.event_timestamp.floor("D")
        expected = brute_force(shop, "user_id", row.user_id, stamp)
        if not expected["active"]:
            assert pd.isna(row.user_activity__purchases_30d), "no history: no features"
            continue
        assert row.user_activity__purchases_30d == expected["purchases_30d"]
        assert row.user_activity__views_7d == expected["views_7d"]
        assert list(row.user_activity__recent_items) == expected["recent_items"]
        before = shop[(shop["user_id"] == row.user_id) & (shop["event_timestamp"] < row.event_timestamp)]
        assert row.user_activity__purchases_30d <= (before["event_type"] == "purchase").sum(), "no leakage"


def test_a_users_first_event_sees_empty_history(store, shop):
    first = shop.sort_values("event_timestamp").groupby("user_id").head(1).head(50)
    joined = training_set(store, first[["user_id", "item_id", "event_timestamp"]], "ranker_v1")
    assert joined["user_activity__views_7d"].isna().all()
    assert joined["user_activity__recent_items"].isna().all()


def test_two_events_in_the_same_second_both_come_back(store, shop):
    row = shop.iloc[[100]][["user_id", "item_id", "event_timestamp"]]
    twice = pd.concat([row.assign(order_id="A", label=1), row.assign(order_id="B", label=0)])
    joined = training_set(store, twice, "two_tower_v1")
    assert joined["order_id"].tolist() == ["A", "B"] and joined["label"].tolist() == [1, 0]
    assert joined.filter(like="__").iloc[0].astype(str).equals(joined.filter(like="__").iloc[1].astype(str))


def test_training_set_rejects_rows_it_cannot_join(store):
    with pytest.raises(ValueError, match="no entity rows"):
        training_set(store, pd.DataFrame(columns=["user_id", "item_id", "event_timestamp"]), "ranker_v1")
    with pytest.raises(ValueError, match="event_timestamp"):
        training_set(store, pd.DataFrame({"user_id": ["u"], "item_id": ["i"]}), "ranker_v1")


def test_materialising_twice_leaves_the_online_store_identical(store, layout, settings):
    first = materialize(store, layout, END)
    assert set(first["materialized"]) == {"user_activity", "user_history", "item_popularity", "item_catalog"}
    before = online_rows(settings.home)
    again = materialize(store, layout, END)
    assert again["materialized"] == {} and online_rows(settings.home) == before


def materialized_reader(settings, layout) -> OnlineFeatures:
    """The shop's features built, applied and materialised up to END, and serving's reader over them."""
    build(layout)
    store = open_store(settings)
    apply(store, settings)
    materialize(store, layout, END)
    return OnlineFeatures(store, "ranker_v1", layout)


def test_online_reads_are_fresh_then_stale_past_the_ttl(online_settings, layout, shop):
    reader = materialized_reader(online_settings, layout)
    user = shop["user_id"].iloc[-1]
    items = shop["item_id"].drop_duplicates().head(200).tolist() + ["no-such-item"]
    fresh = reader.read(user, items, as_of=END)
    expected = brute_force(shop, "user_id", user, END)
    assert fresh.user_status == {"user_activity": "fresh", "user_history": "fresh"}
    assert fresh.user["user_activity__purchases_30d"][0] == expected["purchases_30d"]
    assert list(fresh.user["user_history__history_items"][0][:20]) == expected["recent_items"]
    assert fresh.items["item_popularity__purchases_30d"].shape == (len(items),)
    assert fresh.items["item_catalog__price"].dtype == "float32"
    assert fresh.item_status["item_catalog"][-1] == MISSING
    assert fresh.stale_views() == []
    # Three days on with no new materialisation: every windowed value is older than its 2-day TTL.
    later = reader.read(user, items, as_of=END + pd.Timedelta(days=3))
    assert later.user_status == {"user_activity": STALE, "user_history": "fresh"}, "a history never goes stale"
    assert later.stale_views() == ["item_popularity", "user_activity"]
    assert pd.isna(later.user["user_activity__purchases_30d"][0]), "a stale value is never served"
    assert later.item_status["item_catalog"][0] == "fresh", "catalog attributes have no TTL"
    unknown = reader.read("no-such-user", items[:3], as_of=END)
    assert unknown.user_status == {"user_activity": MISSING, "user_history": MISSING}


def test_item_cache_follows_the_materialisation_version(store, layout, shop):
    materialize(store, layout, END - pd.Timedelta(days=1))
    reader = OnlineFeatures(store, "ranker_v1", layout)
    items = shop["item_id"].drop_duplicates().head(20).tolist()
    before = reader.read(shop["user_id"].iloc[0], items, as_of=END).items["item_popularity__purchases_30d"]
    time.sleep(0.01)
    materialize(store, layout, END)  # the last day's snapshot now reaches the online store
    after = reader.read(shop["user_id"].iloc[0], items, as_of=END).items["item_popularity__purchases_30d"]
    online = store.get_online_features(features=["item_popularity:purchases_30d"],
                                       entity_rows=[{"item_id": i} for i in items]).to_dict()["purchases_30d"]  # fmt: skip
    assert [None if pd.isna(v) else v for v in after.tolist()] == online
    assert not (pd.Series(before).fillna(-1) == pd.Series(after).fillna(-1)).all()


def test_a_backfilled_row_wins_over_the_row_it_corrects(store, layout, shop):
    """Two rows for one user and stamp: Feast keeps the later created_timestamp, so a backfill corrects history."""
    day = layout.features / "user_activity" / "2024-03-10.parquet"
    original = pd.read_parquet(day)
    corrected = original.head(1).assign(purchases_30d=999, created_timestamp=original["created_timestamp"].iloc[0]
                                        + pd.Timedelta(days=1))  # fmt: skip
    corrected.to_parquet(day.with_name("2024-03-10-backfill.parquet"), index=False)
    user, stamp = corrected["user_id"].iloc[0], corrected["event_timestamp"].iloc[0]
    rows = pd.DataFrame({"user_id": [user], "item_id": ["i1"], "event_timestamp": [stamp + pd.Timedelta(hours=1)]})
    assert training_set(store, rows, "ranker_v1")["user_activity__purchases_30d"].iloc[0] == 999


def test_a_hung_redis_fails_a_read_in_one_timeout(settings, layout, shop):
    """A Redis that accepts connections but answers nothing (SIGSTOPped) costs a read one SHOPREC_REDIS_TIMEOUT_S,
    then a store error the caller answers with its fallback: redis-py's default 3 retries with backoff took 6 s
    at a 0.5 s timeout. Once Redis answers again, the same reader reads again."""
    from features.online import STORE_ERRORS
    from tests.conftest import RedisServer

    server = RedisServer()
    try:
        reader = materialized_reader(on_redis(settings, server.url, redis_timeout_s=0.5), layout)
        user = shop["user_id"].iloc[-1]
        assert reader.read_user(user, END)[1]["user_activity"] == "fresh"
        server.pause()
        try:
            started = time.monotonic()
            with pytest.raises(STORE_ERRORS):
                reader.read_user(user, END)
            assert time.monotonic() - started < 1.5
        finally:
            server.resume()
        assert reader.read_user(user, END)[1]["user_activity"] == "fresh"
    finally:
        server.stop()


def test_one_row_is_judged_by_the_same_rule_as_a_column():
    import numpy as np

    from features.online import _judge, _judge_one, _stamps

    now = pd.Timestamp("2011-12-09", tz="UTC")
    day = pd.Timedelta("1D").value
    stamps = [None, now.value, now.value - day, now.value - day - 1, now.value + day]
    for ttl in (0, day):
        column = _judge(_stamps(stamps), ttl, now)[1]
        assert [_judge_one(stamp, ttl, now) for stamp in stamps] == list(column), ttl
    assert list(np.unique(_judge(_stamps(stamps), day, now)[1])) == ["fresh", "missing", "stale"]


def test_item_rows_judged_once_per_freshness_epoch_equal_judging_every_moment():
    import numpy as np

    from features.online import ItemRows, _blank, _judge, _stamps

    day = pd.Timedelta("1D").value
    start = pd.Timestamp("2011-12-01", tz="UTC")
    stamps = _stamps([start.value, start.value + 2 * day, None, start.value + 5 * day])
    columns = {"item_popularity__views_7d": np.array([1.0, 2.0, 3.0, 4.0], np.float32)}
    price = {"item_catalog__price": np.array([5.0, 6.0, 7.0, 8.0], np.float32)}
    rows = ItemRows([("item_popularity", 2 * day, stamps, columns), ("item_catalog", 0, stamps, price)])
    moments = [start + pd.Timedelta(hours=h) for h in range(0, 24 * 9, 7)] + [start + pd.Timedelta(2, "D")]
    for now in moments + moments[::-1]:  # forwards, then back in time
        values, statuses = rows.at(now, np.array([3, 0, 1, 2]))
        fresh, expected = _judge(stamps, 2 * day, now)
        assert list(statuses["item_popularity"]) == list(expected[[3, 0, 1, 2]]), now
        np.testing.assert_array_equal(values["item_popularity__views_7d"],
                                      _blank(columns["item_popularity__views_7d"], fresh)[[3, 0, 1, 2]])  # fmt: skip
    assert set(rows.at(start)[1]["item_catalog"]) == {"fresh", "missing"}  # no TTL: never stale
