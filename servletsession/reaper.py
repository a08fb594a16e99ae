"""A background task running a tick on an interval: the reaper, and shared stores' keeper."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

logger = logging.getLogger("servletsession")


class Reaper:
    """Calls ``tick`` every ``interval()`` seconds on the running loop, until stopped.

    A failing tick is logged and the next one comes as usual: a store that is down for a while
    delays expiry, it does not end it. Stopping never cuts a tick short while it delivers what it
    claimed (claim and delivery are one unit): a tick under way may finish, for up to
    ``shutdown_timeout`` seconds.
    """

    def __init__(
        self,
        tick: Callable[[], Awaitable[object]],
        interval: Callable[[], float],
        shutdown_timeout: float = 10.0,
        name: str = "reaper",
    ) -> None:
        self._name = name
        self._tick = tick
        self._interval = interval
        self._shutdown_timeout = shutdown_timeout
        self._task: asyncio.Task[None] | None = None
        self._stopped = False
        self._ticking = False

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    @property
    def idle(self) -> bool:
        """Never started, and not stopped on purpose (a lazy start is still welcome)."""
        return self._task is None and not self._stopped

    def start(self) -> None:
        if self.running:
            return
        self._stopped = False
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        self._stopped = True
        task, self._task = self._task, None
        if task is None:
            return
        if self._ticking:  # let the tick deliver what it claimed, then stop
            with contextlib.suppress(TimeoutError, asyncio.CancelledError, Exception):
                await asyncio.wait_for(asyncio.shield(task), self._shutdown_timeout)
        if not task.done():
            if self._ticking:
                logger.error(
                    "session %s stopped after shutdown_timeout=%s s in the middle of a tick; "
                    "events of sessions it had claimed may not have been delivered",
                    self._name, self._shutdown_timeout,
                )  # fmt: skip
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        while not self._stopped:
            await asyncio.sleep(self._interval())
            self._ticking = True
            try:
                await self._tick()
            except Exception:
                logger.exception("session %s tick failed; retrying", self._name)
            finally:
                self._ticking = False


class Background:
    """A manager's background tasks, started and stopped together."""

    def __init__(self, tasks: list[Reaper]) -> None:
        self._tasks = tasks

    @property
    def running(self) -> bool:
        return self._tasks[0].running

    @property
    def idle(self) -> bool:
        return self._tasks[0].idle

    def start(self) -> None:
        for task in self._tasks:
            task.start()

    async def stop(self) -> None:
        for task in self._tasks:
            await task.stop()
