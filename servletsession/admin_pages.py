"""The admin app's HTML: the session list, one session's page, and error pages.

Every link and form target is relative (``./``, ``?sort=…``, ``sessions/<ref>``, ``actions/…``),
so the pages work under any ``Mount`` path and any proxy ``root_path``. Every value is escaped;
principals travel in query strings and form fields, never in a path segment.
"""

from __future__ import annotations

import base64
import math
from collections.abc import Mapping
from html import escape

from .admin_csrf import FIELD
from .admin_query import Page, Query, Row, iso

_LABELS = {
    "principal": "Principal",
    "created": "Created",
    "last_access": "Last access",
    "idle": "Idle",
    "expires": "Expires",
    "attributes": "Attributes",
    "size": "Size",
}
_NAMES_SHOWN = 6  # attribute names listed in a row; the rest are counted

_STYLE = """
:root { color-scheme: light; --line: #d8dde3; --muted: #5b6673; --accent: #1f5fbf; }
* { box-sizing: border-box; }
body { font: 15px/1.45 system-ui, sans-serif; margin: 0; color: #1d232a; background: #f6f7f9; }
main { max-width: 1280px; margin: 0 auto; padding: 1rem 1.25rem 3rem; }
h1 { font-size: 1.5rem; margin: .5rem 0 1rem; } h2 { font-size: 1.1rem; margin: 1.5rem 0 .5rem; }
a { color: var(--accent); } code { font-size: .9em; overflow-wrap: anywhere; }
.muted { color: var(--muted); }
.notice { background: #e6f4ea; border: 1px solid #b7dfc2; padding: .5rem .75rem;
  border-radius: 6px; }
.error { background: #fdecea; border-color: #f3b8b1; }
.stats { display: grid; grid-template-columns: repeat(auto-fill, minmax(9.5rem, 1fr)); gap: .5rem;
  margin: 0 0 1rem; }
.stats div { background: #fff; border: 1px solid var(--line); border-radius: 6px;
  padding: .4rem .6rem; }
.stats dt { font-size: .8rem; color: var(--muted); } .stats dd { margin: 0; font-weight: 600; }
.panel { background: #fff; border: 1px solid var(--line); border-radius: 6px; padding: .75rem;
  display: flex; flex-wrap: wrap; gap: .5rem 1rem; align-items: end; margin-bottom: .75rem; }
label { display: flex; flex-direction: column; font-size: .85rem; color: var(--muted);
  gap: .15rem; }
input { font: inherit; padding: .3rem .45rem; border: 1px solid #b9c1ca; border-radius: 4px;
  min-width: 0; }
input[type=number] { width: 6.5rem; }
button, .button { font: inherit; padding: .3rem .7rem; border-radius: 4px; cursor: pointer;
  border: 1px solid #b9c1ca; background: #fff; color: #1d232a; text-decoration: none;
  display: inline-block; white-space: nowrap; }
button.danger { border-color: #c5392a; color: #a32b1f; }
button.danger:hover { background: #fdecea; }
form.inline { display: inline-flex; align-items: center; gap: .35rem; flex-wrap: wrap; margin: 0; }
table { width: 100%; border-collapse: collapse; background: #fff; border: 1px solid var(--line); }
th, td { text-align: left; padding: .45rem .6rem; border-bottom: 1px solid var(--line);
  vertical-align: top; }
th { background: #eef1f4; font-size: .85rem; white-space: nowrap; }
th a { text-decoration: none; color: inherit; } th a.sorted { color: var(--accent); }
td.actions { white-space: nowrap; } td.actions form { margin: 0 0 .3rem; }
.names { font-size: .85rem; overflow-wrap: anywhere; }
td[data-label=Session] code { white-space: nowrap; }
.badge { white-space: nowrap; font-size: .75rem; background: #fff4d6;
  border: 1px solid #e8cf86; border-radius: 3px; padding: 0 .3rem; margin-left: .25rem; }
.spaced { margin-top: .75rem; }
.pager { display: flex; gap: .5rem; align-items: center; flex-wrap: wrap; margin: .75rem 0; }
dl.facts { display: grid; grid-template-columns: max-content 1fr; gap: .3rem 1rem;
  background: #fff; border: 1px solid var(--line); border-radius: 6px; padding: .75rem; }
dl.facts dt { color: var(--muted); } dl.facts dd { margin: 0; overflow-wrap: anywhere; }
pre { margin: 0; white-space: pre-wrap; overflow-wrap: anywhere; font-size: .85rem; }
@media (max-width: 760px) {
  main { padding: .75rem; }
  table, tbody, tr, td { display: block; width: 100%; } thead { display: none; }
  table { border: 0; background: none; }
  tr { background: #fff; border: 1px solid var(--line); border-radius: 6px; margin-bottom: .6rem; }
  td { display: grid; grid-template-columns: 7.5rem 1fr; gap: .5rem; border: 0;
    padding: .3rem .6rem; }
  td::before { content: attr(data-label); color: var(--muted); font-size: .85rem; }
  td.actions { white-space: normal; display: flex; flex-wrap: wrap; gap: .4rem; }
  td.actions::before { display: none; } td.actions form { margin: 0; }
  dl.facts { grid-template-columns: 1fr; } dl.facts dd { margin-bottom: .4rem; }
  .sorter { display: flex; flex-wrap: wrap; gap: .2rem .8rem; }
}
@media (min-width: 761px) { .sorter { display: none; } }
"""


