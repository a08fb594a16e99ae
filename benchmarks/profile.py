"""``python -m benchmarks.profile``: where servletsession's in-process microseconds go.

Two views of each scenario of section (a), beside bare Starlette:

1. **Bytecodes.** Every Python instruction a request executes, counted with the interpreter's
   opcode tracing (``sys.settrace`` with ``f_trace_opcodes``): ours by function, and the total
   over bare. Deterministic: the same code gives the same counts on any machine, so it shows what
   a change removed where timings only move within their noise.
2. **Knock-outs.** One part of a new session's work replaced by a stand-in that does nothing, in
   the same process, batches taking turns with the real code: the difference of the medians is
   what that part costs in context (cold caches, a store that grows by one session a request),
   which no micro-benchmark of the part alone shows.
"""

from __future__ import annotations

import asyncio
import collections
import gc
import itertools
import statistics
import sys
import time
from collections.abc import Callable
from types import FrameType
from typing import Any

from . import contenders
from .inprocess import _discard, _receive, _scope, session_cookie

_SCENARIOS = {
    "returning session, read+write": ("/rw", True),
    "new session (no cookie), write": ("/rw", False),
    "no cookie, route never touches the session": ("/plain", False),
}


async def _bytecodes(app: Any, scope: dict[str, Any], requests: int) -> collections.Counter[str]:
    """Instructions per request: ``"total"``, and servletsession's by ``module:function``."""
    counts: collections.Counter[str] = collections.Counter()

    def trace(frame: FrameType, event: str, arg: Any) -> Any:
        frame.f_trace_opcodes = True
        frame.f_trace_lines = False
        code = frame.f_code
        ours = "/servletsession/" in code.co_filename
        name = f"{code.co_filename.rsplit('/', 1)[-1]}:{code.co_name}"

        def local(frame: FrameType, event: str, arg: Any) -> Any:
            if event == "opcode":
                counts["total"] += 1
                if ours:
                    counts[name] += 1
            return local

        return local

    for _ in range(50):  # warm: lazily started tasks, caches, specialisation
        await app(dict(scope), _receive, _discard)
    sys.settrace(trace)
    try:
        for _ in range(requests):
            await app(dict(scope), _receive, _discard)
    finally:
        sys.settrace(None)
    for key in counts:
        counts[key] //= requests
    return counts


async def bytecode_profile(requests: int = 20) -> list[str]:
    lines = ["## Bytecodes per request (deterministic)", ""]
    bare = contenders.bare()
    for scenario, (path, returning) in _SCENARIOS.items():
        ours = contenders.servletsession()
        cookie = await session_cookie(ours.app) if returning else None
        floor = (await _bytecodes(bare.app, _scope(path, cookie), requests))["total"]
        counts = await _bytecodes(ours.app, _scope(path, cookie), requests)
        total = counts.pop("total")
        lines.append(
            f"**{scenario}**: {total} instructions, bare {floor}: **+{total - floor}**, of which "
            f"{sum(counts.values())} in servletsession's own functions (the rest: the route's "
            "calls and the extra middleware layer)."
        )
        lines.append("")
        lines.append("| function | instructions |")
        lines.append("| --- | --- |")
        lines.extend(f"| `{name}` | {count} |" for name, count in counts.most_common(12))
        rest = sum(count for _, count in counts.most_common()[12:])
        if rest:
            lines.append(f"| (others) | {rest} |")
        lines.append("")
        if ours.close is not None:
            await ours.close()
    return lines


def _knock_outs() -> dict[str, tuple[Callable[[], None], Callable[[], None]]]:
    """Each part of a new session's work: (replace it by a stand-in, put it back)."""
    from servletsession import cookies, manager
    from servletsession.stores import memory

    def swap(owner: Any, name: str, stand_in: Any) -> tuple[Callable[[], None], Callable[[], None]]:
        real = getattr(owner, name)
        return (lambda: setattr(owner, name, stand_in)), (lambda: setattr(owner, name, real))

    counter = itertools.count()
    fixed_signature = b"s" * 43

    def fixed_mac(mac: Any, message: bytes) -> bytes:
        return fixed_signature

    def unremembered_cookie(codec: Any, session_id: str) -> bytes:
        value = session_id.encode("ascii")
        value += b"." + codec._signing_mac.signature(value)
        return b"sessionid=" + value + codec._set_suffix

    def held_nowhere(store: Any, session: Any) -> None:
        session._stored = True

    return {
        "draw the ID (a batch from `secrets`)": swap(
            manager, "new_session_id", lambda: f"{next(counter):043d}"
        ),
        "sign the cookie (HMAC-SHA256, base64)": swap(cookies._KeyedSha256, "signature", fixed_mac),
        "remember the signed value (next request skips the HMAC)": swap(
            cookies.CookieCodec, "set_cookie", unremembered_cookie
        ),
        "keep the session (store dict, deadline heap: the store grows)": swap(
            memory.MemoryStore, "add", held_nowhere
        ),
        "the garbage collector (its passes over the sessions kept)": (gc.disable, gc.enable),
    }


async def knock_out_profile(rounds: int = 40, batch: int = 1500) -> list[str]:
    lines = [
        "## Knock-outs: what each part of a new session costs in context",
        "",
        "| part | µs per new session (median of paired rounds) | middle half of the rounds |",
        "| --- | --- | --- |",
    ]
    scope = _scope("/rw", None)
    for part, (knock_out, restore) in _knock_outs().items():
        ours = contenders.servletsession()
        for _ in range(3000):
            await ours.app(dict(scope), _receive, _discard)
        differences = []  # per round, the two adjacent batches: a drift of the VM cancels
        for round_number in range(rounds):  # who goes first alternates: the store keeps growing
            timed: dict[bool, float] = {}
            for with_part in (True, False) if round_number % 2 else (False, True):
                if not with_part:
                    knock_out()
                try:
                    began = time.perf_counter_ns()
                    for _ in range(batch):
                        await ours.app(dict(scope), _receive, _discard)
                    timed[with_part] = (time.perf_counter_ns() - began) / batch / 1000
                finally:
                    restore()
            differences.append(timed[True] - timed[False])
        quartiles = statistics.quantiles(differences, n=4)
        lines.append(
            f"| {part} | {statistics.median(differences):.2f} "
            f"| {quartiles[0]:.2f} to {quartiles[2]:.2f} |"
        )
        if ours.close is not None:
            await ours.close()
    lines.append("")
    return lines


def main() -> None:
    lines = asyncio.run(bytecode_profile()) + asyncio.run(knock_out_profile())
    print("\n".join(lines))


if __name__ == "__main__":
    main()
