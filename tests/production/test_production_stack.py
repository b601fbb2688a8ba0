"""The production configuration, run as processes (there is no Docker engine in CI): Airflow 3 with the
LocalExecutor on Postgres through its real scheduler over the three DAGs, Feast with the SQL registry on Postgres and
the Redis online store, and `shoprec serve` reading Redis. And its faults, as tests: the scheduler killed in the
middle of a run, Postgres down during one, Redis gone or hung while the service answers.

One stack per module (tests/production/conftest.py). The chain runs once, with the faults injected into it: the
scheduler is SIGKILLed (with its executor's workers and their tasks, as when its container dies) while ingest_events
judges its second batch, and Postgres is down for a minute while retrain_models trains; an undisturbed run of the same tasks'
functions on a copy of the same landing zone is the reference the lake and the online store must equal.
"""

import hashlib
import signal
import subprocess
import sys
import time
import uuid

import httpx
import pandas as pd
import pytest

from core.layout import Layout, lake_as_of
from core.settings import Settings
from tests.conftest import free_port
from tests.production.conftest import land_shop

USER = "12748"  # a frequent buyer of the shop's last weeks
# What a request may cost when Redis is gone: BentoML's request timeout (serving/service.py traffic) plus slack.
REQUEST_TIMEOUT_S = 15
# What it may cost when Redis fails: one read of SHOPREC_REDIS_TIMEOUT_S (2 s), no retries, plus slack.
STORE_FAILURE_S = 5
# Postgres down this long while the two-tower trains: past the scheduler's task heartbeat timeout (30 s in the
# stack), so the task Airflow could not hear from is failed and retried, and the scheduler is restarted.
OUTAGE_S = 60
# The chain runs inside the first test's fixtures: a retrain under Airflow on a shared 2-core machine.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]


def tree_digest(folder) -> dict[str, str]:
    """Every file under folder by its relative path, as the SHA-256 of its bytes."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}  # fmt: skip


def running_tis(stack, dag_id: str) -> list[dict]:
    runs = stack.runs(dag_id)
    if not runs:
        return []
    return [ti for ti in stack.task_instances(dag_id, runs[-1]["dag_run_id"]) if ti["state"] == "running"]


@pytest.fixture(scope="module")
def ingested(stack):
    """ingest_events' one run, its scheduler killed while the second batch is being judged, then restarted."""
    stack.unpause("materialize_features")
    stack.unpause("ingest_events")

    def judging_second():
        return [ti for ti in running_tis(stack, "ingest_events")
                if ti["task_id"] == "validate_batch" and ti["map_index"] == 1]  # fmt: skip

    stack.wait(judging_second, "ingest_events judging its second batch", timeout=300, every=0.3)
    time.sleep(1.0)  # into the gate's work: its lake partitions are being written
    in_flight = running_tis(stack, "ingest_events")
    stack.kill("scheduler", signal.SIGKILL)
    killed_at = pd.Timestamp.now(tz="UTC")
    time.sleep(2)
    stack.start_scheduler()
    run = stack.wait_run("ingest_events", timeout=420)
    return {"run": run, "in_flight": in_flight, "killed_at": killed_at}


@pytest.fixture(scope="module")
def materialized(stack, ingested):
    """materialize_features' runs (one per ingest Asset event the scheduler saw) all ended, the last one after
    ingest's last batch."""
    last_batch = max(pd.Timestamp(ti["end_date"]) for ti in stack.task_instances("ingest_events",
                     ingested["run"]["dag_run_id"]) if ti["task_id"] == "validate_batch")  # fmt: skip

    def settled():
        runs = stack.runs("materialize_features")
        done = runs and all(r["state"] in ("success", "failed") for r in runs)
        return done and pd.Timestamp(runs[-1]["start_date"]) >= last_batch and runs

    return stack.wait(settled, "materialize_features after the last batch", timeout=420, every=2)


