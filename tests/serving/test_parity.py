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
