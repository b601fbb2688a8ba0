"""Feature store throughput and online read latency, SQLite and Redis side by side (bench/results/features.json).

A synthetic shop is written straight into the lake layout (no gate), features/build.py turns it into Feast's offline
sources, and the same tables are materialised through features.store.materialize into the embedded store (SQLite
online store, file registry) and into the production one (Redis online store, SQL registry on a throwaway Postgres
cluster; SQLite through SQLAlchemy when Postgres cannot be started, which the results record). Rows written are the
distinct entities in each view's materialised window.

Online reads are timed after a warm-up, per call, for one user row and for one user plus 200 item rows: through
Feast's SDK (get_online_features(...).to_dict()) and through serving's read path (features.online.OnlineFeatures),
with its item cache warm (every materialised item read once beforehand: the normal case) and cold (emptied before
each call). p50 and p99 are over the timed calls; each case also reports the garbage collections during its calls
(a full collection of this process's heap takes a few hundred ms and sets the p99 where it hits 1% of calls). The shop
is generated and built in a child process, so the embedding model stays out of the measured process. Redis is installed with apt (redis-server) and started here on a
free port; without it the Redis half is skipped and the results say so.
"""

import contextlib
import gc
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

EVENTS = 1_500_000
USERS = 400_000  # the pool users are drawn from (Zipf-skewed activity); the active ones get feature rows
ITEMS = 60_000  # catalog size; every item gets an item_catalog row (with a 384-float text embedding)
DAYS = 4
START = "2024-01-01"
WARMUP = 100
CALLS = 1_000
ITEMS_PER_REQUEST = 200
SERVICE = "ranker_v1"
USER_VIEW = "user_activity"
TARGET_P99_MS = 10.0  # serving's read path, 1 user + 200 items
SEED = 7
ANCHORS = {
    "feast_redis_1m_keys_before_pipelining": "about 20 minutes for 1M keys into Redis before Feast's pipelining "
    "fix (feast-dev/feast#1969)",
    "feast_python_p99_ms_100_rows": 125,
    "feast_go_server_p99_ms_100_rows": 22,
    "source": "Feast's own online serving benchmarks",
}
RESULTS = Path(__file__).parent / "results" / "features.json"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop(process: subprocess.Popen) -> None:
    """TERM the process group, then KILL it if it has not gone within 10 s."""
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


@contextlib.contextmanager
def _redis_server(folder: Path):
    """A redis-server on a free port, no persistence, in its own process group; yields (port, version)."""
    binary = shutil.which("redis-server")
    if binary is None:
        yield None, "redis-server is not installed (apt-get install -y redis-server): Redis part skipped"
        return
    import redis

    port = _free_port()
    log = open(folder / "redis.log", "wb")  # noqa: SIM115 - closed below
    process = subprocess.Popen([binary, "--save", "", "--appendonly", "no", "--port", str(port), "--bind",
                                "127.0.0.1", "--daemonize", "no"], stdout=log, stderr=subprocess.STDOUT,
                               start_new_session=True)  # fmt: skip
    try:
        client = redis.Redis(port=port)
        for _ in range(100):
            with contextlib.suppress(redis.ConnectionError):
                if client.ping():
                    break
            if process.poll() is not None:
                raise RuntimeError(f"redis-server exited: {(folder / 'redis.log').read_text()[-500:]}")
            time.sleep(0.1)
        yield port, client.info("server")["redis_version"]
    finally:
        _stop(process)
        log.close()


