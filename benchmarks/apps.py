"""The applications the benchmarks serve, each built by one factory.

- `bare_app()`: baseline (a), a Starlette endpoint that only parses the
  JSON body and answers 202;
- `naive_app(upstream)`: baseline (b), a forwarder that validates the event
  as we do and then awaits one Pinterest call per request;
- `ours_app(upstream, outbox)`: `pinterest_app(...)` with the in-memory
  queue (`outbox=None`) or a SQLite outbox at the path given;
- `fake_app(latency)`: the fake Pinterest API with added latency, plus a
  `/_stats` endpoint counting the requests and events it received;
- `view_app(upstream, decorated)` and `flask_view_app(upstream,
  decorated)`: a trivial Starlette or Flask view, with or without
  `@track_conversion`, for the decorator benchmark.

Every app that talks to Pinterest talks to the fake on 127.0.0.1.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from pinterest_mw.asgi import pinterest_app
from pinterest_mw.client import Client
from pinterest_mw.context import RequestContext, enrich_event_data
from pinterest_mw.decorators import track_conversion
from pinterest_mw.events import parse_event
from pinterest_mw.testing import FAKE_ACCESS_TOKEN, FAKE_AD_ACCOUNT_ID, FakePinterestAPI
from pinterest_mw.transport import AsyncTransport, RetryPolicy

__all__ = [
    "ORIGIN",
    "bare_app",
    "client_for",
    "fake_app",
    "flask_view_app",
    "naive_app",
    "ours_app",
    "view_app",
]

ORIGIN = "https://shop.example"
"""The page origin the load generator claims, allowed by our endpoint."""

_ACCEPTED = b'{"accepted":1}'


def client_for(upstream: str, outbox: str | None = None) -> Client:
    """A client queueing for the fake at `upstream`; one attempt per batch."""
    return Client(
        FAKE_ACCESS_TOKEN,
        FAKE_AD_ACCOUNT_ID,
        api_url=upstream,
        outbox=outbox,
        retry=RetryPolicy(attempts=1),
    )


def bare_app() -> Starlette:
    """Baseline (a): parse the JSON body, answer 202; nothing else."""

    async def track(request: Request) -> Response:
        json.loads(await request.body())
        return Response(_ACCEPTED, 202, media_type="application/json")

    return Starlette(routes=[Route("/track-event", track, methods=["POST"])])


def naive_app(upstream: str) -> Starlette:
    """Baseline (b): validate and hash like us, then await Pinterest per request.

    What a forwarder without a queue does: the response waits for the
    upstream call, so its latency and throughput follow Pinterest's.
    """
    transport: dict[str, AsyncTransport] = {}

    @asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        async with AsyncTransport(
            FAKE_ACCESS_TOKEN,
            FAKE_AD_ACCOUNT_ID,
            api_url=upstream,
            retry=RetryPolicy(attempts=1),
        ) as sender:
            transport["sender"] = sender
            yield

    async def track(request: Request) -> Response:
        data = json.loads(await request.body())
        context = RequestContext.from_scope(request.scope, page="referer")
        data = enrich_event_data(data, context)
        data.setdefault("action_source", "web")
        event = parse_event(data)
        results = await transport["sender"].send_batch([event.to_wire_event()])
        status = 202 if results[0].is_processed else 502
        return Response(_ACCEPTED, status, media_type="application/json")

    return Starlette(
        routes=[Route("/track-event", track, methods=["POST"])], lifespan=lifespan
    )


def ours_app(upstream: str, outbox: str | None = None) -> Starlette:
    """Our endpoint, as `pinterest-mw serve` runs it, queueing for `upstream`."""
    return pinterest_app(client_for(upstream, outbox), allow_origins=[ORIGIN])


def fake_app(latency: float) -> Any:
    """The fake Pinterest API, answering after `latency` seconds.

    `GET /_stats` tells how many requests and events it received since it
    started. The fake's own records are cleared as they are counted, so a
    long run does not hold every event in memory.
    """
    fake = FakePinterestAPI(latency=latency)
    totals = {"requests": 0, "events": 0}

    def collect() -> None:
        totals["requests"] += len(fake.requests)
        totals["events"] += len(fake.events) + len(fake.test_events)
        fake.reset()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"] == "/_stats":
            collect()
            body = json.dumps(totals).encode()
            await Response(body, media_type="application/json")(scope, receive, send)
            return
        await fake.app(scope, receive, send)
        if scope["type"] == "http" and len(fake.requests) >= 100:
            collect()

    return app


def view_app(
    upstream: str, *, decorated: bool, client: Client | None = None
) -> Starlette:
    """A trivial view; with `decorated`, it emits a checkout per request.

    The events go to `client`, else to a new client for `upstream` (which
    the caller then cannot close: fine for a server process, not in-process).
    """

    async def view(request: Request) -> Response:
        return PlainTextResponse("ok")

    if decorated:
        view = track_conversion(
            "checkout",
            client=client or client_for(upstream),
            user_data={"email": "buyer@example.com"},
        )(view)

    return Starlette(routes=[Route("/", view, methods=["GET", "POST"])])


def flask_view_app(
    upstream: str, *, decorated: bool, client: Client | None = None
) -> Any:
    """The same trivial view in Flask (a WSGI app); `client` as in `view_app`."""
    from flask import Flask

    app = Flask("benchmark")

    def view() -> str:
        return "ok"

    if decorated:
        view = track_conversion(
            "checkout",
            client=client or client_for(upstream),
            user_data={"email": "buyer@example.com"},
        )(view)
    app.add_url_rule("/", "view", view, methods=["GET", "POST"])

    return app
