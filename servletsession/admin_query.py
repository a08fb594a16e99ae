"""What the admin app shows and does, apart from HTTP: validated list queries, rows, actions.

Sessions are addressed by an *admin ref*: an HMAC-SHA256 of the session ID under a key of the
``AdminApp`` (random per instance unless the app passes ``secret_key``), 128 bits in URL-safe
base64. It is unguessable and reveals nothing of the ID, so it may sit in URLs, forms and access
logs; the raw ID never leaves this module. The short ``log_ref`` (``cookies.session_ref``) is shown
beside it, to find the session in the app's logs.

Listing scans the store (at most ``max_scan`` sessions) and sorts, filters and pages in memory:
an operator's tool, never part of handling a request. Every action goes through the manager's
public API, so listeners fire and the stats count it.
"""

from __future__ import annotations

import base64
import datetime as dt
import hmac
import json
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import urlencode

from .cookies import session_ref
from .inventory import PAGE, activity, attribute_items, scan_sessions
from .manager import SessionManager
from .serializers import JSONSerializer
from .session import HttpSession
from .stores.serializing import SerializingStore

SORT_KEYS = ("last_access", "idle", "created", "expires", "principal", "attributes", "size")
DEFAULT_LIMIT = 50
_REF_RE = re.compile(r"[A-Za-z0-9_-]{22}")
_VALUE_PREVIEW = 4000  # characters of an opted-in value shown at most


class QueryError(ValueError):
    """A query parameter the admin app refuses (answered with 400 and this message)."""


@dataclass(frozen=True, slots=True)
class Query:
    """One view of the session list: filters, sort order and page."""

    sort: str = "last_access"
    order: str = "desc"
    principal: str = ""
    min_idle: int = 0  # minutes
    offset: int = 0
    limit: int = DEFAULT_LIMIT

    def params(self, **changes: Any) -> str:
        """This query (with ``changes``) as a query string, defaults left out."""
        query = replace(self, **changes)
        fields = (("sort", query.sort, "last_access"), ("order", query.order, "desc"),
                  ("principal", query.principal, ""), ("min_idle", query.min_idle, 0),
                  ("offset", query.offset, 0), ("limit", query.limit, DEFAULT_LIMIT))  # fmt: skip
        return urlencode([(name, value) for name, value, default in fields if value != default])


