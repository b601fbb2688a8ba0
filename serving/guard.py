"""An ASGI middleware in front of the service: the API key, the request body limit, and /readyz with its reason.

- With SHOPREC_API_KEY set, every path but /livez, /healthz, /readyz and /metrics needs it (X-API-Key, or
  Authorization: Bearer): 401 otherwise. The key is compared in constant time and never logged.
- A body over SHOPREC_MAX_REQUEST_BYTES is refused with 413 before anything parses it, whether it declares its
  length or streams it.
- /readyz answers 200 only when a champion is loaded and the online store answers, and says which model, which
  clock freshness is judged against, and why not when it is not ready (BentoML's own readyz can only say "not
  ready"); the API paths answer 503 with the reason until a champion is loaded (with the store failing they
  answer the stated fallback).
"""

from core.asgi import KEY_REFUSED, BodyTooLarge, answer, has_key, header, read_body, replay

OPEN_PATHS = ("/livez", "/healthz", "/metrics")


class Guard:
    """Wraps the service's ASGI app. status: a callable giving the /readyz answer (ready, body); unservable: one
    giving why the API paths cannot answer at all, or None (called on every request, so cheap); settings: one
    giving the settings object (read when the app starts, so each process takes its own environment)."""

    def __init__(self, app, status, settings, unservable, api_paths=()):
        self.app, self.status, self.unservable, self.api_paths = app, status, unservable, tuple(api_paths)
        self.api_key = settings().api_key.get_secret_value().encode() if settings().api_key else None
        self.max_bytes = settings().max_request_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope.get("path", "")
        if path == "/readyz":
            ready, body = self.status()
            return await answer(send, 200 if ready else 503, body)
        if path not in OPEN_PATHS and self.api_key is not None and not self._authorised(scope):
            return await answer(send, 401, KEY_REFUSED)
        if path in self.api_paths and (reason := self.unservable()) is not None:
            # BentoML hides the message of any 5xx; a client should read why it cannot be served yet.
            return await answer(send, 503, {"error": reason, "ready": False})
        declared = header(scope, b"content-length")
        if declared is not None:
            if not declared.isdigit() or int(declared) > self.max_bytes:
                return await answer(send, 413, {"error": f"request body over {self.max_bytes:,} bytes"})
            return await self.app(scope, receive, send)
        # A streamed body (no Content-Length): read it here up to the limit, then hand it on whole.
        try:
            body = await read_body(receive, self.max_bytes)
        except BodyTooLarge:
            return await answer(send, 413, {"error": f"request body over {self.max_bytes:,} bytes"})
        if body is None:
            return  # the client went away
        return await self.app(scope, replay(body, receive), send)

    def _authorised(self, scope) -> bool:
        return has_key(scope, self.api_key)
