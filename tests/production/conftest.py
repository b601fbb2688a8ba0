"""The production configuration as processes, once per module: a PostgreSQL cluster of its own (Airflow's metadata
database and Feast's SQL registry), a redis-server of its own (Feast's online store), Airflow 3 with the
LocalExecutor (api-server, scheduler, dag-processor) over the three DAGs, and the shop: the bundled Online Retail
data of its last three weeks, landed weekly. The environment is docker-compose.yaml's, with local addresses.

The tests drive the stack through Airflow's REST API (token from the simple auth manager's generated login) and
break it on purpose: the fault tests kill the scheduler, restart Postgres and stop Redis.
"""

import glob
import json
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import pandas as pd
import pytest

from core.layout import Layout
from core.settings import PROJECT_ROOT, Settings
from tests.conftest import RedisServer, free_port, wait_for_port

SINCE = pd.Timestamp("2011-11-21", tz="UTC")  # three weekly batches, about 40k events (the serving tests' shop)
DAGS = ("ingest_events", "materialize_features", "retrain_models")
RESTARTED = ("api-server", "dag-processor", "scheduler", "triggerer")  # restarted by the compose file's policy
MAX_STREAK = 12  # restarts in a row a crash-looping process gets (0.1 s doubling to 60 s: about 3 minutes)
BIN = Path(sys.executable).parent


class Postgres:
    """A throwaway PostgreSQL cluster on a free port: initdb, pg_ctl start/restart/stop. PostgreSQL refuses to run
    as root, so as root its folder belongs to the postgres user and every command runs as that user."""

    def __init__(self):
        found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[4]))
        if not found:
            pytest.skip("PostgreSQL is not installed (.ci/run installs Debian's postgresql package)")
        self.bin = Path(found[-1]).parent
        self.as_user: list[str] = []
        self.folder = Path(tempfile.mkdtemp(prefix="shoprec-pg-"))
        if os.getuid() == 0:
            try:
                user = pwd.getpwnam("postgres")
            except KeyError:
                pytest.skip("running as root and there is no postgres user to run PostgreSQL as")
            os.chown(self.folder, user.pw_uid, user.pw_gid)
            self.as_user = ["runuser", "-u", "postgres", "--"]
        self.port, self.data = free_port(), self.folder / "data"
        self._run("initdb", "-D", self.data, "-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-sync")
        self.start()
        for database in ("airflow", "feast"):
            self._run("createdb", "-h", "127.0.0.1", "-p", self.port, "-U", "postgres", database)

    def _run(self, tool: str, *args) -> None:
        # Output to a file, never a pipe: the postmaster pg_ctl starts would hold a pipe open and block the read.
        with (Path(tempfile.gettempdir()) / f"{self.folder.name}-{tool}.out").open("w+") as out:
            code = subprocess.call([*self.as_user, str(self.bin / tool), *map(str, args)], stdout=out,
                                   stderr=subprocess.STDOUT)  # fmt: skip
            out.seek(0)
            assert code == 0, f"{tool} failed: {out.read()[-2000:]}"

    def start(self) -> None:
        options = f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200"
        self._run("pg_ctl", "-D", self.data, "-o", options, "-l", self.folder / "postgres.log", "-w", "start")

    def restart(self) -> None:
        """A fast restart: every open connection is cut, as when the database fails over or is upgraded."""
        self._run("pg_ctl", "-D", self.data, "-l", self.folder / "postgres.log", "-m", "fast", "-w", "restart")

    def outage(self, seconds: float, meanwhile=lambda: None) -> None:
        """Down for seconds, then back: every connection cut and none accepted meanwhile (a failover that takes
        its time). meanwhile() is called every half second while it is down: the restart policy, which starts
        Airflow's processes that exit again even while the database is still away, as compose does."""
        self._run("pg_ctl", "-D", self.data, "-l", self.folder / "postgres.log", "-m", "fast", "-w", "stop")
        back = time.monotonic() + seconds
        while time.monotonic() < back:
            meanwhile()
            time.sleep(min(0.5, max(back - time.monotonic(), 0)))
        self.start()

    def stop(self) -> None:
        subprocess.run([*self.as_user, str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "stop"],
                       check=False, capture_output=True)  # fmt: skip
        shutil.rmtree(self.folder, ignore_errors=True)
        for out in Path(tempfile.gettempdir()).glob(f"{self.folder.name}-*.out"):
            out.unlink()

    def url(self, database: str, driver: str) -> str:
        return f"postgresql+{driver}://postgres@127.0.0.1:{self.port}/{database}"


