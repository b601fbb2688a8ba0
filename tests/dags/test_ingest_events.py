"""ingest_events under real Airflow: the DAG imports cleanly, and dag.test() runs the gate on real data, failing
only the broken batch's own task."""

import pandas as pd
import pytest

from core.layout import Layout, batch_id_of, read_json
from core.settings import PROJECT_ROOT
from ingest import online_retail, replay


@pytest.fixture
def dagbag(airflow_home, shoprec_home):
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(PROJECT_ROOT / "dags"))


def test_dags_import_without_errors(dagbag):
    assert dagbag.import_errors == {}
    dag = dagbag.get_dag("ingest_events")
    assert dag is not None
    assert "ingest" in dag.tags and dag.catchup is False
    assert {t.task_id for t in dag.tasks} == {"apply_catalog_feeds", "find_new_batches", "validate_batch"}
    assert all(t.retries == 2 for t in dag.tasks)
    outlets = dag.get_task("validate_batch").outlets
    assert [a.uri for a in outlets] == ["shoprec://lake/events"]


def test_dag_run_gates_real_batches_and_fails_only_the_broken_one(dagbag, shoprec_home):
    from airflow.utils.state import DagRunState, TaskInstanceState

    source = online_retail.load()
    december = source.events["event_timestamp"] < pd.Timestamp("2010-12-13", tz="UTC")
    source.events = source.events[december]
    source.excluded = source.excluded.iloc[:0]
    source.raw_rows = len(source.events)
    landed = replay.land(source, Layout(shoprec_home.home), every="week")
    assert len(landed) == 2
    broken = landed[0].path.with_name("shop-upload-0001.csv")
    pd.read_csv(landed[0].path, dtype=str).drop(columns=["item_id"]).head(50).to_csv(broken, index=False)

    run = dagbag.get_dag("ingest_events").test()
    assert run.state == DagRunState.FAILED
    states = [str(ti.state) for ti in run.get_task_instances() if ti.task_id == "validate_batch"]
    assert sorted(states) == sorted([TaskInstanceState.SUCCESS, TaskInstanceState.SUCCESS, TaskInstanceState.FAILED])

    gate = shoprec_home.home / "gate"
    verdicts = {p.stem: read_json(p) for p in gate.glob("*.json")}
    upload = verdicts[batch_id_of(broken)]
    assert upload["status"] == "failed" and "missing required column(s) item_id" in upload["reason"]
    good = [verdicts[b.batch_id] for b in landed]
    assert all(v["status"] == "accepted" for v in good)
    assert sum(v["accepted"] + v["quarantined"] for v in good) == len(source.events)
    assert any((shoprec_home.home / "docs").rglob("*.html")), "Data Docs were rendered"
