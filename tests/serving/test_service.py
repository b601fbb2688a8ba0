"""The recommendation service in-process (BentoML's ASGI app under Starlette's TestClient) on the real Online
Retail shop: answers, cold start, filters, similar items, bad input (a 4xx naming the field, never a 500), the
API key, the body limit, readiness and metrics."""

import pandas as pd
import pytest

from core.layout import Layout, lake_as_of
from training import publish


@pytest.fixture
def client(retail_home, use_home, service_client):
    use_home(retail_home)
    return service_client()


def warm_users(home, n=5) -> list[str]:
    """Users with events in the shop's last week: fresh features at the shop's clock."""
    layout = Layout(home)
    clock = lake_as_of(layout)
    from features.build import lake_days, read_events

    events = read_events(layout, lake_days(layout)[-1])
    recent = events[events["event_timestamp"] >= clock - pd.Timedelta(days=7)]
    return list(recent["user_id"].value_counts().index[:n])


def test_recommend_answers_from_the_champion_with_fresh_features(client, retail_home):
    champion = publish.champion(publish_settings(retail_home))
    for user in warm_users(retail_home):
        answer = client.post("/recommend", json={"user_id": user, "k": 7})
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert len(body["items"]) == 7 and len({i["item_id"] for i in body["items"]}) == 7
        assert {i["reason"] for i in body["items"]} <= {"retrieved", "repurchase"}
        scores = [i["score"] for i in body["items"]]
        assert scores == sorted(scores, reverse=True)
        assert body["model_version"] == champion and body["fallback"] is None and len(body["request_id"]) == 32
        status = body["feature_status"]
        assert status["clock"] == "shop" and status["as_of"].startswith("2011-12-1")
        assert status["views"]["user_activity"] == "fresh" and status["stale"] == []


def test_the_example_request_works_as_documented(client):
    answer = client.post("/recommend", json={})  # every field has its documented default (user 12748, k 10)
    assert answer.status_code == 200 and len(answer.json()["items"]) == 10


def test_filters_exclude_and_ignore_unknown_ids(client, retail_home):
    user = warm_users(retail_home, 1)[0]
    first = [i["item_id"] for i in client.post("/recommend", json={"user_id": user, "k": 5}).json()["items"]]
    again = client.post("/recommend", json={"user_id": user, "k": 5, "exclude": [*first[:2], "no-such-item"]})
    assert again.status_code == 200
    items = [i["item_id"] for i in again.json()["items"]]
    assert not set(first[:2]) & set(items) and items[:3] == first[2:]


def test_already_bought_items_can_be_left_out(client):
    body = client.post("/recommend", json={"user_id": "12748", "k": 20}).json()
    assert any(i["reason"] == "repurchase" for i in body["items"])
    without = client.post("/recommend", json={"user_id": "12748", "k": 20, "exclude_purchased": True}).json()
    assert all(i["reason"] == "retrieved" for i in without["items"])  # 12748's history is all purchases


def test_unknown_users_get_popularity_or_the_session_neighbours(client):
    cold = client.post("/recommend", json={"user_id": "never-seen", "k": 5}).json()
    assert [i["reason"] for i in cold["items"]] == ["popular"] * 5 and "unknown user" in cold["fallback"]
    assert cold["feature_status"]["views"]["user_activity"] == "missing"
    session = client.post("/recommend", json={"user_id": "never-seen", "k": 5, "session_items": ["23084"]}).json()
    assert [i["reason"] for i in session["items"]] == ["similar"] * 5 and "23084" not in str(session["items"])
    strangers = client.post("/recommend", json={"user_id": "never-seen", "k": 3, "session_items": ["nope"]}).json()
    assert [i["reason"] for i in strangers["items"]] == ["popular"] * 3


def test_similar_items_and_an_unknown_item_is_a_clear_404(client):
    answer = client.post("/similar_items", json={"item_id": "23084", "k": 4})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert len(body["items"]) == 4 and "23084" not in [i["item_id"] for i in body["items"]]
    assert body["embedded_from_text"] is False
    missing = client.post("/similar_items", json={"item_id": "no-such-item"})
    assert missing.status_code == 404 and "no-such-item" in missing.text


@pytest.mark.parametrize(
    "payload, field",
    [
        ({"k": 0}, "k"), ({"k": 101}, "k"), ({"k": "ten"}, "k"), ({"k": 2.5}, "k"), ({"user_id": ""}, "user_id"),
        ({"user_id": "x" * 129}, "user_id"), ({"user_id": 12748}, "user_id"), ({"user_id": None}, "user_id"),
        ({"exclude": "23084"}, "exclude"), ({"exclude": [""]}, "exclude"), ({"exclude": ["a"] * 501}, "exclude"),
        ({"session_items": [1, 2]}, "session_items"), ({"exclude_purchased": "maybe"}, "exclude_purchased"),
    ],
)  # fmt: skip
def test_bad_requests_are_400s_that_name_the_field(client, payload, field):
    answer = client.post("/recommend", json=payload)
    assert answer.status_code == 400, answer.text
    assert field in str(answer.json()["detail"][0]["loc"])


