"""Taobao UserBehavior (Alibaba Tianchi, 2017-11-25 .. 12-03, China time) onto the event contract.

Read from SHOPREC_DATA_DIR (../shared/data); research-only terms, so it never ships with the project.

How its quirks map:
- behavior_type pv -> view, cart -> add_to_cart, buy -> purchase; fav (add to favourites) -> add_to_cart, since
  both are intent without a purchase and the contract has no favourites type. Any other value passes through
  unchanged and the gate quarantines it.
- No header, no event ids, no prices, no titles: event_id is a hash of the whole line (an exact repeat is a
  duplicate); the catalog has the category id as category and an empty title.
- Unix seconds are UTC; the shop's day (and so replay's batches) runs on Asia/Shanghai time.
- The excerpt's last line is cut mid-record. It becomes an event with no timestamp, which the gate quarantines.
- A few timestamps lie before the official window. Replay delivers them with the first day's batch, and the
  gate judges them against that batch's logical time (too old ones are quarantined).
"""

from pathlib import Path

import numpy as np
import pandas as pd

from ingest.source import SourceData, empty_excluded, row_ids

NAME = "taobao"
TIMEZONE = "Asia/Shanghai"
FILE = Path("taobao_userbehavior_head") / "UserBehavior_head.csv"
COLUMNS = ["user_id", "item_id", "category_id", "behavior_type", "timestamp"]
BEHAVIOUR = {"pv": "view", "cart": "add_to_cart", "fav": "add_to_cart", "buy": "purchase"}
WINDOW = (pd.Timestamp("2017-11-25", tz=TIMEZONE), pd.Timestamp("2017-12-04", tz=TIMEZONE))


def load(path: Path) -> SourceData:
    """path: the dataset file, or the data folder holding taobao_userbehavior_head/."""
    path = path / FILE if path.is_dir() else path
    raw = pd.read_csv(path, header=None, names=COLUMNS, dtype=str, keep_default_na=False).fillna("")
    seconds = pd.to_numeric(raw["timestamp"], errors="coerce")
    events = pd.DataFrame(
        {
            "event_id": row_ids("tb-", raw),
            "user_id": raw["user_id"],
            "item_id": raw["item_id"],
            "event_type": raw["behavior_type"].map(BEHAVIOUR).fillna(raw["behavior_type"]),
            "event_timestamp": pd.to_datetime(seconds, unit="s", utc=True),
            "session_id": None,
            "quantity": np.nan,
            "price": np.nan,
        }
    )
    known = raw[(raw["item_id"] != "") & seconds.notna()]
    catalog = (
        known.groupby("item_id").agg(category=("category_id", "first"), first_seen=("timestamp", "min")).reset_index()
    )
    catalog = pd.DataFrame(
        {
            "item_id": catalog["item_id"],
            "title": "",
            "description": None,
            "category": catalog["category"],
            "price": np.nan,
            "first_seen": pd.to_datetime(pd.to_numeric(catalog["first_seen"]), unit="s", utc=True),
        }
    )
    return SourceData(
        name=NAME,
        events=events,
        catalog=catalog,
        excluded=empty_excluded(COLUMNS),
        raw_rows=len(raw),
        timezone=TIMEZONE,
        window=(WINDOW[0].tz_convert("UTC"), WINDOW[1].tz_convert("UTC")),
    )
