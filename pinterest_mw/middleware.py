"""Request-context middleware for ASGI and WSGI apps, with optional route rules.

```python
app = Starlette(routes=routes)
app.add_middleware(PinterestMiddleware, client=client, trusted_proxies=["10.0.0.0/8"])

flask_app.wsgi_app = PinterestWSGIMiddleware(flask_app.wsgi_app, client=client)
```

For each HTTP request the middleware reads the request's context (client
IP through the trusted proxies, user agent, `_epik` click id, page URL,
language; see `pinterest_mw.context`) and makes it current while the app
runs. So `client.track({...})` anywhere in a view is enriched from the
request, and `@track_conversion` finds the request, its client IP and the
middleware's client. A `@track_conversion` view's event waits for the
response: the middleware queues it once the response starts with a 2xx
status, the status actually sent, and drops it otherwise. Other scopes
(websocket, lifespan) pass straight through.

Two options do more:

- `epik_cookie=True` stores Pinterest's click id on landing pages: a
  successful HTML response to a GET of a URL with an `epik` query parameter
  gets a first-party `_epik` cookie (one year, `SameSite=Lax`, not
  `HttpOnly` so that the Pinterest tag can read it). It is `Secure` when
  the request was made over https: as the server reports it (ASGI
  `scope["scheme"]`, WSGI `wsgi.url_scheme`), or as a trusted proxy that
  ends TLS reports it (`X-Forwarded-Proto`, `Forwarded: proto=`); browsers
  drop a `Secure` cookie set over plain http. The URL's value replaces an
  older cookie. The cookie is one visitor's, so it is never set on a
  response that a shared cache (a CDN) may store and hand to others: a
  response whose `Cache-Control` is there without `private` or `no-store`
  gets no cookie, and one without `Cache-Control` gets `Cache-Control:
  private` with it. (`Vary: Cookie` would not help: the next visitor
  arrives without the cookie too.) A CDN configured to cache pages
  whatever their headers must leave out URLs with `epik`. The cookie is an
  advertising identifier: set it only where your consent rules allow.
- `route_rules` emit events without touching views, for example a
  `page_visit` for every successful HTML page (by default a rule acts on
  `GET` requests answered with `text/html`): see `RouteRule`. Each rule
  that matches emits one event, after the response has been sent.

Tracking never breaks a request: a rule's event that cannot be queued is
logged without values, counted in `hook_counters().failed` and passed to
`on_error`.

Privacy: the context (IP address, user agent, click id) lives in a
contextvar for one request and is never logged; log lines name rules and
event ids, never values or URLs. No `BaseHTTPMiddleware`: the ASGI
middleware passes the app's messages through, adding a header at most.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable, Iterable, Iterator
from fnmatch import translate
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ._hooks import (
    NOT_VISIT_METHODS,
    Emitter,
    ErrorHook,
    Serving,
    arelease_held,
    check_action_source,
    check_event_name,
    is_success,
    is_visit_method,
    release_held,
    served_by_middleware,
)
from .client import Client, EventInput
from .context import (
    RequestContext,
    TrustedProxies,
    environ_path,
    request_scheme,
    scope_path,
    use_context,
)
from .events import ActionSource
from .exceptions import ConfigurationError

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

__all__ = ["PinterestMiddleware", "PinterestWSGIMiddleware", "RouteRule"]

logger = logging.getLogger(__name__)

EPIK_COOKIE_MAX_AGE = 365 * 24 * 3600
"""How long the `_epik` cookie lives, in seconds: one year."""

_EPIK = "epik"
_EPIK_COOKIE = "_epik"
# RFC 6265 cookie-octets only: anything else could change the header's meaning.
_EPIK_VALUE = re.compile(r"[\x21\x23-\x2B\x2D-\x3A\x3C-\x5B\x5D-\x7E]{1,1024}")
_PRIVATE_DIRECTIVES = frozenset({"private", "no-store"})
_COOKIE_DOMAIN = re.compile(r"\.?[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?")


class RouteRule:
    """Emit `event_name` for every successful response that matches.

    ```python
    RouteRule(
        "page_visit",
        methods={"GET"},
        include=["/products/*"],
        exclude=["/admin/*"],
        content_types={"text/html"},
    )
    ```

    A response matches when its status is 2xx, the request's method is in
    `methods`, its path (the full path, mount points included) matches one
    `include` pattern and no `exclude` pattern, and the response's media
    type is in `content_types` (compared without parameters and case:
    `"text/html; charset=utf-8"` is read as `"text/html"`). Patterns are
    shell-style (`fnmatch`): `*` matches any characters, `/` included. By
    default a rule acts on `GET` requests answered with `text/html`;
    `methods` or `content_types` of None match any method or media type,
    except that `HEAD`, `OPTIONS`, `TRACE` and `CONNECT` requests never
    emit (they are not visits: link checkers, prefetchers, preflights), and
    naming one in `methods` is a `ConfigurationError`.

    The event carries what the request tells (IP, user agent, click id,
    page URL, language) and a random event id: the Pinterest tag on the
    page cannot know that id, so do not fire the same event from the tag
    too, or use `@track_conversion` where deduplication matters.
    """

    __slots__ = (
        "_exclude_re",
        "_include_re",
        "action_source",
        "content_types",
        "event_name",
        "exclude",
        "include",
        "methods",
    )

    def __init__(
        self,
        event_name: str,
        *,
        methods: Iterable[str] | None = ("GET",),
        include: Iterable[str] = ("*",),
        exclude: Iterable[str] = (),
        content_types: Iterable[str] | None = ("text/html",),
        action_source: ActionSource | str = ActionSource.WEB,
    ) -> None:
        self.event_name = check_event_name(event_name, "RouteRule")
        self.action_source = check_action_source(str(action_source), "RouteRule")
        self.methods = _upper_set(methods, "methods")
        if self.methods is not None and self.methods & NOT_VISIT_METHODS:
            raise ConfigurationError(
                "RouteRule: methods may not include "
                f"{', '.join(sorted(self.methods & NOT_VISIT_METHODS))}:"
                " such requests are not visits and never emit"
            )
        self.content_types = _media_types(content_types)
        self.include = _pattern_list(include, "include")
        self.exclude = _pattern_list(exclude, "exclude")
        self._include_re = _compile(self.include)
        self._exclude_re = _compile(self.exclude)

    def __repr__(self) -> str:
        return (
            f"RouteRule({self.event_name!r}, methods={_sorted(self.methods)}, "
            f"include={list(self.include)}, exclude={list(self.exclude)}, "
            f"content_types={_sorted(self.content_types)})"
        )

    def matches_request(self, method: str, path: str) -> bool:
        """Whether the request's method and path are this rule's."""
        if self.methods is None:
            if not is_visit_method(method):
                return False
        elif method not in self.methods:
            return False
        if self._include_re is None or not self._include_re.match(path):
            return False

        return self._exclude_re is None or not self._exclude_re.match(path)

    def matches_response(self, status: int | None, media_type: str | None) -> bool:
        """Whether a response with this status and media type emits the event."""
        if not is_success(status):
            return False
        return self.content_types is None or media_type in self.content_types

    def event_data(self) -> dict[str, Any]:
        """The event before the request's context is written in."""
        return {"event_name": self.event_name, "action_source": self.action_source}


