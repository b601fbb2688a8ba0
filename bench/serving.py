"""Serving speed on this machine (bench/results/serving.json): `python -m bench.serving [--quick] [DATASET ...]`.

For each dataset a shop is built the way the serving tests build theirs (replay through the gate, features, Feast
apply and materialise, retrain and publish a champion: online_retail the whole bundled data replayed weekly, exact
index; taobao the ../shared/data excerpt replayed daily, 55k items, HNSW) and cached under bench/.cache/<dataset>-
<preset>/, since a full-preset retrain takes 5-20 minutes here. Then, one after the other on the same shop:

  shoprec-1w, shoprec-2w   `shoprec serve --workers N --clock shop` (serving.service:Recommender)
  shoprec-2w-no-memo       the same with SHOPREC_SERVING_REMEMBERED_USERS=0: every request a first visit (the
                           user tower and the shortlist built each time)
  naive-<N>w               `bentoml serve bench.naive_service:NaiveRecommender`: the same champion and models,
                           features through Feast's get_online_features per request
  echo-2w                  `bentoml serve bench.echo_service:EchoRecommender`: the same HTTP contract answering
                           a fixed list, no model: what BentoML, loopback and the load generator cost alone

The fixed-rate run of shoprec-2w, the configuration the targets are for, lasts --seconds (5 minutes); the others'
--side-seconds (1 minute), enough for their medians and the comparison.

Each is warmed up (readyz, then WARMUP requests not counted) and driven by a load generator in its own process on
127.0.0.1 (asyncio + aiohttp): a fixed-rate run, open loop (request i is sent at t0 + i/rate whatever happened
before, and its latency counts from that moment, so a stalled server is charged for the queue it causes: no
coordinated omission; asyncio wakes up to a millisecond late, so each send spins its last SEND_SPIN_S to leave on
time, and how late sends still were is reported as send_late_ms; requests go round a pool of POOL keep-alive
connections, as a front end's pool would spread them, and each worker's CPU over the run shows how they spread:
worker_cpu_share), and a saturation run, closed loop (CONNECTIONS connections, each sending its next request when
the last one answers), whose completed requests per second are the service's capacity with the load generator on
the same two cores. Each run opens its connections one at a time (OPEN_GAP_S apart) before its clock starts: the
workers share one listening socket, and a burst of connections is accepted by whichever worker is awake.
Requests: POST /recommend, k=10, for users sampled from those with events in the shop's last RECENT_DAYS days plus
UNKNOWN_SHARE of ids the shop never saw (the cold-start path). An error is a non-200 answer or a transport failure
(timeouts included). After the runs, each served process's resident memory (VmRSS of the bentoml serve process and
every descendant: the workers).

The per-stage time of one request is measured in this process, before any server starts, on the same champion:
serving/recommend.py's steps timed inside its own calls for known users. The benchmark runs with one BLAS/OpenMP
thread (it starts itself again with them set), as `shoprec serve` runs each worker.
"""

import argparse
import asyncio
import contextlib
import dataclasses
import datetime
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).resolve().parent / "results" / "serving.json"
CACHE = Path(__file__).resolve().parent / ".cache"
DATASETS = ("online_retail", "taobao")
EVERY = {"online_retail": "week", "taobao": "day"}
RATE = 100  # req/s of the fixed-rate run (the target)
SECONDS = 300  # length of the fixed-rate run (the target is 5 minutes)
SATURATION_SECONDS = 30
SIDE_SECONDS = 60  # length of the other services' fixed-rate runs
SIDE_SERVICES = {"naive": "bench.naive_service:NaiveRecommender", "echo": "bench.echo_service:EchoRecommender"}
SEND_SPIN_S = 0.0015  # a fixed-rate send sleeps until this long before its moment, then spins: asyncio sleeps in
# whole milliseconds, rounded up, and a late send is charged to the service (0.77 ms at the median on echo-1w)
CONNECTIONS = 12  # closed-loop connections of the saturation run
POOL = 16  # keep-alive connections the fixed-rate run spreads its requests over
OPEN_GAP_S = 0.05  # between opening one connection of a run and the next
WARMUP = 300  # requests per service before anything counts
TIMEOUT_S = 10  # a request not answered in this long is an error (the service's own traffic timeout is 10 s)
RECENT_DAYS = 30
USERS = 2000
UNKNOWN_SHARE = 0.1
STAGE_REQUESTS = 300
TARGETS = {"fixed_rate": {"rate": RATE, "seconds": 300, "p50_ms": 5, "p99_ms": 15, "errors": 0},
           "saturated": {"req_s": 250, "times_naive": 5}}  # fmt: skip


