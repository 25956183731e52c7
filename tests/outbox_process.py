"""A separate process for the tests that kill, restart, signal and share processes.

Usage:

    python outbox_process.py accept OUTBOX API_URL COUNT
        Track COUNT events into the SQLite outbox at OUTBOX (nothing is sent
        before the process ends: the flush interval is long), print each
        event id, then "accepted", then sleep until killed.
    python outbox_process.py send OUTBOX API_URL COUNT BATCH_SIZE
        Track COUNT events into the SQLite outbox at OUTBOX and send them at
        once, in batches of BATCH_SIZE; print each event id, then
        "accepted", then sleep until killed (the test kills it mid-send).
    python outbox_process.py deliver OUTBOX API_URL TIMEOUT
        Deliver what the outbox holds until it is empty (or TIMEOUT seconds
        pass), then print "delivered <processed count>".
    python outbox_process.py share OUTBOX API_URL BATCH_SIZE
        Print "ready", wait for a line on stdin, then deliver what the outbox
        holds in batches of BATCH_SIZE until it is empty (in every process
        sharing it), then print "delivered <processed count>".
    python outbox_process.py exit API_URL COUNT
        Track COUNT events in memory with a long flush interval, print each
        event id, then return: the exit hook must deliver them.
    python outbox_process.py sigterm API_URL COUNT
        Track COUNT events in memory with a long flush interval, print each
        event id, then "accepted", then sleep until a signal ends it: the
        SIGTERM hook must deliver them.
    python outbox_process.py stall API_URL COUNT DISPATCHER
        Track COUNT events in memory with the DISPATCHER ("thread", or
        "async": in an event loop of the main thread, as under an ASGI
        server) and send them at once to an API that never answers, with a
        SIGTERM deadline of one second; log errors to stderr; print
        "accepted", then sleep until a signal ends it.

The fake API's token and ad account are used throughout.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time

from pinterest_mw.client import Client
from pinterest_mw.dispatch import DeliveryBackoff
from pinterest_mw.testing import FAKE_ACCESS_TOKEN, FAKE_AD_ACCOUNT_ID
from pinterest_mw.transport import RetryPolicy


def client(api_url: str, **options: object) -> Client:
    return Client(
        FAKE_ACCESS_TOKEN,
        FAKE_AD_ACCOUNT_ID,
        api_url=api_url,
        retry=RetryPolicy(attempts=2, initial_backoff=0.01, total_budget=5),
        backoff=DeliveryBackoff(initial=0.05, maximum=0.2, jitter=0),
        **{"shutdown_timeout": 10, **options},  # type: ignore[arg-type]
    )


def track(target: Client, count: int) -> None:
    for index in range(count):
        event = target.track(
            {
                "event_name": "checkout",
                "action_source": "web",
                "user_data": {"email": f"buyer{index}@example.com"},
            }
        )
        print(event.event_id, flush=True)


async def track_in_a_loop(target: Client, count: int) -> None:
    """Track, print "accepted", then wait in the loop until a signal ends it."""
    for index in range(count):
        await target.atrack(
            {
                "event_name": "checkout",
                "action_source": "web",
                "user_data": {"email": f"buyer{index}@example.com"},
            }
        )
    print("accepted", flush=True)
    await asyncio.sleep(3600)


def deliver(target: Client, timeout: float) -> None:
    target.start()
    target.flush(timeout)
    print(f"delivered {target.counters.processed}", flush=True)
    target.close()


def main(argv: list[str]) -> None:
    mode = argv[0]
    if mode == "accept":
        outbox, api_url, count = argv[1], argv[2], int(argv[3])
        track(client(api_url, outbox=outbox, flush_interval=3600), count)
        print("accepted", flush=True)
        time.sleep(3600)
    elif mode == "send":
        outbox, api_url, count, size = argv[1], argv[2], int(argv[3]), int(argv[4])
        sender = client(api_url, outbox=outbox, flush_interval=0.02, batch_size=size)
        track(sender, count)
        print("accepted", flush=True)
        time.sleep(3600)
    elif mode == "deliver":
        outbox, api_url, timeout = argv[1], argv[2], float(argv[3])
        deliver(client(api_url, outbox=outbox, flush_interval=0.02), timeout)
    elif mode == "share":
        outbox, api_url, size = argv[1], argv[2], int(argv[3])
        sharer = client(api_url, outbox=outbox, flush_interval=0.02, batch_size=size)
        print("ready", flush=True)
        sys.stdin.readline()
        deliver(sharer, 60)
    elif mode == "exit":
        api_url, count = argv[1], int(argv[2])
        track(client(api_url, flush_interval=3600), count)
    elif mode == "sigterm":
        api_url, count = argv[1], int(argv[2])
        track(client(api_url, flush_interval=3600), count)
        print("accepted", flush=True)
        time.sleep(3600)
    elif mode == "stall":
        api_url, count, kind = argv[1], int(argv[2]), argv[3]
        logging.basicConfig(level=logging.ERROR, format="%(levelname)s %(message)s")
        stalled = client(
            api_url, flush_interval=0.02, dispatcher=kind, shutdown_timeout=1
        )
        if kind == "async":
            asyncio.run(track_in_a_loop(stalled, count))
        track(stalled, count)
        print("accepted", flush=True)
        time.sleep(3600)
    else:
        raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
