"""``MemoryStore(persist_to=...)``: live sessions saved at shutdown, restored at startup.

The app is driven as a server drives it: lifespan startup, requests, lifespan shutdown; then a new
app (a new process, as far as it can tell) starts on the same file and the same cookie joins the
same session.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import pickle
import re
import stat
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, ClassVar

import httpx2
import pytest
from pydantic import BaseModel
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from servletsession import (
    ConfigurationError,
    HttpSessionBindingEvent,
    HttpSessionEvent,
    SessionManager,
    SessionMiddleware,
    get_session,
)
from servletsession.cookies import new_session_id, session_ref
from servletsession.restart import CLOCK_SKEW
from servletsession.serializers import JSONSerializer
from servletsession.session import HttpSession
from servletsession.stores import MemoryStore
from servletsession.stores.memory_file import FORMAT, VERSION

from .conftest import BASIC_ROUTES, SECRET, FakeClock, client, cookie_header

pytestmark = pytest.mark.anyio


# --- an ASGI server's lifespan, by hand ---------------------------------------------------------


@contextlib.asynccontextmanager
async def running(app: Any) -> AsyncIterator[None]:
    """Lifespan startup on entry and shutdown on exit, as uvicorn sends them; each must be
    answered ``complete`` before the server goes on."""
    inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    outbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    scope = {"type": "lifespan", "asgi": {"version": "3.0", "spec_version": "2.0"}, "state": {}}
    task = asyncio.create_task(app(scope, inbox.get, outbox.put))
    await inbox.put({"type": "lifespan.startup"})
    assert (await outbox.get())["type"] == "lifespan.startup.complete"
    try:
        yield
    finally:
        await inbox.put({"type": "lifespan.shutdown"})
        assert (await outbox.get())["type"] == "lifespan.shutdown.complete"
        await task


# --- the file, looked at from outside (plain blocking calls: tiny files in a temporary dir) -----


def exists(path: Path) -> bool:
    return path.exists()


def read(path: Path) -> bytes:
    return path.read_bytes()


def saved(path: Path) -> Any:
    """The file's JSON document."""
    return json.loads(path.read_bytes())


def put(path: Path, content: bytes, mode: int = 0o600) -> None:
    """Write the file as someone else's process (or a hand) would have left it."""
    path.write_bytes(content)
    os.chmod(path, mode)


def link(path: Path, target: Path) -> None:
    path.unlink()
    path.symlink_to(target)


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


class Note(BaseModel):
    """An attribute value that is a model on the allow-list."""

    text: str


Log = list[tuple[Any, ...]]


class Watched(BaseModel):
    """A value listening for passivation and activation, its methods async; it writes what it
    saw into ``Watched.log`` (the object that activates is a new one, read from the file)."""

    name: str
    passivated: bool = False
    log: ClassVar[Log] = []

    async def session_will_passivate(self, event: HttpSessionEvent) -> None:
        Watched.log.append(("passivating", self.name))
        await asyncio.sleep(0)  # another value's event must wait for this one to finish
        self.passivated = True  # set before the session is written: the file must have it
        Watched.log.append(("passivated", self.name, event.session.get_attribute_names()))

    async def session_did_activate(self, event: HttpSessionEvent) -> None:
        Watched.log.append(("activating", self.name, self.passivated))
        await asyncio.sleep(0)
        Watched.log.append(("activated", self.name))


class Lifecycle:
    """A listener of session creation and destruction, and of unbinding."""

    def __init__(self, log: Log | None = None) -> None:
        self.log: Log = [] if log is None else log

    def session_created(self, event: HttpSessionEvent) -> None:
        self.log.append(("created",))

    async def session_destroyed(self, event: HttpSessionEvent) -> None:
        await asyncio.sleep(0)
        self.log.append(("destroyed", event.session.get_attribute("user")))

    def attribute_removed(self, event: HttpSessionBindingEvent) -> None:
        self.log.append(("removed", event.name))


async def whoami(request: Request) -> Response:
    session = get_session(request, create=False)
    if session is None:
        return JSONResponse(None)
    return JSONResponse(
        {
            "user": session.get_attribute("user"),
            "note": session.get_attribute("note").text if "note" in session else None,
            "principal": session.principal,
            "creation_time": session.creation_time,
            "last_accessed_time": session.last_accessed_time,
            "max_inactive_interval": session.max_inactive_interval,
            "absolute_timeout": session.absolute_timeout,
            "names": session.get_attribute_names(),
        }
    )


async def login(request: Request) -> Response:
    session = get_session(request)
    assert session is not None
    user = request.query_params["user"]
    session["user"] = user
    session["note"] = Note(text=f"hello {user}")
    session.principal = user
    session.max_inactive_interval = int(request.query_params.get("idle", 600))
    session.absolute_timeout = 86_400
    return Response("welcome")


ROUTES = [Route("/whoami", whoami), Route("/login", login, methods=["POST"]), *BASIC_ROUTES]

Factory = Callable[..., tuple[Starlette, SessionManager]]


@pytest.fixture
def sessions_file(tmp_path: Path) -> Path:
    return tmp_path / "sessions.json"


