"""Benchmark 2: what `@track_conversion` costs a trivial view.

Three measurements, each the same view with and without the decorator,
alternated round after round:

- Starlette served: uvicorn (one worker) on 127.0.0.1 under the same load
  generator as benchmark 1; throughput compared;
- Starlette in-process: the ASGI app called directly, no server;
- Flask in-process: the WSGI app called directly, no server (no
  production WSGI server is installed here, and Werkzeug's development
  server would dominate the figure).

The decorated view queues a `checkout` with an email and the request's IP
and user agent on a client sending to the fake Pinterest API (0 ms). The
in-process figures are the worst case: nothing but the framework around the
view. Target: under 5 % of the throughput lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable

from benchmarks import apps, workload
from benchmarks._procs import serve
from benchmarks._report import Row, median, ratio_median
from benchmarks.inprocess import asgi_caller, time_calls, wsgi_caller
from benchmarks.loadgen import run_load

__all__ = ["run"]

MAX_LOSS = 0.05

_HEADERS = {k: v for k, v in workload.HEADERS.items() if k != "Content-Type"}


def run(
    *,
    rounds: int,
    duration: float,
    connections: int,
    tool: str,
    log: Callable[[str], None],
) -> list[Row]:
    """Measure served Starlette, in-process Starlette and in-process Flask."""
    rows: list[Row] = []
    with serve("fake", "--latency", "0") as fake:
        rows.append(_served(fake.url, rounds, duration, connections, tool, log))
        rows.append(_asgi_in_process(fake.url, rounds, log))
        rows.append(_wsgi_in_process(fake.url, rounds, log))

    return rows


def _row(variant: str, plain: list[float], decorated: list[float], unit: str) -> Row:
    ratio = ratio_median(decorated, plain)
    lost = 1 - ratio
    per_call = median(1e6 / d - 1e6 / p for p, d in zip(plain, decorated, strict=True))
    return Row(
        "2 decorator",
        variant,
        median(decorated),
        unit,
        "same view undecorated",
        ratio,
        f"lost < {MAX_LOSS:.0%}",
        lost < MAX_LOSS,
        note=f"{lost:.1%} lost; +{per_call:.0f} us per request;"
        f" undecorated {median(plain):,.0f} {unit}",
    )


def _served(
    upstream: str,
    rounds: int,
    duration: float,
    connections: int,
    tool: str,
    log: Callable[[str], None],
) -> Row:
    results: dict[str, list[float]] = {"view": [], "decorated-view": []}
    with contextlib.ExitStack() as stack:
        servers = {
            kind: stack.enter_context(serve(kind, "--upstream", upstream))
            for kind in results
        }

        def load(kind: str, seconds: float) -> float:
            result = run_load(
                servers[kind].url + "/",
                method="GET",
                headers=_HEADERS,
                duration=seconds,
                connections=connections,
                tool=tool,
            )
            if result.non_2xx or result.errors:
                raise RuntimeError(f"{kind}: {result}")
            return result.requests_per_second

        for kind in results:
            load(kind, 1)
        for number in range(rounds):
            order = list(results) if number % 2 == 0 else list(reversed(results))
            for kind in order:
                results[kind].append(load(kind, duration))
            log(
                f"decorator served round {number + 1}/{rounds}: "
                f"{results['view'][-1]:,.0f} vs {results['decorated-view'][-1]:,.0f}"
                " req/s"
            )

    return _row(
        "Starlette, served (uvicorn)",
        results["view"],
        results["decorated-view"],
        "req/s",
    )


def _asgi_in_process(upstream: str, rounds: int, log: Callable[[str], None]) -> Row:
    async def rate(call: Callable[[], Awaitable[object]], seconds: float) -> float:
        count = 0
        start = time.perf_counter()
        while (elapsed := time.perf_counter() - start) < seconds:
            for _ in range(50):
                await call()
            # A server yields to the loop between requests; so do we,
            # which lets the dispatcher deliver.
            await asyncio.sleep(0)
            count += 50
        return count / elapsed

    async def measure() -> tuple[list[float], list[float]]:
        client = apps.client_for(upstream)
        calls = {
            decorated: asgi_caller(
                apps.view_app(upstream, decorated=decorated, client=client),
                "GET",
                "/",
                _HEADERS,
            )
            for decorated in (False, True)
        }
        results: dict[bool, list[float]] = {False: [], True: []}
        try:
            for decorated in (False, True):
                await rate(calls[decorated], 0.3)
            for number in range(rounds * 2):
                order = (False, True) if number % 2 == 0 else (True, False)
                for decorated in order:
                    results[decorated].append(await rate(calls[decorated], 0.5))
        finally:
            # Delivers what is queued while the fake still runs.
            await client.aclose()
        return results[False], results[True]

    plain, decorated = asyncio.run(measure())
    log(
        "decorator Starlette in-process: "
        f"{median(plain):,.0f} vs {median(decorated):,.0f}"
    )
    return _row("Starlette, in-process (ASGI call)", plain, decorated, "calls/s")


def _wsgi_in_process(upstream: str, rounds: int, log: Callable[[str], None]) -> Row:
    client = apps.client_for(upstream)
    calls = {
        decorated: wsgi_caller(
            apps.flask_view_app(upstream, decorated=decorated, client=client),
            "GET",
            "/",
            _HEADERS,
        )
        for decorated in (False, True)
    }
    results: dict[bool, list[float]] = {False: [], True: []}
    try:
        for decorated in (False, True):
            time_calls(calls[decorated], 0.3)
        for number in range(rounds * 2):
            order = (False, True) if number % 2 == 0 else (True, False)
            for decorated in order:
                results[decorated].append(time_calls(calls[decorated], 0.5))
    finally:
        client.close()
    log(
        f"decorator Flask in-process: {median(results[False]):,.0f} vs "
        f"{median(results[True]):,.0f}"
    )
    return _row(
        "Flask, in-process (WSGI call)", results[False], results[True], "calls/s"
    )
