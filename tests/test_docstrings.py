"""The API reference is built by mkdocstrings: a Sphinx role in a docstring shows as raw text.

Cross-references are written ``[`SessionManager`][servletsession.SessionManager]`` (a link, for an
object docs/reference.md documents) or ``` `name` ``` (plain code). CI also scans the built site
with .ci/check_site.py; this catches a role in the source without building the docs.
"""

from __future__ import annotations

import importlib.util
import io
import re
import tokenize
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ROLE = re.compile(r":(?:meth|class|func|attr|mod|exc|data|obj):`")


def test_no_sphinx_roles_in_the_package_docstrings_or_comments() -> None:
    hits = []
    for path in sorted((ROOT / "servletsession").rglob("*.py")):
        source = path.read_text(encoding="utf-8")
        for token in tokenize.generate_tokens(io.StringIO(source).readline):
            if token.type not in (tokenize.STRING, tokenize.COMMENT):
                continue
            for match in ROLE.finditer(token.string):
                line = token.start[0] + token.string.count("\n", 0, match.start())
                hits.append(f"{path.relative_to(ROOT)}:{line}: {match.group()}…")
    assert not hits, "Sphinx roles render as raw text in the API reference:\n" + "\n".join(hits)


def test_the_site_check_flags_a_rendered_role_and_passes_a_link() -> None:
    spec = importlib.util.spec_from_file_location("check_site", ROOT / ".ci" / "check_site.py")
    assert spec is not None
    assert spec.loader is not None
    check_site = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(check_site)

    raw = "<p>Writes go through\n:meth:<code>set_attribute</code> or\n</p>"
    assert [line for line, _ in check_site.raw_roles(raw)] == [2]
    linked = '<p>Writes go through <a href="#x"><code>set_attribute</code></a></p>'
    assert check_site.raw_roles(linked) == []
    script = "<script>var s = ':class:';</script><p>fine</p>"
    assert check_site.raw_roles(script) == []
