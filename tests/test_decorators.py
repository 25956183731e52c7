"""`@track_conversion` on real Starlette, FastAPI and Flask apps."""

from __future__ import annotations

import contextlib
import functools
import inspect
import logging
import re
import threading
import time
import uuid
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import anyio
import flask
import httpx
import pytest
from _helpers import EMAIL, FAST, MOCK_URL, SHOP
from fastapi import Depends, FastAPI
from fastapi import HTTPException as FastAPIHTTPException
from fastapi import Response as FastAPIResponse
from pydantic import BaseModel
from pytest_httpx import HTTPXMock
from starlette.applications import Starlette
from starlette.endpoints import HTTPEndpoint
from starlette.exceptions import HTTPException, StarletteDeprecationWarning
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.websockets import WebSocket

from pinterest_mw._hooks import NOT_ACCEPTED_MESSAGE
from pinterest_mw.client import Client, set_default_client
from pinterest_mw.decorators import (
    NO_CURRENT_EVENT_MESSAGE,
    NO_REQUEST_MESSAGE,
    WEBSOCKET_MESSAGE,
    HookCounters,
    PendingEvent,
    current_event,
    deterministic_event_id,
    hook_counters,
    track_conversion,
)
from pinterest_mw.exceptions import (
    ConfigurationError,
    EventValidationError,
    QueueFullError,
)
from pinterest_mw.hashing import sha256_hex
from pinterest_mw.middleware import PinterestMiddleware, PinterestWSGIMiddleware
from pinterest_mw.testing import FAKE_ACCESS_TOKEN, FAKE_AD_ACCOUNT_ID, FakePinterestAPI

with warnings.catch_warnings():
    # Starlette 1.10 asks for httpx2 under its TestClient; httpx still works.
    warnings.simplefilter("ignore", StarletteDeprecationWarning)
    from starlette.middleware.wsgi import WSGIMiddleware
    from starlette.testclient import TestClient

PEER = "203.0.113.9"
USER_AGENT = "Mozilla/5.0 (X11; Linux x86_64) TestBrowser/1.0"
KINDS = [
    "starlette-async",
    "starlette-sync",
    "fastapi-async",
    "fastapi-sync",
    "flask-async",
    "flask-sync",
]
OUTCOMES = {"/abort": 404, "/redirect": 302, "/client-error": 400}


class ViewError(Exception):
    """What the views under test raise."""


def counted() -> HookCounters:
    return hook_counters()


def delta(before: HookCounters) -> dict[str, int]:
    after = hook_counters().as_dict()
    return {name: after[name] - value for name, value in before.as_dict().items()}


# --- the apps under test ----------------------------------------------------------


@dataclass
class Reply:
    status: int
    text: str
    headers: Mapping[str, str]


def as_variant(body: Callable[..., Any], is_async: bool) -> Callable[..., Any]:
    """`body` as a sync view, or inside an async one with the same signature."""
    if not is_async:
        return body

    @functools.wraps(body)
    async def view(*args: Any, **kwargs: Any) -> Any:
        return body(*args, **kwargs)

    return view


def starlette_app(client: Client, is_async: bool, decorate: bool, **options: Any):
    def ok(request: Request) -> Response:
        return PlainTextResponse("ok", headers={"x-view": "kept"})

    def event_id(request: Request) -> Response:
        return PlainTextResponse(current_event().event_id)

    def boom(request: Request) -> Response:
        raise ViewError("the view failed")

    def abort(request: Request) -> Response:
        raise HTTPException(404)

    def redirect(request: Request) -> Response:
        return RedirectResponse("/ok", status_code=302)

    def client_error(request: Request) -> Response:
        return PlainTextResponse("no", status_code=400)

    views = {
        "/ok": ok,
        "/event-id": event_id,
        "/boom": boom,
        "/abort": abort,
        "/redirect": redirect,
        "/client-error": client_error,
    }
    track = track_conversion("checkout", client=client, **options)
    routes = []
    for path, body in views.items():
        view = as_variant(body, is_async)
        routes.append(Route(path, track(view) if decorate else view))

    return Starlette(routes=routes)


def fastapi_app(client: Client, is_async: bool, decorate: bool, **options: Any):
    def ok() -> Response:
        return PlainTextResponse("ok", headers={"x-view": "kept"})

    def event_id() -> Response:
        return PlainTextResponse(current_event().event_id)

    def boom() -> None:
        raise ViewError("the view failed")

    def abort() -> None:
        raise FastAPIHTTPException(404)

    def redirect() -> Response:
        return RedirectResponse("/ok", status_code=302)

    def client_error() -> Response:
        return PlainTextResponse("no", status_code=400)

    # Endpoints without a Request parameter find theirs through the middleware.
    app = FastAPI()
    app.add_middleware(PinterestMiddleware)
    track = track_conversion("checkout", client=client, **options)
    for body in (ok, event_id, boom, abort, redirect, client_error):
        view = as_variant(body, is_async)
        path = "/" + body.__name__.replace("_", "-")
        app.get(path)(track(view) if decorate else view)

    return app


def flask_app(client: Client, is_async: bool, decorate: bool, **options: Any):
    def ok() -> Any:
        return "ok", {"x-view": "kept", "content-type": "text/plain; charset=utf-8"}

    def event_id() -> Any:
        return current_event().event_id

    def boom() -> Any:
        raise ViewError("the view failed")

    def abort() -> Any:
        flask.abort(404)

    def redirect() -> Any:
        return flask.redirect("/ok")

    def client_error() -> Any:
        return "no", 400

    app = flask.Flask(__name__)
    app.testing = True
    track = track_conversion("checkout", client=client, **options)
    for body in (ok, event_id, boom, abort, redirect, client_error):
        view = as_variant(body, is_async)
        path = "/" + body.__name__.replace("_", "-")
        app.add_url_rule(path, body.__name__, track(view) if decorate else view)

    return app


class ASGIHarness:
    def __init__(self, test_client: TestClient) -> None:
        self._client = test_client

    def get(self, path: str, **headers: str) -> Reply:
        response = self._client.get(path, headers=headers, follow_redirects=False)
        return Reply(response.status_code, response.text, response.headers)


class FlaskHarness:
    def __init__(self, app: flask.Flask) -> None:
        self._client = app.test_client()
        self._environ = {"REMOTE_ADDR": PEER, "HTTP_USER_AGENT": USER_AGENT}

    def get(self, path: str, **headers: str) -> Reply:
        response = self._client.get(
            path, base_url=SHOP, headers=headers, environ_base=self._environ
        )
        return Reply(response.status_code, response.text, response.headers)