def land_shop(home: Path) -> None:
    """The shop's last three weeks of Online Retail in the landing zone, a batch a week (`shoprec replay`'s
    landing, on a smaller window), with the catalog of what those weeks sold."""
    from ingest import online_retail, replay

    source = online_retail.load()
    source.events = source.events[source.events["event_timestamp"] >= SINCE].reset_index(drop=True)
    source.excluded = source.excluded.iloc[:0]
    source.catalog = source.catalog[source.catalog["item_id"].isin(source.events["item_id"])].reset_index(drop=True)
    replay.land(source, Layout(home), every="week")


class Stack:
    """Postgres, Redis and Airflow's processes on one SHOPREC_HOME; each process in its own process group."""

    def __init__(self, root: Path):
        self.root, self.logs = root, root / "logs"
        self.logs.mkdir(parents=True)
        self.home = root / "home"
        self.postgres = Postgres()
        self.redis = RedisServer(folder=root)
        self.api_port = free_port()
        self.api = f"http://127.0.0.1:{self.api_port}"
        self.password = secrets.token_urlsafe(16)
        self.processes: dict[str, subprocess.Popen] = {}
        self._commands: dict[str, tuple] = {}  # name -> (command, env): how to start it again
        self.restarts: list[tuple[str, int]] = []  # (name, exit code) of each restart the policy made
        self._started: dict[str, float] = {}  # name -> when it was last started (monotonic)
        self._exited: dict[str, float] = {}  # name -> when the policy first saw it gone, until it restarts it
        self._streak: dict[str, int] = {}  # name -> restarts in a row without 10 s of running between them
        self.env = self._environment()
        self.settings = Settings(home=self.home, feast_env="production", redis_url=self.redis.url,
                                 feast_registry_url=self.postgres.url("feast", "psycopg"))  # fmt: skip
        self._token = None

    def _environment(self) -> dict:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("SHOPREC_", "AIRFLOW"))}
        airflow_home = self.root / "airflow"
        env.update(
            PATH=f"{BIN}:{env['PATH']}",
            PYTHONPATH=str(PROJECT_ROOT),
            # shoprec, as docker-compose.yaml's x-shoprec-env sets it
            SHOPREC_HOME=str(self.home),
            SHOPREC_FEAST_ENV="production",
            SHOPREC_FEAST_REGISTRY_URL=self.postgres.url("feast", "psycopg"),
            SHOPREC_REDIS_URL=self.redis.url,
            SHOPREC_RETRAIN_PRESET="tiny",
            # One run of each: ingest and retrain run once when unpaused, materialize when ingest emits its Asset.
            SHOPREC_INGEST_SCHEDULE="@once",
            SHOPREC_RETRAIN_SCHEDULE="@once",
            SHOPREC_TASK_RETRY_DELAY="PT3S",
            # Airflow, as x-airflow-env sets it
            AIRFLOW_HOME=str(airflow_home),
            AIRFLOW__CORE__EXECUTOR="LocalExecutor",
            AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=self.postgres.url("airflow", "psycopg2"),
            AIRFLOW__CORE__FERNET_KEY=_fernet_key(),
            AIRFLOW__API_AUTH__JWT_SECRET=secrets.token_urlsafe(32),
            AIRFLOW__API_AUTH__JWT_ISSUER="shoprec",
            AIRFLOW__API__SECRET_KEY=secrets.token_urlsafe(32),
            AIRFLOW__API__PORT=str(self.api_port),
            AIRFLOW__CORE__EXECUTION_API_SERVER_URL=f"{self.api}/execution/",
            AIRFLOW__CORE__AUTH_MANAGER="airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager",
            AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS="admin:admin",
            AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS="False",
            AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE=str(airflow_home / "passwords.json"),
            AIRFLOW_ADMIN_USERNAME="admin",
            AIRFLOW_ADMIN_PASSWORD=self.password,
            AIRFLOW__CORE__DAGS_FOLDER=str(PROJECT_ROOT / "dags"),
            AIRFLOW__CORE__LOAD_EXAMPLES="False",
            AIRFLOW__CORE__PARALLELISM="2",  # two cores, shared
            AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION="True",
            AIRFLOW__LOGGING__BASE_LOG_FOLDER=str(self.logs / "tasks"),
            # The scheduler's log server: a port of its own (8793 would clash with another Airflow on this machine).
            AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT=str(free_port()),
            AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL="5",
            AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL="30",
            AIRFLOW__DAG_PROCESSOR__PARSING_PROCESSES="1",
            # A lost scheduler's tasks are found soon (defaults: 300 s), so a fault test does not wait minutes.
            AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_THRESHOLD="30",
            AIRFLOW__SCHEDULER__ORPHANED_TASKS_CHECK_INTERVAL="15",
            AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT="30",
            AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL="5",
            PYTHONUNBUFFERED="1",
        )
        return env

    def run(self, *command: str, check: bool = True, **kwargs) -> subprocess.CompletedProcess:
        done = subprocess.run(
            command, check=False, env=self.env, cwd=PROJECT_ROOT, capture_output=True, text=True, **kwargs
        )
        assert not check or done.returncode == 0, f"{command} failed: {done.stdout[-1500:]}{done.stderr[-1500:]}"
        return done

    def start(self, name: str, *command: str, env: dict | None = None) -> subprocess.Popen:
        self._commands[name] = (command, env)
        self._started[name] = time.monotonic()
        log = (self.logs / f"{name}.log").open("a")
        self.processes[name] = subprocess.Popen(command, env=env or self.env, cwd=PROJECT_ROOT, stdout=log,
                                                stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
        return self.processes[name]

    def kill(self, name: str, sig: int = signal.SIGTERM) -> None:
        """Signal a process's whole group (the scheduler's LocalExecutor workers and their tasks are in it, as in
        its container) and wait for it."""
        process = self.processes.pop(name)
        if process.poll() is None:
            try:
                os.killpg(process.pid, sig)
                process.wait(timeout=30)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=30)
        try:  # a task's own process may have left the group's leader behind it
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def start_airflow(self) -> None:
        self.run(str(BIN / "airflow"), "db", "migrate", timeout=600)
        self.run(sys.executable, "deploy/airflow-passwords.py")
        self.start("api-server", str(BIN / "airflow"), "api-server", "--host", "127.0.0.1", "--port",
                   str(self.api_port))  # fmt: skip
        self.start("dag-processor", str(BIN / "airflow"), "dag-processor")
        self.start_scheduler()
        wait_for_port(self.api_port, timeout=180)
        deadline = time.monotonic() + 240
        while {d["dag_id"] for d in self.get("/api/v2/dags", params={"limit": 100})["dags"]} < set(DAGS):
            assert time.monotonic() < deadline, "the dag-processor did not register the three DAGs"
            time.sleep(2)

    def start_scheduler(self) -> None:
        self.start("scheduler", str(BIN / "airflow"), "scheduler")

    # --- Airflow's REST API ------------------------------------------------------------------------------------
    def _headers(self) -> dict:
        if self._token is None:
            answer = httpx.post(f"{self.api}/auth/token", json={"username": "admin", "password": self.password},
                                timeout=30)  # fmt: skip
            answer.raise_for_status()
            self._token = answer.json()["access_token"]
        return {"Authorization": f"Bearer {self._token}"}

    def get(self, path: str, **kwargs) -> dict:
        for attempt in range(30):  # the api-server may be restarting its database connections (Postgres restart)
            try:
                answer = httpx.get(f"{self.api}{path}", headers=self._headers(), timeout=30, **kwargs)
                if answer.status_code < 500:
                    answer.raise_for_status()
                    return answer.json()
            except httpx.TransportError:
                pass
            time.sleep(1)
        raise AssertionError(f"GET {path} kept failing")

    def unpause(self, dag_id: str) -> None:
        answer = httpx.patch(f"{self.api}/api/v2/dags/{dag_id}", json={"is_paused": False}, headers=self._headers(),
                             timeout=30)  # fmt: skip
        answer.raise_for_status()

    def runs(self, dag_id: str) -> list[dict]:
        return self.get(f"/api/v2/dags/{dag_id}/dagRuns", params={"order_by": "run_after"})["dag_runs"]

    def task_instances(self, dag_id: str, run_id: str) -> list[dict]:
        return self.get(f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances", params={"limit": 100})[
            "task_instances"
        ]

    def wait(self, condition, what: str, timeout: float, every: float = 1.0):
        """Poll condition() until it returns something truthy; fail with the scheduler's log tail otherwise."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = condition()
            if value:
                return value
            self.supervise()
            time.sleep(every)
        raise AssertionError(f"{what}: not within {timeout:.0f} s; logs in {self.logs}")

    def supervise(self) -> None:
        """docker-compose.yaml's `restart: unless-stopped`, for Airflow's processes, with Docker's backoff: the
        scheduler exits when Postgres cuts the connection it is using (Airflow leaves recovery to the supervisor),
        and compose starts it again after a delay that doubles from 0.1 s with each restart in a row (a process
        that ran 10 s starts a new row), so while the database is away it crash-loops, ever more slowly. Anything
        else that exits fails the test, and so does a crash loop still going after MAX_STREAK restarts (~3 min)."""
        now = time.monotonic()
        for name, process in list(self.processes.items()):
            code = process.poll()
            if code is None:
                continue
            assert name in RESTARTED, f"{name} exited ({code}): see {self.logs / name}.log"
            exited = self._exited.setdefault(name, now)
            streak = 0 if exited - self._started[name] >= 10 else self._streak.get(name, 0)
            if now < exited + min(0.1 * 2**streak, 60):
                continue
            assert streak < MAX_STREAK, f"{name} keeps exiting ({code}): see {self.logs / name}.log"
            self.restarts.append((name, code))
            self._streak[name], _ = streak + 1, self._exited.pop(name)
            command, env = self._commands[name]
            self.start(name, *command, env=env)

    def wait_run(self, dag_id: str, timeout: float) -> dict:
        """The DAG's newest run once it has ended (success or failed)."""

        def ended():
            runs = self.runs(dag_id)
            return runs and runs[-1]["state"] in ("success", "failed") and runs[-1]

        return self.wait(ended, f"{dag_id} run to end", timeout)

    def close(self) -> None:
        for name in list(self.processes):
            self.kill(name)
        self.redis.stop()
        self.postgres.stop()


def _fernet_key() -> str:
    from cryptography.fernet import Fernet

    return Fernet.generate_key().decode()


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """The production stack with Airflow up, the three DAGs registered and paused, and the shop landed."""
    stack = Stack(tmp_path_factory.mktemp("production"))
    try:
        land_shop(stack.home)
        stack.start_airflow()
        yield stack
    finally:
        stack.close()


def print_log_tail(path: Path, lines: int = 40) -> None:
    if path.exists():
        print(*path.read_text(errors="replace").splitlines()[-lines:], sep="\n")


def dump(value) -> str:
    return json.dumps(value, indent=1, default=str)[:4000]
