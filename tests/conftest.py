"""Shared fixtures: a throwaway SHOPREC_HOME per test, the shared datasets (skipped with a message when absent),
and an Airflow home with a migrated metadata database for DAG tests."""

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from core.layout import Layout
from core.settings import PROJECT_ROOT, Settings, get_settings

SHARED_DATA = PROJECT_ROOT.parent / "shared" / "data"


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(home=tmp_path / "home")


@pytest.fixture
def layout(settings: Settings) -> Layout:
    return Layout(settings.home)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"{SHARED_DATA} is absent: the Taobao and MovieLens tests need ../shared/data beside the checkout")
    return SHARED_DATA


@pytest.fixture
def shoprec_home(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Point the process-wide settings (what the CLI and the DAG read) at this test's home."""
    monkeypatch.setenv("SHOPREC_HOME", str(settings.home))
    get_settings.cache_clear()
    yield get_settings()
    get_settings.cache_clear()


@pytest.fixture(scope="session")
def airflow_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real Airflow metadata database (SQLite) for dag.test(); migrated once per session."""
    home = tmp_path_factory.mktemp("airflow")
    os.environ.update(
        AIRFLOW_HOME=str(home),
        AIRFLOW__CORE__DAGS_FOLDER=str(PROJECT_ROOT / "dags"),
        AIRFLOW__CORE__LOAD_EXAMPLES="False",
        AIRFLOW__CORE__UNIT_TEST_MODE="False",
    )
    airflow = Path(sys.executable).parent / "airflow"
    subprocess.run([str(airflow), "db", "migrate"], check=True, capture_output=True, env=os.environ.copy())
    return home


def batch(rows: list[dict], **defaults) -> pd.DataFrame:
    """A small batch on the contract: each row overrides a valid default event."""
    base = {
        "event_id": None, "user_id": "u1", "item_id": "i1", "event_type": "view",
        "event_timestamp": "2024-01-01T12:00:00Z", "session_id": "s1", "quantity": "", "price": "",
    }  # fmt: skip
    base.update(defaults)
    frame = pd.DataFrame([{**base, "event_id": f"e{i}", **row} for i, row in enumerate(rows)])
    return frame
