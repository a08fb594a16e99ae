"""The app uvicorn serves in the server scenario: ``BENCH_CONTENDER`` picks the contender."""

from __future__ import annotations

import os

from . import contenders

_BUILDERS = {
    "bare": contenders.bare,
    "starlette": contenders.starlette_cookie,
    "starsessions": contenders.starsessions,
    "fastsession": contenders.fastsession,
    "servletsession": contenders.servletsession,
}

app = _BUILDERS[os.environ.get("BENCH_CONTENDER", "bare")]().app
