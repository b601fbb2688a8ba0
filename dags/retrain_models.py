"""retrain_models: retrain the two-tower and the ranker on the lake, evaluate the challenger against the champion
and popularity on the same frozen time split, and publish it to BentoML's model store only when it is not worse.

Daily by default (SHOPREC_RETRAIN_SCHEDULE) and on demand (trigger it in the UI or `airflow dags trigger`). It reads
the features materialise_features announces (the Asset is this DAG's inlet), but it is not triggered by each
materialisation: features refresh hourly, and retraining hourly would only churn champions.
The training tasks carry SHOPREC_TRAINING_QUEUE, so a Celery or Kubernetes deployment can send them to a GPU
worker; the same code trains on the CPU elsewhere. Thin TaskFlow wiring over training/retrain.py.
"""

from datetime import datetime

from airflow.sdk import Asset, dag, get_current_context, task

from core.settings import get_settings

ONLINE_FEATURES = Asset(name="shoprec_features", uri="shoprec://features/online")  # materialize_features' outlet
MODELS = Asset(name="shoprec_champion", uri="shoprec://models/champion")  # what serving reloads on

settings = get_settings()


def _run_id() -> str:
    return get_current_context()["run_id"]


@dag(
    schedule=settings.retrain_schedule,
    start_date=datetime(2024, 1, 1),
    catchup=False,
    max_active_runs=1,
    tags=["shoprec", "training"],
    default_args={"retries": settings.task_retries, "retry_delay": 2 * settings.task_retry_delay},
)
def retrain_models():
    @task(inlets=[ONLINE_FEATURES])
    def build_training_set() -> dict:
        from training.retrain import prepare

        return prepare(settings, _run_id(), settings.retrain_preset)

    @task(queue=settings.training_queue)
    def train_two_tower() -> dict:
        from training.retrain import train_retrieval

        return train_retrieval(settings, _run_id())

    @task
    def embed_catalog() -> dict:
        from training.retrain import embed_catalog

        return embed_catalog(settings, _run_id())

    @task(queue=settings.training_queue)
    def train_ranker() -> dict:
        from training.retrain import train_ranker

        return train_ranker(settings, _run_id())

    @task
    def evaluate() -> dict:
        from training.retrain import evaluate

        return evaluate(settings, _run_id())

    @task
    def gate() -> dict:
        from training.retrain import gate

        return gate(settings, _run_id())

    @task(outlets=[MODELS])
    def publish() -> dict:
        from training.retrain import publish

        return publish(settings, _run_id())

    build_training_set() >> train_two_tower() >> embed_catalog() >> train_ranker() >> evaluate() >> gate() >> publish()


retrain_models()
