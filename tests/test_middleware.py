"""The request-context middleware (ASGI and WSGI): context, `_epik` cookie, rules."""

from __future__ import annotations

import contextlib
import logging
import socket
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import flask
import httpx
import pytest
import uvicorn
from _helpers import SHOP
from fastapi import FastAPI
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.exceptions import StarletteDeprecationWarning
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import (
    HTMLResponse,
    JSONResponse,
    PlainTextResponse,
    Response,
    StreamingResponse,
)
from starlette.routing import Route

from pinterest_mw.client import Client
from pinterest_mw.context import RequestContext, TrustedProxies, current_context
from pinterest_mw.decorators import current_event, hook_counters, track_conversion
from pinterest_mw.exceptions import ConfigurationError, EventValidationError
from pinterest_mw.middleware import (
    EPIK_COOKIE_MAX_AGE,
    PinterestMiddleware,
    PinterestWSGIMiddleware,
    RouteRule,
)
from pinterest_mw.testing import FakePinterestAPI

with warnings.catch_warnings():
    # Starlette 1.10 asks for httpx2 under its TestClient; httpx still works.
    warnings.simplefilter("ignore", StarletteDeprecationWarning)
    from starlette.testclient import TestClient

PEER = "203.0.113.9"
PROXY = "10.0.0.2"
FORWARDED_CLIENT = "198.51.100.7"
USER_AGENT = "Mozilla/5.0 (X11; Linux x86_64) TestBrowser/1.0"
COOKIE_ATTRIBUTES = f"; Max-Age={EPIK_COOKIE_MAX_AGE}; Path=/; SameSite=Lax; Secure"
KINDS = ["asgi", "wsgi"]
PAGE_VISIT = RouteRule(
    "page_visit",
    methods={"GET"},
    include=["/products/*"],
    exclude=["/products/admin/*"],
    content_types={"text/html"},
)


def sent_events(client: Client, fake: FakePinterestAPI) -> list[dict[str, Any]]:
    assert client.flush(timeout=5)
    return fake.events


# --- the shop under test, as ASGI and as WSGI ------------------------------------


def context_fields() -> dict[str, str | None]:
    context = current_context() or RequestContext()
    return {
        "client_ip": context.client_ip,
        "user_agent": context.user_agent,
        "click_id": context.click_id,
    }


def asgi_shop(client: Client | None, **options: Any) -> Starlette:
    async def product(request: Request) -> Response:
        return HTMLResponse("<p>product</p>")

    async def product_json(request: Request) -> Response:
        return JSONResponse({"product": 1})

    async def missing(request: Request) -> Response:
        return HTMLResponse("<p>gone</p>", status_code=404)

    async def own_cookie(request: Request) -> Response:
        response = HTMLResponse("<p>mine</p>")
        response.set_cookie("_epik", "set-by-the-app")
        return response

    async def context(request: Request) -> Response:
        return JSONResponse(context_fields())

    async def cached(request: Request) -> Response:
        cache_control = request.query_params["cache-control"]
        return HTMLResponse("<p>cached</p>", headers={"cache-control": cache_control})

    async def lead(request: Request) -> Response:
        assert client is not None
        await client.atrack({"event_name": "lead", "action_source": "web"})
        return PlainTextResponse("thanks")

    routes = [
        Route("/products/{name:path}", product, methods=["GET", "POST", "OPTIONS"]),
        Route("/api/products/1", product_json),
        Route("/missing", missing),
        Route("/own-cookie", own_cookie),
        Route("/context", context),
        Route("/cached", cached),
        Route("/lead", lead),
    ]
    middleware = [Middleware(PinterestMiddleware, client=client, **options)]
    return Starlette(routes=routes, middleware=middleware)


def wsgi_shop(client: Client | None, **options: Any) -> flask.Flask:
    app = flask.Flask(__name__)

    @app.route("/products/<path:name>", methods=["GET", "POST"])
    def product(name: str) -> Any:
        return "<p>product</p>"

    @app.get("/api/products/1")
    def product_json() -> Any:
        return {"product": 1}

    @app.get("/missing")
    def missing() -> Any:
        return "<p>gone</p>", 404

    @app.get("/own-cookie")
    def own_cookie() -> Any:
        response = flask.make_response("<p>mine</p>")
        response.set_cookie("_epik", "set-by-the-app")
        return response

    @app.get("/context")
    def context() -> Any:
        return context_fields()

    @app.get("/cached")
    def cached() -> Any:
        cache_control = flask.request.args["cache-control"]
        return "<p>cached</p>", {"cache-control": cache_control}

    @app.get("/lead")
    def lead() -> Any:
        assert client is not None
        client.track({"event_name": "lead", "action_source": "web"})
        return "thanks"

    app.wsgi_app = PinterestWSGIMiddleware(  # type: ignore[method-assign]
        app.wsgi_app, client=client, **options
    )
    return app


