"""retrain_models under real Airflow: the DAG imports, its training tasks carry the training queue, and dag.test()
with the tiny preset trains, evaluates, gates and publishes a champion."""

import pytest

from core.settings import PROJECT_ROOT, get_settings
from training import publish


@pytest.fixture
def dagbag(airflow_home, shoprec_home, monkeypatch):
    from airflow.dag_processing.dagbag import DagBag

    monkeypatch.setenv("SHOPREC_RETRAIN_PRESET", "tiny")
    get_settings.cache_clear()
    return DagBag(dag_folder=str(PROJECT_ROOT / "dags"))


def test_dag_shape_schedule_and_queues(dagbag):
    assert dagbag.import_errors == {}
    dag = dagbag.get_dag("retrain_models")
    assert [t.task_id for t in dag.topological_sort()] == [
        "build_training_set", "train_two_tower", "embed_catalog", "train_ranker", "evaluate", "gate", "publish"]  # fmt: skip
    assert dag.get_task("train_two_tower").queue == dag.get_task("train_ranker").queue == "training"
    assert [a.uri for a in dag.get_task("build_training_set").inlets] == ["shoprec://features/online"]
    assert dag.schedule == "@daily", "daily by default (SHOPREC_RETRAIN_SCHEDULE)"


def test_dag_run_publishes_a_champion(dagbag, tasteful_lake):
    from airflow.utils.state import DagRunState

    dag = dagbag.get_dag("retrain_models")
    assert dag.test().state == DagRunState.SUCCESS
    assert publish.champion(get_settings()) is not None
