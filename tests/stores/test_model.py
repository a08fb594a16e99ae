"""Model-based concurrency test: several processes (one ``SessionManager`` each) over one store.

Hypothesis drives interleaved requests at the manager level, as the middleware does per request:
``join`` (or ``create_session``) inside the request's change journal, route code on the session,
``flush`` as the response starts, ``release`` as it ends. Requests stay open in a pool that spans
sessions and processes, so one session's requests overlap in one process and across processes.
Between steps the clock moves (idle expiry, found on join or claimed by reaper ticks on either
process), every process's keeper ticks every 15 s (or stalls), and a process's store goes down
and comes back: a real store whose contract methods fail at their await point while ``down`` is
set (the data stays in the real server; the other process keeps reaching it). MemoryStore runs
the same machine with one process.

A small reference model says what the store must hold for each session (whether it exists, under
which ID, its attributes, principal and deadline), what every join must answer, and what each open
request's object must show; after every step it is checked against the product and against the
store itself, read by a store of the test's own ("the store is the truth"):

1. a join with the cookie of a live session finds it; with the store down it raises
   ``StoreUnavailableError`` (a 503), never ``None`` and never a fresh session;
2. after the store comes back the same cookie finds the data of the last successful save, and a
   request answered 503 takes back its own changes (attributes, principal, ID), only its own;
3. an ID that was changed or ended is dead on the same process at once and everywhere once the
   response started; a request whose session ended elsewhere never brings it back;
4. ``invalidate_all(principal, keep=session)`` ends every other session the store binds to the
   principal, never the kept one, even renamed in the same request;
5. ``session_created`` and ``session_destroyed`` fire exactly once per session, over all processes;
6. saves write what the request changed, attribute by attribute, last save wins;
7. nothing piles up: no share and no refused ID left in a process once its requests ended, no
   principal-index entry of a gone session.

To keep the model exact the stores run with ``save_period=0``: a deadline is then always the last
activity plus ``max_inactive_interval``. Sequences the machine found failing are replayed as plain
tests at the end of the file (``REGRESSIONS``).
"""

from __future__ import annotations

import asyncio
import base64
import math
import random
import shutil
import tempfile
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import pytest
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from sqlalchemy import select

import servletsession.manager as manager_module
from servletsession import MemoryStore, SessionManager, StoreUnavailableError
from servletsession.changes import change_journal
from servletsession.listeners import HttpSessionEvent
from servletsession.persistence import Visit
from servletsession.session import HttpSession
from servletsession.stores.redis import RedisStore
from servletsession.stores.sql import SQLStore

from ..conftest import FakeClock
from .conftest import POSTGRES_URL, STORE_KINDS, _clean, redis_store, require, use_cluster

T = TypeVar("T")

INTERVAL = 60  # max_inactive_interval, seconds
NAMES = ("a", "b", "c")
ACTIONS = ("set", "set", "remove", "principal", "change_id", "login", "invalidate",
           "invalidate_all")  # fmt: skip
PRINCIPAL = "u"
MAX_LIVE = 4  # sessions not yet ended
MAX_OPEN = 6
PROCESSES = {"memory": 1, "sqlite": 2, "postgresql": 2, "redis": 2, "redis-cluster": 2}

SETTINGS = settings(
    max_examples=40,
    stateful_step_count=40,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(HealthCheck),
    report_multiple_bugs=False,
    # No shrinking in the suite: a failure is reported with its full step sequence at once
    # (derandomized, so it reproduces), instead of minutes of shrinking inside CI's time.
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
    print_blob=True,
)

NEW, LIVE, GONE = "new", "live", "gone"
REMOVED: Any = object()  # a pending removal


# --- fault injection: a real store that fails at its await points while ``down`` -------------

CONTRACT = ("load", "create", "save", "touch", "delete", "claim", "rename", "claim_expired",
            "acquire_lock", "renew_lock", "release_lock", "count", "sessions_of", "session_ids",
            "least_recent")  # fmt: skip


class Outage:
    """Mixed in before a real store class: while ``down`` is set, every contract method of this
    instance raises ``StoreUnavailableError`` before reaching the server."""

    down = False


def _gated(name: str) -> Callable[..., Awaitable[Any]]:
    async def method(self: Any, *args: Any, **kwargs: Any) -> Any:
        if self.down:
            raise StoreUnavailableError(f"injected outage ({name})")
        return await getattr(super(Outage, self), name)(*args, **kwargs)

    method.__name__ = method.__qualname__ = name
    return method


for _name in CONTRACT:
    setattr(Outage, _name, _gated(_name))


class FlakySQLStore(Outage, SQLStore):
    pass


class FlakyRedisStore(Outage, RedisStore):
    pass


# --- the reference model ---------------------------------------------------------------------


@dataclass(eq=False)
class Browser:
    """One browser's session, as the store must hold it."""

    key: int
    cookie: str | None = None  # the ID its cookie holds now
    known: list[str] = field(default_factory=list)  # every ID its cookie ever held
    state: str = NEW  # NEW: not stored yet; LIVE: the store holds it; GONE: ended
    store_id: str | None = None
    saved: dict[str, Any] = field(default_factory=dict)
    principal: str | None = None
    deadline: float = math.inf  # shared stores: the stored deadline
    index: float = math.inf  # RedisStore: where its index of deadlines files it
    idle_since: float = 0.0  # MemoryStore: when its idle time started


