"""What every dataset adapter returns: events on the contract, the item catalog, and what it could not map."""

from dataclasses import dataclass

import numpy as np
import pandas as pd

from core.contract import CATALOG_COLUMNS, EVENT_COLUMNS


@dataclass
class SourceData:
    """One dataset mapped onto the canonical contract.

    raw_rows = len(events) + len(excluded), always: a source row is either an event (which the gate may still
    quarantine) or excluded here with the adapter's reason.
    """

    name: str
    events: pd.DataFrame  # EVENT_COLUMNS; event_timestamp is tz-aware UTC (NaT where the source had none)
    catalog: pd.DataFrame  # CATALOG_COLUMNS
    excluded: pd.DataFrame  # the source's own columns as strings, plus `reason`
    raw_rows: int
    timezone: str  # the shop's local time zone: replay cuts batches at its midnight
    window: tuple[pd.Timestamp, pd.Timestamp] | None = None  # the dataset's official collection period

    def __post_init__(self) -> None:
        assert list(self.events.columns) == list(EVENT_COLUMNS), self.events.columns
        assert list(self.catalog.columns) == list(CATALOG_COLUMNS), self.catalog.columns
        assert self.raw_rows == len(self.events) + len(self.excluded), "a source row went missing"


def row_ids(prefix: str, frame: pd.DataFrame) -> pd.Series:
    """A stable event id per row from the row's full content, so an exact re-sent row gets the same id."""
    hashes = pd.util.hash_pandas_object(frame, index=False).to_numpy()
    return pd.Series(np.char.add(prefix, np.char.mod("%016x", hashes)), index=frame.index)


def empty_excluded(columns: list[str]) -> pd.DataFrame:
    return pd.DataFrame(columns=[*columns, "reason"], dtype=object)
