"""`@track_conversion`: a view that succeeds emits a conversion.

```python
@track_conversion(
    "checkout",
    event_id=lambda request: deterministic_event_id(
        "order", request.path_params["order_id"]
    ),
    custom_data=lambda request, result: {"value": result["total"], "currency": "USD"},
)
async def thank_you(request: Request) -> dict[str, Any]: ...
```

The decorated view runs as before. When the response sent is successful
(2xx), the event is queued on the client (never sent from the request: a
background worker delivers it); an exception, an `abort()`, a redirect or
an error status emits nothing and reaches the framework unchanged. The
view's return value is handed back untouched. A `HEAD` or `OPTIONS`
request (which Starlette and Flask may route to a GET view, for link
checkers, prefetchers and preflights) emits nothing either, nor do `TRACE`
and `CONNECT`, nor a websocket endpoint.

Which status was sent, only the middleware knows for sure. Under
`PinterestMiddleware` or `PinterestWSGIMiddleware` the event is built when
the view returns and queued by the middleware once the response starts
with a 2xx status. Without it, the status is read from what the view
returned (see `track_conversion`), which FastAPI can still change: a
`response_model` that refuses the value (a 500), or a dependency that sets
the status on its `Response`, emit an event for a response that was not a
success. Install the middleware with FastAPI.

What goes into the event:

- the decorator's `user_data` and `custom_data`: mappings, or callables
  taking `(request)` or `(request, result)`, where `result` is what the
  view returned;
- whatever the view set on `current_event()` while it ran (it wins over the
  decorator's values);
- from the request: client IP, user agent, `_epik` click id, page URL and
  language (`pinterest_mw.context`).

Finding the request, innermost framework first: a Starlette `Request`
among the view's arguments, Flask's `request` (also for a Flask app mounted
in a Starlette one), the request the middleware serves. Without any (a
FastAPI endpoint without a `Request` parameter and no middleware, or a call
outside a web request) the callables receive `None`, the event carries no
IP, user agent or click id, and a WARNING says so once per view. The
request context (client IP through the trusted proxies, ...) is the
middleware's; without it, it is read from the request with the proxies of
`PINTEREST_TRUSTED_PROXIES`, read once when the view is decorated.

Tracking never breaks the view: a failing callable, an invalid event or a
full queue (whatever the overflow policy) is logged (event name and the
kind of failure, never a value or a key of the caller's), counted in
`hook_counters().failed` and passed to `on_error`.

Privacy: user data is hashed when the event is built, before it is queued;
the raw values given by callables or set on `current_event()` live only in
memory for the request. The client IP, user agent and click id are sent
unhashed, as Pinterest asks. `repr(current_event())` names fields, never
values.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import logging
import sys
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextvars import ContextVar
from itertools import chain
from typing import Any, NamedTuple, ParamSpec, TypeVar, cast

import anyio.to_thread
from starlette.endpoints import HTTPEndpoint, WebSocketEndpoint
from starlette.requests import Request as StarletteRequest
from starlette.responses import Response as StarletteResponse
from starlette.websockets import WebSocket

from ._hooks import (
    NOT_QUEUED_MESSAGE as NOT_QUEUED_MESSAGE,
)
from ._hooks import (
    Emitter,
    ErrorHook,
    HeldEvent,
    HookCounters,
    Prepare,
    SourceError,
    check_action_source,
    check_event_name,
    count,
    hook_counters,
    is_async_callable,
    is_success,
    is_visit_method,
    serving_var,
)
from .client import Client, EventInput
from .context import RequestContext, TrustedProxies, current_context
from .events import ActionSource
from .exceptions import ConfigurationError

__all__ = [
    "HookCounters",
    "PendingEvent",
    "current_event",
    "deterministic_event_id",
    "hook_counters",
    "track_conversion",
]

logger = logging.getLogger(__name__)

P = ParamSpec("P")
R = TypeVar("R")

EVENT_ID_NAMESPACE = uuid.UUID("39b1c621-eaf1-404b-b662-5ece2638c74c")
"""The uuid5 namespace of `deterministic_event_id`: fixed, so ids never change."""

NO_REQUEST_MESSAGE = (
    "track_conversion(%r) on %s found no request: the event has no IP, user "
    "agent or click id (add PinterestMiddleware, or take a Request argument)"
)
EVENT_ID_FAILED_MESSAGE = (
    "track_conversion(%r): the event_id callable raised %s; a random id is used"
)
WEBSOCKET_MESSAGE = (
    "track_conversion(%r) on %s: a websocket endpoint emits no event"
    " (remove the decorator)"
)
NO_CURRENT_EVENT_MESSAGE = (
    "current_event() is only available while a @track_conversion view runs"
)


def _flask_request() -> Any:
    """Flask's current request object, or None; Flask is never imported here."""
    flask = sys.modules.get("flask")
    if flask is None or not flask.has_request_context():
        return None
    return flask.request._get_current_object()