# ---------------------------------------------------------------------------------------------------------------
# The shop and its champion


def build_home(dataset: str, preset: str, data_dir: Path) -> tuple[Path, dict]:
    """The cached shop home for (dataset, preset), built when absent: (home, facts about its build). A build
    stopped part-way resumes: the shop (lake, features, online store) once, then each retrain step once."""
    home = CACHE / f"{dataset}-{preset}"
    done = home / "bench-built.json"
    if done.exists():
        return home, {**json.loads(done.read_text()), "cached": True}
    from core.layout import Layout, lake_as_of
    from core.settings import Settings
    from training import retrain

    settings = Settings(home=home)
    layout = Layout(home)
    shop = home / "bench-shop.json"
    started = time.perf_counter()
    if not shop.exists():
        if home.exists():  # a shop stopped half-way: start again
            shutil.rmtree(home)
        home.mkdir(parents=True)
        print(f"[{dataset}] building the shop under {home} (minutes) ...", flush=True)
        from features.build import build
        from features.store import apply, materialize, open_store
        from ingest import datasets, replay
        from validation.catalog import apply_feeds
        from validation.gate import pending_batches, run_gate

        source = datasets.load(dataset, None if dataset == "online_retail" else data_dir)
        landed = replay.land(source, layout, every=EVERY[dataset])
        apply_feeds(layout)
        verdicts = [run_gate(path, layout, settings) for path in pending_batches(layout)]
        accepted = sum(v.status == "accepted" for v in verdicts)
        print(f"[{dataset}] {len(source.events):,} events in {len(landed)} batches, {accepted} accepted", flush=True)
        build(layout)
        store = open_store(settings)
        apply(store, settings)
        materialize(store, layout, lake_as_of(layout))
        shop.write_text(json.dumps({"events": len(source.events), "batches": len(landed),
                                    "accepted_batches": int(accepted), "clock": str(lake_as_of(layout)),
                                    "shop_seconds": round(time.perf_counter() - started, 1)}, indent=2) + "\n")  # fmt: skip
    facts = json.loads(shop.read_text())
    print(f"[{dataset}] retraining a {preset} champion (minutes; steps done before are skipped) ...", flush=True)
    run_id, steps = f"bench-{preset}", home / "bench-steps"
    steps.mkdir(exist_ok=True)
    stepped = time.perf_counter()
    for step in ("prepare", "train_retrieval", "embed_catalog", "train_ranker", "evaluate", "gate", "publish"):
        if (steps / step).exists():
            continue
        call = getattr(retrain, step)
        result = call(settings, run_id, preset) if step == "prepare" else call(settings, run_id)
        (steps / step).write_text(json.dumps(result, default=str)[:10_000])
    published = json.loads((steps / "publish").read_text()).get("published")
    if not published:
        raise SystemExit(f"[{dataset}] the retrain published no champion: see {steps / 'gate'}")
    facts = {**facts, "champion": published, "retrain_seconds_last_attempt": round(time.perf_counter() - stepped, 1)}
    done.write_text(json.dumps(facts, indent=2) + "\n")
    return home, {**facts, "cached": False}


