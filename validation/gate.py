"""The gate: validate one landed batch against the event suite and split it into accepted and quarantined rows.

- Accepted rows go to the event lake, partitioned by event date; rejected rows go to quarantine with the failed
  rule(s) per row. Always accepted + quarantined = received.
- A batch fails as a whole when its quarantined share exceeds SHOPREC_MAX_REJECT_SHARE, or when it cannot be read as
  the contract at all (unreadable file, wrong encoding, missing column). A failed batch writes nothing to the lake
  and keeps all its rows (or its raw bytes) in quarantine; the verdict says why in one line.
- Time rules are judged against the batch's logical time: an explicit as_of, else its manifest's, else the caller's
  fallback (a DAG run's data interval end; the wall clock on the command line).
- Re-running a batch gives byte-identical outputs: every write is keyed on the batch id, never on the clock.
"""

import csv
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from core.contract import LAKE_COLUMNS, LAKE_SCHEMA, OPTIONAL_EVENT_COLUMNS, REQUIRED_EVENT_COLUMNS, as_utc
from core.layout import (
    Layout,
    batch_digest,
    batch_id_of,
    lake_as_of,
    manifest_of,
    read_json,
    table_bytes,
    write_atomically,
    write_json,
    write_parquet,
)
from core.settings import Settings
from validation.runner import row_reasons
from validation.suites import event_suite

ID_COLUMNS = ("event_id", "user_id", "item_id", "session_id")
BATCH_FAILED = "batch_failed"
CLOCK_FLAG = "logical_time_implausible"


class BatchUnreadable(Exception):
    """The file cannot be read as the event contract at all."""


@dataclass
class GateResult:
    batch_id: str
    status: str  # "accepted" or "failed"
    received: int
    accepted: int
    quarantined: int
    failed_rules: dict[str, int] = field(default_factory=dict)
    flagged: dict[str, int] = field(default_factory=dict)  # warnings: counted, rows still accepted
    reason: str | None = None  # one readable line when the batch failed
    interval_start: str | None = None
    as_of: str | None = None  # the end of the batch's logical interval
    sha256: str | None = None  # of the file's bytes: the same bytes again are this batch, not a new one
    moves_clock: bool = False  # whether this batch advances the shop's logical time (core.layout.lake_as_of)
    warning: str | None = None  # one readable line about an accepted batch that needs a look

    def to_dict(self) -> dict:
        return asdict(self)


def pending_batches(layout: Layout) -> list[Path]:
    """Landed batches the gate has not judged yet, oldest first; the same bytes landed again, under any name, are
    the batch already judged (its rows are in the lake or quarantine once), not a new one."""
    seen = {r.get("sha256") for r in map(read_json, layout.gate.glob("*.json"))} if layout.gate.exists() else set()
    pending = []
    for path in layout.landed_batches():
        if (digest := batch_digest(path)) not in seen:
            pending.append(path)
            seen.add(digest)
    return pending


def logical_interval(path: Path, explicit=None, fallback=None) -> tuple[pd.Timestamp, pd.Timestamp]:
    """The (start, end) of the time a batch covers: its end is the explicit as_of, else its manifest's, else the
    fallback, else now; its start comes from the manifest, or equals the end when nothing says otherwise."""
    manifest = manifest_of(path)
    known = read_json(manifest) if manifest.exists() else {}
    end = explicit if explicit is not None else known.get("as_of", fallback)
    end = as_utc(pd.Timestamp(end if end is not None else "now"))
    start = as_utc(pd.Timestamp(known["interval_start"])) if explicit is None and "interval_start" in known else end
    return min(start, end), end


@dataclass
class Judgement:
    """A verdict and the rows it sends where, before anything is written (what `shoprec validate` prints)."""

    result: GateResult
    accepted: pd.DataFrame | None = None  # rows for the lake
    quarantined: pd.DataFrame | None = None  # rows as read, with `row` and `reason`
    unreadable: bool = False  # the file could not be read: quarantine keeps its bytes


