"""`make demo`: the main job on the embedded defaults, one line of progress per step.

Replays the bundled Online Retail data into the landing zone, then runs the three DAGs under Airflow in order
(ingest_events -> materialize_features -> retrain_models). Everything the libraries print goes to log files under
SHOPREC_HOME/logs; the terminal gets a line per task (mapped tasks counted), the running task's progress bar kept on
one line when it is a terminal, and at the end what to look at next.
"""

import os
import re
import subprocess
import sys
import time
from pathlib import Path

from core.layout import Layout
from core.settings import get_settings

DAGS = ("ingest_events", "materialize_features", "retrain_models")
# `airflow dags test` announces each task instance like this (Airflow 3.3's DAG.test()).
TASK_EVENT = re.compile(r"\[DAG TEST\] (starting|end task) task_id=(\S+)(?: map_index=(-?\d+))?")
TQDM_BAR = re.compile(r"\S[^|\n]*:\s+\d+%\|[^|]*\|[^\r\n]*")  # "two-tower:  40%|####      | 4/10 [00:20<00:30]"


def main() -> int:
    settings = get_settings()
    layout = Layout(settings.home)
    logs = settings.home / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    shoprec = [sys.executable, "-m", "shoprec"]
    airflow = [str(Path(sys.executable).with_name("airflow"))]
    started = time.perf_counter()

    step("replay the bundled Online Retail data into the landing zone, one batch a week")
    if not run([*shoprec, "replay", "online_retail", "--every", "week"], logs / "replay.log", show=True):
        return 1
    step("prepare Airflow's metadata database (SQLite)")
    if not run([*airflow, "db", "migrate"], logs / "airflow-db.log"):
        return 1
    for dag_id in DAGS:
        step(f"{dag_id}: run under Airflow (log: {logs / f'{dag_id}.log'})")
        if not run_dag(airflow, dag_id, logs / f"{dag_id}.log"):
            return 1
        if dag_id == "ingest_events":
            run([*shoprec, "status"], logs / "status.log", show="tail")
        elif dag_id == "materialize_features":
            step("an online read through the serving path (list features summarised)")
            run(
                [*shoprec, "features", "read", "12748", "23084", "--service", "ranker_v1"], logs / "read.log", show=True
            )
    step("the retraining run's evaluation and the champion")
    run([*shoprec, "models"], logs / "models.log", show=True)
    step(f"the recommendation service on the champion (log: {logs / 'serve.log'})")
    example = serve(settings, shoprec, logs)
    if example is None:
        return 1
    print(f"\ndemo done in {time.perf_counter() - started:,.0f} s.\n")
    print(next_steps(layout, logs, example))
    return 0