@dataclass
class Reply:
    status: int
    text: str
    json: Any
    set_cookies: list[str]
    cache_control: list[str]


class Browser:
    """GETs and POSTs against an ASGI (TestClient) or a WSGI (Flask) shop."""

    def __init__(self, app: Any, peer: str) -> None:
        self._app = app
        self._peer = peer
        self._stack = contextlib.ExitStack()

    def __enter__(self) -> Browser:
        if isinstance(self._app, flask.Flask):
            self._flask = self._app.test_client()
        else:
            self._asgi = self._stack.enter_context(
                TestClient(self._app, base_url=SHOP, client=(self._peer, 50000))
            )
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stack.close()

    def request(self, method: str, path: str, headers: dict[str, str]) -> Reply:
        headers = {"user-agent": USER_AGENT, **headers}
        if isinstance(self._app, flask.Flask):
            response = self._flask.open(
                path,
                method=method,
                base_url=SHOP,
                headers=headers,
                environ_base={"REMOTE_ADDR": self._peer},
                # As a server does: read the whole body, then close it.
                buffered=True,
            )
            return Reply(
                response.status_code,
                response.text,
                response.get_json(silent=True),
                response.headers.getlist("Set-Cookie"),
                response.headers.getlist("Cache-Control"),
            )
        response = self._asgi.request(method, path, headers=headers)
        json = response.json() if "json" in response.headers["content-type"] else None
        return Reply(
            response.status_code,
            response.text,
            json,
            response.headers.get_list("set-cookie"),
            response.headers.get_list("cache-control"),
        )


def shop(kind: str, client: Client | None, **options: Any) -> Any:
    return (asgi_shop if kind == "asgi" else wsgi_shop)(client, **options)


def fetch(
    kind: str,
    client: Client | None,
    path: str,
    *,
    method: str = "GET",
    peer: str = PEER,
    headers: dict[str, str] | None = None,
    **options: Any,
) -> Reply:
    with Browser(shop(kind, client, **options), peer) as browser:
        return browser.request(method, path, headers or {})


# --- the request context ------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize("scope_type", ["lifespan", "websocket"])
async def test_other_scopes_pass_straight_through(scope_type: str) -> None:
    seen: list[Any] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.extend([scope, receive, send, current_context()])

    async def receive() -> dict[str, Any]:
        return {}

    async def send(message: Any) -> None:
        return None

    scope = {"type": scope_type}
    await PinterestMiddleware(app, epik_cookie=True)(scope, receive, send)

    assert seen == [scope, receive, send, None]


@pytest.mark.parametrize("kind", KINDS)
def test_view_sees_the_request_context(kind: str) -> None:
    reply = fetch(kind, None, "/context?epik=click-1")

    assert reply.json == {
        "client_ip": PEER,
        "user_agent": USER_AGENT,
        "click_id": "click-1",
    }


@pytest.mark.parametrize("kind", KINDS)
def test_client_track_in_a_view_is_enriched_from_the_request(
    kind: str, client: Client, fake_pinterest: FakePinterestAPI
) -> None:
    fetch(kind, client, "/lead")

    [event] = sent_events(client, fake_pinterest)
    assert event["user_data"]["client_ip_address"] == PEER
    assert event["user_data"]["client_user_agent"] == USER_AGENT
    assert event["event_source_url"] == f"{SHOP}/lead"


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    ("peer", "trusted", "expected"),
    [
        (PROXY, ["10.0.0.0/8"], FORWARDED_CLIENT),
        (PROXY, [], PROXY),
        (PEER, ["10.0.0.0/8"], PEER),
    ],
    ids=["trusted-proxy", "no-trusted-proxies", "untrusted-peer"],
)
def test_client_ip_follows_the_trusted_proxy_rules(
    kind: str, peer: str, trusted: list[str], expected: str
) -> None:
    reply = fetch(
        kind,
        None,
        "/context",
        peer=peer,
        headers={"x-forwarded-for": FORWARDED_CLIENT},
        trusted_proxies=trusted,
    )

    assert reply.json["client_ip"] == expected