class _Found(NamedTuple):
    """The request a view serves, and the framework that runs the view."""

    request: Any
    framework: str | None
    """`"starlette"` (FastAPI too), `"flask"`, `"websocket"`, or None."""

    @property
    def is_flask(self) -> bool:
        return self.framework == "flask"


def _find_request(args: Sequence[Any], kwargs: Mapping[str, Any]) -> _Found:
    """The request a view is serving: the innermost framework's wins.

    A Flask app mounted in a Starlette one runs its views inside both
    requests: Flask's decides how the view's return value is read.
    """
    for value in chain(args, kwargs.values()):
        if isinstance(value, StarletteRequest):
            return _Found(value, "starlette")
        if isinstance(value, WebSocket):
            return _Found(value, "websocket")
    flask_request = _flask_request()
    if flask_request is not None:
        return _Found(flask_request, "flask")
    serving = serving_var.get()
    if serving is not None and serving.scope is not None:
        return _Found(StarletteRequest(serving.scope), "starlette")

    return _Found(None, None)


def _context_of(found: _Found, proxies: TrustedProxies) -> RequestContext | None:
    """The middleware's context, or one read from the request found."""
    context = current_context()
    if context is not None or found.request is None:
        return context
    if found.is_flask:
        return RequestContext.from_environ(
            found.request.environ, trusted_proxies=proxies
        )

    return RequestContext.from_scope(found.request.scope, trusted_proxies=proxies)


# --- the current event ------------------------------------------------------------


class PendingEvent:
    """The event a `@track_conversion` view will emit if it succeeds.

    Get it with `current_event()` while the view runs, and:

    - read `event_id` and render it into the page, so that the Pinterest tag
      fires with the same id and Pinterest counts the conversion once; or
      set it (a string or an integer), for example from an order id;
    - add to `user_data` and `custom_data` (plain dicts, friendly names or
      wire codes, raw values: they are hashed when the event is built);
    - add other event fields to `fields` (`partner_name`, `opt_out`, ...);
    - call `skip()` to emit nothing for this request.

    Values set here win over the decorator's `user_data` and `custom_data`.
    """

    __slots__ = (
        "_event_id",
        "_skipped",
        "custom_data",
        "event_name",
        "fields",
        "user_data",
    )

    def __init__(self, event_name: str, event_id: str) -> None:
        self.event_name = event_name
        self._event_id = event_id
        self.user_data: dict[str, Any] = {}
        self.custom_data: dict[str, Any] = {}
        self.fields: dict[str, Any] = {}
        self._skipped = False

    def __repr__(self) -> str:
        return (
            f"PendingEvent(event_name={self.event_name!r}, "
            f"event_id={self._event_id!r}, user_data={sorted(self.user_data)!r}, "
            f"custom_data={sorted(self.custom_data)!r}, "
            f"fields={sorted(self.fields)!r}, skipped={self._skipped})"
        )

    @property
    def event_id(self) -> str:
        """The id the event will carry; the Pinterest tag should use it too."""
        return self._event_id

    @event_id.setter
    def event_id(self, value: str | int) -> None:
        self._event_id = _event_id_text(value)

    @property
    def is_skipped(self) -> bool:
        """Whether `skip()` was called."""
        return self._skipped

    def skip(self) -> None:
        """Emit nothing for this request, whatever the view returns."""
        self._skipped = True


_current_event: ContextVar[PendingEvent | None] = ContextVar(
    "pinterest_mw_current_event", default=None
)


