"""The embedded stack, running: Airflow 3 (api-server, scheduler, dag-processor, triggerer on SQLite, the simple
auth manager with a password generated for this install), the recommendation service and the Feast feature server,
each a background process with a pid file under SHOPREC_HOME/run and its output in SHOPREC_HOME/logs/<name>.log.

`make demo` (shoprec/demo.py) and tests/test_demo_stack.py drive the same path through this module: start what is not
running, unpause the DAGs, let the real scheduler run ingest_events -> (Asset) materialize_features ->
retrain_models -> publish, follow it through Airflow's REST API (/api/v2, a JWT from POST /auth/token), and wait
until the already-running service has swapped the champion in by itself.

Why the DAGs run the way they do: ingest_events (hourly) and retrain_models (daily) have catchup=False, so
unpausing one makes the scheduler create its run for the latest schedule point at once. retrain_models is unpaused
only when the features are fresh: that run is the demo's one retraining. On a stack that is already running and
unpaused, the demo triggers a run instead (only when there is work: new batches, or no champion yet).
"""

import configparser
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import httpx

from core.settings import PROJECT_ROOT

DAGS = ("ingest_events", "materialize_features", "retrain_models")
AIRFLOW_USER = "shoprec"  # the simple auth manager's one user (role admin); its password is generated per install
AIRFLOW_PROCESSES = ("api-server", "scheduler", "dag-processor", "triggerer")
SERVICES = ("serve", "feature-server")
TERMINAL = {"success", "failed", "skipped", "upstream_failed", "removed"}
SHOWN_TASK_STATES = {"running", "up_for_retry", "up_for_reschedule", "deferred", *TERMINAL}
PASSWORDS_FILE = "simple_auth_manager_passwords.json.generated"  # the name Airflow's SimpleAuthManager reads


class StackError(RuntimeError):
    """Something the stack needs failed; the message says what and which log to read."""


@dataclass(frozen=True)
class Ports:
    airflow: int = 8080
    serving: int = 3000
    features: int = 6566
    worker_logs: int = 8793  # the scheduler's task-log server (Airflow's default)
    trigger_logs: int = 8794  # the triggerer's