@pytest.mark.parametrize("kind", KINDS)
def test_trusted_proxies_default_to_the_environment_as_for_the_sub_app(
    kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PINTEREST_TRUSTED_PROXIES", "10.0.0.0/8, ::1")

    reply = fetch(
        kind,
        None,
        "/context",
        peer=PROXY,
        headers={"x-forwarded-for": FORWARDED_CLIENT},
    )

    assert reply.json["client_ip"] == FORWARDED_CLIENT


@pytest.mark.parametrize("kind", KINDS)
def test_no_context_is_left_behind_after_the_request(kind: str) -> None:
    fetch(kind, None, "/context")

    assert current_context() is None


@contextlib.contextmanager
def serve_on_unix_socket(app: Any) -> Iterator[httpx.Client]:
    """Serve `app` with uvicorn on a unix socket, as behind nginx; a client for it."""
    directory = tempfile.TemporaryDirectory(prefix="pmw-", dir="/tmp")
    path = f"{directory.name}/app.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(path)
    config = uvicorn.Config(app, log_config=None, access_log=False)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]})
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not server.started:
            assert thread.is_alive(), "uvicorn did not start"
            assert time.monotonic() < deadline, "uvicorn did not start in time"
            time.sleep(0.01)
        transport = httpx.HTTPTransport(uds=path)
        with httpx.Client(transport=transport, base_url="http://shop.example") as web:
            yield web
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()
        directory.cleanup()


@pytest.mark.e2e
@pytest.mark.parametrize(
    ("trusted", "expected"), [(["unix"], FORWARDED_CLIENT), ([], None)]
)
def test_proxy_on_a_unix_socket_is_believed_when_trusted(
    trusted: list[str], expected: str | None
) -> None:
    """uvicorn reports no peer for a unix socket; `"unix"` trusts it."""
    app = asgi_shop(None, trusted_proxies=trusted)

    with serve_on_unix_socket(app) as web:
        reply = web.get("/context", headers={"x-forwarded-for": FORWARDED_CLIENT})

    assert reply.json()["client_ip"] == expected


@pytest.mark.parametrize("trusted", ["10.0.0.1", ["not an address"]])
def test_unusable_trusted_proxies_raise_at_construction(trusted: Any) -> None:
    with pytest.raises(ConfigurationError):
        PinterestMiddleware(PlainTextResponse("x"), trusted_proxies=trusted)


def test_trusted_proxies_object_is_used_as_it_is() -> None:
    reply = fetch(
        "asgi",
        None,
        "/context",
        peer=PROXY,
        headers={"x-forwarded-for": FORWARDED_CLIENT},
        trusted_proxies=TrustedProxies(["10.0.0.2"]),
    )

    assert reply.json["client_ip"] == FORWARDED_CLIENT


def test_decorated_view_uses_the_middlewares_client_and_proxies(
    client: Client, fake_pinterest: FakePinterestAPI
) -> None:
    """A FastAPI endpoint without a Request parameter: all from the middleware."""
    app = FastAPI()
    app.add_middleware(PinterestMiddleware, client=client, trusted_proxies=[PROXY])
    seen: list[str] = []

    @app.get("/orders/{order_id}")
    @track_conversion(
        "checkout", custom_data=lambda request: seen.append(request.url.path)
    )
    async def thank_you(order_id: int) -> dict[str, str]:
        return {"event_id": current_event().event_id}

    with TestClient(app, client=(PROXY, 1), headers={"user-agent": USER_AGENT}) as tc:
        reply = tc.get("/orders/5", headers={"x-forwarded-for": FORWARDED_CLIENT})

    [event] = sent_events(client, fake_pinterest)
    assert event["event_id"] == reply.json()["event_id"]
    assert event["user_data"]["client_ip_address"] == FORWARDED_CLIENT
    assert seen == ["/orders/5"]


# --- the _epik cookie ----------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_epik_query_sets_the_cookie_on_a_successful_html_page(kind: str) -> None:
    reply = fetch(
        kind, None, "/products/1?utm_source=pin&epik=dj0yJnU9abc", epik_cookie=True
    )

    assert reply.set_cookies == [f"_epik=dj0yJnU9abc{COOKIE_ATTRIBUTES}"]


def plain_http_set_cookies(
    kind: str,
    path: str,
    *,
    peer: str = PEER,
    headers: dict[str, str] | None = None,
    **options: Any,
) -> list[str]:
    """The `Set-Cookie` headers of a GET over plain http (not localhost)."""
    app = shop(kind, None, **options)
    base_url = "http://shop.example"
    if isinstance(app, flask.Flask):
        response = app.test_client().get(
            path, base_url=base_url, headers=headers, environ_base={"REMOTE_ADDR": peer}
        )
        return response.headers.getlist("Set-Cookie")
    with TestClient(app, base_url=base_url, client=(peer, 1)) as test_client:
        return test_client.get(path, headers=headers).headers.get_list("set-cookie")