@contextlib.contextmanager
def _postgres(folder: Path):
    """A throwaway Postgres cluster (trust auth, user shoprec) on a free port; yields (registry URL, description).

    initdb refuses root, so as root the cluster belongs to the postgres user (or nobody). Any failure falls back to
    Feast's SQL registry on a SQLite file, and the description says so.
    """
    fallback = f"sqlite:///{folder / 'registry.db'}"
    pg_ctl = shutil.which("pg_ctl")
    if pg_ctl is None:
        yield fallback, "SQL registry on SQLite (fallback: pg_ctl not found)"
        return
    bin_dir = Path(os.path.realpath(pg_ctl)).parent
    user = None
    if os.geteuid() == 0:
        import pwd

        user = next((u for u in ("postgres", "nobody") if _has_user(pwd, u)), None)
    cluster = folder / "postgres"
    port = _free_port()

    def run(*args, check=True):
        return subprocess.run(args, user=user, check=check, capture_output=True, timeout=120)

    started = False
    try:
        cluster.mkdir()
        if user is not None:
            shutil.chown(cluster, user)
        run(bin_dir / "initdb", "-D", cluster / "data", "-U", "shoprec", "--auth=trust", "-E", "UTF8")
        run(bin_dir / "pg_ctl", "-D", cluster / "data", "-l", cluster / "log", "-w", "-o",
            f"-p {port} -k {cluster} -c listen_addresses=localhost -c fsync=off", "start")  # fmt: skip
        started = True
        run(bin_dir / "createdb", "-h", "localhost", "-p", str(port), "-U", "shoprec", "shoprec")
        version = run(bin_dir / "postgres", "--version").stdout.decode().strip()
    except (OSError, subprocess.SubprocessError) as error:
        detail = getattr(error, "stderr", b"") or b""
        if started:
            run(bin_dir / "pg_ctl", "-D", cluster / "data", "-m", "immediate", "-w", "stop", check=False)
        yield fallback, f"SQL registry on SQLite (fallback: Postgres failed: {error} {detail.decode()[-300:]})"
        return
    try:
        yield (f"postgresql+psycopg://shoprec@localhost:{port}/shoprec",
               f"SQL registry on a throwaway Postgres cluster ({version}, fsync off, local TCP)")  # fmt: skip
    finally:
        run(bin_dir / "pg_ctl", "-D", cluster / "data", "-m", "fast", "-w", "stop", check=False)


def _has_user(pwd, name: str) -> bool:
    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False


def _write_lake(home: Path, source) -> list[str]:
    """The synthetic events as lake partitions (one file per event date), the catalog beside them; the days."""
    import pandas as pd
    import pyarrow as pa

    from core.contract import LAKE_COLUMNS, LAKE_SCHEMA
    from core.layout import Layout, table_bytes, write_atomically, write_parquet

    layout = Layout(home)
    events = source.events.assign(item_known=True, batch_id="bench")[list(LAKE_COLUMNS)]
    day = events["event_timestamp"].dt.strftime("%Y-%m-%d")
    last = (pd.Timestamp(START) + pd.Timedelta(days=DAYS - 1)).strftime("%Y-%m-%d")
    days = [d for d in sorted(day.unique()) if d <= last]  # sessions late on the last day spill into the next
    for d in tqdm(days, desc="lake", unit="day"):
        table = pa.Table.from_pandas(events[day == d], schema=LAKE_SCHEMA, preserve_index=False)
        write_atomically(layout.event_partition(d) / "bench.parquet", table_bytes(table))
    write_parquet(source.catalog, layout.catalog)
    return days


def _window_entities(layout, store, end) -> dict[str, np.ndarray]:
    """Per feature view, the distinct entities whose rows fall in the window materialize() writes on a first run."""
    import pandas as pd

    out = {}
    for view in store.list_feature_views():
        start = end - view.ttl if view.ttl else pd.Timestamp(0, tz="UTC")
        path = layout.features / (f"{view.name}.parquet" if view.name == "item_catalog" else view.name)
        key = view.entity_columns[0].name
        frame = pd.read_parquet(path, columns=[key, "event_timestamp"])
        stamp = frame["event_timestamp"]
        out[view.name] = np.sort(frame.loc[(stamp >= start) & (stamp <= end), key].unique())
    return out