def _integer(params: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    raw = params.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise QueryError(f"{name} must be a whole number, got {raw[:40]!r}") from None
    if not low <= value <= high:
        raise QueryError(f"{name} must be between {low} and {high}, got {value}")
    return value


def parse_query(params: Mapping[str, str], max_limit: int) -> Query:
    """The query in ``params`` (a request's query string); `QueryError` if invalid."""
    sort = params.get("sort") or "last_access"
    if sort not in SORT_KEYS:
        raise QueryError(f"sort must be one of {', '.join(SORT_KEYS)}, got {sort[:40]!r}")
    order = params.get("order") or ("asc" if sort == "principal" else "desc")
    if order not in ("asc", "desc"):
        raise QueryError(f"order must be asc or desc, got {order[:40]!r}")
    return Query(
        sort=sort,
        order=order,
        principal=params.get("principal", ""),
        min_idle=_integer(params, "min_idle", 0, 0, 10**7),
        offset=_integer(params, "offset", 0, 0, 10**9),
        limit=_integer(params, "limit", DEFAULT_LIMIT, 1, max_limit),
    )


def parse_minutes(raw: object) -> int:
    """The ``minutes`` of an idle-invalidation request: a whole number of at least 1."""
    if isinstance(raw, bool) or not isinstance(raw, int | str) or not str(raw).strip():
        raise QueryError("minutes must be a whole number of at least 1")
    return _integer({"minutes": str(raw)}, "minutes", 0, 1, 10**7)


@dataclass(frozen=True, slots=True)
class Attribute:
    name: str
    size: int | None  # bytes as JSON (what a shared store writes); None: not JSON-encodable
    value: str | None  # the value as JSON text, only for names the app opted in


@dataclass(frozen=True, slots=True)
class Row:
    """One session as the admin app shows it: never its ID."""

    ref: str
    log_ref: str
    principal: str | None
    created: float
    last_access: float
    idle: float  # seconds since its last request ended (0 while a request holds it)
    expires_at: float | None
    absolute_deadline: float | None
    max_inactive_interval: int
    in_use: bool
    attributes: tuple[Attribute, ...]

    @property
    def size(self) -> int:
        return sum(attribute.size or 0 for attribute in self.attributes)

    def as_json(self) -> dict[str, Any]:
        return {
            "ref": self.ref,
            "log_ref": self.log_ref,
            "principal": self.principal,
            "created": iso(self.created),
            "last_access": iso(self.last_access),
            "idle_seconds": round(self.idle, 3),
            "expires": None if self.expires_at is None else iso(self.expires_at),
            "absolute_deadline": (
                None if self.absolute_deadline is None else iso(self.absolute_deadline)
            ),
            "max_inactive_interval": self.max_inactive_interval,
            "in_use": self.in_use,
            "size": self.size,
            "attributes": [
                {"name": a.name, "size": a.size}
                | ({} if a.value is None else {"value": json.loads(a.value)})
                for a in self.attributes
            ],
        }


@dataclass(frozen=True, slots=True)
class Page:
    rows: list[Row]
    total: int  # sessions matching the filters (among those scanned)
    query: Query
    truncated: bool  # the store holds more than ``max_scan`` sessions: some were not looked at


def iso(timestamp: float) -> str:
    """ISO 8601 in UTC, to the second."""
    return dt.datetime.fromtimestamp(timestamp, dt.UTC).isoformat(timespec="seconds")


def _sort_key(sort: str) -> Any:
    keys: dict[str, Any] = {
        "last_access": lambda r: r.last_access,
        "idle": lambda r: r.idle,
        "created": lambda r: r.created,
        "expires": lambda r: float("inf") if r.expires_at is None else r.expires_at,
        "principal": lambda r: (r.principal is None, r.principal or ""),
        "attributes": lambda r: len(r.attributes),
        "size": lambda r: r.size,
    }
    return keys[sort]


class SessionDirectory:
    """The admin app's sessions: refs, rows, pages and the three invalidations."""

    def __init__(
        self, manager: SessionManager, key: bytes, show_values: Collection[str], max_scan: int
    ) -> None:
        self.manager = manager
        self._key = key
        self._show_values = frozenset(show_values)
        self.max_scan = max_scan
        store = manager.store
        self._serializer = (
            store.serializer if isinstance(store, SerializingStore) else JSONSerializer()
        )

    def ref(self, session: HttpSession) -> str:
        """The session's admin ref (unguessable, stable while its ID is)."""
        return self._ref_of(session.id)

    def _ref_of(self, session_id: str) -> str:
        digest = hmac.digest(self._key, session_id.encode("ascii"), "sha256")[:16]
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")

    def row(self, session: HttpSession, now: float) -> Row:
        seen = activity(session)
        return Row(
            ref=self.ref(session),
            log_ref=session_ref(session.id),
            principal=session.principal,
            created=session.creation_time,
            last_access=seen.last_access,
            idle=0.0 if seen.in_use else max(0.0, now - seen.idle_since),
            expires_at=seen.expires_at,
            absolute_deadline=seen.absolute_deadline,
            max_inactive_interval=session.max_inactive_interval,
            in_use=seen.in_use,
            attributes=tuple(self._attribute(n, v) for n, v in attribute_items(session)),
        )

    def _attribute(self, name: str, value: Any) -> Attribute:
        try:  # any object a memory store holds: one odd value must not break the page
            size: int | None = len(self._serializer.dumps(name, value))
        except Exception:
            size = None
        shown = _shown(value) if name in self._show_values else None
        return Attribute(safe_text(name), size, shown)

    async def page(self, query: Query) -> Page:
        """The sessions ``query`` selects, sorted, one page of them."""
        now = self.manager.clock()
        if query.principal:
            sessions = await self.manager.sessions_of(query.principal)
            truncated = len(sessions) > self.max_scan
            sessions = sessions[: self.max_scan]
        else:
            sessions, truncated = await scan_sessions(self.manager, self.max_scan)
        rows = [self.row(session, now) for session in sessions]
        if query.min_idle:
            rows = [row for row in rows if row.idle >= query.min_idle * 60]
        rows.sort(key=lambda row: row.ref)  # a stable order among equal keys
        rows.sort(key=_sort_key(query.sort), reverse=query.order == "desc")
        chosen = rows[query.offset : query.offset + query.limit]
        return Page(chosen, len(rows), query, truncated)

    async def find(self, ref: str) -> HttpSession | None:
        """The session with this admin ref (scanning the store's IDs), or ``None``."""
        if _REF_RE.fullmatch(ref) is None:
            return None
        offset = 0
        while True:
            page = await self.manager.store.session_ids(offset, PAGE)
            for session_id in page:
                if hmac.compare_digest(self._ref_of(session_id), ref):
                    return await self.manager.peek(session_id)
            if len(page) < PAGE:
                return None
            offset += PAGE

    async def invalidate(self, ref: str) -> bool:
        """Invalidate the session with this ref; ``False`` if there is none."""
        session = await self.find(ref)
        return session is not None and await self.manager.end(session, "invalidated")

    async def invalidate_principal(self, principal: str) -> int:
        return await self.manager.invalidate_all(principal)

    async def invalidate_idle(self, minutes: int) -> int:
        """Invalidate every session idle for at least ``minutes``: none a request of this worker
        holds; on a shared store idle counts from the stored deadline, which another worker's
        keeper keeps ahead while a request of its own holds the session (idle timeout > 0)."""
        idle_ids: list[str] = []
        offset = 0
        while True:  # find them all first: ending sessions while paging would shift the pages
            ids = await self.manager.store.session_ids(offset, PAGE)
            for session_id in ids:
                if await self._idle_session(session_id, minutes) is not None:
                    idle_ids.append(session_id)
            if len(ids) < PAGE:
                break
            offset += PAGE
        ended = 0
        for session_id in idle_ids:
            session = await self._idle_session(session_id, minutes)  # still idle?
            if session is not None and await self.manager.end(session, "invalidated"):
                ended += 1
        return ended

    async def _idle_session(self, session_id: str, minutes: int) -> HttpSession | None:
        session = await self.manager.peek(session_id)
        if session is None:
            return None
        seen = activity(session)
        idle = not seen.in_use and self.manager.clock() - seen.idle_since >= minutes * 60
        return session if idle else None


def safe_text(text: str) -> str:
    """``text`` with lone surrogates (not encodable as UTF-8) written as ``\\udfff``."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _shown(value: Any) -> str:
    """An opted-in value as JSON text (cut to `_VALUE_PREVIEW`), else its ``repr`` as a JSON
    string: a tuple key, a cycle, a NaN or a 5,000-digit int is shown, never an error."""
    try:
        text = json.dumps(value, default=_plain, ensure_ascii=False, indent=1, allow_nan=False)
        text.encode("utf-8")  # lone surrogates in a string
    except Exception:
        try:
            text = repr(value)
        except Exception:  # a huge int, a __repr__ that raises
            text = f"<{type(value).__qualname__} object>"
        return json.dumps(safe_text(text[:_VALUE_PREVIEW]), ensure_ascii=False)
    return (
        json.dumps(text[:_VALUE_PREVIEW], ensure_ascii=False)
        if len(text) > _VALUE_PREVIEW
        else text
    )


def _plain(value: Any) -> Any:
    dump = getattr(value, "model_dump", None)  # a pydantic model
    if callable(dump):
        return dump(mode="json")
    if isinstance(value, dt.date | dt.datetime):
        return value.isoformat()
    return repr(value)