@dataclass(eq=False)
class Share:
    """One ``HttpSession`` object of one process (for MemoryStore: the live session)."""

    session: HttpSession
    key: int
    m: int
    id: str  # its ID (as the object must say)
    stored: bool
    view: dict[str, Any] = field(default_factory=dict)  # its attributes (as it must show)
    principal: str | None = None  # its principal (as it must show)
    in_map: bool = True  # in the process's ``in_process`` map
    valid: bool = True
    detached: bool = False
    in_flight: int = 1
    prev: str | None = None  # an ID change not yet written: the ID the store holds
    # Changes not yet saved, and which request made them (a request answered 503 takes its
    # own back, and only its own): by attribute, in order; an attribute's value before the
    # first of them; the requests that bound the principal or changed the ID.
    changes: dict[str, list[tuple[Open, Any]]] = field(default_factory=dict)
    baseline: dict[str, Any] = field(default_factory=dict)
    principal_by: list[Open] = field(default_factory=list)
    principal_before: str | None = None
    renamed_by: list[tuple[Open, str]] = field(default_factory=list)  # and the new ID
    claim_failed: bool = False  # an end whose claim could not reach the store
    known_deadline: float = math.inf  # the stored deadline as this object last saw it

    @property
    def pending(self) -> dict[str, Any]:
        return {name: entries[-1][1] for name, entries in self.changes.items()}

    @property
    def principal_changed(self) -> bool:
        return bool(self.principal_by)

    def saved(self) -> None:
        self.changes, self.baseline, self.principal_by, self.renamed_by = {}, {}, [], []


@dataclass(eq=False)
class Open:
    """A request under way: joined or created, not yet released."""

    m: int
    visit: Visit
    share: Share
    requested: str | None  # the cookie it came with (None: it created the session)
    flushed: bool = False
    refused: bool = False
    #: The request's change journal, as the middleware keeps it (``session.change_journal``).
    journal: dict[int, dict[str, Any]] = field(default_factory=dict)


class Recorder:
    """Every manager's listener: counts lifecycle events per session (by its "key" attribute)."""

    def __init__(self, machine: ModelMachine, m: int) -> None:
        self.machine, self.m = machine, m

    def session_created(self, event: HttpSessionEvent) -> None:
        self.machine.created_log.append((self.m, event.session))

    def session_destroyed(self, event: HttpSessionEvent) -> None:
        key = event.session.get_attribute("key")
        self.machine.destroyed[key] = self.machine.destroyed.get(key, 0) + 1


class _Down(Exception):
    """The model's own: the store call it predicts fails (the store is down)."""


indexes = st.integers(min_value=0, max_value=15)