def judge(path: Path, layout: Layout, settings: Settings, as_of=None, fallback_as_of=None) -> Judgement:
    """Judge one batch file against the contract and the lake as it stands; reads only, writes nothing."""
    if not path.is_file():
        raise FileNotFoundError(f"no batch file at {path}")
    batch_id, digest = batch_id_of(path), batch_digest(path)
    start, when = logical_interval(path, as_of, fallback_as_of)
    try:
        raw = read_batch(path)
    except BatchUnreadable as err:
        received = _count_records(path)
        result = GateResult(batch_id, "failed", received, 0, received, {BATCH_FAILED: received},
                            reason=f"{path.name}: {err}", interval_start=start.isoformat(), as_of=when.isoformat(),
                            sha256=digest)  # fmt: skip
        return Judgement(result, unreadable=True)

    oldest_allowed, newest_allowed = start - settings.max_event_age, when + settings.future_skew
    events = prepare(raw)
    seen = _accepted_ids(layout, batch_id, oldest_allowed, newest_allowed)
    events = events.assign(
        event_id_not_seen_before=~events["event_id"].isin(seen), item_known=events["item_id"].isin(_catalog_ids(layout))
    )
    reasons, flags = row_reasons(
        events,
        event_suite,
        {"oldest_allowed": oldest_allowed, "newest_allowed": newest_allowed},
        run_name=batch_id,
        docs_dir=layout.docs,
    )
    rejected = reasons != ""
    failed_rules = _count_rules(reasons[rejected])
    status, reason = "accepted", None
    share = rejected.mean() if len(raw) else 0.0
    if share > settings.max_reject_share:
        status = "failed"
        reason = (f"{path.name}: {rejected.sum():,} of {len(raw):,} rows ({share:.1%}) broke the event contract, "
                  f"over the {settings.max_reject_share:.0%} limit; worst: "
                  + ", ".join(f"{rule} ({n:,})" for rule, n in list(failed_rules.items())[:3]))  # fmt: skip
        reasons = reasons.mask(~rejected, BATCH_FAILED)
        rejected[:] = True
        failed_rules[BATCH_FAILED] = int((reasons == BATCH_FAILED).sum())

    quarantined = None
    if rejected.any():
        # Rows exactly as read: text from CSV, typed values from parquet; `row` is the 1-based position in the batch.
        quarantined = raw[rejected.to_numpy()].assign(row=np.flatnonzero(rejected) + 1)
        quarantined["reason"] = reasons[rejected].to_numpy()
        quarantined = quarantined.reset_index(drop=True)
    accepted = events[~rejected.to_numpy()]
    flagged = {rule: int(n) for rule, n in flags.items() if n}
    warning = _implausible_time(start, when, lake_as_of(layout, flagged_too=True), settings) if len(accepted) else None
    if warning:
        flagged[CLOCK_FLAG] = len(accepted)
    result = GateResult(batch_id, status, len(raw), len(accepted), int(rejected.sum()), failed_rules, flagged,
                        reason, start.isoformat(), when.isoformat(), sha256=digest, warning=warning,
                        moves_clock=status == "accepted" and len(accepted) > 0 and warning is None)  # fmt: skip
    return Judgement(result, accepted, quarantined)


def record(judgement: Judgement, path: Path, layout: Layout) -> GateResult:
    """Write a judgement: accepted rows to the lake, the rest to quarantine, the verdict to the ledger. Whatever an
    earlier run of the same batch wrote is replaced, so re-running it leaves byte-identical outputs."""
    batch_id = judgement.result.batch_id
    _clear_outputs(layout, batch_id)
    if judgement.unreadable:
        layout.quarantine.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, layout.quarantine / f"{batch_id}.raw{path.suffix}")
    if judgement.quarantined is not None:
        write_parquet(judgement.quarantined, layout.quarantine / f"{batch_id}.parquet")
    if judgement.accepted is not None:
        _write_lake(judgement.accepted, layout, batch_id)
    write_json(layout.gate_record(batch_id), judgement.result.to_dict())
    return judgement.result


def run_gate(path: Path, layout: Layout, settings: Settings, as_of=None, fallback_as_of=None) -> GateResult:
    """Judge one batch file, write its accepted rows, quarantine and verdict, and return the verdict."""
    return record(judge(path, layout, settings, as_of, fallback_as_of), path, layout)


