"""The server's guard: a bearer token, a cap on concurrent requests and on body size.

It is plain ASGI middleware in front of the application, so that an oversized body or one
request too many is answered before any of it is parsed, each with one line of reason.
"""

from __future__ import annotations

import hmac
import json
from dataclasses import dataclass
from typing import Any

Scope = dict[str, Any]


@dataclass
class Limits:
    """What one request may ask for, and how many may run at once."""

    max_body_bytes: int = 1 << 20
    max_input_tokens: int = 4096  # prompt or text read per request
    max_new_tokens: int = 2048  # max_tokens of a generation
    max_samples: int = 16  # num_samples of a generation
    max_texts: int = 256  # texts of a classification
    max_concurrent: int = 64  # requests under /v1/ being served at once, streams included
    max_top: int = 20  # alternatives per token in a score

    def check(self) -> Limits:
        for name, value in vars(self).items():
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        return self


async def reply(send: Any, status: int, message: str,
                headers: list[tuple[bytes, bytes]] = ()) -> None:
    """A JSON error ``{"error": message}`` with ``status``."""
    body = json.dumps({"error": message}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode()), *headers]})
    await send({"type": "http.response.body", "body": body})


class Guard:
    """ASGI middleware: auth (when a token is set), concurrency and body size, for /v1/."""

    def __init__(self, app: Any, limits: Limits, token: str | None = None):
        self.app, self.limits, self.token = app, limits, token
        self.in_flight = 0

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or not scope["path"].startswith("/v1/"):
            await self.app(scope, receive, send)
            return
        if self.token is not None and not self._authorised(scope):
            await reply(send, 401, "a bearer token is required: Authorization: Bearer TOKEN",
                        [(b"www-authenticate", b"Bearer")])
            return
        if self.in_flight >= self.limits.max_concurrent:
            await reply(send, 429, f"too many concurrent requests (at most "
                                   f"{self.limits.max_concurrent}); retry later",
                        [(b"retry-after", b"1")])
            return
        self.in_flight += 1
        try:
            body = await self._read_body(scope, receive, send)
            if body is None:
                return
            await self.app(scope, _replay(body, receive), send)
        finally:
            self.in_flight -= 1

    def _authorised(self, scope: Scope) -> bool:
        given = dict(scope["headers"]).get(b"authorization", b"").decode("latin-1")
        expected = f"Bearer {self.token}"
        return hmac.compare_digest(given.encode(), expected.encode())

    async def _read_body(self, scope: Scope, receive: Any, send: Any) -> bytes | None:
        """The whole body, or None after answering 413 when it is over the limit."""
        limit = self.limits.max_body_bytes
        declared = dict(scope["headers"]).get(b"content-length")
        too_big = f"the request body is over {limit} bytes"
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await reply(send, 413, too_big)
            return None
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                await reply(send, 413, too_big)
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)


def _replay(body: bytes, receive: Any) -> Any:
    """A ``receive`` that gives ``body`` once, then waits on the client (for disconnects)."""
    sent = False

    async def replay() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay
