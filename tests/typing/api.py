"""Type-checked by mypy, never run: the public API as users write it.

A change that breaks these annotations breaks users' type checking.
"""

from __future__ import annotations

from decimal import Decimal

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route

import pinterest_mw
from pinterest_mw import (
    ActionSource,
    Client,
    Counters,
    Event,
    EventName,
    EventStatus,
    SendResult,
    Transport,
    WireEvent,
    build_event,
    current_event,
    hash_user_data,
    pinterest_app,
    track_conversion,
)

client = Client(access_token="pina_example", ad_account_id="549755813888")

event: Event = build_event(
    EventName.CHECKOUT,
    ActionSource.WEB,
    user_data={"email": "ann@example.com"},
    custom_data={"value": Decimal("19.99"), "currency": "USD"},
)
tracked: Event = client.track({"event_name": "page_visit", "user_data": {}})
wire: WireEvent = event.to_wire_event()
payload: bytes = event.to_json()
counters: Counters = client.counters
hashed: list[str] | str = hash_user_data({"email": "ann@example.com"}).fields["em"]

with Transport("pina_example", "549755813888", test_mode=True) as transport:
    result: SendResult = transport.send([event])
    statuses: list[EventStatus] = [entry.status for entry in result.results]


@track_conversion("checkout", custom_data={"currency": "USD"})
async def checkout(request: Request) -> Response:
    event_id: str = current_event().event_id
    return JSONResponse({"event_id": event_id})


@track_conversion("signup")
def signup(request: Request) -> Response:
    return JSONResponse({})


app = Starlette(
    routes=[
        Route("/checkout", checkout, methods=["POST"]),
        Route("/signup", signup, methods=["POST"]),
        Mount("/pinterest", pinterest_app(client, allow_origins=["https://a.test"])),
    ],
    lifespan=pinterest_mw.lifespan(client),
)