@pytest.mark.parametrize("kind", KINDS)
def test_epik_cookie_over_plain_http_is_not_secure(kind: str) -> None:
    """Browsers drop a Secure cookie set over http: it would never be stored."""
    cookies = plain_http_set_cookies(kind, "/products/1?epik=abc", epik_cookie=True)

    assert cookies == [
        f"_epik=abc; Max-Age={EPIK_COOKIE_MAX_AGE}; Path=/; SameSite=Lax"
    ]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    "forwarding",
    [
        {"x-forwarded-for": FORWARDED_CLIENT, "x-forwarded-proto": "https"},
        {"forwarded": f"for={FORWARDED_CLIENT};proto=https"},
    ],
    ids=["x-forwarded-proto", "forwarded"],
)
def test_epik_cookie_is_secure_when_a_trusted_proxy_ended_tls(
    kind: str, forwarding: dict[str, str]
) -> None:
    """The server sees http from the proxy; the browser used https."""
    cookies = plain_http_set_cookies(
        kind,
        "/products/1?epik=abc",
        peer=PROXY,
        headers=forwarding,
        epik_cookie=True,
        trusted_proxies=["10.0.0.0/8"],
    )

    assert cookies == [f"_epik=abc{COOKIE_ATTRIBUTES}"]


@pytest.mark.parametrize("kind", KINDS)
def test_epik_cookie_ignores_the_protocol_claimed_by_an_untrusted_peer(
    kind: str,
) -> None:
    cookies = plain_http_set_cookies(
        kind,
        "/products/1?epik=abc",
        headers={"x-forwarded-proto": "https"},
        epik_cookie=True,
        trusted_proxies=["10.0.0.0/8"],
    )

    assert cookies == [
        f"_epik=abc; Max-Age={EPIK_COOKIE_MAX_AGE}; Path=/; SameSite=Lax"
    ]


@pytest.mark.parametrize("kind", KINDS)
def test_epik_cookie_over_plain_http_keeps_its_domain(kind: str) -> None:
    cookies = plain_http_set_cookies(
        kind,
        "/products/1?epik=abc",
        epik_cookie=True,
        cookie_domain=".shop.example",
    )

    assert cookies[0].endswith("; SameSite=Lax; Domain=.shop.example")


@pytest.mark.parametrize("kind", KINDS)
def test_epik_cookie_is_readable_by_the_tag(kind: str) -> None:
    """Not HttpOnly: the Pinterest tag's JavaScript reads the cookie."""
    reply = fetch(kind, None, "/products/1?epik=abc", epik_cookie=True)

    assert "httponly" not in reply.set_cookies[0].lower()


@pytest.mark.parametrize("kind", KINDS)
def test_url_epik_replaces_an_older_cookie(kind: str) -> None:
    reply = fetch(
        kind,
        None,
        "/products/1?epik=new-click",
        headers={"cookie": "_epik=old-click"},
        epik_cookie=True,
    )

    assert reply.set_cookies == [f"_epik=new-click{COOKIE_ATTRIBUTES}"]


@pytest.mark.parametrize("kind", KINDS)
def test_url_epik_is_the_click_id_over_an_older_cookie(kind: str) -> None:
    reply = fetch(
        kind, None, "/context?epik=new-click", headers={"cookie": "_epik=old-click"}
    )

    assert reply.json["click_id"] == "new-click"


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    ("path", "options"),
    [
        ("/products/1?epik=abc", {}),
        ("/products/1", {"epik_cookie": True}),
        ("/products/1?epik=", {"epik_cookie": True}),
        ("/api/products/1?epik=abc", {"epik_cookie": True}),
        ("/missing?epik=abc", {"epik_cookie": True}),
        ("/products/1?epik=a%3B%20Domain%3Devil.example", {"epik_cookie": True}),
        ("/products/1?epik=" + "a" * 1025, {"epik_cookie": True}),
    ],
    ids=[
        "option-off",
        "no-epik",
        "empty-epik",
        "not-html",
        "error-status",
        "not-a-cookie-value",
        "too-long",
    ],
)
def test_epik_cookie_is_not_set(kind: str, path: str, options: dict[str, Any]) -> None:
    reply = fetch(kind, None, path, **options)

    assert reply.set_cookies == []


@pytest.mark.parametrize("kind", KINDS)
def test_epik_cookie_is_set_on_get_requests_only(kind: str) -> None:
    """A landing page is a GET: a form posted to a URL with `epik` sets nothing."""
    reply = fetch(kind, None, "/products/1?epik=abc", method="POST", epik_cookie=True)

    assert reply.status == 200
    assert reply.set_cookies == []


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    "cache_control",
    ["public, max-age=600", "s-maxage=60", "max-age=60", "no-cache"],
)
def test_epik_cookie_is_not_set_on_a_page_shared_caches_may_keep(
    kind: str, cache_control: str
) -> None:
    """A CDN would hand one visitor's click id to every later visitor."""
    reply = fetch(
        kind, None, f"/cached?cache-control={cache_control}&epik=abc", epik_cookie=True
    )

    assert (reply.status, reply.set_cookies) == (200, [])


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("cache_control", ["private, max-age=60", "No-Store"])
def test_epik_cookie_is_set_on_a_page_kept_out_of_shared_caches(
    kind: str, cache_control: str
) -> None:
    reply = fetch(
        kind, None, f"/cached?cache-control={cache_control}&epik=abc", epik_cookie=True
    )

    assert reply.set_cookies == [f"_epik=abc{COOKIE_ATTRIBUTES}"]
    assert reply.cache_control == [cache_control]


