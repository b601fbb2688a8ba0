"""A Feast store built from a frame of events: how evaluation computes features from a split's train events only.

The events are written into a fresh SHOPREC_HOME's lake exactly as the gate would store them, and the same
feature code (features/build.py) and Feast definitions build and register the features, so a benchmark's models
read the production features, computed without any test information.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd
import pyarrow as pa

from core.contract import LAKE_SCHEMA
from core.layout import Layout, table_bytes, write_atomically, write_json, write_parquet
from core.settings import Settings
from features.build import build
from features.store import apply, open_store

if TYPE_CHECKING:  # Feast loads through features/, which first switches off typeguard's instrumentation
    from feast import FeatureStore

EMBEDDING_CACHE = "text_embeddings.parquet"


def write_lake(layout: Layout, events: pd.DataFrame, batch_id: str = "b1", as_of=None) -> None:
    """Events (user_id, item_id, event_type, event_timestamp, optional event_id...) as one accepted batch."""
    events = events.copy()
    events["event_timestamp"] = pd.to_datetime(events["event_timestamp"], utc=True)
    if "event_id" not in events:
        events["event_id"] = [f"{batch_id}-{i}" for i in range(len(events))]
    for column in ("session_id", "quantity", "price"):
        if column not in events:
            events[column] = None
    events = events.assign(item_known=True, batch_id=batch_id)[list(LAKE_SCHEMA.names)]
    # By midnight, named after: formatting every row's date string took seconds per store, once per label window.
    for day, rows in events.groupby(events["event_timestamp"].dt.floor("D")):
        table = pa.Table.from_pandas(rows.reset_index(drop=True), schema=LAKE_SCHEMA, preserve_index=False)
        write_atomically(layout.event_partition(f"{day:%Y-%m-%d}") / f"{batch_id}.parquet", table_bytes(table))
    as_of = pd.Timestamp(as_of) if as_of is not None else events["event_timestamp"].max().ceil("D")
    write_json(
        layout.gate / f"{batch_id}.json",
        {"status": "accepted", "as_of": as_of.isoformat(), "accepted": len(events), "moves_clock": True},
    )


def store_for_events(events: pd.DataFrame, catalog: pd.DataFrame, home: Path, as_of, cache: Path | None = None):
    """Build and register the features of `events` (as of as_of) in a store under `home`; (store, settings).

    The catalog lists every item as known from min(first_seen, as_of) on: a shop lists a product before its first
    sale, and that listing (title, category, price) is exactly what makes a new item reachable on day one.
    cache: a text-embedding cache shared between stores, so each title is embedded once.
    """
    as_of = pd.Timestamp(as_of)
    settings = Settings(home=home, feast_env="embedded")
    layout = Layout(home)
    write_lake(layout, events, as_of=as_of)
    catalog = catalog.copy()
    catalog["first_seen"] = pd.to_datetime(catalog["first_seen"], utc=True).fillna(as_of).clip(upper=as_of)
    write_parquet(catalog, layout.catalog)
    layout.features.mkdir(parents=True, exist_ok=True)
    if cache is not None and cache.exists():
        shutil.copy(cache, layout.features / EMBEDDING_CACHE)
    build(layout, as_of=as_of)
    if cache is not None:
        shutil.copy(layout.features / EMBEDDING_CACHE, cache)
    store: FeatureStore = open_store(settings)
    apply(store, settings)
    return store, settings