def current_event() -> PendingEvent:
    """The pending event of the `@track_conversion` view running now.

    Available in the view and in what it calls, templates included, until
    it returns.

    Raises:
        LookupError: no decorated view is running.
    """
    event = _current_event.get()
    if event is None:
        raise LookupError(NO_CURRENT_EVENT_MESSAGE)
    return event


def deterministic_event_id(*parts: object) -> str:
    """An event id that is the same every time for the same parts.

    A UUID5 over the parts' text, for example `deterministic_event_id(
    "checkout", order_id)`: a thank-you page rendered twice for one order
    gives Pinterest the same event id twice, and it counts one conversion.
    The parts are told apart exactly (`("ab",)` and `("a", "b")` differ).

    Privacy: do not use personal data (an email, a phone number) as a part:
    the id is a hash of it, sent unhashed and rendered into the page.
    """
    if not parts:
        raise TypeError("deterministic_event_id needs at least one part")
    texts = [str(part) for part in parts]
    name = "".join(f"{len(text)}:{text};" for text in texts)

    return str(uuid.uuid5(EVENT_ID_NAMESPACE, name))


def _event_id_text(value: object) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, str):
        raise TypeError("event_id must be a string or an integer")
    if not value:
        raise ValueError("event_id must not be empty")
    return value


# --- the decorator ----------------------------------------------------------------

# A user callable brought to one shape at decoration time: (request, result).
_Source = Callable[[Any, Any], Any]
DataSource = Mapping[str, Any] | Callable[..., Mapping[str, Any] | None]


def _arity(fn: Callable[..., Any], name: str) -> int:
    """How many of (request, result) `fn` takes: 0, 1 or 2."""
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):  # pragma: no cover - C callables only
        return 1
    positional = (
        inspect.Parameter.POSITIONAL_ONLY,
        inspect.Parameter.POSITIONAL_OR_KEYWORD,
    )
    params = list(signature.parameters.values())
    if any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in params):
        return 2
    taken = [p for p in params if p.kind in positional]
    required = [p for p in params if p.default is p.empty and p.kind in positional]
    required_keywords = [
        p
        for p in params
        if p.kind is inspect.Parameter.KEYWORD_ONLY and p.default is p.empty
    ]
    if len(required) > 2 or required_keywords:
        raise ConfigurationError(f"{name} must take (request) or (request, result)")

    return min(len(taken), 2)


def _source(value: Any, name: str, *, with_result: bool = True) -> _Source | None:
    """Bring a mapping or a callable to the (request, result) shape, once."""
    if value is None:
        return None
    if isinstance(value, Mapping):
        frozen = dict(value)
        return lambda request, result: frozen
    if not callable(value):
        raise ConfigurationError(f"{name} must be a mapping or a callable")
    if is_async_callable(value):
        raise ConfigurationError(f"{name} must be a plain (not async) callable")
    arity = _arity(value, name)
    if arity == 2 and not with_result:
        raise ConfigurationError(f"{name} must take (request)")

    def call(request: Any, result: Any) -> Any:
        try:
            if arity == 0:
                return value()
            if arity == 1:
                return value(request)
            return value(request, result)
        except Exception as error:
            raise SourceError(name) from error

    return call


def _mapping(value: Any, name: str) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise TypeError(f"{name} must return a mapping or None")
    return value


def _status_number(value: object) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str):
        code = value.strip().split(" ", 1)[0]
        return int(code) if code.isdigit() else None
    return None


def _response_status(result: object, is_flask: bool) -> int | None:
    """The status a returned response object or Flask tuple declares, if any."""
    if isinstance(result, StarletteResponse):
        return result.status_code
    werkzeug = sys.modules.get("werkzeug.sansio.response")
    if werkzeug is not None and isinstance(result, werkzeug.Response):
        return cast(int, result.status_code)
    if not is_flask or not isinstance(result, tuple):
        return None
    # Flask: (body, status), (body, headers) or (body, status, headers).
    if len(result) == 3:
        return _status_number(result[1])
    if len(result) == 2:
        status = _status_number(result[1])
        return status if status is not None else _response_status(result[0], True)
    # Any other tuple is refused by Flask, which answers with an error.
    return 500