def sample_users(home: Path, seed: int = 0) -> tuple[list[str], int]:
    """(user ids for the requests: USERS with events in the last RECENT_DAYS days, and unknown ones, shuffled,
    how many are unknown)."""
    from core.layout import Layout, lake_as_of
    from features.build import read_events

    layout = Layout(home)
    clock = lake_as_of(layout)
    events = read_events(layout, clock.strftime("%Y-%m-%d"), columns=["user_id", "event_timestamp"])
    import pandas as pd

    recent = events[events["event_timestamp"] >= clock - pd.Timedelta(days=RECENT_DAYS)]
    users = np.sort(recent["user_id"].astype(str).unique())
    rng = np.random.default_rng(seed)
    known = rng.choice(users, min(USERS, len(users)), replace=False).tolist()
    unknown = [f"bench-unknown-{i}" for i in range(round(len(known) * UNKNOWN_SHARE / (1 - UNKNOWN_SHARE)))]
    picked = known + unknown
    rng.shuffle(picked)
    return picked, len(unknown)


# ---------------------------------------------------------------------------------------------------------------
# Per-stage time of one request, in process


def stage_times(home: Path, users: list[str]) -> dict:
    """Median and p99 ms of each step of serving/recommend.py's personalised path, for known users with fresh
    features (the cold path has no model steps), and of the whole recommend() call, for every sampled known user
    (cold ones included: they answer from popularity) and for the personalised ones alone.

    The steps are timed inside the real call: the functions recommend() calls are wrapped for this measurement
    (the online user read, the user tower, the ANN search, the shortlist and its clock's features, the ranker);
    what is left of the call (exact scoring and ranks, filters, top k, the answer) is `the_rest`. Each user's
    first request: nothing of theirs is remembered yet. recommend_call_returning times the same users' second
    request, which finds their vector and shortlist in the champion's memo."""
    from unittest import mock

    import torch
    from tqdm import tqdm

    from core.layout import Layout, lake_as_of
    from core.settings import Settings
    from features.store import open_store
    from serving import recommend as path
    from serving.champion import OnlineRetrieval, load_champion
    from training.candidates import Shortlist

    torch.set_num_threads(1)  # as each worker runs
    settings = Settings(home=home)
    now = lake_as_of(Layout(home))
    started = time.perf_counter()
    champion = load_champion(settings, open_store(settings), now)
    load_s = time.perf_counter() - started
    ranker = champion.recommender.ranker
    laps: dict[str, float] = {}

    def timed(name: str, function):
        def run(*args, **kwargs):
            tick = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                laps[name] = laps.get(name, 0.0) + time.perf_counter() - tick

        return run

    class TimedIndex:  # the champion's index with its search timed
        def __init__(self, index):
            self.index, self.search = index, timed("ann_search", index.search)

    steps = [("user_features", OnlineRetrieval, "_users"), ("user_tower", OnlineRetrieval, "users"),
             ("ranker_features", path, "shortlist"), ("ranker_features", Shortlist, "features"),
             ("ranker", type(ranker), "probabilities")]  # fmt: skip
    if not champion.exact:
        champion = dataclasses.replace(champion, index=TimedIndex(champion.index))
    timed_steps = tuple(dict.fromkeys(name for name, _, _ in steps)) + (("ann_search",) if not champion.exact else ())
    stages = {name: [] for name in (*timed_steps, "the_rest")}
    whole, whole_personalised, personalised = [], [], 0
    sample = (users * (STAGE_REQUESTS // max(len(users), 1) + 1))[:STAGE_REQUESTS]
    with contextlib.ExitStack() as patches:
        for name, owner, attribute in steps:
            patches.enter_context(mock.patch.object(owner, attribute, timed(name, getattr(owner, attribute))))
        for n, user_id in enumerate(tqdm(sample, desc="stages", unit="req", leave=False)):
            laps.clear()
            tick = time.perf_counter()
            answer = path.recommend(champion, user_id, 10, now=now)
            whole.append(time.perf_counter() - tick)
            if n < 20 or answer.fallback:  # the first calls warm caches; a cold user has no model steps
                continue
            personalised += 1
            whole_personalised.append(whole[-1])
            for name in timed_steps:
                stages[name].append(laps.get(name, 0.0))
            stages["the_rest"].append(whole[-1] - sum(laps.get(name, 0.0) for name in timed_steps))
    returning = []  # the same users again: their vector and shortlist come from the champion's memo
    for user_id in sample[20:]:
        tick = time.perf_counter()
        answer = path.recommend(champion, user_id, 10, now=now)
        if not answer.fallback:
            returning.append(time.perf_counter() - tick)

    def summary(values):
        ms = np.asarray(values) * 1000
        return {"p50_ms": round(float(np.median(ms)), 3), "p99_ms": round(float(np.percentile(ms, 99)), 3)} if len(
            ms) else None  # fmt: skip

    return {"champion": champion.tag, "items": len(champion.item_ids), "index": "exact" if champion.exact else "hnsw",
            "candidates": int(ranker.config.candidates), "load_seconds": round(load_s, 1),
            "personalised_requests": personalised, "stages": {k: summary(v) for k, v in stages.items()},
            "recommend_call": summary(whole[20:]), "recommend_call_personalised": summary(whole_personalised),
            "recommend_call_returning": summary(returning)}  # fmt: skip


# ---------------------------------------------------------------------------------------------------------------
# The load generator (its own process)


def load_process(
    url: str, bodies: list[bytes], mode: str, rate: float, seconds: float, connections: int, count: int, queue
) -> None:
    """Runs in a child process: mode 'fixed' (open loop at rate for seconds), 'closed' (connections for seconds)
    or 'warmup' (count requests, closed loop); puts the result dict on queue."""
    queue.put(asyncio.run(_drive(url, bodies, mode, rate, seconds, connections, count)))


async def _drive(url, bodies, mode, rate, seconds, connections, count) -> dict:
    import aiohttp

    latencies, errors, late = [], {}, []
    headers = {"Content-Type": "application/json"}
    timeout = aiohttp.ClientTimeout(total=TIMEOUT_S)
    # A session per keep-alive connection. Fixed rate: a front end's pool of POOL, request i on connection i % POOL
    # (a second one only while that one is busy); one pooled session reused whichever connection was idle, at
    # 100 req/s nearly always the same one, so every request went to the worker that had accepted it. Closed
    # loop: one per sender.
    sessions = [aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0 if mode == "fixed" else 1),
                                      timeout=timeout) for _ in range(POOL if mode == "fixed" else connections)]  # fmt: skip
    async with contextlib.AsyncExitStack() as stack:
        for session in sessions:
            await stack.enter_async_context(session)
        loop = asyncio.get_running_loop()

        async def one(body: bytes, since: float, session=sessions[0]) -> None:
            try:
                async with session.post(url, data=body, headers=headers) as answer:
                    await answer.read()
                    if answer.status != 200:
                        errors[f"http {answer.status}"] = errors.get(f"http {answer.status}", 0) + 1
                        return
            except Exception as error:  # noqa: BLE001 - every transport failure is an error of the run
                errors[type(error).__name__] = errors.get(type(error).__name__, 0) + 1
                return
            latencies.append(loop.time() - since)

        if mode != "warmup":
            # Open the connections before the clock starts, one at a time, as clients arrive: the workers share
            # one listening socket and the first awake accepts everything pending, so a burst of connections
            # landed on one worker (Taobao, 2 workers: 12 saturation connections served at 1 worker's 153 req/s).
            for i, session in enumerate(sessions):
                await one(bodies[i % len(bodies)], loop.time(), session)
                await asyncio.sleep(OPEN_GAP_S)
            latencies.clear()
        t0 = loop.time()
        if mode == "fixed":
            tasks, total = [], int(rate * seconds)
            for i in range(total):
                scheduled = t0 + i / rate
                delay = scheduled - loop.time()
                if delay > SEND_SPIN_S:
                    await asyncio.sleep(delay - SEND_SPIN_S)
                while loop.time() < scheduled:  # asyncio's timers wake up to 1 ms late: spin the rest
                    pass
                late.append(loop.time() - scheduled)
                tasks.append(asyncio.create_task(one(bodies[i % len(bodies)], scheduled, sessions[i % POOL])))
            await asyncio.gather(*tasks)
            sent = total
        else:
            sent = 0
            deadline = t0 + seconds

            async def worker(w: int) -> None:
                nonlocal sent
                i = w
                while (loop.time() < deadline) if mode == "closed" else (i < count):
                    sent += 1
                    await one(bodies[i % len(bodies)], loop.time(), sessions[w])
                    i += connections

            await asyncio.gather(*(worker(w) for w in range(connections)))
        elapsed = loop.time() - t0
    return {"sent": sent, "latencies": latencies, "errors": errors, "elapsed": elapsed, "late": late}


