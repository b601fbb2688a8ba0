"""The online read path serving uses: one user row and up to a few hundred item rows per call, as numpy arrays.

It reads Feast's online store through the store's own online_read (no per-call registry lookups or response
assembly, which is where Feast's Python get_online_features spends its time), and it enforces what Feast does not
on online reads (feast-dev/feast#6821): a value older than its view's TTL is reported as stale and never served as
if fresh. Item rows change only when features are materialised, so they are cached in-process under the
materialisation version; a new materialisation empties the cache.
"""

import os
from dataclasses import dataclass

import numpy as np
import pandas as pd
from feast import FeatureStore
from feast.infra.online_stores.helpers import get_online_store_from_config
from feast.protos.feast.types.EntityKey_pb2 import EntityKey
from feast.protos.feast.types.Value_pb2 import Value
from feast.types import Array, Bool, Float32, Float64, Int32, Int64

from core.contract import as_utc
from core.layout import Layout

FRESH, STALE, MISSING = "fresh", "stale", "missing"
UNAVAILABLE = "unavailable"  # the store could not be read at all (Redis down, say): nothing is known


def _store_errors() -> tuple[type[BaseException], ...]:
    """What a read raises when the online store itself fails (not a bad key): SQLite's errors, Redis's, the
    socket's."""
    import sqlite3

    errors: tuple = (OSError, sqlite3.Error)
    try:
        from redis.exceptions import RedisError

        errors += (RedisError,)
    except ImportError:  # the embedded store needs no Redis client
        pass
    return errors


STORE_ERRORS = _store_errors()


@dataclass
class OnlineRead:
    """Features of one user and some items. Values that are missing or stale are blanked (NaN, zeros, None)."""

    user: dict[str, np.ndarray]  # "view__feature" -> array of one row
    items: dict[str, np.ndarray]  # "view__feature" -> array with one row per requested item, in request order
    user_status: dict[str, str]  # view -> fresh / stale / missing
    item_status: dict[str, np.ndarray]  # view -> per item: fresh / stale / missing

    def stale_views(self) -> list[str]:
        return sorted({v for v, s in self.user_status.items() if s == STALE}
                      | {v for v, s in self.item_status.items() if (s == STALE).any()})  # fmt: skip


def _fail_fast(online_store, online_config) -> None:
    """A Redis read tries once. redis-py retries a timed-out or refused command 3 times with up to 1+2+4 s of
    backoff by default: a hung Redis held a request for up to 15 s (past the service's 10 s timeout) where one
    SHOPREC_REDIS_TIMEOUT_S should answer the fallback; the service's poller probes the store until it is back."""
    if online_config.type != "redis":
        return
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    online_store._get_client(online_config).set_retry(Retry(NoBackoff(), 0))


