"""A Starlette shop that reports its checkouts to Pinterest.

- `/pinterest/...`: the track endpoints, mounted; the home page's button
  posts an `add_to_cart` event to `/pinterest/track-event`.
- `/orders/{order_id}/thank-you`: a checkout view with `@track_conversion`.
  It renders the event's id into the Pinterest tag's call, so the tag and
  the server report one conversion under one id and Pinterest counts it once.

Run it from the repository root, with
`uvicorn --no-proxy-headers examples.starlette_app:app` or
`python examples/starlette_app.py` (port `$PORT`, default 8000). It is
configured from the environment (`Client.from_env`); without credentials,
events are kept in ./pinterest-mw-data/outbox.sqlite3 instead of being sent.

`--no-proxy-headers`: uvicorn otherwise rewrites the client address from
`X-Forwarded-For` sent by any peer on 127.0.0.1, before the trusted-proxy
rules of `pinterest_mw` see it. Behind a proxy, set `trusted_proxies` (or
`PINTEREST_TRUSTED_PROXIES`) instead, or give uvicorn
`--forwarded-allow-ips` with the same addresses.
"""

from __future__ import annotations

import json
import os

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse
from starlette.routing import Route

from pinterest_mw import (
    Client,
    PinterestMiddleware,
    current_event,
    deterministic_event_id,
    lifespan,
    pinterest_app,
    track_conversion,
)

# Stands in for the shop's database.
ORDERS = {
    "1001": {"email": "Jane.Doe@Example.com", "total": "59.90", "currency": "USD"}
}

HOME = """<!doctype html>
<title>Shop</title>
<button id="add">Add to cart</button>
<script>
  document.getElementById("add").onclick = () => navigator.sendBeacon(
    "/pinterest/track-event",
    JSON.stringify({
      event_name: "add_to_cart",
      custom_data: {value: "59.90", currency: "USD"},
    }),
  );
</script>
"""

THANK_YOU = """<!doctype html>
<title>Thank you</title>
<p>Order {order_id} is confirmed.</p>
<script>window.pintrk?.("track", "checkout", {tag_data});</script>
"""

client = Client.from_env()


async def home(request: Request) -> HTMLResponse:
    return HTMLResponse(HOME)


@track_conversion(
    "checkout",
    # One order, one id: a reloaded thank-you page is still one conversion.
    event_id=lambda request: deterministic_event_id(
        "order", request.path_params["order_id"]
    ),
)
async def thank_you(request: Request) -> HTMLResponse:
    order_id = request.path_params["order_id"]
    order = ORDERS.get(order_id)
    if order is None:
        raise HTTPException(404)  # an error emits no event

    event = current_event()
    event.user_data["email"] = order["email"]  # hashed before it is queued
    sale = {
        "value": order["total"],
        "currency": order["currency"],
        "order_id": order_id,
    }
    event.custom_data.update(sale)
    tag_data = json.dumps({"event_id": event.event_id, **sale})

    return HTMLResponse(THANK_YOU.format(order_id=order_id, tag_data=tag_data))


app = Starlette(
    routes=[Route("/", home), Route("/orders/{order_id}/thank-you", thank_you)],
    # Gives views the request's IP, user agent and click id, and its client.
    middleware=[Middleware(PinterestMiddleware, client=client)],
    # Starts delivery at start-up and flushes what is queued at shutdown.
    lifespan=lifespan(client),
)
# Pages on these origins may post too; same-origin pages always can.
app.mount("/pinterest", pinterest_app(client, allow_origins=["https://shop.example"]))

if __name__ == "__main__":
    import uvicorn

    # uvicorn's own X-Forwarded-For handling would believe any local peer;
    # behind a proxy, give PinterestMiddleware and the sub-app trusted_proxies.
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=int(os.environ.get("PORT", "8000")),
        proxy_headers=False,
    )
