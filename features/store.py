"""Open shoprec's Feast store for the configured environment, register the definitions, and materialise.

The environment's feature_store.yaml is read with ${VARS} filled from shoprec's settings (the same variables Feast's
own CLI expands from the environment), so one file serves the CLI, the DAGs and the tests.
"""

import copy
import string
from pathlib import Path

import pandas as pd
import yaml
from feast import FeatureStore, RepoConfig

from core.contract import as_utc
from core.layout import Layout, read_json, write_json
from core.settings import Settings

REPO = Path(__file__).parent / "repo"


def feature_store_yaml(settings: Settings) -> Path:
    return REPO / "environments" / settings.feast_env / "feature_store.yaml"


def repo_config(settings: Settings) -> RepoConfig:
    values = {"SHOPREC_HOME": str(settings.home), "SHOPREC_REDIS_URL": redis_connection(settings),
              "SHOPREC_FEAST_REGISTRY_URL": settings.feast_registry_url}  # fmt: skip
    text = string.Template(feature_store_yaml(settings).read_text()).substitute(values)
    config = RepoConfig(**yaml.safe_load(text))
    config.repo_path = REPO
    return config


def redis_connection(settings: Settings) -> str:
    """Feast's Redis connection string, with socket timeouts unless it sets them (Feast passes its key=value
    parts to redis.Redis): without one a Redis that stops answering hangs every read."""
    url = settings.redis_url
    for option in ("socket_timeout", "socket_connect_timeout"):
        if f"{option}=" not in url:
            url += f",{option}={settings.redis_timeout_s:g}"
    return url


def open_store(settings: Settings) -> FeatureStore:
    """A FeatureStore on this environment; the embedded one creates its folder on first use."""
    Layout(settings.home).feast.mkdir(parents=True, exist_ok=True)
    return FeatureStore(repo_path=str(REPO), config=repo_config(settings))


def definitions(settings: Settings) -> list:
    """Every object of the repo, for `feast apply`, with the sources under this settings' SHOPREC_HOME (the
    module-level definitions point at the home of the process that imported them, as the Feast CLI expects)."""
    from feast import FeatureView

    from features.repo import entities, services, sources, views

    objects = [entities.user, entities.item, views.user_activity, views.user_history, views.item_popularity,
               views.item_catalog, services.two_tower_v1, services.ranker_v1]  # fmt: skip
    here, there = str(sources.FEATURES_DIR), str(Layout(settings.home).features)
    rehomed = []
    for obj in objects:
        if isinstance(obj, FeatureView) and here != there:
            obj = copy.deepcopy(obj)
            obj.batch_source.file_options.uri = obj.batch_source.path.replace(here, there, 1)
        rehomed.append(obj)
    return rehomed


def apply(store: FeatureStore, settings: Settings) -> None:
    """`feast apply`: register the definitions and create the online tables."""
    store.apply(definitions(settings))


def materialize(store: FeatureStore, layout: Layout, end) -> dict:
    """Incremental materialisation of every view up to end (the lake's logical time), then a new version.

    Feast's own materialize_incremental starts a view's first run at now() - ttl, which misses every row of a replayed
    shop; here each view starts where its previous run ended, or at end - ttl on its first run (the beginning of
    time for ttl 0). A run with nothing new writes nothing, so re-running leaves the online store as it was.
    The version names what the online store holds; serving caches item features under it.
    """
    # Never past what the feature tables hold: the lake's time can run ahead of the last build (ingest accepts
    # batches while a materialisation runs), and a view's next run starts where this one ends, so rows built
    # later for the days in between would never reach the online store.
    end = as_utc(end)
    if (built := built_until(layout)) is not None:
        end = min(end, built)
    path = layout.feast / "materialized.json"
    record = read_json(path) if path.exists() else {"version": 0, "views": {}}
    written = {}
    for view in store.list_feature_views():
        done = record["views"].get(view.name)
        start = as_utc(done) if done else (end - view.ttl if view.ttl else pd.Timestamp(0, tz="UTC"))
        if start >= end:
            continue
        store.materialize(start.to_pydatetime(), end.to_pydatetime(), feature_views=[view.name])
        record["views"][view.name] = end.isoformat()
        written[view.name] = [start.isoformat(), end.isoformat()]
    if written:
        record["version"] += 1
        write_json(path, record)
    return {"version": record["version"], "materialized": written}


def built_until(layout: Layout) -> pd.Timestamp | None:
    """The midnight after the newest daily snapshot every snapshot view has in the feature tables (None before the
    first build): how far a materialisation can see."""
    newest = [max(days) for view in layout.features.iterdir() if view.is_dir()
              if (days := [p.stem for p in view.glob("????-??-??.parquet")])] if layout.features.exists() else []  # fmt: skip
    return pd.Timestamp(min(newest), tz="UTC") + pd.Timedelta(days=1) if newest else None


def materialized_version(layout: Layout) -> int:
    """Which materialisation the online store holds (0: none yet)."""
    path = layout.feast / "materialized.json"
    return read_json(path)["version"] if path.exists() else 0
