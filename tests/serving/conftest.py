"""A real shop for the serving tests, built once per session: the bundled Online Retail data of its last three
weeks, replayed weekly through the gate, its features materialised into the SQLite online store, and a tiny-preset
champion retrained on it and published to the model store, as the three DAGs would leave it."""

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pandas as pd
import pytest

from core.layout import Layout, lake_as_of
from core.settings import PROJECT_ROOT, Settings, get_settings

SINCE = pd.Timestamp("2011-11-21", tz="UTC")  # three weeks, about 45k events: a real shop small enough for a test


def build_shop(home: Path) -> Settings:
    """Replay, gate, features, materialisation and a published tiny champion under home."""
    from features.build import build
    from features.store import apply, materialize, open_store
    from ingest import online_retail, replay
    from training.retrain import retrain
    from validation.catalog import apply_feeds
    from validation.gate import pending_batches, run_gate

    settings = Settings(home=home)
    layout = Layout(home)
    source = online_retail.load()
    source.events = source.events[source.events["event_timestamp"] >= SINCE].reset_index(drop=True)
    source.excluded = source.excluded.iloc[:0]
    # The catalog of what those weeks sold (the texts to embed are most of the build), and one item never sold.
    sold = source.catalog["item_id"].isin(source.events["item_id"])
    source.catalog = pd.concat([source.catalog[sold], source.catalog[~sold].head(1)], ignore_index=True)
    replay.land(source, layout, every="week")
    apply_feeds(layout)
    verdicts = [run_gate(path, layout, settings) for path in pending_batches(layout)]
    assert all(v.status == "accepted" for v in verdicts), [v.reason for v in verdicts]
    build(layout)
    store = open_store(settings)
    apply(store, settings)
    materialize(store, layout, lake_as_of(layout))
    published = retrain(settings, "shop-1", "tiny")["published"]
    assert published, "the first challenger becomes champion"
    return settings


@pytest.fixture(scope="session")
def retail_home(tmp_path_factory) -> Path:
    """The built shop's SHOPREC_HOME; tests that change it work on a copy (`shop_copy`)."""
    home = tmp_path_factory.mktemp("retail") / "home"
    prebuilt = os.environ.get("SHOPREC_TEST_SHOP")  # a home build_shop made earlier: skips five minutes when iterating
    if prebuilt:
        shutil.copytree(prebuilt, home, symlinks=True)
    else:
        build_shop(home)
    return home


@pytest.fixture
def shop_copy(retail_home, tmp_path) -> Path:
    home = tmp_path / "home"
    shutil.copytree(retail_home, home, symlinks=True)
    return home


def serving_env(home: Path, **extra) -> dict:
    """The environment a service on this shop runs with: the shop's clock (its data is from 2011)."""
    env = {**os.environ, "SHOPREC_HOME": str(home), "SHOPREC_SERVING_CLOCK": "shop", "SHOPREC_SWAP_POLL_S": "0.5"}
    env.pop("SHOPREC_API_KEY", None)
    return {**env, **{f"SHOPREC_{k.upper()}": str(v) for k, v in extra.items()}}


@pytest.fixture
def use_home(monkeypatch):
    """Point this process's settings at a home (for in-process services): use_home(home, api_key=...)."""

    def point(home: Path, **extra):
        for name, value in serving_env(home, **extra).items():
            if name.startswith("SHOPREC_"):
                monkeypatch.setenv(name, value)
        monkeypatch.delenv("SHOPREC_API_KEY", raising=False) if "api_key" not in extra else None
        get_settings.cache_clear()
        return get_settings()

    yield point
    get_settings.cache_clear()


@pytest.fixture
def service_client():
    """An in-process client of the service on the settings in force (use_home first): service_client()."""
    from starlette.testclient import TestClient

    from serving.service import Recommender

    clients = []

    def make():
        clients.append(TestClient(Recommender.to_asgi()))
        return clients[-1].__enter__()

    yield make
    for client in clients:
        client.__exit__(None, None, None)
    forget_bentoml_metrics()


@contextlib.contextmanager
def in_process(service):
    """An in-process client of a BentoML service (started and stopped with the block), its metrics forgotten after."""
    from starlette.testclient import TestClient

    try:
        with TestClient(service.to_asgi()) as client:
            yield client
    finally:
        forget_bentoml_metrics()


def forget_bentoml_metrics() -> None:
    """BentoML registers its request metrics with Prometheus' process-wide registry per app: forget them, so the
    next test's app can register its own (one app per process is what `bentoml serve` runs)."""
    from prometheus_client import REGISTRY

    for collector in list(REGISTRY._collector_to_names):
        if any(name.startswith("bentoml_") for name in REGISTRY._collector_to_names[collector]):
            REGISTRY.unregister(collector)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Served:
    """A real `bentoml serve` of the service, on a free loopback port, until stop()."""

    def __init__(self, home: Path, log: Path, **extra):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        command = [sys.executable, "-m", "shoprec", "serve", "--port", str(self.port)]
        self.log = log.open("w")
        self.process = subprocess.Popen(command, cwd=PROJECT_ROOT, env=serving_env(home, **extra),
                                        stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip

    def wait_ready(self, timeout: float = 120) -> httpx.Response:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process.poll() is None, f"bentoml serve exited: see {self.log.name}"
            try:
                answer = httpx.get(f"{self.url}/readyz", timeout=2)
                if answer.status_code == 200:
                    return answer
            except httpx.TransportError:
                pass
            time.sleep(0.5)
        raise AssertionError(f"not ready in {timeout} s: see {self.log.name}")

    def stop(self) -> None:
        import signal

        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
        self.log.close()
