"""`make demo`: the whole system, running, on the embedded defaults; `make stop` ends it.

Replays the bundled Online Retail data into the landing zone, starts the embedded stack in the background (Airflow's
api-server, scheduler, dag-processor and triggerer; the recommendation service; the feature server: shoprec/stack.py),
unpauses the three DAGs and lets the real scheduler run ingest_events -> materialize_features -> retrain_models,
following it through Airflow's REST API a line per run and task state change. It ends with the Airflow login, the
DAGs' last runs, an answer of each endpoint and `make stop`. Run again on a running stack, it reuses what runs.
Everything the libraries print goes to SHOPREC_HOME/logs/<process>.log (task logs: AIRFLOW_HOME/logs).
"""

import json
import os
import sys
import time
from pathlib import Path

import httpx

from core.layout import Layout
from core.settings import get_settings
from shoprec.stack import AIRFLOW_USER, AirflowAPI, Ports, Stack, StackError

EXAMPLE_USER, EXAMPLE_ITEM = "12748", "23084"
FEATURES = ["user_activity:purchases_30d", "item_popularity:purchases_30d", "item_catalog:title"]


def demo_stack() -> Stack:
    settings = get_settings()
    home = settings.home
    airflow_home = Path(os.environ.get("AIRFLOW_HOME", home / "airflow"))
    ports = Ports(
        airflow=int(os.environ.get("DEMO_AIRFLOW_PORT", "8080")),
        serving=settings.serving_port,
        features=int(os.environ.get("DEMO_FEATURE_SERVER_PORT", "6566")),
        worker_logs=int(os.environ.get("AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT", "8793")),
        trigger_logs=int(os.environ.get("AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT", "8794")),
    )
    return Stack(home, airflow_home, ports, preset=os.environ.get("DEMO_PRESET", "tiny"))


def main() -> int:
    stack = demo_stack()
    started = time.perf_counter()
    try:
        # A batch a month by default: under the real scheduler each batch's gate task is a process of its own
        # (10-15 s on two cores), so 13 monthly batches take a few minutes where 53 weekly ones take over ten.
        api = bring_up(stack, replay_args=["--every", os.environ.get("DEMO_EVERY", "month")])
    except StackError as error:
        print(f"FAILED: {error}\n(what started keeps running: `make stop` ends it)")
        return 1
    print(f"\ndemo done in {time.perf_counter() - started:,.0f} s.\n")
    print(summary(stack, api))
    return 0


def bring_up(stack: Stack, replay_args: list[str]) -> AirflowAPI:
    """The demo's path, shared with tests/test_demo_stack.py: replay, start, run the chain, wait for the champion."""
    from training.publish import champion
    from validation.gate import pending_batches

    settings = get_settings().model_copy(update={"home": stack.home})
    layout = Layout(stack.home)
    step(stack, f"replay the bundled Online Retail data into the landing zone (log: {stack.logs / 'replay.log'})")
    out = stack.run_logged([sys.executable, "-m", "shoprec", "replay", "online_retail", *replay_args], "replay")
    stack.say("    " + out.strip().splitlines()[-1])
    step(stack, f"start Airflow: api-server, scheduler, dag-processor, triggerer on SQLite (logs: {stack.logs}/)")
    stack.start_airflow()
    api = stack.client()
    stack.wait_for_dags(api)
    step(stack, "the scheduler runs ingest_events, then materialize_features on its Asset")
    stack.run_ingest(api, has_work=bool(pending_batches(layout)))
    step(stack, "start the recommendation service and the feature server (they load what gets published)")
    stack.start_services()
    step(stack, "the scheduler runs retrain_models; the running service swaps the new champion in by itself")
    stack.run_retrain(api, has_champion=champion(settings) is not None)
    ready = stack.wait_http("serve", f"{stack.serving_url}/readyz", 300)
    stack.say(f"    serve: ready on {ready.json().get('model_version')}")
    stack.wait_http("feature-server", f"{stack.features_url}/health", 120)
    return api


def summary(stack: Stack, api: AirflowAPI) -> str:
    """What the demo ends with: the Airflow login, the DAGs' last runs (REST API), a curl of each endpoint."""
    lines = [
        (f"Airflow UI: {stack.airflow_url}  (user {AIRFLOW_USER}, password {stack.password()}; generated for this "
        f"install, kept in {stack.passwords_file}, mode 0600)"),
        ("The DAGs, unpaused (ingest_events hourly, materialize_features on its Asset, retrain_models daily), and "
        "their last runs from the REST API:"),
    ]
    for dag_id, run in stack.last_runs(api).items():
        state = f"{run['state']:<8} {run['run_type']:<15} {run['dag_run_id']}" if run else "no run"
        lines.append(f"    {dag_id:<21} {state}")
    key = get_settings().api_key
    auth = ' -H "X-API-Key: $SHOPREC_API_KEY"' if key else ""
    headers = {"X-API-Key": key.get_secret_value()} if key else {}
    body = {"user_id": EXAMPLE_USER, "k": 3}
    answer = httpx.post(f"{stack.serving_url}/recommend", json=body, headers=headers, timeout=30)
    lines.append(f"The recommendation service (API docs at {stack.serving_url}/):")
    lines.append(f"    curl -s -X POST {stack.serving_url}/recommend -H 'Content-Type: application/json'{auth} "
                 f"-d '{json.dumps(body)}'")  # fmt: skip
    lines.append(f"    -> {answer.text.strip()}")
    query = {"features": FEATURES, "entities": {"user_id": [EXAMPLE_USER], "item_id": [EXAMPLE_ITEM]},
             "full_feature_names": True}  # fmt: skip
    found = httpx.post(f"{stack.features_url}/get-online-features", json=query, headers=headers, timeout=30)
    lines.append("The feature server other teams query (Feast's API; a value older than its TTL: OUTSIDE_MAX_AGE):")
    lines.append(f"    curl -s -X POST {stack.features_url}/get-online-features -H 'Content-Type: application/json'"
                 f"{auth} -d '{json.dumps(query)}'")  # fmt: skip
    lines.append(f"    -> {found.text.strip()}")
    lines.append(f"Logs: {stack.logs}/<process>.log; task logs under {stack.airflow_home / 'logs'}/")
    lines.append("Stop everything the demo started: make stop")
    return "\n".join(lines)


def step(stack: Stack, text: str) -> None:
    stack.say(f"==> {text}")


def stop() -> int:
    """`make stop`: end exactly the processes the demo started (their process groups), from their pid files."""
    stack = demo_stack()
    stopped = stack.stop()
    print("stopped " + ", ".join(stopped) if stopped else f"nothing of the demo runs (no pid files in {stack.home}/run)")
    return 0


if __name__ == "__main__":
    sys.exit(stop() if sys.argv[1:] == ["stop"] else main())
