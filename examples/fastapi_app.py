"""A FastAPI shop API that reports its checkouts to Pinterest.

- `/pinterest/...`: the track endpoints, mounted, for the shop's pages.
- `POST /orders/{order_id}/checkout`: an endpoint with `@track_conversion`
  below the route decorator and a `Depends` that loads the order. Its
  answer carries the event's id: the page gives it to the Pinterest tag
  (`pintrk("track", "checkout", {event_id, ...})`) so Pinterest counts the
  conversion once.

Run it from the repository root, with
`uvicorn --no-proxy-headers examples.fastapi_app:app` or
`python examples/fastapi_app.py` (port `$PORT`, default 8000), then open
http://127.0.0.1:8000/docs. It is configured from the environment
(`Client.from_env`); without credentials, events are kept in
./pinterest-mw-data/outbox.sqlite3 instead of being sent.

`--no-proxy-headers`: uvicorn otherwise rewrites the client address from
`X-Forwarded-For` sent by any peer on 127.0.0.1, before the trusted-proxy
rules of `pinterest_mw` see it. Behind a proxy, set `trusted_proxies` (or
`PINTEREST_TRUSTED_PROXIES`) instead, or give uvicorn
`--forwarded-allow-ips` with the same addresses.
"""

from __future__ import annotations

import os
from typing import Annotated

from fastapi import Depends, FastAPI, HTTPException
from pydantic import BaseModel

from pinterest_mw import (
    Client,
    PinterestMiddleware,
    current_event,
    deterministic_event_id,
    lifespan,
    pinterest_app,
    track_conversion,
)


class Order(BaseModel):
    id: str
    email: str
    total: str
    currency: str


class Receipt(BaseModel):
    order_id: str
    event_id: str


# Stands in for the shop's database.
ORDERS = {
    "1001": Order(
        id="1001", email="Jane.Doe@Example.com", total="59.90", currency="USD"
    )
}

client = Client.from_env()

app = FastAPI(title="Shop", lifespan=lifespan(client))
# Gives endpoints the request's IP, user agent and click id, and its client.
app.add_middleware(PinterestMiddleware, client=client)
# Pages on these origins may post too; same-origin pages always can.
app.mount("/pinterest", pinterest_app(client, allow_origins=["https://shop.example"]))


def find_order(order_id: str) -> Order:
    order = ORDERS.get(order_id)
    if order is None:
        raise HTTPException(status_code=404, detail="no such order")
    return order


@app.post("/orders/{order_id}/checkout")
@track_conversion(
    "checkout",
    # One order, one id: a retried checkout is still one conversion.
    event_id=lambda request: deterministic_event_id(
        "order", request.path_params["order_id"]
    ),
)
async def checkout(order: Annotated[Order, Depends(find_order)]) -> Receipt:
    event = current_event()
    event.user_data["email"] = order.email  # hashed before it is queued
    event.custom_data.update(
        value=order.total, currency=order.currency, order_id=order.id
    )

    return Receipt(order_id=order.id, event_id=event.event_id)


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