@contextlib.contextmanager
def serving(
    kind: str, client: Client, *, decorate: bool = True, **options: Any
) -> Iterator[ASGIHarness | FlaskHarness]:
    """Serve a test app of `kind` with decorated views; flush before leaving."""
    framework, _, mode = kind.partition("-")
    is_async = mode == "async"
    if framework == "flask":
        if is_async:
            pytest.importorskip("asgiref", reason="Flask runs async views with asgiref")
        yield FlaskHarness(flask_app(client, is_async, decorate, **options))
        return

    build = starlette_app if framework == "starlette" else fastapi_app
    app = build(client, is_async, decorate, **options)
    with TestClient(
        app, base_url=SHOP, headers={"user-agent": USER_AGENT}, client=(PEER, 50000)
    ) as test_client:
        yield ASGIHarness(test_client)
        client.flush(timeout=5)


def sent_events(client: Client, fake: FakePinterestAPI) -> list[dict[str, Any]]:
    assert client.flush(timeout=5)
    return fake.events


# --- when an event is emitted ------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_successful_view_emits_exactly_one_event(
    kind: str, client: Client, fake_pinterest: FakePinterestAPI
) -> None:
    with serving(kind, client) as app:
        reply = app.get("/ok")

    assert reply.status == 200
    assert [e["event_name"] for e in sent_events(client, fake_pinterest)] == [
        "checkout"
    ]


@pytest.mark.parametrize("kind", KINDS)
def test_event_id_seen_by_the_view_is_the_one_sent(
    kind: str, client: Client, fake_pinterest: FakePinterestAPI
) -> None:
    with serving(kind, client) as app:
        reply = app.get("/event-id")

    assert [e["event_id"] for e in sent_events(client, fake_pinterest)] == [reply.text]


@pytest.mark.parametrize("path", ["/boom", *OUTCOMES])
@pytest.mark.parametrize("kind", KINDS)
def test_unsuccessful_view_emits_nothing(kind: str, path: str, client: Client) -> None:
    """An exception, an abort, a redirect or a 4xx queues no event."""
    before = counted()
    with serving(kind, client) as app, contextlib.suppress(ViewError):
        app.get(path)

    assert client.counters.accepted == 0
    assert delta(before)["tracked"] == 0


def any_method_app(kind: str, client: Client) -> Any:
    """A decorated page that GET, HEAD and OPTIONS all reach, as a route may allow.

    The view reads `current_event()`, so a HEAD that reached it without a
    pending event would fail.
    """
    framework, _, mode = kind.partition("-")
    methods = ["GET", "HEAD", "OPTIONS"]
    track = track_conversion("page_visit", client=client)

    def page() -> Any:
        event_id = current_event().event_id
        return event_id if framework == "flask" else PlainTextResponse(event_id)

    def starlette_page(request: Request) -> Any:
        return page()

    body = starlette_page if framework == "starlette" else page
    view = track(as_variant(body, mode == "async"))
    if framework == "flask":
        if mode == "async":
            pytest.importorskip("asgiref", reason="Flask runs async views with asgiref")
        flask_app = flask.Flask(__name__)
        flask_app.add_url_rule(
            "/page", "page", view, methods=methods, provide_automatic_options=False
        )
        return flask_app
    if framework == "fastapi":
        fastapi_app = FastAPI()
        fastapi_app.add_middleware(PinterestMiddleware)
        fastapi_app.api_route("/page", methods=methods)(view)
        return fastapi_app
    return Starlette(routes=[Route("/page", view, methods=methods)])


def request_any(app: Any, method: str, path: str) -> int:
    if isinstance(app, flask.Flask):
        return app.test_client().open(path, method=method, base_url=SHOP).status_code
    with TestClient(app, base_url=SHOP, client=(PEER, 50000)) as test_client:
        return test_client.request(method, path).status_code


@pytest.mark.parametrize("method", ["HEAD", "OPTIONS"])
@pytest.mark.parametrize("kind", KINDS)
def test_head_and_options_requests_emit_nothing(
    kind: str, method: str, client: Client
) -> None:
    """Link checkers and prefetchers reach GET views too; they are not visits."""
    app = any_method_app(kind, client)

    status = request_any(app, method, "/page")
    client.flush(timeout=5)

    assert status == 200
    assert client.counters.accepted == 0


@pytest.mark.parametrize("kind", KINDS)
def test_get_to_the_same_view_emits(kind: str, client: Client) -> None:
    """The other side of the HEAD test: the app under it does emit for a GET."""
    app = any_method_app(kind, client)

    status = request_any(app, "GET", "/page")
    client.flush(timeout=5)

    assert status == 200
    assert client.counters.accepted == 1


def test_flask_head_to_a_get_view_emits_nothing(client: Client) -> None:
    """Flask answers HEAD with the GET view of any route, unasked."""
    app = flask.Flask(__name__)

    @app.get("/thank-you")
    @track_conversion("checkout", client=client)
    def thank_you() -> str:
        return "thanks"

    response = app.test_client().head("/thank-you")
    client.flush(timeout=5)

    assert response.status_code == 200
    assert client.counters.accepted == 0


@pytest.mark.parametrize("kind", KINDS)
def test_view_exception_propagates_unchanged(kind: str, client: Client) -> None:
    with serving(kind, client) as app, pytest.raises(ViewError) as raised:
        app.get("/boom")

    assert raised.value.args == ("the view failed",)


@pytest.mark.parametrize(("path", "status"), OUTCOMES.items())
@pytest.mark.parametrize("kind", KINDS)
def test_error_status_reaches_the_client_unchanged(
    kind: str, path: str, status: int, client: Client
) -> None:
    with serving(kind, client) as app:
        reply = app.get(path)

    assert reply.status == status


@pytest.mark.parametrize("kind", KINDS)
def test_response_is_the_same_as_without_the_decorator(
    kind: str, client: Client
) -> None:
    with serving(kind, client) as app:
        decorated = app.get("/ok")
    with serving(kind, client, decorate=False) as app:
        plain = app.get("/ok")

    assert (decorated.status, decorated.text, decorated.headers["x-view"]) == (
        plain.status,
        plain.text,
        plain.headers["x-view"],
    )


