"""materialize_features under real Airflow: scheduled on the ingest Asset; dag.test() builds, applies and
materialises, and a second run leaves the online store as it was."""

import pytest

from core.layout import Layout
from core.settings import PROJECT_ROOT
from tests.features.conftest import online_rows, write_synthetic_shop


@pytest.fixture
def dagbag(airflow_home, shoprec_home):
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(PROJECT_ROOT / "dags"))


def test_dag_is_scheduled_on_the_events_lake(dagbag):
    assert dagbag.import_errors == {}
    dag = dagbag.get_dag("materialize_features")
    assert [t.task_id for t in dag.topological_sort()] == ["build", "apply", "materialize"]
    assert "shoprec://lake/events" in repr(dag.timetable.asset_condition)
    assert [a.uri for a in dag.get_task("materialize").outlets] == ["shoprec://features/online"]


def test_dag_run_materialises_and_a_rerun_changes_nothing(dagbag, shoprec_home):
    from airflow.utils.state import DagRunState

    write_synthetic_shop(Layout(shoprec_home.home), 2_000, n_users=100, n_items=50, days=5, seed=3)

    dag = dagbag.get_dag("materialize_features")
    assert dag.test().state == DagRunState.SUCCESS
    first = online_rows(shoprec_home.home)
    assert sum(len(rows) for _, rows in first) > 100
    assert dag.test().state == DagRunState.SUCCESS
    assert online_rows(shoprec_home.home) == first
