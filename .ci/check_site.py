"""Fail if a built docs site shows a Sphinx role as text (``:meth:`x``` is not a link in mkdocs).

Usage: ``python .ci/check_site.py SITE_DIR`` after ``mkdocs build --site-dir SITE_DIR``. Scans the
rendered text of every HTML file (scripts and styles aside) and prints each hit as
``file:line: …snippet…``; exits 1 on any hit, 2 if the directory holds no HTML.
"""

from __future__ import annotations

import re
import sys
from html.parser import HTMLParser
from pathlib import Path

ROLE = re.compile(r":(?:meth|class|func|attr|mod|exc|data|obj):")


class _Text(HTMLParser):
    """The page's text nodes, each with the line it starts on."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[tuple[int, str]] = []
        self._skip = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in ("script", "style"):
            self._skip += 1

    def handle_endtag(self, tag: str) -> None:
        if tag in ("script", "style") and self._skip:
            self._skip -= 1

    def handle_data(self, data: str) -> None:
        if not self._skip:
            self.parts.append((self.getpos()[0], data))


def raw_roles(html: str) -> list[tuple[int, str]]:
    """``(line, snippet)`` for each role in ``html``'s rendered text."""
    parser = _Text()
    parser.feed(html)
    parser.close()
    text, starts = "", []  # the text, and where each part begins in it
    for line, data in parser.parts:
        starts.append((len(text), line, data))
        text += data
    hits = []
    for match in ROLE.finditer(text):
        offset, line, data = max(s for s in starts if s[0] <= match.start())
        line += data.count("\n", 0, match.start() - offset)
        snippet = " ".join(text[max(0, match.start() - 50) : match.end() + 60].split())
        hits.append((line, snippet))
    return hits


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    site = Path(argv[1])
    pages = sorted(site.rglob("*.html"))
    if not pages:
        print(f"check_site: no HTML files under {site}", file=sys.stderr)
        return 2
    failures = 0
    for page in pages:
        for line, snippet in raw_roles(page.read_text(encoding="utf-8")):
            print(f"{page.relative_to(site)}:{line}: raw Sphinx role: …{snippet}…")
            failures += 1
    if failures:
        print(
            f"check_site: {failures} raw Sphinx role(s) in the built docs; write cross-references"
            " as [`name`][servletsession.Name] (or `name` for an undocumented object)",
            file=sys.stderr,
        )
        return 1
    print(f"check_site: {len(pages)} HTML files, no raw Sphinx roles")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
