"""The ``servletsession`` command against a real store (SQLite here; the store contract suite
covers the others)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from servletsession import SessionManager
from servletsession.cli import main
from servletsession.cookies import session_ref
from servletsession.stores import RedisStore, SQLStore


def seed(url: str, *, expired: int = 0, live: int = 2, principal: str = "ada") -> list[str]:
    async def make() -> list[str]:
        clock = [1_000.0]
        manager = SessionManager(
            SQLStore(url, save_period=0), clock=lambda: clock[0], max_inactive_interval=60
        )
        ids = []
        for index in range(expired + live):
            clock[0] = 1_000.0 if index < expired else 10**10
            session = manager.create_session()
            session["n"] = index
            session.principal = principal
            await manager.release(session)
            ids.append(session.id)
        await manager.close()
        return ids

    return asyncio.run(make())


def test_stats_and_list_show_sessions_by_ref_never_by_id(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"sqlite:///{tmp_path}/s.db"
    ids = seed(url, live=3)
    assert main(["stats", "--store", url]) == 0
    assert "sessions: 3" in capsys.readouterr().out
    assert main(["list", "--store", url, "--json"]) == 0
    out = capsys.readouterr().out
    assert sorted(line.split('"ref": "')[1][:12] for line in out.splitlines()) == sorted(
        session_ref(i) for i in ids
    )
    assert not any(i in out for i in ids)
    assert '"principal": "ada"' in out


def test_invalidate_by_ref_and_by_principal(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"sqlite:///{tmp_path}/s.db"
    ids = seed(url, live=3)
    assert main(["invalidate", "--store", url, "--ref", session_ref(ids[0])]) == 0
    assert main(["invalidate", "--store", url, "--principal", "ada"]) == 0
    assert "invalidated 2 session(s)" in capsys.readouterr().out
    assert main(["stats", "--store", url]) == 0
    assert "sessions: 0" in capsys.readouterr().out


def test_purge_expired_removes_only_what_is_due(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"sqlite:///{tmp_path}/s.db"
    seed(url, expired=5, live=2)
    assert main(["purge-expired", "--store", url]) == 0
    assert "removed 5 expired session(s)" in capsys.readouterr().out
    main(["stats", "--store", url])
    assert "sessions: 2" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["stats", "--store", "memory://"], "lives inside the app's process"),
        (["stats", "--store", "mongodb://x"], "not one of"),
        (["stats", "--store", "redis://127.0.0.1:1/0"], "store unavailable"),
        (
            ["invalidate", "--store", "sqlite:///:memory:", "--ref", "nope"],
            "no session with ref nope",
        ),
    ],
)
def test_errors_are_one_clear_line_and_a_non_zero_exit(argv: list[str], message: str) -> None:
    run = subprocess.run(
        [sys.executable, "-m", "servletsession", *argv], capture_output=True, text=True, timeout=60
    )
    assert run.returncode != 0
    assert message in run.stderr
    assert len(run.stderr.strip().splitlines()) == 1
    assert "Traceback" not in run.stderr


@pytest.mark.parametrize("kind", ["postgresql", "redis"])
def test_the_cli_works_on_postgresql_and_redis(
    kind: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from .stores.conftest import POSTGRES_URL, REDIS_URL, require

    asyncio.run(require(kind))
    tag = uuid.uuid4().hex[:8]
    url, prefix = (
        (POSTGRES_URL, f"cli{tag}_") if kind == "postgresql" else (REDIS_URL, f"clitest:{tag}:")
    )

    async def seed_and_clean(seed: bool) -> None:
        store = (
            SQLStore(url, table_prefix=prefix)
            if kind == "postgresql"
            else RedisStore(url, prefix=prefix)
        )
        manager = SessionManager(store)
        if seed:
            for name in ("ada", "bob"):
                session = manager.create_session()
                session["n"] = 1
                session.principal = name
                await manager.release(session)
        elif isinstance(store, SQLStore):
            async with store.engine.begin() as conn:
                await conn.run_sync(store.metadata.drop_all)
        else:
            keys = [key async for key in store.client.scan_iter(match=prefix + "*")]
            if keys:
                await store.client.delete(*keys)
        await manager.close()

    asyncio.run(seed_and_clean(True))
    try:
        assert main(["stats", "--store", url, "--prefix", prefix]) == 0
        assert "sessions: 2" in capsys.readouterr().out
        assert main(["invalidate", "--store", url, "--prefix", prefix, "--principal", "ada"]) == 0
        assert main(["list", "--store", url, "--prefix", prefix, "--json"]) == 0
        listed = capsys.readouterr().out
        assert '"principal": "bob"' in listed
        assert '"principal": "ada"' not in listed
        assert main(["purge-expired", "--store", url, "--prefix", prefix]) == 0
    finally:
        asyncio.run(seed_and_clean(False))
