"""The canonical event contract and item catalog that every source is mapped onto (DESIGN.md)."""

import pandas as pd
import pyarrow as pa

EVENT_TYPES = ("view", "add_to_cart", "purchase", "impression", "click")
# Intent grows from a view to a cart (or favourite) to a purchase: what an "event"-weighted count gives each.
EVENT_WEIGHTS = {"view": 1.0, "add_to_cart": 3.0, "purchase": 4.0}


# Column order of a batch in the landing zone and of the event lake.
REQUIRED_EVENT_COLUMNS = ("event_id", "user_id", "item_id", "event_type", "event_timestamp")
OPTIONAL_EVENT_COLUMNS = ("session_id", "quantity", "price")
EVENT_COLUMNS = REQUIRED_EVENT_COLUMNS + OPTIONAL_EVENT_COLUMNS

# Added by the gate to every accepted row.
LAKE_COLUMNS = EVENT_COLUMNS + ("item_known", "batch_id")

CATALOG_COLUMNS = ("item_id", "title", "description", "category", "price", "first_seen")

# The event lake's parquet schema, fixed so every reader (features, training) sees the same types whatever wrote it.
LAKE_SCHEMA = pa.schema(
    [(c, pa.string()) for c in REQUIRED_EVENT_COLUMNS[:4]]
    + [("event_timestamp", pa.timestamp("ns", tz="UTC")), ("session_id", pa.string()),
       ("quantity", pa.float64()), ("price", pa.float64()), ("item_known", pa.bool_()), ("batch_id", pa.string())]
)  # fmt: skip
assert tuple(LAKE_SCHEMA.names) == LAKE_COLUMNS


def as_utc(moment) -> pd.Timestamp:
    """A moment as a UTC Timestamp; a naive one is read as UTC, as the contract stores every time."""
    moment = pd.Timestamp(moment)
    return moment.tz_localize("UTC") if moment.tzinfo is None else moment.tz_convert("UTC")
