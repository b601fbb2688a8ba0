"""Replay: time-ordered batches with manifests, idempotent, and an immutable landing zone."""

import pandas as pd
import pytest

from core.layout import manifest_of, read_json
from ingest import replay, synthetic


def test_batches_follow_the_local_calendar_with_manifests(layout):
    source = synthetic.generate(5_000, days=3, start="2024-03-01")
    landed = replay.land(source, layout)
    ids = [b.path.stem for b in landed]
    assert all(b.batch_id.startswith(f"{b.path.stem}-") for b in landed)  # the file's stem, then its digest
    # Three days of sessions; the last evening's sessions may run past midnight into a fourth batch.
    assert ids[:3] == ["synthetic-2024-03-01", "synthetic-2024-03-02", "synthetic-2024-03-03"]
    assert ids == sorted(ids) and len(ids) <= 4
    assert sum(b.rows for b in landed) == 5_000
    manifest = read_json(manifest_of(landed[1].path))
    assert manifest["interval_start"].startswith("2024-03-02 00:00:00")
    assert manifest["as_of"].startswith("2024-03-03 00:00:00")
    assert (layout.landing / "catalog" / "synthetic.parquet").exists()


def test_rows_without_a_time_travel_with_their_neighbours(layout):
    source = synthetic.generate(1_000, days=2, bad_share=0.07, start="2024-03-01")
    landed = replay.land(source, layout)
    assert sum(b.rows for b in landed) == 1_000
    text = pd.concat(pd.read_csv(b.path, dtype=str, keep_default_na=False) for b in landed)
    assert (text["event_timestamp"] == "").sum() == source.events["event_timestamp"].isna().sum() > 0


def test_replay_is_idempotent_and_the_landing_zone_immutable(layout):
    source = synthetic.generate(1_000, days=2)
    first = replay.land(source, layout)
    before = {b.path: b.path.read_bytes() for b in first}
    replay.land(source, layout)
    assert {b.path: b.path.read_bytes() for b in first} == before
    changed = synthetic.generate(1_000, days=2, seed=99)
    with pytest.raises(FileExistsError, match="immutable"):
        replay.land(changed, layout)


def test_unknown_period_is_a_clear_error(layout):
    with pytest.raises(ValueError, match="every must be one of"):
        replay.land(synthetic.generate(10), layout, every="fortnight")