def _upper_set(values: Iterable[str] | None, name: str) -> frozenset[str] | None:
    if values is None:
        return None
    if isinstance(values, str):
        raise ConfigurationError(f"RouteRule: {name} must be a collection of strings")
    return frozenset(value.upper() for value in values)


def _media_types(values: Iterable[str] | None) -> frozenset[str] | None:
    """Media types as responses are compared: parameters dropped, lower-case."""
    if values is None:
        return None
    if isinstance(values, str):
        raise ConfigurationError(
            "RouteRule: content_types must be a collection of strings"
        )
    return frozenset(_media_type(value) for value in values)


def _pattern_list(patterns: Iterable[str], name: str) -> tuple[str, ...]:
    if isinstance(patterns, str):
        raise ConfigurationError(f"RouteRule: {name} must be a collection of patterns")
    return tuple(patterns)


def _compile(patterns: tuple[str, ...]) -> re.Pattern[str] | None:
    """One regular expression matching any of the shell-style patterns."""
    if not patterns:
        return None
    return re.compile("|".join(f"(?:{translate(pattern)})" for pattern in patterns))


def _sorted(values: frozenset[str] | None) -> list[str] | None:
    return None if values is None else sorted(values)


def _media_type(content_type: str) -> str:
    return content_type.split(";", 1)[0].strip().lower()