class OnlineFeatures:
    """Reads a feature service's features for (user, items) requests from the online store."""

    def __init__(self, store: FeatureStore, service: str, layout: Layout):
        self._config = store.config
        self._online = get_online_store_from_config(store.config.online_store)
        _fail_fast(self._online, store.config.online_store)
        self._version_file = layout.feast / "materialized.json"
        self._views = {"user_id": [], "item_id": []}  # join key -> [(view, [features])]
        for projection in store.get_feature_service(service).feature_view_projections:
            view = store.get_feature_view(projection.name)
            fields = projection.features
            self._views[view.entity_columns[0].name].append(
                (view, [f.name for f in fields], [_kind(f.dtype) for f in fields], _ttl_ns(view))
            )
        self._cache: dict[str, dict[str, tuple]] = {}  # view -> item_id -> (event_timestamp, values)
        self._cache_version = None

    def read(self, user_id: str, item_ids: list[str], as_of=None) -> OnlineRead:
        """as_of: the time freshness is judged at (default now; a replayed shop passes its logical time)."""
        now = as_utc(as_of if as_of is not None else "now")
        user, user_status = self.read_user(user_id, now)
        items, item_status = self.read_items(item_ids, now)
        return OnlineRead(user, items, user_status, item_status)

    def read_user(self, user_id: str, now: pd.Timestamp) -> tuple[dict[str, np.ndarray], dict[str, str]]:
        """One user's features (arrays of one row) and each user view's status at now."""
        return self.user_row(user_id).at(now)

    def user_row(self, user_id: str) -> "UserRow":
        """One user's stored rows, not yet judged: what `UserRow.at` blanks for a moment. Like an item's, a user's
        rows change only when features are materialised: serving remembers a returning user's."""
        stored = []
        for view, names, kinds, ttl in self._views["user_id"]:
            ((stamp, values),) = self._read_rows(view, names, "user_id", [user_id])
            stored.append((view.name, names, kinds, ttl, stamp, values))
        return UserRow(stored)

    def read_items(self, item_ids: list[str], now: pd.Timestamp) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """Items' features (one row per id, in order) and each item view's per-item status at now; rows come from
        the in-process cache, filled from the store for ids not seen since the last materialisation."""
        return self.item_rows(item_ids).at(now)

    def item_rows(self, item_ids: list[str]) -> "ItemRows":
        """Items' stored rows, not yet judged: what `ItemRows.at` blanks for a moment. Serving keeps the whole
        catalog's and judges the few rows of a request (features read once per materialisation, off the
        request path)."""
        self._check_version()
        views = []
        for view, names, kinds, ttl in self._views["item_id"]:
            cached = self._cache.setdefault(view.name, {})
            unknown = list(dict.fromkeys(i for i in item_ids if i not in cached))
            if unknown:
                cached.update(zip(unknown, self._read_rows(view, names, "item_id", unknown), strict=True))
            rows = [cached[i] for i in item_ids]
            columns = _columns(view.name, names, kinds, [values for _, values in rows])
            views.append((view.name, ttl, _stamps([stamp for stamp, _ in rows]), columns))
        return ItemRows(views)

    @property
    def cache_version(self):
        """The materialisation the item cache holds (the mtime of feast/materialized.json), None before one."""
        self._check_version()
        return self._cache_version

    def _read_rows(self, view, names: list[str], key: str, ids: list[str]) -> list[tuple]:
        keys = [EntityKey(join_keys=[key], entity_values=[Value(string_val=str(i))]) for i in ids]
        found = self._online.online_read(self._config, view, keys, list(names))  # Redis appends to the list
        rows = []
        for stamp, values in found:
            # Redis answers an unknown key with empty values stamped 1970, SQLite with None: both are missing.
            if values is None or all(v.WhichOneof("val") is None for v in values.values()):
                rows.append((None, None))
            else:
                rows.append((_stamp_ns(stamp), [_python(values.get(n)) for n in names]))
        return rows

    def _check_version(self) -> None:
        """Empty the item cache when a materialisation has run since it was filled."""
        try:
            version = os.stat(self._version_file).st_mtime_ns
        except FileNotFoundError:
            version = None
        if version != self._cache_version:
            self._cache.clear()
            self._cache_version = version


class UserRow:
    """One user's stored row per user view (event time and values), judged at a moment by `at`: a view is fresh
    while now <= its event time + TTL, else stale (blanked), or missing. The columns of each combination of
    statuses are built once: a remembered user's later requests only compare their stamps with the clock."""

    def __init__(self, views: list[tuple[str, list[str], list[str], int, int | None, list | None]]):
        self.views = views  # [(view, feature names, their kinds, ttl ns (0: never stale), event time ns, values)]
        self._columns: dict[tuple[str, ...], dict[str, np.ndarray]] = {}  # statuses -> columns

    @property
    def known(self) -> bool:
        """Whether the store holds a row of this user in any view."""
        return any(stamp is not None for *_, stamp, _ in self.views)

    def at(self, now: pd.Timestamp) -> tuple[dict[str, np.ndarray], dict[str, str]]:
        """(the features as arrays of one row, blanked where not fresh at now; each view's status). The arrays
        are shared by every call at the same statuses: read-only."""
        statuses = {view: _judge_one(stamp, ttl, now) for view, _, _, ttl, stamp, _ in self.views}
        key = tuple(statuses.values())
        columns = self._columns.get(key)
        if columns is None:
            columns = {}
            for (view, names, kinds, _, _, values), status in zip(self.views, key, strict=True):
                columns.update(_columns(view, names, kinds, [values if status == FRESH else None]))
            for column in columns.values():
                column.flags.writeable = False
            self._columns[key] = columns
        return columns, statuses