def serve(settings, shoprec: list[str], logs: Path) -> str | None:
    """Start `shoprec serve` in the background on the shop's clock (the data is from 2011), unless this home's is
    already running; wait until it is ready and show one answer. Returns the curl that got it."""
    import json

    import httpx

    url = f"http://127.0.0.1:{settings.serving_port}"
    if running("serve", settings.home) is None:
        with (logs / "serve.log").open("w") as log:
            process = subprocess.Popen([*shoprec, "serve", "--clock", "shop", "--port", str(settings.serving_port)],
                                       stdout=log, stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
        pid_file(settings.home, "serve").write_text(str(process.pid))
    deadline = time.monotonic() + 180
    while True:
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                break
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline or running("serve", settings.home) is None:
            print(f"FAILED: the service did not become ready; the end of {logs / 'serve.log'}:")
            print(*(logs / "serve.log").read_text().splitlines()[-20:], sep="\n")
            return None
        time.sleep(1)
    body = {"user_id": "12748", "k": 3}
    curl = f"curl -s -X POST {url}/recommend -H 'Content-Type: application/json' -d '{json.dumps(body)}'"
    answer = httpx.post(f"{url}/recommend", json=body, timeout=10).json()
    print(f"    {curl}\n    -> {json.dumps(answer)}")
    return curl


def pid_file(home: Path, name: str) -> Path:
    (home / "run").mkdir(parents=True, exist_ok=True)
    return home / "run" / f"{name}.pid"


def running(name: str, home: Path) -> int | None:
    """The pid of a process this demo started and that still runs, or None."""
    path = pid_file(home, name)
    try:
        pid = int(path.read_text())
        os.kill(pid, 0)
        return pid
    except (FileNotFoundError, ValueError, ProcessLookupError):
        path.unlink(missing_ok=True)
        return None


def stop() -> int:
    """`make stop`: end exactly the processes the demo started (their process groups), from their pid files."""
    import signal

    home = get_settings().home
    for path in sorted((home / "run").glob("*.pid")) if (home / "run").exists() else []:
        if (pid := running(path.stem, home)) is not None:
            os.killpg(pid, signal.SIGTERM)
            for _ in range(50):
                if running(path.stem, home) is None:
                    break
                time.sleep(0.2)
            else:
                os.killpg(pid, signal.SIGKILL)
            print(f"stopped {path.stem} (pid {pid})")
        path.unlink(missing_ok=True)
    return 0


def step(text: str) -> None:
    print(f"==> {text}", flush=True)


def run(command: list[str], log: Path, show: bool | str = False) -> bool:
    """Run a command with its output in log; show it (or its last lines) when asked, its tail when it fails."""
    done = subprocess.run(
        command, check=False, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=os.environ
    )
    log.write_text(done.stdout)
    lines = done.stdout.rstrip().splitlines()
    if done.returncode != 0:
        print(f"FAILED: {' '.join(command[-3:])} (exit {done.returncode}); the end of {log}:", *lines[-30:], sep="\n")
        return False
    if show:
        print(*(lines[-3:] if show == "tail" else lines), sep="\n")
    return True


def run_dag(airflow: list[str], dag_id: str, log: Path) -> bool:
    """`airflow dags test` with its output in log, a line per task on the terminal; False when the run failed."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if dag_id == "retrain_models":
        env.setdefault("SHOPREC_RETRAIN_PRESET", os.environ.get("DEMO_PRESET", "tiny"))
    live = sys.stdout.isatty()
    with log.open("w") as sink:
        process = subprocess.Popen([*airflow, "dags", "test", dag_id], stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, text=True, env=env, bufsize=1)  # fmt: skip
        watch = TaskWatch(dag_id, live)
        # tqdm redraws with carriage returns: read by character so a bar's progress shows as it moves.
        fragment = ""
        for char in iter(lambda: process.stdout.read(1), ""):
            sink.write(char)
            if char in "\r\n":
                watch.line(fragment)
                fragment = ""
            else:
                fragment += char
        watch.line(fragment)
        code = process.wait()
    watch.finish()
    if code != 0:
        lines = log.read_text().splitlines()
        print(f"FAILED: {dag_id} (exit {code}); the end of {log}:", *lines[-30:], sep="\n")
    return code == 0


class TaskWatch:
    """Turns Airflow's task announcements into one line per finished task (a mapped task once, with its count)."""

    def __init__(self, dag_id: str, live: bool):
        self.dag_id, self.live = dag_id, live
        self.current, self.since, self.mapped = None, time.perf_counter(), 0

    def line(self, text: str) -> None:
        event = TASK_EVENT.search(text)
        if event:
            kind, task_id, map_index = event.groups()
            if kind == "starting" and task_id != self.current:
                self._close()
                self.current, self.since, self.mapped = task_id, time.perf_counter(), 0
                self._status("running")
            elif kind == "end task" and map_index not in (None, "-1"):
                self.mapped += 1
                self._status(f"{self.mapped} done")
            return
        bar = TQDM_BAR.search(text)
        if bar and self.current:
            self._status(bar.group(0).strip()[:90])

    def finish(self) -> None:
        self._close()

    def _close(self) -> None:
        if self.current is None:
            return
        count = f" x{self.mapped}" if self.mapped else ""
        self._clear()
        print(f"    {self.dag_id}.{self.current}{count}: done in {time.perf_counter() - self.since:,.0f} s", flush=True)
        self.current = None

    def _status(self, text: str) -> None:
        if self.live:
            self._clear()
            elapsed = time.perf_counter() - self.since
            print(f"    {self.dag_id}.{self.current}: {text} ({elapsed:,.0f} s)", end="", flush=True)

    def _clear(self) -> None:
        if self.live:
            print("\r\033[K", end="")


def next_steps(layout: Layout, logs: Path, curl: str) -> str:
    home = layout.home
    return f"""What next:
  The recommendation service is running (judging freshness on the shop's clock: the data is from 2011):
      {curl}
      curl -s -X POST http://127.0.0.1:{get_settings().serving_port}/similar_items -H 'Content-Type: application/json' -d '{{"item_id": "23084", "k": 3}}'
      API docs: http://127.0.0.1:{get_settings().serving_port}/ (OpenAPI at /docs.json); stop it with `make stop`.
  The Airflow UI, with these runs in its history (the DAGs start paused; unpause them there or with
  `airflow dags unpause ingest_events`):
      export SHOPREC_HOME={home} AIRFLOW_HOME={os.environ.get("AIRFLOW_HOME", home / "airflow")} \\
             AIRFLOW__CORE__DAGS_FOLDER={Path("dags").resolve()} AIRFLOW__CORE__LOAD_EXAMPLES=False PATH={Path(sys.executable).parent}:$PATH
      airflow standalone        # http://localhost:8080, the login is printed when it starts
  The same features another team would read, through the feature server (stale values marked, not served as fresh):
      shoprec feature-server --port 6566 --clock shop &
      curl -s -X POST http://localhost:6566/get-online-features -H 'Content-Type: application/json' \\
        -d '{{"feature_service": "ranker_v1", "entities": {{"user_id": ["12748"], "item_id": ["23084"]}}}}'
  The command line: `shoprec status` (the ingest ledger), `shoprec features read USER ITEM...`, `shoprec models`.
  Logs of every step: {logs}/ (the Airflow task logs are in {logs}/<dag>.log)."""


if __name__ == "__main__":
    sys.exit(stop() if sys.argv[1:] == ["stop"] else main())
