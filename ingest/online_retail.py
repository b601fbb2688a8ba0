"""UCI Online Retail (a UK gift retailer's invoice lines, 2010-12 .. 2011-12) onto the event contract.

How its quirks map (each excluded row keeps its reason in quarantine/source/online_retail.parquet):
- InvoiceNo starting with "C" is a cancellation (negative quantity): excluded, reason `cancellation`. The contract
  has no return event, and a cancellation is not a negative purchase.
- Empty CustomerID: excluded, reason `no_customer`: a purchase nobody can be recommended from.
- Stock codes that are not products (postage, fees, manual adjustments, bank charges, gift vouchers): excluded,
  reason `non_product_code`.
- Any other line with a non-positive quantity (stock adjustments): excluded, reason `stock_adjustment`.
  The first matching rule names the reason.
- Every other line is a `purchase`: user = CustomerID, item = StockCode (upper-cased: the file spells some codes
  both ways), session = InvoiceNo, quantity, price = UnitPrice. Invoice times are UK local time, converted to UTC.
- event_id is a hash of the whole line, so the file's exact duplicate lines (about 5,000) share an id and the gate
  quarantines the repeats as duplicates.
- Catalog: one row per product code; title = the code's most frequent description (descriptions vary per code),
  category = the code's first three characters (the retailer's product family; the data has no categories),
  price = median unit price, first_seen = first sale.

Licence: CC0 (donated by Dr. Daqing Chen); cite Chen, Sain & Guo (2012). The file ships in ingest/data/.
"""

from importlib.resources import files
from pathlib import Path

import numpy as np
import pandas as pd

from ingest.source import SourceData, row_ids

NAME = "online_retail"
TIMEZONE = "Europe/London"
NON_PRODUCT_CODES = {"POST", "DOT", "M", "C2", "D", "S", "BANK CHARGES", "AMAZONFEE", "CRUK", "PADS", "B"}


def default_path() -> Path:
    return Path(str(files("ingest") / "data" / "online_retail" / "online_retail.csv.gz"))


def load(path: Path | None = None) -> SourceData:
    raw = pd.read_csv(path or default_path(), dtype=str, keep_default_na=False)
    code = raw["StockCode"].str.strip().str.upper()
    quantity = pd.to_numeric(raw["Quantity"], errors="coerce")

    reason = pd.Series(None, index=raw.index, dtype=object)
    rules = [  # first match wins, so list them from most to least specific
        ("cancellation", raw["InvoiceNo"].str.startswith("C")),
        ("no_customer", raw["CustomerID"].str.strip() == ""),
        ("non_product_code", code.isin(NON_PRODUCT_CODES) | code.str.startswith("GIFT_")),
        ("stock_adjustment", ~(quantity > 0)),
    ]
    for name, matches in rules:
        reason = reason.mask(reason.isna() & matches, name)

    kept = reason.isna()
    lines = raw[kept]
    local_time = pd.to_datetime(lines["InvoiceDate"], format="%Y-%m-%d %H:%M:%S")
    events = pd.DataFrame(
        {
            "event_id": row_ids("or-", lines),
            "user_id": lines["CustomerID"].str.strip(),
            "item_id": code[kept],
            "event_type": "purchase",
            "event_timestamp": _uk_to_utc(local_time),
            "session_id": lines["InvoiceNo"],
            "quantity": quantity[kept].astype(float),
            "price": pd.to_numeric(lines["UnitPrice"], errors="coerce"),
        }
    ).reset_index(drop=True)

    excluded = raw[~kept].assign(reason=reason[~kept]).reset_index(drop=True)
    return SourceData(
        name=NAME,
        events=events,
        catalog=_catalog(raw, code, reason),
        excluded=excluded,
        raw_rows=len(raw),
        timezone=TIMEZONE,
    )


def _uk_to_utc(local: pd.Series) -> pd.Series:
    # The shop trades in daytime, so the clock-change hours (01:00-02:00) never occur; shift defensively anyway.
    return local.dt.tz_localize(TIMEZONE, ambiguous=False, nonexistent="shift_forward").dt.tz_convert("UTC")


def _catalog(raw: pd.DataFrame, code: pd.Series, reason: pd.Series) -> pd.DataFrame:
    # The product feed: every product line, including anonymous sales, says what the product is called.
    is_product = ~reason.isin(["non_product_code"]) & (raw["Description"].str.strip() != "")
    lines = pd.DataFrame(
        {
            "item_id": code,
            "title": raw["Description"].str.strip(),
            "price": pd.to_numeric(raw["UnitPrice"], errors="coerce"),
            "time": _uk_to_utc(pd.to_datetime(raw["InvoiceDate"], format="%Y-%m-%d %H:%M:%S")),
        }
    )[is_product & ~code.isin(NON_PRODUCT_CODES) & ~code.str.startswith("GIFT_")]
    title = lines.groupby(["item_id", "title"]).size().rename("n").reset_index()
    title = title.sort_values(["item_id", "n", "title"], ascending=[True, False, True]).drop_duplicates("item_id")
    sold = lines[lines["price"] > 0].groupby("item_id")["price"].median()
    catalog = pd.DataFrame({"item_id": np.sort(lines["item_id"].unique())})
    catalog["title"] = catalog["item_id"].map(title.set_index("item_id")["title"])
    catalog["description"] = None
    catalog["category"] = catalog["item_id"].str[:3]
    catalog["price"] = catalog["item_id"].map(sold)
    catalog["first_seen"] = catalog["item_id"].map(lines.groupby("item_id")["time"].min())
    return catalog
