"""The feature server other teams query: Feast's own FastAPI app, wrapped with the TTL and a key.

`feast serve` answers values older than their view's TTL as PRESENT (Feast ignores TTL on online reads,
feast-dev/feast#6821). This module serves Feast's own app (feast.feature_server.get_app on the settings' store, so
every endpoint, request and response format stays Feast's) behind one ASGI wrapper that:

- on /get-online-features answers every value whose event timestamp is older than its view's TTL at the clock with
  Feast's own status for that, OUTSIDE_MAX_AGE, and its value blanked (null): the rule of features/online.py (stale
  when the stamp is strictly before clock - ttl; ttl 0 never goes stale; a missing value stays NOT_FOUND). The clock
  is the wall clock or the shop's logical time (SHOPREC_SERVING_CLOCK, as the recommendation service), and every
  answer names it in an X-Shoprec-Clock header ("shop 2011-12-10T00:00:00+00:00").
- with SHOPREC_API_KEY set, answers 401 on every path but /health unless the request carries the key (X-API-Key,
  or Authorization: Bearer), as serving/guard.py does for the recommendation service: one secret guards both. The
  key is compared in constant time and never logged.

`shoprec feature-server` runs it with uvicorn.
"""

import json
import logging
import threading
import time
from datetime import UTC, datetime

from core.asgi import KEY_REFUSED, answer, has_key, read_body, replay
from core.layout import Layout, lake_as_of
from core.settings import Settings

logger = logging.getLogger(__name__)

OPEN_PATHS = ("/health",)
ONLINE_PATH = "/get-online-features"
CLOCK_HEADER = b"x-shoprec-clock"
OUTSIDE_MAX_AGE = "OUTSIDE_MAX_AGE"  # feast FieldStatus, as the response's statuses spell it
JUDGED = ("PRESENT", "NULL_VALUE")  # a row was found: its stamp is judged (NOT_FOUND stays NOT_FOUND)
TTL_CACHE_S = 5.0  # how long a request's column -> TTL map is reused (Feast's own registry cache refreshes at 5 s)


class Clock:
    """The moment freshness is judged at, in UTC nanoseconds: the wall clock, or the shop's logical time
    (core.layout.lake_as_of) as a background thread last read it every poll_s (reading it scans the ledger: not a
    cost for every request). A shop with no logical time yet is judged at the wall clock, and the header says so."""

    def __init__(self, kind: str, layout: Layout, poll_s: float = 1.0):
        if kind not in ("wall", "shop"):
            raise ValueError(f"clock must be wall or shop, not {kind!r}")
        self.kind, self._layout, self._poll_s = kind, layout, poll_s
        self._shop_ns: int | None = None
        self._started = False

    def now(self) -> tuple[int, str]:
        """(nanoseconds, which clock it came from: wall or shop)."""
        if self.kind == "shop":
            if not self._started:
                self.refresh()
                self._started = True
                threading.Thread(target=self._poll, name="shop-clock", daemon=True).start()
            if self._shop_ns is not None:
                return self._shop_ns, "shop"
        return time.time_ns(), "wall"

    def refresh(self) -> None:
        found = lake_as_of(self._layout)
        self._shop_ns = found.value if found is not None else None

    def _poll(self) -> None:
        while True:
            time.sleep(self._poll_s)
            try:
                self.refresh()
            except Exception:  # a ledger being rewritten: keep the last time, the next look may succeed
                logger.exception("could not read the shop's logical time")


class FeatureServer:
    """ASGI wrapper around Feast's feature server app (see the module's docstring)."""

    def __init__(self, app, store, clock: Clock, api_key: str | None):
        self.app, self.store, self.clock = app, store, clock
        self._key = api_key.encode() if api_key else None
        self._ttls: dict[tuple, tuple[float, dict[str, int]]] = {}

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope.get("path", "")
        if path not in OPEN_PATHS and self._key is not None and not self._authorised(scope):
            return await answer(send, 401, KEY_REFUSED)
        now_ns, kind = self.clock.now()
        clock = (CLOCK_HEADER, f"{kind} {_iso(now_ns)}".encode())
        if path != ONLINE_PATH or scope.get("method") != "POST":
            return await self.app(scope, receive, _with_header(send, clock))
        body = await read_body(receive)
        if body is None:
            return  # the client went away
        from feast.errors import FeastError

        try:
            ttls = self._ttls_of(json.loads(body))
        except (ValueError, TypeError, AttributeError, FeastError):  # Feast cannot answer it either: it says why
            ttls = {}
        await self.app(scope, replay(body, receive), _judging(send, ttls, now_ns, clock))

    def _authorised(self, scope) -> bool:
        return has_key(scope, self._key)

    def _ttls_of(self, request: dict) -> dict[str, int]:
        """Response column name -> its view's TTL in nanoseconds, for the features a request names (0: never
        stale; join keys and on-demand views are not in it: they are not judged)."""
        full = bool(request.get("full_feature_names"))
        service = request.get("feature_service")
        key = (service, tuple(request.get("features") or ()), full)
        cached = self._ttls.get(key)
        if cached is not None and cached[0] > time.monotonic():
            return cached[1]
        columns: list[tuple[str, str, str]] = []  # (view name, name the response uses for the view, feature)
        if service:
            for projection in self.store.get_feature_service(service, allow_cache=True).feature_view_projections:
                columns += [(projection.name, projection.name_to_use(), f.name) for f in projection.features]
        else:
            for ref in key[1]:
                view, _, feature = str(ref).partition(":")
                columns.append((view.split("@")[0], view, feature))
        from feast.errors import FeastError

        ttls, views = {}, {}
        for view, shown, feature in columns:
            if view not in views:
                try:
                    ttl = self.store.get_feature_view(view, allow_registry_cache=True).ttl
                    views[view] = int(ttl.total_seconds() * 1e9) if ttl else 0
                except FeastError:  # an on-demand view (no TTL) or an unknown one (Feast answers the error)
                    views[view] = None
            if views[view] is not None:
                ttls[f"{shown}__{feature}" if full else feature] = views[view]
        self._ttls[key] = (time.monotonic() + TTL_CACHE_S, ttls)
        return ttls


