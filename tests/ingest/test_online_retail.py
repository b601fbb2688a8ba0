"""UCI Online Retail, the bundled default: every source row is accounted for, through the adapter and the gate."""

import pandas as pd
import pytest

from core.layout import batch_id_of
from ingest import online_retail, replay
from validation.catalog import apply_feeds
from validation.gate import pending_batches, run_gate

RAW_ROWS = 541_909  # SOURCE.md
CLEAN_PURCHASES = 397_924  # SOURCE.md: not cancelled, with a customer


@pytest.fixture(scope="module")
def source():
    return online_retail.load()


def test_every_source_row_is_an_event_or_excluded_with_a_reason(source):
    assert source.raw_rows == RAW_ROWS
    assert len(source.events) + len(source.excluded) == RAW_ROWS
    assert source.excluded["reason"].value_counts().to_dict() == {
        "no_customer": 134_697,  # 135,080 rows lack a customer; 383 of them are cancellations, counted there
        "cancellation": 9_288,
        "non_product_code": 1_554,
    }
    # Clean purchases minus postage, fees and vouchers: no clean purchase is dropped for any other reason.
    assert len(source.events) == CLEAN_PURCHASES - 1_554


def test_cancellations_negative_quantities_and_anonymous_rows_never_become_events(source):
    events = source.events
    assert (events["quantity"] > 0).all()
    assert not events["session_id"].str.startswith("C").any()
    assert events["user_id"].str.fullmatch(r"\d+").all()
    assert set(events["event_type"]) == {"purchase"}
    cancelled = source.excluded[source.excluded["reason"] == "cancellation"]
    assert (pd.to_numeric(cancelled["Quantity"]) < 0).all()


def test_times_are_uk_local_converted_to_utc(source):
    first = source.events.iloc[0]
    assert first["event_timestamp"] == pd.Timestamp("2010-12-01 08:26", tz="UTC")  # GMT in winter
    summer = source.events[source.events["session_id"] == "555940"]["event_timestamp"].iloc[0]
    assert summer == pd.Timestamp("2011-06-08 09:10", tz="UTC")  # invoiced 10:10 BST = UTC+1


def test_catalog_has_one_row_per_product_with_a_title(source):
    catalog = source.catalog
    assert catalog["item_id"].is_unique
    assert set(source.events["item_id"]) <= set(catalog["item_id"])
    assert (catalog["title"].str.len() > 0).all()
    assert catalog.set_index("item_id").loc["85123A", "title"] == "WHITE HANGING HEART T-LIGHT HOLDER"


def test_exact_duplicate_lines_share_an_event_id(source):
    repeats = source.events["event_id"].duplicated().sum()
    assert repeats == 5_187


def test_replay_and_gate_account_for_every_row(source, layout, settings):
    landed = replay.land(source, layout, every="month")
    assert [b.batch_id for b in landed] == sorted(b.batch_id for b in landed)
    assert len(landed) == 13 and sum(b.rows for b in landed) == len(source.events)
    catalog = apply_feeds(layout)
    assert catalog[0].accepted == len(source.catalog)

    results = [run_gate(p, layout, settings) for p in pending_batches(layout)]
    assert all(r.status == "accepted" for r in results)
    assert sum(r.received for r in results) == len(source.events)
    assert sum(r.accepted for r in results) + sum(r.quarantined for r in results) == len(source.events)
    quarantined = pd.concat(pd.read_parquet(layout.quarantine / f"{r.batch_id}.parquet") for r in results)
    assert quarantined["reason"].value_counts().to_dict() == {"event_id_repeated_in_batch": 5_187}
    assert sum(r.accepted for r in results) == len(source.events) - 5_187
    assert not any(r.flagged for r in results)  # every purchased product is in the catalog feed
    assert {batch_id_of(p) for p in layout.landed_batches()} == {r.batch_id for r in results}
