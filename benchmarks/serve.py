"""Serve one benchmark app with uvicorn (one worker) on 127.0.0.1.

```
python -m benchmarks.serve KIND [--upstream URL] [--latency S] [--outbox PATH]
```

KIND is `bare`, `naive`, `ours`, `fake`, `view` or `decorated-view` (see
`benchmarks.apps`). The server binds a free port and prints it on the
first line of standard output, then serves until it is terminated. With
`BENCHMARK_PROFILE=PATH` in the environment it runs under cProfile and
writes the stats to PATH when it stops.
"""

from __future__ import annotations

import argparse
import cProfile
import logging
import os
import signal
import socket
import sys
from typing import Any

import uvicorn

from benchmarks import apps

__all__ = ["main"]

PROFILE_ENV = "BENCHMARK_PROFILE"
"""When set, the server runs under cProfile and writes its stats there."""

KINDS = ("bare", "naive", "ours", "fake", "view", "decorated-view")


def build(kind: str, upstream: str | None, latency: float, outbox: str | None) -> Any:
    """The app of `kind`, configured."""
    if kind == "bare":
        return apps.bare_app()
    if kind == "fake":
        return apps.fake_app(latency)
    if upstream is None:
        raise SystemExit(f"{kind} needs --upstream")
    if kind == "naive":
        return apps.naive_app(upstream)
    if kind == "ours":
        return apps.ours_app(upstream, outbox)
    return apps.view_app(upstream, decorated=kind == "decorated-view")


def main(argv: list[str] | None = None) -> None:
    """Parse the arguments, bind, print the port, serve."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.serve")
    parser.add_argument("kind", choices=KINDS)
    parser.add_argument("--upstream")
    parser.add_argument("--latency", type=float, default=0.0)
    parser.add_argument("--outbox")
    args = parser.parse_args(argv)

    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    if os.environ.get("BENCHMARK_GC_OFF"):
        import gc

        gc.disable()
    app = build(args.kind, args.upstream, args.latency, args.outbox)
    # IPPROTO_TCP spelled out: asyncio sets TCP_NODELAY only on sockets whose
    # proto says TCP, and without it every answer waits for a delayed ACK.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(
        app,
        access_log=False,
        log_level="warning",
        lifespan="auto",
        backlog=1024,
        timeout_graceful_shutdown=1,
    )
    server = uvicorn.Server(config)
    # uvicorn re-raises the signal that stopped it once it has shut down;
    # exiting through SystemExit then lets the profile below be written.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
    print(sock.getsockname()[1], flush=True)
    profile_path = os.environ.get(PROFILE_ENV)
    if not profile_path:
        server.run(sockets=[sock])
        return
    profiler = cProfile.Profile()
    profiler.enable()
    try:
        server.run(sockets=[sock])
    finally:
        profiler.disable()
        profiler.dump_stats(profile_path)


if __name__ == "__main__":
    main()