def _implausible_time(start, end, clock: pd.Timestamp | None, settings: Settings) -> str | None:
    """Why a batch's logical interval must not move the shop's clock, or None.

    clock is the latest delivery the lake has (flagged ones too). An interval that starts further after it than the
    retention window, or than the batch's own length (a week-long batch after a week without trading is ordinary),
    is a wrong clock: a file judged at the wall clock in a replayed shop. Its rows are accepted, the clock stays;
    a next batch that carries on from it is plausible again, so a real jump (a shop going live after a replay)
    takes two consistent batches, never one silent one. Batches from the past never move the clock forward.
    """
    if clock is None:
        return None
    gap, allowed = start - clock, max(settings.max_event_age, end - start)
    if gap <= allowed:
        return None
    return (f"logical interval {start.isoformat()} to {end.isoformat()} starts {gap} after the lake's latest "
            f"delivery {clock.isoformat()}, beyond the {allowed} allowed: its rows are accepted, but the shop's clock "
            "stays where it was until a batch carries on from this one")  # fmt: skip


def judge_in_order(path: Path, layout: Layout, settings: Settings, fallback_as_of=None) -> GateResult:
    """The verdict of one landed batch, judging every pending batch landed before it first.

    Batches must be judged oldest first (a re-sent event is a duplicate of the earlier one; the shop's clock moves
    forward), and Airflow runs mapped tasks in no promised order: each task catches up on the batches before its
    own, so the verdicts are the same whatever order the tasks run in. A batch an earlier task already judged
    keeps its recorded verdict.
    """
    for earlier in pending_batches(layout):
        if earlier.name >= path.name:
            break
        run_gate(earlier, layout, settings, fallback_as_of=fallback_as_of)
    recorded = layout.gate_record(batch_id_of(path))
    if recorded.exists():
        return GateResult(**read_json(recorded))
    return run_gate(path, layout, settings, fallback_as_of=fallback_as_of)


def read_batch(path: Path) -> pd.DataFrame:
    """The batch as received, every value as text (CSV) or as typed (parquet); raises BatchUnreadable."""
    if path.stat().st_size == 0:
        # Not even a header: nothing says these are contract columns (a header-only file is an empty batch).
        raise BatchUnreadable("empty file (0 bytes, not even a header row)")
    try:
        if path.suffix == ".parquet":
            frame = pq.read_table(path).to_pandas(types_mapper=_arrow_strings)
        else:
            frame = _read_csv_as_text(path)
    except UnicodeDecodeError as err:
        raise BatchUnreadable(f"not UTF-8 text ({err.reason} at byte {err.start})") from None
    except (pd.errors.ParserError, ValueError, OSError) as err:
        raise BatchUnreadable(f"not readable as {path.suffix[1:]}: {str(err).strip().splitlines()[0]}") from None
    missing = [c for c in REQUIRED_EVENT_COLUMNS if c not in frame.columns]
    if missing:
        raise BatchUnreadable(f"missing required column(s) {', '.join(missing)}; found {', '.join(frame.columns)}")
    for column in OPTIONAL_EVENT_COLUMNS:
        if column not in frame.columns:
            frame[column] = None
    return frame.reset_index(drop=True)


def _read_csv_as_text(path: Path) -> pd.DataFrame:
    """Every field as text. Arrow's reader is ~10x faster than pandas'; a file it rejects (ragged rows, bad UTF-8)
    is read again by pandas, which keeps short rows (their missing fields blank, for the gate to quarantine) and
    names the byte where the encoding breaks."""
    try:
        with path.open(encoding="utf-8", newline="") as f:
            header = next(csv.reader(f))
        as_text = pacsv.ConvertOptions(column_types=dict.fromkeys(header, pa.string()),
                                       strings_can_be_null=False, quoted_strings_can_be_null=False)  # fmt: skip
        return pacsv.read_csv(path, convert_options=as_text).to_pandas(types_mapper=_arrow_strings)
    except (pa.ArrowInvalid, UnicodeDecodeError, StopIteration):
        return pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8").fillna("")


def _arrow_strings(arrow_type: pa.DataType):
    """Keep parquet strings in Arrow (zero-copy); other types convert as usual."""
    return pd.ArrowDtype(arrow_type) if pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type) else None


def prepare(raw: pd.DataFrame) -> pd.DataFrame:
    """Typed contract columns plus the helper facts the suite checks row by row."""
    columns = {column: _text(raw[column]) for column in ID_COLUMNS}
    columns["event_type"] = _text(raw["event_type"]).fillna("")  # in-set rules skip nulls; a blank type is unknown
    columns["event_timestamp"] = _timestamps(raw["event_timestamp"])
    for column in ("quantity", "price"):
        columns[column], columns[f"{column}_is_number"] = _numbers(raw[column])
    event_id = columns["event_id"]
    columns["event_id_first_in_batch"] = ~event_id.duplicated() | event_id.isna()
    return pd.DataFrame(columns, index=raw.index)