@pytest.mark.parametrize("is_async", [False, True])
def test_wrapper_returns_the_views_own_object(is_async: bool, client: Client) -> None:
    response = PlainTextResponse("mine")
    view = track_conversion("checkout", client=client)(
        as_variant(lambda request: response, is_async)
    )
    request = Request(
        {"type": "http", "method": "GET", "path": "/", "headers": [], "client": None}
    )

    result = anyio.run(view, request) if is_async else view(request)

    assert result is response


# --- the wrapper -------------------------------------------------------------------


@pytest.mark.parametrize("is_async", [False, True])
def test_wrapper_is_a_coroutine_function_exactly_when_the_view_is(
    is_async: bool,
) -> None:
    view = track_conversion("checkout")(as_variant(lambda request: None, is_async))

    assert inspect.iscoroutinefunction(view) is is_async


class AsyncCallable:
    """A view object whose `__call__` is a coroutine function."""

    def __init__(self) -> None:
        self.calls = 0

    async def __call__(self, order_id: int) -> dict[str, int]:
        self.calls += 1
        return {"order_id": order_id}


async def async_order(order_id: int, *, shop: str) -> dict[str, Any]:
    return {"order_id": order_id, "shop": shop}


@pytest.mark.parametrize(
    "view",
    [functools.partial(async_order, shop="main"), AsyncCallable()],
    ids=["partial", "callable-object"],
)
def test_wrapper_of_an_async_callable_is_a_coroutine_function(view: Any) -> None:
    """Like Starlette's is_async_callable: the view's result is awaited."""
    wrapped = track_conversion("checkout")(view)

    assert inspect.iscoroutinefunction(wrapped)


def test_wrapper_of_a_class_is_not_a_coroutine_function() -> None:
    """Calling the class builds an instance: nothing to await."""
    wrapped = track_conversion("checkout")(AsyncCallable)

    assert not inspect.iscoroutinefunction(wrapped)


@pytest.mark.anyio
async def test_async_callable_object_view_emits_its_event(client: Client) -> None:
    decorate = track_conversion("checkout", client=client, user_data={"em": EMAIL})
    view = decorate(AsyncCallable())

    result = await view(7)

    assert result == {"order_id": 7}
    assert (await client.acounters()).accepted == 1


@pytest.mark.parametrize(
    "source",
    [functools.partial(async_order, 1), AsyncCallable()],
    ids=["partial", "callable-object"],
)
def test_async_data_callables_are_refused_at_decoration(source: Any) -> None:
    with pytest.raises(ConfigurationError, match="not async"):
        track_conversion("checkout", user_data=source)(lambda: None)


def test_wrapper_keeps_the_views_name_and_signature() -> None:
    def pay(order_id: int, *, coupon: str | None = None) -> dict[str, int]:
        return {"order_id": order_id}

    wrapped = track_conversion("checkout")(pay)

    assert wrapped.__name__ == "pay"
    assert inspect.signature(wrapped) == inspect.signature(pay)


def current_user() -> str:
    return "ann"


def orders_app(client: Client | None, decorate: bool) -> FastAPI:
    app = FastAPI()
    app.add_middleware(PinterestMiddleware)

    async def pay(order_id: int, user: str = Depends(current_user)) -> dict[str, Any]:
        return {"order_id": order_id, "user": user}

    if decorate:
        pay = track_conversion(
            "checkout",
            client=client,
            event_id=lambda request: f"order-{request.path_params['order_id']}",
        )(pay)
    app.post("/orders/{order_id}/pay", status_code=201)(pay)

    return app


def test_fastapi_dependencies_and_path_parameters_still_work(client: Client) -> None:
    app = orders_app(client, decorate=True)
    with TestClient(app, headers={"user-agent": USER_AGENT}) as test_client:
        response = test_client.post("/orders/42/pay")

    assert response.json() == {"order_id": 42, "user": "ann"}


def test_fastapi_event_id_derived_from_a_path_parameter(
    client: Client, fake_pinterest: FakePinterestAPI
) -> None:
    app = orders_app(client, decorate=True)
    with TestClient(app, headers={"user-agent": USER_AGENT}, client=(PEER, 1)) as tc:
        tc.post("/orders/42/pay")

    assert [e["event_id"] for e in sent_events(client, fake_pinterest)] == ["order-42"]


def test_fastapi_openapi_schema_is_unchanged() -> None:
    decorated = orders_app(None, decorate=True).openapi()
    plain = orders_app(None, decorate=False).openapi()

    assert decorated == plain


def status_app(client: Client) -> FastAPI:
    app = FastAPI()
    app.add_middleware(PinterestMiddleware)
    track = track_conversion("lead", client=client)

    @app.get("/created", status_code=201)
    @track
    async def created() -> dict[str, bool]:
        return {"created": True}

    @app.get("/no-content", status_code=204)
    @track
    def no_content() -> None:
        return None

    @app.get("/not-found")
    @track
    async def not_found(response: FastAPIResponse) -> dict[str, bool]:
        response.status_code = 404
        return {"found": False}

    @app.get("/moved", status_code=302)
    @track
    async def moved() -> None:
        return None

    return app


@pytest.mark.parametrize(
    ("path", "events"),
    [("/created", 1), ("/no-content", 1), ("/not-found", 0), ("/moved", 0)],
)
def test_fastapi_status_of_a_plain_return_value_decides(
    path: str, events: int, client: Client
) -> None:
    """The status FastAPI will send (route or `response` parameter) counts."""
    with TestClient(
        status_app(client),
        headers={"user-agent": USER_AGENT},
        client=(PEER, 1),
        follow_redirects=False,
    ) as test_client:
        test_client.get(path)

    assert client.counters.accepted == events


@pytest.mark.parametrize(
    ("returned", "events"),
    [
        (("made", 201), 1),
        (("made", "202 ACCEPTED"), 1),
        (("ok", {"x-a": "b"}), 1),
        (("ok", 200, {"x-a": "b"}), 1),
        ((flask.Response("x", status=202), {"x-a": "b"}), 1),
        (("gone", 410), 0),
        (("broken", "500 BROKEN"), 0),
        (("not", "a", "valid", "tuple"), 0),
        ((flask.Response("x", status=503), {"x-a": "b"}), 0),
    ],
)
def test_flask_tuple_status_decides(returned: Any, events: int, client: Client) -> None:
    app = flask.Flask(__name__)
    app.add_url_rule(
        "/", "view", track_conversion("lead", client=client)(lambda: returned)
    )

    FlaskHarness(app).get("/")

    assert client.counters.accepted == events


# --- the status actually sent --------------------------------------------------------


