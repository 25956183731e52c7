"""The track endpoints as a plain WSGI app, to mount in Flask or any WSGI server.

```python
from werkzeug.middleware.dispatcher import DispatcherMiddleware

flask_app.wsgi_app = DispatcherMiddleware(
    flask_app.wsgi_app,
    {"/pinterest": pinterest_wsgi_app(allow_origins=["https://shop.example"])},
)
```

It answers exactly as the ASGI app (`pinterest_mw.asgi.pinterest_app`),
whose docstring describes the endpoints, options and refusals; both share
their rules (`pinterest_mw._ingest`). Events are queued for a background
thread (the client's `ThreadDispatcher`), so a request never waits for
Pinterest, except at `/track-event-test`, which is there to wait (about
15 seconds at most). Delivery starts with the first event; with a sending
client and a durable outbox, also when the app is built if the outbox
holds events from an earlier run, or else at the app's first request in
each process, whatever it asks for (a CORS preflight aside), so that what
the outbox kept goes out without a new event.

No web framework is imported: this is PEP 3333 WSGI, CORS included.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from ._ingest import (
    DEFAULT_MAX_BODY_SIZE,
    DEFAULT_RATE_LIMIT_BURST,
    DEFAULT_SECRET_HEADER,
    LENGTH_REQUIRED,
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

if TYPE_CHECKING:
    from wsgiref.types import StartResponse, WSGIApplication, WSGIEnvironment

__all__ = ["pinterest_wsgi_app"]


_READ_SIZE = 64 * 1024

_Handler = Callable[["WSGIEnvironment"], Reply]


def pinterest_wsgi_app(
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
) -> WSGIApplication:
    """Build the track endpoints as a WSGI application.

    Same endpoints, options, answers and environment variables as
    `pinterest_app` (see there). The client defaults to
    `get_default_client()`, whose dispatcher is a thread when first used
    outside an event loop, as under a WSGI server. CORS follows the same
    rules as Starlette's `CORSMiddleware` with the same options, on every
    answer.

    `/track-event-test` is off unless `test_endpoint=True` or
    `PINTEREST_TEST_ENDPOINT` is set; a POST whose `Origin` is neither
    listed nor this host's own is refused with `403`; the body's client IP
    and user agent are never used.

    A body without `Content-Length` is read only when the server marks its
    input as terminated (`wsgi.input_terminated`, as for chunked uploads);
    otherwise it is refused with `411`, since reading it could block.

    Raises:
        ConfigurationError: for any unusable option.
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
    # Built outside any event loop (as WSGI apps are), the client's
    # dispatcher is a thread, which can start now.
    ingest.client._start_if_events_kept(thread_only=False)
    return _WSGIApp(ingest)


class _WSGIApp:
    """The endpoints, routed by `PATH_INFO`, with CORS around them."""

    def __init__(self, ingest: Ingest) -> None:
        self._ingest = ingest
        self._client = ingest.client
        self._cors = ingest.cors
        self._proxies = ingest.trusted_proxies
        self._secret_key = "HTTP_" + ingest.secret_header.upper().replace("-", "_")
        post = ("POST",)
        get = ("GET", "HEAD")
        handlers: list[tuple[str, tuple[str, ...], _Handler]] = [
            ("/track-event", post, self._track),
            ("/health", get, self._health),
        ]
        if ingest.test_endpoint:
            handlers.append(("/track-event-test", post, self._track_test))
        self._routes: dict[str, tuple[tuple[str, ...], _Handler, Reply]] = {}
        for path, methods, handler in handlers:
            route = (methods, handler, method_not_allowed(methods))
            self._routes[path] = self._routes[path + "/"] = route

    def __repr__(self) -> str:
        return f"pinterest_wsgi_app({self._ingest!r})"

    def __call__(
        self, environ: WSGIEnvironment, start_response: StartResponse
    ) -> Iterable[bytes]:
        method = environ.get("REQUEST_METHOD", "GET")
        origin = environ.get("HTTP_ORIGIN")
        if (
            origin is not None
            and method == "OPTIONS"
            and "HTTP_ACCESS_CONTROL_REQUEST_METHOD" in environ
        ):
            reply = self._cors.preflight(
                origin,
                environ["HTTP_ACCESS_CONTROL_REQUEST_METHOD"],
                environ.get("HTTP_ACCESS_CONTROL_REQUEST_HEADERS"),
                environ.get("HTTP_ACCESS_CONTROL_REQUEST_PRIVATE_NETWORK"),
            )
            cors = []
        else:
            reply = self._route(environ, method)
            cors = self._cors.response_headers(origin)

        headers = [
            ("Content-Type", reply.media_type),
            ("Content-Length", str(len(reply.body))),
            *reply.headers,
            *cors,
        ]
        start_response(reply.status_line, headers)
        return [b"" if method == "HEAD" else reply.body]

    def _route(self, environ: WSGIEnvironment, method: str) -> Reply:
        self._client._start_delivery_once()
        route = self._routes.get(environ.get("PATH_INFO") or "/")
        if route is None:
            return NOT_FOUND
        methods, handler, refusal = route
        if method not in methods:
            return refusal
        # The boundary: whatever fails in here, the host app answers.
        try:
            return handler(environ)
        except Exception as exc:  # noqa: BLE001 - answered 503 and logged by failure()
            return self._ingest.failure(exc)

    def _health(self, environ: WSGIEnvironment) -> Reply:
        return self._ingest.health(
            self._client.counters, self._client._delivery_problem
        )

    def _track(self, environ: WSGIEnvironment) -> Reply:
        parsed = self._parse(environ)
        if isinstance(parsed, Reply):
            return parsed
        try:
            stored = self._client.submit(parsed.events)
        except QueueFullError:
            stored = 0
        return self._ingest.accepted(parsed, stored)

    def _track_test(self, environ: WSGIEnvironment) -> Reply:
        parsed = self._parse(environ)
        if isinstance(parsed, Reply):
            return parsed
        if not self._client.is_sending:
            return self._ingest.local_results(parsed)
        result = self._client._send_for_test_endpoint(parsed.events)
        return self._ingest.test_results(parsed, result)

    def _parse(self, environ: WSGIEnvironment) -> ParsedEvents | Reply:
        ingest = self._ingest
        context = RequestContext.from_environ(
            environ, trusted_proxies=self._proxies, page="referer"
        )
        content_length = environ.get("CONTENT_LENGTH")
        refusal = ingest.check_request(
            context.client_ip,
            environ.get(self._secret_key),
            environ.get("CONTENT_TYPE"),
            content_length,
            origin=environ.get("HTTP_ORIGIN"),
            host=environ.get("HTTP_HOST"),
        )
        if refusal is not None:
            return refusal

        body = self._read_body(environ, int(content_length) if content_length else None)
        if isinstance(body, Reply):
            return body
        return ingest.parse(body, context)

    def _read_body(self, environ: WSGIEnvironment, length: int | None) -> bytes | Reply:
        """The body, or the refusal: 411 when unbounded, 413 once over the limit."""
        if length is None and not environ.get("wsgi.input_terminated"):
            return LENGTH_REQUIRED
        stream: Any = environ["wsgi.input"]
        buffer = BodyBuffer(self._ingest.max_body_size)
        remaining = length
        while remaining is None or remaining > 0:
            size = _READ_SIZE if remaining is None else min(_READ_SIZE, remaining)
            chunk = stream.read(size)
            if not chunk:
                break
            if not buffer.add(chunk):
                return self._ingest.too_large
            if remaining is not None:
                remaining -= len(chunk)
        return buffer.getvalue()