def _text(values: pd.Series) -> pd.Series:
    """Trimmed strings, with missing for absent or blank values, kept in Arrow: its kernels are ~20x faster than
    pandas .str, and GX's per-expectation row filtering copies Arrow columns far faster than Python objects."""
    if not isinstance(values.dtype, pd.ArrowDtype):
        values = values.astype(object)
    text = pc.utf8_trim_whitespace(pa.array(values, type=pa.string(), from_pandas=True))
    text = pc.if_else(pc.equal(text, ""), pa.scalar(None, pa.string()), text)
    return pd.Series(pd.arrays.ArrowExtensionArray(text), index=values.index)


def _timestamps(values: pd.Series) -> pd.Series:
    if pd.api.types.is_datetime64_any_dtype(values):
        return values.dt.tz_localize("UTC") if values.dt.tz is None else values.dt.tz_convert("UTC")
    # Naive times are read as UTC (the contract says UTC); anything unparseable becomes NaT and is quarantined.
    return pd.to_datetime(values.replace("", None), format="ISO8601", utc=True, errors="coerce")


def _numbers(values: pd.Series) -> tuple[pd.Series, pd.Series]:
    if pd.api.types.is_numeric_dtype(values):
        return values.astype(float), pd.Series(True, index=values.index)
    present = _text(values).notna()
    parsed = pd.to_numeric(values.where(present), errors="coerce").astype(float)
    return parsed, ~present | parsed.notna()


def _count_rules(reasons: pd.Series) -> dict[str, int]:
    counts = reasons.str.split(";").explode().value_counts()
    return {rule: int(n) for rule, n in counts.items()}


def _accepted_ids(layout: Layout, batch_id: str, oldest: pd.Timestamp, newest: pd.Timestamp) -> pd.Index:
    """Ids already in the lake that a batch accepting events in [oldest, newest] could repeat.

    Only partitions inside that window can hold a clash: anything outside it is rejected by the time rules anyway.
    The batch's own earlier output is skipped, so re-running a batch does not see itself as a duplicate.
    """
    first, last = oldest.date(), newest.date()
    files = [
        f
        for d in pd.date_range(first, last, freq="D")
        if (part := layout.event_partition(f"{d:%Y-%m-%d}")).exists()
        for f in part.glob("*.parquet")
        if f.stem != batch_id
    ]
    if not files:
        return pd.Index([])
    return pd.Index(pd.concat(pd.read_parquet(f, columns=["event_id"]) for f in files)["event_id"])


def _catalog_ids(layout: Layout) -> pd.Index:
    if not layout.catalog.exists():
        return pd.Index([])
    return pd.Index(pd.read_parquet(layout.catalog, columns=["item_id"])["item_id"])


def _clear_outputs(layout: Layout, batch_id: str) -> None:
    """Remove what an earlier run of this batch wrote, so a re-run cannot leave stale rows behind."""
    for stale in [*layout.events.glob(f"event_date=*/{batch_id}.parquet"), *layout.quarantine.glob(f"{batch_id}.*")]:
        stale.unlink()


def _write_lake(accepted: pd.DataFrame, layout: Layout, batch_id: str) -> None:
    if accepted.empty:
        return
    lake = accepted.assign(batch_id=batch_id)[list(LAKE_COLUMNS)]
    table = pa.Table.from_pandas(lake, schema=LAKE_SCHEMA, preserve_index=False).replace_schema_metadata(None)
    # Day arithmetic in numpy: strftime on a million tz-aware timestamps takes seconds.
    day = lake["event_timestamp"].dt.tz_convert(None).to_numpy().astype("datetime64[D]")
    days = np.unique(day)
    for d in days:
        rows = table if len(days) == 1 else table.filter(pa.array(day == d))
        write_atomically(layout.event_partition(str(d)) / f"{batch_id}.parquet", table_bytes(rows))


def _count_records(path: Path) -> int:
    """Records in a file that could not be parsed: its non-empty lines after the header, best effort."""
    if path.suffix != ".csv" or not path.exists():
        return 0
    lines = [line for line in path.read_bytes().splitlines() if line.strip()]
    return max(len(lines) - 1, 0)