@pytest.fixture
def new_app(sessions_file: Path, clock: FakeClock) -> Factory:
    """A fresh app and manager on ``sessions_file``: what a restarted process builds."""

    def build(**options: Any) -> tuple[Starlette, SessionManager]:
        path = options.pop("path", sessions_file)
        manager = SessionManager(
            MemoryStore(persist_to=path), models=[Note, Watched], clock=clock, **options
        )
        app = Starlette(routes=ROUTES)
        app.add_middleware(SessionMiddleware, secret_key=SECRET, manager=manager)
        return app, manager

    return build


def cookie_of(response: httpx2.Response) -> str:
    value = response.cookies.get("sessionid")
    assert value, response.headers
    return value


async def log_in(app: Starlette, user: str = "ada", idle: int = 600) -> str:
    async with client(app) as http:
        return cookie_of(await http.post("/login", params={"user": user, "idle": idle}))


async def ask(app: Starlette, cookie: str) -> Any:
    async with client(app) as http:
        return (await http.get("/whoami", headers=cookie_header(cookie))).json()


# --- the round trip ----------------------------------------------------------------------------


async def test_the_same_cookie_joins_the_same_session_after_a_restart(
    new_app: Factory, sessions_file: Path, clock: FakeClock
) -> None:
    app, old = new_app()
    async with running(app):
        cookie = await log_in(app)
        clock.advance(30)
        last_request = clock.now
        before = await ask(app, cookie)
        clock.advance(10)
    assert exists(sessions_file)
    assert old.in_process == {}  # written out: in the file now, no longer here (as Tomcat)

    clock.advance(60)  # the app is down for a minute
    app, manager = new_app()
    async with running(app):
        assert not exists(sessions_file)  # read, then deleted: a crash cannot bring it back
        after = await ask(app, cookie)
        assert (await manager.stats()).active == 1
    assert after["user"] == "ada"
    assert after["note"] == "hello ada"  # a model on the allow-list comes back as itself
    assert after["principal"] == "ada"
    assert after["creation_time"] == before["creation_time"]
    assert after["last_accessed_time"] == last_request  # the start of the previous request
    assert after["max_inactive_interval"] == 600
    assert after["absolute_timeout"] == 86_400
    assert after["names"] == ["user", "note"]


async def test_the_principal_index_is_rebuilt(new_app: Factory) -> None:
    app, _ = new_app()
    async with running(app):
        ada = [await log_in(app, "ada"), await log_in(app, "ada")]
        await log_in(app, "bob")
    app, manager = new_app()
    async with running(app):
        found = await manager.sessions_of("ada")
        assert sorted(session.id for session in found) == sorted(
            cookie.split(".")[0] for cookie in ada
        )
        assert await manager.invalidate_all("ada") == 2
        assert [await ask(app, cookie) for cookie in ada] == [None, None]
        assert len(await manager.sessions_of("bob")) == 1


async def test_the_idle_clock_goes_on_from_where_it_stopped(
    new_app: Factory, clock: FakeClock
) -> None:
    """Downtime counts as idle time, from the end of the last request: a session last used 500 s
    before shutdown has 100 s left of its 600 after the restart."""

    async def work(request: Request) -> Response:
        get_session(request)
        clock.advance(300)  # a request that takes five minutes: idle from its end
        return Response("done")

    app, _ = new_app()
    app.router.routes.append(Route("/work", work))
    async with running(app):
        cookie = await log_in(app)  # max_inactive_interval=600
        async with client(app) as http:
            await http.get("/work", headers=cookie_header(cookie))
        clock.advance(500)
    app, _ = new_app()
    async with running(app):
        clock.advance(99)
        assert (await ask(app, cookie))["user"] == "ada"  # 599 s idle: alive, and touched
        clock.advance(601)
        assert await ask(app, cookie) is None  # 601 s idle since that request


async def test_manager_close_saves_and_async_with_restores(
    sessions_file: Path, clock: FakeClock
) -> None:
    """Without lifespan: ``async with manager`` (or ``start()``/``close()``) does the same."""
    async with SessionManager(MemoryStore(persist_to=sessions_file), clock=clock) as manager:
        session = manager.create_session()
        session["n"] = 1
        session_id = session.id
        await manager.release(session)
    assert exists(sessions_file)
    async with SessionManager(MemoryStore(persist_to=str(sessions_file)), clock=clock) as manager:
        found = await manager.find(session_id)
        assert found is not None
        assert found["n"] == 1
        await manager.release(found)


async def test_the_apps_lifespan_handlers_run_between_restore_and_save(
    sessions_file: Path, clock: FakeClock
) -> None:
    """The middleware restores before the app's own startup handlers run, and saves after its
    shutdown handlers ran, before the server is told shutdown is complete."""
    seen_at_startup: list[int] = []

    def build() -> tuple[Starlette, SessionManager]:
        manager = SessionManager(MemoryStore(persist_to=sessions_file), clock=clock)

        @contextlib.asynccontextmanager
        async def lifespan(app: Starlette) -> AsyncIterator[None]:
            seen_at_startup.append(len(manager.in_process))
            yield
            for session in list(manager.in_process.values()):
                session["goodbye"] = "said at shutdown"

        app = Starlette(routes=ROUTES, lifespan=lifespan)
        app.add_middleware(SessionMiddleware, secret_key=SECRET, manager=manager)
        return app, manager

    app, _ = build()
    async with running(app):
        cookie = await log_in(app)
    app, manager = build()
    async with running(app):
        session = await manager.peek(cookie.split(".")[0])
        assert session is not None
        assert session["goodbye"] == "said at shutdown"
    assert seen_at_startup == [0, 1]


