"""The feature server other teams query (features/server.py), in-process on a small materialised store: Feast's own
app, with values older than their view's TTL at the clock answered OUTSIDE_MAX_AGE and null, as the serving read
path judges them, and the API key in front of every path but /health."""

import os
import signal
import socket
import subprocess
import sys
import time

import httpx
import pandas as pd
import pytest
from pydantic import SecretStr
from starlette.testclient import TestClient

from core.layout import Layout, write_json
from core.settings import Settings
from features.build import build
from features.online import FRESH, MISSING, STALE, OnlineFeatures
from features.server import Clock, _stamp_ns, create_app
from features.store import apply, materialize, open_store
from tests.features.conftest import write_synthetic_shop

END = pd.Timestamp("2024-03-22", tz="UTC")  # the shop's logical time, long before the wall clock (a replay)
OLD = END - pd.Timedelta(days=5)  # older than the 2-day TTL of the snapshot views at END
KEY = "feature-server-test-key"


@pytest.fixture(scope="module")
def shop(tmp_path_factory):
    """A materialised store at END, its ledger saying the shop's time is END, and one item row stamped OLD."""
    settings = Settings(home=tmp_path_factory.mktemp("feature-server") / "home")
    layout = Layout(settings.home)
    events = write_synthetic_shop(layout, 2_000, n_users=80, n_items=60, days=21, seed=11)
    build(layout)
    store = open_store(settings)
    apply(store, settings)
    materialize(store, layout, END)
    write_json(layout.gate_record("b1"), {"batch_id": "b1", "status": "accepted", "accepted": len(events),
                                          "moves_clock": True, "as_of": END.isoformat()})  # fmt: skip
    # An item whose popularity stopped at OLD: stale at END, where every other item is fresh.
    latest = pd.read_parquet(layout.features / "item_popularity").sort_values("event_timestamp").tail(1)
    store.write_to_online_store("item_popularity", latest.assign(item_id="old-item", event_timestamp=OLD))
    return settings, store, events


def client(shop, clock, api_key=None, raise_server_exceptions=True):
    settings, store, _ = shop
    if api_key:
        settings = settings.model_copy(update={"api_key": SecretStr(api_key)})
    app = create_app(store, settings, clock=clock, registry_ttl_sec=0)
    return TestClient(app, raise_server_exceptions=raise_server_exceptions)


def online(http, users, items, service="ranker_v1", **extra):
    answer = http.post("/get-online-features", json={"feature_service": service, "full_feature_names": True,
                                                     "entities": {"user_id": users, "item_id": items}, **extra})  # fmt: skip
    assert answer.status_code == 200, answer.text
    body = answer.json()
    columns = {name: result for name, result in zip(body["metadata"]["feature_names"], body["results"], strict=True)}
    return answer, columns


def test_the_shop_clock_reads_a_replay_fresh_and_the_wall_clock_stale(shop):
    events = shop[2]
    user, item = events["user_id"].iloc[-1], events["item_id"].iloc[-1]
    with client(shop, "shop") as http:
        answer, columns = online(http, [user], [item])
    assert answer.headers["x-shoprec-clock"] == "shop 2024-03-22T00:00:00+00:00"
    activity = columns["user_activity__purchases_30d"]
    assert activity["statuses"] == ["PRESENT"] and activity["values"][0] is not None
    assert columns["item_popularity__views_7d"]["statuses"] == ["PRESENT"]
    with client(shop, "wall") as http:
        answer, columns = online(http, [user], [item])
    assert answer.headers["x-shoprec-clock"].startswith("wall ")
    # 2024 is older than the 2-day TTL by the wall clock: Feast's own status for it, and no value.
    for name in ("user_activity__purchases_30d", "user_activity__recent_items", "item_popularity__views_7d"):
        assert columns[name]["statuses"] == ["OUTSIDE_MAX_AGE"] and columns[name]["values"] == [None], name
    # TTL 0 never goes stale: the user's history and the catalog keep their values however old.
    for name in ("user_history__history_items", "item_catalog__price"):
        assert columns[name]["statuses"] == ["PRESENT"] and columns[name]["values"][0] is not None, name
    assert columns["user_id"]["values"] == [user], "join keys are left alone"


def test_an_old_row_is_stale_a_fresh_one_present_and_an_unknown_not_found(shop):
    events = shop[2]
    fresh = events["item_id"].iloc[-1]
    users = [events["user_id"].iloc[-1]] * 3
    with client(shop, "shop") as http:
        _, columns = online(http, users, [fresh, "old-item", "no-such-item"])
    popularity = columns["item_popularity__purchases_30d"]
    assert popularity["statuses"] == ["PRESENT", "OUTSIDE_MAX_AGE", "NOT_FOUND"]
    assert popularity["values"][0] is not None and popularity["values"][1:] == [None, None]
    assert _stamp_ns(popularity["event_timestamps"][1]) == OLD.value, "the stamp still says how old it is"
    assert columns["item_catalog__price"]["statuses"][2] == "NOT_FOUND"
    with client(shop, "shop") as http:
        _, columns = online(http, ["no-such-user"], [fresh])
    for name in ("user_activity__views_7d", "user_history__history_items"):
        assert columns[name]["statuses"] == ["NOT_FOUND"], name


