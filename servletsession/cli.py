"""``servletsession`` (also ``python -m servletsession``): look after the sessions in a store.

    servletsession stats          --store redis://127.0.0.1:6379/0
    servletsession list           --store postgresql://app@db/app [--limit 50] [--json]
    servletsession invalidate     --store sqlite:///sessions.db (--ref REF | --principal USER)
    servletsession purge-expired  --store redis://127.0.0.1:6379/0

``--prefix`` names the Redis key prefix or the SQL table prefix the app uses. Errors are one line
on stderr and a non-zero exit. Purging from here fires no listener of the app's (they live in the
app's process): the app's own reaper is the usual way; this is for stores no app reaps.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import sys
from collections.abc import Sequence
from typing import Any

from .errors import ConfigurationError, StoreUnavailableError
from .inventory import invalidate_ref, list_sessions
from .manager import SessionManager
from .stores import store_from_url


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="servletsession", description="Look after the sessions in a store."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    for name, text in (
        ("stats", "how many sessions the store holds"),
        ("list", "sessions by ref, with principal, times and size"),
        ("invalidate", "invalidate one session (--ref) or all of a principal's (--principal)"),
        ("purge-expired", "remove every session past its deadline"),
    ):
        command = commands.add_parser(name, help=text, description=text)
        command.add_argument(
            "--store", required=True, help="redis://…, postgresql://… or sqlite:///…"
        )
        command.add_argument(
            "--prefix", help="the Redis key prefix or SQL table prefix the app uses"
        )
        if name == "list":
            command.add_argument("--limit", type=int, default=50)
            command.add_argument("--offset", type=int, default=0)
            command.add_argument("--json", action="store_true", help="one JSON object per line")
        if name == "invalidate":
            target = command.add_mutually_exclusive_group(required=True)
            target.add_argument("--ref", help="a session's ref, as `list` shows it")
            target.add_argument("--principal", help="every session of this principal")
    return parser


def _manager(url: str, prefix: str | None) -> SessionManager:
    if url.partition("://")[0].split("+")[0] == "memory":
        raise ConfigurationError(
            "the memory store lives inside the app's process; "
            "give a redis://, postgresql:// or sqlite:/// URL"
        )
    options: dict[str, Any] = {}
    if prefix is not None:
        options["prefix" if url.startswith(("redis", "rediss", "unix")) else "table_prefix"] = (
            prefix
        )
    return SessionManager(store_from_url(url, **options))


def _when(timestamp: float) -> str:
    return dt.datetime.fromtimestamp(timestamp, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


async def _run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
    from rich.table import Table

    console = Console()
    manager = _manager(args.store, args.prefix)
    try:
        if args.command == "stats":
            console.print(f"sessions: {await manager.store.count()}")
        elif args.command == "list":
            summaries = await list_sessions(manager, args.offset, args.limit)
            if args.json:
                for summary in summaries:
                    print(json.dumps(summary.as_dict()))
            else:
                table = Table(
                    "ref", "principal", "created (UTC)", "last access (UTC)", "attributes", "bytes"
                )
                for s in summaries:
                    size = "" if s.size is None else str(s.size)
                    created, accessed = _when(s.creation_time), _when(s.last_accessed_time)
                    table.add_row(
                        s.ref, s.principal or "", created, accessed, str(s.attributes), size
                    )
                console.print(table)
        elif args.command == "invalidate":
            if args.principal is not None:
                ended = await manager.invalidate_all(args.principal)
                console.print(f"invalidated {ended} session(s) of {args.principal!r}")
            elif await invalidate_ref(manager, args.ref):
                console.print(f"invalidated session {args.ref}")
            else:
                print(f"servletsession: error: no session with ref {args.ref}", file=sys.stderr)
                return 1
        else:
            total = 0
            columns = (
                SpinnerColumn(),
                BarColumn(),  # pulses: how many are due is not known in advance
                TextColumn("purging expired sessions: {task.completed} removed"),
                TimeElapsedColumn(),
            )
            with Progress(*columns, console=console, transient=False) as progress:
                task = progress.add_task("purge", total=None)
                while removed := await manager.reap():
                    total += removed
                    progress.update(task, completed=total)
            console.print(f"removed {total} expired session(s)")
        return 0
    finally:
        await manager.close()


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return asyncio.run(_run(args))
    except ImportError as exc:
        print(f"servletsession: error: {exc} (pip install 'servletsession[cli]')", file=sys.stderr)
    except (StoreUnavailableError, ConfigurationError, ValueError, OSError) as exc:
        print(f"servletsession: error: {exc}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
