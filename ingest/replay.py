"""Replay a dataset into the landing zone as the shop would have sent it: time-ordered batches, one per day
(or week, or month) of the shop's local calendar, each with a manifest naming its logical time.

Replay is idempotent: landing the same dataset again rewrites nothing. A batch id that already landed with
other content is an error, since the landing zone keeps batches exactly as received.
"""

from dataclasses import dataclass, replace
from pathlib import Path

import pandas as pd

from core.contract import EVENT_COLUMNS
from core.layout import Layout, batch_id_of, manifest_of, parquet_bytes, write_atomically, write_json
from ingest.source import SourceData

PERIODS = {"day": "D", "week": "W-SUN", "month": "M"}


@dataclass(frozen=True)
class LandedBatch:
    batch_id: str
    path: Path
    rows: int
    as_of: pd.Timestamp


def land(source: SourceData, layout: Layout, every: str = "day", fmt: str = "csv") -> list[LandedBatch]:
    """Write the source's catalog feed, its excluded rows and its events, cut into batches, under layout."""
    if every not in PERIODS:
        raise ValueError(f"every must be one of {sorted(PERIODS)}, not {every!r}")
    if len(source.excluded):
        _write_if_new(layout.source_quarantine(source.name), parquet_bytes(source.excluded.astype(str)))
    _write_if_new(layout.landing / "catalog" / f"{source.name}.parquet", parquet_bytes(source.catalog))

    period = _delivery_period(source, PERIODS[every])
    landed = []
    for p, batch in source.events.groupby(period, sort=True):
        start = p.start_time.tz_localize(source.timezone).tz_convert("UTC")
        as_of = p.end_time.ceil("s").tz_localize(source.timezone).tz_convert("UTC")
        path = layout.landing / f"{source.name}-{p.start_time:%Y-%m-%d}.{fmt}"
        data = to_bytes(batch, fmt)
        if not _already_landed(path, data):
            # The manifest first: a scheduler scanning the landing zone must never see a batch without its time.
            manifest = {"source": source.name, "interval_start": start, "as_of": as_of, "rows": len(batch)}
            write_json(manifest_of(path), manifest)
            write_atomically(path, data)
        batch_id = batch_id_of(path)
        landed.append(LandedBatch(batch_id, path, len(batch), as_of))
    return landed


def since(source: SourceData, start: str | pd.Timestamp) -> SourceData:
    """A shorter replay of the same shop: its events from start (UTC) on, the catalog of the items they sold, and no
    excluded rows (they belong to the whole file). A test's or a quick look's shop: embedding the item texts is most
    of the feature build, and the catalog is what it embeds."""
    start = pd.Timestamp(start)
    start = start.tz_localize("UTC") if start.tzinfo is None else start.tz_convert("UTC")
    events = source.events[source.events["event_timestamp"] >= start].reset_index(drop=True)
    catalog = source.catalog[source.catalog["item_id"].isin(events["item_id"])].reset_index(drop=True)
    window = (max(source.window[0], start), source.window[1]) if source.window else None
    return replace(source, events=events, catalog=catalog, excluded=source.excluded.iloc[:0], raw_rows=len(events),
                   window=window)  # fmt: skip


def _delivery_period(source: SourceData, freq: str) -> pd.Series:
    """The local calendar period each event is delivered in.

    Events stamped outside the dataset's official window arrive with its first or last delivery (a client's clock
    was off); events with no usable time arrive with the rows around them in the file.
    """
    ts = source.events["event_timestamp"]
    if source.window:
        lo, hi = source.window
        ts = ts.clip(lo, hi - pd.Timedelta(seconds=1))
    local = ts.dt.tz_convert(source.timezone).dt.tz_localize(None)
    period = local.dt.to_period(freq)
    return period.ffill().bfill()


def to_bytes(events: pd.DataFrame, fmt: str) -> bytes:
    """A batch file in the canonical contract: ISO 8601 UTC timestamps in CSV, typed columns in parquet."""
    events = events[list(EVENT_COLUMNS)].reset_index(drop=True)
    if fmt == "parquet":
        return parquet_bytes(events)
    text = events.assign(event_timestamp=events["event_timestamp"].dt.strftime("%Y-%m-%dT%H:%M:%SZ"))
    return text.to_csv(index=False).encode()


def _already_landed(path: Path, data: bytes) -> bool:
    """Whether these bytes are already at path; other bytes there are an error (the landing zone is immutable)."""
    if not path.exists():
        return False
    if path.read_bytes() == data:
        return True
    raise FileExistsError(f"{path} already landed with different content; the landing zone is immutable")


def _write_if_new(path: Path, data: bytes) -> None:
    if not _already_landed(path, data):
        write_atomically(path, data)