def _default_status(kwargs: Mapping[str, Any], request: Any) -> int:
    """The status of a plain return value: FastAPI's choices, else 200."""
    for value in kwargs.values():
        # FastAPI's `response: Response` parameter; its status is None until set.
        if isinstance(value, StarletteResponse) and value.status_code is not None:
            return value.status_code
    if not isinstance(request, StarletteRequest):
        return 200
    route = request.scope.get("route")
    status = getattr(route, "status_code", None)
    if isinstance(status, int):
        return status
    response_class = getattr(route, "response_class", None)
    # FastAPI wraps its default class in a placeholder holding it as `value`.
    return _class_status(getattr(response_class, "value", response_class))


@functools.lru_cache(maxsize=64)
def _class_status(response_class: object) -> int:
    """The status a response class answers with by default (a redirect's 307)."""
    try:
        signature = inspect.signature(cast(Callable[..., Any], response_class))
    except (TypeError, ValueError):
        return 200
    default = getattr(signature.parameters.get("status_code"), "default", None)

    return default if isinstance(default, int) else 200


def _view_succeeded(
    result: object, kwargs: Mapping[str, Any], request: Any, is_flask: bool
) -> bool:
    """Whether the view's return value calls for a 2xx, without the middleware."""
    status = _response_status(result, is_flask)
    if status is None:
        if is_flask and result is None:
            # Flask refuses a view that returns None: an error response.
            return False
        status = _default_status(kwargs, request)

    return is_success(status)


def _check_view(view: object, owner: str) -> None:
    """Refuse what a function wrapper would break: an endpoint class."""
    if isinstance(view, type) and issubclass(view, HTTPEndpoint | WebSocketEndpoint):
        raise ConfigurationError(
            f"{owner}: decorate the methods of {view.__name__} (get, post, ...),"
            " not the class: Starlette calls an endpoint class as an ASGI app"
        )


