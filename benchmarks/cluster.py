"""A throwaway three-master Redis Cluster on loopback for the benchmarks (``redis-server`` and
``redis-cli`` from the machine), stopped by PID; no persistence, like the single server it is
compared with."""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path


class BenchCluster:
    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="bench-cluster-"))
        self.ports = [_free_port() for _ in range(3)]
        self.processes: list[subprocess.Popen[bytes]] = []

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.ports[0]}/0"

    def start(self) -> BenchCluster:
        """Start the nodes and join them; if that fails, stop whatever started."""
        try:
            return self._start()
        except BaseException:
            self.stop()
            raise

    def _start(self) -> BenchCluster:
        for port in self.ports:  # the bus on a port of its own (Redis 7): port + 10000 may not be
            folder = self.root / str(port)
            folder.mkdir()
            self.processes.append(subprocess.Popen(
                ["redis-server", "--port", str(port), "--bind", "127.0.0.1",
                 "--cluster-enabled", "yes", "--cluster-config-file", f"nodes-{port}.conf",
                 "--cluster-port", str(_free_port()),
                 "--cluster-node-timeout", "5000", "--appendonly", "no", "--save", "",
                 "--dir", str(folder)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            ))  # fmt: skip
        for port in self.ports:
            _wait(lambda port=port: _answers(port, "PING") == "PONG")
        subprocess.run(
            ["redis-cli", "--cluster", "create", *(f"127.0.0.1:{p}" for p in self.ports),
             "--cluster-yes"],
            check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        for port in self.ports:
            _wait(lambda port=port: "cluster_state:ok" in _answers(port, "CLUSTER", "INFO"))
        return self

    def stop(self) -> None:
        for process in self.processes:
            process.terminate()
        for process in self.processes:
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        shutil.rmtree(self.root, ignore_errors=True)


def available() -> bool:
    return shutil.which("redis-server") is not None and shutil.which("redis-cli") is not None


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _answers(port: int, *command: str) -> str:
    done = subprocess.run(["redis-cli", "-p", str(port), *command],
                          capture_output=True, text=True, check=False)  # fmt: skip
    return done.stdout.strip()


def _wait(ready: object, seconds: float = 30) -> None:
    give_up = time.monotonic() + seconds
    while not ready():  # type: ignore[operator]
        if time.monotonic() > give_up:
            raise RuntimeError("the benchmark's Redis Cluster did not start")
        time.sleep(0.05)
