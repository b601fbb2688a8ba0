"""Shared fixtures: a throwaway SHOPREC_HOME per test, the shared datasets (skipped with a message when absent),
an Airflow home with a migrated metadata database for DAG tests, and a real redis-server of a test's own."""

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from core.layout import Layout
from core.settings import PROJECT_ROOT, Settings, get_settings

SHARED_DATA = PROJECT_ROOT.parent / "shared" / "data"
# The two running stacks (Airflow's real scheduler over the three DAGs, minutes each, mostly waiting on it): one
# xdist worker takes both, first, while the other works through the rest of the suite (`make test` runs two).
STACK_MODULES = ("tests/production/test_production_stack.py", "tests/test_demo_stack.py")


def pytest_collection_modifyitems(items):
    """The stacks' tests first: they are the longest unit of work, so they start at once beside the rest."""
    items.sort(key=lambda item: item.nodeid.split("::")[0] not in STACK_MODULES)  # stable: the rest keep their order


def pytest_xdist_make_scheduler(config, log):
    """Whole files per worker (module and session fixtures are built once per worker), the two stacks as one."""
    from xdist.scheduler import LoadScopeScheduling

    class StacksTogether(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            path = nodeid.split("::")[0]
            return "stacks" if path in STACK_MODULES else path

    config.option.loadscopereorder = False  # collection order: the stacks first
    return StacksTogether(config, log)


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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise AssertionError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


class RedisServer:
    """A real redis-server on a free loopback port (.ci/run installs it), until stop(). With a folder, it keeps its
    data there across stop() and start() (a dump at shutdown), as a restarted production Redis would."""

    def __init__(self, folder: Path | None = None):
        self.binary = shutil.which("redis-server")
        if self.binary is None:
            pytest.skip("redis-server is not installed (.ci/run installs it with apt-get)")
        self.port, self.folder, self.process = free_port(), folder, None
        self.url = f"127.0.0.1:{self.port}"
        self.start()

    def start(self) -> None:
        keep = ["--dir", str(self.folder), "--save", "", "--appendonly", "no"] if self.folder else ["--save", ""]
        self.process = subprocess.Popen([self.binary, "--port", str(self.port), "--bind", "127.0.0.1", *keep],
                                        stdout=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
        wait_for_port(self.port)

    def pause(self) -> None:
        """SIGSTOP: the port stays open and connections are accepted, but nothing is answered (a hung server)."""
        os.killpg(self.process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.killpg(self.process.pid, signal.SIGCONT)

    def stop(self) -> None:
        """Shut it down (saving its data when it has a folder); returns once the port is closed."""
        if self.process is None or self.process.poll() is not None:
            return
        if self.folder:
            subprocess.run(
                ["redis-cli", "-p", str(self.port), "shutdown", "save"], check=False, capture_output=True, timeout=30
            )
        if self.process.poll() is None:
            os.killpg(self.process.pid, 15)
        self.process.wait(timeout=30)


@pytest.fixture(scope="module")
def redis_url():
    """A real redis-server on a free port for a test module; skipped with a message where it is absent."""
    server = RedisServer()
    yield server.url
    server.stop()
