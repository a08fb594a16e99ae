"""Websockets and their sessions: a long-lived connection keeps its session alive, and is closed
(code 1008, policy violation) when its session is destroyed or invalidated — here, or on another
worker of a shared store."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Awaitable, Callable, Coroutine
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .session import HttpSession

logger = logging.getLogger("servletsession")

Closer = Callable[[], Coroutine[Any, Any, None]]
Send = Callable[[Any], Awaitable[None]]
CLOSE_CODE = 1008  # RFC 6455: policy violation — the session the connection relied on ended


class SessionSockets:
    """The open websockets of each session of one manager."""

    def __init__(self) -> None:
        self._closers: dict[HttpSession, set[Closer]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()

    def add(self, session: HttpSession, closer: Closer) -> None:
        self._closers.setdefault(session, set()).add(closer)

    def discard(self, session: HttpSession, closer: Closer) -> None:
        closers = self._closers.get(session)
        if closers is not None:
            closers.discard(closer)
            if not closers:
                del self._closers[session]

    def session_ended(self, session: HttpSession) -> None:
        """Close every websocket of ``session`` (called as the session is destroyed)."""
        closers = self._closers.pop(session, None)
        if not closers:
            return
        loop = asyncio.get_running_loop()
        for closer in closers:
            task = loop.create_task(closer())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)


class SessionWebSocket:
    """One accepted websocket joined to a session.

    It is handed what it may do, not its manager: ``touch`` (keep the session alive; ``False``
    once it has ended anywhere), ``end`` (end it, at its absolute timeout), and the clock.
    """

    def __init__(
        self,
        sockets: SessionSockets,
        session: HttpSession,
        send: Send,
        touch: Callable[[HttpSession], Awaitable[bool]],
        end: Callable[[HttpSession, str], Awaitable[object]],
        clock: Callable[[], float],
        touch_interval: float | None,
    ) -> None:
        self._sockets = sockets
        self._session = session
        self._send = send
        self._touch = touch
        self._end = end
        self._clock = clock
        self._interval = touch_interval
        self.closed = False
        self._keeper: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._sockets.add(self._session, self.close)
        if self._interval is not None or self._session._absolute_timeout is not None:
            self._keeper = asyncio.get_running_loop().create_task(self._keep_alive())

    async def stop(self) -> None:
        self._sockets.discard(self._session, self.close)
        keeper, self._keeper = self._keeper, None
        if keeper is not None:
            keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await keeper

    async def close(self) -> None:
        """Close the connection because its session ended (once)."""
        if self.closed:
            return
        self.closed = True
        with contextlib.suppress(Exception):  # the peer may be gone already
            await self._send(
                {"type": "websocket.close", "code": CLOSE_CODE, "reason": "session ended"}
            )

    async def _keep_alive(self) -> None:
        session = self._session
        while not self.closed:
            wait = self._interval if self._interval is not None else math.inf
            absolute = session._absolute_deadline() - self._clock()
            await asyncio.sleep(max(0.0, min(wait, absolute)))
            if not session._valid:
                await self.close()
                return
            if session._absolute_deadline() <= self._clock():
                try:  # the absolute timeout holds however busy: end it, which closes us
                    await self._end(session, "expired")
                except Exception:
                    logger.exception("could not end %r at its absolute timeout", session)
                await self.close()
                return
            try:
                alive = await self._touch(session)
            except Exception:
                logger.exception("could not keep %r alive; will try again", session)
                continue
            if not alive:
                await self.close()
                return
