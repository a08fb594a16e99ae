"""A browser that carries its session cookie between apps (processes) sharing one store."""

from __future__ import annotations

import socket
import subprocess
import time
from typing import Any

import httpx2

from servletsession.cookies import CookieCodec

from ..conftest import SECRET, client


def signed(session_id: str, secret: str = SECRET) -> str:
    """The cookie value the middleware would issue for ``session_id``."""
    codec = CookieCodec(secret_keys=[secret.encode()], name="sessionid", path="/", domain=None,
                        max_age=None, secure=True, http_only=True, same_site="lax")  # fmt: skip
    return codec.set_cookie(session_id).split(b";")[0].split(b"=", 1)[1].decode()


class Browser:
    def __init__(self) -> None:
        self.cookie: str | None = None
        self._clients: dict[int, httpx2.AsyncClient] = {}

    async def request(self, app: Any, method: str, path: str, **options: Any) -> httpx2.Response:
        http = self._clients.get(id(app))
        if http is None:
            http = self._clients[id(app)] = client(app)
        headers = dict(options.pop("headers", {}))
        if self.cookie is not None:
            headers["cookie"] = f"sessionid={self.cookie}"
        http.cookies.clear()
        response = await http.request(method, path, headers=headers, **options)
        set_cookie = response.headers.get("set-cookie")
        if set_cookie and set_cookie.startswith("sessionid="):
            value = set_cookie.split(";")[0].split("=", 1)[1]
            self.cookie = value or None
        return response

    async def get(self, app: Any, path: str, **options: Any) -> httpx2.Response:
        return await self.request(app, "GET", path, **options)

    async def post(self, app: Any, path: str, **options: Any) -> httpx2.Response:
        return await self.request(app, "POST", path, **options)

    @property
    def session_id(self) -> str:
        assert self.cookie is not None
        return self.cookie.split(".")[0]

    async def close(self) -> None:
        for http in self._clients.values():
            await http.aclose()


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def stop_process(
    process: subprocess.Popen[bytes], *, kill: bool = False, grace: float = 10.0
) -> None:
    """Stop a child process and reap it: SIGTERM (or SIGKILL), a bounded wait, SIGKILL if it
    lingers. Polls instead of ``wait(timeout=...)``, whose busy loop trips an assertion in
    CPython's subprocess module when children are reaped from several threads."""
    if process.poll() is None:
        process.kill() if kill else process.terminate()
        give_up = time.monotonic() + grace
        while process.poll() is None and time.monotonic() < give_up:
            time.sleep(0.02)
        if process.poll() is None:
            process.kill()
    process.wait()