@pytest.mark.parametrize("at", [END, END + pd.Timedelta(days=1, hours=12), END + pd.Timedelta(days=3)])
def test_statuses_are_the_serving_read_paths_at_the_same_clock(shop, at, monkeypatch):
    settings, store, events = shop
    user = events["user_id"].iloc[-1]
    items = [*events["item_id"].drop_duplicates().head(30), "old-item", "no-such-item"]
    monkeypatch.setattr(Clock, "now", lambda self: (at.value, "shop"))
    with client(shop, "shop") as http:
        _, columns = online(http, [user] * len(items), items)
    read = OnlineFeatures(store, "ranker_v1", Layout(settings.home)).read(user, items, as_of=at)
    expected = {FRESH: {"PRESENT", "NULL_VALUE"}, STALE: {"OUTSIDE_MAX_AGE"}, MISSING: {"NOT_FOUND"}}
    for view, feature in [("user_activity", "views_7d"), ("user_history", "history_items"),
                          ("item_popularity", "purchases_30d"), ("item_catalog", "category")]:  # fmt: skip
        statuses = columns[f"{view}__{feature}"]["statuses"]
        judged = read.user_status[view] if view.startswith("user") else read.item_status[view]
        judged = [judged] * len(items) if isinstance(judged, str) else list(judged)
        assert all(s in expected[j] for s, j in zip(statuses, judged, strict=True)), (view, statuses, judged)
    assert STALE in list(read.item_status["item_popularity"]), "old-item is stale at every clock here"


def test_feature_lists_and_short_names_are_judged_too(shop):
    events = shop[2]
    with client(shop, "wall") as http:
        answer = http.post("/get-online-features", json={
            "features": ["item_popularity:views_7d", "item_catalog:category"],
            "entities": {"item_id": [events["item_id"].iloc[-1]]}})  # fmt: skip
    body = answer.json()
    columns = dict(zip(body["metadata"]["feature_names"], body["results"], strict=True))
    assert columns["views_7d"]["statuses"] == ["OUTSIDE_MAX_AGE"] and columns["views_7d"]["values"] == [None]
    assert columns["category"]["statuses"] == ["PRESENT"]


def test_the_key_guards_every_path_but_health(shop):
    request = {
        "feature_service": "ranker_v1",
        "entities": {"user_id": ["u"], "item_id": ["i"]},
        "full_feature_names": True,
    }
    with client(shop, "shop", api_key=KEY) as http:
        assert http.get("/health").status_code == 200, "the health check stays open"
        assert http.post("/get-online-features", json=request).status_code == 401
        wrong = http.post("/get-online-features", json=request, headers={"X-API-Key": KEY + "x"})
        assert wrong.status_code == 401 and KEY not in wrong.text
        assert http.post("/push", json={}).status_code == 401
        assert http.post("/materialize", json={}).status_code == 401
        assert http.post("/get-online-features", json=request, headers={"X-API-Key": KEY}).status_code == 200
        bearer = http.post("/get-online-features", json=request, headers={"Authorization": f"Bearer {KEY}"})
        assert bearer.status_code == 200
    with client(shop, "shop") as http:  # no key set: open, as Feast's own server (development)
        assert http.post("/get-online-features", json=request).status_code == 200


def test_bad_requests_are_feasts_answers(shop):
    with client(shop, "shop", raise_server_exceptions=False) as http:
        assert http.post("/get-online-features", content=b"not json").status_code == 422
        unknown = http.post("/get-online-features", json={"feature_service": "no_such_service",
                                                          "entities": {"user_id": ["u"]}})  # fmt: skip
        assert unknown.status_code == 404 and "no_such_service" in unknown.text
        assert "x-shoprec-clock" in unknown.headers


def test_shoprec_feature_server_runs_it_with_the_key(shop):
    """The command the compose stack runs, as a real process: /health open, 401 without the key, 200 with it."""
    settings = shop[0]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "SHOPREC_HOME": str(settings.home), "SHOPREC_API_KEY": KEY, "SHOPREC_SERVING_CLOCK": "shop"}
    command = [sys.executable, "-m", "shoprec", "feature-server", "--port", str(port)]
    server = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              start_new_session=True)  # fmt: skip
    request = {"feature_service": "ranker_v1", "entities": {"user_id": ["u"], "item_id": ["i"]},
               "full_feature_names": True}  # fmt: skip
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
            for _ in range(240):
                try:
                    if http.get("/health").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert server.poll() is None, server.stdout.read().decode()
                time.sleep(0.25)
            assert http.post("/get-online-features", json=request).status_code == 401
            answer = http.post("/get-online-features", json=request, headers={"X-API-Key": KEY})
            assert answer.status_code == 200 and answer.headers["x-shoprec-clock"].startswith("shop 2024-03-22")
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        output = server.communicate(timeout=30)[0].decode()
    assert KEY not in output, "the key is never logged"
    assert "API key required" in output
