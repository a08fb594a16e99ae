"""``servletsession`` (also ``python -m servletsession``): look after the sessions in a store.

    servletsession stats          --store redis://127.0.0.1:6379/0
    servletsession list           --store postgresql://app@db/app [--principal ada]
                                  [--idle-over 2h] [--limit 50] [--offset 0]
    servletsession invalidate     --store sqlite:///sessions.db (--ref REF | --principal USER)
    servletsession purge-expired  --store redis://127.0.0.1:6379/0

Every command takes ``--prefix`` (the Redis key prefix or SQL table prefix the app uses) and
``--json`` (machine-readable output, stable keys, ISO 8601 times). ``stats`` and ``list`` create
nothing; no command creates a SQLite file or tables. A failure is one line on stderr and exit 1
(the store cannot be used, or has no such session) or 2 (the command line is wrong).

The app's counters (``invalidated``, ``expired``, ``max_active``…) live in each app process:
sessions ended here are not in them, and the app's listeners do not fire. The commands that end
sessions say so in their output.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import re
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NoReturn

from .cli_stores import CommandError, open_manager, store_kind
from .cookies import session_ref
from .errors import ConfigurationError, StoreUnavailableError
from .inventory import PAGE, SessionSummary, find_by_ref, summarize
from .stores.faults import describe

if TYPE_CHECKING:
    from rich.console import Console

    from .manager import SessionManager
    from .session import HttpSession

#: What the commands that end sessions say about the apps' own views.
APP_COUNTERS_NOTE = (
    "the apps' counters (invalidated, expired, max_active in /api/stats and /metrics) are kept "
    "in each app process and do not include sessions ended here, and no listener of the app "
    "fired; the number of sessions (active) is read from the store and is right"
)
STATS_NOTE = (
    "created, expired, invalidated and max_active are counted in each app process: read them "
    "from the app (AdminApp /api/stats or /metrics)"
)
_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*([smhd]?)")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
_MAX_NAMES_SHOWN = 5


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        line = printable(" ".join(message.split()))
        self.exit(2, f"servletsession: error: {line} (see '{self.prog} --help')\n")


def _count(minimum: int) -> Any:
    def parse(text: str) -> int:
        if not re.fullmatch(r"\s*\d+\s*", text) or int(text) < minimum:
            raise argparse.ArgumentTypeError(
                f"takes a whole number of at least {minimum}, got {text!r}"
            )
        return int(text)

    return parse


def _duration(text: str) -> float:
    match = _DURATION.fullmatch(text.strip().lower())
    if match is None:
        raise argparse.ArgumentTypeError(
            f"takes seconds or a duration such as 90, 10m, 2h or 1d, got {text!r}"
        )
    return float(match[1]) * _UNITS[match[2]]


def _ref(text: str) -> str:
    if not re.fullmatch(r"[0-9a-f]{12}", text):
        raise argparse.ArgumentTypeError(
            f"takes a session's ref as `list` shows it (12 hex digits), got {text!r}"
        )
    return text


def _principal(text: str) -> str:
    if not text or len(text) > 255:
        raise argparse.ArgumentTypeError("takes a principal of 1 to 255 characters")
    try:
        text.encode()
    except UnicodeEncodeError:  # a byte of the command line that is not UTF-8 (a lone surrogate)
        raise argparse.ArgumentTypeError(
            f"takes a principal that is valid UTF-8 text, got {printable(repr(text))}"
        ) from None
    return text


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="servletsession", description="Look after the sessions in a store.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, text in (
        ("stats", "how many sessions the store holds"),
        ("list", "sessions by ref, with principal, times, idle time and attribute names"),
        ("invalidate", "invalidate one session (--ref) or all of a principal's (--principal)"),
        ("purge-expired", "remove every session past its deadline"),
    ):
        command = commands.add_parser(name, help=text, description=text)
        command.add_argument(
            "--store", required=True, help="redis://…, redis+cluster://…, postgresql://… or "
            "sqlite:///path (never created)"
        )  # fmt: skip
        command.add_argument(
            "--prefix", help="the Redis key prefix or SQL table prefix the app uses"
        )
        command.add_argument(
            "--json", action="store_true", help="machine-readable output (list: one object a line)"
        )
        if name == "list":
            command.add_argument("--principal", type=_principal, help="only this principal's")
            command.add_argument(
                "--idle-over", type=_duration, metavar="DURATION",
                help="only sessions idle for longer than this: seconds, or 10m, 2h, 1d",
            )  # fmt: skip
            command.add_argument("--limit", type=_count(1), default=50, help="at most (50)")
            command.add_argument("--offset", type=_count(0), default=0, help="skip this many")
        if name == "invalidate":
            target = command.add_mutually_exclusive_group(required=True)
            target.add_argument("--ref", type=_ref, help="a session's ref, as `list` shows it")
            target.add_argument(
                "--principal", type=_principal, help="every session of this principal"
            )
    return parser


# --- output ----------------------------------------------------------------------------------


def printable(text: str) -> str:
    """``text`` safe for a terminal: control characters (escape sequences) shown escaped."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in text)


