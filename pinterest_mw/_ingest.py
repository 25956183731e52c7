"""What the ASGI and WSGI track endpoints share: everything but the framework.

`pinterest_mw.asgi` and `pinterest_mw.wsgi` only read the request in their
framework's way and write out a `Reply`; every rule lives here, once: the
options and their environment variables, the CORS policy, the origin check
of posts, the shared-secret check, the per-IP rate limit, the content-type
and size checks, the body shapes, the validation and enrichment of each
event, and every response body.

Privacy: nothing here logs a body, a header value, an IP address or any
event field. Responses echo event ids, event names and field paths; never a
user-data value, raw or hashed.
"""

from __future__ import annotations

import hmac
import json
import logging
import math
import os
import re
import threading
import time
import traceback
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, NamedTuple

from ._env import env_flag
from .client import Client, get_default_client
from .context import (
    ENV_TRUSTED_PROXIES,
    RequestContext,
    TrustedProxies,
    enrich_event_data,
)
from .dispatch import Counters
from .events import Event, parse_event
from .exceptions import (
    APIError,
    ConfigurationError,
    ConversionsError,
    EventValidationError,
    FieldError,
)
from .transport import EventStatus, SendResult

__all__ = [
    "DEFAULT_MAX_BODY_SIZE",
    "DEFAULT_RATE_LIMIT_BURST",
    "DEFAULT_SECRET_HEADER",
    "ENV_ALLOW_ORIGINS",
    "ENV_SHARED_SECRET",
    "ENV_TEST_ENDPOINT",
    "ENV_TRUSTED_PROXIES",
    "LENGTH_REQUIRED",
    "MALFORMED_JSON",
    "MAX_EVENTS_PER_REQUEST",
    "NOT_FOUND",
    "ORIGIN_NOT_ALLOWED",
    "QUEUE_FULL_RETRY_AFTER",
    "BodyBuffer",
    "CORSPolicy",
    "Ingest",
    "ParsedEvents",
    "RateLimiter",
    "Reply",
    "method_not_allowed",
]

logger = logging.getLogger(__name__)

DEFAULT_MAX_BODY_SIZE = 64 * 1024
"""Bytes a request body may hold: about 100 typical events."""

DEFAULT_SECRET_HEADER = "X-Pinterest-MW-Secret"  # noqa: S105 - a header name
"""The header carrying the shared secret, when one is configured."""

MAX_EVENTS_PER_REQUEST = 1000
"""Pinterest's own limit for one request, applied to one posted body too."""

QUEUE_FULL_RETRY_AFTER = 5
"""Seconds a client is asked to wait when the delivery queue is full."""

DEFAULT_RATE_LIMIT_BURST = 20
"""Requests an IP address may make at once before `rate_limit` applies."""

RATE_LIMIT_MAX_CLIENTS = 10_000
"""IP addresses the rate limiter remembers before it forgets idle ones."""

ENV_ALLOW_ORIGINS = "PINTEREST_ALLOW_ORIGINS"
ENV_SHARED_SECRET = "PINTEREST_SHARED_SECRET"  # noqa: S105 - a variable's name
ENV_TEST_ENDPOINT = "PINTEREST_TEST_ENDPOINT"

ACCEPTED_MEDIA_TYPES = frozenset({"application/json", "text/plain"})
"""`text/plain` is what `navigator.sendBeacon` sends for a string body."""

CORS_METHODS = ("GET", "POST")
# What Starlette's CORSMiddleware always allows, spelled as it answers them.
CORS_SAFELISTED_HEADERS = frozenset(
    {"Accept", "Accept-Language", "Content-Language", "Content-Type"}
)
CORS_EXPOSED_HEADERS = ("Retry-After",)
CORS_MAX_AGE = 600

FAILURE_LOG = "the track endpoint failed (%s at %s); answered 503"
QUEUE_FULL_LOG = "the delivery queue took %d of %d posted events; answered 503"
NOT_SENT_MESSAGE = (
    "No Pinterest credentials are configured: nothing was sent to Pinterest. "
    "These are local validation results only."
)
ADVERTISER_MESSAGE = (
    "advertiser_id is not one this endpoint accepts in a body (events go to "
    "the server's own ad account whatever the body names); to accept it, "
    "list it in PINTEREST_ADVERTISER_IDS (comma-separated) or pass "
    "advertiser_ids=[...] to the Client"
)
UNREACHABLE_MESSAGE = (
    "Pinterest could not be reached, or did not answer in time: it gave no "
    "verdict on these events"
)
ORIGIN_MESSAGE = (
    "this endpoint does not take events from pages of the request's Origin; "
    "list that origin in allow_origins (or PINTEREST_ALLOW_ORIGINS)"
)
_DEFAULT_PORTS = (":80", ":443")