def _materialize(name: str, store, layout, end, entities: dict[str, np.ndarray]) -> dict:
    """features.store.materialize with each view's store.materialize call timed; rows/s per view and in total."""
    from features.store import materialize

    seconds = {}
    feast_materialize = store.materialize

    def timed(start_date, end_date, feature_views=None, **kwargs):
        began = time.perf_counter()
        feast_materialize(start_date, end_date, feature_views=feature_views, **kwargs)
        seconds[feature_views[0]] = time.perf_counter() - began

    store.materialize = timed
    print(f"[{name}] materialising {sum(len(e) for e in entities.values()):,} rows ...", flush=True)
    start = time.perf_counter()
    record = materialize(store, layout, end)
    total_s = time.perf_counter() - start
    del store.materialize
    views = {v: {"rows": len(entities[v]), "seconds": round(s, 3), "rows_per_s": round(len(entities[v]) / s)}
             for v, s in seconds.items()}  # fmt: skip
    rows = sum(v["rows"] for v in views.values())
    return {"views": views, "rows": rows, "seconds": round(total_s, 3),
            "rows_per_s": round(rows / total_s), "version": record["version"]}  # fmt: skip


def _stored_rows(name: str, store, port) -> dict:
    """What the online store holds afterwards, as a cross-check of the rows counted from the offline tables."""
    if name == "sqlite":
        import sqlite3

        with contextlib.closing(sqlite3.connect(store.config.online_store.path)) as db:
            return {v.name: db.execute(f"SELECT COUNT(DISTINCT entity_key) FROM {store.project}_{v.name}").fetchone()[0]
                    for v in store.list_feature_views()}  # fmt: skip
    import redis

    return {"keys (one hash per entity, all its views)": redis.Redis(port=port).dbsize()}


def _timed(label: str, call, requests: list, before=None) -> dict:
    """Per-call latency over the requests after the first WARMUP; `before` runs untimed before each call."""
    for request in requests[:WARMUP]:
        if before:
            before()
        call(*request)
    times, pauses = [], []  # pauses: (generation, seconds) of the garbage collections during the timed calls

    def on_gc(phase: str, info: dict) -> None:
        if phase == "start":
            on_gc.began = time.perf_counter()
        else:
            pauses.append((info["generation"], time.perf_counter() - on_gc.began))

    gc.callbacks.append(on_gc)
    try:
        for request in tqdm(requests[WARMUP:], desc=label, unit="call", leave=False):
            if before:
                before()
            began = time.perf_counter()
            call(*request)
            times.append(time.perf_counter() - began)
    finally:
        gc.callbacks.remove(on_gc)
    ms = np.array(times) * 1000
    full = [s for g, s in pauses if g == 2]
    return {"calls": len(ms), "p50_ms": round(float(np.percentile(ms, 50)), 3),
            "p99_ms": round(float(np.percentile(ms, 99)), 3), "mean_ms": round(float(ms.mean()), 3),
            "max_ms": round(float(ms.max()), 3),
            "gc": {"collections": len(pauses), "full_collections": len(full),
                   "full_max_ms": round(max(full, default=0) * 1000, 1),
                   "total_ms": round(sum(s for _, s in pauses) * 1000, 1)}}  # fmt: skip


