"""ingest_events: pick up new batches in the landing zone, run the Great Expectations gate on each, and announce the
event lake as updated (the Asset the feature DAG is scheduled on).

Thin TaskFlow wiring: the tasks call the same functions as `shoprec ingest`. One mapped task per batch, so each
batch's verdict is visible in the UI; a failed batch fails its own task with the gate's one-line reason.
"""

from datetime import datetime

from airflow.sdk import Asset, dag, task

from core.settings import get_settings

EVENTS_LAKE = Asset(name="shoprec_events_lake", uri="shoprec://lake/events")  # materialize_features waits on it

settings = get_settings()


@dag(
    schedule=settings.ingest_schedule,
    start_date=datetime(2024, 1, 1),
    catchup=False,
    max_active_runs=1,  # batches are judged in order: a later one must see the ids an earlier one accepted
    tags=["shoprec", "ingest"],
    default_args={"retries": settings.task_retries, "retry_delay": settings.task_retry_delay},
)
def ingest_events():
    @task
    def apply_catalog_feeds() -> list[dict]:
        from core.layout import Layout
        from validation.catalog import apply_feeds

        return [r.to_dict() for r in apply_feeds(Layout(settings.home))]

    @task
    def find_new_batches() -> list[str]:
        from core.layout import Layout
        from validation.gate import pending_batches

        return [str(p) for p in pending_batches(Layout(settings.home))]

    @task(outlets=[EVENTS_LAKE], max_active_tis_per_dag=1, map_index_template="{{ task.op_kwargs['path'] }}")
    def validate_batch(path: str, **context) -> dict:
        from pathlib import Path

        from airflow.sdk.exceptions import AirflowFailException

        from core.layout import Layout
        from validation.gate import judge_in_order

        logical_time = context.get("data_interval_end") or context.get("logical_date")
        result = judge_in_order(Path(path), Layout(settings.home), settings, fallback_as_of=logical_time)
        if result.status == "failed":
            raise AirflowFailException(result.reason)  # the verdict is final: a retry would reach the same one
        return result.to_dict()

    feeds = apply_catalog_feeds()
    batches = find_new_batches()
    feeds >> batches
    validate_batch.expand(path=batches)


ingest_events()
