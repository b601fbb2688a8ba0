"""Infrastructure settings: one typed object, read from SHOPREC_* environment variables or a .env file."""

from datetime import timedelta
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

PROJECT_ROOT = Path(__file__).resolve().parents[1]
# The environment of a serving worker (and of what measures one): one BLAS/OpenMP thread per request thread, as a
# request's small matrix products only lose to thread hand-offs.
ONE_BLAS_THREAD = dict.fromkeys(("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"), "1")


class Settings(BaseSettings):
    """Where shoprec keeps its state and how strict its gate is. See .env.example for every variable."""

    model_config = SettingsConfigDict(env_prefix="SHOPREC_", env_file=".env", extra="ignore")

    home: Path = Field(PROJECT_ROOT / ".shoprec", description="Root of all runtime state.")
    data_dir: Path = Field(
        PROJECT_ROOT.parent / "shared" / "data",
        description="Folder with the public datasets that may not ship with the project (Taobao, MovieLens).",
    )
    max_reject_share: float = Field(
        0.05, ge=0, le=1, description="A batch whose quarantined share exceeds this fails as a whole."
    )
    future_skew: timedelta = Field(
        timedelta(minutes=5), description="How far past the batch's logical time an event may be stamped."
    )
    max_event_age: timedelta = Field(
        timedelta(days=2),
        description="Retention window for late arrivals: events older than this before the batch's logical "
        "time are quarantined, so feature rows already computed for past intervals never change silently.",
    )
    ingest_schedule: str = Field("@hourly", description="Cron or preset schedule of the ingest_events DAG.")
    retrain_schedule: str = Field("@daily", description="Cron or preset schedule of the retrain_models DAG.")
    retrain_preset: Literal["tiny", "full"] = Field("full", description="Model size the retrain_models DAG trains.")
    training_queue: str = Field(
        "training",
        description="Airflow queue of the training tasks: a Celery or Kubernetes deployment routes it to a GPU "
        "worker (the local executor ignores queues).",
    )
    task_retries: int = Field(2, ge=0, description="Airflow retries per task.")
    task_retry_delay: timedelta = Field(
        timedelta(minutes=1),
        description="Airflow's wait before a task's retry (retrain_models' tasks wait twice as long): a task "
        "lost with its scheduler, or cut off by a database restart, runs again after it.",
    )
    feast_env: Literal["embedded", "production"] = Field(
        "embedded",
        description="Which feature_store.yaml under features/repo/environments/ to use: embedded (file registry, "
        "SQLite online store) or production (SQL registry on Postgres, Redis online store).",
    )
    serving_clock: Literal["wall", "shop"] = Field(
        "wall",
        description="What the recommendation service judges feature freshness against: the wall clock (a live "
        "shop) or the shop's logical time, the newest accepted batch (a replayed shop, such as the demo's 2011 "
        "data, whose every feature is stale by the wall clock).",
    )
    serving_port: int = Field(3000, ge=1, le=65535, description="Port of `shoprec serve`.")
    serving_workers: int = Field(1, ge=1, description="Worker processes of the recommendation service.")
    serving_threads: int = Field(
        4,
        ge=1,
        description="Threads per worker for BentoML's sync work; the endpoints are async and answer one "
        "request at a time per worker (scale with workers, one per core).",
    )
    serving_access_log: bool = Field(
        False,
        description="Write BentoML's access log line for every request. Off by default: it costs ~0.3 ms a request "
        "on the 2-core machine, and /metrics counts requests and their latencies either way.",
    )
    serving_tracing: bool = Field(
        False,
        description="Run BentoML's OpenTelemetry middleware over the API paths (set its exporter and sample rate in "
        "BentoML's configuration). Off, those paths skip it: BentoML's default sample rate records nothing, yet "
        "each request built its spans (~0.3 ms).",
    )
    serving_remembered_users: int = Field(
        5_000,
        ge=0,
        description="Returning users each worker remembers while their features and the champion stay the same: "
        "their stored row, their vector, their ranker shortlist and its item columns (~45-65 KB each; the least "
        "recently seen go first; 0 reads the row from the online store, runs the user tower and builds the "
        "shortlist on every request).",
    )
    api_key: SecretStr | None = Field(
        None,
        description="When set, every endpoint of the recommendation service but /livez, /readyz and /metrics "
        "needs it in an X-API-Key header (or Authorization: Bearer); unset, the service is open (development).",
    )
    max_request_bytes: int = Field(65_536, ge=1024, description="Largest request body the service reads (413 above).")
    swap_poll_s: float = Field(
        1.0, gt=0, description="How often each worker looks for a new champion or materialisation to swap in."
    )
    redis_url: str = Field("localhost:6379", description="Feast's Redis connection string (production).")
    redis_timeout_s: float = Field(
        2.0,
        gt=0,
        description="Socket and connect timeout of Redis reads and writes, unless redis_url sets its own: "
        "a Redis that stops answering fails a request in this long instead of hanging it.",
    )
    feast_registry_url: str = Field(
        "postgresql+psycopg://shoprec:shoprec@localhost:5432/shoprec",
        description="SQLAlchemy URL of Feast's SQL registry (production).",
    )


@lru_cache
def get_settings() -> Settings:
    """The settings of this process (cached: the environment is read once)."""
    return Settings()
