"""Through a real uvicorn server: requests per second under concurrent clients (wrk) on loopback."""

from __future__ import annotations

import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx2

ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wrk_available() -> bool:
    return shutil.which("wrk") is not None


def _serve(contender: str) -> tuple[subprocess.Popen[bytes], str]:
    port = _free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "benchmarks.serve:app", "--host", "127.0.0.1",
         "--port", str(port), "--log-level", "warning", "--no-access-log"],
        cwd=ROOT, env={**os.environ, "BENCH_CONTENDER": contender},
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    give_up = time.monotonic() + 20
    while time.monotonic() < give_up:
        try:
            httpx2.get(url + "/plain", timeout=1)
            return process, url
        except httpx2.TransportError:
            time.sleep(0.05)
    process.kill()
    raise RuntimeError(f"uvicorn for {contender} did not start")


def _wrk(url: str, cookie: str | None, seconds: int, connections: int) -> float:
    command = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", url]
    if cookie:
        command[1:1] = ["-H", f"Cookie: {cookie}"]
    output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    match = re.search(r"Requests/sec:\s+([\d.]+)", output)
    if match is None or "Non-2xx" in output:
        raise RuntimeError(f"wrk failed:\n{output}")
    return float(match.group(1))


def requests_per_second(
    contenders: list[str], *, seconds: int = 4, rounds: int = 3, connections: int = 32
) -> dict[str, float]:
    """Median req/s of a returning read+write request per contender, rounds interleaved."""
    servers = {name: _serve(name) for name in contenders}
    cookies: dict[str, str | None] = {}
    try:
        for name, (_, url) in servers.items():
            response = httpx2.get(url + "/rw")
            set_cookie = response.headers.get("set-cookie")
            cookies[name] = set_cookie.split(";")[0] if set_cookie else None
        results: dict[str, list[float]] = {name: [] for name in contenders}
        for _ in range(rounds):
            for name, (_, url) in servers.items():
                results[name].append(_wrk(url + "/rw", cookies[name], seconds, connections))
        return {name: statistics.median(values) for name, values in results.items()}
    finally:
        for process, _ in servers.values():
            process.terminate()
            process.wait()