class _Tracker:
    """Everything `track_conversion` decided at decoration time, for one view."""

    def __init__(
        self,
        view: Callable[..., Any],
        event_name: str,
        *,
        client: Client | None,
        user_data: DataSource | None,
        custom_data: DataSource | None,
        event_id: Callable[..., str | int | None] | None,
        action_source: str,
        when: Callable[..., bool] | None,
        on_error: ErrorHook | None,
    ) -> None:
        owner = f"track_conversion({event_name!r})"
        _check_view(view, owner)
        self.event_name = check_event_name(event_name, "track_conversion")
        self.action_source = check_action_source(action_source, owner)
        if event_id is not None and not callable(event_id):
            raise ConfigurationError(
                f"{owner}: event_id must be a callable taking the request; "
                "a fixed id would merge every conversion into one"
            )
        self.user_data = _source(user_data, "user_data")
        self.custom_data = _source(custom_data, "custom_data")
        self.event_id = _source(event_id, "event_id", with_result=False)
        self.when = _source(when, "when")
        self.view_name = getattr(view, "__qualname__", type(view).__qualname__)
        self.emitter = Emitter(owner, client, on_error)
        # Without the middleware, the same proxies as the sub-apps: read once.
        self.proxies = TrustedProxies.from_option(None)
        self._warned: set[str] = set()

    def start(
        self, args: Sequence[Any], kwargs: Mapping[str, Any]
    ) -> tuple[PendingEvent, _Found]:
        """Find the request and make the pending event, before the view runs."""
        found = _find_request(args, kwargs)
        if found.framework == "websocket":
            self._warn_once(WEBSOCKET_MESSAGE)
            return PendingEvent(self.event_name, str(uuid.uuid4())), found
        if found.request is None and current_context() is None:
            self._warn_once(NO_REQUEST_MESSAGE)
        pending = PendingEvent(self.event_name, self._first_event_id(found.request))

        return pending, found

    def finish(
        self,
        pending: PendingEvent,
        found: _Found,
        result: object,
        kwargs: Mapping[str, Any],
    ) -> HeldEvent | None:
        """Build the event the view's outcome calls for; return it to queue.

        The event is built here, while the request is there for the
        callables. Under the middleware it is handed over, to be queued once
        the response sent is known to be 2xx, and None is returned, as when
        no event is due; the view's return value is not read for a status
        then. Never raises.
        """
        serving = serving_var.get()
        if serving is not None and not serving.is_open:
            serving = None
        if not self.should_emit(pending, found, result, kwargs, serving is not None):
            return None
        held = self.emitter.build(
            self.event_name, self.preparer(pending, found, result)
        )
        if held is None or serving is None:
            return held
        if serving.hold(held):
            return None
        # Closed since, from another thread: the status sent is gone.
        return held if self._succeeded(found, result, kwargs) else None

    def should_emit(
        self,
        pending: PendingEvent,
        found: _Found,
        result: object,
        kwargs: Mapping[str, Any],
        by_status: bool,
    ) -> bool:
        """Whether the view's outcome calls for the event (never raises).

        With `by_status`, the middleware decides success by the status it
        sees sent; otherwise the return value does.
        """
        request = found.request
        if found.framework == "websocket":
            return False
        if not is_visit_method(getattr(request, "method", None)):
            logger.debug(
                "%s: no event for a %s request", self.emitter.origin, request.method
            )
            return False
        if not by_status and not self._succeeded(found, result, kwargs):
            return False
        if pending.is_skipped or not self._wanted(request, result):
            count("skipped")
            return False

        return True

    def _succeeded(
        self, found: _Found, result: object, kwargs: Mapping[str, Any]
    ) -> bool:
        if _view_succeeded(result, kwargs, found.request, found.is_flask):
            return True
        logger.debug("%s: no event, the view did not succeed", self.emitter.origin)
        return False

    def preparer(self, pending: PendingEvent, found: _Found, result: object) -> Prepare:
        request = found.request

        def prepare() -> tuple[EventInput, RequestContext | None]:
            user_data = dict(self._data(self.user_data, "user_data", request, result))
            user_data.update(pending.user_data)
            custom_data = dict(
                self._data(self.custom_data, "custom_data", request, result)
            )
            custom_data.update(pending.custom_data)
            data: dict[str, Any] = {
                **pending.fields,
                "event_name": self.event_name,
                "action_source": self.action_source,
                "event_id": pending.event_id,
                "user_data": user_data,
            }
            if custom_data:
                data["custom_data"] = custom_data
            return data, _context_of(found, self.proxies)

        return prepare

    def _data(
        self, source: _Source | None, name: str, request: Any, result: object
    ) -> Mapping[str, Any]:
        return {} if source is None else _mapping(source(request, result), name)

    def _wanted(self, request: Any, result: object) -> bool:
        if self.when is None:
            return True
        try:
            return bool(self.when(request, result))
        except Exception as error:  # noqa: BLE001 - logged and counted by fail()
            self.emitter.fail(self.event_name, error)
            return False

    def _first_event_id(self, request: Any) -> str:
        if self.event_id is None:
            return str(uuid.uuid4())
        try:
            value = self.event_id(request, None)
            return str(uuid.uuid4()) if value is None else _event_id_text(value)
        except Exception as error:  # noqa: BLE001 - a random id keeps the view going
            cause = error.__cause__ if isinstance(error, SourceError) else error
            logger.warning(
                EVENT_ID_FAILED_MESSAGE, self.event_name, type(cause).__name__
            )
            return str(uuid.uuid4())

    def _warn_once(self, message: str) -> None:
        if message in self._warned:
            return
        self._warned.add(message)
        logger.warning(message, self.event_name, self.view_name)