_ORIGIN = re.compile(r"[a-z][a-z0-9+.-]*://[^/?#\s]+")
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_SECRET_TEXT = re.compile(r"[\x21-\x7e]+")
_ENVELOPE_KEYS = {
    "data": frozenset({"data", "advertiser_id"}),
    "event_data": frozenset({"event_data", "advertiser_id"}),
}


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


_decode_json = json.JSONDecoder(parse_constant=_reject_constant).decode
_encode_json = json.JSONEncoder(separators=(",", ":")).encode


# --- replies --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Reply:
    """One response, ready for either framework to write out."""

    status: int
    body: bytes
    headers: tuple[tuple[str, str], ...] = ()
    media_type: str = "application/json"

    @property
    def status_line(self) -> str:
        """The WSGI status line, such as `202 Accepted`."""
        return _STATUS_LINES.get(self.status) or f"{self.status} Unknown"


_STATUS_LINES = {
    status.value: f"{status.value} {status.phrase}" for status in HTTPStatus
}


def _json_reply(
    status: int, content: Mapping[str, Any], headers: Sequence[tuple[str, str]] = ()
) -> Reply:
    return Reply(status, _encode_json(content).encode(), tuple(headers))


def _error(
    status: int,
    error: str,
    message: str,
    headers: Sequence[tuple[str, str]] = (),
    **details: Any,
) -> Reply:
    return _json_reply(status, {"error": error, "message": message, **details}, headers)


MALFORMED_JSON = _error(400, "malformed_json", "the body is not valid UTF-8 JSON")
NESTED_TOO_DEEP = _error(
    400, "malformed_json", "the body's JSON is nested too deeply to be an event"
)
BAD_LENGTH = _error(400, "bad_content_length", "Content-Length is not a number")
UNAUTHORIZED = _error(
    401, "unauthorized", "the shared-secret header is missing or wrong"
)
ORIGIN_NOT_ALLOWED = _error(403, "origin_not_allowed", ORIGIN_MESSAGE)
ADVERTISER_NOT_ALLOWED = _error(
    403, "advertiser_not_allowed", ADVERTISER_MESSAGE, field="advertiser_id"
)
NOT_FOUND = _error(404, "not_found", "no such endpoint")
LENGTH_REQUIRED = _error(411, "length_required", "send a Content-Length header")
UNSUPPORTED_MEDIA_TYPE = _error(
    415,
    "unsupported_media_type",
    "send the body as application/json or text/plain",
)
UNAVAILABLE = _error(
    503,
    "unavailable",
    "the event could not be handled; try again later",
    [("Retry-After", str(QUEUE_FULL_RETRY_AFTER))],
)


def method_not_allowed(allowed: Iterable[str]) -> Reply:
    """405, naming the methods the path accepts."""
    return _error(
        405,
        "method_not_allowed",
        "this endpoint does not accept that method",
        [("Allow", ", ".join(allowed))],
    )


# --- options --------------------------------------------------------------------


def _env_list(name: str) -> list[str]:
    return [
        item.strip() for item in os.environ.get(name, "").split(",") if item.strip()
    ]


def _check_origins(origins: Iterable[str], allow_credentials: bool) -> tuple[str, ...]:
    checked: list[str] = []
    for origin in origins:
        if not isinstance(origin, str):
            raise ConfigurationError("allow_origins must hold strings")
        origin = origin.strip().lower()
        if origin != "*" and not _ORIGIN.fullmatch(origin):
            raise ConfigurationError(
                f"allow_origins: {origin!r} must be scheme://host[:port], "
                "with no path and no trailing slash (as browsers send Origin)"
            )
        checked.append(origin)
    if "*" in checked and allow_credentials:
        raise ConfigurationError(
            'allow_origins "*" cannot be combined with allow_credentials=True: '
            "list the origins that may send cookies"
        )

    return tuple(checked)


