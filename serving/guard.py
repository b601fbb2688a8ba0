"""An ASGI middleware in front of the service: the API key, the request body limit, and /readyz with its reason.

- With SHOPREC_API_KEY set, every path but /livez, /healthz, /readyz and /metrics needs it (X-API-Key, or
  Authorization: Bearer): 401 otherwise. The key is compared in constant time and never logged.
- A body over SHOPREC_MAX_REQUEST_BYTES is refused with 413 before anything parses it, whether it declares its
  length or streams it.
- /readyz answers 200 only when a champion is loaded, and says which model, which clock freshness is judged
  against, and why not when it is not ready (BentoML's own readyz can only say "not ready"); the API paths
  answer 503 with the same reason until then.
"""

import hmac
import json

OPEN_PATHS = ("/livez", "/healthz", "/metrics")


class Guard:
    """Wraps the service's ASGI app. status: a callable giving the /readyz answer (ready, body); settings: one
    giving the settings object (read when the app starts, so each process takes its own environment)."""

    def __init__(self, app, status, settings, api_paths=()):
        self.app, self.status, self.api_paths = app, status, tuple(api_paths)
        self.api_key = settings().api_key.get_secret_value().encode() if settings().api_key else None
        self.max_bytes = settings().max_request_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope.get("path", "")
        if path == "/readyz":
            ready, body = self.status()
            return await _answer(send, 200 if ready else 503, body)
        if path not in OPEN_PATHS and self.api_key is not None and not self._authorised(scope):
            return await _answer(send, 401, {"error": "missing or wrong API key: send it as X-API-Key"})
        if path in self.api_paths and not (state := self.status())[0]:
            # BentoML hides the message of any 5xx; a client should read why it cannot be served yet.
            return await _answer(send, 503, {"error": state[1]["reason"], "ready": False})
        declared = _header(scope, b"content-length")
        if declared is not None:
            if not declared.isdigit() or int(declared) > self.max_bytes:
                return await _answer(send, 413, {"error": f"request body over {self.max_bytes:,} bytes"})
            return await self.app(scope, receive, send)
        # A streamed body (no Content-Length): read it here up to the limit, then hand it on whole.
        body, more = b"", True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.max_bytes:
                return await _answer(send, 413, {"error": f"request body over {self.max_bytes:,} bytes"})
        return await self.app(scope, _replay(body, receive), send)

    def _authorised(self, scope) -> bool:
        given = _header(scope, b"x-api-key")
        if given is None and (bearer := _header(scope, b"authorization")) and bearer.lower().startswith("bearer "):
            given = bearer[7:].strip()
        return given is not None and hmac.compare_digest(given.encode(), self.api_key)


def _replay(body: bytes, receive):
    sent = False

    async def replay():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


async def _answer(send, status: int, body: dict) -> None:
    payload = json.dumps(body).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})


def _header(scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key == name:
            return value.decode("latin-1")
    return None
