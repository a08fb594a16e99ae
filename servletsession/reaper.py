"""The background task that expires sessions nobody touches again."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

logger = logging.getLogger("servletsession")


class Reaper:
    """Calls ``tick`` every ``interval`` seconds on the running loop, until stopped.

    A failing tick is logged and the next one comes as usual: a store that is down for a while
    delays expiry, it does not end it.
    """

    def __init__(self, tick: Callable[[], Awaitable[int]], interval: float) -> None:
        self._tick = tick
        self._interval = interval
        self._task: asyncio.Task[None] | None = None
        self._stopped = False

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
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                await self._tick()
            except Exception:
                logger.exception("session reaper tick failed; retrying in %s s", self._interval)
