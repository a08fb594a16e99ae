"""A real ``uvicorn`` server in a subprocess, for what only a real server shows (its lifespan
handling, its exit status, its log), on a loopback port the OS picks."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import TracebackType

ROOT = Path(__file__).resolve().parent.parent
_RUNNING = re.compile(r"Uvicorn running on http://127\.0\.0\.1:(\d+)")


class UvicornProcess:
    """``python -m uvicorn TARGET --lifespan LIFESPAN`` from the repository root.

    Entering waits until the server listens or exits (a refused startup); ``url`` is ``None``
    then. ``output`` is everything it printed so far (stdout and stderr)."""

    def __init__(self, target: str, lifespan: str = "auto", env: dict[str, str] | None = None):
        self.command = [sys.executable, "-m", "uvicorn", target, "--host", "127.0.0.1",
                        "--port", "0", "--lifespan", lifespan, "--log-level", "info"]  # fmt: skip
        self.env = {**os.environ, **(env or {})}
        self.url: str | None = None
        self._lines: list[str] = []
        self._listening = threading.Event()
        self._process: subprocess.Popen[str] | None = None
        self._reader: threading.Thread | None = None

    @property
    def output(self) -> str:
        return "".join(self._lines)

    def __enter__(self) -> UvicornProcess:
        self._process = subprocess.Popen(
            self.command,
            cwd=ROOT,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        give_up = time.monotonic() + 30
        while time.monotonic() < give_up and self._process.poll() is None:
            if self._listening.wait(0.05):
                break
        if self._process.poll() is not None:
            self._reader.join(timeout=5)  # what it printed before it exited
        return self

    def _read(self) -> None:
        assert self._process is not None
        assert self._process.stdout is not None
        for line in self._process.stdout:
            self._lines.append(line)
            found = _RUNNING.search(line)
            if found:
                self.url = f"http://127.0.0.1:{found.group(1)}"
                self._listening.set()

    def wait(self, timeout: float = 20) -> int:
        """The exit status once the server has exited by itself."""
        assert self._process is not None
        assert self._reader is not None
        status = self._process.wait(timeout)
        self._reader.join(timeout=5)
        return status

    def stop(self) -> str:
        """Stop the server (as Ctrl+C does) and return all it printed."""
        assert self._process is not None
        if self._process.poll() is None:
            self._process.terminate()
        self.wait()
        return self.output

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.kill()
            self._process.wait(10)