def _latencies(name: str, store, layout, as_of, requests: list) -> dict:
    from features.online import FRESH, OnlineFeatures

    user_view = store.get_feature_view(USER_VIEW)
    user_features = [f"{USER_VIEW}:{f.name}" for f in user_view.features]

    def sdk_user(user, _items):
        return store.get_online_features(features=user_features, entity_rows=[{"user_id": user}],
                                         full_feature_names=True).to_dict()  # fmt: skip

    def sdk_items(user, items):
        return store.get_online_features(features=store.get_feature_service(SERVICE),
                                         entity_rows=[{"user_id": user, "item_id": i} for i in items],
                                         full_feature_names=True).to_dict()  # fmt: skip

    online = OnlineFeatures(store, SERVICE, layout)

    # Sanity: the rows asked for are there and fresh at the shop's logical time, through both paths.
    user, items = requests[0]
    read = online.read(user, items, as_of=as_of)
    sdk = sdk_items(user, items)
    sanity = {"serving_user_status": read.user_status,
              "serving_item_fresh_share": {v: float((s == FRESH).mean()) for v, s in read.item_status.items()},
              "sdk_item_views_7d_non_null_share": sum(v is not None for v in sdk["item_popularity__views_7d"])
              / len(items), "sdk_user_views_7d": sdk_user(user, [])[f"{USER_VIEW}__views_7d"][0],
              "serving_equals_sdk": bool(all(np.allclose(read.items[c], np.array(sdk[c], dtype=np.float32), equal_nan=True)
                                        for c in ("item_popularity__views_7d", "item_popularity__conversion_rate_30d",
                                                  "item_catalog__price"))
              and read.user[f"{USER_VIEW}__views_7d"][0] == sdk[f"{USER_VIEW}__views_7d"][0])}  # fmt: skip

    out = {"sanity": sanity}
    out["sdk_1_user"] = _timed(f"{name} sdk 1 user", sdk_user, requests)
    out["sdk_1_user_200_items"] = _timed(f"{name} sdk 1+{ITEMS_PER_REQUEST}", sdk_items, requests)
    out["serving_1_user"] = _timed(f"{name} serving 1 user", lambda u, _i: online.read(u, [], as_of=as_of), requests)
    out["serving_1_user_200_items_cold"] = _timed(f"{name} serving 1+{ITEMS_PER_REQUEST} cold",
                                                  lambda u, i: online.read(u, i, as_of=as_of), requests,
                                                  before=online._cache.clear)  # fmt: skip
    # Warm: every item the requests can name read once, as a long-running server holds them after its first calls.
    pool = sorted({i for _, items in requests for i in items})
    began = time.perf_counter()
    for start in range(0, len(pool), 1000):
        online.read(requests[0][0], pool[start : start + 1000], as_of=as_of)
    out["serving_item_cache_fill"] = {"items": len(pool), "seconds": round(time.perf_counter() - began, 3)}
    out["serving_1_user_200_items_warm"] = _timed(f"{name} serving 1+{ITEMS_PER_REQUEST} warm",
                                                  lambda u, i: online.read(u, i, as_of=as_of), requests)  # fmt: skip
    out["meets_target"] = {
        "warm": out["serving_1_user_200_items_warm"]["p99_ms"] <= TARGET_P99_MS,
        "cold": out["serving_1_user_200_items_cold"]["p99_ms"] <= TARGET_P99_MS,
    }
    return out