def encode_principal(principal: str) -> str:
    """A principal for a hidden form field, byte for byte (a browser would rewrite its line
    breaks as CRLF): URL-safe base64 of its UTF-8."""
    return base64.urlsafe_b64encode(principal.encode()).decode("ascii")


def decode_principal(encoded: str) -> str | None:
    try:
        return base64.urlsafe_b64decode(encoded.encode("ascii")).decode() or None
    except (ValueError, UnicodeError):
        return None


def human_time(timestamp: float) -> str:
    """A ``<time>`` element: readable in UTC, ISO 8601 in its ``datetime``."""
    stamp = iso(timestamp)
    return f'<time datetime="{stamp}">{stamp.replace("T", " ")[:19]} UTC</time>'


def duration(seconds: float) -> str:
    """``45 s``, ``12 min 5 s``, ``3 h 12 min``, ``2 d 4 h`` (HTML: no break inside a part)."""
    total = int(seconds)
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}&nbsp;d {hours}&nbsp;h"
    if hours:
        return f"{hours}&nbsp;h {minutes}&nbsp;min"
    if minutes:
        return f"{minutes}&nbsp;min {secs}&nbsp;s"
    return f"{secs}&nbsp;s"


def size(count: int | None) -> str:
    if count is None:
        return "—"
    if count < 1000:
        return f"{count}&nbsp;B"
    if count < 1_000_000:
        return f"{count / 1000:.1f}&nbsp;kB"
    return f"{count / 1_000_000:.1f}&nbsp;MB"


def document(title: str, body: str) -> str:
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{escape(title)}</title><style>{_STYLE}</style></head>"
        f"<body><main>{body}</main></body></html>"
    )


def _form(action: str, token: str, fields: Mapping[str, str], inner: str) -> str:
    hidden = "".join(
        f'<input type="hidden" name="{escape(n)}" value="{escape(v)}">'
        for n, v in {FIELD: token, **fields}.items()
    )
    return f'<form class="inline" method="post" action="{escape(action)}">{hidden}{inner}</form>'


def _href(query: Query, **changes: object) -> str:
    params = query.params(**changes)
    return escape(f"?{params}" if params else "./")


def _sort_link(query: Query, key: str) -> str:
    current = query.sort == key
    if current:
        order = "asc" if query.order == "desc" else "desc"
    else:
        order = "asc" if key == "principal" else "desc"
    arrow = (" ▼" if query.order == "desc" else " ▲") if current else ""
    sorted_class = ' class="sorted"' if current else ""
    href = _href(query, sort=key, order=order, offset=0)
    return f'<a href="{href}"{sorted_class}>{_LABELS[key]}{arrow}</a>'


