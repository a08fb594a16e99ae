"""The ``servletsession`` command against real stores: SQLite, PostgreSQL and Redis.

Commands run in-process through ``main(argv)``, and as a subprocess where the exit status and
stderr are the point (one line, never a traceback).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import json
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import inspect

from servletsession import SessionManager
from servletsession.cli import main
from servletsession.cookies import session_ref
from servletsession.stores import RedisStore, SQLStore
from servletsession.stores.base import SessionStore

from .stores.conftest import POSTGRES_URL, REDIS_URL, require

KINDS = ["sqlite", "postgresql", "redis"]
LIST_KEYS = {"ref", "principal", "created", "last_accessed", "idle_seconds",
             "max_inactive_interval", "attributes", "bytes"}  # fmt: skip


@dataclass
class Target:
    """A store the CLI is pointed at: its URL, and the prefix the "app" uses."""

    kind: str
    url: str
    prefix: str | None = None
    ids: list[str] = field(default_factory=list)

    def argv(self, command: str, *more: str, prefix: str | None = None) -> list[str]:
        chosen = prefix if prefix is not None else self.prefix
        return [command, "--store", self.url, *(["--prefix", chosen] if chosen else []), *more]

    def store(self, prefix: str | None = None) -> SessionStore:
        chosen = prefix if prefix is not None else self.prefix
        if self.kind == "redis":
            return RedisStore(self.url, prefix=chosen or "servletsession:")
        return SQLStore(self.url, table_prefix=chosen or "servletsession_")

    def seed(self, *sessions: dict[str, Any]) -> list[str]:
        """Store sessions: ``principal``, ``attributes``, ``idle`` (seconds since their last
        access), ``interval`` (max_inactive_interval)."""

        async def make() -> list[str]:
            now = [0.0]
            made = []
            for spec in sessions:
                interval = spec.get("interval", 86400)
                manager = SessionManager(
                    self.store(), clock=lambda: now[0], max_inactive_interval=interval
                )
                now[0] = time.time() - spec.get("idle", 0)
                session = manager.create_session()
                for name, value in spec.get("attributes", {"n": 1}).items():
                    session[name] = value
                session.principal = spec.get("principal")
                await manager.release(session)
                made.append(session.id)
                await manager.close()
            return made

        ids = asyncio.run(make())
        self.ids += ids
        return ids

    def clean(self) -> None:
        async def drop() -> None:
            store = self.store()
            if isinstance(store, SQLStore):
                async with store.engine.begin() as conn:
                    await conn.run_sync(store.metadata.drop_all)
            else:
                assert isinstance(store, RedisStore)
                keys = [key async for key in store.client.scan_iter(match=f"{store.prefix}*")]
                if keys:
                    await store.client.delete(*keys)
            await store.close()

        asyncio.run(drop())


def target_for(kind: str, tmp_path: Path) -> Target:
    tag = uuid.uuid4().hex[:8]
    if kind == "sqlite":
        return Target(kind, f"sqlite:///{tmp_path}/sessions.db")
    asyncio.run(require(kind))
    if kind == "postgresql":
        return Target(kind, POSTGRES_URL, f"cli{tag}_")
    return Target(kind, REDIS_URL, f"clitest:{tag}:")


@pytest.fixture(params=KINDS)
def target(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Target]:
    chosen = target_for(request.param, tmp_path)
    yield chosen
    chosen.clean()


@pytest.fixture
def sqlite_target(tmp_path: Path) -> Target:
    return Target("sqlite", f"sqlite:///{tmp_path}/sessions.db")


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def json_lines(out: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.splitlines()]


def subprocess_run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "servletsession", *argv], capture_output=True, text=True, timeout=60
    )


# --- what the commands show and do --------------------------------------------------------------


def test_stats_and_list_show_sessions_by_ref_never_by_id(
    target: Target, capsys: pytest.CaptureFixture[str]
) -> None:
    ids = target.seed({"principal": "ada"}, {"principal": "ada"}, {"principal": "bob"})
    code, out, _ = run(target.argv("stats"), capsys)
    assert code == 0
    assert "sessions: 3" in out
    code, out, _ = run(target.argv("list", "--json"), capsys)
    assert code == 0
    rows = json_lines(out)
    assert sorted(row["ref"] for row in rows) == sorted(session_ref(i) for i in ids)
    assert not any(i in out for i in ids)
    assert all(set(row) == LIST_KEYS for row in rows)
    assert sorted(row["principal"] for row in rows) == ["ada", "ada", "bob"]


def test_json_output_of_every_command_has_stable_keys_and_iso_times(
    sqlite_target: Target, capsys: pytest.CaptureFixture[str]
) -> None:
    (session_id,) = sqlite_target.seed({"principal": "ada", "idle": 90})
    sqlite_target.seed({"principal": "bob", "idle": 7200, "interval": 60})  # expired
    code, out, _ = run(sqlite_target.argv("stats", "--json"), capsys)
    assert code == 0
    assert json.loads(out) == {"store": "sqlite", "sessions": 2, "note": json.loads(out)["note"]}
    code, out, _ = run(sqlite_target.argv("list", "--json", "--principal", "ada"), capsys)
    (row,) = json_lines(out)
    assert row["ref"] == session_ref(session_id)
    assert row["attributes"] == ["n"]
    assert row["max_inactive_interval"] == 86400
    assert 89 <= row["idle_seconds"] < 120
    created = dt.datetime.fromisoformat(row["created"])
    assert created.tzinfo is not None
    assert abs(created.timestamp() - (time.time() - 90)) < 30
    code, out, _ = run(sqlite_target.argv("purge-expired", "--json"), capsys)
    assert code == 0
    purged = json.loads(out)
    assert (purged["removed"], purged["app_counters_updated"]) == (1, False)
    code, out, _ = run(sqlite_target.argv("invalidate", "--json", "--principal", "ada"), capsys)
    assert code == 0
    done = json.loads(out)
    assert set(done) == {"invalidated", "ref", "principal", "app_counters_updated", "note"}
    assert (done["invalidated"], done["principal"], done["ref"]) == (1, "ada", None)


def test_invalidate_by_ref_and_by_principal(
    target: Target, capsys: pytest.CaptureFixture[str]
) -> None:
    ids = target.seed({"principal": "ada"}, {"principal": "ada"}, {"principal": "ada"})
    code, out, _ = run(target.argv("invalidate", "--ref", session_ref(ids[0])), capsys)
    assert code == 0
    assert f"invalidated session {session_ref(ids[0])}" in out
    code, out, _ = run(target.argv("invalidate", "--principal", "ada"), capsys)
    assert code == 0
    assert "invalidated 2 session(s) of principal 'ada'" in out
    assert run(target.argv("stats"), capsys)[1].startswith("sessions: 0")
    code, _, err = run(target.argv("invalidate", "--ref", session_ref(ids[0])), capsys)
    assert code == 1
    # (Redis: an empty prefix may add a warning line; see the wrong-prefix test.)
    last_line = err.splitlines()[-1]
    assert last_line == f"servletsession: error: no session with ref {session_ref(ids[0])}"


def test_purge_expired_removes_only_what_is_due(
    target: Target, capsys: pytest.CaptureFixture[str]
) -> None:
    target.seed(*[{"idle": 7200, "interval": 60}] * 3, {}, {})
    code, out, _ = run(target.argv("purge-expired"), capsys)
    assert code == 0
    assert "removed 3 expired session(s)" in out
    assert run(target.argv("stats"), capsys)[1].startswith("sessions: 2")


def test_list_filters_by_principal(target: Target, capsys: pytest.CaptureFixture[str]) -> None:
    ada = target.seed({"principal": "ada"}, {"principal": "ada"})
    target.seed({"principal": "bob"}, {})
    code, out, _ = run(target.argv("list", "--json", "--principal", "ada"), capsys)
    assert code == 0
    assert sorted(row["ref"] for row in json_lines(out)) == sorted(map(session_ref, ada))
    code, out, _ = run(target.argv("list", "--json", "--principal", "nobody"), capsys)
    assert (code, out) == (0, "")


def test_list_idle_over_takes_seconds_or_units(
    target: Target, capsys: pytest.CaptureFixture[str]
) -> None:
    fresh = target.seed({"idle": 5})
    recent = target.seed({"idle": 20 * 60})
    old = target.seed({"idle": 3 * 3600})
    for over, expected in (("90", recent + old), ("10m", recent + old), ("2h", old),
                           ("1d", []), ("0", fresh + recent + old)):  # fmt: skip
        code, out, _ = run(target.argv("list", "--json", "--idle-over", over), capsys)
        assert code == 0
        assert sorted(row["ref"] for row in json_lines(out)) == sorted(map(session_ref, expected))


def test_list_pages_with_limit_and_offset_without_dropping_a_row(
    target: Target, capsys: pytest.CaptureFixture[str]
) -> None:
    ids = target.seed(*[{"principal": "ada"}] * 5)
    for filters in ([], ["--principal", "ada"]):
        seen: list[str] = []
        for offset in (0, 2, 4):
            argv = target.argv("list", "--json", "--limit", "2", "--offset", str(offset), *filters)
            code, out, _ = run(argv, capsys)
            assert code == 0
            seen += [row["ref"] for row in json_lines(out)]
        assert sorted(seen) == sorted(map(session_ref, ids))


def test_markup_in_principals_and_attribute_names_is_printed_literally(
    target: Target, capsys: pytest.CaptureFixture[str]
) -> None:
    target.seed({"principal": "[/x]", "attributes": {"[bold]name": 1}},
                {"principal": "[bold]ada[/bold]"},
                {"principal": "\x1b[31mred"})  # fmt: skip
    code, out, err = run(target.argv("list"), capsys)
    assert (code, err) == (0, "")
    assert "[/x]" in out
    assert "[bold]name" in out
    assert "[bold]ada[/bold]" in out
    assert "\x1b" not in out
    assert "\\x1b[31mred" in out
    code, out, err = run(target.argv("invalidate", "--principal", "[/x]"), capsys)
    assert (code, err) == (0, "")
    assert "invalidated 1 session(s) of principal '[/x]'" in out
    code, out, _ = run(target.argv("invalidate", "--principal", "[bold]ada[/bold]"), capsys)
    assert "of principal '[bold]ada[/bold]'" in out


def test_commands_that_end_sessions_say_the_apps_counters_do_not_include_them(
    target: Target, capsys: pytest.CaptureFixture[str]
) -> None:
    async def scenario() -> tuple[int, int, int, int]:
        app = SessionManager(target.store())  # an app process, with its own counters
        for _ in range(3):
            session = app.create_session()
            session.principal = "ada"
            await app.release(session)
        ended = await asyncio.to_thread(main, target.argv("invalidate", "--principal", "ada"))
        purged = await asyncio.to_thread(main, target.argv("purge-expired"))
        stats = await app.stats()
        await app.close()
        return ended, purged, stats.active, stats.invalidated

    ended, purged, active, invalidated = asyncio.run(scenario())
    out = capsys.readouterr().out
    assert (ended, purged) == (0, 0)
    assert "invalidated 3 session(s)" in out
    assert out.count("note: the apps' counters (invalidated, expired, max_active") == 2
    assert "do not include sessions ended here" in out
    # What the note says: the store's count is right; the app's own counter cannot know.
    assert (active, invalidated) == (0, 0)


# --- failures: one line, non-zero exit, nothing created -----------------------------------------


def assert_one_line(run_: subprocess.CompletedProcess[str], code: int, message: str) -> None:
    assert run_.returncode == code, run_.stderr
    assert message in run_.stderr
    assert len(run_.stderr.strip().splitlines()) == 1, run_.stderr
    assert run_.stderr.startswith("servletsession: error: ")
    assert "Traceback" not in run_.stderr


@pytest.mark.parametrize(
    ("argv", "code", "message"),
    [
        (["stats", "--store", "memory://"], 2, "lives inside the app's process"),
        (["stats", "--store", "mongodb://x"], 2, "is not one of"),
        (["stats", "--store", "sqlite:///:memory:"], 2, "in-memory SQLite database"),
        (["stats", "--store", "sqlite:///{tmp}/nope.db"], 1, "no SQLite database at"),
        (["list", "--store", "sqlite:///{tmp}/nope.db"], 1, "no SQLite database at"),
        (["purge-expired", "--store", "sqlite:///{tmp}/nope.db"], 1, "no SQLite database"),
        (["stats", "--store", "sqlite:///{tmp}/text.db"], 1, "file is not a database"),
        (["stats", "--store", "sqlite:///{tmp}/other.db"], 1, "no table 'servletsession_sessions'"),
        (["stats", "--store", "sqlite:///{tmp}/other.db", "--prefix", "a-b"], 2, "table_prefix"),
        (["list", "--store", "sqlite:///x.db", "--limit", "-1"], 2, "at least 1, got '-1'"),
        (["list", "--store", "sqlite:///x.db", "--limit", "0"], 2, "at least 1, got '0'"),
        (["list", "--store", "sqlite:///x.db", "--offset", "-3"], 2, "at least 0"),
        (["list", "--store", "sqlite:///x.db", "--idle-over", "3x"], 2, "such as 90, 10m"),
        (["invalidate", "--store", "sqlite:///x.db", "--ref", "nope"], 2, "12 hex digits"),
        (["invalidate", "--store", "sqlite:///x.db"], 2, "one of the arguments --ref"),
        (["invalidate", "--store", "sqlite:///x.db", "--principal", ""], 2, "1 to 255"),
        (["stats"], 2, "the following arguments are required: --store"),
        (["frobnicate"], 2, "invalid choice"),
    ],
)
def test_errors_are_one_clear_line_and_a_non_zero_exit(
    argv: list[str], code: int, message: str, tmp_path: Path
) -> None:
    (tmp_path / "text.db").write_text("not a database\n")
    sqlite3.connect(tmp_path / "other.db").execute("create table t (x)").connection.close()
    argv = [arg.replace("{tmp}", str(tmp_path)) for arg in argv]
    assert_one_line(subprocess_run(argv), code, message)
    assert not (tmp_path / "nope.db").exists()
    assert not Path("x.db").exists()


@pytest.mark.parametrize(
    ("store", "message"),
    [
        ("postgresql://postgres@127.0.0.1:1/test", "cannot reach the database"),
        ("postgresql://nobody-here@127.0.0.1:5432/test", 'role "nobody-here" does not exist'),
        ("postgresql://postgres@127.0.0.1:5432/no_such_db", 'database "no_such_db" does not'),
        ("redis://127.0.0.1:1/0", "cannot reach Redis"),
        ("redis://ghost:secret@127.0.0.1:6379/15", "AuthenticationError"),
    ],
)
def test_unreachable_servers_and_refused_credentials_are_one_line(store: str, message: str) -> None:
    if "127.0.0.1:1/" not in store:
        asyncio.run(require(store.split(":")[0]))
    result = subprocess_run(["stats", "--store", store])
    assert_one_line(result, 1, message)
    assert "secret" not in result.stderr


def test_in_process_main_returns_the_exit_status(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(["list", "--store", "sqlite:///x.db", "--limit", "-1"], capsys)
    assert (code, out) == (2, "")
    assert err.count("\n") == 1
    assert main(["--help"]) == 0


def test_a_wrong_sql_prefix_is_an_error_and_creates_no_tables(tmp_path: Path) -> None:
    target = target_for("postgresql", tmp_path)
    target.seed({"principal": "ada"})  # the app's tables, under the app's prefix
    typo = "typo" + uuid.uuid4().hex[:6] + "_"
    try:
        for command in (["stats"], ["list"], ["list", "--principal", "ada"], ["purge-expired"],
                        ["invalidate", "--principal", "ada"]):  # fmt: skip
            result = subprocess_run(target.argv(*command, prefix=typo))
            assert_one_line(result, 1, f"no table '{typo}sessions'")
            assert repr(target.prefix) in result.stderr  # says which prefix has the tables
        assert not asyncio.run(exists_under(target, typo))
    finally:
        target.clean()


def test_an_empty_redis_prefix_is_warned_about_and_gets_no_keys(tmp_path: Path) -> None:
    target = target_for("redis", tmp_path)
    target.seed({"principal": "ada"})  # the app's sessions, under the app's prefix
    typo = "typo" + uuid.uuid4().hex[:6] + ":"
    try:
        for command in (["stats"], ["list"], ["list", "--principal", "ada"]):
            result = subprocess_run(target.argv(*command, prefix=typo))
            assert result.returncode == 0
            assert result.stderr.startswith(
                f"servletsession: warning: no session under prefix '{typo}'"
            )
            assert len(result.stderr.splitlines()) == 1
        assert not asyncio.run(exists_under(target, typo))
    finally:
        target.clean()


async def exists_under(target: Target, prefix: str) -> bool:
    store = target.store(prefix)
    try:
        if isinstance(store, SQLStore):
            async with store.engine.connect() as conn:
                names = await conn.run_sync(lambda sync: inspect(sync).get_table_names())
            return any(name.startswith(prefix) for name in names)
        assert isinstance(store, RedisStore)
        return bool([key async for key in store.client.scan_iter(match=f"{prefix}*")])
    finally:
        await store.close()


def test_read_only_commands_create_no_tables_in_an_existing_sqlite_file(tmp_path: Path) -> None:
    path = tmp_path / "app.db"
    sqlite3.connect(path).execute("create table mine (x)").connection.close()
    for command in ("stats", "list", "purge-expired"):
        assert_one_line(subprocess_run([command, "--store", f"sqlite:///{path}"]), 1, "no table")
    with sqlite3.connect(path) as conn:
        tables = [row[0] for row in conn.execute("select name from sqlite_master")]
    assert tables == ["mine"]


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("command", [["stats"], ["list"], ["list", "--principal", "ada"]])
def test_read_only_commands_leave_an_sqlite_file_byte_for_byte_as_it_was(
    command: list[str], tmp_path: Path
) -> None:
    other = tmp_path / "other.db"  # another app's database, rollback journal (SQLite's default)
    sqlite3.connect(other).execute("create table t (x)").connection.close()
    empty = tmp_path / "empty.db"
    empty.touch()
    for path in (other, empty):
        before = digest(path)
        assert main([*command, "--store", f"sqlite:///{path}"]) == 1  # no table
        assert digest(path) == before  # not switched to WAL, not made a database
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty.db", "other.db"]
    with sqlite3.connect(other) as conn:
        assert conn.execute("pragma journal_mode").fetchone()[0] == "delete"


def test_read_only_commands_read_the_apps_wal_database_and_writing_ones_still_write(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = Target("sqlite", f"sqlite:///{tmp_path}/app db%.db")  # escaped in the SQLite URI
    (kept,) = target.seed({"principal": "ada"})
    target.seed({"principal": "bob", "idle": 10, "interval": 1})  # expired
    path = tmp_path / "app db%.db"
    before = digest(path)
    code, out, _ = run(target.argv("stats", "--json"), capsys)
    assert (code, json_lines(out)[0]["sessions"]) == (0, 2)
    code, out, _ = run(target.argv("list", "--json"), capsys)
    assert code == 0
    assert {row["principal"] for row in json_lines(out)} == {"ada", "bob"}
    assert digest(path) == before
    assert run(target.argv("purge-expired"), capsys)[0] == 0
    assert run(target.argv("invalidate", "--ref", session_ref(kept)), capsys)[0] == 0
    code, out, _ = run(target.argv("stats", "--json"), capsys)
    assert json_lines(out)[0]["sessions"] == 0


def test_error_lines_show_control_characters_escaped(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(["stats", "--store", "redis://127.0.0.1:1/0\x1b[2J\x1b[31mX"], capsys)
    assert code == 1
    assert "\x1b" not in err
    assert "\\x1b[2J" in err
    code, _, err = run(["stats", "--store", "mongodb://\x1b[31m"], capsys)
    assert (code, "\x1b" in err) == (2, False)


def test_a_principal_that_is_not_utf8_is_a_command_line_error(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # The byte 0xff on the command line arrives in sys.argv as the lone surrogate '\udcff'.
    for command in ("list", "invalidate"):
        argv = [command, "--store", "sqlite:///x.db", "--principal", "ada\udcff"]
        code, out, err = run(argv, capsys)
        assert (code, out) == (2, "")
        assert "valid UTF-8" in err
        assert "\\udcff" in err
        assert err.count("\n") == 1
    assert not Path("x.db").exists()
