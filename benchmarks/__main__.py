"""``python -m benchmarks``: every scenario, side by side, as tables of medians and ratios.

Options: ``--quick`` (shorter runs, sizes up to 100 k), ``--sizes 10000,100000,1000000``,
``--skip-server``, ``--skip-stores``, ``--markdown PATH`` (also write the report there).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.metadata
import os
import platform
import statistics
import time
from collections.abc import Callable
from typing import Any

from . import contenders, scale, server, stores
from .inprocess import _discard, _receive, _scope, session_cookie

Maker = Callable[[], contenders.Contender]
IN_PROCESS: list[tuple[str, Maker]] = [
    ("bare", contenders.bare),
    ("starlette", contenders.starlette_cookie),
    ("starsessions", contenders.starsessions),
    ("fastsession", contenders.fastsession),
    ("servletsession", contenders.servletsession),
]


class Report:
    def __init__(self) -> None:
        self.lines: list[str] = []
        self.targets: list[tuple[str, str, bool]] = []

    def say(self, line: str = "") -> None:
        print(line, flush=True)
        self.lines.append(line)

    def table(self, header: list[str], rows: list[list[str]]) -> None:
        self.say("| " + " | ".join(header) + " |")
        self.say("|" + "|".join(" --- " for _ in header) + "|")
        for row in rows:
            self.say("| " + " | ".join(row) + " |")
        self.say()

    def target(self, what: str, measured: str, met: bool) -> None:
        self.targets.append((what, measured, met))


async def _interleaved(
    apps: dict[str, Any], scopes: dict[str, dict[str, Any]], rounds: int
) -> dict[str, float]:
    """Median µs per request of each app, batches taking turns so drift hits all alike."""
    sizes = {}
    for name, app in apps.items():  # calibrate: batches of about 40 ms
        began = time.perf_counter()
        for _ in range(20):
            await app(dict(scopes[name]), _receive, _discard)
        sizes[name] = max(20, int(0.04 / ((time.perf_counter() - began) / 20)))
    samples: dict[str, list[float]] = {name: [] for name in apps}
    for _ in range(rounds):
        for name, app in apps.items():
            scope, count = scopes[name], sizes[name]
            began = time.perf_counter_ns()
            for _ in range(count):
                await app(dict(scope), _receive, _discard)
            samples[name].append((time.perf_counter_ns() - began) / count / 1000)
    return {name: statistics.median(values) for name, values in samples.items()}


async def in_process(report: Report, rounds: int) -> None:
    built = {key: make() for key, make in IN_PROCESS}
    apps = {key: c.app for key, c in built.items()}
    labels = {key: c.name for key, c in built.items()}
    cookies = {
        key: (await session_cookie(app) if key != "bare" else None) for key, app in apps.items()
    }
    scenarios = {
        "returning session, read+write": {k: _scope("/rw", cookies[k]) for k in apps},
        "new session (no cookie), write": {k: _scope("/rw", None) for k in apps},
        "no cookie, route never touches the session": {k: _scope("/plain", None) for k in apps},
    }
    results = {name: await _interleaved(apps, scopes, rounds) for name, scopes in scenarios.items()}
    report.say("## (a) In-process ASGI calls (µs per request, median; lower is better)")
    report.say()
    header = ["contender", *(f"{s} (µs, +over bare)" for s in scenarios)]
    rows = []
    for key in apps:
        row = [labels[key]]
        for scenario in scenarios:
            value, base = results[scenario][key], results[scenario]["bare"]
            row.append(
                f"{value:.2f}"
                if key == "bare"
                else f"{value:.2f} (+{value - base:.2f}, {value / base:.2f}×)"
            )
        rows.append(row)
    report.table(header, rows)
    over = {s: results[s]["servletsession"] - results[s]["bare"] for s in scenarios}
    names = list(scenarios)
    report.target(
        "returning session read+write: ≤ 4 µs over bare",
        f"+{over[names[0]]:.2f} µs",
        over[names[0]] <= 4,
    )
    report.target("new session: ≤ 8 µs over bare", f"+{over[names[1]]:.2f} µs", over[names[1]] <= 8)
    report.target(
        "cookieless, untouched: ≤ 1.5 µs over bare",
        f"+{over[names[2]]:.2f} µs",
        over[names[2]] <= 1.5,
    )
    for contender in built.values():
        if contender.close is not None:
            await contender.close()


def through_server(report: Report, seconds: int, rounds: int) -> None:
    if not server.wrk_available():
        report.say("## (b) Through uvicorn: skipped (wrk not installed: apt-get install wrk)")
        report.say()
        return
    names = ["bare", "starlette", "starsessions", "fastsession", "servletsession"]
    measured = server.requests_per_second(names, seconds=seconds, rounds=rounds)
    rps = {name: rate for name, (rate, _) in measured.items()}
    cpu = {name: used for name, (_, used) in measured.items()}
    report.say(
        "## (b) Through uvicorn, one worker, wrk with 32 connections on loopback "
        f"(median of {rounds}; req/s: higher is better; server CPU per request: lower is better)"
    )
    report.say()
    report.table(
        ["contender", "returning read+write (req/s)", "vs bare", "server CPU per request (µs)",
         "+over bare"],
        [
            [name, f"{rps[name]:.0f}", f"{rps[name] / rps['bare']:.2f}×", f"{cpu[name]:.1f}",
             f"{cpu[name] - cpu['bare']:+.1f}" if name != "bare" else ""]
            for name in names
        ],
    )  # fmt: skip
    report.say(
        "Every contender is sent the same bytes: its session cookie, or for bare a cookie of the "
        "same name and length. Server CPU is the uvicorn process's user + system time over the "
        "requests wrk counted."
    )
    report.say()
    ratio = rps["servletsession"] / rps["bare"]
    report.target("through uvicorn: ≥ 0.9× bare req/s", f"{ratio:.2f}×", ratio >= 0.9)


async def shared_stores(report: Report, requests: int) -> None:
    results = await stores.measure(requests)
    report.say("## (c) Shared stores: a returning session, in-process (µs per request, median)")
    report.say()
    report.table(
        ["contender", "read-only (µs)", "read+write (µs)", "× floor: read-only, read+write",
         "round trips: read-only, read+write"],
        [
            [
                r.name,
                f"{r.read_only_us:.0f}",
                f"{r.read_write_us:.0f}",
                f"{r.read_only_us / r.floor_us:.2f}, {r.read_write_us / r.floor_us:.2f}"
                if r.floor_us else "",
                f"{r.read_only_round_trips:g}, {r.read_write_round_trips:g}",
            ]
            for r in results
        ],
    )  # fmt: skip
    report.say(
        "Each floor is one round trip of the same client library, measured in the same run, in "
        "batches taking turns with the requests. Round trips: Redis sends for the Redis stores, "
        "SQL statements (any BEGIN/COMMIT included) for PostgreSQL; the cluster's are not counted."
    )
    report.say()
    by_name = {r.name: r for r in results}
    ours = by_name["servletsession RedisStore"]
    theirs = next(r for r in results if r.name.startswith("starsessions"))
    reads = theirs.read_only_us / ours.read_only_us
    writes = theirs.read_write_us / ours.read_write_us
    report.target("Redis read-only request: 1 round trip", f"{ours.read_only_round_trips:g}",
                  ours.read_only_round_trips <= 1)  # fmt: skip
    report.target("Redis writing request: ≤ 2 round trips", f"{ours.read_write_round_trips:g}",
                  ours.read_write_round_trips <= 2)  # fmt: skip
    report.target("Redis read-only: ≥ 2× faster than starsessions' RedisStore", f"{reads:.2f}×",
                  reads >= 2)  # fmt: skip
    report.target("Redis read+write: ≥ 1.5× faster than starsessions' RedisStore",
                  f"{writes:.2f}×", writes >= 1.5)  # fmt: skip
    on_cluster = by_name.get("servletsession RedisStore on a cluster")
    if on_cluster is not None:
        worst = max(on_cluster.read_only_us / ours.read_only_us,
                    on_cluster.read_write_us / ours.read_write_us)  # fmt: skip
        report.target("Redis Cluster: per request ≤ 1.2× single-node Redis", f"{worst:.2f}×",
                      worst <= 1.2)  # fmt: skip
    durable = next(r for r in results if r.name.startswith("servletsession SQLStore (PostgreSQL)"))
    assert durable.floor_us
    report.target("PostgreSQL read-only: ≤ 3× one asyncpg round trip",
                  f"{durable.read_only_us / durable.floor_us:.1f}×",
                  durable.read_only_us <= 3 * durable.floor_us)  # fmt: skip
    report.target("PostgreSQL read+write: ≤ 6× one asyncpg round trip",
                  f"{durable.read_write_us / durable.floor_us:.1f}×",
                  durable.read_write_us <= 6 * durable.floor_us)  # fmt: skip
    statements = durable.read_only_round_trips, durable.read_write_round_trips
    report.target("PostgreSQL statements: 1 to read, ≤ 2 to write",
                  f"{statements[0]:g}, {statements[1]:g}",
                  statements[0] <= 1 and statements[1] <= 2)  # fmt: skip


def memory_scale(report: Report, sizes: list[int]) -> None:
    results = scale.run(sizes)
    report.say(
        "## (d) MemoryStore at scale (empty sessions; a tenth of them due in the expiring tick)"
    )
    report.say()
    report.table(
        [
            "sessions",
            "bytes per session",
            "reaper tick, nothing due (ms)",
            "tick expiring 10 % (ms)",
            "lookup + release (µs)",
        ],
        [
            [
                f"{r.sessions:,}",
                f"{r.bytes_per_session:.0f}",
                f"{r.idle_tick_ms:.3f}",
                f"{r.expiring_tick_ms:.1f} ({r.expired:,})",
                f"{r.lookup_us:.2f}",
            ]
            for r in results
        ],
    )
    largest = results[-1]
    report.target(
        f"≤ 1 KiB per empty session at {largest.sessions:,}",
        f"{largest.bytes_per_session:.0f} B",
        largest.bytes_per_session <= 1024,
    )
    report.target(
        f"reaper tick with nothing due ≤ 1 ms at {largest.sessions:,}",
        f"{largest.idle_tick_ms:.3f} ms",
        largest.idle_tick_ms <= 1,
    )


def machine(report: Report) -> None:
    with open("/proc/cpuinfo") as cpuinfo:
        models = [line.split(":", 1)[1].strip() for line in cpuinfo if "model name" in line]
    cpu = models[0] if models else "?"
    versions = ", ".join(
        f"{package} {importlib.metadata.version(package)}"
        for package in (
            "servletsession",
            "starlette",
            "starsessions",
            "fastsession",
            "uvicorn",
            "redis",
            "SQLAlchemy",
        )
    )
    report.say(
        f"Machine: {os.cpu_count()} cores ({cpu}), Python {platform.python_version()}, "
        f"{platform.system()} {platform.release()}"
    )
    report.say(f"Versions: {versions}")
    report.say()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--sizes", default=None)
    parser.add_argument("--skip-server", action="store_true")
    parser.add_argument("--skip-stores", action="store_true")
    parser.add_argument("--markdown", default=None)
    args = parser.parse_args()
    sizes = (
        [int(s) for s in args.sizes.split(",")]
        if args.sizes
        else ([10_000, 100_000] if args.quick else [10_000, 100_000, 1_000_000])
    )
    report = Report()
    report.say("# servletsession benchmarks")
    report.say()
    machine(report)
    asyncio.run(in_process(report, rounds=9 if args.quick else 41))
    if not args.skip_server:
        through_server(report, seconds=2 if args.quick else 5, rounds=2 if args.quick else 5)
    if not args.skip_stores:
        asyncio.run(shared_stores(report, requests=200 if args.quick else 1000))
    memory_scale(report, sizes)
    report.say("## Targets")
    report.say()
    report.table(
        ["target", "measured", "met"],
        [[w, m, "yes" if ok else "**no**"] for w, m, ok in report.targets],
    )
    if args.markdown:
        with open(args.markdown, "w") as out:
            out.write("\n".join(report.lines) + "\n")


if __name__ == "__main__":
    main()
