"""The track endpoints as an ASGI app, to mount in Starlette or FastAPI.

```python
app.mount(
    "/pinterest",
    pinterest_app(client, allow_origins=["https://shop.example"]),
)
```

The browser then posts its events to `/pinterest/track-event`; the app
validates, enriches and hashes them, queues them and answers `202` at once.
Delivery to Pinterest happens in the background, in batches. Mounted apps
get no lifespan from Starlette, and need none to deliver: the client's
dispatcher starts with the first event, and at SIGTERM a hook delivers
what is queued in memory before the process ends. Under uvicorn that hook
runs when the signal arrives, so events accepted during the graceful
shutdown that follows are sent at once but not waited for.

A sending client with a durable outbox also starts delivery at the app's
first request in each process, whatever it asks for (a `GET /health`, a
`404`; not a CORS preflight, which `CORSMiddleware` answers before the
app), so that what the outbox kept from an earlier run goes out without a
new event. With a client whose `dispatcher` is `"thread"`, that starts
when the app is built if the outbox holds events then. Otherwise they wait
for that first request.

To start delivery at start-up and flush after the last request, closing
both windows, give the host app `lifespan=lifespan(client)` (from
`pinterest_mw`).

The WSGI twin is `pinterest_mw.wsgi.pinterest_wsgi_app`; both share their
rules (`pinterest_mw._ingest`), so they answer alike.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterable

import anyio
import anyio.to_thread
from anyio.lowlevel import RunVar
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route

from ._ingest import (
    DEFAULT_MAX_BODY_SIZE,
    DEFAULT_RATE_LIMIT_BURST,
    DEFAULT_SECRET_HEADER,
    MALFORMED_JSON,
    NOT_FOUND,
    BodyBuffer,
    Ingest,
    ParsedEvents,
    Reply,
    method_not_allowed,
)
from .client import Client
from .context import RequestContext, TrustedProxies
from .exceptions import QueueFullError

__all__ = ["pinterest_app"]

logger = logging.getLogger(__name__)

TEST_SENDS_AT_ONCE = 4
"""`/track-event-test` calls that may wait for Pinterest at once, per loop."""

_TEST_LIMITER: RunVar[anyio.CapacityLimiter] = RunVar("pinterest_mw_test_limiter")


def pinterest_app(
    client: Client | None = None,
    *,
    allow_origins: Iterable[str] | None = None,
    allow_credentials: bool = False,
    trusted_proxies: Iterable[str] | TrustedProxies | None = None,
    max_body_size: int = DEFAULT_MAX_BODY_SIZE,
    shared_secret: str | None = None,
    shared_secret_header: str = DEFAULT_SECRET_HEADER,
    rate_limit: float | None = None,
    rate_limit_burst: int = DEFAULT_RATE_LIMIT_BURST,
    test_endpoint: bool | None = None,
) -> Starlette:
    """Build the mountable track endpoints.

    Endpoints (each also answers with a trailing slash, without a redirect):

    - `POST /track-event`: one event object, `{"data": [...]}` with 1 to
      1000 events, or the original npm package's body `{"advertiser_id":
      "...", "event_data": {...} or [...]}`. Field names may be Pinterest's
      (`em`, `ph`) or ours (`email`, `phone`); personal data may be raw or
      already hashed. `action_source` defaults to `"web"`. Answers `202`
      `{"accepted": n, "event_ids": [...], "warnings": [{"path", "reason"}]}`
      once the events are queued (on disk, with a durable outbox).
    - `POST /track-event-test` (only with `test_endpoint`; `404` otherwise):
      the same body, sent at once in Pinterest's test mode; answers `200`
      with Pinterest's verdict per event, `502` when Pinterest refused the
      request or could not be reached (then `"sent_to_pinterest": false`),
      within about 15 seconds (`TEST_SEND_WITHIN`). At most four such
      sends wait at a time, in threads of their own. Without credentials
      nothing is sent: the answer says so (`"sent_to_pinterest": false`)
      and lists the local validation results.
    - `GET /health`: `{"status": "ok", "sending": ..., "counters": {...}}`;
      `"status": "degraded"`, with a `"problem"`, while delivery is stalled
      (an outbox that cannot be read, Pinterest refusing the token).

    Refusals, all JSON with an `error` code (never a 500): `400` not UTF-8
    JSON; `401` wrong shared secret; `403` `origin_not_allowed`: an
    `Origin` header that is neither listed in `allow_origins` nor this
    host's own (`null` included), or `advertiser_not_allowed`: an
    `advertiser_id` outside the client's `advertiser_ids` (a check of the
    body only: events always go to the client's `ad_account_id`, whatever
    the body names); `405`;
    `411` (WSGI only: no length); `413` body over `max_body_size` (checked
    while reading); `415` a content type other than `application/json` or
    `text/plain` (what `navigator.sendBeacon` sends for a string); `422`
    invalid events, every field at fault listed with its path from the body
    (`data.2.custom_data.value`), nothing accepted; `429` rate limited;
    `503` with `Retry-After` when the delivery queue is full (the body lists
    which event ids were queued and which were dropped: resend only those)
    or when our own code failed.

    Enrichment, from the request, never from the body: the client IP (see
    `trusted_proxies`) and the user agent replace what the body says, and a
    body's values are dropped when the request has none. The `_epik` click
    id of the request (cookie, or `epik` in the `Referer`) replaces the
    body's; a body's click id is kept only when the request has none (a
    page of another site cannot send its first-party cookie here). The
    `Referer`, without its query string except `epik` and `utm_*`
    parameters, fills in `event_source_url`, and `Accept-Language` fills in
    `language`, when the event has none; an `event_source_url` in the body
    is sent as given.

    Args:
        client: the client that queues and sends; defaults to
            `get_default_client()`, resolved now.
        allow_origins: origins whose pages may post, such as
            `["https://shop.example"]` (scheme, host, port; no path).
            Default: `PINTEREST_ALLOW_ORIGINS`, comma-separated; none when
            unset. Pages of the host the request names (`Host`) and
            callers that send no `Origin` (servers, curl) can always post;
            a POST from any other page is refused with `403`, since a page
            can post a `text/plain` body cross-origin without a preflight.
            Behind a proxy that rewrites `Host`, list your own origin.
            `"*"` allows any page, which lets anyone's page send you
            events.
        allow_credentials: let pages send cookies (the `_epik` click id
            lives in one); refused together with `"*"`.
        trusted_proxies: IPs or networks of the proxies in front of this app
            whose `X-Forwarded-For`/`Forwarded` headers are believed.
            Default: `PINTEREST_TRUSTED_PROXIES`, comma-separated; none when
            unset, and then the peer address is the client.
        max_body_size: the most bytes a body may hold (64 KiB).
        shared_secret: when set (or `PINTEREST_SHARED_SECRET` is), the POST
            endpoints answer `401` unless the request carries it in
            `shared_secret_header`, compared in constant time. It keeps out
            callers who do not know it, such as other sites' scripts; a
            secret shipped in a public page's JavaScript is no secret, so
            it suits server-to-server posting best.
        shared_secret_header: the header that carries it.
        rate_limit: requests per second allowed per client IP on the POST
            endpoints, after a burst of `rate_limit_burst`; beyond it, `429`
            with `Retry-After`. In memory, per process (see `RateLimiter`).
            Off by default.
        rate_limit_burst: requests an IP may make at once.
        test_endpoint: serve `/track-event-test`. Default:
            `PINTEREST_TEST_ENDPOINT` (`1`, `true`, ...), off when unset. It
            waits for Pinterest, so each call costs an API request on your
            ad account's rate limit, and anyone who can reach it can probe
            what Pinterest thinks of an event: turn it on for development.

    CORS goes through Starlette's `CORSMiddleware`, on every answer,
    refusals included. Do not add CORS for this path in the host app too.

    Privacy: personal data is hashed before it is queued; the client IP,
    user agent and click id are sent unhashed, as Pinterest requires.
    Nothing from a body or a header is logged or echoed back, only event
    ids, event names and field paths.

    Raises:
        ConfigurationError: for any unusable option, here and not at the
            first request.
    """
    ingest = Ingest(
        client,
        allow_origins=allow_origins,
        allow_credentials=allow_credentials,
        trusted_proxies=trusted_proxies,
        max_body_size=max_body_size,
        shared_secret=shared_secret,
        shared_secret_header=shared_secret_header,
        rate_limit=rate_limit,
        rate_limit_burst=rate_limit_burst,
        test_endpoint=test_endpoint,
    )
    # Without a loop yet, only a thread can start: the async dispatcher
    # starts at the first request, in the server's loop.
    ingest.client._start_if_events_kept(thread_only=True)
    endpoints = _Endpoints(ingest)
    routes = [
        Route("/track-event", endpoints.track, methods=["POST"]),
        Route("/track-event/", endpoints.track, methods=["POST"]),
        Route("/health", endpoints.health, methods=["GET"]),
        Route("/health/", endpoints.health, methods=["GET"]),
    ]
    if ingest.test_endpoint:
        routes += [
            Route("/track-event-test", endpoints.track_test, methods=["POST"]),
            Route("/track-event-test/", endpoints.track_test, methods=["POST"]),
        ]
    app = Starlette(
        routes=routes,
        middleware=[Middleware(CORSMiddleware, **ingest.cors.middleware_options())],
        exception_handlers={HTTPException: endpoints.http_error},
    )
    # Both spellings are routes of their own: a redirect would cost the
    # browser a round trip and, for a POST, may lose the body.
    app.router.redirect_slashes = False

    return app


def _test_limiter() -> anyio.CapacityLimiter:
    """The threads `/track-event-test` may hold at once, per event loop.

    Apart from anyio's default pool, which the durable outbox's writes and
    `/health` use: slow test sends must not hold those up.
    """
    try:
        return _TEST_LIMITER.get()
    except LookupError:
        limiter = anyio.CapacityLimiter(TEST_SENDS_AT_ONCE)
        _TEST_LIMITER.set(limiter)
        return limiter


def _response(reply: Reply) -> Response:
    return Response(
        reply.body,
        status_code=reply.status,
        headers=dict(reply.headers),
        media_type=reply.media_type,
    )


class _Endpoints:
    """The request handlers, bound to one configuration.

    Each starts with `Client._start_delivery_once()`: one attribute read
    once delivery started, and no middleware layer around every request.
    """

    def __init__(self, ingest: Ingest) -> None:
        self._ingest = ingest
        self._client = ingest.client
        self._proxies = ingest.trusted_proxies
        self._secret_header = ingest.secret_header

    async def track(self, request: Request) -> Response:
        self._client._start_delivery_once()
        return _response(await self._guarded(request, test=False))

    async def track_test(self, request: Request) -> Response:
        self._client._start_delivery_once()
        return _response(await self._guarded(request, test=True))

    async def health(self, request: Request) -> Response:
        self._client._start_delivery_once()
        try:
            counters = await self._client.acounters()
            reply = self._ingest.health(counters, self._client._delivery_problem)
        except Exception as exc:  # noqa: BLE001 - answered 503 and logged by failure()
            reply = self._ingest.failure(exc)
        return _response(reply)

    async def http_error(self, request: Request, exc: Exception) -> Response:
        """Routing refusals (404, 405) as JSON, like every other answer."""
        self._client._start_delivery_once()
        if isinstance(exc, HTTPException) and exc.status_code == 405:
            allowed = (exc.headers or {}).get("Allow", "POST").split(", ")
            return _response(method_not_allowed(allowed))
        return _response(NOT_FOUND)

    async def _guarded(self, request: Request, *, test: bool) -> Reply:
        # The boundary: whatever fails in here, the host app answers.
        try:
            return await self._handle(request, test=test)
        except ClientDisconnect:
            logger.debug("the client went away before its body was read")
            return MALFORMED_JSON
        except Exception as exc:  # noqa: BLE001 - answered 503 and logged by failure()
            return self._ingest.failure(exc)

    async def _handle(self, request: Request, *, test: bool) -> Reply:
        ingest = self._ingest
        context = RequestContext.from_scope(
            request.scope, trusted_proxies=self._proxies, page="referer"
        )
        headers = request.headers
        refusal = ingest.check_request(
            context.client_ip,
            headers.get(self._secret_header),
            headers.get("content-type"),
            headers.get("content-length"),
            origin=headers.get("origin"),
            host=headers.get("host"),
        )
        if refusal is not None:
            return refusal

        body = await self._read_body(request)
        if body is None:
            return ingest.too_large
        parsed = ingest.parse(body, context)
        if isinstance(parsed, Reply):
            return parsed

        if test:
            return await self._send_test(parsed)
        try:
            stored = await self._client.asubmit(parsed.events)
        except QueueFullError:
            stored = 0
        return ingest.accepted(parsed, stored)

    async def _read_body(self, request: Request) -> bytes | None:
        """The body, or None as soon as it grows past the limit."""
        buffer = BodyBuffer(self._ingest.max_body_size)
        async for chunk in request.stream():
            if not buffer.add(chunk):
                return None
        return buffer.getvalue()

    async def _send_test(self, parsed: ParsedEvents) -> Reply:
        if not self._client.is_sending:
            return self._ingest.local_results(parsed)
        # A blocking transport of the client's, from a thread: an async
        # transport would need a new HTTP client (and its connections) for
        # every call, since it belongs to one event loop.
        send = functools.partial(self._client._send_for_test_endpoint, parsed.events)
        result = await anyio.to_thread.run_sync(send, limiter=_test_limiter())
        return self._ingest.test_results(parsed, result)