def _row(row: Row, token: str, back: str, prefix: str) -> str:
    principal = (
        escape(row.principal) if row.principal is not None else '<span class="muted">—</span>'
    )
    names = ", ".join(
        f"{escape(a.name)} <span class='muted'>({size(a.size)})</span>"
        for a in row.attributes[:_NAMES_SHOWN]
    )
    if len(row.attributes) > _NAMES_SHOWN:
        names += f" <span class='muted'>+{len(row.attributes) - _NAMES_SHOWN} more</span>"
    in_use = '<span class="badge">in use</span>' if row.in_use else ""
    expires = "never" if row.expires_at is None else human_time(row.expires_at)
    actions = _form(
        f"{prefix}actions/invalidate-session",
        token,
        {"ref": row.ref, "back": back},
        '<button class="danger">Invalidate</button>',
    )
    if row.principal is not None:
        actions += _form(
            f"{prefix}actions/invalidate-principal",
            token,
            {"principal_b64": encode_principal(row.principal), "back": back},
            '<button class="danger">All of this principal</button>',
        )
    cells = [
        ("Session", f'<a href="{prefix}sessions/{row.ref}"><code>{row.log_ref}</code></a>'),
        ("Principal", principal),
        ("Created", human_time(row.created)),
        ("Last access", human_time(row.last_access)),
        ("Idle", duration(row.idle) + in_use),
        ("Expires", expires),
        ("Attributes", f'<span class="names">{names or "—"}</span>'),
        ("Size", size(row.size)),
    ]
    tds = "".join(f'<td data-label="{label}"><span>{cell}</span></td>' for label, cell in cells)
    return f'<tr>{tds}<td class="actions">{actions}</td></tr>'


def list_page(page: Page, stats: Mapping[str, float], token: str, notice: str) -> str:
    query = page.query
    back = query.params()
    stat_items = "".join(
        f"<div><dt>{escape(name.replace('_', ' '))}</dt>"
        f"<dd>{duration(value) if name.endswith('alive_time') else f'{value:g}'}</dd></div>"
        for name, value in stats.items()
    )
    body = ["<h1>Sessions</h1>"]
    if notice:
        body.append(f'<p class="notice" role="status">{escape(notice)}</p>')
    body.append(f'<dl class="stats">{stat_items}</dl>')
    body.append(
        '<form class="panel" method="get" action="./">'
        f'<label>Principal <input name="principal" value="{escape(query.principal)}" '
        'autocomplete="off"></label>'
        f'<label>Idle at least (min) <input type="number" name="min_idle" min="0" '
        f'value="{query.min_idle or ""}"></label>'
        f'<label>Per page <input type="number" name="limit" min="1" value="{query.limit}">'
        f'</label><input type="hidden" name="sort" value="{query.sort}">'
        f'<input type="hidden" name="order" value="{query.order}">'
        '<button>Filter</button> <a class="button" href="./">Clear</a></form>'
    )
    bulk = _form(
        "actions/invalidate-idle",
        token,
        {"back": back},
        '<label>Idle at least (min) <input type="number" name="minutes" min="1" required '
        f'value="{query.min_idle or 30}"></label>'
        '<button class="danger">Invalidate idle sessions</button>',
    )
    if query.principal:
        bulk += _form(
            "actions/invalidate-principal",
            token,
            {"principal_b64": encode_principal(query.principal), "back": back},
            '<button class="danger">Invalidate all sessions of '
            f"<strong>{escape(query.principal)}</strong></button>",
        )
    body.append(f'<div class="panel">{bulk}</div>')
    first = query.offset + 1 if page.rows else 0
    last = query.offset + len(page.rows)
    summary = f"Showing {first}&ndash;{last} of {page.total}"
    if page.truncated:
        summary += " (the store holds more sessions than the admin app scans; filter by principal)"
    body.append(f'<p class="muted" id="summary">{summary}</p>')
    sorter = "".join(_sort_link(query, key) for key in _LABELS)
    body.append(f'<p class="sorter muted"><span>Sort by</span>{sorter}</p>')
    if page.rows:
        heads = "".join(
            f"<th>{_sort_link(query, key)}</th>" if key in _LABELS else f"<th>{key}</th>"
            for key in ("Session", *_LABELS, "")
        )
        rows = "".join(_row(row, token, back, "") for row in page.rows)
        body.append(f"<table><thead><tr>{heads}</tr></thead><tbody>{rows}</tbody></table>")
    else:
        body.append('<p class="panel">No sessions match.</p>')
    body.append(_pager(page))
    return document("Sessions — servletsession admin", "".join(body))


