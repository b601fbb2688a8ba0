"""The small ASGI pieces both HTTP faces share (the recommendation service's guard, the feature server): the API
key check, a JSON answer, a header lookup. One place, so the two faces accept and refuse the same requests."""

import hmac
import json

KEY_REFUSED = {"error": "missing or wrong API key: send it as X-API-Key"}


def header(scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key == name:
            return value.decode("latin-1")
    return None


def has_key(scope, key: bytes) -> bool:
    """Whether the request carries the key, as X-API-Key or Authorization: Bearer (compared in constant time)."""
    given = header(scope, b"x-api-key")
    if given is None and (bearer := header(scope, b"authorization")) and bearer.lower().startswith("bearer "):
        given = bearer[7:].strip()
    return given is not None and hmac.compare_digest(given.encode(), key)


async def answer(send, status: int, body: dict) -> None:
    """A complete JSON response."""
    payload = json.dumps(body).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})


class BodyTooLarge(Exception):
    """A request body passed the limit while it was being read."""


async def read_body(receive, limit: int | None = None) -> bytes | None:
    """The whole request body, or None when the client went away first; BodyTooLarge past limit bytes."""
    body, more = b"", True
    while more:
        message = await receive()
        if message["type"] != "http.request":
            return None
        body += message.get("body", b"")
        more = message.get("more_body", False)
        if limit is not None and len(body) > limit:
            raise BodyTooLarge
    return body


def replay(body: bytes, receive):
    """A receive that hands on an already-read body, then the client's own messages (its disconnect)."""
    sent = False

    async def replaying():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replaying
