"""Profile the paths the benchmarks time, with cProfile, in-process.

```
python -m benchmarks.profiling hashing
python -m benchmarks.profiling endpoint-memory --top 25
python -m benchmarks.profiling endpoint-sqlite decorator-starlette decorator-flask
```

Each target repeats one path many times under cProfile and prints the
functions that took the most time of their own (`tottime`) and the
package's functions by cumulative time. The endpoint and decorator targets
call the apps directly (`benchmarks.inprocess`), so the figures are the
app's own cost without uvicorn or a socket; the clients deliver to a fake
Pinterest API served on 127.0.0.1 for the duration of the run. For a
profile of a served app, set `BENCHMARK_PROFILE=PATH` for
`python -m benchmarks.serve` (see `benchmarks.serve`).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import pstats
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks import apps, workload
from benchmarks._procs import serve
from benchmarks.inprocess import asgi_caller, wsgi_caller
from pinterest_mw.asgi import pinterest_app
from pinterest_mw.client import Client
from pinterest_mw.hashing import hash_user_data

__all__ = ["main"]

TARGETS = (
    "hashing",
    "endpoint-memory",
    "endpoint-sqlite",
    "decorator-starlette",
    "decorator-flask",
)
_VIEW_HEADERS = {k: v for k, v in workload.HEADERS.items() if k != "Content-Type"}


def _report(profile: cProfile.Profile, calls: int, top: int) -> str:
    """The hottest functions by own time, and the package's by cumulative."""
    out = io.StringIO()
    stats = pstats.Stats(profile, stream=out)
    total = stats.total_tt  # type: ignore[attr-defined]
    out.write(f"{calls:,} calls, {total / calls * 1e6:.1f} us each under cProfile\n")
    stats.sort_stats("tottime").print_stats(top)
    stats.sort_stats("cumulative").print_stats("pinterest_mw", top)
    return out.getvalue()


def _hashing(top: int) -> str:
    records = [workload.full_user_data(index) for index in range(20_000)]
    for record in records:  # warm the tables and caches, as the benchmark does
        hash_user_data(record)
    profile = cProfile.Profile()
    profile.enable()
    for record in records:
        hash_user_data(record)
    profile.disable()
    return _report(profile, len(records), top)


async def _profile_async(call: Callable[[], Any], count: int) -> cProfile.Profile:
    for _ in range(200):
        await call()
    await asyncio.sleep(0.2)
    profile = cProfile.Profile()
    profile.enable()
    for index in range(count):
        await call()
        if index % 50 == 49:
            await asyncio.sleep(0)  # a server yields between requests too
    await asyncio.sleep(0.2)  # let the dispatcher deliver what is queued
    profile.disable()
    return profile


def _endpoint(upstream: str, outbox: str | None, top: int) -> str:
    async def measure() -> cProfile.Profile:
        client = apps.client_for(upstream, outbox)
        app = pinterest_app(client, allow_origins=[apps.ORIGIN])
        call = asgi_caller(
            app, "POST", "/track-event", workload.HEADERS, workload.TRACK_BODY
        )
        try:
            return await _profile_async(call, 5_000)
        finally:
            await client.aclose()

    return _report(asyncio.run(measure()), 5_000, top)


def _decorator_starlette(upstream: str, top: int) -> str:
    async def measure() -> cProfile.Profile:
        client = apps.client_for(upstream)
        app = apps.view_app(upstream, decorated=True, client=client)
        try:
            return await _profile_async(
                asgi_caller(app, "GET", "/", _VIEW_HEADERS), 5_000
            )
        finally:
            await client.aclose()

    return _report(asyncio.run(measure()), 5_000, top)


def _decorator_flask(upstream: str, top: int) -> str:
    client: Client = apps.client_for(upstream)
    call = wsgi_caller(
        apps.flask_view_app(upstream, decorated=True, client=client),
        "GET",
        "/",
        _VIEW_HEADERS,
    )
    try:
        for _ in range(200):
            call()
        profile = cProfile.Profile()
        profile.enable()
        for _ in range(5_000):
            call()
        profile.disable()
    finally:
        client.close()
    return _report(profile, 5_000, top)


def main(argv: list[str] | None = None) -> None:
    """Profile the targets named on the command line (default: all)."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.profiling")
    parser.add_argument("targets", nargs="*", help="any of: " + ", ".join(TARGETS))
    parser.add_argument("--top", type=int, default=15, help="functions per listing")
    args = parser.parse_args(argv)
    targets = args.targets or list(TARGETS)
    unknown = set(targets) - set(TARGETS)
    if unknown:
        parser.error(f"unknown targets: {', '.join(sorted(unknown))}")

    with serve("fake", "--latency", "0") as fake, tempfile.TemporaryDirectory() as tmp:
        for target in targets:
            print(f"\n===== {target} =====")
            if target == "hashing":
                text = _hashing(args.top)
            elif target == "endpoint-memory":
                text = _endpoint(fake.url, None, args.top)
            elif target == "endpoint-sqlite":
                text = _endpoint(fake.url, str(Path(tmp) / "outbox.sqlite3"), args.top)
            elif target == "decorator-starlette":
                text = _decorator_starlette(fake.url, args.top)
            else:
                text = _decorator_flask(fake.url, args.top)
            print(text)


if __name__ == "__main__":
    main()