class ModelMachine(RuleBasedStateMachine):
    kind = "memory"

    def __init__(self) -> None:
        super().__init__()
        # Session IDs from a seeded generator: the same steps give the same IDs, so the maps'
        # orders, and with them Hypothesis's draws, repeat run after run (a failure reproduces).
        ids = random.Random(0)
        self._real_new_id = manager_module.new_session_id
        manager_module.new_session_id = lambda: (
            base64.urlsafe_b64encode(ids.randbytes(32)).rstrip(b"=").decode()
        )
        self.loop = asyncio.new_event_loop()
        self.tasks: list[asyncio.Task[Any]] = []  # every task started on the loop
        self.loop.set_task_factory(self._task)
        self.clock = FakeClock()
        self.tag = uuid.uuid4().hex[:10]
        self.tmp = tempfile.mkdtemp(prefix="ssmodel-") if self.kind == "sqlite" else None
        self.shared = self.kind != "memory"
        count = PROCESSES[self.kind]
        self.stores = [self._store(flaky=True) for _ in range(count)]
        self.observer: Any = self._store(flaky=False) if self.shared else self.stores[0]
        self.managers = [
            SessionManager(
                store,
                clock=self.clock,
                max_inactive_interval=INTERVAL,
                listeners=[Recorder(self, m)],
            )
            for m, store in enumerate(self.stores)
        ]
        self.down = [False] * count
        self.retired: list[set[str]] = [set() for _ in range(count)]
        self.browsers: list[Browser] = []
        self.owner: dict[str, Browser] = {}  # every ID ever given -> its browser
        self.shares: dict[HttpSession, Share] = {}
        self.open: list[Open] = []
        self.created_log: list[tuple[int, HttpSession]] = []
        self.destroyed: dict[Any, int] = {}
        self.values = 0

    def _store(self, *, flaky: bool) -> Any:
        if self.kind == "memory":
            return MemoryStore()
        sql = FlakySQLStore if flaky else SQLStore
        redis = FlakyRedisStore if flaky else RedisStore
        if self.kind == "sqlite":
            return sql(f"sqlite+aiosqlite:///{self.tmp}/sessions.db", save_period=0)
        if self.kind == "postgresql":
            return sql(POSTGRES_URL, table_prefix=f"t{self.tag}_", save_period=0)
        return redis_store(self.kind, self.tag, redis, save_period=0)

    def teardown(self) -> None:
        manager_module.new_session_id = self._real_new_id

        async def close() -> None:
            for manager in self.managers:
                await manager.close()
            if self.shared:
                await self.observer.close()
            await _clean(self.kind, self.tag)

        try:
            self._run(close())
        finally:
            for task in self.tasks:
                if not task.done():
                    task.cancel()
                elif not task.cancelled():
                    # A claim that failed during an outage, chained behind a session that no
                    # request settles any more (the example ended with requests still open).
                    task.exception()
            self.loop.close()
            if self.tmp is not None:
                shutil.rmtree(self.tmp, ignore_errors=True)

    # --- plumbing --------------------------------------------------------------------------

    def _task(self, loop: asyncio.AbstractEventLoop, coroutine: Any, **options: Any) -> Any:
        task = asyncio.Task(coroutine, loop=loop, **options)
        self.tasks.append(task)
        return task

    def _run(self, coroutine: Awaitable[T]) -> T:
        """Run one step on the machine's loop, then let every task it started finish (a
        claim chained by ``invalidate()`` completes before the next step)."""
        try:
            return self.loop.run_until_complete(coroutine)
        finally:
            while pending := [t for t in asyncio.all_tasks(self.loop) if not t.done()]:
                self.loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))

    def _in_request(self, o: Open, code: Callable[[], T]) -> T:
        """Run route code of request ``o`` on the loop, inside its change journal (as the
        middleware runs the app)."""

        async def go() -> T:
            token = change_journal.set(o.journal)
            try:
                return code()
            finally:
                change_journal.reset(token)

        return self._run(go())

    @property
    def now(self) -> float:
        return self.clock.now

    def _m(self, m: int) -> int:
        return m % len(self.managers)

    def _share_on(self, m: int, session_id: str) -> Share | None:
        for share in self.shares.values():
            if share.m == m and share.in_map and share.id == session_id:
                return share
        return None

    def _alive(self, br: Browser, session_id: str | None) -> bool:
        return br.state == LIVE and session_id is not None and br.store_id == session_id

    def _gone(self, br: Browser) -> None:
        br.state = GONE

    def _call(self, m: int) -> None:
        if self.down[m]:
            raise _Down

    @staticmethod
    def _apply(attributes: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
        result = dict(attributes)
        for name, value in changes.items():
            if value is REMOVED:
                result.pop(name, None)
            else:
                result[name] = value
        return result

    @staticmethod
    def _attributes(session: HttpSession) -> dict[str, Any]:
        return {name: session.get_attribute(name) for name in session.get_attribute_names()}

    # --- the model of a shared store's writes ------------------------------------------------

    def _push(self, share: Share) -> bool:
        """``SharedSessions.push``: what it writes; raises ``_Down`` at its first store call if
        the store is down (what happened before that call stays done)."""
        if share.detached:
            return False
        m, br = share.m, self.browsers[share.key]
        if share.prev is not None:
            previous = share.prev
            try:
                if share.stored:
                    self._call(m)
                    if not self._alive(br, previous):
                        self._detach(share)
                        return False
                    br.store_id = share.id
                share.prev, share.renamed_by = None, []
            finally:
                self.retired[m].discard(previous)
        if not share.stored:
            self._call(m)
            br.state, br.store_id = LIVE, share.id
            br.saved = dict(share.view)
            br.principal = share.principal
            br.deadline = br.index = share.known_deadline = self.now + INTERVAL
            share.stored = True
            share.saved()
            return True
        if not share.changes and not share.principal_changed:
            return False
        self._call(m)
        wrote = self._alive(br, share.id)
        if wrote:  # an expired session not yet claimed is written, and lives on
            br.saved = self._apply(br.saved, share.pending)
            if share.principal_changed:
                br.principal = share.principal
            br.deadline = share.known_deadline = max(br.deadline, self.now + INTERVAL)
        else:
            self._detach(share)
        share.saved()
        return wrote

    def _touch(self, share: Share, session_id: str) -> None:
        """``store.touch``: activity extends an unexpired session; a gone one detaches."""
        br = self.browsers[share.key]
        if not self._alive(br, session_id):
            self._detach(share)
            return
        if br.deadline > self.now:
            br.deadline = max(br.deadline, self.now + INTERVAL)
        share.known_deadline = br.deadline

    def _detach(self, share: Share) -> None:
        share.detached = True
        share.in_map = False
        if share.prev is not None:  # its ID change will never be written
            self.retired[share.m].discard(share.prev)

    def _refuse(self, o: Open) -> None:
        """``SharedSessions.refuse``: a 503; nothing of the request is written."""
        o.refused = True
        share = o.share
        share.claim_failed = False
        share.in_map = False
        if not share.stored and share.valid:  # a new session, never stored: discarded
            for session_id in (share.id, share.prev):
                if session_id is not None:
                    self.retired[o.m].discard(session_id)
            share.valid = False
            self._gone(self.browsers[share.key])
            return
        # Its own changes are taken back; those of the requests sharing the object stay.
        for name, entries in list(share.changes.items()):
            entries[:] = [(by, value) for by, value in entries if by is not o]
            if not entries:
                del share.changes[name]
                value = share.baseline.pop(name)
            else:
                value = entries[-1][1]
            if value is REMOVED:
                share.view.pop(name, None)
            else:
                share.view[name] = value
        if o in share.principal_by:  # every binding of its own (a repeat is listed again)
            share.principal_by = [by for by in share.principal_by if by is not o]
            if not share.principal_by:
                share.principal = share.principal_before
        # An ID change of its own is taken back too, unless another request changed it since.
        if any(by is o for by, _ in share.renamed_by):
            was_last = share.renamed_by[-1][0] is o
            share.renamed_by = [(by, new) for by, new in share.renamed_by if by is not o]
            if was_last:
                share.id = share.renamed_by[-1][1] if share.renamed_by else share.prev  # type: ignore[assignment]
            if not share.renamed_by:
                share.prev = None
        if share.prev is None:  # no ID change away from it pending: refused no longer
            self.retired[o.m].discard(share.id)

    def _end(self, share: Share) -> None:
        """A share ended in its process (invalidate, or a manager's end): claimed in the store
        first; its events fire only if that claim removed it."""
        br, m = self.browsers[share.key], share.m
        share.valid = False
        share.in_map = False
        if not self.shared:
            self._gone(br)
            return
        if not share.stored:
            self._gone(br)  # never stored: ends here, now
            return
        ids = {share.id, share.prev} - {None}
        if self.down[m]:
            share.claim_failed = True  # raised by the next settle (flush or release)
        else:
            if br.state == LIVE and br.store_id in ids:
                self._gone(br)
            else:  # ended or renamed elsewhere: no events here
                share.detached = True
            share.stored = False
            share.prev = None
        self.retired[m] -= ids

    def _cookie_after_flush(self, o: Open) -> None:
        """The response started: the browser keeps what ``Set-Cookie`` said."""
        br, share = self.browsers[o.share.key], o.share
        if share.valid and not share.detached:
            if share.id != o.requested:
                br.cookie = share.id
                br.known.append(share.id)
        elif o.requested is not None:
            br.cookie = None

    # --- rules: requests ---------------------------------------------------------------------

    @initialize(processes=st.lists(indexes, min_size=1, max_size=3))
    def browsers_with_sessions(self, processes: list[int]) -> None:
        """Browsers that got their session from an earlier request (created, flushed,
        released), each on its process."""
        for m in processes:
            o = self._create(self._m(m))
            self._flush(o)
            self._release(o)

    @rule(
        m=indexes, browser=st.sampled_from([0, 1, 2, 3, "new"]), old=st.booleans(),
        which=indexes, action=st.sampled_from(ACTIONS), name=st.sampled_from(NAMES),
        then=st.sampled_from(["stays_open", "responds", "ends"]),
    )  # fmt: skip
    def request(
        self, m: int, browser: int | str, old: bool, which: int, action: str, name: str, then: str
    ) -> None:
        """A request arrives on process ``m`` with a browser's cookie (``old``: any ID that
        browser ever held), or from a new browser that gets a session; its route does
        ``action``; then it stays open (its response not started yet), or its response starts
        and it stays open (a streamed body), or it ends."""
        o = self._start(self._m(m), browser, old, which)
        if o is None:
            return
        self._route(o, action, name)
        if then == "stays_open" and len(self.open) <= MAX_OPEN:
            return
        self._flush(o)
        if then == "responds" and len(self.open) <= MAX_OPEN:
            return
        self._release(o)

    @precondition(lambda self: self.open)
    @rule(
        i=indexes, action=st.sampled_from(["respond", "end", *ACTIONS]),
        name=st.sampled_from(NAMES),
    )  # fmt: skip
    def request_goes_on(self, i: int, action: str, name: str) -> None:
        """One of the open requests (``self.open[i]``) goes on: its response starts, it ends,
        or its route does ``action``."""
        o = self.open[i % len(self.open)]
        if action == "respond":
            self._flush(o)
        elif action == "end":
            self._release(o)
        else:
            self._route(o, action, name)

    def _start(self, m: int, browser: int | str, old: bool, which: int) -> Open | None:
        known = [br for br in self.browsers if br.known]
        if browser == "new" or not known:
            if sum(br.state != GONE for br in self.browsers) < MAX_LIVE:
                return self._create(m)
            if not known:
                return None
        index = browser if isinstance(browser, int) else 0
        # Mostly a browser whose session lives, with its cookie; else any ID it ever held.
        candidates = [br for br in known if br.cookie is not None and br.state != GONE]
        if old or not candidates:
            br = known[index % len(known)]
            return self._join(m, br.known[which % len(br.known)])
        br = candidates[index % len(candidates)]
        assert br.cookie is not None
        return self._join(m, br.cookie)

    def _create(self, m: int) -> Open:
        key = len(self.browsers)
        before = len(self.created_log)

        visit = Visit()
        o = Open(m, visit, None, requested=None)  # type: ignore[arg-type]
        visit.journal = o.journal

        def create() -> HttpSession:
            session = self.managers[m].create_session(visit)
            # The test's own mark, outside the request's journal: the listener reads it.
            token = change_journal.set(None)
            try:
                session.set_attribute("key", key)
            finally:
                change_journal.reset(token)
            return session

        session = self._in_request(o, create)
        assert self.created_log[before:] == [(m, session)]
        br = Browser(key=key, idle_since=self.now)
        self.browsers.append(br)
        self.owner[session._id] = br
        o.share = share = Share(session, key, m, session._id, stored=not self.shared)
        self.shares[session] = share
        self.open.append(o)
        share.view = {"key": key}
        if self.shared:
            share.changes["key"], share.baseline["key"] = [(o, key)], REMOVED
        else:
            br.state, br.store_id, br.saved = LIVE, session._id, share.view
        return o

    def _join(self, m: int, target: str) -> Open | None:
        owner = self.owner[target]

        visit = Visit()
        journal: dict[int, dict[str, Any]] = {}
        visit.journal = journal

        async def go() -> HttpSession | str | None:
            try:
                return await self.managers[m].join(target, visit)
            except StoreUnavailableError:
                return "unavailable"

        found = self._run(go())
        if self.down[m]:
            assert found == "unavailable", (
                f"invariant 2: a join with the store down answered {found!r}, not 503"
            )
            return None
        assert found != "unavailable", "the store is up, yet the join raised"
        if self.shared:
            expected = self._join_shared(m, target, owner)
        else:
            expected = self._join_memory(target, owner)
        if expected is None:
            assert found is None, (
                f"invariants 1/3: session {owner.key} joined by an ID that must find nothing "
                f"(state {owner.state}, retired here: {target in self.retired[m]})"
            )
            return None
        assert isinstance(found, HttpSession), (
            f"invariant 1: the cookie of live session {owner.key} found nothing on process {m}"
        )
        share = expected if isinstance(expected, Share) else None
        if share is None:  # a new share, read from the store
            share = Share(found, owner.key, m, target, stored=True, in_flight=0,
                          known_deadline=owner.deadline)  # fmt: skip
            self.shares[found] = share
        assert found is share.session, "a process must share one object among its requests"
        share.in_flight += 1
        if self.shared:  # what the store has, and what requests here changed and not saved
            share.view = self._apply(owner.saved, share.pending)
            if not share.principal_changed:
                share.principal = owner.principal
        assert self._attributes(found) == share.view, (
            f"invariants 2/6: session {owner.key} joined with other attributes than were saved"
        )
        assert found.principal == share.principal
        o = Open(m, visit, share, requested=target, journal=journal)
        self.open.append(o)
        return o

    def _join_shared(self, m: int, target: str, owner: Browser) -> Share | bool | None:
        """What a join of ``target`` on process ``m`` must answer: ``None``, the process's share
        (a ``Share``) or a new object read from the store (``True``)."""
        alive = self._alive(owner, target)
        if alive and owner.deadline > self.now:  # load(touch=True) records the access
            owner.deadline = max(owner.deadline, self.now + INTERVAL)
        share = self._share_on(m, target)
        if target in self.retired[m]:
            return None
        if not alive:
            if share is not None:
                self._detach(share)
            return None
        if owner.deadline <= self.now:  # found expired: claimed here, events here
            self._gone(owner)
            if share is not None:  # requests holding it finish on a detached copy
                self._detach(share)
            return None
        if share is not None:
            share.known_deadline = owner.deadline
            return share
        return True

    def _join_memory(self, target: str, owner: Browser) -> Share | None:
        if not self._alive(owner, target):
            return None
        share = next(s for s in self.shares.values() if s.key == owner.key)
        if share.in_flight == 0 and owner.idle_since + INTERVAL <= self.now:
            self._gone(owner)
            share.valid = False
            return None
        owner.idle_since = self.now
        return share

    def _route(self, o: Open, action: str, name: str) -> None:
        """What the route does with its session (an ID changes only before the response
        starts: the new cookie goes out with it)."""
        if not o.share.valid or (action in ("change_id", "login") and o.flushed):
            return
        if action == "set":
            self.values += 1
            self._set_attribute(o, name, self.values)
        elif action == "remove":
            self._set_attribute(o, name, None)
        elif action == "principal":
            self._bind_principal(o)
        elif action == "change_id":
            self._change_session_id(o)
        elif action == "login":  # the README's login, then "log out my other sessions"
            self._set_attribute(o, "user", PRINCIPAL)
            self._bind_principal(o)
            self._change_session_id(o)
            self._invalidate_all(o)
        elif action == "invalidate":
            self._invalidate(o)
        else:
            self._invalidate_all(o)

    def _set_attribute(self, o: Open, name: str, value: Any) -> None:
        share = o.share
        present = name in share.view
        self._in_request(o, lambda: share.session.set_attribute(name, value))
        if value is None and not present:
            if self.shared and name in share.changes:  # repeating an unwritten removal
                share.changes[name].append((o, REMOVED))
            return  # otherwise removing what is not there changes nothing
        if self.shared:
            if name not in share.changes:
                share.baseline[name] = share.view.get(name, REMOVED)
            share.changes.setdefault(name, []).append((o, REMOVED if value is None else value))
        if value is None:
            share.view.pop(name, None)
        else:
            share.view[name] = value
        if not self.shared:
            self.browsers[share.key].saved = share.view  # the store holds the object itself

    def _bind_principal(self, o: Open) -> None:
        share = o.share

        def bind() -> None:
            share.session.principal = PRINCIPAL

        self._in_request(o, bind)
        if share.principal == PRINCIPAL:
            if share.principal_by:  # repeating an unwritten change: it is this request's too
                share.principal_by.append(o)
            return
        if not share.principal_by:
            share.principal_before = share.principal
        share.principal_by.append(o)
        share.principal = PRINCIPAL
        if not self.shared:
            self.browsers[share.key].principal = PRINCIPAL

    def _invalidate(self, o: Open) -> None:
        share = o.share
        if self.shared and share.stored:
            self.retired[o.m].add(share.id)
        self._end(share)
        self._in_request(o, share.session.invalidate)

    def _change_session_id(self, o: Open) -> None:
        share, br = o.share, self.browsers[o.share.key]
        old = share.id
        new = self._in_request(o, lambda: self.managers[o.m].change_session_id_now(share.session))
        assert share.session._id == new != old
        self.owner[new] = br
        share.id = new
        if not self.shared:
            br.store_id = new
            return
        share.renamed_by.append((o, new))
        if share.prev is None:
            share.prev = old
        share.in_map = True
        if share.stored:
            self.retired[o.m].add(old)

    def _invalidate_all(self, o: Open) -> None:
        """Log out everywhere else: every session of the principal ends except this one."""
        m, keep = o.m, o.share

        async def go() -> int | str:
            token = change_journal.set(o.journal)
            try:
                return await self.managers[m].invalidate_all(PRINCIPAL, keep=keep.session)
            except StoreUnavailableError:
                return "unavailable"
            finally:
                change_journal.reset(token)

        ended = self._run(go())
        if self.down[m]:
            assert ended == "unavailable"
            return
        expected = 0
        kept_ids = {keep.id, keep.prev} - {None}
        for br in self.browsers:
            if br.state != LIVE or br.principal != PRINCIPAL or br.store_id in kept_ids:
                continue
            if self.shared:
                if br.deadline <= self.now or br.store_id in self.retired[m]:
                    continue
                share = self._share_on(m, br.store_id)
                if share is not None:
                    share.valid = share.in_map = share.stored = False
                self._gone(br)
            else:
                share = next(s for s in self.shares.values() if s.key == br.key)
                if share.in_flight == 0 and br.idle_since + INTERVAL <= self.now:
                    continue
                share.valid = False
                self._gone(br)
            expected += 1
        assert keep.session._valid, "invariant 4: invalidate_all ended the kept session"
        assert ended == expected, f"invalidate_all ended {ended} sessions, the model {expected}"

    def _flush(self, o: Open) -> None:
        """The response starts: what the request changed is written now."""
        if o.flushed:
            return
        o.flushed = True
        expect = self._flush_shared(o) if self.shared else "ok"

        async def go() -> str:
            try:
                await self.managers[o.m].flush(o.visit)
            except StoreUnavailableError:
                return "unavailable"
            return "ok"

        outcome = self._run(go())
        assert outcome == expect, f"flush answered {outcome}, the model {expect}"
        if outcome == "ok":
            self._cookie_after_flush(o)

    def _flush_shared(self, o: Open) -> str:
        share = o.share
        if o.refused:
            return "ok"
        if share.claim_failed:
            self._refuse(o)
            return "unavailable"
        if share.valid:
            try:
                self._push(share)
            except _Down:
                self._refuse(o)
                return "unavailable"
        return "ok"

    def _release(self, o: Open) -> None:
        """The request ends (with or without its response having started)."""
        self.open.remove(o)
        expect = self._release_shared(o) if self.shared else self._release_memory(o)

        async def go() -> str:
            try:
                await self.managers[o.m].release(o.visit)
            except StoreUnavailableError:
                return "unavailable"
            return "ok"

        outcome = self._run(go())
        assert outcome == expect, f"release answered {outcome}, the model {expect}"

    def _release_shared(self, o: Open) -> str:
        share = o.share
        if not o.refused and share.claim_failed:
            self._refuse(o)
            return "unavailable"
        share.in_flight -= 1
        if share.in_flight == 0:
            share.in_map = False
        if o.refused or not share.valid:
            return "ok"
        try:
            wrote = self._push(share)
            # Nothing written: a long request still counts as activity (touch), if the
            # deadline this object last saw is near.
            if (
                not wrote
                and share.valid
                and not share.detached
                and (share.known_deadline < self.now + INTERVAL)
            ):
                self._call(o.m)
                self._touch(share, share.id)
        except _Down:
            return "unavailable"
        return "ok"

    def _release_memory(self, o: Open) -> str:
        o.share.in_flight -= 1
        self.browsers[o.share.key].idle_since = self.now
        return "ok"

    # --- rules: time, background work, outages ------------------------------------------------

    @rule(
        seconds=st.sampled_from([0, 1, 5, 10, 15, 20, 30, 45, 61, 100]),
        keepers=st.sampled_from([True, True, True, False]),
        reaper=st.sampled_from([None, 0, 1]),
        outage=st.sampled_from([None, None, 0, 1]),
    )  # fmt: skip
    def time_passes(
        self, seconds: int, keepers: bool, reaper: int | None, outage: int | None
    ) -> None:
        """The clock moves on; with ``keepers`` every process's keeper ticks on the way (every
        15 s, as it does for an idle interval of 60 s), else they stall. Then process
        ``reaper``'s reaper ticks, and process ``outage`` loses its store or gets it back (the
        others keep theirs)."""
        while seconds > 0:
            step = min(seconds, 15) if keepers else seconds
            self.clock.advance(step)
            seconds -= step
            if keepers and self.shared:
                for m in range(len(self.managers)):
                    self._keep_alive(m)
        if reaper is not None:
            self._reap(self._m(reaper))
        if outage is not None and self.shared:
            m = self._m(outage)
            self.down[m] = self.stores[m].down = not self.down[m]

    def _reap(self, m: int) -> None:

        async def go() -> int | str:
            try:
                return await self.managers[m].reap()
            except StoreUnavailableError:
                return "unavailable"

        claimed = self._run(go())
        if self.down[m]:
            assert claimed == "unavailable"
            return
        expected = 0
        if self.shared:
            in_use = {s.id for s in self.shares.values() if s.m == m and s.in_map and s.in_flight}
            for br in self.browsers:
                if br.state != LIVE:
                    continue
                if self.kind == "redis":
                    # RedisStore finds due sessions by an index of deadlines that may run
                    # early (a touch does not re-file) and re-files what it finds not due yet;
                    # a session in use here is re-filed a second ahead (so for that second
                    # the other processes' reapers do not see it either).
                    if br.index > self.now:
                        continue
                    if br.store_id in in_use:
                        br.index = self.now + 1
                        continue
                    if br.deadline > self.now:
                        br.index = br.deadline
                        continue
                elif br.deadline > self.now or br.store_id in in_use:
                    continue
                self._gone(br)
                expected += 1
        else:
            for share in self.shares.values():
                br = self.browsers[share.key]
                if (
                    br.state == LIVE
                    and share.in_flight == 0
                    and (br.idle_since + INTERVAL <= self.now)
                ):
                    share.valid = False
                    self._gone(br)
                    expected += 1
        assert claimed == expected, f"the reaper claimed {claimed}, the model {expected}"

    def _keep_alive(self, m: int) -> None:
        """A keeper tick: sessions in use here stay ahead of their deadline."""
        due = [
            s
            for s in self.shares.values()
            if s.m == m and s.in_map and s.valid and s.stored and s.in_flight
            and not s.detached and s.known_deadline < self.now + INTERVAL
        ]  # fmt: skip

        async def go() -> str:
            try:
                await self.managers[m].keep_alive()
            except StoreUnavailableError:
                return "unavailable"
            return "ok"

        outcome = self._run(go())
        if self.down[m]:
            assert outcome == ("unavailable" if due else "ok")
            return
        assert outcome == "ok"
        for share in due:
            # The session is in use: it is kept alive under the ID the store holds it by
            # (an ID change of the request is written as its response starts).
            self._touch(share, share.prev or share.id)

    # --- invariants -------------------------------------------------------------------------

    @invariant()
    def lifecycle_events_fire_once(self) -> None:
        assert len(self.created_log) == len(self.browsers), "a session_created too many"
        for br in self.browsers:
            destroyed = self.destroyed.get(br.key, 0)
            expected = 1 if br.state == GONE else 0
            assert destroyed == expected, (
                f"invariant 5: session {br.key} ({br.state}) had session_destroyed "
                f"{destroyed} times"
            )
        assert set(self.destroyed) <= {br.key for br in self.browsers}

    @invariant()
    def objects_agree_with_the_model(self) -> None:
        """What each open request sees of its session: valid or not, its ID, attributes and
        principal (a request answered 503 has taken its own changes back, and only those)."""
        for o in self.open:
            share, session = o.share, o.share.session
            assert session._valid == share.valid, (
                f"session {share.key}: valid {session._valid} in process {o.m}, "
                f"the model says {share.valid}"
            )
            if not share.valid:
                continue
            assert session._id == share.id, f"session {share.key}'s ID in process {o.m}"
            assert self._attributes(session) == share.view, (
                f"session {share.key}'s attributes in process {o.m}"
            )
            assert session.principal == share.principal, (
                f"session {share.key}'s principal in process {o.m}"
            )

    @invariant()
    def the_store_holds_what_the_model_says(self) -> None:
        live = {br.store_id: br for br in self.browsers if br.state == LIVE}
        if not self.shared:
            store: MemoryStore = self.observer
            assert set(store.sessions) == set(live)
            for session_id, br in live.items():
                session = store.sessions[session_id]
                assert self._attributes(session) == br.saved
                assert session._principal == br.principal
            return
        stored, index = self._run(self._snapshot())
        assert sorted(stored) == sorted(live), "the store holds other sessions than the model"
        for session_id, br in live.items():
            attributes, principal, expires_at = stored[session_id]
            assert attributes == br.saved, f"invariant 6: session {br.key}'s stored attributes"
            assert principal == br.principal
            assert expires_at == br.deadline, f"session {br.key}'s stored deadline"
        principal_ids = {
            sid for sid, br in live.items() if br.principal == PRINCIPAL and br.deadline > self.now
        }
        assert index == principal_ids, "the principal index"

    async def _snapshot(self) -> tuple[dict[str, tuple[dict[str, Any], Any, float]], set[str]]:
        """Every stored session (attributes, principal, deadline) and the principal's index, read
        by a store of the test's own (no outage), in as few round trips as the store allows."""
        observer = self.observer
        if isinstance(observer, SQLStore):
            if not observer._ready:
                await observer.create_tables()
            async with observer.engine.connect() as conn:
                rows = (await conn.execute(select(observer.sessions))).all()
                values = (await conn.execute(select(observer.attributes))).all()
            stored = {
                row.id: ({}, row.principal, math.inf if row.expires_at is None else row.expires_at)
                for row in rows
            }
            for value in values:
                stored[value.session_id][0][value.name] = observer.serializer.loads(value.value)
            index = {
                row.id
                for row in rows
                if row.principal == PRINCIPAL and stored[row.id][2] > self.now
            }
            return stored, index
        stored = {}
        for session_id in await observer.session_ids(0, 1000):
            record = await observer.load(session_id, self.now, touch=False)
            assert record is not None, "the expiry index keeps an entry of a gone session"
            attributes = observer.decode_all(session_id, record.attributes or {}, strict=True)
            stored[session_id] = (attributes, record.principal, record.expires_at)
        return stored, set(await observer.sessions_of(PRINCIPAL, self.now))

    @invariant()
    def nothing_piles_up(self) -> None:
        if not self.shared:
            store: MemoryStore = self.observer
            for principal, ids in store._by_principal.items():
                for session_id in ids:
                    session = store.sessions.get(session_id)
                    assert session is not None, "invariant 7: a principal entry of a gone session"
                    assert session._principal == principal
            return
        if self.open:
            return
        for m, manager in enumerate(self.managers):
            assert not manager.in_process, f"invariant 7: process {m} holds shares at rest"
            retired = manager._sessions.retired  # type: ignore[attr-defined]
            assert not retired, f"invariant 7: process {m} still refuses {len(retired)} IDs"


@pytest.mark.parametrize("kind", STORE_KINDS)
def test_concurrent_requests_follow_the_model(kind: str, request: pytest.FixtureRequest) -> None:
    use_cluster(request, kind)
    asyncio.run(require(kind))
    machine = type(f"ModelMachine_{kind}", (ModelMachine,), {"kind": kind})
    run_state_machine_as_test(machine, settings=SETTINGS)


# --- step sequences the state machine found, replayed on every store kind ---------------------

Step = tuple[str, dict[str, Any]]


def _request(m: int, browser: int | str, action: str, then: str, name: str = "a") -> Step:
    args = {"m": m, "browser": browser, "old": False, "which": 0, "action": action,
            "name": name, "then": then}  # fmt: skip
    return ("request", args)


def _goes_on(i: int, action: str, name: str = "a") -> Step:
    return ("request_goes_on", {"i": i, "action": action, "name": name})


def _outage(m: int) -> Step:  # process m's store goes down, or comes back
    return ("time_passes", {"seconds": 0, "keepers": True, "reaper": None, "outage": m})


ONE_SESSION: Step = ("browsers_with_sessions", {"processes": [0]})

REGRESSIONS: dict[str, list[Step]] = {
    # Process 1 holds a share of session 0 from before its login on process 0; "log out my
    # other sessions" from process 1 must still end it (the store says it is the user's).
    "invalidate_all_ends_a_session_logged_in_elsewhere": [
        ONE_SESSION,
        _request(1, 0, "set", "stays_open"),
        _request(0, 0, "principal", "ends"),
        _request(1, "new", "login", "ends"),
    ],
    # The intermediate ID of two changes in one request is never stored: nothing to refuse.
    "two_id_changes_in_one_request_leave_no_retired_id": [
        ONE_SESSION,
        _request(0, 0, "change_id", "stays_open"),
        _goes_on(0, "change_id"),
        _goes_on(0, "respond"),
        _goes_on(0, "end"),
    ],
    # A request finishes on a detached copy (its session expired under it): its ID change is
    # never written, and leaves no retired ID behind.
    "an_id_change_on_a_detached_copy_leaves_no_retired_id": [
        ONE_SESSION,
        _request(0, 0, "set", "stays_open"),
        ("time_passes", {"seconds": 61, "keepers": False, "reaper": None, "outage": None}),
        _request(0, 0, "set", "ends"),
        _goes_on(0, "change_id"),
        _goes_on(0, "respond"),
        _goes_on(0, "end"),
    ],
    # Two requests of one session on one process; the second is answered 503. What the first
    # changed is still written, even where the second changed the same attribute after it.
    "a_refused_request_takes_back_only_its_own_attribute_changes": [
        ONE_SESSION,
        _request(0, 0, "set", "stays_open"),
        _request(0, 0, "set", "stays_open"),
        _outage(0),
        _goes_on(1, "respond"),
        _outage(0),
        _goes_on(0, "respond"),
    ],
    # ...and a principal it bound is taken back too: the other request does not write it.
    "a_refused_request_takes_back_its_principal": [
        ONE_SESSION,
        _request(0, 0, "set", "stays_open"),
        _request(0, 0, "principal", "stays_open"),
        _outage(0),
        _goes_on(1, "respond"),
        _outage(0),
        _goes_on(0, "respond"),
    ],
    # ...and its ID change: the other request, whose response went out already, must not
    # rename the session under the browser (which never got the new cookie).
    "a_refused_request_takes_back_its_id_change": [
        ONE_SESSION,
        _request(0, 0, "set", "responds"),
        _request(0, 0, "change_id", "stays_open"),
        _outage(0),
        _goes_on(1, "respond"),
        _outage(0),
        _goes_on(0, "end"),
        _request(1, 0, "set", "ends"),
    ],
    # A principal one request bound and another request's save wrote is in the store: the
    # first request, answered 503 later, does not take it back from the copy either.
    "a_principal_another_request_wrote_stays_after_a_503": [
        ONE_SESSION,
        _request(0, 0, "principal", "stays_open"),
        _request(0, 0, "set", "ends"),
        _goes_on(0, "set", "c"),
        _outage(0),
        _goes_on(0, "respond"),
        _outage(0),
        _goes_on(0, "end"),
        _request(1, 0, "set", "ends"),
    ],
    # R1 sets a, R2 sets a, R1 sets a again; R2 is answered 503: the copy keeps R1's last
    # value, and R1's response writes it.
    "a_503_keeps_a_later_value_of_another_request": [
        ONE_SESSION,
        _request(0, 0, "set", "stays_open"),
        _request(0, 0, "set", "stays_open"),
        _goes_on(0, "set"),
        _outage(0),
        _goes_on(1, "respond"),
        _outage(0),
        _goes_on(1, "end"),
        _goes_on(0, "end"),
        _request(1, 0, "set", "ends"),
    ],
    # R1 sets b, R2 sets a and is answered 503; then process 1 writes a. R1's response writes
    # b only: it must not delete the a that process 1 wrote (R2's change was taken back).
    "a_503_leaves_no_pending_change_to_overwrite_another_process": [
        ONE_SESSION,
        _request(0, 0, "set", "stays_open", "b"),
        _request(0, 0, "set", "stays_open", "a"),
        _outage(0),
        _goes_on(1, "respond"),
        _outage(0),
        _goes_on(1, "end"),
        _request(1, 0, "set", "ends", "a"),
        _goes_on(0, "end"),
        _request(1, 0, "set", "ends", "c"),
    ],
    # A request logs in, then binds the same principal again, and is answered 503: every
    # binding of its own is taken back (the model once kept the repeat).
    "a_503_takes_back_a_repeated_binding_of_its_own": [
        ONE_SESSION,
        _request(0, 0, "login", "stays_open"),
        _goes_on(0, "principal"),
        _outage(0),
        _goes_on(0, "respond"),
        _outage(0),
        _goes_on(0, "end"),
        _request(1, 0, "set", "ends"),
    ],
}


@pytest.mark.parametrize("name", sorted(REGRESSIONS))
@pytest.mark.parametrize("kind", STORE_KINDS)
def test_found_sequences_follow_the_model(
    kind: str, name: str, request: pytest.FixtureRequest
) -> None:
    """Sequences the state machine found failing, replayed step by step with every invariant
    checked after each step (on MemoryStore too, where they must simply hold)."""
    use_cluster(request, kind)
    asyncio.run(require(kind))
    machine = type(f"ModelMachine_{kind}", (ModelMachine,), {"kind": kind})()
    invariants = [
        machine.lifecycle_events_fire_once,
        machine.objects_agree_with_the_model,
        machine.the_store_holds_what_the_model_says,
        machine.nothing_piles_up,
    ]
    try:
        for rule_name, arguments in REGRESSIONS[name]:
            getattr(machine, rule_name)(**arguments)
            for check in invariants:
                check()
    finally:
        machine.teardown()