def track_conversion(
    event_name: str,
    *,
    client: Client | None = None,
    user_data: DataSource | None = None,
    custom_data: DataSource | None = None,
    event_id: Callable[..., str | int | None] | None = None,
    action_source: ActionSource | str = ActionSource.WEB,
    when: Callable[..., bool] | None = None,
    on_error: ErrorHook | None = None,
) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Emit `event_name` each time the decorated view returns a 2xx response.

    Works on sync and async views of Starlette, FastAPI and Flask; the
    wrapper of an async view (a coroutine function, a `functools.partial`
    of one, or an object whose `__call__` is one) is a coroutine function,
    and the view's signature is kept, so FastAPI's dependency injection and
    OpenAPI schema do not change. Put it below the route decorator:

    ```python
    @app.post("/orders/{order_id}/pay")
    @track_conversion("checkout", custom_data=order_value)
    async def pay(order_id: int, user: User = Depends(current_user)): ...
    ```

    Under `PinterestMiddleware` or `PinterestWSGIMiddleware`, success is
    the status of the response actually sent: the event is queued when it
    starts with a 2xx status. Without the middleware, success is read from
    what the view returns: a response object's status; a Flask
    `(body, status)` tuple's; for a plain value (a dict, a string, a model)
    the status FastAPI would use (a `response: Response` parameter's, else
    the route's `status_code`, else its `response_class`'s default, such
    as a redirect's 307), or 200. That reading cannot see what FastAPI
    does after the view returns (a failing `response_model`, a status set
    by a dependency): use the middleware with FastAPI. An exception, a
    redirect or an error status emits nothing, and so does a `HEAD`,
    `OPTIONS`, `TRACE` or `CONNECT` request (when the request is known:
    see the module docs) or a websocket endpoint.

    See the module docs for what goes into the event and how the request
    is found. The event is built (validated and hashed) when the view
    returns, then queued by the middleware, or without it with
    `client.submit` from a sync view and `await client.asubmit` from an
    async one (an async Flask view, whose event loop ends with the
    request, queues from a worker thread); none of them waits for
    Pinterest.

    Args:
        event_name: a standard event name (`"checkout"`, `"lead"`, ...) or
            an advertiser-defined one of letters and underscores.
        client: where to queue; default the serving `PinterestMiddleware`'s
            client, else `get_default_client()`, looked up at each event.
        user_data: raw user data (friendly names or wire codes): a mapping,
            or a callable taking `(request)` or `(request, result)` and
            returning a mapping or None. Hashed before it is queued.
        custom_data: the same for custom data (value, currency, order id...).
        event_id: a callable taking `(request)` and returning the event's
            id (a string or an integer; None for a random one). Runs before
            the view, which can read the id from `current_event()`.
            Default: a random UUID4.
        action_source: where the conversion happened (default `"web"`).
        when: a predicate taking `(request)` or `(request, result)`; when
            it returns false, a successful view emits nothing.
        on_error: called with the exception when an event could not be
            queued (after it is logged and counted); what it raises is
            logged and dropped.

    Callables run in the request's thread (sync) and must not block long;
    they may not be coroutine functions.

    Raises:
        ConfigurationError: at decoration time, for an unknown event name
            or action source, a fixed `event_id`, a callable of the wrong
            shape, a Starlette endpoint class (decorate its methods), or an
            unusable `PINTEREST_TRUSTED_PROXIES`.
    """

    def decorate(view: Callable[P, R]) -> Callable[P, R]:
        tracker = _Tracker(
            view,
            event_name,
            client=client,
            user_data=user_data,
            custom_data=custom_data,
            event_id=event_id,
            action_source=str(action_source),
            when=when,
            on_error=on_error,
        )
        if is_async_callable(view):
            wrapper = _async_wrapper(cast(Callable[..., Awaitable[Any]], view), tracker)
        else:
            wrapper = _sync_wrapper(view, tracker)
        # inspect.signature follows __wrapped__ already; tools that read
        # __signature__ alone see the view's too.
        with contextlib.suppress(TypeError, ValueError):
            wrapper.__signature__ = inspect.signature(view)  # type: ignore[attr-defined]

        return cast(Callable[P, R], wrapper)

    return decorate


def _sync_wrapper(view: Callable[..., Any], tracker: _Tracker) -> Callable[..., Any]:
    @functools.wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        pending, found = tracker.start(args, kwargs)
        token = _current_event.set(pending)
        try:
            result = view(*args, **kwargs)
        finally:
            _current_event.reset(token)

        held = tracker.finish(pending, found, result, kwargs)
        if held is not None:
            held.submit()

        return result

    return wrapper


def _async_wrapper(
    view: Callable[..., Awaitable[Any]], tracker: _Tracker
) -> Callable[..., Awaitable[Any]]:
    @functools.wraps(view)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        pending, found = tracker.start(args, kwargs)
        token = _current_event.set(pending)
        try:
            result = await view(*args, **kwargs)
        finally:
            _current_event.reset(token)

        held = tracker.finish(pending, found, result, kwargs)
        if held is None:
            return result
        if found.is_flask:
            # Flask runs an async view in an event loop that ends with the
            # request: queued from that loop, the client would start its
            # delivery there. From a thread, it delivers from a thread.
            await anyio.to_thread.run_sync(held.submit)
        else:
            await held.asubmit()

        return result

    return wrapper
