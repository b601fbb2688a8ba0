"""materialize_features: when ingest announces new events, rebuild the feature tables, register the Feast
definitions, materialise into the online store, and announce the features as fresh (the Asset training waits on).

Thin TaskFlow wiring over the same functions as `shoprec features build` and `shoprec features materialize`.
Every step is idempotent: a re-run rewrites the same feature files and materialises nothing new.
"""

from datetime import datetime

from airflow.sdk import Asset, dag, task

from core.settings import get_settings

# Airflow matches Assets by uri: this is the one ingest_events emits (DAG files do not import each other).
EVENTS_LAKE = Asset(name="shoprec_events_lake", uri="shoprec://lake/events")
ONLINE_FEATURES = Asset(name="shoprec_features", uri="shoprec://features/online")  # what training waits on

settings = get_settings()


@dag(
    schedule=[EVENTS_LAKE],
    start_date=datetime(2024, 1, 1),
    catchup=False,
    max_active_runs=1,  # builds and materialisations must not interleave
    tags=["shoprec", "features"],
    default_args={"retries": settings.task_retries, "retry_delay": settings.task_retry_delay},
)
def materialize_features():
    @task
    def build() -> dict:
        from core.layout import Layout
        from features.build import build_pending

        return build_pending(Layout(settings.home), settings).to_dict()

    @task
    def apply() -> None:
        from features.store import apply, open_store

        apply(open_store(settings), settings)

    @task(outlets=[ONLINE_FEATURES])
    def materialize() -> dict:
        from airflow.sdk.exceptions import AirflowSkipException

        from core.layout import Layout, lake_as_of
        from features.store import materialize, open_store

        layout = Layout(settings.home)
        end = lake_as_of(layout)
        if end is None:
            raise AirflowSkipException("the event lake is empty")
        return materialize(open_store(settings), layout, end)

    build() >> apply() >> materialize()


materialize_features()