class Total(BaseModel):
    total: int


def sent_status_app(client: Client) -> FastAPI:
    """Views whose return value looks successful; FastAPI answers otherwise."""
    app = FastAPI()
    app.add_middleware(PinterestMiddleware, client=client)
    track = track_conversion("checkout")

    @app.get("/valid-model", response_model=Total)
    @track
    async def valid_model() -> Any:
        return {"total": 3}

    @app.get("/invalid-model", response_model=Total)
    @track
    async def invalid_model() -> Any:
        return {"total": "not a number"}

    @app.get("/redirect-class", response_class=RedirectResponse)
    @track
    def redirect_class() -> str:
        return "https://shop.example/elsewhere"

    def deny(response: FastAPIResponse) -> None:
        response.status_code = 403

    @app.get("/denied-by-dependency", dependencies=[Depends(deny)])
    @track
    async def denied_by_dependency() -> dict[str, bool]:
        return {"ok": False}

    return app


@pytest.mark.parametrize(
    ("path", "status", "events"),
    [
        ("/valid-model", 200, 1),
        ("/invalid-model", 500, 0),
        ("/redirect-class", 307, 0),
        ("/denied-by-dependency", 403, 0),
    ],
)
def test_under_the_middleware_the_status_sent_decides(
    path: str, status: int, events: int, client: Client
) -> None:
    """FastAPI changes the status after the view returned; the middleware sees it."""
    with TestClient(
        sent_status_app(client),
        headers={"user-agent": USER_AGENT},
        client=(PEER, 1),
        follow_redirects=False,
        raise_server_exceptions=False,
    ) as test_client:
        reply = test_client.get(path)

    assert (reply.status_code, client.counters.accepted) == (status, events)


def test_without_the_middleware_a_redirecting_response_class_emits_nothing(
    client: Client,
) -> None:
    """FastAPI's redirect idiom: a URL returned, a 307 sent."""
    app = FastAPI()

    @app.get("/go", response_class=RedirectResponse)
    @track_conversion("checkout", client=client)
    async def go(request: Request) -> str:
        return "https://shop.example/elsewhere"

    with TestClient(
        app, headers={"user-agent": USER_AGENT}, client=(PEER, 1)
    ) as test_client:
        reply = test_client.get("/go", follow_redirects=False)

    assert (reply.status_code, client.counters.accepted) == (307, 0)


def test_under_the_wsgi_middleware_the_status_sent_decides(client: Client) -> None:
    """An `after_request` hook turns the view's page into an error."""
    app = flask.Flask(__name__)
    app.add_url_rule("/", "view", track_conversion("lead", client=client)(lambda: "ok"))

    @app.after_request
    def fail(response: flask.Response) -> flask.Response:
        response.status_code = 500
        return response

    app.wsgi_app = PinterestWSGIMiddleware(app.wsgi_app)  # type: ignore[method-assign]

    reply = FlaskHarness(app).get("/")

    assert (reply.status, client.counters.accepted) == (500, 0)


def mounted_flask_app(
    client: Client, returned: Any, user_data: Any = None
) -> Starlette:
    """A Flask app mounted in a Starlette one, behind `PinterestMiddleware`."""
    legacy = flask.Flask(__name__)

    @legacy.get("/orders/<order_id>")
    @track_conversion("checkout", user_data=user_data or {"email": EMAIL})
    def order(order_id: str) -> Any:
        return returned

    app = Starlette(routes=[Mount("/legacy", WSGIMiddleware(legacy))])
    app.add_middleware(PinterestMiddleware, client=client)
    return app


@pytest.mark.parametrize(
    ("returned", "events"),
    [("ok", 1), (("missing", 404), 0), (("bad", 500), 0), (None, 0)],
)
def test_flask_app_mounted_under_the_middleware_emits_on_success_only(
    returned: Any, events: int, client: Client
) -> None:
    app = mounted_flask_app(client, returned)

    get_from(app, "/legacy/orders/7")

    assert client.counters.accepted == events


def test_flask_app_mounted_under_the_middleware_hands_flasks_request(
    client: Client,
) -> None:
    """The innermost framework runs the view: the callables get its request."""
    seen: list[Any] = []
    app = mounted_flask_app(
        client, "ok", lambda request: seen.append(request.view_args)
    )

    reply = get_from(app, "/legacy/orders/7")

    assert (reply.status_code, seen) == (200, [{"order_id": "7"}])


def wait_until(condition: Callable[[], bool], deadline: float = 5.0) -> bool:
    """Poll `condition` until it holds; a bound against hanging, not a timing test."""
    end = time.monotonic() + deadline
    while not condition():
        if time.monotonic() > end:
            return False
        time.sleep(0.01)
    return True


def test_flask_async_view_events_are_delivered_without_a_flush(
    client: Client, fake_pinterest: FakePinterestAPI
) -> None:
    """Flask's event loop for an async view ends with the request; delivery goes on."""
    pytest.importorskip("asgiref", reason="Flask runs async views with asgiref")

    async def view() -> str:
        return "ok"

    app = flask.Flask(__name__)
    app.add_url_rule("/", "view", track_conversion("lead", client=client)(view))

    FlaskHarness(app).get("/")

    assert wait_until(lambda: len(fake_pinterest.events) == 1)


class StatusRewriter:
    """An ASGI layer under ours that answers 200 whatever the view said."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        async def rewrite(message: Any) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "status": 200}
            await send(message)

        await self.app(scope, receive, rewrite)


def test_under_the_middleware_a_view_returning_an_error_emits_if_2xx_is_sent(
    client: Client,
) -> None:
    """The status sent decides, not the status the return value declares."""

    @track_conversion("lead", client=client)
    async def view(request: Request) -> Response:
        return PlainTextResponse("later", status_code=404)

    app = Starlette(
        routes=[Route("/", view)],
        middleware=[Middleware(PinterestMiddleware), Middleware(StatusRewriter)],
    )

    reply = get_from(app, "/")

    assert (reply.status_code, client.counters.accepted) == (200, 1)


def test_under_the_wsgi_middleware_a_view_returning_an_error_emits_if_2xx_is_sent(
    client: Client,
) -> None:
    """An `after_request` hook turns the view's error into a page."""
    app = flask.Flask(__name__)
    app.add_url_rule(
        "/", "view", track_conversion("lead", client=client)(lambda: ("gone", 410))
    )

    @app.after_request
    def recover(response: flask.Response) -> flask.Response:
        response.status_code = 200
        return response

    app.wsgi_app = PinterestWSGIMiddleware(app.wsgi_app)  # type: ignore[method-assign]

    reply = FlaskHarness(app).get("/")

    assert (reply.status, client.counters.accepted) == (200, 1)


