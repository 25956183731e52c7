"""End to end over real sockets: browser -> uvicorn -> sub-app -> fake Pinterest."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Mount, Route

from pinterest_mw.asgi import pinterest_app
from pinterest_mw.client import Client
from pinterest_mw.dispatch import DeliveryBackoff
from pinterest_mw.hashing import sha256_hex
from pinterest_mw.testing import (
    FAKE_ACCESS_TOKEN,
    FAKE_AD_ACCOUNT_ID,
    FakePinterestAPI,
    RecordedRequest,
    serve_fake_api,
)
from pinterest_mw.transport import RetryPolicy

pytestmark = pytest.mark.e2e

SHOP = "https://shop.example"
USER_AGENT = "Mozilla/5.0 (e2e)"
EMAILS = [f"Buyer.{i}@Example.com" for i in range(5)]
PHONE = "+1 (415) 555-0100"


@contextmanager
def serve(app: Any) -> Iterator[str]:
    """Serve an ASGI app with uvicorn on 127.0.0.1 in a thread; yield its URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        app, log_config=None, access_log=False, timeout_graceful_shutdown=2
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]})
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not server.started:
            assert thread.is_alive(), "uvicorn did not start"
            assert time.monotonic() < deadline, "uvicorn did not start in time"
            time.sleep(0.01)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


def wait_for_requests(fake: FakePinterestAPI, count: int) -> list[RecordedRequest]:
    """Wait (up to a generous deadline) until the fake received `count` requests."""
    deadline = time.monotonic() + 10
    while len(fake.requests) < count and time.monotonic() < deadline:
        time.sleep(0.01)
    return fake.requests


@pytest.fixture
def fake() -> FakePinterestAPI:
    return FakePinterestAPI()


@pytest.fixture
def shop(fake: FakePinterestAPI) -> Iterator[str]:
    """A shop app with the sub-app mounted, served in front of the served fake.

    The client sends a batch once five events wait, and its flush interval is
    long: so the five posted events can only arrive together.
    """
    with serve_fake_api(fake) as api_url:
        client = Client(
            FAKE_ACCESS_TOKEN,
            FAKE_AD_ACCOUNT_ID,
            api_url=api_url,
            batch_size=5,
            flush_interval=30,
            retry=RetryPolicy(attempts=1),
            backoff=DeliveryBackoff(initial=0.02, maximum=0.1, jitter=0),
        )

        async def home(request: Request) -> PlainTextResponse:
            return PlainTextResponse("shop")

        host = Starlette(
            routes=[
                Route("/", home),
                Mount("/pinterest", pinterest_app(client, allow_origins=[SHOP])),
            ]
        )
        try:
            with serve(host) as url:
                yield url
                # Stopped while the server's loop, where its worker runs, lives.
                client.close(timeout=5)
        finally:
            client.close(timeout=1)


def post_events(shop: str) -> list[str]:
    ids: list[str] = []
    with httpx.Client(base_url=shop) as browser:
        for email in EMAILS:
            response = browser.post(
                "/pinterest/track-event",
                json={
                    "event_name": "checkout",
                    "user_data": {"email": email, "phone": PHONE},
                },
                headers={
                    "origin": SHOP,
                    "referer": f"{SHOP}/checkout",
                    "user-agent": USER_AGENT,
                    "content-type": "text/plain;charset=UTF-8",
                },
            )
            assert response.status_code == 202
            ids += response.json()["event_ids"]
    return ids


def test_posted_events_arrive_batched_in_one_request(
    shop: str, fake: FakePinterestAPI
) -> None:
    ids = post_events(shop)

    [request] = wait_for_requests(fake, 1)

    assert request.event_ids() == ids


def test_posted_events_arrive_hashed(shop: str, fake: FakePinterestAPI) -> None:
    post_events(shop)

    [request] = wait_for_requests(fake, 1)

    emails = [event["user_data"]["em"] for event in request.json()["data"]]
    assert emails == [[sha256_hex(email.lower())] for email in EMAILS]


def test_no_raw_personal_data_reaches_pinterest(
    shop: str, fake: FakePinterestAPI
) -> None:
    post_events(shop)

    requests = wait_for_requests(fake, 1)

    assert requests
    for request in requests:
        assert b"@Example.com" not in request.body
        assert b"@example.com" not in request.body
        assert b"555-0100" not in request.body


def test_events_carry_the_browser_context(shop: str, fake: FakePinterestAPI) -> None:
    post_events(shop)

    [request] = wait_for_requests(fake, 1)

    first = request.json()["data"][0]
    assert first["user_data"]["client_ip_address"] == "127.0.0.1"
    assert first["user_data"]["client_user_agent"] == USER_AGENT
    assert first["event_source_url"] == f"{SHOP}/checkout"


def test_host_app_still_serves_its_own_routes(shop: str) -> None:
    assert httpx.get(f"{shop}/").text == "shop"


def test_health_is_served_through_the_mount(shop: str) -> None:
    response = httpx.get(f"{shop}/pinterest/health")

    assert response.json()["status"] == "ok"