class CORSPolicy:
    """Which browser origins may call the endpoints, as Starlette decides it.

    The ASGI app hands `middleware_options()` to Starlette's
    `CORSMiddleware`; the WSGI app applies the same rules through
    `preflight()` and `response_headers()`, which mirror that middleware's
    answers (a refused preflight is a 400 naming what was refused; an
    actual response names an allowed origin and always varies on `Origin`).
    """

    def __init__(
        self,
        origins: Iterable[str],
        *,
        allow_credentials: bool = False,
        allow_headers: Iterable[str] = (),
    ) -> None:
        self.origins = _check_origins(origins, allow_credentials)
        self.allow_all = "*" in self.origins
        self.allow_credentials = allow_credentials
        self.extra_headers = tuple(allow_headers)
        listed = sorted(CORS_SAFELISTED_HEADERS | set(self.extra_headers))
        self._allow_headers_value = ", ".join(listed)
        self._allow_headers = frozenset(h.lower() for h in listed)
        self._allowed = frozenset(self.origins)
        self._preflight = self._preflight_headers()
        self._actual = self._actual_headers()

    def __repr__(self) -> str:
        return f"CORSPolicy(origins={list(self.origins)!r})"

    def middleware_options(self) -> dict[str, Any]:
        """Keyword arguments for Starlette's `CORSMiddleware`."""
        return {
            "allow_origins": self.origins,
            "allow_methods": CORS_METHODS,
            "allow_headers": self.extra_headers,
            "allow_credentials": self.allow_credentials,
            "expose_headers": CORS_EXPOSED_HEADERS,
            "max_age": CORS_MAX_AGE,
        }

    def is_allowed_origin(self, origin: str) -> bool:
        """Whether a browser page at `origin` may read the responses."""
        return self.allow_all or origin in self._allowed

    def is_allowed_poster(self, origin: str | None, host: str | None) -> bool:
        """Whether a POST carrying this `Origin` may be taken at all.

        CORS only stops a page from reading the answer: a page may post a
        `text/plain` body to any site without a preflight. So a request
        with an `Origin` is taken only from a listed origin (any, with
        `"*"`) or from a page of the endpoint's own host, as its `Host`
        header names it (the scheme is not compared, since a proxy in front
        may end TLS). `Origin: null` (sandboxed frames, local files) is
        refused unless `"*"` is configured. A request without `Origin`
        comes from a server or a tool, not a page, and is taken.
        """
        if origin is None or self.allow_all:
            return True
        origin = origin.strip().lower()
        if origin in self._allowed:
            return True
        _, separator, origin_host = origin.partition("://")
        if not separator or not host:
            return False

        return origin_host in _host_spellings(host.strip().lower())

    def preflight(
        self,
        origin: str,
        method: str,
        request_headers: str | None,
        private_network: str | None = None,
    ) -> Reply:
        """The answer to an `OPTIONS` preflight request."""
        headers = list(self._preflight)
        failures: list[str] = []
        if self.is_allowed_origin(origin):
            if not self.allow_all:
                headers.append(("Access-Control-Allow-Origin", origin))
        else:
            failures.append("origin")
        if method not in CORS_METHODS:
            failures.append("method")
        if request_headers is not None:
            requested = (h.strip().lower() for h in request_headers.split(","))
            if any(h not in self._allow_headers for h in requested):
                failures.append("headers")
        if private_network is not None:
            failures.append("private-network")

        if failures:
            text = "Disallowed CORS " + ", ".join(failures)
            return Reply(
                400, text.encode(), tuple(headers), "text/plain; charset=utf-8"
            )
        return Reply(200, b"OK", tuple(headers), "text/plain; charset=utf-8")

    def response_headers(self, origin: str | None) -> list[tuple[str, str]]:
        """The CORS headers of an actual (non-preflight) response."""
        if origin is None:
            # Starlette varies on Origin even then: a cache must not hand
            # this answer to a page whose request does carry one.
            return [("Vary", "Origin")]
        headers = list(self._actual)
        if not self.allow_all and origin in self._allowed:
            headers.append(("Access-Control-Allow-Origin", origin))
        headers.append(("Vary", "Origin"))
        return headers

    def _preflight_headers(self) -> list[tuple[str, str]]:
        headers = [
            (
                "Vary",
                "Origin, Access-Control-Request-Method, "
                "Access-Control-Request-Headers, "
                "Access-Control-Request-Private-Network",
            ),
            ("Access-Control-Allow-Methods", ", ".join(CORS_METHODS)),
            ("Access-Control-Max-Age", str(CORS_MAX_AGE)),
            ("Access-Control-Allow-Headers", self._allow_headers_value),
        ]
        # "*" never comes with credentials: the constructor refuses that.
        if self.allow_all:
            headers.append(("Access-Control-Allow-Origin", "*"))
        if self.allow_credentials:
            headers.append(("Access-Control-Allow-Credentials", "true"))
        return headers

    def _actual_headers(self) -> list[tuple[str, str]]:
        # As Starlette does: these go on every response to a request with an
        # Origin, allowed or not; only Access-Control-Allow-Origin tells the
        # browser whether the page may read the response.
        headers = []
        if self.allow_all:
            headers.append(("Access-Control-Allow-Origin", "*"))
        if self.allow_credentials:
            headers.append(("Access-Control-Allow-Credentials", "true"))
        headers.append(
            ("Access-Control-Expose-Headers", ", ".join(CORS_EXPOSED_HEADERS))
        )
        return headers