class ItemRows:
    """Some items' stored rows per item view (event time and values), judged at a moment by `at`: the same
    fresh / stale / missing rule as a user's row, applied to a whole column at once.

    All rows are judged together and kept for as long as no row's status would change (until the first fresh row
    passes its TTL, from just after the last stale row passed its): a request then only picks its rows out."""

    def __init__(self, views: list[tuple[str, int, np.ndarray, dict[str, np.ndarray]]]):
        self.views = views  # [(view, ttl ns (0: never stale), event time ns per row, columns)]
        self._judged = (0, -1, {}, {})  # (valid after ns, valid until ns, values, statuses): empty, never valid

    def at(
        self, now: pd.Timestamp, rows: np.ndarray | None = None
    ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """(features of the rows (all by default), blanked where not fresh at now; each view's status per row)."""
        after, until, values, statuses = self._judged
        if not after < now.value <= until:
            after, until, values, statuses = self._judged = self._judge_all(now)
        if rows is None:
            return values, statuses
        return {name: column[rows] for name, column in values.items()}, {v: s[rows] for v, s in statuses.items()}

    def epoch(self, now: pd.Timestamp) -> tuple[int, int]:
        """(after, until) ns: the span around now in which no row's status changes, as `at` judges it."""
        self.at(now)
        return self._judged[:2]

    def _judge_all(self, now: pd.Timestamp) -> tuple[int, int, dict, dict]:
        after, until = np.iinfo(np.int64).min, np.iinfo(np.int64).max
        values, statuses = {}, {}
        for view, ttl, stamps, columns in self.views:
            fresh, statuses[view] = _judge(stamps, ttl, now)
            if ttl:  # a row is fresh while now <= its event time + ttl
                turns = stamps[stamps != MISSING_STAMP] + ttl
                after = max(after, turns[turns < now.value].max(initial=after))
                until = min(until, turns[turns >= now.value].min(initial=until))
            for name, column in columns.items():
                values[name] = _blank(column, fresh)
        return after, until, values, statuses


MISSING_STAMP = np.iinfo(np.int64).min  # the event time of a row the store does not have


def _blank(column: np.ndarray, fresh: np.ndarray) -> np.ndarray:
    """A column with its rows that are not fresh blanked as _columns blanks them (NaN, zeros, None)."""
    if fresh.all():
        return column
    if column.dtype == object:
        out = column.copy()
        out[~fresh] = None
        return out
    blank = np.nan if column.ndim == 1 else 0.0
    return np.where(fresh if column.ndim == 1 else fresh[:, None], column, blank).astype(column.dtype)


def _stamp_ns(stamp) -> int | None:
    """An online row's event time as UTC nanoseconds (stores hand back naive UTC or aware datetimes)."""
    if stamp is None:
        return None
    stamp = pd.Timestamp(stamp)
    return (stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp).value


def _judge(stamps: np.ndarray, ttl_ns: int, now: pd.Timestamp) -> tuple[np.ndarray, np.ndarray]:
    """(fresh, fresh / stale / missing) per row: stale when older than the view's TTL at `now` (0: never stale)."""
    found = stamps != MISSING_STAMP
    fresh = found & (stamps >= now.value - ttl_ns) if ttl_ns else found
    return fresh, _STATUS_NAMES[found.astype(np.int8) + fresh]  # a table lookup: np.where on text is slower


_STATUS_NAMES = np.array([MISSING, STALE, FRESH], dtype=object)  # by found + fresh


def _judge_one(stamp: int | None, ttl_ns: int, now: pd.Timestamp) -> str:
    """_judge's rule for one row (a request's user), without building arrays for it."""
    if stamp is None:
        return MISSING
    return FRESH if not ttl_ns or stamp >= now.value - ttl_ns else STALE


def _stamps(stamps: list) -> np.ndarray:
    return np.array([MISSING_STAMP if stamp is None else stamp for stamp in stamps], dtype=np.int64)


def _ttl_ns(view) -> int:
    return pd.Timedelta(view.ttl).value if view.ttl else 0


def _python(value: Value | None):
    """One stored value as a plain Python value (None when absent)."""
    kind = value.WhichOneof("val") if value is not None else None
    if kind is None or kind == "null_val":
        return None
    found = getattr(value, kind)
    return list(found.val) if kind.endswith("_list_val") else found


def _kind(dtype) -> str:
    """How a Feast type becomes numpy: number, vector (float array), or object (text, id lists)."""
    if dtype in (Int32, Int64, Float32, Float64, Bool):
        return "number"
    return "vector" if dtype in (Array(Float32), Array(Float64)) else "object"


def _columns(view: str, names: list[str], kinds: list[str], rows: list) -> dict[str, np.ndarray]:
    """Rows of values (None for a blank row) as one numpy array per feature: numbers as float32 with NaN for
    blanks, vectors stacked into a matrix (zeros for blanks), text and lists as object arrays (None for blanks)."""
    out = {}
    for j, (name, kind) in enumerate(zip(names, kinds, strict=True)):
        values = [None if row is None else row[j] for row in rows]
        if kind == "number":
            column = np.array([np.nan if v is None else v for v in values], dtype=np.float32)
        elif kind == "vector":
            width = next((len(v) for v in values if v is not None), 0)
            column = np.zeros((len(values), width), np.float32)
            for i, v in enumerate(values):
                if v is not None:
                    column[i] = v
        else:
            column = np.empty(len(values), dtype=object)
            column[:] = values
        out[f"{view}__{name}"] = column
    return out