def test_flask_view_returning_none_emits_nothing(client: Client) -> None:
    """Flask answers a view that returns None with an error, not a page."""
    app = flask.Flask(__name__)
    app.add_url_rule("/", "view", track_conversion("lead", client=client)(lambda: None))

    reply = FlaskHarness(app).get("/")

    assert (reply.status, client.counters.accepted) == (500, 0)


# --- what goes into the event ------------------------------------------------------


def order_page(client: Client, *, is_async: bool = False, **options: Any) -> Starlette:
    def thank_you(request: Request) -> Response:
        event = current_event()
        event.custom_data["order_id"] = request.path_params["order_id"]
        return PlainTextResponse(event.event_id)

    track = track_conversion("checkout", client=client, **options)
    view = track(as_variant(thank_you, is_async))
    return Starlette(routes=[Route("/orders/{order_id}", view)])


def get_from(app: Any, path: str, **headers: str) -> Any:
    """GET `path` from an ASGI app as a browser would; the httpx2 response."""
    with TestClient(
        app, base_url=SHOP, headers={"user-agent": USER_AGENT}, client=(PEER, 1)
    ) as test_client:
        return test_client.get(path, headers=headers)


def test_event_id_derived_from_the_request_is_stable(
    client: Client, fake_pinterest: FakePinterestAPI
) -> None:
    """A thank-you page shown twice sends the same id: Pinterest counts it once."""
    app = order_page(
        client,
        event_id=lambda request: deterministic_event_id(
            "checkout", request.path_params["order_id"]
        ),
    )

    shown = [get_from(app, "/orders/42").text for _ in range(2)]

    expected = deterministic_event_id("checkout", "42")
    assert shown == [expected, expected]
    assert [e["event_id"] for e in sent_events(client, fake_pinterest)] == shown


def test_flask_event_id_derived_from_view_args(
    client: Client, fake_pinterest: FakePinterestAPI
) -> None:
    app = flask.Flask(__name__)

    @app.get("/orders/<int:order_id>")
    @track_conversion(
        "checkout",
        client=client,
        event_id=lambda request: f"order-{request.view_args['order_id']}",
    )
    def thank_you(order_id: int) -> str:
        return current_event().event_id

    reply = FlaskHarness(app).get("/orders/7")

    assert reply.text == "order-7"
    assert [e["event_id"] for e in sent_events(client, fake_pinterest)] == ["order-7"]


def test_view_can_set_the_event_id(
    client: Client, fake_pinterest: FakePinterestAPI
) -> None:
    async def pay(request: Request) -> Response:
        current_event().event_id = 1007
        return PlainTextResponse(current_event().event_id)

    view = track_conversion("checkout", client=client)(pay)
    reply = get_from(Starlette(routes=[Route("/", view)]), "/")

    assert reply.text == "1007"
    assert [e["event_id"] for e in sent_events(client, fake_pinterest)] == ["1007"]


def test_user_and_custom_data_come_from_the_callables(
    client: Client, fake_pinterest: FakePinterestAPI
) -> None:
    """`user_data(request)` and `custom_data(request, result)`, hashed and sent."""
    app = FastAPI()
    app.add_middleware(PinterestMiddleware)

    @app.post("/pay")
    @track_conversion(
        "checkout",
        client=client,
        user_data=lambda request: {"email": request.headers["x-email"]},
        custom_data=lambda request, order: {"value": order["total"], "currency": "usd"},
    )
    async def pay() -> dict[str, str]:
        return {"total": "19.99"}

    with TestClient(app, headers={"user-agent": USER_AGENT}) as test_client:
        test_client.post("/pay", headers={"x-email": EMAIL})

    [event] = sent_events(client, fake_pinterest)
    assert event["user_data"]["em"] == [sha256_hex("buyer@example.com")]
    assert event["custom_data"] == {"value": "19.99", "currency": "USD"}


def test_values_set_by_the_view_win_over_the_callables(
    client: Client, fake_pinterest: FakePinterestAPI
) -> None:
    app = order_page(client, custom_data={"order_id": "from-decorator"})

    get_from(app, "/orders/from-view")

    [event] = sent_events(client, fake_pinterest)
    assert event["custom_data"]["order_id"] == "from-view"


def test_request_context_is_written_into_the_event(
    client: Client, fake_pinterest: FakePinterestAPI
) -> None:
    app = order_page(client)

    get_from(
        app,
        "/orders/9?utm_source=x&email=buyer%40example.com",
        cookie="_epik=click-123",
        **{"accept-language": "fr-CA,fr;q=0.9"},
    )

    [event] = sent_events(client, fake_pinterest)
    assert event["user_data"]["client_ip_address"] == PEER
    assert event["user_data"]["client_user_agent"] == USER_AGENT
    assert event["user_data"]["click_id"] == "click-123"
    assert event["event_source_url"] == f"{SHOP}/orders/9?utm_source=x"
    assert event["language"] == "fr"


def test_flask_request_context_is_written_into_the_event(
    client: Client, fake_pinterest: FakePinterestAPI
) -> None:
    app = flask.Flask(__name__)
    app.add_url_rule("/", "view", track_conversion("lead", client=client)(lambda: "ok"))

    FlaskHarness(app).get("/?epik=click-9")

    [event] = sent_events(client, fake_pinterest)
    assert event["user_data"]["client_ip_address"] == PEER
    assert event["user_data"]["click_id"] == "click-9"


def test_forwarding_headers_are_not_believed_without_the_middleware(
    client: Client, fake_pinterest: FakePinterestAPI
) -> None:
    get_from(order_page(client), "/orders/1", **{"x-forwarded-for": "198.51.100.7"})

    [event] = sent_events(client, fake_pinterest)
    assert event["user_data"]["client_ip_address"] == PEER


