"""Materialisation when the lake's time runs ahead of the feature build: under the real scheduler, ingest accepts
more batches while materialize_features runs, so the lake's logical time can be past the last day built. Found by
the demo stack: the first run's end became every view's start, and the days built later never reached the online
store (a user's features stayed at their first month)."""

import pandas as pd

from features.build import build
from features.store import apply, built_until, materialize, open_store
from tests.features.conftest import write_synthetic_shop

END = pd.Timestamp("2024-03-22", tz="UTC")  # the end of the shop's last day


def test_a_materialisation_never_runs_past_the_build(layout, settings):
    shop = write_synthetic_shop(layout, 4_000, n_users=200, n_items=150, days=21, seed=3)
    later = layout.events / "event_date=2024-03-15"
    hidden = {p: p.read_bytes() for day in range(15, 22) for p in (layout.events / f"event_date=2024-03-{day}").glob("*")}
    for path in hidden:
        path.unlink()
    build(layout)
    assert built_until(layout) == pd.Timestamp("2024-03-15", tz="UTC")
    store = open_store(settings)
    apply(store, settings)
    first = materialize(store, layout, END)  # the lake's time already says the 22nd
    assert {end for _, end in first["materialized"].values()} == {"2024-03-15T00:00:00+00:00"}

    for path, data in hidden.items():
        path.write_bytes(data)
    assert later.exists()
    build(layout)
    second = materialize(store, layout, END)
    assert {tuple(v) for v in second["materialized"].values()} == {("2024-03-15T00:00:00+00:00", END.isoformat())}
    user = shop.sort_values("event_timestamp")["user_id"].iloc[-1]
    row = store.get_online_features(features=["user_activity:purchases_30d"], entity_rows=[{"user_id": user}])
    assert row.to_dict()["purchases_30d"][0] is not None