@pytest.mark.parametrize("body", [b"not json", b"[1, 2]", b'"12748"', b"{", b"\xff\xfe"])
def test_bodies_that_are_not_a_json_object_are_400s(client, body):
    for path in ("/recommend", "/similar_items"):
        assert client.post(path, content=body, headers={"content-type": "application/json"}).status_code == 400


def test_a_huge_body_is_refused_before_it_is_read(client):
    huge = b'{"user_id": "' + b"x" * 200_000 + b'"}'
    assert client.post("/recommend", content=huge).status_code == 413

    def streamed():  # no Content-Length: the guard counts as it reads
        for _ in range(100):
            yield b"x" * 10_000

    assert client.post("/recommend", content=streamed()).status_code == 413


def test_readiness_and_health(client, retail_home):
    ready = client.get("/readyz")
    assert ready.status_code == 200
    body = ready.json()
    assert body["ready"] and body["model_version"] == publish.champion(publish_settings(retail_home))
    assert body["clock"] == "shop" and body["as_of"].startswith("2011-12")
    assert client.get("/livez").status_code == 200
    assert client.get("/metrics").status_code == 200  # its shoprec_* series: tests/serving/test_http.py


def test_the_api_key_guards_everything_but_health_and_metrics(retail_home, use_home, service_client):
    use_home(retail_home, api_key="a-test-key")
    client = service_client()
    assert client.post("/recommend", json={}).status_code == 401
    assert client.post("/recommend", json={}, headers={"X-API-Key": "wrong"}).status_code == 401
    assert client.get("/docs.json").status_code == 401
    assert client.post("/recommend", json={}, headers={"X-API-Key": "a-test-key"}).status_code == 200
    assert client.post("/similar_items", json={}, headers={"Authorization": "Bearer a-test-key"}).status_code == 200
    for path in ("/livez", "/readyz", "/metrics"):
        assert client.get(path).status_code == 200, path


def test_no_champion_yet_is_a_503_that_says_so(tmp_path, use_home, service_client):
    use_home(tmp_path / "empty")
    client = service_client()
    ready = client.get("/readyz")
    assert ready.status_code == 503 and not ready.json()["ready"]
    assert "no champion" in ready.json()["reason"]
    answer = client.post("/recommend", json={})
    assert answer.status_code == 503 and "no champion" in answer.text


def publish_settings(home):
    from core.settings import Settings

    return Settings(home=home)


def test_a_new_catalog_item_is_reachable_from_its_text_once_materialised(shop_copy, use_home, service_client):
    """An item added after the champion was trained enters the index at the next materialisation, no retrain."""
    import time

    from core.layout import write_parquet
    from features.build import build_pending
    from features.store import materialize, open_store
    from ingest.replay import to_bytes
    from validation.catalog import apply_feeds
    from validation.gate import pending_batches, run_gate

    settings = use_home(shop_copy)
    layout = Layout(shop_copy)
    client = service_client()
    assert client.post("/similar_items", json={"item_id": "NEW-MUG-1"}).status_code == 404
    clock = lake_as_of(layout)
    catalog = pd.read_parquet(layout.catalog)
    mug = catalog[catalog["title"].str.contains("MUG", na=False)].iloc[0]
    new = pd.DataFrame([{**mug.to_dict(), "item_id": "NEW-MUG-1", "title": f"{mug['title']} NEW EDITION",
                         "first_seen": clock + pd.Timedelta(hours=1)}])  # fmt: skip
    write_parquet(new, layout.landing / "catalog" / "zz-new-items.parquet")
    apply_feeds(layout)
    # The next day's trading moves the clock; the new item's catalog row is materialised with it.
    day = pd.DataFrame({"event_id": ["new-1"], "user_id": ["12748"], "item_id": ["NEW-MUG-1"],
                        "event_type": ["purchase"], "event_timestamp": [clock + pd.Timedelta(hours=10)],
                        "session_id": [None], "quantity": [1], "price": [mug["price"]]})  # fmt: skip
    (layout.landing / "next-day.parquet").write_bytes(to_bytes(day, "parquet"))
    assert [run_gate(p, layout, settings, as_of=clock + pd.Timedelta(days=1)).status
            for p in pending_batches(layout)] == ["accepted"]  # fmt: skip
    build_pending(layout, settings)
    materialize(open_store(settings), layout, lake_as_of(layout))

    deadline = time.monotonic() + 60
    while (answer := client.post("/similar_items", json={"item_id": "NEW-MUG-1", "k": 5})).status_code == 404:
        assert time.monotonic() < deadline, "the new item never entered the index"
        time.sleep(0.5)
    body = answer.json()
    assert answer.status_code == 200 and body["embedded_from_text"] is True and len(body["items"]) == 5
    assert "NEW-MUG-1" not in [i["item_id"] for i in body["items"]]
    # It is context for a cold session too.
    session = client.post("/recommend", json={"user_id": "never-seen", "k": 3, "session_items": ["NEW-MUG-1"]})
    assert [i["reason"] for i in session.json()["items"]] == ["similar"] * 3