def drive(url: str, bodies: list[bytes], mode: str, rate=0.0, seconds=0.0, connections=1, count=0) -> dict:
    """One run of the load generator in a spawned process; killed if it overstays."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    child = context.Process(target=load_process, args=(url, bodies, mode, rate, seconds, connections, count, queue),
                            daemon=True)  # fmt: skip
    child.start()
    try:
        import queue as queues

        deadline = time.monotonic() + (seconds + TIMEOUT_S + 60 if mode != "warmup" else count * TIMEOUT_S + 60)
        while True:
            try:
                result = queue.get(timeout=1)
                break
            except queues.Empty:
                if not child.is_alive() or time.monotonic() > deadline:
                    raise RuntimeError(f"the load generator ({mode}) died or overstayed") from None
    finally:
        child.join(5)
        if child.is_alive():
            child.kill()
    return result


def figures(result: dict, mode: str, rate: float, seconds: float) -> dict:
    ms = np.asarray(result["latencies"]) * 1000
    ok, errors = len(ms), sum(result["errors"].values())
    row = {"sent": result["sent"], "ok": ok, "errors": errors, "error_kinds": result["errors"],
           "elapsed_s": round(result["elapsed"], 2)}  # fmt: skip
    if mode == "fixed":
        row = {"rate": rate, "seconds": seconds, **row, "achieved_req_s": round(ok / result["elapsed"], 1)}
        late = np.asarray(result["late"]) * 1000  # the generator's own error, charged to the service
        row["send_late_ms"] = {"p50": round(float(np.median(late)), 3), "p99": round(float(np.percentile(late, 99)), 3)}
    else:
        row = {"connections": CONNECTIONS, "seconds": seconds, **row, "req_s": round(ok / result["elapsed"], 1)}
    if ok:
        row.update({f"{name}_ms": round(float(np.percentile(ms, q)), 2)
                    for name, q in (("p50", 50), ("p95", 95), ("p99", 99), ("max", 100))})  # fmt: skip
    return row


# ---------------------------------------------------------------------------------------------------------------
# The servers


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


LIVE: list[subprocess.Popen] = []  # every server this process started, stopped on exit whatever happens


class Server:
    """One `bentoml serve` on a free loopback port, in its own process group."""

    def __init__(self, name: str, home: Path, workers: int, kind: str, log_dir: Path, settings: dict | None = None):
        self.name, self.port = name, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "SHOPREC_HOME": str(home), "SHOPREC_SERVING_CLOCK": "shop",
               "SHOPREC_SERVING_WORKERS": str(workers), **(settings or {})}  # fmt: skip
        env.pop("SHOPREC_API_KEY", None)
        python = sys.executable
        if kind in SIDE_SERVICES:
            bentoml = shutil.which("bentoml", path=str(Path(python).parent)) or "bentoml"
            command = [bentoml, "serve", SIDE_SERVICES[kind], "--host", "127.0.0.1", "--port", str(self.port)]
        else:
            command = [python, "-m", "shoprec", "serve", "--host", "127.0.0.1", "--port", str(self.port),
                       "--workers", str(workers), "--clock", "shop"]  # fmt: skip
        log_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = log_dir / f"{name}.log"
        self.log = self.log_path.open("w")
        self.process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=self.log, stderr=subprocess.STDOUT,
                                        start_new_session=True)  # fmt: skip
        LIVE.append(self.process)

    def wait_ready(self, timeout: float = 900) -> float:
        import urllib.error
        import urllib.request

        started = time.monotonic()
        while time.monotonic() - started < timeout:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.process.returncode}: see {self.log_path}")
            try:
                with urllib.request.urlopen(f"{self.url}/readyz", timeout=2) as answer:
                    if answer.status == 200:
                        return time.monotonic() - started
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.5)
        raise RuntimeError(f"{self.name} not ready in {timeout} s: see {self.log_path}")

    def memory(self) -> list[dict]:
        """VmRSS of the serve process and each descendant (BentoML's workers among them), MiB."""
        import psutil

        rows = []
        root = psutil.Process(self.process.pid)
        for process in [root, *root.children(recursive=True)]:
            try:
                status = Path(f"/proc/{process.pid}/status").read_text()
                rss_kib = int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:")))
                line = " ".join(process.cmdline())
            except (OSError, StopIteration, psutil.Error):
                continue
            role = "worker" if "worker" in line else ("serve" if process.pid == root.pid else "other")
            rows.append({"pid": process.pid, "role": role, "rss_mib": round(rss_kib / 1024, 1), "cmd": line[-120:]})
        return rows

    def worker_cpu_seconds(self) -> dict[int, float]:
        """User + system CPU seconds of each worker so far, by pid."""
        import psutil

        seconds = {}
        for process in psutil.Process(self.process.pid).children(recursive=True):
            try:
                if "worker" in " ".join(process.cmdline()):
                    times = process.cpu_times()
                    seconds[process.pid] = times.user + times.system
            except psutil.Error:
                continue
        return seconds

    def cpu_share(self, before: dict[int, float], seconds: float) -> list[float]:
        """How a run's requests spread over the workers: each one's CPU seconds since before, per second."""
        after = self.worker_cpu_seconds()
        return [round((after[pid] - before.get(pid, 0.0)) / seconds, 3) for pid in sorted(after)]

    def stop(self) -> None:
        stop(self.process)
        self.log.close()


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        try:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)
        except ProcessLookupError:
            pass
    if process in LIVE:
        LIVE.remove(process)