@dataclass
class Stack:
    home: Path
    airflow_home: Path
    ports: Ports = field(default_factory=Ports)
    preset: str = "tiny"  # SHOPREC_RETRAIN_PRESET of the retrain_models runs
    say: Callable[[str], None] = field(default=lambda text: print(text, flush=True))

    @property
    def logs(self) -> Path:
        return self.home / "logs"

    @property
    def passwords_file(self) -> Path:
        return self.airflow_home / PASSWORDS_FILE

    @property
    def airflow_url(self) -> str:
        return f"http://localhost:{self.ports.airflow}"

    @property
    def serving_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.serving}"

    @property
    def features_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.features}"

    # ---- configuration -------------------------------------------------------------------------------------

    def env(self) -> dict[str, str]:
        """The environment of every process of the stack. Settings a user exported win where it is theirs to
        choose (parallelism, intervals); what ties the processes together (homes, ports, auth) is set here."""
        bin_dir = str(Path(sys.executable).parent)
        tunable = {
            # Two cores: two task processes at a time (the DAGs run their tasks one after another anyway).
            "AIRFLOW__CORE__PARALLELISM": "2",
            "AIRFLOW__API__WORKERS": "1",
            "AIRFLOW__DAG_PROCESSOR__PARSING_PROCESSES": "1",
            # Short loops so a run follows the previous one within seconds, not a default heartbeat or two.
            "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "2",
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "30",
            "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "60",
            "AIRFLOW__TRIGGERER__JOB_HEARTBEAT_SEC": "5",
        }
        fixed = {
            "SHOPREC_HOME": str(self.home),
            "AIRFLOW_HOME": str(self.airflow_home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(PROJECT_ROOT / "dags"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
            "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
            "AIRFLOW__CORE__AUTH_MANAGER": (
                "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager"
            ),
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{AIRFLOW_USER}:admin",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "False",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(self.passwords_file),
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__PORT": str(self.ports.airflow),
            "AIRFLOW__API__BASE_URL": self.airflow_url,
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{self.ports.airflow}/execution/",
            "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(self.ports.worker_logs),
            "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(self.ports.trigger_logs),
            "SHOPREC_RETRAIN_PRESET": self.preset,
            "SHOPREC_SERVING_CLOCK": "shop",  # the replayed data is from 2011: judge freshness on the shop's clock
            "SHOPREC_SERVING_PORT": str(self.ports.serving),
            "PYTHONUNBUFFERED": "1",
            "PATH": f"{bin_dir}:{os.environ.get('PATH', '')}",
        }
        return {**tunable, **os.environ, **fixed}

    def password(self) -> str:
        """The Airflow login's password, generated once for this install into the file Airflow's simple auth
        manager reads (0600). Written before the api-server starts, so Airflow never generates one itself and so
        never prints it into a log."""
        self.airflow_home.mkdir(parents=True, exist_ok=True)
        path = self.passwords_file
        try:
            passwords = json.loads(path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            passwords = {}
        if AIRFLOW_USER not in passwords:
            passwords[AIRFLOW_USER] = secrets.token_urlsafe(18)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as file:
                file.write(json.dumps(passwords) + "\n")
        path.chmod(0o600)
        return passwords[AIRFLOW_USER]

    def secrets(self) -> dict[str, str]:
        """Every secret of this install by name (for the test that greps the logs for them)."""
        found = {"airflow_password": self.password()}
        config = configparser.ConfigParser(interpolation=None)
        config.read(self.airflow_home / "airflow.cfg")
        for section, key in (("api_auth", "jwt_secret"), ("core", "fernet_key"), ("api", "secret_key")):
            if value := config.get(section, key, fallback="").strip():
                found[f"{section}.{key}"] = value
        if key := os.environ.get("SHOPREC_API_KEY"):
            found["api_key"] = key
        return found

    # ---- processes -----------------------------------------------------------------------------------------

    def commands(self) -> dict[str, list[str]]:
        airflow = str(Path(sys.executable).with_name("airflow"))
        shoprec = [sys.executable, "-m", "shoprec"]
        return {
            "api-server": [airflow, "api-server", "--host", "127.0.0.1", "--port", str(self.ports.airflow)],
            "scheduler": [airflow, "scheduler"],
            "dag-processor": [airflow, "dag-processor"],
            "triggerer": [airflow, "triggerer"],
            "serve": [*shoprec, "serve", "--clock", "shop", "--port", str(self.ports.serving)],
            "feature-server": [*shoprec, "feature-server", "--clock", "shop", "--port", str(self.ports.features)],
        }

    def pid_file(self, name: str) -> Path:
        (self.home / "run").mkdir(parents=True, exist_ok=True)
        return self.home / "run" / f"{name}.pid"

    def running(self, name: str) -> int | None:
        """The pid of a process of this stack that still runs, or None (a stale pid file is removed). The pid file
        holds the pid and the process's start time: a pid the system gave to another process since is not ours."""
        path = self.pid_file(name)
        try:
            pid, started = path.read_text().split()
            pid = int(pid)
            os.kill(pid, 0)
            if _start_time(pid) not in (None, started):
                raise ProcessLookupError
            return pid
        except (FileNotFoundError, ValueError, ProcessLookupError, PermissionError):
            path.unlink(missing_ok=True)
            return None

    def start(self, name: str) -> bool:
        """Start one process in the background in its own process group (so `stop` ends its children too), unless
        it runs already. Returns whether it was started now."""
        if (pid := self.running(name)) is not None:
            self.say(f"    {name}: already running (pid {pid}), reused")
            return False
        self.logs.mkdir(parents=True, exist_ok=True)
        with (self.logs / f"{name}.log").open("a") as log:
            process = subprocess.Popen(self.commands()[name], stdout=log, stderr=subprocess.STDOUT,
                                       stdin=subprocess.DEVNULL, env=self.env(), cwd=PROJECT_ROOT,
                                       start_new_session=True)  # fmt: skip
        self.pid_file(name).write_text(f"{process.pid} {_start_time(process.pid) or '-'}")
        self.say(f"    {name}: started (pid {process.pid}, log {self.logs / f'{name}.log'})")
        return True

    def start_airflow(self) -> None:
        """Migrate the metadata database when no Airflow process runs, then start the four that do not run."""
        self.password()
        if all(self.running(name) is None for name in AIRFLOW_PROCESSES):
            self.run_logged([str(Path(sys.executable).with_name("airflow")), "db", "migrate"], "airflow-db")
            for path in (self.airflow_home / "airflow.cfg",):  # it holds the JWT secret and the Fernet key
                if path.exists():
                    path.chmod(0o600)
        for name in AIRFLOW_PROCESSES:
            self.start(name)

    def start_services(self) -> None:
        for name in SERVICES:
            self.start(name)

    def stop(self) -> list[str]:
        """End exactly the processes this stack started (their process groups), from the pid files; SIGKILL what
        is still there after a grace period. Returns what was stopped."""
        run_dir = self.home / "run"
        names = sorted(p.stem for p in run_dir.glob("*.pid")) if run_dir.exists() else []
        pids = {name: pid for name in names if (pid := self.running(name)) is not None}
        for pid in pids.values():
            _signal_group(pid, signal.SIGTERM)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and any(_group_alive(pid) for pid in pids.values()):
            time.sleep(0.2)
        for pid in pids.values():
            if _group_alive(pid):
                _signal_group(pid, signal.SIGKILL)
        for name in names:
            self.pid_file(name).unlink(missing_ok=True)
        return [f"{name} (pid {pid})" for name, pid in pids.items()]

    def sessions(self) -> set[int]:
        """The session ids of the running processes this stack started (each was started as its own session)."""
        return {pid for name in self.commands() if (pid := self.running(name)) is not None}

    @staticmethod
    def leftovers(sessions: set[int]) -> list[int]:
        """Pids of processes still alive in these sessions: what the stack started and their children."""
        found = []
        for entry in Path("/proc").glob("[0-9]*"):
            stat = _stat(int(entry.name))
            # Fields 3 and 6 of /proc/pid/stat: the state (Z: a zombie, ended) and the session id.
            if stat is not None and stat[0] != "Z" and int(stat[3]) in sessions:
                found.append(int(entry.name))
        return found

    def run_logged(self, command: list[str], name: str) -> str:
        """Run a command to its end with its output in logs/<name>.log; StackError with the log's end if it fails."""
        self.logs.mkdir(parents=True, exist_ok=True)
        log = self.logs / f"{name}.log"
        done = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=self.env(),
                              cwd=PROJECT_ROOT, check=False)  # fmt: skip
        log.write_text(done.stdout)
        if done.returncode != 0:
            tail = "\n".join(done.stdout.rstrip().splitlines()[-20:])
            raise StackError(f"{' '.join(command[-3:])} failed (exit {done.returncode}); the end of {log}:\n{tail}")
        return done.stdout

    # ---- waiting ---------------------------------------------------------------------------------------------

    def wait_http(self, name: str, url: str, timeout_s: float, ok=lambda r: r.status_code == 200) -> httpx.Response:
        """Poll url until ok(response); StackError when the process died or the time ran out."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                response = httpx.get(url, timeout=5)
                if ok(response):
                    return response
            except httpx.TransportError:
                pass
            if self.running(name) is None:
                raise StackError(f"{name} is not running; the end of its log:\n{self.log_tail(name)}")
            if time.monotonic() > deadline:
                raise StackError(f"{name} did not answer {url} within {timeout_s:.0f} s; its log:\n"
                                 f"{self.log_tail(name)}")  # fmt: skip
            time.sleep(1)

    def log_tail(self, name: str, lines: int = 20) -> str:
        path = self.logs / f"{name}.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else f"({path}: none)"

    def client(self, timeout_s: float = 180) -> "AirflowAPI":
        self.wait_http("api-server", f"{self.airflow_url}/api/v2/monitor/health", timeout_s)
        return AirflowAPI(self.airflow_url, AIRFLOW_USER, self.password())

    def wait_for_dags(self, api: "AirflowAPI", timeout_s: float = 180) -> None:
        """Until the dag-processor has parsed the three DAGs (an import error fails at once)."""
        deadline = time.monotonic() + timeout_s
        while True:
            errors = api.get("/api/v2/importErrors").get("import_errors", [])
            if errors:
                raise StackError("DAG import errors: " + "; ".join(f"{e['filename']}: {e['stack_trace'][-300:]}"
                                                                   for e in errors))  # fmt: skip
            if all(api.get(f"/api/v2/dags/{dag_id}", missing_ok=True) for dag_id in DAGS):
                return
            if self.running("dag-processor") is None:
                raise StackError(f"the dag-processor stopped; its log:\n{self.log_tail('dag-processor')}")
            if time.monotonic() > deadline:
                raise StackError(f"the DAGs were not parsed within {timeout_s:.0f} s; see {self.logs}/dag-processor.log")
            time.sleep(2)

    # ---- the chain ---------------------------------------------------------------------------------------------

    def run_ingest(self, api: "AirflowAPI", has_work: bool, timeout_s: float = 1800) -> None:
        """Unpause ingest_events and materialize_features and follow them until ingest's run has ended and no
        materialisation its Asset events asked for is left (each accepted batch announces the lake as updated, so
        materialize_features may run more than once while ingest works through the batches)."""
        paused = {dag_id: api.get(f"/api/v2/dags/{dag_id}")["is_paused"] for dag_id in DAGS[:2]}
        since = api.now()
        for dag_id in ("materialize_features", "ingest_events"):
            if paused[dag_id]:
                api.patch(f"/api/v2/dags/{dag_id}", {"is_paused": False})
                self.say(f"    {dag_id}: unpaused" + ("; its hourly run starts now" if dag_id == "ingest_events" else
                                                      ", scheduled on ingest's Asset"))  # fmt: skip
        if not paused["ingest_events"]:
            if not has_work:
                self.say("    ingest_events: nothing new in the landing zone, no run needed")
                return
            api.trigger("ingest_events")
            self.say("    ingest_events: triggered (new batches in the landing zone)")
        watch = RunWatch(api, self.say, since)
        ingest = watch.wait_for_run("ingest_events", timeout_s=120)
        watch.follow(lambda: watch.finished(ingest) and api.assets_settled("materialize_features"),
                     ("ingest_events", "materialize_features"), timeout_s)  # fmt: skip
        watch.require_success(("ingest_events", "materialize_features"))

    def run_retrain(self, api: "AirflowAPI", has_champion: bool, timeout_s: float = 1800) -> None:
        """Unpause retrain_models now that the features are fresh (its daily run starts at once) and follow that
        run to publish; on a stack where it is unpaused already, trigger it only when there is no champion."""
        since = api.now()
        if api.get("/api/v2/dags/retrain_models")["is_paused"]:
            api.patch("/api/v2/dags/retrain_models", {"is_paused": False})
            self.say(f"    retrain_models: unpaused; its daily run starts now (preset {self.preset})")
        elif not has_champion:
            api.trigger("retrain_models")
            self.say(f"    retrain_models: triggered (no champion yet; preset {self.preset})")
        else:
            self.say("    retrain_models: a champion is published already, no retraining needed")
            return
        watch = RunWatch(api, self.say, since)
        retrain = watch.wait_for_run("retrain_models", timeout_s=120)
        watch.follow(lambda: watch.finished(retrain), ("retrain_models",), timeout_s)
        watch.require_success(("retrain_models",))

    def last_runs(self, api: "AirflowAPI") -> dict[str, dict | None]:
        """Each DAG's newest run (state, type, times) as the REST API reports it."""
        return {dag_id: next(iter(api.runs(dag_id, limit=1)), None) for dag_id in DAGS}


class AirflowAPI:
    """Airflow 3's REST API (/api/v2) with a JWT from POST /auth/token, renewed when it expires."""

    def __init__(self, url: str, username: str, password: str):
        self.url, self._login = url, {"username": username, "password": password}
        self._http = httpx.Client(base_url=url, timeout=30)
        self._token = None

    def _headers(self) -> dict[str, str]:
        if self._token is None:
            response = self._http.post("/auth/token", json=self._login)
            if response.status_code not in (200, 201):
                raise StackError(f"POST /auth/token answered {response.status_code}: {response.text[:200]}")
            self._token = response.json()["access_token"]
        return {"Authorization": f"Bearer {self._token}"}

    def token(self) -> str:
        self._headers()
        return self._token

    def request(self, method: str, path: str, missing_ok: bool = False, **kwargs):
        for _ in range(2):
            response = self._http.request(method, path, headers=self._headers(), **kwargs)
            if response.status_code == 401:
                self._token = None
                continue
            break
        if missing_ok and response.status_code == 404:
            return None
        if response.status_code >= 400:
            raise StackError(f"{method} {path} answered {response.status_code}: {response.text[:300]}")
        return response.json() if response.content else {}

    def get(self, path: str, missing_ok: bool = False, **params):
        return self.request("GET", path, missing_ok=missing_ok, params=params or None)

    def patch(self, path: str, body: dict):
        return self.request("PATCH", path, json=body)

    def trigger(self, dag_id: str) -> dict:
        return self.request("POST", f"/api/v2/dags/{dag_id}/dagRuns", json={"logical_date": None})

    def runs(self, dag_id: str, limit: int = 20) -> list[dict]:
        return self.get(f"/api/v2/dags/{dag_id}/dagRuns", order_by="-run_after", limit=limit)["dag_runs"]

    def tasks(self, dag_id: str, run_id: str) -> list[dict]:
        path = f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances"
        return self.get(path, limit=1000)["task_instances"]

    def assets_settled(self, dag_id: str) -> bool:
        """No run of this Asset-scheduled DAG active and no Asset event queued for it (events that arrived after
        its last run started would make another)."""
        active = [r for r in self.runs(dag_id, limit=5) if r["state"] in ("queued", "running")]
        queued = self.get(f"/api/v2/dags/{dag_id}/assets/queuedEvents", missing_ok=True)
        return not active and not (queued or {}).get("queued_events")

    def now(self) -> datetime:
        return datetime.now(UTC)


def _parse(stamp: str | None) -> datetime | None:
    return datetime.fromisoformat(stamp) if stamp else None


class RunWatch:
    """Follows the DAG runs queued since a moment: a line when a run starts or ends and when a task's state
    changes (a mapped task as one line, with its count)."""

    def __init__(self, api: AirflowAPI, say: Callable[[str], None], since: datetime):
        self.api, self.say, self.since = api, say, since
        self.seen: dict[tuple, str] = {}  # (dag_id, run_id[, task_id]) -> the state last printed
        self.started: dict[tuple, float] = {}
        self.runs: dict[tuple, dict] = {}  # (dag_id, run_id) -> the run as last read
        self.quarters: dict[tuple, int] = {}  # a mapped task's quarters of instances done, as last printed

    def new_runs(self, dag_id: str) -> list[dict]:
        return [r for r in self.api.runs(dag_id) if (_parse(r.get("queued_at")) or self.since) >= self.since]

    def wait_for_run(self, dag_id: str, timeout_s: float) -> tuple[str, str]:
        deadline = time.monotonic() + timeout_s
        while not (found := self.new_runs(dag_id)):
            if time.monotonic() > deadline:
                raise StackError(f"the scheduler created no {dag_id} run within {timeout_s:.0f} s")
            time.sleep(1)
        return dag_id, found[-1]["dag_run_id"]

    def finished(self, key: tuple[str, str]) -> bool:
        return self.runs.get(key, {}).get("state") in ("success", "failed")

    def follow(self, done: Callable[[], bool], dag_ids: tuple[str, ...], timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            for dag_id in dag_ids:
                for run in reversed(self.new_runs(dag_id)):
                    self._update(dag_id, run)
            if done():
                return
            if time.monotonic() > deadline:
                raise StackError(f"{', '.join(dag_ids)} did not finish within {timeout_s:.0f} s")
            time.sleep(2)

    def require_success(self, dag_ids: tuple[str, ...]) -> None:
        failed = [f"{d} {r}" for (d, r), run in self.runs.items() if d in dag_ids and run["state"] == "failed"]
        if failed:
            raise StackError(f"failed DAG runs: {', '.join(failed)} (task logs under AIRFLOW_HOME/logs/dag_id=...)")

    def _update(self, dag_id: str, run: dict) -> None:
        key = (dag_id, run["dag_run_id"])
        self.runs[key] = run
        if key not in self.seen:
            self.started[key] = time.monotonic()
            self.seen[key] = "new"
            self.say(f"    {dag_id}: run {run['dag_run_id']} ({run['run_type']}) {run['state']}")
        by_task: dict[str, Counter] = {}
        for ti in self.api.tasks(*key):
            by_task.setdefault(ti["task_id"], Counter())[ti["state"] or "none"] += 1
        for task_id, states in by_task.items():
            shown = _summary(states)
            task_key = (*key, task_id)
            if shown is None or self.seen.get(task_key) == shown:
                self._progress(dag_id, task_id, task_key, states)
                continue
            if shown == "running" or task_key not in self.started:
                self.started[task_key] = time.monotonic()
            took = "" if shown == "running" else f" ({time.monotonic() - self.started[task_key]:,.0f} s)"
            count = sum(states.values())
            mapped = f" x{count}" if count > 1 or states.get("none") else ""
            self.seen[task_key] = shown
            self.say(f"    {dag_id}.{task_id}{mapped}: {shown}{took}")
        if run["state"] in ("success", "failed") and self.seen[key] != run["state"]:
            self.seen[key] = run["state"]
            self.say(f"    {dag_id}: run {run['dag_run_id']} {run['state']} "
                     f"in {time.monotonic() - self.started[key]:,.0f} s")  # fmt: skip


    def _progress(self, dag_id: str, task_id: str, task_key: tuple, states: Counter) -> None:
        """A line for a mapped task each quarter of its instances done (53 weekly batches take minutes)."""
        count = sum(states.values())
        done = sum(n for s, n in states.items() if s in TERMINAL)
        quarter = 4 * done // count if count > 3 else 0
        if self.seen.get(task_key) == "running" and 0 < quarter < 4 and quarter > self.quarters.get(task_key, 0):
            self.quarters[task_key] = quarter
            took = time.monotonic() - self.started[task_key]
            self.say(f"    {dag_id}.{task_id} x{count}: {done} of {count} done ({took:,.0f} s)")


def _summary(states: Counter) -> str | None:
    """One state for a task's instances (all of a mapped task's): running while any is not finished."""
    if all(s in TERMINAL for s in states):
        for state in ("failed", "upstream_failed", "success", "skipped", "removed"):
            if state in states:
                return state
    for state in ("up_for_retry", "deferred", "running"):
        if state in states:
            return state
    return "running" if any(s in TERMINAL for s in states) else None


def _stat(pid: int) -> list[str] | None:
    """/proc/pid/stat's fields after the command name (state first), or None where the process or /proc is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2 :].split()


def _start_time(pid: int) -> str | None:
    """When the process started, in clock ticks since boot (field 22 of /proc/pid/stat)."""
    stat = _stat(pid)
    return stat[19] if stat else None


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _group_alive(pgid: int) -> bool:
    """Whether a process of this group still runs (a zombie, dead but not yet reaped by its parent, does not)."""
    try:
        os.waitpid(pgid, os.WNOHANG)  # reap the leader where this process started it (the tests do)
    except ChildProcessError:
        pass
    if not Path("/proc/self/stat").exists():
        try:
            os.killpg(pgid, 0)
            return True
        except (ProcessLookupError, PermissionError):
            return False
    return bool(Stack.leftovers({pgid}))