def _iso(timestamp: float) -> str:
    return dt.datetime.fromtimestamp(timestamp, dt.UTC).isoformat(timespec="milliseconds")


def _when(timestamp: float) -> str:
    return dt.datetime.fromtimestamp(timestamp, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


def _span(seconds: float) -> str:
    days, rest = divmod(max(0, int(seconds)), 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes}m"
    return f"{minutes}m {secs}s" if minutes else f"{secs}s"


def _say(console: Console, *lines: str) -> None:
    from rich.text import Text

    for line in lines:
        console.print(Text(line))  # a Text is never read as markup


def _emit(document: dict[str, Any]) -> None:
    print(json.dumps(document))


# --- the commands ----------------------------------------------------------------------------


class _Listed:
    """One session as ``list`` shows it."""

    __slots__ = ("idle", "names", "summary")

    def __init__(self, summary: SessionSummary, names: list[str], idle: float) -> None:
        self.summary, self.names, self.idle = summary, names, idle

    def as_json(self) -> dict[str, Any]:
        summary = self.summary
        return {
            "ref": summary.ref,
            "principal": summary.principal,
            "created": _iso(summary.creation_time),
            "last_accessed": _iso(summary.last_accessed_time),
            "idle_seconds": round(self.idle, 3),
            "max_inactive_interval": summary.max_inactive_interval,
            "attributes": self.names,
            "bytes": summary.size,
        }

    def cells(self) -> list[str]:
        summary = self.summary
        names = [printable(name) for name in self.names]
        shown = ", ".join(names[:_MAX_NAMES_SHOWN])
        if len(names) > _MAX_NAMES_SHOWN:
            shown += f", … (+{len(names) - _MAX_NAMES_SHOWN})"
        size = "" if summary.size is None else str(summary.size)
        return [summary.ref, printable(summary.principal or ""), _when(summary.creation_time),
                _when(summary.last_accessed_time), _span(self.idle), shown, size]  # fmt: skip


async def _listed(manager: SessionManager, args: argparse.Namespace) -> list[_Listed]:
    """The page of sessions ``list`` shows: filtered first, then ``--offset`` and ``--limit``."""
    now = manager.clock()
    idle_over: float | None = args.idle_over
    rows: list[_Listed] = []
    skip: int = args.offset
    limit: int = args.limit

    def keep(session: HttpSession) -> bool:
        """Take ``session`` if it matches; ``True`` once the page is full."""
        nonlocal skip
        summary = summarize(manager, session)
        idle = max(0.0, now - summary.last_accessed_time)
        if idle_over is not None and idle <= idle_over:
            return False
        if skip:
            skip -= 1
            return False
        rows.append(_Listed(summary, sorted(session.get_attribute_names()), idle))
        return len(rows) >= limit

    if args.principal is not None:
        sessions = await manager.sessions_of(args.principal)
        for held in sorted(sessions, key=lambda s: (s.creation_time, session_ref(s.id))):
            if keep(held):
                break
        return rows
    offset = 0
    while True:
        page = await manager.store.session_ids(offset, PAGE)
        for session_id in page:
            session = await manager.peek(session_id)
            if session is not None and keep(session):
                return rows
        if len(page) < PAGE:
            return rows
        offset += PAGE


async def _stats(manager: SessionManager, args: argparse.Namespace, console: Console) -> int:
    sessions = await manager.store.count()
    if args.json:
        _emit({"store": store_kind(args.store), "sessions": sessions, "note": STATS_NOTE})
    else:
        _say(console, f"sessions: {sessions}", f"note: {STATS_NOTE}")
    return 0


async def _list(manager: SessionManager, args: argparse.Namespace, console: Console) -> int:
    from rich.table import Table
    from rich.text import Text

    rows = await _listed(manager, args)
    if args.json:
        for row in rows:
            _emit(row.as_json())
        return 0
    table = Table("ref", "principal", "created (UTC)", "last access (UTC)", "idle", "attributes",
                  "bytes")  # fmt: skip
    for row in rows:
        table.add_row(*(Text(cell) for cell in row.cells()))
    console.print(table)
    if not rows:
        _say(console, "no session matches")
    return 0


async def _invalidate(manager: SessionManager, args: argparse.Namespace, console: Console) -> int:
    if args.principal is not None:
        ended = await manager.invalidate_all(args.principal)
        done = f"invalidated {ended} session(s) of principal {printable(repr(args.principal))}"
    else:
        session = await find_by_ref(manager, args.ref)
        if session is None or not await manager.end(session, "invalidated"):
            raise CommandError(f"no session with ref {args.ref}")
        ended, done = 1, f"invalidated session {args.ref}"
    if args.json:
        _emit({"invalidated": ended, "ref": args.ref, "principal": args.principal,
               "app_counters_updated": False, "note": APP_COUNTERS_NOTE})  # fmt: skip
    else:
        _say(console, done, f"note: {APP_COUNTERS_NOTE}")
    return 0


async def _purge(manager: SessionManager, args: argparse.Namespace, console: Console) -> int:
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    total = 0
    if args.json or not console.is_terminal:
        while removed := await manager.reap():
            total += removed
    else:
        columns = (SpinnerColumn(), TimeElapsedColumn(),
                   TextColumn("purging expired sessions: {task.completed} removed"))  # fmt: skip
        with Progress(*columns, console=console) as progress:
            task = progress.add_task("purge", total=None)
            while removed := await manager.reap():
                total += removed
                progress.update(task, completed=total)
    if args.json:
        _emit({"removed": total, "app_counters_updated": False, "note": APP_COUNTERS_NOTE})
    else:
        _say(console, f"removed {total} expired session(s)", f"note: {APP_COUNTERS_NOTE}")
    return 0


_COMMANDS = {"stats": _stats, "list": _list, "invalidate": _invalidate, "purge-expired": _purge}
_READ_ONLY = frozenset({"stats", "list"})  # a SQLite file is opened read-only: left as it was


async def _run(args: argparse.Namespace) -> int:
    try:
        from rich.console import Console
    except ImportError as exc:
        raise CommandError(f"{exc} (pip install 'servletsession[cli]')", code=2) from exc
    read_only = args.command in _READ_ONLY
    manager = await open_manager(args.store, args.prefix, _warn, read_only=read_only)
    try:
        # Piped or captured output is not wrapped at 80 columns: rows stay whole for grep.
        width = None if sys.stdout.isatty() else 1_000
        return await _COMMANDS[args.command](manager, args, Console(highlight=False, width=width))
    finally:
        await manager.close()


def _one_line(message: object) -> str:
    """``message`` on one line, its control characters (escape sequences) shown escaped."""
    return printable(" ".join(str(message).split()))


def _warn(message: str) -> None:
    print(f"servletsession: warning: {_one_line(message)}", file=sys.stderr)


def _fail(message: object, code: int) -> int:
    print(f"servletsession: error: {_one_line(message)}", file=sys.stderr)
    return code


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command in ``argv`` (default: ``sys.argv[1:]``); return the exit status."""
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exc:  # --help, or a wrong command line (reported already)
        return exc.code if isinstance(exc.code, int) else 0
    try:
        return asyncio.run(_run(args))
    except CommandError as exc:
        return _fail(exc, exc.code)
    except ConfigurationError as exc:
        return _fail(exc, 2)
    except StoreUnavailableError as exc:
        return _fail(exc, 1)
    except KeyboardInterrupt:
        return _fail("interrupted", 130)
    except Exception as exc:
        if os.environ.get("SERVLETSESSION_DEBUG"):
            raise
        return _fail(f"{describe(exc)} (SERVLETSESSION_DEBUG=1 shows the traceback)", 1)


if __name__ == "__main__":
    sys.exit(main())