def stop_all(*_):
    while LIVE:
        stop(LIVE[-1])


def measure(name: str, home: Path, workers: int, kind: str, bodies: list[bytes], seconds: float,
            saturation_seconds: float, warmup: int, settings: dict | None = None) -> dict:  # fmt: skip
    server = Server(name, home, workers, kind, CACHE / "logs", settings)
    try:
        ready_s = server.wait_ready()
        url = f"{server.url}/recommend"
        drive(url, bodies, "warmup", connections=4, count=warmup)
        print(f"  {name}: ready in {ready_s:.0f} s, warmed up; saturating for {saturation_seconds:g} s ...", flush=True)
        load_before = os.getloadavg()[0]  # other work on the two cores shows here (the runs do not stop it)
        # Saturation first: closed loop leaves no backlog, while an overloaded fixed-rate run leaves the server
        # working off requests its client gave up on, which would be charged to whatever ran next.
        before = server.worker_cpu_seconds()
        saturated = figures(drive(url, bodies[::-1], "closed", seconds=saturation_seconds, connections=CONNECTIONS),
                            "closed", 0, saturation_seconds)  # fmt: skip
        saturated["worker_cpu_share"] = server.cpu_share(before, saturation_seconds)
        print(f"  {name}: saturated {saturated['req_s']} req/s, {_line(saturated)}; {RATE} req/s ...", flush=True)
        before = server.worker_cpu_seconds()
        fixed = figures(drive(url, bodies, "fixed", rate=RATE, seconds=seconds), "fixed", RATE, seconds)
        fixed["worker_cpu_share"] = server.cpu_share(before, seconds)
        print(f"  {name}: fixed {_line(fixed)}", flush=True)
        memory = server.memory()
        return {"service": kind, "workers": workers, "settings": settings or {}, "ready_seconds": round(ready_s, 1),
                "warmup_requests": warmup, "load_average_1m_before": round(load_before, 2),
                "saturation": saturated, "fixed_rate": fixed, "memory": memory}  # fmt: skip
    finally:
        server.stop()


