"""Fixtures the DAG tests share with the stage tests."""

from tests.training.conftest import tasteful_lake  # noqa: F401  (the retrain DAG trains on it)