@pytest.mark.parametrize("kind", KINDS)
def test_epik_cookie_keeps_a_page_without_cache_control_private(kind: str) -> None:
    reply = fetch(kind, None, "/products/1?epik=abc", epik_cookie=True)

    assert reply.cache_control == ["private"]


@pytest.mark.parametrize("kind", KINDS)
def test_page_without_the_cookie_gets_no_cache_control(kind: str) -> None:
    """The middleware touches caching only where it sets the cookie."""
    reply = fetch(kind, None, "/products/1", epik_cookie=True)

    assert reply.cache_control == []


@pytest.mark.parametrize("kind", KINDS)
def test_apps_own_epik_cookie_is_left_alone(kind: str) -> None:
    reply = fetch(kind, None, "/own-cookie?epik=abc", epik_cookie=True)

    assert [c.split(";")[0] for c in reply.set_cookies] == ["_epik=set-by-the-app"]


@pytest.mark.parametrize("kind", KINDS)
def test_cookie_domain_is_added_when_given(kind: str) -> None:
    reply = fetch(
        kind,
        None,
        "/products/1?epik=abc",
        epik_cookie=True,
        cookie_domain=".shop.example",
    )

    assert reply.set_cookies[0].endswith("; Secure; Domain=.shop.example")


@pytest.mark.parametrize("domain", ["", "shop.example; HttpOnly", "a b"])
def test_unusable_cookie_domain_raises_at_construction(domain: str) -> None:
    with pytest.raises(ConfigurationError):
        PinterestWSGIMiddleware(flask.Flask(__name__), cookie_domain=domain)


# --- route rules ---------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_route_rule_emits_one_event_for_a_matching_page(
    kind: str, client: Client, fake_pinterest: FakePinterestAPI
) -> None:
    fetch(kind, client, "/products/shoes?epik=click-7", route_rules=[PAGE_VISIT])

    [event] = sent_events(client, fake_pinterest)
    assert event["event_name"] == "page_visit"
    assert event["event_source_url"] == f"{SHOP}/products/shoes?epik=click-7"
    assert event["user_data"]["click_id"] == "click-7"


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/products/admin/users"),
        ("GET", "/missing"),
        ("GET", "/context"),
        ("POST", "/products/shoes"),
        ("GET", "/api/products/1"),
    ],
    ids=["excluded", "error-status", "not-included", "other-method", "not-html"],
)
def test_route_rule_does_not_emit(
    kind: str, method: str, path: str, client: Client
) -> None:
    rule = RouteRule(
        "page_visit",
        include=["/products/*", "/missing", "/api/*"],
        exclude=["/products/admin/*"],
    )

    fetch(kind, client, path, method=method, route_rules=[rule])

    assert client.counters.accepted == 0


@pytest.mark.parametrize("kind", KINDS)
def test_every_matching_rule_emits_its_event(
    kind: str, client: Client, fake_pinterest: FakePinterestAPI
) -> None:
    rules = [PAGE_VISIT, RouteRule("view_category", include=["/products/shoes"])]

    fetch(kind, client, "/products/shoes", route_rules=rules)

    names = sorted(e["event_name"] for e in sent_events(client, fake_pinterest))
    assert names == ["page_visit", "view_category"]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("method", ["HEAD", "OPTIONS"])
def test_route_rule_for_any_method_ignores_head_and_options(
    kind: str, method: str, client: Client
) -> None:
    """Both reach the HTML page with a 2xx (Flask answers OPTIONS itself)."""
    rule = RouteRule("page_visit", methods=None, include=["/products/*"])

    reply = fetch(kind, client, "/products/shoes", method=method, route_rules=[rule])
    client.flush(timeout=5)

    assert reply.status == 200
    assert client.counters.accepted == 0


@pytest.mark.parametrize("method", ["HEAD", "options", "TRACE"])
def test_route_rule_naming_a_method_that_is_no_visit_is_refused(method: str) -> None:
    with pytest.raises(ConfigurationError, match="not visits"):
        RouteRule("page_visit", methods=["GET", method])


@pytest.mark.parametrize("kind", KINDS)
def test_route_rule_with_any_method_and_content_type(kind: str, client: Client) -> None:
    rule = RouteRule("lead", methods=None, content_types=None, include=["/api/*"])

    fetch(kind, client, "/api/products/1", route_rules=[rule])

    assert client.counters.accepted == 1


