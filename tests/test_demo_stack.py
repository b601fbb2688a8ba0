"""`make demo`'s path, headless: the embedded stack started as background processes, the real Airflow scheduler
running ingest_events -> materialize_features (Asset) -> retrain_models on a three-week replay, read back through the
REST API; the lake, the online store and the champion on disk; /recommend and the feature server answering; `stop`
leaving no process behind; and no generated secret in any log of the run."""

import socket
import time

import httpx
import pytest

from core.layout import Layout
from core.settings import Settings
from features.store import materialized_version
from shoprec.demo import bring_up, summary
from shoprec.stack import DAGS, Ports, Stack

# The whole chain under the real scheduler: 198 s on the quiet 2-core machine, over 10 min with a training job
# beside it; the one limit covers the module fixture that brings the stack up inside the first test.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]

SINCE = "2011-11-21"  # three weekly batches, about 40k events: the serving tests' shop
USER, ITEM = "12748", "23084"  # a customer of every one of those weeks; an item sold in them


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """The stack brought up once for this module, on free ports; stopped at the end whatever happened."""
    root = tmp_path_factory.mktemp("demo-stack")
    lines: list[str] = []
    began = time.monotonic()
    ports = Ports(*(free_port() for _ in range(5)))
    stack = Stack(root / "home", root / "home" / "airflow", ports, preset="tiny", say=lambda text: lines.append(f"{time.monotonic() - began:5.0f} s {text}"))
    stack.lines = lines
    try:
        stack.api = bring_up(stack, replay_args=["--every", "week", "--since", SINCE])
        stack.summary = summary(stack, stack.api)
        yield stack
    finally:
        print("\n".join(lines))
        stack.stop()


def test_the_scheduler_runs_the_chain_and_the_service_answers(stack):
    runs = {dag_id: stack.api.runs(dag_id) for dag_id in DAGS}
    for dag_id, found in runs.items():
        assert found, f"{dag_id} has no run"
        assert {r["state"] for r in found} == {"success"}, (dag_id, found)
    assert {r["run_type"] for r in runs["ingest_events"]} == {"scheduled"}, "unpausing started the hourly run"
    assert {r["run_type"] for r in runs["materialize_features"]} == {"asset_triggered"}
    assert [r["run_type"] for r in runs["retrain_models"]] == ["scheduled"], "one retraining, started by unpausing"
    tasks = stack.api.tasks("retrain_models", runs["retrain_models"][0]["dag_run_id"])
    assert {t["task_id"]: t["state"] for t in tasks}["publish"] == "success"

    layout = Layout(stack.home)
    assert list(layout.events.rglob("*.parquet")), "the lake holds the accepted events"
    assert materialized_version(layout) > 0, "the online store was materialised"
    from training.publish import champion

    assert champion(Settings(home=stack.home)) is not None

    answer = httpx.post(f"{stack.serving_url}/recommend", json={"user_id": USER, "k": 5}, timeout=30)
    assert answer.status_code == 200, answer.text
    assert len(answer.json()["items"]) == 5
    query = {"features": ["item_catalog:title"], "entities": {"item_id": [ITEM]}}
    features = httpx.post(f"{stack.features_url}/get-online-features", json=query, timeout=30)
    assert features.status_code == 200, features.text
    assert features.json()["results"][1]["statuses"] == ["PRESENT"], features.text
    assert "password" in stack.summary and "make stop" in stack.summary


def test_rerunning_reuses_the_running_stack(stack):
    pids = {name: stack.running(name) for name in stack.commands()}
    assert all(pids.values()), pids
    bring_up(stack, replay_args=["--every", "week", "--since", SINCE])
    assert {name: stack.running(name) for name in stack.commands()} == pids, "the same processes, none added"
    assert len(stack.api.runs("retrain_models")) == 1, "no second retraining: a champion is published"


def test_no_secret_in_any_log(stack):
    found = stack.secrets()
    assert {"airflow_password", "api_auth.jwt_secret"} <= set(found), found.keys()
    assert stack.passwords_file.stat().st_mode & 0o777 == 0o600
    logs = [p for root in (stack.logs, stack.airflow_home / "logs") for p in root.rglob("*") if p.is_file()]
    assert len(logs) > 10, logs
    for path in logs:
        text = path.read_text(errors="replace")
        leaked = [name for name, value in found.items() if value in text]
        assert not leaked, f"{path} holds {leaked}"


def test_stop_ends_every_process_it_started(stack):
    sessions = stack.sessions()
    assert len(sessions) == len(stack.commands()), sessions
    assert stack.leftovers(sessions), "the stack's processes and their children (workers, task runners)"
    stopped = stack.stop()
    assert len(stopped) == len(stack.commands()), stopped
    assert not list((stack.home / "run").glob("*.pid"))
    assert stack.leftovers(sessions) == [], "no process the stack started, nor a child of one, is left"