@pytest.mark.parametrize("framework", ["starlette", "flask"])
def test_trusted_proxies_of_the_environment_apply_without_the_middleware(
    framework: str,
    client: Client,
    fake_pinterest: FakePinterestAPI,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """As for the sub-apps and the middleware: `PINTEREST_TRUSTED_PROXIES`."""
    monkeypatch.setenv("PINTEREST_TRUSTED_PROXIES", f"{PEER}/32")
    forwarded = {"x-forwarded-for": "198.51.100.7"}

    if framework == "starlette":
        get_from(order_page(client), "/orders/1", **forwarded)
    else:
        app = flask.Flask(__name__)
        view = track_conversion("lead", client=client)(lambda: "ok")
        app.add_url_rule("/", "view", view)
        FlaskHarness(app).get("/", **forwarded)

    [event] = sent_events(client, fake_pinterest)
    assert event["user_data"]["client_ip_address"] == "198.51.100.7"


# --- skipping ----------------------------------------------------------------------


def test_skipped_event_is_not_emitted_and_is_counted(client: Client) -> None:
    def maybe(request: Request) -> Response:
        current_event().skip()
        return PlainTextResponse("ok")

    before = counted()
    get_from(
        Starlette(routes=[Route("/", track_conversion("lead", client=client)(maybe))]),
        "/",
    )

    assert client.counters.accepted == 0
    assert delta(before)["skipped"] == 1


@pytest.mark.parametrize(
    "when",
    [
        lambda request: request.query_params.get("track") == "yes",
        lambda request, result: result.body == b"tracked",
    ],
    ids=["request", "request-and-result"],
)
def test_when_predicate_saying_no_emits_nothing(
    when: Callable[..., bool], client: Client
) -> None:
    def page(request: Request) -> Response:
        return PlainTextResponse("not tracked")

    view = track_conversion("lead", client=client, when=when)(page)
    get_from(Starlette(routes=[Route("/", view)]), "/?track=no")

    assert client.counters.accepted == 0


def test_default_client_is_used_without_one(
    client: Client, fake_pinterest: FakePinterestAPI
) -> None:
    app = flask.Flask(__name__)
    app.add_url_rule("/", "view", track_conversion("lead")(lambda: "ok"))
    set_default_client(client)
    try:
        FlaskHarness(app).get("/")
    finally:
        set_default_client(None)

    assert [e["event_name"] for e in sent_events(client, fake_pinterest)] == ["lead"]


@pytest.mark.parametrize(
    "custom_data",
    [lambda: {"order_id": "o-1"}, lambda *args: {"order_id": "o-1"}],
    ids=["no-arguments", "any-arguments"],
)
def test_callables_may_take_no_or_any_arguments(
    custom_data: Callable[..., Any], client: Client, fake_pinterest: FakePinterestAPI
) -> None:
    get_from(order_page(client, custom_data=custom_data), "/orders/o-1")

    [event] = sent_events(client, fake_pinterest)
    assert event["custom_data"] == {"order_id": "o-1"}


# --- failures inside tracking ------------------------------------------------------


@pytest.mark.parametrize(
    "options",
    [
        {"when": lambda request: 1 / 0},
        {"custom_data": lambda request: ["not", "a", "mapping"]},
    ],
    ids=["when-raises", "not-a-mapping"],
)
def test_failing_option_counts_a_failure_and_emits_nothing(
    options: dict[str, Any], client: Client
) -> None:
    before = counted()

    reply = get_from(order_page(client, **options), "/orders/1")

    assert (reply.status_code, client.counters.accepted) == (200, 0)
    assert delta(before)["failed"] == 1


def test_failing_callable_does_not_break_the_view(client: Client) -> None:
    errors: list[Exception] = []

    def user_data(request: Request) -> dict[str, str]:
        raise KeyError(EMAIL)

    app = order_page(client, user_data=user_data, on_error=errors.append)
    before = counted()
    reply = get_from(app, "/orders/1")

    assert reply.status_code == 200
    assert delta(before)["failed"] == 1
    assert [type(e) for e in errors] == [KeyError]


def test_failing_callable_is_logged_without_values(
    client: Client, caplog: pytest.LogCaptureFixture
) -> None:
    def user_data(request: Request) -> dict[str, str]:
        raise KeyError(EMAIL)

    with caplog.at_level(logging.DEBUG, logger="pinterest_mw"):
        get_from(order_page(client, user_data=user_data), "/orders/1")

    [record] = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert "user_data callable raised KeyError" in record.getMessage()
    assert EMAIL not in caplog.text
    assert PEER not in caplog.text
    assert USER_AGENT not in caplog.text


def test_invalid_event_is_logged_with_its_paths_and_passed_on(
    client: Client, caplog: pytest.LogCaptureFixture
) -> None:
    errors: list[Exception] = []
    app = order_page(
        client,
        custom_data=lambda request: {"currency": "Bitcoin", "value": EMAIL},
        on_error=errors.append,
    )

    with caplog.at_level(logging.WARNING, logger="pinterest_mw"):
        reply = get_from(app, "/orders/1")

    assert reply.status_code == 200
    assert [type(e) for e in errors] == [EventValidationError]
    assert "custom_data.currency, custom_data.value" in caplog.text
    assert "Bitcoin" not in caplog.text
    assert EMAIL not in caplog.text


def test_keys_of_the_callers_own_are_hidden_in_the_log(
    client: Client, caplog: pytest.LogCaptureFixture
) -> None:
    """A key can be personal data itself: `{email: email}` is a common slip."""
    app = order_page(
        client,
        user_data=lambda request: {EMAIL: EMAIL},
        custom_data=lambda request: {"Secret-Key-9": 1},
    )

    with caplog.at_level(logging.WARNING, logger="pinterest_mw"):
        get_from(app, "/orders/1")

    assert "user_data.<unknown key>" in caplog.text
    assert "custom_data.<unknown key>" in caplog.text
    assert EMAIL not in caplog.text
    assert "example.com" not in caplog.text.lower()
    assert "Secret-Key-9" not in caplog.text


def test_field_warnings_of_a_queued_event_are_logged_once_without_values(
    client: Client, caplog: pytest.LogCaptureFixture
) -> None:
    """A dropped value or a guessed phone loses matches: the developer hears it.

    At WARNING the first time for this hook, event and field, then at DEBUG,
    so that the same data on every request does not flood the log.
    """
    phone = "650 555 0134"  # no country code, and the client sets no region
    track = track_conversion(
        "warning_probe",
        client=client,
        user_data=lambda request: {"email": EMAIL, "phone": phone},
    )
    app = Starlette(routes=[Route("/", track(lambda request: PlainTextResponse("ok")))])

    with caplog.at_level(logging.DEBUG, logger="pinterest_mw"):
        replies = [get_from(app, "/").status_code for _ in range(2)]

    assert replies == [200, 200]
    assert client.counters.accepted == 2
    found = [r for r in caplog.records if "user_data.phone" in r.getMessage()]
    assert [r.levelno for r in found] == [logging.WARNING, logging.DEBUG]
    assert "warning_probe event" in found[0].getMessage()
    assert "a value sent as assumed" in found[0].getMessage()
    assert phone not in caplog.text
    assert "6505550134" not in caplog.text
    assert EMAIL not in caplog.text


def test_failing_on_error_hook_is_contained(client: Client) -> None:
    """The view still answers when the on_error hook itself raises."""

    def on_error(error: Exception) -> None:
        raise RuntimeError("hook failed")

    app = order_page(client, user_data=lambda request: 1 / 0, on_error=on_error)

    assert get_from(app, "/orders/1").status_code == 200


def test_failing_event_id_callable_falls_back_to_a_random_id(
    client: Client, fake_pinterest: FakePinterestAPI
) -> None:
    app = order_page(client, event_id=lambda request: request.path_params["nope"])

    reply = get_from(app, "/orders/1")

    assert uuid.UUID(reply.text).version == 4
    assert [e["event_id"] for e in sent_events(client, fake_pinterest)] == [reply.text]


@pytest.mark.parametrize("overflow", ["raise", "drop_newest"])
def test_full_queue_does_not_break_the_view_and_is_reported(
    overflow: str, make_client: Callable[..., Client]
) -> None:
    """Whatever the overflow policy, an event the queue refused is a failure."""
    errors: list[Exception] = []
    client = make_client(max_queue_size=1, overflow=overflow, flush_interval=60)
    app = order_page(client, on_error=errors.append)
    before = counted()

    statuses = [get_from(app, f"/orders/{n}").status_code for n in range(2)]

    assert statuses == [200, 200]
    assert delta(before) == {"tracked": 1, "skipped": 0, "failed": 1}
    assert [type(error) for error in errors] == [QueueFullError]


@pytest.mark.parametrize(
    ("overflow", "reason"),
    [
        ("raise", "the delivery queue is full"),
        ("drop_newest", NOT_ACCEPTED_MESSAGE),
    ],
)
def test_a_refused_event_is_logged_with_what_is_known_of_why(
    overflow: str,
    reason: str,
    make_client: Callable[..., Client],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Under "drop_newest" the client only says it took nothing, and logs why."""
    client = make_client(max_queue_size=1, overflow=overflow, flush_interval=60)
    app = order_page(client)

    with caplog.at_level(logging.WARNING, logger="pinterest_mw.decorators"):
        for n in range(2):
            get_from(app, f"/orders/{n}")

    [record] = [r for r in caplog.records if r.name == "pinterest_mw.decorators"]
    assert record.getMessage().endswith(f"checkout event not queued ({reason})")


def test_an_event_for_a_closed_client_is_not_said_to_meet_a_full_queue(
    make_client: Callable[..., Client], caplog: pytest.LogCaptureFixture
) -> None:
    """A closed client takes nothing either: its own line says it is closed."""
    client = make_client()
    app = order_page(client)
    get_from(app, "/orders/0")
    client.close(timeout=5)

    with caplog.at_level(logging.WARNING, logger="pinterest_mw"):
        reply = get_from(app, "/orders/1")

    messages = [r.getMessage() for r in caplog.records]
    assert reply.status_code == 200
    assert any("closed" in message for message in messages)
    assert not any("full" in message for message in messages)
    assert any(message.endswith(f"({NOT_ACCEPTED_MESSAGE})") for message in messages)


# --- without a request -------------------------------------------------------------


def test_without_a_request_callables_get_none_and_one_warning_is_logged(
    client: Client, caplog: pytest.LogCaptureFixture
) -> None:
    seen: list[object] = []

    def user_data(request: object) -> dict[str, str]:
        seen.append(request)
        return {"email": EMAIL}

    @track_conversion("signup", client=client, user_data=user_data)
    def sign_up() -> str:
        return "welcome"

    with caplog.at_level(logging.WARNING, logger="pinterest_mw"):
        sign_up()
        sign_up()

    assert seen == [None, None]
    assert client.counters.accepted == 2
    assert len(caplog.records) == 1
    assert "found no request" in caplog.records[0].getMessage()


@pytest.mark.parametrize("is_async", [False, True])
def test_fastapi_view_without_request_or_middleware_warns_once(
    client: Client, caplog: pytest.LogCaptureFixture, is_async: bool
) -> None:
    """FastAPI hands no Request to a view that does not ask for one."""
    app = FastAPI()
    app.get("/signup")(
        track_conversion("signup", client=client)(
            as_variant(lambda: {"ok": True}, is_async)
        )
    )

    with (
        caplog.at_level(logging.WARNING, logger="pinterest_mw"),
        TestClient(app) as browser,
    ):
        statuses = [browser.get("/signup").status_code for _ in range(3)]

    warnings = [r for r in caplog.records if r.msg == NO_REQUEST_MESSAGE]
    assert statuses == [200] * 3
    assert len(warnings) == 1
    assert "PinterestMiddleware" in warnings[0].getMessage()


def test_fastapi_view_served_by_the_middleware_does_not_warn(
    client: Client, caplog: pytest.LogCaptureFixture
) -> None:
    app = FastAPI()
    app.add_middleware(PinterestMiddleware, client=client)
    app.get("/signup")(track_conversion("signup")(lambda: {"ok": True}))

    with (
        caplog.at_level(logging.WARNING, logger="pinterest_mw"),
        TestClient(app) as browser,
    ):
        status = browser.get("/signup").status_code

    assert status == 200
    assert [r for r in caplog.records if r.msg == NO_REQUEST_MESSAGE] == []


def test_current_event_outside_a_decorated_view_raises_lookup_error() -> None:
    with pytest.raises(LookupError, match=re.escape(NO_CURRENT_EVENT_MESSAGE)):
        current_event()


# --- the pending event and ids -----------------------------------------------------


def test_pending_event_repr_names_fields_not_values() -> None:
    event = PendingEvent("checkout", "id-1")
    event.user_data["email"] = EMAIL
    event.custom_data["value"] = "19.99"

    text = repr(event)

    assert "email" in text
    assert EMAIL not in text
    assert "19.99" not in text


@pytest.mark.parametrize(
    ("value", "error"), [("", ValueError), (None, TypeError), (1.5, TypeError)]
)
def test_pending_event_refuses_an_unusable_event_id(
    value: Any, error: type[Exception]
) -> None:
    event = PendingEvent("checkout", "id-1")

    with pytest.raises(error):
        event.event_id = value


def test_deterministic_event_id_is_the_same_for_the_same_parts() -> None:
    assert deterministic_event_id("checkout", 42) == deterministic_event_id(
        "checkout", "42"
    )


@pytest.mark.parametrize(
    ("one", "other"),
    [(("ab",), ("a", "b")), (("checkout", 1), ("checkout", 2)), (("a:b",), ("a", "b"))],
)
def test_deterministic_event_id_tells_parts_apart(
    one: tuple[object, ...], other: tuple[object, ...]
) -> None:
    assert deterministic_event_id(*one) != deterministic_event_id(*other)


def test_deterministic_event_id_is_a_uuid5() -> None:
    assert uuid.UUID(deterministic_event_id("order", 1)).version == 5


def test_deterministic_event_id_needs_a_part() -> None:
    with pytest.raises(TypeError):
        deterministic_event_id()


@pytest.mark.parametrize(
    "options",
    [
        {"event_name": "check-out"},
        {"event_name": "checkout", "action_source": "fax"},
        {"event_name": "checkout", "event_id": "fixed"},
        {"event_name": "checkout", "user_data": "email"},
        {"event_name": "checkout", "user_data": lambda a, b, c: {}},
        {"event_name": "checkout", "event_id": lambda request, result: "x"},
        {"event_name": "checkout", "custom_data": lambda *, key: {}},
    ],
    ids=[
        "event-name",
        "action-source",
        "fixed-event-id",
        "not-callable",
        "three-arguments",
        "event-id-with-result",
        "keyword-only",
    ],
)
def test_unusable_decorator_arguments_raise_at_decoration(
    options: dict[str, Any],
) -> None:
    # A copy: the parameter is shared by every run of this test (a rerun too).
    options = dict(options)
    name = options.pop("event_name")

    with pytest.raises(ConfigurationError):
        track_conversion(name, **options)(lambda request: None)


class Checkout(HTTPEndpoint):
    async def get(self, request: Request) -> Response:
        return PlainTextResponse(current_event().event_id)


def test_endpoint_class_is_refused_at_decoration() -> None:
    """Starlette would call the wrapper as a function and answer 500."""
    with pytest.raises(ConfigurationError, match="decorate the methods of Checkout"):
        track_conversion("checkout")(Checkout)


def test_endpoint_method_can_be_decorated(
    client: Client, fake_pinterest: FakePinterestAPI
) -> None:
    class Tracked(HTTPEndpoint):
        get = track_conversion("checkout", client=client)(Checkout.get)

    reply = get_from(Starlette(routes=[Route("/", Tracked)]), "/")

    assert [e["event_id"] for e in sent_events(client, fake_pinterest)] == [reply.text]


def test_websocket_endpoint_emits_nothing_and_warns_once(
    client: Client, caplog: pytest.LogCaptureFixture
) -> None:
    @track_conversion("lead", client=client)
    async def chat(websocket: WebSocket) -> None:
        await websocket.accept()
        await websocket.send_text("hi")
        await websocket.close()

    app = Starlette(routes=[WebSocketRoute("/chat", chat)])
    before = counted()
    with (
        caplog.at_level(logging.WARNING, logger="pinterest_mw"),
        TestClient(app) as test_client,
    ):
        for _ in range(2):
            with test_client.websocket_connect("/chat") as websocket:
                websocket.receive_text()

    assert delta(before) == {"tracked": 0, "skipped": 0, "failed": 0}
    assert [r.msg for r in caplog.records] == [WEBSOCKET_MESSAGE]


def test_async_callable_is_refused_at_decoration() -> None:
    async def user_data(request: Request) -> dict[str, str]:
        return {}

    with pytest.raises(ConfigurationError):
        track_conversion("lead", user_data=user_data)(lambda request: None)


# --- Pinterest slow or down --------------------------------------------------------


@pytest.mark.anyio
async def test_async_view_answers_while_pinterest_hangs(
    httpx_mock: HTTPXMock,
) -> None:
    """Delivery is stuck inside a request to Pinterest; views keep answering."""
    fake = FakePinterestAPI()
    entered, release = anyio.Event(), anyio.Event()

    async def hanging(request: httpx.Request) -> httpx.Response:
        entered.set()
        await release.wait()
        return fake.handle(request)

    httpx_mock.add_callback(hanging, is_reusable=True, is_optional=True)
    client = Client(FAKE_ACCESS_TOKEN, FAKE_AD_ACCOUNT_ID, api_url=MOCK_URL, **FAST)
    app = order_page(client, is_async=True)
    transport = httpx.ASGITransport(app=app, client=(PEER, 1))
    try:
        async with httpx.AsyncClient(
            transport=transport, base_url=SHOP, headers={"user-agent": USER_AGENT}
        ) as browser:
            first = await browser.get("/orders/1")
            with anyio.fail_after(5):
                await entered.wait()
            second = await browser.get("/orders/2")
            counters = await client.acounters()
            release.set()
            assert await client.aflush(timeout=5)
    finally:
        release.set()
        await client.aclose(timeout=1)

    assert (first.status_code, second.status_code) == (200, 200)
    assert (counters.accepted, counters.processed) == (2, 0)
    assert sorted(e["event_id"] for e in fake.events) == sorted(
        [first.text, second.text]
    )


def test_flask_view_answers_while_pinterest_hangs(httpx_mock: HTTPXMock) -> None:
    fake = FakePinterestAPI()
    entered, release = threading.Event(), threading.Event()

    def hanging(request: httpx.Request) -> httpx.Response:
        entered.set()
        release.wait(timeout=10)
        return fake.handle(request)

    httpx_mock.add_callback(hanging, is_reusable=True, is_optional=True)
    client = Client(FAKE_ACCESS_TOKEN, FAKE_AD_ACCOUNT_ID, api_url=MOCK_URL, **FAST)
    app = flask.Flask(__name__)
    app.add_url_rule("/", "view", track_conversion("lead", client=client)(lambda: "ok"))
    browser = FlaskHarness(app)
    try:
        first = browser.get("/")
        assert entered.wait(timeout=5)
        second = browser.get("/")
        counters = client.counters
        release.set()
        assert client.flush(timeout=5)
    finally:
        release.set()
        client.close(timeout=1)

    assert (first.status, second.status) == (200, 200)
    assert (counters.accepted, counters.processed) == (2, 0)
    assert len(fake.events) == 2