class _Answer:
    """What the app answered, as far as the hooks care."""

    __slots__ = ("cache_control", "complete", "media_type", "sets_epik", "status")

    def __init__(self) -> None:
        self.status: int | None = None
        # ASGI: the last body message was handed to the server.
        self.complete = False
        self.media_type: str | None = None
        self.sets_epik = False
        self.cache_control: str | None = None

    def note_header(self, name: str, value: str) -> None:
        """Note one response header (`name` in lower case)."""
        if name == "content-type":
            self.media_type = _media_type(value)
        elif name == "set-cookie" and value.startswith(f"{_EPIK_COOKIE}="):
            self.sets_epik = True
        elif name == "cache-control":
            joined = f"{self.cache_control}, {value}" if self.cache_control else value
            self.cache_control = joined

    def takes_epik_cookie(self) -> bool:
        """Whether the `_epik` cookie may be added to this response.

        A successful HTML page that sets none itself, and that no shared
        cache may store: one that a CDN keeps would hand this visitor's
        click id to the next ones.
        """
        if not is_success(self.status) or self.media_type != "text/html":
            return False
        if self.sets_epik:
            return False
        if self.cache_control is not None and not _is_private(self.cache_control):
            logger.debug("epik cookie not set: the response may be cached by others")
            return False
        return True

    def needs_private(self) -> bool:
        """Whether the cookie must come with `Cache-Control: private`."""
        return self.cache_control is None


def _is_private(cache_control: str) -> bool:
    """Whether `Cache-Control` keeps a response out of shared caches."""
    directives = {
        directive.split("=", 1)[0].strip().lower()
        for directive in cache_control.split(",")
    }
    return bool(directives & _PRIVATE_DIRECTIVES)


class _Hooks:
    """The configuration shared by the ASGI and WSGI middleware, built once."""

    def __init__(
        self,
        origin: str,
        *,
        client: Client | None,
        trusted_proxies: TrustedProxies | Iterable[str] | None,
        route_rules: Iterable[RouteRule],
        epik_cookie: bool,
        cookie_domain: str | None,
        on_error: ErrorHook | None,
    ) -> None:
        self.client = client
        self.proxies = TrustedProxies.from_option(trusted_proxies)
        self.rules = tuple(route_rules)
        if not all(isinstance(rule, RouteRule) for rule in self.rules):
            raise ConfigurationError("route_rules must be RouteRule objects")
        self.epik_cookie = epik_cookie
        self.cookie_attributes = _cookie_attributes(cookie_domain, secure=False)
        self.secure_cookie_attributes = _cookie_attributes(cookie_domain, secure=True)
        self.emitter = Emitter(origin, client, on_error, logger)

    def rules_for(self, method: str, path: str) -> tuple[RouteRule, ...]:
        if not self.rules:
            return ()
        return tuple(rule for rule in self.rules if rule.matches_request(method, path))

    def epik_cookie_for(
        self, method: str, query_string: str, context: RequestContext
    ) -> str | None:
        """The `Set-Cookie` value for the URL's `epik`, if any and acceptable.

        Only for a GET, the request a click on a pin makes; `Secure` only
        for a request made over https (as `context` was read).
        """
        if not self.epik_cookie or method != "GET" or _EPIK not in query_string:
            return None
        for key, value in parse_qsl(query_string):
            if key != _EPIK:
                continue
            if _EPIK_VALUE.fullmatch(value):
                attributes = (
                    self.secure_cookie_attributes
                    if request_scheme(context) == "https"
                    else self.cookie_attributes
                )
                return f"{_EPIK_COOKIE}={value}{attributes}"
            logger.debug("epik query parameter not stored: not a valid cookie value")
        return None

    def rule_events(
        self, rules: Iterable[RouteRule], answer: _Answer
    ) -> Iterator[RouteRule]:
        for rule in rules:
            if rule.matches_response(answer.status, answer.media_type):
                yield rule

    def preparer(
        self, rule: RouteRule, context: RequestContext
    ) -> Callable[[], tuple[EventInput, RequestContext | None]]:
        return lambda: (rule.event_data(), context)

    def emit(
        self,
        rules: Iterable[RouteRule],
        answer: _Answer,
        context: RequestContext,
        serving: Serving,
    ) -> None:
        """Queue the events of the rules that match and of the views served."""
        for rule in self.rule_events(rules, answer):
            self.emitter.track(rule.event_name, self.preparer(rule, context))
        release_held(serving, answer.status)

    async def aemit(
        self,
        rules: Iterable[RouteRule],
        answer: _Answer,
        context: RequestContext,
        serving: Serving,
    ) -> None:
        """`emit` for async code."""
        for rule in self.rule_events(rules, answer):
            await self.emitter.atrack(rule.event_name, self.preparer(rule, context))
        await arelease_held(serving, answer.status)


def _cookie_attributes(domain: str | None, *, secure: bool) -> str:
    attributes = f"; Max-Age={EPIK_COOKIE_MAX_AGE}; Path=/; SameSite=Lax"
    if secure:
        attributes += "; Secure"
    if domain is None:
        return attributes
    if not _COOKIE_DOMAIN.fullmatch(domain):
        raise ConfigurationError(
            "cookie_domain must be a host name such as .shop.example"
        )
    return f"{attributes}; Domain={domain}"


