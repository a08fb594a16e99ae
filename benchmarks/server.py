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


def _cpu_seconds(pid: int) -> float:
    """The process's user and system CPU time so far (``/proc/PID/stat``)."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _wrk(url: str, cookie: str, seconds: int, connections: int) -> tuple[float, int]:
    """Requests per second, and how many requests were answered."""
    command = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "-H", f"Cookie: {cookie}", url]
    output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    rate = re.search(r"Requests/sec:\s+([\d.]+)", output)
    count = re.search(r"(\d+) requests in", output)
    if rate is None or count is None or "Non-2xx" in output:
        raise RuntimeError(f"wrk failed:\n{output}")
    return float(rate.group(1)), int(count.group(1))


def requests_per_second(
    contenders: list[str], *, seconds: int = 4, rounds: int = 3, connections: int = 32
) -> dict[str, tuple[float, float]]:
    """Per contender, the median req/s of a returning read+write request and the median server
    CPU time per request (µs, user + system), rounds interleaved.

    Every contender gets the same request bytes: its own session cookie, or (an app without
    sessions: bare) a cookie of the same name and length, which the server parses all the same.
    """
    servers = {name: _serve(name) for name in contenders}
    cookies: dict[str, str | None] = {}
    try:
        for name, (_, url) in servers.items():
            response = httpx2.get(url + "/rw")
            set_cookie = response.headers.get("set-cookie")
            cookies[name] = set_cookie.split(";")[0] if set_cookie else None
        sample = next((c for c in cookies.values() if c and c.startswith("sessionid=")), None)
        stand_in = "sessionid=" + "x" * (len(sample) - len("sessionid=") if sample else 87)
        rates: dict[str, list[float]] = {name: [] for name in contenders}
        cpu: dict[str, list[float]] = {name: [] for name in contenders}
        for _ in range(rounds):
            for name, (process, url) in servers.items():
                before = _cpu_seconds(process.pid)
                rate, count = _wrk(url + "/rw", cookies[name] or stand_in, seconds, connections)
                rates[name].append(rate)
                cpu[name].append((_cpu_seconds(process.pid) - before) / count * 1e6)
        return {
            name: (statistics.median(rates[name]), statistics.median(cpu[name]))
            for name in contenders
        }
    finally:
        for process, _ in servers.values():
            process.terminate()
            process.wait()