def _line(row: dict) -> str:
    return (f"p50 {row.get('p50_ms')} p95 {row.get('p95_ms')} p99 {row.get('p99_ms')} max {row.get('max_ms')} ms, "
            f"{row['ok']} ok, {row['errors']} errors")  # fmt: skip


def verdicts(runs: dict) -> dict:
    """Each target, met or not, per shoprec run (the naive one is the yardstick)."""
    target, out = TARGETS, {}
    naive = max((r["saturation"]["req_s"] for r in runs.values() if r["service"] == "naive"), default=None)
    for name, run in runs.items():
        if run["service"] != "shoprec":
            continue
        fixed, saturated = run["fixed_rate"], run["saturation"]
        full_length = fixed["seconds"] >= target["fixed_rate"]["seconds"]
        out[name] = {
            "fixed_rate_full_length": full_length,
            "p50_ms": {"value": fixed.get("p50_ms"), "target": 5, "met": (fixed.get("p50_ms") or 1e9) <= 5},
            "p99_ms": {"value": fixed.get("p99_ms"), "target": 15, "met": (fixed.get("p99_ms") or 1e9) <= 15},
            "errors": {"value": fixed["errors"], "target": 0, "met": fixed["errors"] == 0},
            "saturated_req_s": {"value": saturated["req_s"], "target": 250, "met": saturated["req_s"] >= 250},
            "times_naive": {"value": round(saturated["req_s"] / naive, 2) if naive else None, "target": 5,
                            "met": bool(naive) and saturated["req_s"] >= 5 * naive},
        }  # fmt: skip
    return out


def save(report: dict) -> None:
    """Writes what was measured so far, keeping earlier datasets/presets this run did not measure again."""
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    earlier = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    merged = {**earlier, **report, "datasets": {**earlier.get("datasets", {}), **report["datasets"]}}
    tmp = RESULTS.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(merged, indent=2) + "\n")
    tmp.replace(RESULTS)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.serving", description=__doc__.split("\n")[0])
    parser.add_argument("datasets", nargs="*", default=list(DATASETS), help=f"of {', '.join(DATASETS)} (default all)")
    parser.add_argument("--quick", action="store_true", help="tiny preset, 20 s fixed-rate and 10 s saturation runs")
    parser.add_argument("--seconds", type=float, help=f"shoprec-2w's fixed-rate run (default {SECONDS}, --quick 20)")
    parser.add_argument("--side-seconds", type=float, help=f"the other fixed-rate runs (default {SIDE_SECONDS})")
    parser.add_argument("--saturation-seconds", type=float, help=f"(default {SATURATION_SECONDS}, --quick 10)")
    parser.add_argument("--naive-workers", type=int, default=2, help="workers of the naive service (default 2)")
    parser.add_argument("--build-only", action="store_true", help="build (or find) the cached shops, measure nothing")
    args = parser.parse_args()
    if unknown := set(args.datasets) - set(DATASETS):
        parser.error(f"unknown dataset(s) {sorted(unknown)}; choose from {DATASETS}")
    from core.settings import ONE_BLAS_THREAD, get_settings

    if any(os.environ.get(name) != value for name, value in ONE_BLAS_THREAD.items()):
        # Start again with one BLAS/OpenMP thread, as `shoprec serve` runs each worker (and so the side services
        # and the in-process stage times): with two, one request's numpy and faiss calls hand work between
        # threads, and the stage times came out 1.6x the workers' (3.2 -> 5.1 ms a call on Online Retail).
        os.execve(sys.executable, [sys.executable, "-m", "bench.serving", *sys.argv[1:]],
                  {**os.environ, **ONE_BLAS_THREAD})  # fmt: skip
    preset = "tiny" if args.quick else "full"
    seconds = args.seconds or (20 if args.quick else SECONDS)
    side_seconds = args.side_seconds or min(seconds, SIDE_SECONDS)
    saturation_seconds = args.saturation_seconds or (10 if args.quick else SATURATION_SECONDS)
    warmup = 100 if args.quick else WARMUP

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so the finally below stops the servers
    import atexit

    atexit.register(stop_all)

    data_dir = get_settings().data_dir
    report = {"command": "python -m bench.serving " + " ".join(sys.argv[1:]),
              "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
              "machine": {"cpu_count": os.cpu_count(), "processor": platform.processor() or platform.machine(),
                          "python": platform.python_version()},
              "targets": TARGETS, "load": {"rate": RATE, "connections": CONNECTIONS, "timeout_s": TIMEOUT_S,
                                           "k": 10, "unknown_share": UNKNOWN_SHARE, "recent_days": RECENT_DAYS},
              "datasets": {}, "skipped": []}  # fmt: skip
    try:
        for dataset in args.datasets:
            if dataset == "taobao" and not (data_dir / "taobao_userbehavior_head").is_dir():
                message = f"taobao: {data_dir / 'taobao_userbehavior_head'} is absent, skipped"
                print(message, flush=True)
                report["skipped"].append(message)
                continue
            home, built = build_home(dataset, preset, data_dir)
            if args.build_only:
                print(f"[{dataset}] shop ready under {home}: {built}", flush=True)
                continue
            users, unknown = sample_users(home)
            print(f"[{dataset}] {len(users)} request users ({unknown} unknown); timing the stages ...", flush=True)
            known = [u for u in users if not u.startswith("bench-unknown-")]
            try:  # the request path is being reworked: a step that moved must not cost the load runs
                stages = stage_times(home, known)
            except Exception as error:  # noqa: BLE001
                stages = {"error": f"{type(error).__name__}: {error}", "stages": {}}
            print(f"[{dataset}] stages (ms p50): {({k: v and v['p50_ms'] for k, v in stages['stages'].items()})}",
                  flush=True)  # fmt: skip
            bodies = [json.dumps({"user_id": u, "k": 10}).encode() for u in users]
            # each row dated: save() keeps the rows of datasets a later run did not measure again
            row = {"date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"), "preset": preset,
                   "shop": built, "request_users": len(users), "unknown_users": unknown, "in_process": stages,
                   "runs": {}}  # fmt: skip
            key = f"{dataset}/{preset}"
            # By the fixed-rate run every request user has been seen (warm-up and saturation): their vectors and
            # shortlists come from the worker's memo. shoprec-2w-no-memo builds both on every request instead.
            plan = [("echo-2w", 2, "echo", side_seconds, None), ("shoprec-1w", 1, "shoprec", side_seconds, None),
                    ("shoprec-2w", 2, "shoprec", seconds, None),
                    ("shoprec-2w-no-memo", 2, "shoprec", side_seconds, {"SHOPREC_SERVING_REMEMBERED_USERS": "0"}),
                    (f"naive-{args.naive_workers}w", args.naive_workers, "naive", side_seconds, None)]  # fmt: skip
            for name, workers, kind, run_seconds, settings in plan:
                row["runs"][name] = measure(name, home, workers, kind, bodies, run_seconds, saturation_seconds,
                                            warmup, settings)  # fmt: skip
                row["verdicts"] = verdicts(row["runs"])
                report["datasets"][key] = row
                save(report)
            print(f"[{dataset}] verdicts: {json.dumps(row['verdicts'])}", flush=True)
    finally:
        stop_all()
    if not args.build_only:
        print(f"wrote {RESULTS.relative_to(ROOT)}", flush=True)


if __name__ == "__main__":
    main()