@pytest.mark.parametrize("kind", KINDS)
def test_route_rule_event_that_cannot_be_built_is_logged_not_raised(
    kind: str, client: Client, caplog: pytest.LogCaptureFixture
) -> None:
    """Without a client IP the event has no match keys: logged, counted, passed on."""
    errors: list[Exception] = []
    before = hook_counters().failed

    with caplog.at_level(logging.WARNING, logger="pinterest_mw"):
        reply = fetch(
            kind,
            client,
            "/products/shoes",
            peer="unknown",
            route_rules=[PAGE_VISIT],
            on_error=errors.append,
        )

    assert reply.status == 200
    assert hook_counters().failed == before + 1
    assert [type(e) for e in errors] == [EventValidationError]
    assert USER_AGENT not in caplog.text


@pytest.mark.parametrize("kind", KINDS)
def test_page_answers_while_pinterest_fails(
    kind: str, make_client: Callable[..., Client], fake_pinterest: FakePinterestAPI
) -> None:
    """Pinterest answers 503 to every delivery; pages keep answering."""
    fake_pinterest.fail_next(1000, status=503)
    client = make_client(dispatcher="thread")

    with Browser(shop(kind, client, route_rules=[PAGE_VISIT]), PEER) as browser:
        statuses = [browser.request("GET", "/products/shoes", {}).status]
        assert not client.flush(timeout=0.5)
        statuses.append(browser.request("GET", "/products/hats", {}).status)

    counters = client.counters
    assert statuses == [200, 200]
    assert (counters.accepted, counters.processed) == (2, 0)
    assert counters.retried >= 1
    assert counters.queue_depth == 2


class LazyBody:
    """A WSGI body that calls start_response only when iterated."""

    def __init__(self, start_response: Any) -> None:
        self._start_response = start_response

    def __iter__(self) -> Iterator[bytes]:
        self._start_response("200 OK", [("Content-Type", "text/html")])
        yield b"<p>late</p>"


class ClosableLazyBody(LazyBody):
    closed = False

    def close(self) -> None:
        self.closed = True


@pytest.mark.parametrize("body_class", [LazyBody, ClosableLazyBody])
def test_lazy_wsgi_app_emits_when_the_body_is_closed(
    body_class: type[LazyBody], client: Client, fake_pinterest: FakePinterestAPI
) -> None:
    """An app that calls start_response from inside its body iterator."""
    bodies: list[LazyBody] = []

    def lazy_app(environ: Any, start_response: Any) -> Iterable[bytes]:
        bodies.append(body_class(start_response))
        return bodies[-1]

    app = flask.Flask(__name__)
    app.wsgi_app = PinterestWSGIMiddleware(  # type: ignore[method-assign]
        lazy_app, client=client, route_rules=[PAGE_VISIT]
    )
    response = app.test_client().get(
        "/products/1",
        environ_base={"REMOTE_ADDR": PEER, "HTTP_USER_AGENT": USER_AGENT},
    )
    text = response.text
    response.close()

    assert text == "<p>late</p>"
    assert getattr(bodies[0], "closed", True)
    assert [e["event_name"] for e in sent_events(client, fake_pinterest)] == [
        "page_visit"
    ]


class ViewError(Exception):
    """What the apps under test raise."""


class Server:
    """Drives a WSGI app by hand, as a server does, one step at a time."""

    def __init__(self, app: Any) -> None:
        self.statuses: list[str] = []
        environ = {
            "REQUEST_METHOD": "GET",
            "SCRIPT_NAME": "",
            "PATH_INFO": "/products/1",
            "QUERY_STRING": "",
            "SERVER_NAME": "shop.example",
            "SERVER_PORT": "443",
            "REMOTE_ADDR": PEER,
            "HTTP_USER_AGENT": USER_AGENT,
            "wsgi.url_scheme": "https",
        }
        self.body = app(environ, self._start_response)
        self.chunks = iter(self.body)

    def _start_response(self, status: str, headers: Any, exc_info: Any = None) -> Any:
        self.statuses.append(status)
        return lambda data: None

    def close(self) -> None:
        self.body.close()


def streaming_app(client: Client, chunks: Iterable[bytes]) -> Any:
    def app(environ: Any, start_response: Any) -> Iterable[bytes]:
        start_response("200 OK", [("Content-Type", "text/html")])
        return chunks

    return PinterestWSGIMiddleware(app, client=client, route_rules=[PAGE_VISIT])


def test_wsgi_rule_emits_only_after_the_whole_body_was_sent(
    local_client: Client,
) -> None:
    server = Server(streaming_app(local_client, iter([b"<p>", b"</p>"])))
    before_body = local_client.counters.accepted

    sent = list(server.chunks)
    before_close = local_client.counters.accepted
    server.close()

    assert sent == [b"<p>", b"</p>"]
    assert (before_body, before_close, local_client.counters.accepted) == (0, 0, 1)