def _host_spellings(host: str) -> tuple[str, ...]:
    # Browsers leave a default port out of Origin; a Host header may not.
    for port in _DEFAULT_PORTS:
        if host.endswith(port):
            return host, host.removesuffix(port)
    return (host,)


class RateLimiter:
    """A token bucket per client IP address, in this process's memory.

    Each address may make `burst` requests at once, refilled at `rate` per
    second. Requests whose IP address is unknown share one bucket. At most
    `max_clients` addresses are remembered: idle full buckets are forgotten
    first, then the oldest, so a flood of distinct addresses costs bounded
    memory (and a forgotten address starts again with a full bucket).

    Limitation: every worker process keeps its own buckets, so the limit an
    address meets is `rate` times the number of processes.
    """

    def __init__(
        self,
        rate: float,
        burst: int = DEFAULT_RATE_LIMIT_BURST,
        *,
        max_clients: int = RATE_LIMIT_MAX_CLIENTS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not _is_number(rate) or rate <= 0:
            raise ConfigurationError("rate_limit must be a positive number per second")
        if not _is_whole(burst, 1):
            raise ConfigurationError("rate_limit_burst must be a whole number >= 1")
        self.rate = float(rate)
        self.burst = burst
        self.max_clients = max_clients
        self._clock = clock
        self._lock = threading.Lock()
        self._buckets: dict[str, list[float]] = {}

    def __repr__(self) -> str:
        return f"RateLimiter(rate={self.rate}, burst={self.burst})"

    def retry_after(self, key: str | None) -> int | None:
        """Take a request from `key`'s bucket: None if allowed, else seconds to wait."""
        key = key or ""
        with self._lock:
            now = self._clock()
            bucket = self._buckets.get(key)
            if bucket is None:
                if len(self._buckets) >= self.max_clients:
                    self._forget(now)
                self._buckets[key] = [self.burst - 1.0, now]
                return None
            tokens = min(self.burst, bucket[0] + (now - bucket[1]) * self.rate)
            bucket[1] = now
            if tokens >= 1.0:
                bucket[0] = tokens - 1.0
                return None
            bucket[0] = tokens

        return max(1, math.ceil((1.0 - tokens) / self.rate))

    def _forget(self, now: float) -> None:
        full = [
            key
            for key, (tokens, stamp) in self._buckets.items()
            if tokens + (now - stamp) * self.rate >= self.burst
        ]
        for key in full:
            del self._buckets[key]
        excess = len(self._buckets) - self.max_clients + max(1, self.max_clients // 10)
        for key in list(self._buckets)[: max(excess, 0)]:
            del self._buckets[key]


class BodyBuffer:
    """Collects a request body's chunks, refusing more than `limit` bytes."""

    __slots__ = ("_chunks", "limit", "size")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.size = 0
        self._chunks: list[bytes] = []

    def add(self, chunk: bytes) -> bool:
        """Keep `chunk`; False once the body is over the limit (then stop reading)."""
        self.size += len(chunk)
        if self.size > self.limit:
            return False
        self._chunks.append(chunk)
        return True

    def getvalue(self) -> bytes:
        """The body read so far."""
        return b"".join(self._chunks)


# --- the request path ------------------------------------------------------------


class ParsedEvents(NamedTuple):
    """The events of one accepted body, and the warnings met building them."""

    events: list[Event]
    warnings: list[dict[str, str]]


class _BodyError(Exception):
    def __init__(self, reply: Reply) -> None:
        self.reply = reply


def _join(base: str, path: str) -> str:
    return f"{base}.{path}" if base else path


def _invalid(errors: Iterable[FieldError]) -> Reply:
    return _error(
        422,
        "invalid_events",
        "some events are invalid; nothing was accepted",
        errors=[{"path": e.path, "message": e.message} for e in errors],
    )


def _shape_error(path: str, message: str) -> _BodyError:
    return _BodyError(_invalid([FieldError(path, message)]))


def _event_list(value: Any, path: str) -> list[tuple[str, Any]]:
    if not isinstance(value, list):
        raise _shape_error(path, "must be a list of events")
    if not 1 <= len(value) <= MAX_EVENTS_PER_REQUEST:
        raise _shape_error(path, f"must hold 1 to {MAX_EVENTS_PER_REQUEST} events")
    return [(f"{path}.{index}", item) for index, item in enumerate(value)]


def _unpack(body: Any) -> tuple[list[tuple[str, Any]], Any]:
    """The events of a body with their paths, and its advertiser_id (or None)."""
    if not isinstance(body, dict):
        raise _shape_error(
            "body",
            'must be a JSON object: an event, {"data": [...]} or '
            '{"advertiser_id": ..., "event_data": ...}',
        )
    if "data" in body:
        envelope = "data"
    elif "event_data" in body or "advertiser_id" in body:
        envelope = "event_data"
    else:
        return [("", body)], None

    unknown = sorted(body.keys() - _ENVELOPE_KEYS[envelope])
    if unknown:
        message = f"is not a field of a body with {envelope}"
        raise _BodyError(_invalid(FieldError(key, message) for key in unknown))
    if envelope not in body:
        raise _shape_error(envelope, "is required")
    value = body[envelope]
    if envelope == "event_data" and isinstance(value, dict):
        items = [("event_data", value)]
    else:
        items = _event_list(value, envelope)

    return items, body.get("advertiser_id")


class Ingest:
    """The endpoints' rules, configured once; see `pinterest_app` for the options.

    Raises:
        ConfigurationError: for any unusable option, at construction.
    """

    def __init__(
        self,
        client: Client | None,
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
    ) -> None:
        if not _is_client_or_none(client):
            raise ConfigurationError("client must be a pinterest_mw Client")
        if not _is_whole(max_body_size, 1):
            raise ConfigurationError(
                "max_body_size must be a whole number of bytes >= 1"
            )
        self.max_body_size = max_body_size
        self.too_large = _error(
            413,
            "body_too_large",
            f"the body is over {max_body_size} bytes",
            limit=max_body_size,
        )
        self.test_endpoint = _test_endpoint(test_endpoint)

        self.secret_header, self.secret = _check_secret(
            shared_secret, shared_secret_header
        )
        self.rate_limiter = (
            None if rate_limit is None else RateLimiter(rate_limit, rate_limit_burst)
        )
        self.trusted_proxies = TrustedProxies.from_option(trusted_proxies)
        secret_headers = [shared_secret_header] if self.secret is not None else []
        self.cors = _cors_policy(allow_origins, allow_credentials, secret_headers)
        # Resolved last, so that a bad option never builds the default client.
        self.client = client if client is not None else get_default_client()
        self.default_region = self.client.default_region

    def __repr__(self) -> str:
        return (
            f"Ingest(cors={self.cors!r}, max_body_size={self.max_body_size}, "
            f"secret={self.secret is not None}, rate_limiter={self.rate_limiter!r})"
        )

    # --- checks before the body is read ---

    def check_request(
        self,
        client_ip: str | None,
        secret: str | None,
        content_type: str | None,
        content_length: str | None,
        *,
        origin: str | None = None,
        host: str | None = None,
    ) -> Reply | None:
        """The refusal of a POST before its body is read, or None to go on.

        In order: the rate limit (429), the origin (403, see
        `CORSPolicy.is_allowed_poster`), the shared secret (401), the
        content type (415), the declared length (400 when not a number, 413
        when over the limit). A body without a declared length is checked
        while it is read.
        """
        if self.rate_limiter is not None:
            wait = self.rate_limiter.retry_after(client_ip)
            if wait is not None:
                return _error(
                    429,
                    "rate_limited",
                    "too many requests from this address",
                    [("Retry-After", str(wait))],
                )
        if not self.cors.is_allowed_poster(origin, host):
            return ORIGIN_NOT_ALLOWED
        if self.secret is not None and not _same_secret(secret, self.secret):
            return UNAUTHORIZED
        if content_type is None or not _is_accepted_media_type(content_type):
            return UNSUPPORTED_MEDIA_TYPE
        if not content_length:
            return None
        if not (content_length.isascii() and content_length.isdigit()):
            return BAD_LENGTH
        if int(content_length) > self.max_body_size:
            return self.too_large
        return None

    # --- the body ---

    def parse(self, body: bytes, context: RequestContext) -> ParsedEvents | Reply:
        """Read, check, enrich and validate the events of one body.

        Returns the events, or the refusal: 400 (not JSON), 403 (an
        `advertiser_id` this server does not serve) or 422 (every field at
        fault, with its path from the body).
        """
        try:
            document = _decode_json(body.decode("utf-8"))
        except ValueError:
            return MALFORMED_JSON
        except RecursionError:
            return NESTED_TOO_DEEP
        try:
            items, advertiser_id = _unpack(document)
        except _BodyError as exc:
            return exc.reply
        if advertiser_id is not None and not self._is_allowed(advertiser_id):
            return ADVERTISER_NOT_ALLOWED

        return self._build(items, context)

    def _is_allowed(self, advertiser_id: Any) -> bool:
        if isinstance(advertiser_id, bool) or not isinstance(advertiser_id, str | int):
            return False
        return self.client.is_allowed_advertiser(advertiser_id)

    def _build(
        self, items: list[tuple[str, Any]], context: RequestContext
    ) -> ParsedEvents | Reply:
        events: list[Event] = []
        warnings: list[dict[str, str]] = []
        errors: list[FieldError] = []
        for path, item in items:
            try:
                event = self._build_one(path, item, context)
            except EventValidationError as exc:
                errors.extend(exc.errors)
                continue
            events.append(event)
            warnings.extend(
                {"path": _join(path, w.path), "reason": w.reason}
                for w in event.warnings
            )

        if errors:
            return _invalid(errors)
        return ParsedEvents(events, warnings)

    def _build_one(self, path: str, item: Any, context: RequestContext) -> Event:
        if not isinstance(item, dict):
            raise EventValidationError(
                [FieldError(path or "body", "must be an object")]
            )
        user_data = item.get("user_data")
        if user_data is not None and not isinstance(user_data, dict):
            raise EventValidationError(
                [FieldError(_join(path, "user_data"), "must be an object")]
            )
        data = enrich_event_data(item, context, from_browser=True)
        # Posted from a page: a web conversion, unless the body says otherwise.
        data.setdefault("action_source", "web")

        return parse_event(data, default_region=self.default_region, path=path)

    # --- answers ---

    def accepted(self, parsed: ParsedEvents, stored: int) -> Reply:
        """202 when every event was queued; 503 naming those dropped otherwise.

        Events the queue took stay queued (they cannot be taken back): the
        503 body lists them under `event_ids` and the others under
        `dropped_event_ids`, so a caller resends only the dropped ones.
        """
        ids = [event.event_id for event in parsed.events]
        if stored >= len(ids):
            logger.debug("accepted %d events", stored)
            return _json_reply(
                202,
                {"accepted": stored, "event_ids": ids, "warnings": parsed.warnings},
            )
        logger.warning(QUEUE_FULL_LOG, stored, len(ids))
        return _error(
            503,
            "queue_full",
            "the delivery queue could not take them (full, or its storage failed);"
            " resend the dropped events later",
            [("Retry-After", str(QUEUE_FULL_RETRY_AFTER))],
            accepted=stored,
            event_ids=ids[:stored],
            dropped_event_ids=ids[stored:],
            warnings=parsed.warnings,
        )

    def test_results(self, parsed: ParsedEvents, result: SendResult) -> Reply:
        """Pinterest's per-event verdicts on a test send (502 if it failed).

        `sent_to_pinterest` says whether Pinterest answered at all (with its
        verdicts, or with an error status): False when the network failed
        before an answer came, and the message then says so.
        """
        reached = _reached_pinterest(result)
        content: dict[str, Any] = {
            "sent_to_pinterest": reached,
            "results": [
                {
                    "event_id": r.event_id,
                    "event_name": r.event_name,
                    "status": str(r.status),
                    "error_message": r.error_message,
                    "warning_message": r.warning_message,
                }
                for r in result.results
            ],
            "warnings": parsed.warnings,
        }
        if not result.errors:
            return _json_reply(200, content)
        content = {
            "error": "upstream_failed",
            "message": (
                "Pinterest did not answer for every event"
                if reached
                else UNREACHABLE_MESSAGE
            ),
            **content,
            "errors": [_describe(error) for error in result.errors],
        }
        return _json_reply(502, content)

    def local_results(self, parsed: ParsedEvents) -> Reply:
        """The test endpoint's answer when the client has no credentials."""
        return _json_reply(
            200,
            {
                "sent_to_pinterest": False,
                "message": NOT_SENT_MESSAGE,
                "results": [
                    {
                        "event_id": event.event_id,
                        "event_name": str(event.event_name),
                        "status": "valid",
                        "error_message": None,
                        "warning_message": None,
                    }
                    for event in parsed.events
                ],
                "warnings": parsed.warnings,
            },
        )

    def health(self, counters: Counters, problem: str | None = None) -> Reply:
        """Liveness and the dispatcher's counters: no personal data, no token.

        Always 200, since the app answers; `status` is `"degraded"`, with
        the `problem` said, while delivery is stalled (an outbox that cannot
        be read or written, Pinterest refusing the token or ad account).
        """
        content: dict[str, Any] = {
            "status": "ok" if problem is None else "degraded",
            "sending": self.client.is_sending,
            "counters": counters.as_dict(),
        }
        if problem is not None:
            content["problem"] = problem

        return _json_reply(200, content)

    def failure(self, exc: BaseException) -> Reply:
        """503 for a failure of our own code, logged with its type and place only."""
        frames = traceback.extract_tb(exc.__traceback__)
        place = f"{frames[-1].filename}:{frames[-1].lineno}" if frames else "?"
        logger.error(FAILURE_LOG, type(exc).__name__, place)
        return UNAVAILABLE


def _is_number(value: object) -> bool:
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
    )


def _is_whole(value: object, minimum: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


def _is_client_or_none(value: object) -> bool:
    return value is None or isinstance(value, Client)


def _is_accepted_media_type(value: str) -> bool:
    return value.partition(";")[0].strip().lower() in ACCEPTED_MEDIA_TYPES


def _same_secret(given: str | None, expected: bytes) -> bool:
    if given is None:
        return False
    # Both servers hand header values over decoded as Latin-1: this is the
    # header's bytes as sent.
    return hmac.compare_digest(given.encode("latin-1"), expected)


def _check_secret(secret: object, header: object) -> tuple[str, bytes | None]:
    if not isinstance(header, str) or not _HEADER_NAME.fullmatch(header):
        raise ConfigurationError("shared_secret_header must be a valid header name")
    if secret is None:
        secret = os.environ.get(ENV_SHARED_SECRET) or None
    if secret is None:
        return header.lower(), None
    if not isinstance(secret, str) or not _SECRET_TEXT.fullmatch(secret):
        raise ConfigurationError("shared_secret must be printable ASCII without spaces")
    return header.lower(), secret.encode("ascii")


def _cors_policy(
    allow_origins: Iterable[str] | None,
    allow_credentials: bool,
    allow_headers: list[str],
) -> CORSPolicy:
    origins = _env_list(ENV_ALLOW_ORIGINS) if allow_origins is None else allow_origins
    if isinstance(origins, str):
        raise ConfigurationError("allow_origins must be a list of origins")

    return CORSPolicy(
        origins, allow_credentials=allow_credentials, allow_headers=allow_headers
    )


def _test_endpoint(value: object) -> bool:
    if value is not None:
        if not isinstance(value, bool):
            raise ConfigurationError("test_endpoint must be True or False")
        return value
    return env_flag(ENV_TEST_ENDPOINT)


def _reached_pinterest(result: SendResult) -> bool:
    """Whether Pinterest answered any request of a send, even with an error."""
    answered = any(r.status is not EventStatus.NOT_SENT for r in result.results)
    return answered or any(isinstance(e, APIError) for e in result.errors)


def _describe(error: ConversionsError) -> dict[str, Any]:
    if isinstance(error, APIError):
        return {
            "status_code": error.status_code,
            "code": error.code,
            "message": error.message,
        }
    return {
        "status_code": None,
        "code": None,
        "message": "Pinterest could not be reached",
    }