@pytest.fixture(scope="module")
def retrained(stack, materialized):
    """retrain_models' one run, Postgres down for OUTAGE_S (every connection cut) while the two-tower trains."""
    stack.unpause("retrain_models")

    def training():
        return [ti for ti in running_tis(stack, "retrain_models") if ti["task_id"] == "train_two_tower"]

    stack.wait(training, "retrain_models training its two-tower", timeout=600, every=1)
    time.sleep(2)
    stack.postgres.outage(OUTAGE_S, meanwhile=stack.supervise)
    return stack.wait_run("retrain_models", timeout=900)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The undisturbed run: the same landing zone through the DAG tasks' own functions, in one process, in the
    embedded Feast environment (the online store then holds what Redis must)."""
    from features.build import build_pending
    from features.store import apply, materialize, open_store
    from validation.catalog import apply_feeds
    from validation.gate import judge_in_order, pending_batches

    settings = Settings(home=tmp_path_factory.mktemp("reference") / "home")
    layout = Layout(settings.home)
    land_shop(settings.home)
    apply_feeds(layout)
    for path in pending_batches(layout):
        judge_in_order(path, layout, settings)
    build_pending(layout, settings)
    store = open_store(settings)
    apply(store, settings)
    materialize(store, layout, lake_as_of(layout))
    return settings


@pytest.fixture(scope="module")
def service(stack, retrained):
    """`shoprec serve` on the stack: the champion from the model store, features from Redis, the shop's clock."""
    port = free_port()
    env = {**stack.env, "SHOPREC_SERVING_CLOCK": "shop", "SHOPREC_SWAP_POLL_S": "0.5"}
    stack.start("serve", sys.executable, "-m", "shoprec", "serve", "--port", str(port), env=env)
    url = f"http://127.0.0.1:{port}"

    def ready():
        try:
            return httpx.get(f"{url}/readyz", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    stack.wait(ready, "the service ready", timeout=240)
    yield url
    stack.kill("serve")


def online_contents(settings: Settings, users: list[str], items: list[str], as_of) -> dict[str, pd.DataFrame]:
    """Every view's online values for these entities, read through Feast, one frame per view, as serving sees
    them: a value older than its view's TTL at as_of is blanked (features/online.py's rule; Feast ignores TTL on
    online reads, feast#6821). How far back a materialisation reached is then no difference: only what is served."""
    from features.store import open_store

    store = open_store(settings)
    frames = {}
    for view in sorted(store.list_feature_views(), key=lambda v: v.name):
        key, names = view.join_keys[0], [f.name for f in view.features]
        rows = [{key: k} for k in (users if key == "user_id" else items)]
        answer = store.get_online_features(features=[f"{view.name}:{n}" for n in names], entity_rows=rows)
        frame = pd.DataFrame(answer.to_dict(include_event_timestamps=True))
        if view.ttl:
            stale = pd.to_datetime(frame[f"{names[0]}__ts"], unit="s", utc=True) < as_of - pd.Timedelta(view.ttl)
            frame.loc[stale, names] = None
        frame = frame.drop(columns=[c for c in frame.columns if c.endswith("__ts")])
        frame = frame.sort_values(key).reset_index(drop=True)
        frames[view.name] = frame.map(lambda v: tuple(v) if isinstance(v, list) else v)
    return frames


def test_the_chain_runs_on_the_production_configuration(stack, materialized, retrained, service):
    runs = {dag_id: stack.runs(dag_id) for dag_id in ("ingest_events", "materialize_features", "retrain_models")}
    assert [r["state"] for r in runs["ingest_events"]] == ["success"]
    assert {r["state"] for r in runs["materialize_features"]} == {"success"}
    assert [r["state"] for r in runs["retrain_models"]] == ["success"]
    # Feast's registry is the SQL one on Postgres, its online store Redis: both hold the shop.
    import psycopg

    with psycopg.connect(stack.postgres.url("feast", "psycopg").replace("postgresql+psycopg", "postgresql")) as db:
        views = {row[0] for row in db.execute("SELECT feature_view_name FROM feature_views")}
    assert {"user_activity", "item_popularity", "item_catalog", "user_history"} <= views
    keys = subprocess.run(
        ["redis-cli", "-p", str(stack.redis.port), "dbsize"], check=False, capture_output=True, text=True
    )
    assert int(keys.stdout) > 1000, "the online store holds the shop's users and items"
    assert not (stack.home / "feast" / "online.db").exists(), "nothing went to the embedded SQLite store"
    answer = httpx.post(f"{service}/recommend", json={"user_id": USER, "k": 5}, timeout=REQUEST_TIMEOUT_S)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert len(body["items"]) == 5 and body["fallback"] is None, body
    assert body["feature_status"]["stale"] == [], "the materialised features read fresh on the shop's clock"


def test_a_killed_scheduler_loses_nothing_and_doubles_nothing(stack, ingested, materialized, reference):
    # The kill landed in the middle of the run: the second batch's task was running.
    assert any(ti["task_id"] == "validate_batch" for ti in ingested["in_flight"]), ingested["in_flight"]
    assert ingested["run"]["state"] == "success"
    tis = stack.task_instances("ingest_events", ingested["run"]["dag_run_id"])
    assert all(ti["state"] == "success" for ti in tis), [(t["task_id"], t["map_index"], t["state"]) for t in tis]
    # The lake, the quarantine and the feature tables equal the undisturbed run's, file by file, byte by byte.
    here, there = Layout(stack.home), Layout(reference.home)
    for folder in ("events", "quarantine", "catalog"):
        assert tree_digest(getattr(here, folder)) == tree_digest(getattr(there, folder)), f"{folder} differs"
    # The feature tables hold the same rows. Their created_timestamp is the lake's time at the build that wrote
    # them, and materialize_features built once per Asset event it saw (how many depends on timing), so it is left
    # out; build.json records the last build.
    tables = sorted(p.relative_to(there.features) for p in there.features.rglob("*.parquet"))
    assert tables == sorted(p.relative_to(here.features) for p in here.features.rglob("*.parquet"))
    for table in tables:
        mine, theirs = (
            pd.read_parquet(l.features / table).drop(columns="created_timestamp", errors="ignore")
            for l in (here, there)
        )
        pd.testing.assert_frame_equal(mine, theirs, obj=str(table))
    # Every batch accepted once: the ledger names each batch once, with the undisturbed run's counts.
    ledger = sorted((r["batch_id"], r["received"], r["accepted"]) for r in here.accepted_records())
    assert ledger == sorted((r["batch_id"], r["received"], r["accepted"]) for r in there.accepted_records())
    assert len({b for b, _, _ in ledger}) == len(ledger) == 3
    # The online store (Redis, written by materialize_features) holds what the undisturbed run's does.
    events = pd.read_parquet(there.events)
    users, items = sorted(events["user_id"].unique()), sorted(events["item_id"].unique())
    as_of = lake_as_of(there)
    mine, theirs = (online_contents(s, users, items, as_of) for s in (stack.settings, reference))
    assert mine.keys() == theirs.keys()
    for view in mine:
        pd.testing.assert_frame_equal(mine[view], theirs[view], check_dtype=False, obj=view)


def test_a_postgres_outage_during_training_is_retried_to_success(stack, retrained):
    """Postgres gone for a minute: the scheduler exits and is started again by the restart policy (stack.restarts),
    crash-looping with backoff until the database is back, as compose does; the training task, unheard of past
    its heartbeat timeout, is failed and retried; the processes reconnect (the Execution API, Feast's registry with
    pool_pre_ping); the run succeeds."""
    assert retrained["state"] == "success", stack.restarts
    tis = stack.task_instances("retrain_models", retrained["dag_run_id"])
    tries = [(t["task_id"], t["try_number"], t["state"]) for t in tis]
    assert all(ti["state"] == "success" for ti in tis), tries
    assert any(ti["try_number"] > 1 for ti in tis), f"no task was retried: {tries}"
    # One retraining run published one model: retries published no second version.
    from training import publish as model_store

    versions = [m.tag for m in model_store._store(stack.settings).list("shoprec_recommender")]
    assert len(versions) == 1, versions
    assert model_store.champion(stack.settings) == str(versions[0])


def test_a_retried_publish_adds_no_model_version(stack, retrained):
    """A publish task whose first try died after the model entered the store (a scheduler or worker lost at that
    moment) runs again: the retry must find the version it made, not make a second one."""
    from training import publish as model_store
    from training.retrain import publish

    before = model_store.champion(stack.settings)
    again = publish(stack.settings, retrained["dag_run_id"])
    versions = [str(m.tag) for m in model_store._store(stack.settings).list("shoprec_recommender")]
    assert versions == [before] and again["champion"] == before, versions


def assert_fallback_while_redis_fails(service) -> None:
    """/recommend answers within one store timeout (never hangs, never 500s): a user whose row the service has not
    read gets a stated fallback or 503; USER, read before, may get their own answer from the row the worker
    remembers (rows change only with a materialisation). /readyz says why it is not ready."""
    for user in (USER, f"never-read-{uuid.uuid4().hex[:8]}"):
        started = time.monotonic()
        answer = httpx.post(f"{service}/recommend", json={"user_id": user, "k": 5}, timeout=REQUEST_TIMEOUT_S)
        took = time.monotonic() - started
        assert took < STORE_FAILURE_S, f"{took:.1f} s"
        assert answer.status_code in (200, 503), (answer.status_code, answer.text)
        if answer.status_code == 503:
            assert "redis" in answer.text.lower() or "online store" in answer.text.lower(), answer.text
        elif user != USER or answer.json()["fallback"] is not None:
            assert "online store unavailable" in answer.json()["fallback"], answer.text  # stated, not silent
    ready = httpx.get(f"{service}/readyz", timeout=10)
    assert ready.status_code == 503, ready.text
    assert "online store" in ready.text.lower() or "redis" in ready.text.lower(), ready.text


def assert_personal_again(stack, service) -> None:
    """Redis answering again: the worker's probe finds it by itself (ready), and reads answer from it again."""

    def ready():
        return httpx.get(f"{service}/readyz", timeout=10).status_code == 200

    stack.wait(ready, "the service ready again", timeout=60, every=1)
    answer = httpx.post(f"{service}/recommend", json={"user_id": USER, "k": 5}, timeout=REQUEST_TIMEOUT_S)
    assert answer.status_code == 200 and answer.json()["fallback"] is None, answer.text
    never_read = {"user_id": f"never-read-{uuid.uuid4().hex[:8]}", "k": 5}
    answer = httpx.post(f"{service}/recommend", json=never_read, timeout=REQUEST_TIMEOUT_S)
    assert answer.json()["fallback"].startswith("unknown user"), answer.text  # Redis read it: not in the store


# Redis's two failures: gone (the port refuses connections; it comes back with its data), and hung (SIGSTOPped: the
# port still accepts connections and nothing answers, as a server stuck in a long command or a dead network path
# looks). A read gives up after SHOPREC_REDIS_TIMEOUT_S (2 s), once: redis-py's default retries held a request
# up to 15 s.
REDIS_FAULTS = {"gone": ("stop", "start"), "hung": ("pause", "resume")}


@pytest.mark.parametrize("fault", REDIS_FAULTS)
def test_redis_failing_the_service_answers_fast_and_recovers(stack, service, fault):
    """Redis failing: a stated fallback or 503 within one store timeout, /readyz says why; Redis answering again:
    the service answers from it again by itself."""
    fail, mend = REDIS_FAULTS[fault]
    assert httpx.post(f"{service}/recommend", json={"user_id": USER, "k": 5}, timeout=10).status_code == 200
    getattr(stack.redis, fail)()
    try:
        assert_fallback_while_redis_fails(service)
    finally:
        getattr(stack.redis, mend)()
    assert_personal_again(stack, service)
