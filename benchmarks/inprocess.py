"""In-process ASGI calls: the middleware's own cost, without a network or an HTTP client."""

from __future__ import annotations

import statistics
import time
from typing import Any

from starlette.types import ASGIApp, Message

_BASE_SCOPE: dict[str, Any] = {
    "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET",
    "scheme": "https", "root_path": "", "query_string": b"", "client": ("127.0.0.1", 50000),
    "server": ("bench", 443),
}  # fmt: skip


async def _receive() -> Message:
    return {"type": "http.request", "body": b"", "more_body": False}


class _Capture:
    """An ASGI ``send`` that keeps the response's Set-Cookie and status."""

    def __init__(self) -> None:
        self.status = 0
        self.cookie: bytes | None = None

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
            for name, value in message.get("headers", []):
                if name.lower() == b"set-cookie":
                    self.cookie = value.split(b";")[0]


async def _discard(message: Message) -> None:
    pass


def _scope(path: str, cookie: bytes | None) -> dict[str, Any]:
    headers = [(b"host", b"bench"), (b"user-agent", b"bench"), (b"accept", b"*/*")]
    if cookie is not None:
        headers.append((b"cookie", cookie))
    return {**_BASE_SCOPE, "path": path, "raw_path": path.encode(), "headers": headers}


async def call(app: ASGIApp, path: str, cookie: bytes | None = None) -> _Capture:
    capture = _Capture()
    await app(_scope(path, cookie), _receive, capture)  # type: ignore[arg-type]
    if capture.status != 200:
        raise RuntimeError(f"{path} answered {capture.status}")
    return capture


async def session_cookie(app: ASGIApp) -> bytes:
    """Make a session through ``/rw`` and return the Cookie header that brings it back."""
    capture = await call(app, "/rw")
    assert capture.cookie is not None, "no session cookie was set"
    return capture.cookie


async def per_request_us(
    app: ASGIApp, path: str, cookie: bytes | None, *, requests: int = 2000, batches: int = 9
) -> float:
    """The median, over ``batches``, of the mean time per request in microseconds."""
    scope = _scope(path, cookie)
    for _ in range(min(requests, 500)):  # warm up caches and lazily started tasks
        await app(dict(scope), _receive, _discard)  # type: ignore[arg-type]
    results = []
    for _ in range(batches):
        start = time.perf_counter_ns()
        for _ in range(requests):
            await app(dict(scope), _receive, _discard)  # type: ignore[arg-type]
        results.append((time.perf_counter_ns() - start) / requests / 1000)
    return statistics.median(results)