def main() -> None:
    import feast
    import pandas as pd

    report = {"cpus": os.cpu_count(), "machine": platform.machine(), "python": platform.python_version(),
              "feast": feast.__version__, "sizes": {"events": EVENTS, "user_pool": USERS, "catalog_items": ITEMS,
              "days": DAYS, "start": START, "warmup_calls": WARMUP, "timed_calls": CALLS,
              "items_per_request": ITEMS_PER_REQUEST, "service": SERVICE}, "target_serving_p99_ms": TARGET_P99_MS,
              "anchors": ANCHORS, "backends": {}}  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="shoprec-bench-") as tmp, contextlib.ExitStack() as services:
        tmp = Path(tmp)
        os.chmod(tmp, 0o755)  # the Postgres cluster's owner must reach its folder inside
        lake_home = tmp / "home"
        # The module-level Feast definitions take their source paths from the process's settings; point those at
        # the lake too (features.store.definitions re-homes them per settings anyway).
        os.environ["SHOPREC_HOME"] = str(lake_home)
        from core.layout import Layout
        from core.settings import Settings, get_settings
        from features.build import build
        from features.store import apply, open_store
        from ingest import synthetic

        get_settings.cache_clear()
        layout = Layout(lake_home)

        began = time.perf_counter()
        source = synthetic.generate(EVENTS, n_users=USERS, n_items=ITEMS, days=DAYS, start=START, seed=SEED)
        report["generate_s"] = round(time.perf_counter() - began, 2)
        days = _write_lake(lake_home, source)
        del source
        end = pd.Timestamp(days[-1], tz="UTC") + pd.Timedelta(days=1)  # the lake's logical time: after its last day
        report["sizes"]["materialize_end"] = end.isoformat()
        began = time.perf_counter()
        built = build(layout, as_of=end)
        report["build"] = {"seconds": round(time.perf_counter() - began, 2), **built.to_dict()}

        embedded = Settings(home=lake_home, feast_env="embedded")
        stores = {"sqlite": (open_store(embedded), embedded, layout, None)}
        report["backends"]["sqlite"] = {"online_store": "sqlite", "registry": "Feast file registry"}
        redis_port, redis_version = services.enter_context(_redis_server(tmp))
        if redis_port is None:
            report["backends"]["redis"] = {"skipped": redis_version}
        else:
            registry_url, registry = services.enter_context(_postgres(tmp))
            settings = Settings(home=lake_home, feast_env="production", redis_url=f"localhost:{redis_port}",
                                feast_registry_url=registry_url)  # fmt: skip
            # The same offline sources, but a folder of its own for materialize()'s bookkeeping (materialized.json,
            # which also versions serving's item cache), or the second store would find every view already done.
            stores["redis"] = (open_store(settings), settings, Layout(tmp / "redis-home"), redis_port)
            report["backends"]["redis"] = {"online_store": f"redis {redis_version}", "registry": registry,
                                           "registry_url": registry_url}  # fmt: skip

        for name, (store, settings, _books, _port) in stores.items():
            began = time.perf_counter()
            apply(store, settings)
            report["backends"][name]["apply_s"] = round(time.perf_counter() - began, 3)
        entities = _window_entities(layout, stores["sqlite"][0], end)
        report["sizes"]["materialised_rows"] = {v: len(e) for v, e in entities.items()}
        for name, (store, _settings, books, port) in stores.items():
            report["backends"][name]["materialize"] = _materialize(name, store, books, end, entities)
            report["backends"][name]["materialize"]["stored"] = _stored_rows(name, store, port)

        rng = np.random.default_rng(SEED)
        users, items = entities["user_activity"], entities["item_popularity"]
        requests = [(str(rng.choice(users)), [str(i) for i in rng.choice(items, ITEMS_PER_REQUEST, replace=False)])
                    for _ in range(WARMUP + CALLS)]  # fmt: skip
        for name, (store, _settings, books, _port) in stores.items():
            report["backends"][name]["latency"] = _latencies(name, store, books, end, requests)

    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    rows = report["sizes"]["materialised_rows"]
    print(f"{EVENTS:,} events over {DAYS} days, {CALLS:,} timed calls after {WARMUP} warm-up; cpus {report['cpus']}; "
          f"rows: " + ", ".join(f"{v} {n:,}" for v, n in rows.items()))  # fmt: skip
    for name, backend in report["backends"].items():
        if "skipped" in backend:
            print(f"[{name}] skipped: {backend['skipped']}")
            continue
        m = backend["materialize"]
        print(f"[{name}] ({backend['registry']}) materialise {m['rows']:,} rows in {m['seconds']} s: "
              f"{m['rows_per_s']:,} rows/s (" + ", ".join(f"{v} {r['rows_per_s']:,}/s"
                                                        for v, r in m["views"].items()) + ")")  # fmt: skip
        for case, r in backend["latency"].items():
            if "p99_ms" in r:
                g = r["gc"]
                full = (
                    f"   ({g['full_collections']} full GC, max {g['full_max_ms']} ms)" if g["full_collections"] else ""
                )
                print(f"[{name}]   {case:32s} p50 {r['p50_ms']:8.2f} ms   p99 {r['p99_ms']:8.2f} ms{full}")
        print(
            f"[{name}]   serving 1+{ITEMS_PER_REQUEST} p99 <= {TARGET_P99_MS} ms: {backend['latency']['meets_target']}"
        )
    print(
        f"anchors: {ANCHORS['feast_redis_1m_keys_before_pipelining']}; Feast p99 at 100 rows: Python "
        f"{ANCHORS['feast_python_p99_ms_100_rows']} ms, Go server {ANCHORS['feast_go_server_p99_ms_100_rows']} ms"
    )
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