def test_wsgi_rule_emits_nothing_when_the_body_fails(local_client: Client) -> None:
    def failing() -> Iterator[bytes]:
        yield b"<p>"
        raise ViewError

    server = Server(streaming_app(local_client, failing()))

    with pytest.raises(ViewError):
        list(server.chunks)
    server.close()

    assert local_client.counters.accepted == 0


def test_wsgi_rule_emits_nothing_when_the_server_stops_reading(
    local_client: Client,
) -> None:
    """The client went away mid-stream: the page was not delivered."""
    server = Server(streaming_app(local_client, iter([b"<p>", b"</p>"])))

    next(server.chunks)
    server.close()

    assert local_client.counters.accepted == 0


def test_wsgi_rule_emits_nothing_when_the_app_raises(local_client: Client) -> None:
    def broken(environ: Any, start_response: Any) -> Iterable[bytes]:
        start_response("200 OK", [("Content-Type", "text/html")])
        raise ViewError

    app = PinterestWSGIMiddleware(broken, client=local_client, route_rules=[PAGE_VISIT])

    with pytest.raises(ViewError):
        Server(app)

    assert local_client.counters.accepted == 0


def _asgi_rule_app(client: Client, view: Callable[..., Any]) -> Starlette:
    return Starlette(
        routes=[Route("/products/{name}", view)],
        middleware=[
            Middleware(PinterestMiddleware, client=client, route_rules=[PAGE_VISIT])
        ],
    )


def test_asgi_rule_emits_when_a_background_task_fails_after_the_page(
    local_client: Client,
) -> None:
    """The whole page went out: what fails after it takes nothing back."""

    def send_welcome_mail() -> None:
        raise ViewError

    async def product(request: Request) -> Response:
        return HTMLResponse("<p>shoe</p>", background=BackgroundTask(send_welcome_mail))

    app = _asgi_rule_app(local_client, product)
    with TestClient(app, raise_server_exceptions=False, client=(PEER, 1)) as browser:
        reply = browser.get("/products/shoe", headers={"user-agent": USER_AGENT})

    assert (reply.status_code, reply.text) == (200, "<p>shoe</p>")
    assert local_client.counters.accepted == 1


def test_asgi_rule_emits_nothing_when_the_body_fails_midway(
    local_client: Client,
) -> None:
    async def chunks() -> Any:
        yield b"<p>half"
        raise ViewError

    async def product(request: Request) -> Response:
        return StreamingResponse(chunks(), media_type="text/html")

    app = _asgi_rule_app(local_client, product)
    with TestClient(app, raise_server_exceptions=False, client=(PEER, 1)) as browser:
        browser.get("/products/shoe", headers={"user-agent": USER_AGENT})

    assert local_client.counters.accepted == 0


def test_wsgi_rule_emits_once_when_the_body_is_closed_twice(
    local_client: Client,
) -> None:
    server = Server(streaming_app(local_client, iter([b"<p></p>"])))
    list(server.chunks)

    server.close()
    server.close()

    assert local_client.counters.accepted == 1


@pytest.mark.anyio
async def test_asgi_messages_pass_through_unchanged() -> None:
    """A streamed body reaches the server chunk by chunk, as the app sent it."""

    async def chunks() -> Any:
        yield b"one,"
        yield b"two"

    inner = StreamingResponse(chunks(), media_type="text/html")
    app = PinterestMiddleware(inner, route_rules=[RouteRule("lead", include=["/x"])])
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.disconnect"}

    async def send(message: Any) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/",
        "headers": [],
        "query_string": b"",
    }
    await app(scope, receive, send)

    assert [m.get("body") for m in sent] == [None, b"one,", b"two", b""]


class WatchedHeaders(list[tuple[Any, Any]]):
    """Response headers that count how often they are read through."""

    reads = 0

    def __iter__(self) -> Iterator[tuple[Any, Any]]:
        type(self).reads += 1
        return super().__iter__()


@pytest.fixture
def watched_headers() -> type[WatchedHeaders]:
    WatchedHeaders.reads = 0
    return WatchedHeaders


ASGI_SCOPE = {
    "type": "http",
    "method": "GET",
    "path": "/products/1",
    "headers": [],
    "query_string": b"",
}


@pytest.mark.anyio
async def test_asgi_response_headers_are_not_read_without_rule_or_cookie(
    watched_headers: type[WatchedHeaders],
) -> None:
    """Held events need the status only: the start message goes on as it is."""
    start = {
        "type": "http.response.start",
        "status": 200,
        "headers": watched_headers([(b"content-type", b"text/html")]),
    }

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send(start)

    sent: list[Any] = []

    async def send(message: Any) -> None:
        sent.append(message)

    await PinterestMiddleware(app, epik_cookie=True)(dict(ASGI_SCOPE), None, send)

    assert sent == [start]
    assert sent[0] is start
    assert watched_headers.reads == 0


