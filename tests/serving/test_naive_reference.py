"""bench/serving.py's naive reference service really reads through Feast's SDK: its answers are the service's
(the same champion and request path) while every feature comes from get_online_features. Since a refactor let the
reference read the service's own fast path instead, its throughput measured nothing: this keeps it honest."""

from unittest import mock

import numpy as np

from core.layout import Layout, lake_as_of
from core.settings import Settings
from features.build import lake_days, read_events
from features.store import open_store
from serving.champion import load_champion
from serving.recommend import recommend


def test_the_naive_reference_answers_as_the_service_reading_every_feature_through_feasts_sdk(retail_home):
    from bench.naive_service import naive_champion

    settings = Settings(home=retail_home, serving_clock="shop")
    layout = Layout(retail_home)
    moment = lake_as_of(layout)
    store = open_store(settings)
    champion = load_champion(settings, store, moment)
    naive = naive_champion(settings, store, moment)
    events = read_events(layout, lake_days(layout)[-1])
    users = np.sort(events[events["event_timestamp"] >= moment - np.timedelta64(7, "D")]["user_id"].unique())[:5]
    calls = []
    original = type(store).get_online_features

    def counted(self, *args, **kwargs):
        calls.append(len(kwargs["entity_rows"]))
        return original(self, *args, **kwargs)

    with mock.patch.object(type(store), "get_online_features", counted):
        for user in users:
            calls.clear()
            expected = recommend(champion, user, 10, now=moment)
            assert not calls, "the service reads its online store directly, not through the SDK"
            answer = recommend(naive, user, 10, now=moment)
            assert answer.fallback is None and [i for i, _, _ in answer.items] == [i for i, _, _ in expected.items]
            np.testing.assert_allclose([s for _, s, _ in answer.items], [s for _, s, _ in expected.items], atol=1e-6)
            # the user's row once, then the candidates' item rows (the ranker's 30 and the user's past items)
            assert calls[0] == 1 and len(calls) >= 2 and max(calls[1:]) >= 30, calls
