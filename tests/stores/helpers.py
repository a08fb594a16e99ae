"""A browser that carries its session cookie between apps (processes) sharing one store."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import IO, Any

import httpx2

from servletsession.cookies import CookieCodec

from ..conftest import SECRET, client

ROOT = Path(__file__).resolve().parents[2]


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


class UvicornWorkers:
    """Worker processes of one app (``uvicorn module:app``) on loopback ports, configured by
    environment variables; each one's output goes to a log file when ``log_dir`` is given.

    The object exists before any process starts, so that whoever holds it can always stop what
    was started, even if start-up fails halfway."""

    def __init__(
        self, module: str, env: dict[str, str], *, count: int = 2, log_dir: Path | None = None
    ) -> None:
        self.module = module
        self.env = {**os.environ, **env}
        self.count = count
        self.log_dir = log_dir
        self.urls: list[str] = []
        self.logs: list[Path] = []
        self.processes: list[subprocess.Popen[bytes]] = []
        self._files: list[IO[bytes]] = []

    def start(self) -> None:
        try:
            for number in range(self.count):
                port = free_port()
                output: IO[bytes] | None = None
                if self.log_dir is not None:
                    log = self.log_dir / f"worker{number}.log"
                    output = log.open("wb")
                    self._files.append(output)
                    self.logs.append(log)
                command = [sys.executable, "-m", "uvicorn", self.module, "--host", "127.0.0.1",
                           "--port", str(port), "--log-level", "warning"]  # fmt: skip
                self.processes.append(
                    subprocess.Popen(
                        command,
                        cwd=ROOT,
                        env=self.env,
                        stdout=output,
                        stderr=subprocess.STDOUT if output is not None else None,
                    )
                )
                self.urls.append(f"http://127.0.0.1:{port}")
            for url, process in zip(self.urls, self.processes, strict=True):
                self._wait_until_up(url, process)
        except BaseException:
            self.stop()
            raise

    def _wait_until_up(self, url: str, process: subprocess.Popen[bytes]) -> None:
        give_up = time.monotonic() + 20
        while time.monotonic() < give_up:
            if process.poll() is not None:
                raise RuntimeError(f"worker at {url} exited {process.returncode}:\n{self.log()}")
            try:
                if httpx2.get(url + "/_health", timeout=1).status_code == 200:
                    return
            except httpx2.TransportError:
                time.sleep(0.05)
        raise RuntimeError(f"worker at {url} did not start:\n{self.log()}")

    def stop(self) -> None:
        try:
            for process in self.processes:
                stop_process(process, grace=5)
        finally:
            for output in self._files:
                output.close()
            self._files.clear()

    def log(self) -> str:
        return "\n".join(path.read_text(errors="replace") for path in self.logs if path.exists())