def judge(response: dict, ttls: dict[str, int], now_ns: int) -> int:
    """Mark, in a /get-online-features response (Feast's JSON), every found value older than its view's TTL at
    now_ns OUTSIDE_MAX_AGE and blank it; returns how many were. Columns follow metadata.feature_names."""
    names = (response.get("metadata") or {}).get("feature_names") or []
    stale, parsed = 0, {}
    for name, result in zip(names, response.get("results") or [], strict=False):
        ttl = ttls.get(name)
        stamps = result.get("event_timestamps")
        if not ttl or not stamps:
            continue
        cutoff, statuses, values = now_ns - ttl, result["statuses"], result["values"]
        for i, (status, stamp) in enumerate(zip(statuses, stamps, strict=False)):
            if status in JUDGED:
                ns = parsed.get(stamp)
                if ns is None:
                    ns = parsed[stamp] = _stamp_ns(stamp)
                if ns < cutoff:
                    statuses[i], values[i] = OUTSIDE_MAX_AGE, None
                    stale += 1
    return stale


def create_app(store, settings: Settings, clock: str | None = None, registry_ttl_sec: int | None = None):
    """Feast's feature server app for store, wrapped (clock: wall or shop, default SHOPREC_SERVING_CLOCK)."""
    from feast.constants import DEFAULT_FEATURE_SERVER_REGISTRY_TTL
    from feast.feature_server import get_app
    from feast.permissions.server.utils import (
        ServerType,
        init_auth_manager,
        init_security_manager,
        str_to_auth_manager_type,
    )

    # What `feast serve` does before it builds the app, so Feast's own auth settings (if any) still apply.
    auth_type = str_to_auth_manager_type(store.config.auth_config.type)
    init_security_manager(auth_type=auth_type, fs=store)
    init_auth_manager(auth_type=auth_type, server_type=ServerType.REST, auth_config=store.config.auth_config)
    app = get_app(store, registry_ttl_sec if registry_ttl_sec is not None else DEFAULT_FEATURE_SERVER_REGISTRY_TTL)
    key = settings.api_key.get_secret_value() if settings.api_key else None
    return FeatureServer(app, store, Clock(clock or settings.serving_clock, Layout(settings.home),
                                           settings.swap_poll_s), key)  # fmt: skip


def serve(settings: Settings, host: str = "127.0.0.1", port: int = 6566, clock: str | None = None) -> None:
    """Run the wrapped feature server with uvicorn on the settings' store (blocks)."""
    import uvicorn

    from features.store import open_store

    uvicorn.run(create_app(open_store(settings), settings, clock), host=host, port=port)


def _stamp_ns(stamp: str) -> int:
    """An RFC 3339 stamp as Feast writes it ("2011-12-09T00:00:00Z", up to 9 fraction digits) in UTC nanoseconds."""
    text = stamp.rstrip("Z")
    seconds, _, fraction = text.partition(".")
    whole = datetime.fromisoformat(seconds)
    whole = whole.replace(tzinfo=UTC) if whole.tzinfo is None else whole
    return int(whole.timestamp()) * 1_000_000_000 + int((fraction + "000000000")[:9])


def _iso(ns: int) -> str:
    return datetime.fromtimestamp(ns // 1_000_000_000, UTC).replace(microsecond=ns % 1_000_000_000 // 1000).isoformat()


def _with_header(send, header: tuple[bytes, bytes]):
    async def sending(message):
        if message["type"] == "http.response.start":
            message = {**message, "headers": [*message.get("headers", []), header]}
        await send(message)

    return sending


def _judging(send, ttls: dict[str, int], now_ns: int, clock: tuple[bytes, bytes]):
    """A send that holds a 200 JSON answer back, judges it, and sends it with its new length and the clock."""
    start, chunks = None, []

    async def sending(message):
        nonlocal start
        if message["type"] == "http.response.start":
            headers = dict(message.get("headers", []))
            if message["status"] != 200 or not headers.get(b"content-type", b"").startswith(b"application/json"):
                return await send({**message, "headers": [*message.get("headers", []), clock]})
            start = message
            return None
        if start is None or message["type"] != "http.response.body":
            return await send(message)
        chunks.append(message.get("body", b""))
        if message.get("more_body", False):
            return None
        response = json.loads(b"".join(chunks))
        judge(response, ttls, now_ns)
        payload = json.dumps(response, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode()
        headers = [(k, v) for k, v in start.get("headers", []) if k != b"content-length"]
        headers += [(b"content-length", str(len(payload)).encode()), clock]
        await send({**start, "headers": headers})
        await send({"type": "http.response.body", "body": payload})

    return sending