# --- ASGI -------------------------------------------------------------------------


class PinterestMiddleware:
    """Pure ASGI middleware: request context, `_epik` cookie, route rules.

    ```python
    app.add_middleware(
        PinterestMiddleware,
        client=client,
        trusted_proxies=["10.0.0.0/8"],
        epik_cookie=True,
        route_rules=[RouteRule("page_visit", include=["/products/*"])],
    )
    ```

    Args:
        app: the ASGI app to wrap.
        client: where route rules queue their events, and the default
            client of `@track_conversion` views it serves; default
            `get_default_client()`, looked up at each event.
        trusted_proxies: the proxies (IPs or CIDR networks, or `"unix"` for
            a peer on a unix socket) whose `Forwarded`/`X-Forwarded-*`
            headers are believed; None reads `PINTEREST_TRUSTED_PROXIES`
            (comma-separated). The same option and rules as the mounted
            sub-app (`pinterest_mw.context`).
        route_rules: `RouteRule`s emitting events for matching responses.
        epik_cookie: store the `epik` query parameter as the `_epik` cookie
            on successful HTML responses to GET requests that no shared
            cache may store (off by default: consent); `Secure` on https
            requests only.
        cookie_domain: the cookie's `Domain`, to share it with subdomains.
        on_error: called with the exception when a rule's event could not
            be queued.

    Raises:
        ConfigurationError: for an unusable option, at construction.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        client: Client | None = None,
        trusted_proxies: TrustedProxies | Iterable[str] | None = None,
        route_rules: Iterable[RouteRule] = (),
        epik_cookie: bool = False,
        cookie_domain: str | None = None,
        on_error: ErrorHook | None = None,
    ) -> None:
        self.app = app
        self._hooks = _Hooks(
            "PinterestMiddleware",
            client=client,
            trusted_proxies=trusted_proxies,
            route_rules=route_rules,
            epik_cookie=epik_cookie,
            cookie_domain=cookie_domain,
            on_error=on_error,
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve one ASGI connection."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        hooks = self._hooks
        context = RequestContext.from_scope(scope, trusted_proxies=hooks.proxies)
        rules = hooks.rules_for(scope["method"], scope_path(scope))
        cookie = hooks.epik_cookie_for(
            scope["method"], scope.get("query_string", b"").decode("latin-1"), context
        )

        answer = _Answer()
        serving = Serving(scope, hooks.client)
        watched = _watch(
            send,
            answer,
            serving,
            cookie.encode("latin-1") if cookie is not None else None,
            reads_headers=bool(rules) or cookie is not None,
        )
        try:
            with use_context(context), served_by_middleware(serving):
                await self.app(scope, receive, watched)
        except Exception:
            # What fails once the whole response went out (a BackgroundTask)
            # takes nothing back from the visitor: the page was served.
            if answer.complete:
                await hooks.aemit(rules, answer, context, serving)
            raise

        await hooks.aemit(rules, answer, context, serving)


# The messages that carry a response's body; the last one has no `more_body`.
_BODY_MESSAGES = frozenset(
    {"http.response.body", "http.response.pathsend", "http.response.zerocopysend"}
)


def _watch(
    send: Send,
    answer: _Answer,
    serving: Serving,
    cookie: bytes | None,
    *,
    reads_headers: bool,
) -> Callable[[Message], Awaitable[None]]:
    """A `send` that notes the response's status, and its headers if asked.

    Once the start is sent, the views' held events are queued if it is 2xx.
    Without `reads_headers` (no route rule and no cookie for this request)
    no header is decoded: the held events need the status only.
    """

    async def watched(message: Message) -> None:
        if message["type"] != "http.response.start":
            await send(message)
            if message["type"] in _BODY_MESSAGES and not message.get(
                "more_body", False
            ):
                answer.complete = True
            return
        answer.status = message["status"]
        if reads_headers:
            message = _read_asgi_headers(message, answer, cookie)
        await send(message)
        await arelease_held(serving, answer.status)

    return watched


def _read_asgi_headers(
    message: Message, answer: _Answer, cookie: bytes | None
) -> Message:
    """Note the start's headers; return it with the cookie's added if due."""
    headers = list(message.get("headers", ()))
    for name, value in headers:
        answer.note_header(name.decode("latin-1").lower(), value.decode("latin-1"))
    if cookie is None or not answer.takes_epik_cookie():
        return message
    headers.append((b"set-cookie", cookie))
    if answer.needs_private():
        headers.append((b"cache-control", b"private"))

    return {**message, "headers": headers}


# --- WSGI -------------------------------------------------------------------------


class PinterestWSGIMiddleware:
    """WSGI middleware: request context, `_epik` cookie, route rules.

    ```python
    flask_app.wsgi_app = PinterestWSGIMiddleware(flask_app.wsgi_app, client=client)
    ```

    The same options as `PinterestMiddleware`. The context is current while
    the app is called; a body the app produces lazily (a streamed response)
    runs without it. Route rules emit once the whole body has been sent:
    when the server closes a body it iterated to the end. A body that
    raises, or that the server stops reading (the client went away), emits
    nothing. With route rules, the body is wrapped, so a server cannot
    apply its `wsgi.file_wrapper` shortcut to it. A `@track_conversion`
    view's event is queued when the app returns, if it has started a 2xx
    response by then (Flask has), else like a rule's.
    """

    def __init__(
        self,
        app: WSGIApplication,
        *,
        client: Client | None = None,
        trusted_proxies: TrustedProxies | Iterable[str] | None = None,
        route_rules: Iterable[RouteRule] = (),
        epik_cookie: bool = False,
        cookie_domain: str | None = None,
        on_error: ErrorHook | None = None,
    ) -> None:
        self.app = app
        self._hooks = _Hooks(
            "PinterestWSGIMiddleware",
            client=client,
            trusted_proxies=trusted_proxies,
            route_rules=route_rules,
            epik_cookie=epik_cookie,
            cookie_domain=cookie_domain,
            on_error=on_error,
        )

    def __call__(
        self, environ: WSGIEnvironment, start_response: StartResponse
    ) -> Iterable[bytes]:
        """Serve one WSGI request."""
        hooks = self._hooks
        context = RequestContext.from_environ(environ, trusted_proxies=hooks.proxies)
        rules = hooks.rules_for(
            environ.get("REQUEST_METHOD", ""), environ_path(environ)
        )
        cookie = hooks.epik_cookie_for(
            environ.get("REQUEST_METHOD", ""), environ.get("QUERY_STRING", ""), context
        )

        answer = _Answer()
        watched = _watch_start_response(
            start_response,
            answer,
            cookie,
            reads_headers=bool(rules) or cookie is not None,
        )
        serving = Serving(None, hooks.client)
        with use_context(context), served_by_middleware(serving):
            body = self.app(environ, watched)
        if answer.status is not None:
            # The views' events: their response has its status (an app that
            # starts it while its body is read has them queued at the end).
            release_held(serving, answer.status)
        if not rules and not serving.held:
            return body

        return _EmitWhenSent(body, lambda: hooks.emit(rules, answer, context, serving))


def _watch_start_response(
    start_response: StartResponse,
    answer: _Answer,
    cookie: str | None,
    *,
    reads_headers: bool,
) -> StartResponse:
    """A `start_response` that notes the status, and the headers if asked.

    Without `reads_headers` (no route rule and no cookie for this request)
    no header is looked at: the held events need the status only.
    """

    def watched(
        status: str, headers: list[tuple[str, str]], exc_info: Any = None
    ) -> Callable[[bytes], object]:
        # An app may call start_response again with exc_info: the last call
        # counts.
        code = status.split(" ", 1)[0]
        answer.status = int(code) if code.isdigit() else None
        if reads_headers:
            headers = _read_wsgi_headers(answer, headers, cookie)
        return start_response(status, headers, exc_info)

    return watched


def _read_wsgi_headers(
    answer: _Answer, headers: list[tuple[str, str]], cookie: str | None
) -> list[tuple[str, str]]:
    """Note the headers; return them with the cookie's added if due."""
    answer.media_type = None
    answer.sets_epik = False
    answer.cache_control = None
    for name, value in headers:
        answer.note_header(name.lower(), value)
    if cookie is None or not answer.takes_epik_cookie():
        return headers
    headers = [*headers, ("Set-Cookie", cookie)]
    if answer.needs_private():
        headers.append(("Cache-Control", "private"))

    return headers


class _EmitWhenSent:
    """The app's body; the route rules' events go out once all of it was sent.

    The server calls `close()` after the last chunk is written (PEP 3333);
    an app may also call `start_response` only while its body is iterated,
    so the status is known only then.
    """

    def __init__(self, body: Iterable[bytes], emit: Callable[[], None]) -> None:
        self._body = body
        self._emit = emit
        self._finished = False

    def __iter__(self) -> Iterator[bytes]:
        yield from self._body
        self._finished = True

    def close(self) -> None:
        finished, self._finished = self._finished, False
        close = getattr(self._body, "close", None)
        if close is not None:
            close()
        if finished:
            self._emit()