def test_a_failing_online_store_gets_the_stated_fallback_and_the_service_recovers_by_itself(client, monkeypatch):
    """The online store failing (Redis down: its reads raise): /recommend answers popularity, saying why, not a
    500; /readyz is 503 with the reason; once reads succeed again the poller's probe makes it ready by itself.
    A user the worker remembers (their stored row read before) still gets their own answer: it is what the
    store's row gives. The real Redis stopped and restarted under `bentoml serve`: tests/production/."""
    import time

    from redis.exceptions import ConnectionError as RedisConnectionError

    from features.online import OnlineFeatures

    def down(*_args, **_kwargs):
        raise RedisConnectionError("Error 111 connecting to 127.0.0.1:6379. Connection refused.")

    personal = client.post("/recommend", json={"user_id": "12748", "k": 5}).json()
    assert personal["fallback"] is None
    with monkeypatch.context() as patch:
        patch.setattr(OnlineFeatures, "user_row", down)
        patch.setattr(OnlineFeatures, "read_items", down)
        remembered = client.post("/recommend", json={"user_id": "12748", "k": 5}).json()
        assert remembered["fallback"] is None and remembered["items"] == personal["items"]
        assert client.get("/readyz").status_code == 200, "no read has failed yet"
        answer = client.post("/recommend", json={"user_id": "not-read-before", "k": 5, "exclude": ["23084"]})
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert "online store unavailable (ConnectionError" in body["fallback"]
        assert [i["reason"] for i in body["items"]] == ["popular"] * 5 and "23084" not in str(body["items"])
        assert body["feature_status"]["views"]["user_activity"] == "unavailable"
        ready = client.get("/readyz")
        assert ready.status_code == 503 and "online store unavailable" in ready.json()["reason"]
        assert client.post("/similar_items", json={"item_id": "23084", "k": 3}).status_code == 200  # no store
    deadline = time.monotonic() + 30
    while client.get("/readyz").status_code != 200:  # nobody asks for a recommendation meanwhile
        assert time.monotonic() < deadline, client.get("/readyz").text
        time.sleep(0.2)
    assert client.post("/recommend", json={"user_id": "12748", "k": 5}).json()["items"] == personal["items"]


def test_the_access_log_and_tracing_middleware_run_only_when_asked_for(tmp_path):
    from core.settings import Settings
    from serving.service import API_PATHS, http_config

    quiet = http_config(Settings(home=tmp_path))
    assert quiet["logging"]["access"]["enabled"] is False and quiet["tracing"]["excluded_urls"] == list(API_PATHS)
    loud = http_config(Settings(home=tmp_path, serving_access_log=True, serving_tracing=True))
    assert loud == {"traffic": {"timeout": 10}}  # BentoML's defaults: an access line and spans per request


def test_api_methods_are_looked_up_once_and_still_answer():
    """BentoML's API descriptor builds a new wrapper on every lookup, one per request; the service keeps the one
    it made at start (serving.service.remember_api_methods), which answers as the descriptor's would."""
    import bentoml

    from serving.service import remember_api_methods
    from tests.serving.conftest import in_process

    @bentoml.service
    class Tiny:
        def __init__(self, remember: bool = True):
            if remember:
                remember_api_methods(self)

        @bentoml.api
        async def recommend(self, user_id: str) -> str:
            return f"for {user_id}"

        @bentoml.api
        async def similar_items(self, item_id: str) -> str:
            return f"like {item_id}"

    plain = Tiny.inner(remember=False)
    assert plain.recommend is not plain.recommend  # the descriptor rebuilds it on every lookup
    tiny = Tiny.inner()
    assert tiny.recommend is tiny.recommend and tiny.similar_items.local is tiny.similar_items.local
    with in_process(Tiny) as client:
        assert client.post("/recommend", json={"user_id": "u1"}).text == "for u1"
        assert client.post("/similar_items", json={"item_id": "i1"}).text == "like i1"


def test_the_poller_stops_with_the_service(retail_home, use_home):
    """A service's shutdown stops its champion poller: one left running after an in-process service kept reading
    the process's settings, and could cache them half-changed for the next one (a flaky 503 'no champion')."""
    import threading

    use_home(retail_home)
    from serving.service import Recommender
    from tests.serving.conftest import in_process

    before = {t for t in threading.enumerate() if t.name == "champion-swap"}
    with in_process(Recommender) as client:
        assert client.get("/readyz").status_code == 200
        running = {t for t in threading.enumerate() if t.name == "champion-swap"} - before
        assert len(running) == 1
    assert not any(t.is_alive() for t in running)
