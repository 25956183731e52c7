"""A Flask shop that reports its checkouts to Pinterest.

- `/pinterest/...`: the track endpoints as a WSGI app, mounted with
  Werkzeug's `DispatcherMiddleware`, for the shop's pages to post to.
- `/orders/<order_id>/thank-you`: a checkout view with `@track_conversion`.
  Its template hands `current_event().event_id` to the Pinterest tag, so the
  tag and the server report one conversion under one id and Pinterest
  counts it once.

Run it from the repository root, with `flask --app examples/flask_app run`
or `python examples/flask_app.py` (port `$PORT`, default 5000). It is
configured from the environment (`Client.from_env`); without credentials,
events are kept in ./pinterest-mw-data/outbox.sqlite3 instead of being sent.
"""

from __future__ import annotations

import os

from flask import Flask, abort, render_template_string
from werkzeug.middleware.dispatcher import DispatcherMiddleware

from pinterest_mw import (
    Client,
    PinterestWSGIMiddleware,
    current_event,
    deterministic_event_id,
    pinterest_wsgi_app,
    track_conversion,
)

# Stands in for the shop's database.
ORDERS = {
    "1001": {"email": "Jane.Doe@Example.com", "total": "59.90", "currency": "USD"}
}

THANK_YOU = """<!doctype html>
<title>Thank you</title>
<p>Order {{ order_id }} is confirmed.</p>
<script>
  window.pintrk?.("track", "checkout", {
    event_id: {{ current_event().event_id|tojson }},
    value: {{ order.total|tojson }},
    currency: {{ order.currency|tojson }},
    order_id: {{ order_id|tojson }},
  });
</script>
"""

# A WSGI server has no event loop: a background thread delivers the events.
client = Client.from_env(dispatcher="thread")

app = Flask(__name__)
app.add_template_global(current_event)


@app.get("/orders/<order_id>/thank-you")
@track_conversion(
    "checkout",
    # One order, one id: a reloaded thank-you page is still one conversion.
    event_id=lambda request: deterministic_event_id(
        "order", request.view_args["order_id"]
    ),
)
def thank_you(order_id: str) -> str:
    order = ORDERS.get(order_id)
    if order is None:
        abort(404)  # an error emits no event

    event = current_event()
    event.user_data["email"] = order["email"]  # hashed before it is queued
    event.custom_data.update(
        value=order["total"], currency=order["currency"], order_id=order_id
    )

    return render_template_string(THANK_YOU, order_id=order_id, order=order)


# Gives views the request's IP, user agent and click id, and its client.
app.wsgi_app = PinterestWSGIMiddleware(app.wsgi_app, client=client)  # type: ignore[method-assign]
# Pages on these origins may post too; same-origin pages always can.
app.wsgi_app = DispatcherMiddleware(  # type: ignore[method-assign]
    app.wsgi_app,
    {"/pinterest": pinterest_wsgi_app(client, allow_origins=["https://shop.example"])},
)

if __name__ == "__main__":
    app.run(host="127.0.0.1", port=int(os.environ.get("PORT", "5000")))
