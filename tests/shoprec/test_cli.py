"""The shoprec command line: JSON verdicts and exit codes (0 accepted, 1 failed, 2 usage), the ledger, replay."""

import json
import os
import subprocess
import sys

from typer.testing import CliRunner

from shoprec.cli import app
from tests.conftest import batch

runner = CliRunner()


def write(path, frame):
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(path, index=False)
    return path


def test_validate_prints_a_json_verdict_and_exits_0_when_accepted(shoprec_home, tmp_path):
    path = write(tmp_path / "b1.csv", batch([{}, {}, {}] * 10 + [{"user_id": ""}]))
    result = runner.invoke(app, ["validate", str(path), "--as-of", "2024-01-02T00:00:00Z"])
    assert result.exit_code == 0, result.output
    verdict = json.loads(result.stdout)
    assert verdict["batch_id"].startswith("b1-") and verdict["status"] == "accepted"
    assert (verdict["received"], verdict["accepted"], verdict["quarantined"]) == (31, 30, 1)
    assert verdict["failed_rules"] == {"user_id_missing": 1}


def test_validate_exits_1_on_a_failed_batch(shoprec_home, tmp_path):
    path = write(tmp_path / "b2.csv", batch([{}]).drop(columns=["event_type"]))
    result = runner.invoke(app, ["validate", str(path), "--as-of", "2024-01-02T00:00:00Z"])
    assert result.exit_code == 1
    verdict = json.loads(result.stdout)
    assert verdict["status"] == "failed" and "event_type" in verdict["reason"]


def test_validate_exits_2_on_usage_errors(shoprec_home, tmp_path):
    path = write(tmp_path / "b3.csv", batch([{}]))
    assert runner.invoke(app, ["validate", str(path), "--as-of", "next tuesday"]).exit_code == 2
    assert runner.invoke(app, ["validate"]).exit_code == 2
    assert runner.invoke(app, ["validate", str(path), "--bogus"]).exit_code == 2


def test_validate_of_a_missing_file_is_one_line_and_exit_2(shoprec_home, tmp_path):
    # It printed two chained tracebacks (64 lines) and exited 1.
    result = runner.invoke(app, ["validate", str(tmp_path / "no-such-file.csv")])
    assert result.exit_code == 2
    assert result.output.strip() == f"{tmp_path / 'no-such-file.csv'}: no such file"
    assert not shoprec_home.home.exists()  # nothing written


def test_validate_is_a_dry_run_and_ingest_path_takes_the_file_in(shoprec_home, tmp_path):
    from core.layout import Layout

    layout = Layout(shoprec_home.home)
    path = write(tmp_path / "drop.csv", batch([{}] * 30 + [{"user_id": ""}]))
    checked = runner.invoke(app, ["validate", str(path), "--as-of", "2024-01-02T00:00:00Z"])
    assert checked.exit_code == 0 and json.loads(checked.stdout)["quarantined"] == 1
    # Checking a file used to write its verdict into the ledger, the lake and quarantine.
    assert not any(p.exists() for p in (layout.gate, layout.events, layout.quarantine, layout.landing))

    taken = runner.invoke(app, ["ingest", str(path), "--as-of", "2024-01-02T00:00:00Z"])
    assert taken.exit_code == 0, taken.output
    assert "landed as" in taken.output and (layout.landing / "drop.csv").read_bytes() == path.read_bytes()
    assert taken.output.strip().splitlines()[-1].split() == ["total", "31", "30", "1"]
    # The same bytes again, under another name, are the batch already taken in.
    again = write(tmp_path / "copy" / "resent.csv", batch([{}] * 30 + [{"user_id": ""}]))
    resent = runner.invoke(app, ["ingest", str(again)])
    assert resent.exit_code == 0 and "already landed as drop.csv" in resent.output
    assert resent.output.strip().splitlines()[-1].split() == ["total", "31", "30", "1"]
    # Other bytes under a landed name are refused: the landing zone keeps batches exactly as received.
    other = write(tmp_path / "other" / "drop.csv", batch([{"item_id": "i2"}]))
    refused = runner.invoke(app, ["ingest", str(other)])
    assert refused.exit_code == 2 and "rename the file" in refused.output
    assert runner.invoke(app, ["ingest", str(tmp_path / "missing.csv")]).exit_code == 2


def test_validate_judges_at_the_wall_clock_by_default(shoprec_home, tmp_path):
    path = write(tmp_path / "old.csv", batch([{}]))  # stamped 2024-01-01: too old today
    result = runner.invoke(app, ["validate", str(path)])
    assert result.exit_code == 1
    assert json.loads(result.stdout)["failed_rules"]["event_timestamp_too_old"] == 1


def test_replay_ingest_and_status_on_the_bundled_dataset(shoprec_home):
    # The same console script a user runs, in its own process.
    shoprec = [sys.executable, "-m", "shoprec"]
    env = {**os.environ, "SHOPREC_HOME": str(shoprec_home.home)}
    replay = [*shoprec, "replay", "online_retail", "--every", "month"]
    out = subprocess.run(replay, capture_output=True, text=True, env=env, check=True).stdout
    assert "541,909 source rows -> 396,370 events in 13 batches" in out
    result = runner.invoke(app, ["ingest"])
    assert result.exit_code == 0, result.output
    assert "catalog feed online_retail: 3,832 accepted, 0 quarantined" in result.output
    last = result.output.strip().splitlines()[-1].split()
    assert last == ["total", "396,370", "391,183", "5,187"]


def test_features_build_materialize_and_read(shoprec_home):
    from core.layout import Layout
    from tests.features.conftest import write_synthetic_shop

    layout = Layout(shoprec_home.home)
    result = runner.invoke(app, ["features", "materialize"])
    assert result.exit_code == 1 and "lake is empty" in result.output
    events = write_synthetic_shop(layout, 1_000, n_users=40, n_items=30, days=3, seed=5)

    built = runner.invoke(app, ["features", "build"])
    assert built.exit_code == 0, built.output
    assert json.loads(built.stdout)["last_day"] == "2024-03-03"
    materialized = runner.invoke(app, ["features", "materialize"])
    assert materialized.exit_code == 0, materialized.output
    user, item = events["user_id"].iloc[-1], events["item_id"].iloc[-1]
    read = runner.invoke(app, ["features", "read", user, item, "nope"])
    assert read.exit_code == 0, read.output
    answer = json.loads(read.stdout)
    assert answer["user_status"] == {"user_activity": "fresh", "user_history": "fresh"}
    assert answer["items"][1]["item_catalog"] == "missing" and answer["items"][1]["item_catalog__price"] is None
    stale = json.loads(runner.invoke(app, ["features", "read", user, item, "--as-of", "2024-04-01"]).stdout)
    assert (
        stale["user_status"] == {"user_activity": "stale", "user_history": "fresh"}
        and stale["user"]["user_activity__views_7d"] is None
    )
    bad = runner.invoke(app, ["features", "read", user, item, "--as-of", "soon"])
    assert bad.exit_code == 2

    # A user_history row is three 500-element arrays: shown as a length and the first few, unless --full.
    history = answer["user"]["user_history__history_items"]
    assert set(history) == {"length", "first"} and len(history["first"]) == 5 and history["length"] > 5
    assert len(read.stdout.splitlines()) < 200
    full = json.loads(runner.invoke(app, ["features", "read", user, item, "--full"]).stdout)
    assert len(full["user"]["user_history__history_items"]) == history["length"]
    assert full["user"]["user_history__history_items"][:5] == history["first"]
