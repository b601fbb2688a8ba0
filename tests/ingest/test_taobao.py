"""The Taobao excerpt (read from ../shared/data): its cut last line and its out-of-window times end in quarantine
with their reasons, and every other row is accepted."""

import pandas as pd
import pytest

from ingest import datasets, replay
from ingest.taobao import WINDOW
from validation.gate import pending_batches, run_gate

COMPLETE_LINES = 84_475  # pv 75,872 + cart 4,497 + fav 2,356 + buy 1,750 (SOURCE.md's total says 84,474)


@pytest.fixture(scope="module")
def source(shared_data):
    return datasets.load("taobao", shared_data)


def test_every_line_becomes_an_event(source):
    assert source.raw_rows == COMPLETE_LINES + 1
    assert len(source.events) == COMPLETE_LINES + 1
    assert source.events["event_type"].value_counts().to_dict() == {
        "view": 75_872 + 1, "add_to_cart": 4_497 + 2_356, "purchase": 1_750  # the cut line still says pv
    }  # fmt: skip
    assert source.events["user_id"].nunique() == 815
    assert source.catalog["item_id"].nunique() == 55_368


def test_replay_and_gate_quarantine_the_cut_line_and_old_times(source, layout, settings):
    landed = replay.land(source, layout)
    assert [b.path.stem for b in landed] == [f"taobao-2017-{d}" for d in
                                            ["11-25", "11-26", "11-27", "11-28", "11-29", "11-30", "12-01", "12-02", "12-03"]]  # fmt: skip
    results = [run_gate(p, layout, settings) for p in pending_batches(layout)]
    assert all(r.status == "accepted" for r in results)
    received = sum(r.received for r in results)
    accepted = sum(r.accepted for r in results)
    quarantined = pd.concat(
        pd.read_parquet(layout.quarantine / f"{r.batch_id}.parquet") for r in results if r.quarantined
    )
    assert received == COMPLETE_LINES + 1 == accepted + len(quarantined)

    cut = quarantined[quarantined["reason"] == "event_timestamp_missing"]
    assert len(cut) == 1
    assert (cut.iloc[0]["user_id"], cut.iloc[0]["item_id"], cut.iloc[0]["event_type"]) == ("100370", "1968385", "view")

    too_old = quarantined[quarantined["reason"] == "event_timestamp_too_old"]
    times = pd.to_datetime(too_old["event_timestamp"], utc=True)
    # Late arrivals up to max_event_age before the first day are accepted; anything older is not.
    assert (times < WINDOW[0] - settings.max_event_age).all()
    assert len(too_old) == 2  # 2017-09-11 and 2017-11-20; 33 more pre-window rows are recent enough to accept
    before_window = source.events["event_timestamp"] < WINDOW[0]
    assert before_window.sum() == 35
    assert set(quarantined["reason"]) == {"event_timestamp_missing", "event_timestamp_too_old"}