def test_wsgi_response_headers_are_not_read_without_rule_or_cookie(
    watched_headers: type[WatchedHeaders],
) -> None:
    headers = watched_headers([("Content-Type", "text/html")])
    given: list[Any] = []

    def app(environ: Any, start_response: Any) -> list[bytes]:
        start_response("200 OK", headers)
        return [b"ok"]

    def start_response(status: str, headers: Any, exc_info: Any = None) -> Any:
        given.append(headers)
        return lambda data: None

    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/products/1"}
    PinterestWSGIMiddleware(app, epik_cookie=True)(environ, start_response)

    assert given == [headers]
    assert given[0] is headers
    assert watched_headers.reads == 0


@pytest.mark.parametrize("kind", KINDS)
def test_the_proxies_are_walked_once_for_context_and_cookie(
    kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The cookie's `Secure` comes from the scheme read with the context."""
    walks: list[str | None] = []
    resolve = TrustedProxies._resolve

    def counted(self: TrustedProxies, peer: str | None, headers: Any) -> Any:
        walks.append(peer)
        return resolve(self, peer, headers)

    monkeypatch.setattr(TrustedProxies, "_resolve", counted)

    cookies = plain_http_set_cookies(
        kind,
        "/products/1?epik=abc",
        peer=PROXY,
        headers={"x-forwarded-for": FORWARDED_CLIENT, "x-forwarded-proto": "https"},
        epik_cookie=True,
        trusted_proxies=["10.0.0.0/8"],
    )

    assert cookies == [f"_epik=abc{COOKIE_ATTRIBUTES}"]
    assert walks == [PROXY]


# --- RouteRule ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "matches"),
    [
        ("GET", "/products/1", True),
        ("get", "/products/1", False),
        ("GET", "/products/a/b", True),
        ("GET", "/products/admin/x", False),
        ("HEAD", "/products/1", False),
        ("GET", "/about", False),
    ],
)
def test_route_rule_matches_methods_and_patterns(
    method: str, path: str, matches: bool
) -> None:
    assert PAGE_VISIT.matches_request(method, path) is matches


@pytest.mark.parametrize(
    ("status", "media_type", "matches"),
    [
        (200, "text/html", True),
        (204, "text/html", True),
        (301, "text/html", False),
        (500, "text/html", False),
        (200, "application/json", False),
        (None, None, False),
    ],
)
def test_route_rule_matches_successful_responses_of_its_types(
    status: int | None, media_type: str | None, matches: bool
) -> None:
    assert PAGE_VISIT.matches_response(status, media_type) is matches


@pytest.mark.parametrize(
    "content_type", ["text/html; charset=utf-8", "Text/HTML", " text/html ;q=1"]
)
def test_route_rule_content_types_are_read_as_media_types(content_type: str) -> None:
    """A parameter or capital letter in the rule would otherwise never match."""
    rule = RouteRule("page_visit", content_types={content_type})

    assert rule.matches_response(200, "text/html")


def test_route_rule_without_includes_matches_nothing() -> None:
    assert not RouteRule("page_visit", include=[]).matches_request("GET", "/")


@pytest.mark.parametrize(
    "options",
    [
        {"event_name": "page visit"},
        {"event_name": "page_visit", "action_source": "fax"},
        {"event_name": "page_visit", "methods": "GET"},
        {"event_name": "page_visit", "include": "/products/*"},
        {"event_name": "page_visit", "content_types": "text/html"},
    ],
    ids=["event-name", "action-source", "methods", "include", "content-types"],
)
def test_unusable_route_rule_raises_at_construction(options: dict[str, Any]) -> None:
    # A copy: the parameter is shared by every run of this test (a rerun too).
    options = dict(options)
    name = options.pop("event_name")

    with pytest.raises(ConfigurationError):
        RouteRule(name, **options)


def test_route_rules_must_be_route_rule_objects() -> None:
    with pytest.raises(ConfigurationError):
        PinterestMiddleware(PlainTextResponse("x"), route_rules=["page_visit"])  # type: ignore[list-item]


def test_route_rule_repr_shows_its_configuration() -> None:
    rule = RouteRule("lead", methods=["post"], exclude=["/admin/*"], content_types=None)

    assert repr(rule) == (
        "RouteRule('lead', methods=['POST'], include=['*'], exclude=['/admin/*'], "
        "content_types=None)"
    )


@pytest.mark.parametrize("kind", KINDS)
def test_malformed_host_never_breaks_the_page(
    kind: str, client: Client, fake_pinterest: FakePinterestAPI
) -> None:
    """An unparseable page URL is dropped from the context, not raised."""
    reply = fetch(
        kind,
        client,
        "/products/1?epik=abc",
        headers={"host": "[::1"},
        route_rules=[PAGE_VISIT],
    )

    [event] = sent_events(client, fake_pinterest)
    assert reply.status == 200
    assert event["event_name"] == "page_visit"
