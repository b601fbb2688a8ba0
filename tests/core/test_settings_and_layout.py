"""Settings come from SHOPREC_* variables; all state lives under SHOPREC_HOME; writes are atomic."""

from datetime import timedelta

import pytest
from pydantic import ValidationError

from core.layout import Layout, batch_id_of, read_json, write_json
from core.settings import PROJECT_ROOT, Settings


def test_defaults_put_state_in_the_project(monkeypatch):
    for name in ("SHOPREC_HOME", "SHOPREC_MAX_REJECT_SHARE"):
        monkeypatch.delenv(name, raising=False)
    settings = Settings(_env_file=None)
    assert settings.home == PROJECT_ROOT / ".shoprec"
    assert settings.max_reject_share == 0.05


def test_environment_overrides_every_setting(monkeypatch, tmp_path):
    monkeypatch.setenv("SHOPREC_HOME", str(tmp_path))
    monkeypatch.setenv("SHOPREC_MAX_EVENT_AGE", "P3D")
    monkeypatch.setenv("SHOPREC_INGEST_SCHEDULE", "*/15 * * * *")
    settings = Settings(_env_file=None)
    assert settings.home == tmp_path
    assert settings.max_event_age == timedelta(days=3)
    assert settings.ingest_schedule == "*/15 * * * *"


def test_bad_values_are_refused(monkeypatch):
    monkeypatch.setenv("SHOPREC_MAX_REJECT_SHARE", "1.5")
    with pytest.raises(ValidationError):
        Settings(_env_file=None)


def test_env_example_documents_every_setting():
    documented = (PROJECT_ROOT / ".env.example").read_text()
    for name in Settings.model_fields:
        assert f"SHOPREC_{name.upper()}=" in documented, name


def test_every_path_is_under_home(tmp_path):
    layout = Layout(tmp_path)
    paths = [layout.landing, layout.catalog, layout.events, layout.quarantine, layout.gate, layout.docs,
             layout.event_partition("2024-01-01"), layout.source_quarantine("x"), layout.gate_record("b"),
             layout.training, layout.model_store]  # fmt: skip
    assert all(p.is_relative_to(tmp_path) for p in paths)
    assert not tmp_path.joinpath("landing").exists()  # describing the layout touches no disk


def test_json_round_trip_and_batch_ids(tmp_path):
    write_json(tmp_path / "a" / "b.json", {"n": 1})
    assert read_json(tmp_path / "a" / "b.json") == {"n": 1}
    assert [p.name for p in (tmp_path / "a").iterdir()] == ["b.json"]  # no temporary file left behind


def test_batch_ids_tell_different_files_apart_and_know_the_same_bytes_again(tmp_path):
    # Named by the stem alone, drop.csv and drop.parquet were one batch: the second was skipped for good.
    (tmp_path / "drop.csv").write_text("event_id\n1\n")
    (tmp_path / "drop.parquet").write_text("other bytes")
    (tmp_path / "again.csv").write_text("event_id\n1\n")
    ids = {name: batch_id_of(tmp_path / name) for name in ("drop.csv", "drop.parquet", "again.csv")}
    assert ids["drop.csv"] != ids["drop.parquet"]
    assert ids["drop.csv"].startswith("drop-") and ids["again.csv"].startswith("again-")
    assert ids["drop.csv"].removeprefix("drop") == ids["again.csv"].removeprefix("again")  # the same bytes
    assert batch_id_of(tmp_path / "drop.csv") == ids["drop.csv"]  # stable
