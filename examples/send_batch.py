"""Send a few conversions in one request with `Transport` and print each result.

    python examples/send_batch.py           # PINTEREST_ACCESS_TOKEN and
                                            # PINTEREST_AD_ACCOUNT_ID set
    python examples/send_batch.py --live    # recorded, not only validated
    python examples/send_batch.py --fake    # a fake Pinterest API on 127.0.0.1

The events are made up, so they go in Pinterest's test mode (validated,
not recorded) unless `--live` is given. `PINTEREST_API_URL` overrides the
API's address. Without credentials, the fake is used, and the script says
so. Exit status: 0 when every event was processed, 1 when Pinterest
rejected some, 2 when the request failed.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from pinterest_mw import ConversionsError, Event, Transport, build_event
from pinterest_mw.testing import FAKE_ACCESS_TOKEN, FAKE_AD_ACCOUNT_ID, serve_fake_api


def conversions() -> list[Event]:
    """Three events from a shop's back office; personal data is hashed here."""
    return [
        build_event(
            "checkout",
            user_data={"email": "Jane.Doe@Example.com", "phone": "+1 415 555 0100"},
            custom_data={"value": "59.90", "currency": "USD", "order_id": "1001"},
            event_id="order-1001",
        ),
        build_event(
            "lead",
            action_source="offline",
            user_data={"email": "sam@example.org", "first_name": "Sam"},
        ),
        build_event(
            "signup",
            user_data={
                "client_ip_address": "203.0.113.7",
                "client_user_agent": "Mozilla/5.0 (X11; Linux x86_64)",
            },
        ),
    ]


@contextmanager
def pinterest(use_fake: bool) -> Iterator[tuple[str, str, str | None]]:
    """The access token, ad account and API URL to send with."""
    token = os.environ.get("PINTEREST_ACCESS_TOKEN")
    ad_account_id = os.environ.get("PINTEREST_AD_ACCOUNT_ID")
    if token and ad_account_id and not use_fake:
        yield token, ad_account_id, os.environ.get("PINTEREST_API_URL")
        return

    if not use_fake:
        print("No Pinterest credentials: sending to a fake API.", file=sys.stderr)
    with serve_fake_api() as api_url:
        yield FAKE_ACCESS_TOKEN, FAKE_AD_ACCOUNT_ID, api_url


def main() -> int:
    parser = argparse.ArgumentParser(description="Send a few made-up conversions.")
    parser.add_argument("--fake", action="store_true", help="send to a local fake")
    parser.add_argument("--live", action="store_true", help="not in test mode")
    args = parser.parse_args()
    # The transport logs retries and abandoned requests as WARNING.
    logging.basicConfig(format="%(name)s: %(message)s")

    events = conversions()
    with (
        pinterest(args.fake) as (token, ad_account_id, api_url),
        Transport(token, ad_account_id, api_url=api_url) as transport,
    ):
        try:
            sent = transport.send(events, test=not args.live)
        except ConversionsError as error:
            print(f"Not sent: {error}", file=sys.stderr)
            return 2

    mode = "live" if args.live else "test mode"
    print(f"Sent {len(events)} events to {transport.api_url} ({mode}):")
    for result in sent.results:
        note = result.error_message or result.warning_message or ""
        line = f"  {result.event_name:<9} {result.event_id:<36} {result.status} {note}"
        print(line.rstrip())

    return 0 if sent.ok else 1


if __name__ == "__main__":
    sys.exit(main())