def _pager(page: Page) -> str:
    query = page.query
    pages = max(1, math.ceil(page.total / query.limit))
    number = query.offset // query.limit + 1
    links = []

    def link(offset: int, rel: str, text: str) -> None:
        href = _href(query, offset=offset)
        links.append(f'<a class="button" href="{href}" rel="{rel}">{text}</a>')

    if query.offset > 0:
        link(0, "first", "&laquo; First")
        link(max(0, query.offset - query.limit), "prev", "&lsaquo; Previous")
    links.append(f'<span class="muted">Page {number} of {pages}</span>')
    if query.offset + query.limit < page.total:
        link(query.offset + query.limit, "next", "Next &rsaquo;")
        link((pages - 1) * query.limit, "last", "Last &raquo;")
    return f'<nav class="pager" aria-label="pages">{"".join(links)}</nav>'


def detail_page(row: Row, token: str) -> str:
    expires = "never" if row.expires_at is None else human_time(row.expires_at)
    absolute = "none" if row.absolute_deadline is None else human_time(row.absolute_deadline)
    interval = row.max_inactive_interval
    log_ref = f"<code>{row.log_ref}</code> <span class='muted'>(as in the app's logs)</span>"
    facts = [
        ("Log ref", log_ref),
        ("Principal", escape(row.principal) if row.principal is not None else "—"),
        ("Created", human_time(row.created)),
        ("Last access", human_time(row.last_access)),
        ("Idle", duration(row.idle) + (' <span class="badge">in use</span>' if row.in_use else "")),
        ("Idle timeout", "never idles out" if interval <= 0 else duration(interval)),
        ("Expires", expires),
        ("Absolute deadline", absolute),
        ("Size", size(row.size)),
    ]
    dl = "".join(f"<dt>{name}</dt><dd>{value}</dd>" for name, value in facts)
    attributes = "".join(
        f'<tr><td data-label="Name"><code>{escape(a.name)}</code></td>'
        f'<td data-label="Size">{size(a.size)}</td><td data-label="Value">'
        + (
            f"<pre>{escape(a.value)}</pre>"
            if a.value is not None
            else '<span class="muted">hidden</span>'
        )
        + "</td></tr>"
        for a in row.attributes
    )
    actions = _form(
        "../actions/invalidate-session",
        token,
        {"ref": row.ref, "back": ""},
        '<button class="danger">Invalidate this session</button>',
    )
    if row.principal is not None:
        actions += _form(
            "../actions/invalidate-principal",
            token,
            {"principal_b64": encode_principal(row.principal), "back": ""},
            '<button class="danger">Invalidate all sessions of this principal</button>',
        )
    table = (
        "<table><thead><tr><th>Name</th><th>Size</th><th>Value</th></tr></thead>"
        f"<tbody>{attributes}</tbody></table>"
        if row.attributes
        else '<p class="panel">No attributes.</p>'
    )
    body = (
        '<p><a href="../">← All sessions</a></p>'
        f"<h1>Session <code>{row.log_ref}</code></h1><dl class='facts'>{dl}</dl>"
        f'<div class="panel spaced">{actions}</div>'
        f"<h2>Attributes ({len(row.attributes)})</h2>{table}"
    )
    return document(f"Session {row.log_ref} — servletsession admin", body)


def error_page(status: int, message: str, home: str) -> str:
    body = (
        f'<h1>{status}</h1><p class="notice error" role="alert">{escape(message)}</p>'
        f'<p><a href="{escape(home)}">← All sessions</a></p>'
    )
    return document(f"{status} — servletsession admin", body)
