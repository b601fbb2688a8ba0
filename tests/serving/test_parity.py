"""Training/serving skew: for a sample of users at a fixed moment, the online request path returns the same top-k,
with scores within 1e-4, as offline scoring of the same champion (Feast's point-in-time join) at that moment."""

import numpy as np

from core.layout import Layout, lake_as_of
from core.settings import Settings
from features.build import lake_days, read_events
from features.store import open_store
from serving.champion import load_champion
from serving.recommend import recommend
from training import artefact, publish

K = 10


def test_online_top_k_equals_offline_scoring_of_the_same_champion(retail_home):
    settings = Settings(home=retail_home, serving_clock="shop")
    layout = Layout(retail_home)
    moment = lake_as_of(layout)  # a midnight: the snapshot both paths read
    store = open_store(settings)
    champion = load_champion(settings, store, moment)
    assert champion.exact, "Online Retail's catalog is small enough for the exact index"
    offline = artefact.load(publish.champion_path(settings), store, as_of=moment, now=moment)

    events = read_events(layout, lake_days(layout)[-1])
    recent = events[events["event_timestamp"] >= moment - np.timedelta64(7, "D")]["user_id"].unique()
    users = np.random.default_rng(0).choice(np.sort(recent), size=min(25, len(recent)), replace=False)
    scores = offline.score(users.astype(object), champion.item_ids, "all")
    for user, row in zip(users, scores, strict=True):
        online = recommend(champion, user, K, now=moment)
        assert online.fallback is None, f"user {user} has fresh features at the shop's clock"
        catalog_rows = np.flatnonzero(champion.in_catalog)
        top = catalog_rows[np.argsort(-row[catalog_rows], kind="stable")[:K]]
        assert [item for item, _, _ in online.items] == list(champion.item_ids[top]), user
        np.testing.assert_allclose([score for _, score, _ in online.items], row[top], atol=1e-4)


def test_a_returning_user_skips_the_user_tower_and_gets_the_same_answer(retail_home, monkeypatch):
    """The user vector is remembered per (user, their views' freshness) for the champion's life: a second request
    runs no tower and answers the same; a clock past the features' TTL (another freshness) runs it again; with
    serving_remembered_users=0 every request runs it."""
    from training.pipeline import Retrieval

    layout = Layout(retail_home)
    moment = lake_as_of(layout)
    events = read_events(layout, lake_days(layout)[-1])
    user = str(events.sort_values("event_timestamp")["user_id"].iloc[-1])  # active on the newest day
    towers = []
    real = Retrieval.users
    monkeypatch.setattr(Retrieval, "users", lambda self, ids: towers.append(list(ids)) or real(self, ids))
    settings = Settings(home=retail_home, serving_clock="shop")
    champion = load_champion(settings, open_store(settings), moment)
    first, again = recommend(champion, user, K, now=moment), recommend(champion, user, K, now=moment)
    assert first.fallback is None and first.items == again.items and towers == [[user]]
    later = recommend(champion, user, K, now=moment + np.timedelta64(400, "D"))  # user_activity's TTL passed
    assert later.statuses["user_activity"] == "stale" and later.statuses["user_history"] == "fresh"
    assert later.fallback is None and towers == [[user], [user]]  # blanked activity: another vector
    assert recommend(champion, user, K, exclude=[first.items[0][0]], now=moment).items[0] == first.items[1]
    assert towers == [[user], [user]]  # the exclude list filters after the tower: still remembered

    towers.clear()
    settings = Settings(home=retail_home, serving_clock="shop", serving_remembered_users=0)
    champion = load_champion(settings, open_store(settings), moment)
    assert recommend(champion, user, K, now=moment).items == recommend(champion, user, K, now=moment).items == first.items
    assert towers == [[user], [user]]