async def test_a_startup_that_fails_after_the_restore_saves_them_again(
    new_app: Factory, sessions_file: Path, clock: FakeClock
) -> None:
    """The file is deleted once read; if the app's own startup then fails, the process exits
    with the restored sessions, so they are written back (not lost)."""
    app, _ = new_app()
    async with running(app):
        cookie = await log_in(app)

    @contextlib.asynccontextmanager
    async def failing(app: Starlette) -> AsyncIterator[None]:
        raise RuntimeError("the database is down")
        yield  # pragma: no cover

    manager = SessionManager(MemoryStore(persist_to=sessions_file), models=[Note], clock=clock)
    broken = Starlette(routes=ROUTES, lifespan=failing)
    broken.add_middleware(SessionMiddleware, secret_key=SECRET, manager=manager)
    inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    outbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    await inbox.put({"type": "lifespan.startup"})
    with pytest.raises(RuntimeError, match="the database is down"):
        await broken({"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}},
                     inbox.get, outbox.put)  # fmt: skip
    assert (await outbox.get())["type"] == "lifespan.startup.failed"
    assert exists(sessions_file)
    app, _ = new_app()
    async with running(app):
        assert (await ask(app, cookie))["user"] == "ada"


async def test_starting_again_without_a_shutdown_keeps_the_live_sessions(
    new_app: Factory, sessions_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A second start finds its sessions live already (the file put back, or one it could not
    delete): the live objects win, and nothing is restored twice."""
    app, _ = new_app()
    async with running(app):
        await log_in(app)
    copy = read(sessions_file)
    app, manager = new_app()
    async with running(app):
        live = dict(manager.in_process)
        put(sessions_file, copy)
        with caplog.at_level(logging.WARNING, logger="servletsession"):
            await manager.start()
        assert manager.in_process == live
        assert all(manager.in_process[key] is live[key] for key in live)
    assert "is live already; keeping the live one" in caplog.text


async def test_a_symlink_is_not_followed(
    new_app: Factory, sessions_file: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    app, _ = new_app()
    async with running(app):
        cookie = await log_in(app)
    target = tmp_path / "elsewhere.json"
    put(target, read(sessions_file))
    link(sessions_file, target)
    app, _ = new_app()
    with caplog.at_level(logging.ERROR, logger="servletsession"):
        async with running(app):
            assert await ask(app, cookie) is None
    assert "cannot read the saved sessions" in caplog.text


async def test_a_request_in_flight_at_shutdown_is_saved_as_it_was(
    new_app: Factory, sessions_file: Path
) -> None:
    """A request still running when the app shuts down keeps working on its object; what it
    changes after the save is not in the file (the save takes what there is, then)."""
    release = asyncio.Event()
    entered = asyncio.Event()

    async def slow(request: Request) -> Response:
        session = get_session(request)
        assert session is not None
        session["step"] = "before"
        entered.set()
        await release.wait()
        session["step"] = "after"
        return Response("done")

    app, _ = new_app()
    app.router.routes.append(Route("/slow", slow))
    http = client(app)
    async with running(app):
        cookie = await log_in(app)
        request = asyncio.create_task(http.get("/slow", headers=cookie_header(cookie)))
        await entered.wait()
    # the lifespan shutdown ran, and saved, while /slow waits
    written = saved(sessions_file)["sessions"]
    release.set()
    response = await request
    await http.aclose()
    assert response.status_code == 200
    assert written[0]["attributes"]["step"] == ["j", "before"]
    assert saved(sessions_file)["sessions"] == written  # not written again


async def test_a_logout_after_the_save_is_not_in_the_file(
    new_app: Factory, sessions_file: Path
) -> None:
    """What docs/stores.md warns of: a request still running at shutdown that invalidates its
    session after the save ends its own object only; the session comes back at the next start."""
    release = asyncio.Event()
    entered = asyncio.Event()

    async def slow_logout(request: Request) -> Response:
        session = get_session(request)
        assert session is not None
        entered.set()
        await release.wait()
        session.invalidate()
        return Response("bye")

    app, _ = new_app()
    app.router.routes.append(Route("/logout", slow_logout, methods=["POST"]))
    http = client(app)
    async with running(app):
        cookie = await log_in(app)
        request = asyncio.create_task(http.post("/logout", headers=cookie_header(cookie)))
        await entered.wait()
    release.set()
    assert (await request).status_code == 200
    await http.aclose()
    app, _ = new_app()
    async with running(app):
        assert (await ask(app, cookie))["user"] == "ada"  # back: the file had it


# --- events --------------------------------------------------------------------------------------


async def test_passivate_before_writing_and_activate_after_reading_in_order(
    new_app: Factory, sessions_file: Path
) -> None:
    Watched.log.clear()

    async def watch(request: Request) -> Response:
        session = get_session(request)
        assert session is not None
        session["first"] = Watched(name="first")
        session["second"] = Watched(name="second")
        return Response("watching")

    app, _ = new_app()
    app.router.routes.append(Route("/watch", watch, methods=["POST"]))
    async with running(app):
        async with client(app) as http:
            cookie = cookie_of(await http.post("/watch"))
        assert Watched.log == []
    names = ["first", "second"]
    assert Watched.log == [
        ("passivating", "first"),
        ("passivated", "first", names),
        ("passivating", "second"),
        ("passivated", "second", names),
    ]
    attributes = saved(sessions_file)["sessions"][0]["attributes"]
    assert '"passivated":true' in attributes["first"][2]  # written after the listener ran

    Watched.log.clear()
    app, manager = new_app()
    async with running(app):
        # startup completed only once the async activations had finished
        assert Watched.log == [
            ("activating", "first", True),
            ("activated", "first"),
            ("activating", "second", True),
            ("activated", "second"),
        ]
        session = await manager.peek(cookie.split(".")[0])
        assert session is not None
        assert session["first"].passivated is True


async def test_a_restart_fires_no_created_or_destroyed(new_app: Factory) -> None:
    events = Lifecycle()
    app, _ = new_app(listeners=[events])
    async with running(app):
        await log_in(app)
    assert events.log == [("created",)]
    events.log.clear()
    app, _ = new_app(listeners=[events])
    async with running(app):
        pass
    app, _ = new_app(listeners=[events])  # and the second shutdown saved it again
    async with running(app):
        pass
    assert events.log == []


@pytest.mark.parametrize(
    ("idle", "downtime"), [(600, 601), (0, 86_401)], ids=["idle timeout", "absolute timeout"]
)
async def test_a_session_expired_while_down_is_ended_on_restore_with_its_events(
    new_app: Factory, clock: FakeClock, sessions_file: Path, idle: int, downtime: int
) -> None:
    """As Tomcat's StandardManager: restored, activated, then expired as the reaper would have
    (``session_destroyed`` with the session readable, then every attribute unbound), before
    startup completes."""
    events = Lifecycle(Watched.log)  # one log for the value's events and the listener's
    app, manager = new_app(listeners=[events])
    async with running(app):
        cookie = await log_in(app, idle=idle)  # absolute_timeout=86_400 either way
        session = await manager.peek(cookie.split(".")[0])
        assert session is not None
        session["watched"] = Watched(name="w")
    clock.advance(downtime)
    events.log.clear()
    app, manager = new_app(listeners=[events])
    async with running(app):
        assert events.log[:3] == [
            ("activating", "w", True),
            ("activated", "w"),
            ("destroyed", "ada"),
        ]
        assert sorted(events.log[3:]) == [
            ("removed", "note"),
            ("removed", "user"),
            ("removed", "watched"),
        ]
        assert await ask(app, cookie) is None
        stats = await manager.stats()
        assert (stats.active, stats.expired) == (0, 1)
    assert not exists(sessions_file)  # nothing left to save


async def test_a_session_due_soon_is_restored(new_app: Factory, clock: FakeClock) -> None:
    app, _ = new_app()
    async with running(app):
        cookie = await log_in(app)
    clock.advance(599)
    app, _ = new_app()
    async with running(app):
        assert (await ask(app, cookie))["user"] == "ada"


# --- what is written ------------------------------------------------------------------------------


class Opaque:
    """Not JSON, not a model: it cannot be written."""


async def test_a_value_that_cannot_be_written_is_left_out_with_a_warning(
    new_app: Factory, caplog: pytest.LogCaptureFixture
) -> None:
    app, manager = new_app()
    with caplog.at_level(logging.WARNING, logger="servletsession"):
        async with running(app):
            cookie = await log_in(app)
            session_id = cookie.split(".")[0]
            session = await manager.peek(session_id)
            assert session is not None
            session["socket"] = Opaque()
            session["pair"] = (1, 2)  # a tuple would come back a list: refused too
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(
        "'socket'" in w and "tests.test_memory_restart.Opaque" in w and session_ref(session_id) in w
        for w in warnings
    ), warnings
    assert any("'pair'" in w and "(tuple)" in w for w in warnings), warnings
    assert not any(session_id in r.getMessage() for r in caplog.records)  # never the ID itself
    app, _ = new_app()
    async with running(app):
        assert (await ask(app, cookie))["names"] == ["user", "note"]  # the rest is kept


async def test_the_file_is_json_never_pickle(
    new_app: Factory, sessions_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("pickle must not be used")

    for name in ("dumps", "loads", "dump", "load", "Pickler", "Unpickler"):
        monkeypatch.setattr(pickle, name, refuse)
    app, _ = new_app()
    async with running(app):
        cookie = await log_in(app)
    document = saved(sessions_file)
    assert document["format"] == "servletsession.MemoryStore"
    assert document["version"] == 1
    assert document["sessions"][0]["attributes"]["user"] == ["j", "ada"]
    app, _ = new_app()
    async with running(app):
        assert (await ask(app, cookie))["note"] == "hello ada"


async def test_the_file_is_readable_by_its_owner_only(
    new_app: Factory, sessions_file: Path
) -> None:
    previous = os.umask(0)  # even with a permissive umask
    try:
        app, _ = new_app()
        async with running(app):
            await log_in(app)
    finally:
        os.umask(previous)
    assert mode_of(sessions_file) == 0o600


async def test_the_file_and_its_directory_are_synced_before_and_after_the_rename(
    new_app: Factory, sessions_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Durable once shutdown completes: the data reaches the disk before the rename makes it
    the file, and the rename itself reaches it too (the directory is synced)."""
    steps: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        steps.append("fsync directory" if stat.S_ISDIR(os.fstat(fd).st_mode) else "fsync file")
        real_fsync(fd)

    def replace(source: Any, target: Any) -> None:
        steps.append("replace")
        real_replace(source, target)

    app, _ = new_app()
    async with running(app):
        await log_in(app)
        monkeypatch.setattr(os, "fsync", fsync)
        monkeypatch.setattr(os, "replace", replace)
    assert steps == ["fsync file", "replace", "fsync directory"]


async def test_nothing_is_written_when_there_is_no_session(
    new_app: Factory, sessions_file: Path
) -> None:
    app, _ = new_app()
    async with running(app):
        pass
    assert not exists(sessions_file)


@pytest.mark.parametrize("failing", ["os.replace", "os.fsync", "the serializer"])
async def test_a_write_cut_short_leaves_the_previous_file_intact(
    new_app: Factory,
    sessions_file: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    failing: str,
) -> None:
    app, _ = new_app()
    async with running(app):
        await log_in(app, "first")
    previous = read(sessions_file)

    def crash(*args: object) -> None:
        raise OSError(28, "No space left on device")

    app, manager = new_app()
    with caplog.at_level(logging.ERROR, logger="servletsession"):
        async with running(app):  # restores "first" (and deletes the file)
            put(sessions_file, previous)  # the file this shutdown finds there
            await log_in(app, "second")
            if failing == "the serializer":  # fails halfway: on the second session
                dumps = JSONSerializer.dumps
                calls = iter(range(100))

                def fail_later(self: JSONSerializer, name: str, value: Any) -> bytes:
                    if next(calls) == 2:
                        raise RuntimeError("a bug in the middle of writing")
                    return dumps(self, name, value)

                monkeypatch.setattr(JSONSerializer, "dumps", fail_later)
            else:
                monkeypatch.setattr(os, failing.split(".")[1], crash)
    monkeypatch.undo()
    assert read(sessions_file) == previous
    assert [p.name for p in sessions_file.parent.iterdir()] == ["sessions.json"]  # no leftover
    messages = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    expected = ("cannot save 2 sessions", "saving the sessions failed")
    assert any(message.startswith(expected) for message in messages)
    assert len(manager.in_process) == 2  # not written: not let go of either


async def test_leftovers_of_a_crashed_write_are_removed_at_startup(
    new_app: Factory, sessions_file: Path
) -> None:
    leftover = sessions_file.with_name(".sessions.json.abc123.tmp")
    leftover.write_text('{"format": "servletsession.MemoryStore", "version": 1, "sess')
    app, _ = new_app()
    async with running(app):
        assert not leftover.exists()


# --- what cannot be read -------------------------------------------------------------------------


def _document(**changes: Any) -> dict[str, Any]:
    return {"format": "servletsession.MemoryStore", "version": 1, "sessions": [], **changes}


UNREADABLE = {
    "not JSON": b'{"format": "servletsession.MemoryStore", "version": 1, "sessions": [',
    "empty": b"",
    "not an object": b"[]",
    "another format": json.dumps(_document(format="something.else")).encode(),
    "a newer version": json.dumps(_document(version=2)).encode(),
    "sessions not a list": json.dumps(_document(sessions={"a": 1})).encode(),
    "binary": b"\x80\x04\x95pickle",
}


@pytest.mark.parametrize("content", UNREADABLE.values(), ids=UNREADABLE.keys())
async def test_an_unreadable_file_is_logged_and_the_app_starts_empty(
    new_app: Factory, sessions_file: Path, caplog: pytest.LogCaptureFixture, content: bytes
) -> None:
    put(sessions_file, content)
    app, manager = new_app()
    with caplog.at_level(logging.ERROR, logger="servletsession"):
        async with running(app):
            assert manager.in_process == {}
            async with client(app) as http:  # and the app works
                assert (await http.post("/set/x", params={"value": "1"})).status_code == 200
            errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
            assert len(errors) == 1
            assert "cannot restore the saved sessions" in errors[0]
            assert str(sessions_file) in errors[0]
            assert read(sessions_file) == content  # left for a look; replaced at shutdown
    assert saved(sessions_file)["version"] == 1


@pytest.mark.parametrize(
    ("problem", "logged"),
    [
        ("group-writable", "others may write to it"),
        ("world-writable", "others may write to it"),
        ("another owner", "not to this process's user"),
        ("unreadable", "Permission denied"),
    ],
)
async def test_a_file_that_cannot_be_trusted_or_opened_is_refused(
    new_app: Factory,
    sessions_file: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    problem: str,
    logged: str,
) -> None:
    """Someone who may write the file could plant sessions (IDs they know) in it."""
    app, _ = new_app()
    async with running(app):
        cookie = await log_in(app)
    if problem == "group-writable":
        put(sessions_file, read(sessions_file), 0o620)
    elif problem == "world-writable":
        put(sessions_file, read(sessions_file), 0o602)
    elif problem == "another owner":
        monkeypatch.setattr(os, "geteuid", lambda: os.stat(sessions_file).st_uid + 1)
    else:  # chmod 000 would not stop root: refuse the open() itself
        real_open = os.open

        def denied(path: Any, *args: Any, **kwargs: Any) -> int:
            if Path(path) == sessions_file:
                raise PermissionError(13, "Permission denied")
            return real_open(path, *args, **kwargs)

        monkeypatch.setattr(os, "open", denied)
    app, manager = new_app()
    with caplog.at_level(logging.ERROR, logger="servletsession"):
        async with running(app):
            monkeypatch.undo()
            assert manager.in_process == {}
            assert await ask(app, cookie) is None
    assert any(logged in r.getMessage() for r in caplog.records), caplog.text
    assert exists(sessions_file)  # left in place


async def test_a_missing_file_is_a_silent_first_start(
    new_app: Factory, caplog: pytest.LogCaptureFixture
) -> None:
    app, manager = new_app()
    with caplog.at_level(logging.INFO, logger="servletsession"):
        async with running(app):
            assert manager.in_process == {}
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []


async def test_a_broken_session_is_left_out_and_the_others_restored(
    new_app: Factory, sessions_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    app, _ = new_app()
    async with running(app):
        good = await log_in(app, "good")
        model_gone = await log_in(app, "model")
        for user in ("bad-time", "bad-id"):
            await log_in(app, user)
    document = saved(sessions_file)
    by_user = {s["attributes"]["user"][1]: s for s in document["sessions"]}
    by_user["bad-time"]["creation_time"] = "yesterday"
    by_user["bad-id"]["id"] = "not-an-id"
    by_user["model"]["attributes"]["note"][1] = "somewhere.Removed"
    document["sessions"].append(17)
    put(sessions_file, json.dumps(document).encode())

    app, manager = new_app()
    with caplog.at_level(logging.WARNING, logger="servletsession"):
        async with running(app):
            assert (await ask(app, good))["user"] == "good"
            assert await ask(app, model_gone) is None  # a fresh session for that browser
            assert len(manager.in_process) == 1
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("creation_time" in w for w in warnings), warnings
    assert any("not an ID of the shape this library issues" in w for w in warnings), warnings
    assert any("'somewhere.Removed' is not on the allow-list" in w for w in warnings), warnings
    assert any("#4" in w for w in warnings), warnings
    assert not any(model_gone.split(".")[0] in r.getMessage() for r in caplog.records)


def record(session_id: str, now: float, **fields: Any) -> dict[str, Any]:
    """A saved session as the file holds it, with ``fields`` edited in."""
    return {
        "id": session_id, "creation_time": now - 100, "last_accessed_time": now - 10,
        "this_accessed_time": now - 10, "idle_since": now - 5, "max_inactive_interval": 1800,
        "absolute_timeout": None, "principal": "ada", "is_new": False,
        "attributes": {"user": ["j", "ada"]}, **fields,
    }  # fmt: skip


def file_of(*records: dict[str, Any], now: float) -> bytes:
    return json.dumps(
        {"format": FORMAT, "version": VERSION, "saved_at": now, "sessions": list(records)}
    ).encode()


HOSTILE: dict[str, dict[str, Any]] = {
    "interval_overflowing_a_float": {"max_inactive_interval": 10**400},
    "interval_past_the_managers_range": {"max_inactive_interval": 2**31},
    "interval_below_the_managers_range": {"max_inactive_interval": -(2**31)},
    "interval_a_bool": {"max_inactive_interval": True},
    "absolute_timeout_huge": {"absolute_timeout": 1e300},
    "absolute_timeout_zero": {"absolute_timeout": 0},
    "idle_since_far_future": {"idle_since": 1e300},
    "everything_far_future": {
        "creation_time": 1e300, "last_accessed_time": 1e300, "this_accessed_time": 1e300,
        "idle_since": 1e300,
    },
    "creation_before_the_epoch": {"creation_time": -1.0},
    "accessed_before_created": {"last_accessed_time": 1.0},
    "idle_before_created": {"idle_since": 1.0},
    "principal_with_nul": {"principal": "al\x00ice"},
    "principal_empty": {"principal": ""},
    "principal_too_long": {"principal": "a" * 256},
    "unknown_field": {"planted": True},
}  # fmt: skip


@pytest.mark.parametrize("edit", HOSTILE.values(), ids=HOSTILE.keys())
async def test_a_hostile_record_is_left_out_alone_and_its_cookie_gets_no_session(
    new_app: Factory,
    sessions_file: Path,
    clock: FakeClock,
    caplog: pytest.LogCaptureFixture,
    edit: dict[str, Any],
) -> None:
    good, bad = new_session_id(), new_session_id()
    put(
        sessions_file,
        file_of(record(good, clock.now), record(bad, clock.now, **edit), now=clock.now),
    )
    app, manager = new_app()
    middleware = SessionMiddleware(Starlette(), secret_key=SECRET, manager=manager)
    with caplog.at_level(logging.WARNING, logger="servletsession"):
        async with running(app):
            assert list(manager.in_process) == [good]
            assert [s.id for s in await manager.sessions_of("ada")] == [good]
            async with client(app) as http:
                answer = await http.get("/whoami", headers=cookie_header(middleware.signed_id(bad)))
            assert answer.status_code == 200
            assert answer.json() is None  # a fresh start for that browser, never a 500
            assert (await ask(app, middleware.signed_id(good)))["user"] == "ada"
    logged = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert any(session_ref(bad) in line and "left out" in line for line in logged), logged
    assert not any(bad in line for line in logged)  # named by its ref, never its ID


async def test_a_saved_time_a_little_ahead_of_the_clock_is_accepted(
    new_app: Factory, sessions_file: Path, clock: FakeClock
) -> None:
    """The clock may have been stepped back a little since the save (CLOCK_SKEW)."""
    ahead = clock.now + CLOCK_SKEW - 1
    session_id = new_session_id()
    edit = {"last_accessed_time": ahead, "this_accessed_time": ahead, "idle_since": ahead}
    put(sessions_file, file_of(record(session_id, clock.now, **edit), now=clock.now))
    app, manager = new_app()
    async with running(app):
        assert list(manager.in_process) == [session_id]


async def test_a_session_whose_clock_stepped_back_while_it_lived_survives_a_restart(
    sessions_file: Path, clock: FakeClock
) -> None:
    """A request that joins after the wall clock was stepped back (NTP) records an access time a
    little before the creation time: the library wrote it, so the restore takes it back."""
    async with SessionManager(MemoryStore(persist_to=sessions_file), clock=clock) as manager:
        session = manager.create_session()
        session["n"] = 1
        await manager.release(session)
        clock.advance(-0.001)
        joined = await manager.find(session.id)
        assert joined is not None
        assert joined._this_accessed_time < joined.creation_time
        await manager.release(joined)
    clock.advance(10)
    async with SessionManager(MemoryStore(persist_to=sessions_file), clock=clock) as manager:
        found = await manager.find(session.id)
        assert found is not None
        assert found["n"] == 1
        await manager.release(found)


async def test_a_record_that_fails_unexpectedly_costs_only_itself(
    new_app: Factory,
    sessions_file: Path,
    clock: FakeClock,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Whatever goes wrong with one record (here: its deadline cannot be worked out), it is left
    out on its own: the store holds nothing of it, the records after it are restored."""
    first, bad, last = new_session_id(), new_session_id(), new_session_id()
    records = [record(first, clock.now), record(bad, clock.now), record(last, clock.now)]
    put(sessions_file, file_of(*records, now=clock.now))
    expires_at = HttpSession._expires_at

    def broken(session: HttpSession) -> float:
        if session._id == bad:
            raise OverflowError("int too large to convert to float")
        return expires_at(session)

    monkeypatch.setattr(HttpSession, "_expires_at", broken)
    app, manager = new_app()
    with caplog.at_level(logging.WARNING, logger="servletsession"):
        async with running(app):
            assert sorted(manager.in_process) == sorted([first, last])
            assert sorted(s.id for s in await manager.sessions_of("ada")) == sorted([first, last])
            assert bad not in {entry[1] for entry in manager.store._deadlines}  # type: ignore[attr-defined]
            monkeypatch.undo()
    logged = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert any(f"saved session {session_ref(bad)}" in line for line in logged), logged


def test_memory_store_add_holds_nothing_of_a_session_it_cannot_schedule(clock: FakeClock) -> None:
    store = MemoryStore()
    manager = SessionManager(store, clock=clock)
    session = HttpSession(manager, new_session_id(), creation_time=clock.now,
                          max_inactive_interval=10**400, absolute_timeout=None)  # fmt: skip
    session._principal = "ada"
    with pytest.raises(OverflowError):
        store.add(session)
    assert session.id not in store
    assert store._by_principal == {}
    assert not session._stored


class Stuck(BaseModel):
    """A value whose async activation listeners never finish (until the test says so)."""

    text: str
    gate: ClassVar[asyncio.Event]

    async def session_will_passivate(self, event: HttpSessionEvent) -> None:
        await Stuck.gate.wait()

    async def session_did_activate(self, event: HttpSessionEvent) -> None:
        await Stuck.gate.wait()


async def test_a_hanging_passivation_listener_delays_the_save_by_shutdown_timeout_at_most(
    sessions_file: Path, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    Stuck.gate = asyncio.Event()
    manager = SessionManager(
        MemoryStore(persist_to=sessions_file), models=[Stuck], clock=clock, shutdown_timeout=0.05
    )
    await manager.start()
    session = manager.create_session()
    session["stuck"] = Stuck(text="kept")
    await manager.release(session)
    with caplog.at_level(logging.WARNING, logger="servletsession"):
        closing = asyncio.create_task(manager.close())
        try:
            done, _ = await asyncio.wait([closing], timeout=2)  # for ever, were it unbounded
        finally:
            Stuck.gate.set()  # let the listener end (it is no longer waited for)
            await closing
    assert done == {closing}
    assert saved(sessions_file)["sessions"][0]["attributes"]["stuck"][2] == '{"text":"kept"}'
    assert any("did not finish within shutdown_timeout" in r.getMessage() for r in caplog.records)


async def test_a_hanging_activation_listener_delays_startup_by_shutdown_timeout_at_most(
    sessions_file: Path, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    Stuck.gate = asyncio.Event()
    session_id = new_session_id()
    stuck = ["m", f"{__name__}.Stuck", '{"text":"kept"}']
    edit = {"attributes": {"stuck": stuck}}
    put(sessions_file, file_of(record(session_id, clock.now, **edit), now=clock.now))
    manager = SessionManager(
        MemoryStore(persist_to=sessions_file), models=[Stuck], clock=clock, shutdown_timeout=0.05
    )
    with caplog.at_level(logging.WARNING, logger="servletsession"):
        starting = asyncio.create_task(manager.start())
        try:
            done, _ = await asyncio.wait([starting], timeout=2)  # for ever, were it unbounded
        finally:
            Stuck.gate.set()
            await starting
    assert done == {starting}
    assert list(manager.in_process) == [session_id]  # restored all the same
    assert any(
        "session_did_activate listeners did not finish" in r.getMessage() for r in caplog.records
    )
    await manager.close()


@pytest.mark.parametrize(
    ("options", "says"),
    [
        ({"max_inactive_interval": 10**400}, "max_inactive_interval: must be at most"),
        ({"max_inactive_interval": -(2**31)}, "max_inactive_interval: must be at most"),
        ({"max_inactive_interval": True}, "max_inactive_interval: Input should be a valid integer"),
        ({"max_inactive_interval": "1800"}, "max_inactive_interval: Input should be a valid integ"),
        ({"max_inactive_interval": 1800.0}, "max_inactive_interval: Input should be a valid integ"),
        ({"absolute_timeout": float("nan")}, "absolute_timeout: Input should be a finite number"),
        ({"absolute_timeout": float("inf")}, "absolute_timeout: Input should be a finite number"),
        ({"absolute_timeout": "nan"}, "absolute_timeout: Input should be a valid number"),
        ({"absolute_timeout": True}, "absolute_timeout: Input should be a valid number"),
        ({"absolute_timeout": 1e300}, "absolute_timeout: must be a positive number of seconds"),
        ({"reaper_interval": float("nan")}, "reaper_interval: Input should be a finite number"),
        ({"lock_timeout": float("inf")}, "lock_timeout: Input should be a finite number"),
        ({"lock_timeout": True}, "lock_timeout: Input should be a valid number"),
        ({"websocket_touch_interval": float("nan")}, "websocket_touch_interval: Input should be"),
        ({"shutdown_timeout": float("nan")}, "shutdown_timeout: Input should be a finite number"),
        ({"shutdown_timeout": "10"}, "shutdown_timeout: Input should be a valid number"),
        ({"retry_after": True}, "retry_after: Input should be a valid integer"),
        ({"retry_after": 10**400}, "retry_after: must be at most"),
        ({"max_active_sessions": True}, "max_active_sessions: Input should be a valid integer"),
        ({"max_sessions_per_principal": 2.0}, "max_sessions_per_principal: Input should be a vali"),
    ],
)
def test_manager_numbers_refuse_nan_infinity_bools_and_strings(
    options: dict[str, Any], says: str
) -> None:
    with pytest.raises(ConfigurationError, match=re.escape(says)):
        SessionManager(**options)


def test_manager_float_options_take_ints_and_intervals_take_zero_or_less() -> None:
    manager = SessionManager(
        absolute_timeout=3600, reaper_interval=1, lock_timeout=2, shutdown_timeout=5,
        websocket_touch_interval=30, max_inactive_interval=-1,
    )  # fmt: skip
    assert manager.settings.absolute_timeout == 3600
    assert manager.settings.max_inactive_interval == -1  # Servlet: zero or less, never idles


# --- configuration -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("", "takes the path of a file"),
        (17, "takes the path of a file"),
        (".", "is a directory"),
        ("/nonexistent-dir-for-servletsession/sessions.json", "does not exist"),
        ("/dev/null", "is not a regular file"),
    ],
)
def test_persist_to_nonsense_is_a_configuration_error(path: Any, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        MemoryStore(persist_to=path)


def test_a_relative_path_is_fixed_at_construction(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    store = MemoryStore(persist_to="sessions.json")
    monkeypatch.chdir("/")
    assert store.file is not None
    assert store.file.path == tmp_path / "sessions.json"


async def test_sessions_before_any_start_log_one_warning(
    sessions_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    manager = SessionManager(MemoryStore(persist_to=sessions_file))
    app = Starlette(routes=ROUTES)
    app.add_middleware(SessionMiddleware, secret_key=SECRET, manager=manager)
    with caplog.at_level(logging.WARNING, logger="servletsession"):
        async with client(app) as http:  # no lifespan
            await http.post("/login", params={"user": "a"})
            await http.post("/login", params={"user": "b"})
    warnings = [r.getMessage() for r in caplog.records if "never started" in r.getMessage()]
    assert len(warnings) == 1
    assert "lifespan" in warnings[0]
    await manager.close()
    assert exists(sessions_file)  # close() still saves what there is
