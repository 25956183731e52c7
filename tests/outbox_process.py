"""A separate process for the outbox tests that kill, restart and share processes.

Usage:

    python outbox_process.py accept OUTBOX API_URL COUNT
        Track COUNT events into the SQLite outbox at OUTBOX (nothing is sent
        before the process ends: the flush interval is long), print each
        event id, then "accepted", then sleep until killed.
    python outbox_process.py deliver OUTBOX API_URL TIMEOUT
        Deliver what the outbox holds until it is empty (or TIMEOUT seconds
        pass), then print "delivered <processed count>".
    python outbox_process.py exit API_URL COUNT
        Track COUNT events in memory with a long flush interval, print each
        event id, then return: the exit hook must deliver them.

The fake API's token and ad account are used throughout.
"""

from __future__ import annotations

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
        shutdown_timeout=10,
        **options,  # type: ignore[arg-type]
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


def main(argv: list[str]) -> None:
    mode = argv[0]
    if mode == "accept":
        outbox, api_url, count = argv[1], argv[2], int(argv[3])
        track(client(api_url, outbox=outbox, flush_interval=3600), count)
        print("accepted", flush=True)
        time.sleep(3600)
    elif mode == "deliver":
        outbox, api_url, timeout = argv[1], argv[2], float(argv[3])
        deliverer = client(api_url, outbox=outbox, flush_interval=0.02)
        deliverer.start()
        deliverer.flush(timeout)
        print(f"delivered {deliverer.counters.processed}", flush=True)
        deliverer.close()
    elif mode == "exit":
        api_url, count = argv[1], int(argv[2])
        track(client(api_url, flush_interval=3600), count)
    else:
        raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
