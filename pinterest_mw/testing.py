"""A fake of Pinterest's events endpoint, for our tests and for yours.

`FakePinterestAPI` answers `POST /v5/ad_accounts/{id}/events` the way the
Conversions API does: it checks the bearer token, the ad account, the shape
of the body and every event, then answers 200 with one result per event, 422
with the results under `details` when any event failed, or 400/401/403 with
Pinterest's error bodies. It records what it received so that tests can
assert on it, and it can be told to fail: rate limits with `Retry-After`,
server errors and timeouts, for the next requests or for a random share of
them.

There are two ways to put it in front of a transport:

- In-process, through pytest-httpx: add `pytest_plugins =
  ["pinterest_mw.testing"]` to a `conftest.py` and ask for the
  `fake_pinterest` fixture. Every request made with httpx in that test is
  answered by the fake, whatever the host.
- Over a socket: `fake.app` is an ASGI application, and `serve_fake_api()`
  runs it with uvicorn on 127.0.0.1 in a background thread and yields its
  base URL (point `api_url` or `PINTEREST_API_URL` at it).

The fake is thread-safe: uvicorn may serve it from one thread while a test
asserts from another. Importing this module needs neither pytest nor
uvicorn; the fixture exists only where pytest is installed, and
`serve_fake_api()` imports uvicorn when called.

Privacy: the recorded requests keep every header except `Authorization`,
and the bodies as sent, which hold only what the client sent (hashed user
data, plain IP and user agent). Keep them in test processes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hmac
import importlib.util
import json
import math
import random
import re
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Container, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import TYPE_CHECKING, Any

import anyio
import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

if TYPE_CHECKING:
    from pytest_httpx import HTTPXMock

__all__ = [
    "FAKE_ACCESS_TOKEN",
    "FAKE_AD_ACCOUNT_ID",
    "FakePinterestAPI",
    "RecordedRequest",
    "serve_fake_api",
]

FAKE_ACCESS_TOKEN = "pina_fake-conversions-token"  # noqa: S105 - fixed fake, not a secret
"""The access token a `FakePinterestAPI` accepts unless told otherwise."""

FAKE_AD_ACCOUNT_ID = "549755813888"
"""The ad account a `FakePinterestAPI` serves unless told otherwise."""

_MAX_EVENTS_PER_REQUEST = 1000
_INT64 = (-(2**63), 2**63 - 1)
_MAX_EVENT_AGE = 7 * 24 * 3600
_MAX_EVENT_LEAD = 5 * 60

_EVENTS_PATH = re.compile(r"/v5/ad_accounts/(?P<account>[^/]+)/events/?")
_AD_ACCOUNT_ID = re.compile(r"[0-9]{1,18}")
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
_EVENT_NAME = re.compile(r"[A-Za-z_]+")
# A decimal number, signed or not, with or without an exponent: what a
# decimal string holds. Nothing float() takes beyond it: no "1_000", no
# surrounding spaces, no "inf", "nan" or hexadecimal. Written out here, as
# all of Pinterest's rules in this module are, rather than imported from
# the event model: the fake checks the model, so a mistake they shared
# would pass unseen.
_DECIMAL = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_ALL_METHODS = ["DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT"]

# Pinterest's documented error codes and messages (its OpenAPI description).
_ERRORS: dict[int, tuple[int, str]] = {
    400: (4196, "The request was invalid."),
    401: (2, "Authentication failed."),
    403: (29, "You are not permitted to access that resource."),
    404: (404, "Resource not found."),
    405: (405, "Method not allowed."),
    422: (
        953,
        "The action could not be processed properly due to some or all data "
        "provided being invalid.",
    ),
    429: (
        8,
        "This request exceeded a rate limit. This can happen if the client "
        "exceeds one of the published rate limits within a short time window.",
    ),
    500: (1, "An unexpected error occurred."),
    503: (
        4197,
        "The endpoint has been ramped down and is currently not accepting any traffic.",
    ),
    504: (504, "The request timed out."),
}

_STANDARD_EVENT_NAMES = frozenset(
    {
        "add_payment_info",
        "add_to_cart",
        "add_to_wishlist",
        "app_install",
        "app_open",
        "checkout",
        "contact",
        "custom",
        "customize_product",
        "find_location",
        "initiate_checkout",
        "lead",
        "page_visit",
        "schedule",
        "search",
        "signup",
        "start_trial",
        "submit_application",
        "subscribe",
        "view_category",
        "view_content",
        "watch_video",
    }
)
_ACTION_SOURCES = frozenset({"app_android", "app_ios", "offline", "web"})

_HASHED_FIELDS = frozenset(
    {"em", "ph", "fn", "ln", "ge", "db", "ct", "st", "zp", "country"}
    | {"external_id", "hashed_maids"}
)
_PLAIN_USER_FIELDS = frozenset(
    {"client_ip_address", "client_user_agent", "click_id", "partner_id"}
)

# Field kinds of Pinterest's schema: "str", "str?" (nullable), "int", "bool",
# "[str]" (array of strings), or the name of a nested object below.
_EVENT_FIELDS: dict[str, str] = {
    "event_name": "str",
    "action_source": "str",
    "event_time": "int",
    "event_id": "str",
    "user_data": "user_data",
    "custom_data": "custom_data",
    "event_source_url": "str?",
    "opt_out": "bool",
    "partner_name": "str?",
    "app_id": "str?",
    "app_name": "str?",
    "app_version": "str?",
    "app_info": "app_info",
    "device_brand": "str?",
    "device_carrier": "str?",
    "device_model": "str?",
    "device_type": "str?",
    "os_version": "str?",
    "device_info": "device_info",
    "wifi": "bool",
    "language": "str?",
}
_REQUIRED_EVENT_FIELDS = (
    "event_name",
    "action_source",
    "event_time",
    "user_data",
    "event_id",
)
_CUSTOM_DATA_FIELDS: dict[str, str] = {
    "currency": "str?",
    "value": "str?",
    "content_ids": "[str]",
    "contents": "contents",
    "num_items": "int",
    "order_id": "str?",
    "search_string": "str?",
    "opt_out_type": "str?",
    "np": "str?",
    "content_name": "str?",
    "content_category": "str?",
    "content_brand": "str?",
    "external_measurement_id": "str?",
    "external_measurement_vendor_id": "int?",
    "predicted_ltv": "str?",
}
_CONTENT_FIELDS: dict[str, str] = {
    "id": "str",
    "item_price": "str",
    "quantity": "int",
    "item_name": "str",
    "item_category": "str",
    "item_brand": "str",
}
_APP_INFO_FIELDS: dict[str, str] = {
    "app_id": "str",
    "app_name": "str",
    "app_package_name": "str",
    "app_store": "str",
    "app_version": "str",
    "install_time": "int",
    "user_agent": "str",
    "window_height": "int",
    "window_width": "int",
}
_DEVICE_INFO_FIELDS: dict[str, str] = {
    "battery_level": "int",
    "brand": "str",
    "carrier": "str",
    "cpu_cores": "int",
    "external_storage_free_space": "int",
    "external_storage_size": "int",
    "form_factor": "str",
    "kernel_version": "str",
    "languages": "[str]",
    "locale": "str",
    "model": "str",
    "network_type": "str",
    "os_family": "str",
    "os_name": "str",
    "os_release_name": "str",
    "os_version": "str",
    "screen_density": "int",
    "screen_height": "int",
    "screen_width": "int",
    "storage_free_space": "int",
    "storage_size": "int",
    "timezone": "str",
    "timezone_abbr": "str",
    "type": "str",
}
_OBJECT_FIELDS: dict[str, dict[str, str]] = {
    "custom_data": _CUSTOM_DATA_FIELDS,
    "app_info": _APP_INFO_FIELDS,
    "device_info": _DEVICE_INFO_FIELDS,
}

# Bounds as Pinterest's OpenAPI description declares them: maxLength for
# strings, (minimum, maximum) for integers (None where it names none; the
# `int64` format bounds both ends), allowed values for enums.
_MAX_LENGTHS: dict[str, int] = {
    "app_info.app_id": 200,
    "app_info.app_name": 200,
    "app_info.app_package_name": 200,
    "app_info.app_store": 100,
    "app_info.app_version": 100,
    "app_info.user_agent": 16384,
    "device_info.brand": 100,
    "device_info.carrier": 100,
    "device_info.kernel_version": 100,
    "device_info.locale": 35,
    "device_info.model": 100,
    "device_info.os_name": 100,
    "device_info.os_release_name": 100,
    "device_info.os_version": 100,
    "device_info.timezone": 40,
    "device_info.timezone_abbr": 5,
    "device_info.type": 100,
}
_SCREEN = (0, 30720)
_STORAGE = (0, 1048576)
_RANGES: dict[str, tuple[int | None, int | None]] = {
    "event_time": _INT64,
    "custom_data.num_items": _INT64,
    "contents.quantity": _INT64,
    "app_info.install_time": (0, None),
    "app_info.window_height": _SCREEN,
    "app_info.window_width": _SCREEN,
    "device_info.battery_level": (0, 100),
    "device_info.cpu_cores": (0, 1152),
    "device_info.external_storage_free_space": _STORAGE,
    "device_info.external_storage_size": _STORAGE,
    "device_info.screen_density": (0, 100000),
    "device_info.screen_height": _SCREEN,
    "device_info.screen_width": _SCREEN,
    "device_info.storage_free_space": _STORAGE,
    "device_info.storage_size": _STORAGE,
}
_ENUMS: dict[str, frozenset[str]] = {
    "device_info.form_factor": frozenset(
        {"desktop", "laptop", "cellphone", "tablet", "smartwatch", "tv"}
        | {"vr", "console", "other"}
    ),
    "device_info.network_type": frozenset(
        {"wifi", "ethernet", "unknown"} | {f"cellular_{n}g" for n in range(2, 7)}
    ),
    "device_info.os_family": frozenset(
        {"ios", "android", "macos", "windows", "linux", "bsd", "other"}
    ),
}


@dataclass(frozen=True, slots=True, repr=False)
class RecordedRequest:
    """One request the fake received, as it arrived.

    `headers` has lower-case names and never holds `Authorization`;
    `status_code` is what the fake answered, or None when it played a
    timeout that nobody saw answered: through pytest-httpx, or over a
    socket when the client hung up before `timeout_delay` ran out (after
    it, the fake answers and records 504).

    Privacy: the body holds hashed user data, IP addresses and user agents,
    so `repr` shows its size only, and the header names without values.
    """

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes
    status_code: int | None

    def __repr__(self) -> str:
        return (
            f"RecordedRequest(method={self.method!r}, path={self.path!r}, "
            f"query={self.query!r}, headers={sorted(self.headers)!r}, "
            f"body=<{len(self.body)} bytes>, status_code={self.status_code!r})"
        )

    @property
    def is_test(self) -> bool:
        """Whether the request carried `?test=true`."""
        return self.query.get("test", "").lower() == "true"

    def json(self) -> Any:
        """Parse the body as JSON (raises ValueError when it is not JSON)."""
        return json.loads(self.body)

    def event_ids(self) -> list[str]:
        """The `event_id` of every event in the body, in order."""
        return [event["event_id"] for event in self.json()["data"]]


@dataclass(frozen=True, slots=True)
class _Fault:
    """A scripted failure: an error status, or a timeout when status is None."""

    status: int | None
    retry_after: str | None = None
    code: int | None = None
    message: str | None = None


@dataclass(slots=True)
class _Answer:
    status: int | None
    body: dict[str, Any] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)

    def content(self) -> bytes:
        return json.dumps(self.body, separators=(",", ":")).encode()


class _BadRequest(Exception):
    """The body breaks Pinterest's schema: the whole request is answered 400."""


class FakePinterestAPI:
    """A stand-in for Pinterest's events endpoint that checks what Pinterest checks.

    What it answers, in order:

    - 404 for any other path, 405 for any other method;
    - a scripted failure, if one is due (see `fail_next`, `timeout_next`,
      `fail_randomly`, `timeout_randomly`);
    - 401 (code 2) without the expected bearer token, 403 (code 29) for
      another ad account;
    - 400 (code 4196) when the body breaks Pinterest's schema: not a JSON
      object, `data` missing or not 1 to 1000 events, a required field
      missing, a value of the wrong type or out of its bounds, a key the
      schema does not know (except in `user_data`), a hashed field that is
      not an array of strings, or `user_data` without `em`, `hashed_maids`
      or both `client_ip_address` and `client_user_agent`;
    - otherwise 200 with one result per event, or 422 (code 953) with the
      results under `details` when any event failed. An event fails when a
      hashed value is not 64 lowercase hex characters, `event_time` is over
      seven days old or more than five minutes ahead, `action_source` is
      unknown, `event_name` is not letters and underscores, or a money
      amount is not a decimal number. An event name outside Pinterest's
      list, or an unknown `user_data` key, is processed with a warning.
      Messages are `""` when there is nothing to say, as Pinterest sends
      them.

    Events processed outside test mode are kept in `events`, those sent
    with `?test=true` in `test_events` (Pinterest validates test requests
    alike but does not record them).

    Args:
        access_token: the bearer token to accept.
        ad_account_id: the ad account to serve.
        seed: seeds the generator behind `fail_randomly`/`timeout_randomly`.
        latency: seconds added before every answer. Through pytest-httpx
            this blocks the calling thread, event loop included.
        timeout_delay: how long a scripted timeout holds the request when
            served over a socket: set it above the client's timeout. It then
            answers 504 if the client is still waiting. Through pytest-httpx
            a timeout raises `httpx.ReadTimeout` at once.
        partial_failure_status: the status for an answer with failed events;
            422 as Pinterest documents it, or 200 to test a client against a
            success status that still lists failures.
        clock: the time in Unix seconds, for the `event_time` window and
            the `Date` header of every answer.

    `app` is the same fake as an ASGI application (Starlette).
    """

    def __init__(
        self,
        access_token: str = FAKE_ACCESS_TOKEN,
        ad_account_id: str = FAKE_AD_ACCOUNT_ID,
        *,
        seed: int | None = 0,
        latency: float = 0.0,
        timeout_delay: float = 30.0,
        partial_failure_status: int = 422,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.access_token = access_token
        self.ad_account_id = ad_account_id
        self.latency = latency
        self.timeout_delay = timeout_delay
        self.partial_failure_status = partial_failure_status
        self._clock = clock
        self._random = random.Random(seed)  # noqa: S311 - test faults, not secrets
        self._lock = threading.Lock()
        self._scripted: deque[_Fault] = deque()
        self._random_faults: list[tuple[float, _Fault]] = []
        self._requests: list[RecordedRequest] = []
        self._events: list[dict[str, Any]] = []
        self._test_events: list[dict[str, Any]] = []
        self.app = Starlette(
            routes=[Route("/{path:path}", self._endpoint, methods=_ALL_METHODS)]
        )

    def __repr__(self) -> str:
        return (
            f"FakePinterestAPI(ad_account_id={self.ad_account_id!r}, "
            f"requests={len(self._requests)}, events={len(self._events)})"
        )

    @property
    def requests(self) -> list[RecordedRequest]:
        """Every request received so far, oldest first (a copy)."""
        with self._lock:
            return list(self._requests)

    @property
    def events(self) -> list[dict[str, Any]]:
        """Every event processed outside test mode, as parsed JSON (a copy)."""
        with self._lock:
            return list(self._events)

    @property
    def test_events(self) -> list[dict[str, Any]]:
        """Every event processed in a `?test=true` request (a copy)."""
        with self._lock:
            return list(self._test_events)

    def reset(self) -> None:
        """Forget recorded requests and events and every scripted failure."""
        with self._lock:
            self._requests.clear()
            self._events.clear()
            self._test_events.clear()
            self._scripted.clear()
            self._random_faults.clear()

    def fail_next(
        self,
        n: int = 1,
        *,
        status: int = 429,
        retry_after: float | str | datetime | None = None,
        code: int | None = None,
        message: str | None = None,
    ) -> None:
        """Answer the next `n` requests with `status` and Pinterest's error body.

        The status is 429 (rate limited) unless told otherwise.
        `retry_after` becomes a `Retry-After` header: a number of seconds, a
        datetime (sent as an HTTP date, in GMT; a naive one is taken as
        UTC) or a string sent as it is. `code` and `message` replace
        Pinterest's usual ones for that status.
        """
        fault = _Fault(status, _retry_after_header(retry_after), code, message)
        with self._lock:
            self._scripted.extend([fault] * n)

    def timeout_next(self, n: int = 1) -> None:
        """Let the next `n` requests time out (see `timeout_delay`)."""
        with self._lock:
            self._scripted.extend([_Fault(None)] * n)

    def fail_randomly(
        self,
        fraction: float,
        *,
        status: int = 429,
        retry_after: float | str | datetime | None = None,
    ) -> None:
        """Answer about `fraction` of all later requests with `status` (429).

        The draw comes from the generator seeded at construction, so a run
        with the same seed and the same requests fails the same ones.
        Requests already scripted with `fail_next` go first.
        """
        self._add_random_fault(
            fraction, _Fault(status, _retry_after_header(retry_after))
        )

    def timeout_randomly(self, fraction: float) -> None:
        """Let about `fraction` of all later requests time out."""
        self._add_random_fault(fraction, _Fault(None))

    def handle(self, request: httpx.Request) -> httpx.Response:
        """Answer one httpx request: the callback for pytest-httpx.

        A scripted timeout raises `httpx.ReadTimeout` instead of answering.
        """
        body = request.read()
        answer, _ = self._answer(
            request.method,
            request.url.path,
            dict(request.url.params),
            dict(request.headers),
            body,
        )
        if self.latency > 0:
            time.sleep(self.latency)
        if answer.status is None:
            raise httpx.ReadTimeout("the fake Pinterest API timed out", request=request)

        return httpx.Response(
            answer.status,
            content=answer.content(),
            headers={"content-type": "application/json", **answer.headers},
        )

    async def _endpoint(self, request: Request) -> Response:
        body = await request.body()
        answer, record = self._answer(
            request.method,
            request.url.path,
            dict(request.query_params),
            dict(request.headers),
            body,
        )
        if self.latency > 0:
            await anyio.sleep(self.latency)
        if answer.status is None:
            hung_up = await _hold_until_disconnect(request, self.timeout_delay)
            answer = _error_answer(504)
            if not hung_up:
                self._record_late_status(record, 504)

        return Response(
            answer.content(),
            status_code=answer.status or 504,
            headers=answer.headers,
            media_type="application/json",
        )

    def _record_late_status(self, record: RecordedRequest, status: int) -> None:
        """Record the status of a request answered after a scripted timeout."""
        with self._lock:
            for index in range(len(self._requests) - 1, -1, -1):
                if self._requests[index] is record:
                    self._requests[index] = dataclasses.replace(
                        record, status_code=status
                    )
                    return

    def _add_random_fault(self, fraction: float, fault: _Fault) -> None:
        if not 0.0 <= fraction <= 1.0:
            raise ValueError("fraction must be between 0 and 1")
        with self._lock:
            self._random_faults.append((fraction, fault))

    def _answer(
        self,
        method: str,
        path: str,
        query: dict[str, str],
        headers: dict[str, str],
        body: bytes,
    ) -> tuple[_Answer, RecordedRequest]:
        headers = {name.lower(): value for name, value in headers.items()}
        authorization = headers.pop("authorization", "")
        with self._lock:
            answer = self._route(method, path, query, headers, authorization, body)
            answer.headers["date"] = _http_date(self._clock())
            record = RecordedRequest(method, path, query, headers, body, answer.status)
            self._requests.append(record)

        return answer, record

    def _route(
        self,
        method: str,
        path: str,
        query: dict[str, str],
        headers: dict[str, str],
        authorization: str,
        body: bytes,
    ) -> _Answer:
        match = _EVENTS_PATH.fullmatch(path)
        if match is None:
            return _error_answer(404)
        if method != "POST":
            return _error_answer(405)

        fault = self._next_fault()
        if fault is not None:
            return _fault_answer(fault)
        if not self._is_authorized(authorization):
            return _error_answer(401)
        account = match["account"]
        if _AD_ACCOUNT_ID.fullmatch(account) is None:
            return _error_answer(400, "Invalid request: 'ad_account_id' must be digits")
        if account != self.ad_account_id:
            return _error_answer(403)

        try:
            is_test = _parse_test_flag(query)
            events = _parse_body(headers, body)
        except _BadRequest as exc:
            return _error_answer(400, f"Invalid request: {exc}")

        return self._judge(events, is_test)

    def _next_fault(self) -> _Fault | None:
        if self._scripted:
            return self._scripted.popleft()
        if not self._random_faults:
            return None

        draw = self._random.random()
        for fraction, fault in self._random_faults:
            if draw < fraction:
                return fault
            draw -= fraction

        return None

    def _is_authorized(self, authorization: str) -> bool:
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer":
            return False

        return hmac.compare_digest(token.strip().encode(), self.access_token.encode())

    def _judge(self, events: list[dict[str, Any]], is_test: bool) -> _Answer:
        now = self._clock()
        results = [_judge_event(event, now) for event in events]
        accepted = [
            event
            for event, result in zip(events, results, strict=True)
            if result["status"] == "processed"
        ]
        (self._test_events if is_test else self._events).extend(accepted)

        summary = {
            "num_events_received": len(events),
            "num_events_processed": len(accepted),
            "events": results,
        }
        if len(accepted) == len(events):
            return _Answer(200, summary)
        if self.partial_failure_status == 200:
            return _Answer(200, summary)
        answer = _error_answer(self.partial_failure_status)
        answer.body["details"] = summary

        return answer


def _retry_after_header(value: float | str | datetime | None) -> str | None:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, datetime):
        # An HTTP date is in GMT; a naive datetime is taken as UTC already.
        moment = value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)
        return format_datetime(moment, usegmt=True)
    if float(value).is_integer():
        return str(int(value))

    return str(value)


def _http_date(timestamp: float) -> str:
    return format_datetime(datetime.fromtimestamp(timestamp, UTC), usegmt=True)


def _error_answer(status: int, message: str | None = None) -> _Answer:
    code, default_message = _ERRORS.get(status, (status, "Unexpected error."))
    return _Answer(status, {"code": code, "message": message or default_message})


def _fault_answer(fault: _Fault) -> _Answer:
    if fault.status is None:
        return _Answer(None)

    answer = _error_answer(fault.status, fault.message)
    if fault.code is not None:
        answer.body["code"] = fault.code
    if fault.retry_after is not None:
        answer.headers["retry-after"] = fault.retry_after

    return answer


async def _hold_until_disconnect(request: Request, delay: float) -> bool:
    """Sleep `delay` seconds, or less if the client hangs up first.

    Returns whether it hung up. Returning early matters: uvicorn waits for
    running requests when it shuts down, so a fake still sleeping for a gone
    client would hold up the end of a test.
    """
    with anyio.move_on_after(delay):
        while (await request.receive())["type"] != "http.disconnect":
            pass
        return True

    return False


def _parse_test_flag(query: Mapping[str, str]) -> bool:
    value = query.get("test")
    if value is None:
        return False
    if value.lower() not in ("true", "false"):
        raise _BadRequest("'test' is not of type 'boolean'")

    return value.lower() == "true"


def _parse_body(headers: Mapping[str, str], body: bytes) -> list[dict[str, Any]]:
    content_type = headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "application/json":
        raise _BadRequest("the body must be sent as application/json")
    try:
        document = json.loads(body)
    except ValueError:
        raise _BadRequest("the body is not valid JSON") from None
    if not isinstance(document, dict):
        raise _BadRequest("the body is not of type 'object'")

    _check_keys(document, {"data"})
    if "data" not in document:
        raise _BadRequest("'data' is a required property")
    data = document["data"]
    if not isinstance(data, list):
        raise _BadRequest("'data' is not of type 'array'")
    if not 1 <= len(data) <= _MAX_EVENTS_PER_REQUEST:
        raise _BadRequest(
            f"'data' must hold 1 to {_MAX_EVENTS_PER_REQUEST} events, not {len(data)}"
        )
    for index, event in enumerate(data):
        _check_event(event, f"data.{index}")

    return data


def _check_keys(obj: Mapping[str, Any], allowed: Container[str]) -> None:
    for key in obj:
        if key not in allowed:
            raise _BadRequest(
                f"Additional properties are not allowed ({key!r} was unexpected)"
            )


def _check_event(event: Any, path: str) -> None:
    if not isinstance(event, dict):
        raise _BadRequest(f"{path} is not of type 'object'")
    _check_keys(event, _EVENT_FIELDS)
    for name in _REQUIRED_EVENT_FIELDS:
        if name not in event:
            raise _BadRequest(f"{name!r} is a required property at {path}")
    for name, value in event.items():
        _check_value(value, _EVENT_FIELDS[name], f"{path}.{name}", name)


def _check_value(value: Any, kind: str, path: str, schema_path: str) -> None:
    if kind == "user_data":
        _check_user_data(value, path)
    elif kind == "contents":
        _check_contents(value, path)
    elif kind in _OBJECT_FIELDS:
        _check_object(value, _OBJECT_FIELDS[kind], path, schema_path)
    else:
        _check_type(value, kind, path)
        _check_bounds(value, path, schema_path)


def _check_type(value: Any, kind: str, path: str) -> None:
    if value is None and kind.endswith("?"):
        return
    base = kind.rstrip("?")
    if base == "str":
        valid = isinstance(value, str)
    elif base == "int":
        valid = isinstance(value, int) and not isinstance(value, bool)
    elif base == "bool":
        valid = isinstance(value, bool)
    else:
        valid = isinstance(value, list) and all(isinstance(v, str) for v in value)
    if not valid:
        names = {"str": "string", "int": "integer", "bool": "boolean", "[str]": "array"}
        raise _BadRequest(f"{path} is not of type {names[base]!r}")


def _check_bounds(value: Any, path: str, schema_path: str) -> None:
    if schema_path in _MAX_LENGTHS and len(value) > _MAX_LENGTHS[schema_path]:
        raise _BadRequest(f"{path} is too long")
    if schema_path in _RANGES:
        low, high = _RANGES[schema_path]
        if low is not None and value < low:
            raise _BadRequest(f"{path} is less than the minimum of {low}")
        if high is not None and value > high:
            raise _BadRequest(f"{path} is greater than the maximum of {high}")
    if schema_path in _ENUMS and value not in _ENUMS[schema_path]:
        raise _BadRequest(f"{path} is not one of the allowed values")
    if schema_path == "device_info.languages" and len(value) > 100:
        raise _BadRequest(f"{path} is too long")


def _check_object(
    value: Any, fields: dict[str, str], path: str, schema_path: str
) -> None:
    if not isinstance(value, dict):
        raise _BadRequest(f"{path} is not of type 'object'")
    _check_keys(value, fields)
    for name, item in value.items():
        _check_value(item, fields[name], f"{path}.{name}", f"{schema_path}.{name}")


def _check_contents(value: Any, path: str) -> None:
    if not isinstance(value, list):
        raise _BadRequest(f"{path} is not of type 'array'")
    for index, item in enumerate(value):
        _check_object(item, _CONTENT_FIELDS, f"{path}.{index}", "contents")


def _check_user_data(value: Any, path: str) -> None:
    if not isinstance(value, dict):
        raise _BadRequest(f"{path} is not of type 'object'")
    for name, item in value.items():
        if name in _HASHED_FIELDS:
            _check_type(item, "[str]", f"{path}.{name}")
        elif name in _PLAIN_USER_FIELDS:
            kind = "str" if name.startswith("client_") else "str?"
            _check_type(item, kind, f"{path}.{name}")
    if not _has_match_keys(value):
        raise _BadRequest(
            f"{path} must hold em, hashed_maids, or both client_ip_address "
            "and client_user_agent"
        )


def _has_match_keys(user_data: Mapping[str, Any]) -> bool:
    return (
        "em" in user_data
        or "hashed_maids" in user_data
        or ("client_ip_address" in user_data and "client_user_agent" in user_data)
    )


def _judge_event(event: Mapping[str, Any], now: float) -> dict[str, str]:
    """Pinterest's per-event verdict on an event that passed the schema."""
    errors = _event_errors(event, now)
    if errors:
        return {"status": "failed", "error_message": errors[0], "warning_message": ""}

    return {
        "status": "processed",
        "error_message": "",
        "warning_message": "; ".join(_event_warnings(event)),
    }


def _event_errors(event: Mapping[str, Any], now: float) -> list[str]:
    errors = []
    if _EVENT_NAME.fullmatch(event["event_name"]) is None:
        errors.append("Invalid event_name parameter.")
    if event["action_source"] not in _ACTION_SOURCES:
        errors.append("Invalid action_source parameter.")
    if event["event_time"] < now - _MAX_EVENT_AGE:
        errors.append(
            "Invalid event_timestamp parameter. Given timestamp is in the past."
        )
    elif event["event_time"] > now + _MAX_EVENT_LEAD:
        errors.append(
            "Invalid event_timestamp parameter. Given timestamp is in the future."
        )
    for name, values in event["user_data"].items():
        if name in _HASHED_FIELDS and not all(_SHA256_HEX.fullmatch(v) for v in values):
            errors.append(
                f"Invalid user_data.{name} parameter: values must be SHA-256 "
                "hashes in lowercase hexadecimal."
            )
    errors.extend(_money_errors(event.get("custom_data") or {}))

    return errors


def _money_errors(custom_data: Mapping[str, Any]) -> list[str]:
    amounts = [
        ("custom_data.value", custom_data.get("value")),
        ("custom_data.predicted_ltv", custom_data.get("predicted_ltv")),
    ]
    for index, item in enumerate(custom_data.get("contents") or []):
        amounts.append(
            (f"custom_data.contents.{index}.item_price", item.get("item_price"))
        )

    return [
        f"Invalid {name} parameter: not a decimal number."
        for name, amount in amounts
        if amount is not None and not _is_decimal(amount)
    ]


def _is_decimal(text: str) -> bool:
    """Whether `text` is a finite decimal number, such as `19.99` or `2e3`."""
    return _DECIMAL.fullmatch(text) is not None and math.isfinite(float(text))


def _event_warnings(event: Mapping[str, Any]) -> list[str]:
    warnings = []
    if event["event_name"] not in _STANDARD_EVENT_NAMES:
        warnings.append("event_name is not a standard event name.")
    unknown = sorted(
        name
        for name in event["user_data"]
        if name not in _HASHED_FIELDS and name not in _PLAIN_USER_FIELDS
    )
    if unknown:
        warnings.append(f"Unknown user_data fields ignored: {', '.join(unknown)}.")

    return warnings


@contextlib.contextmanager
def serve_fake_api(
    fake: FakePinterestAPI | None = None,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    startup_timeout: float = 10.0,
) -> Iterator[str]:
    """Serve `fake` with uvicorn in a background thread; yield its base URL.

    Port 0 picks a free port. The server is up when the block starts and
    stopped (and its thread joined) when it ends. The base URL, such as
    `http://127.0.0.1:54321`, is what `api_url` or `PINTEREST_API_URL`
    expects. Needs uvicorn (`pip install 'pinterest-mw[cli]'`).
    """
    try:
        import uvicorn
    except ImportError as exc:  # pragma: no cover - uvicorn is in the dev group
        raise ImportError(
            "serve_fake_api needs uvicorn: pip install 'pinterest-mw[cli]'"
        ) from exc

    fake = fake if fake is not None else FakePinterestAPI()
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.bind((host, port))
    bound_port = sock.getsockname()[1]
    # log_config=None keeps uvicorn from reconfiguring the test process's
    # logging; the fake sends its own Date header (from its clock); the short
    # graceful timeout bounds shutdown if a request hangs.
    config = uvicorn.Config(
        fake.app,
        log_config=None,
        access_log=False,
        lifespan="off",
        date_header=False,
        timeout_graceful_shutdown=2,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(
        target=server.run,
        kwargs={"sockets": [sock]},
        name="fake-pinterest-api",
        daemon=True,
    )
    thread.start()
    try:
        _wait_until_started(server, thread, startup_timeout)
        netloc = f"[{host}]" if family == socket.AF_INET6 else host
        yield f"http://{netloc}:{bound_port}"
    finally:
        server.should_exit = True
        thread.join(timeout=startup_timeout)
        sock.close()


def _wait_until_started(server: Any, thread: threading.Thread, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not server.started:
        if not thread.is_alive():
            raise RuntimeError("the fake Pinterest API server failed to start")
        if time.monotonic() > deadline:
            raise RuntimeError("the fake Pinterest API server did not start in time")
        time.sleep(0.005)


if importlib.util.find_spec("pytest") is not None:
    import pytest

    @pytest.fixture
    def fake_pinterest(httpx_mock: HTTPXMock) -> FakePinterestAPI:
        """A `FakePinterestAPI` answering every httpx request of the test.

        Built on pytest-httpx's `httpx_mock`, so no socket is opened. Use
        `FAKE_ACCESS_TOKEN` and `FAKE_AD_ACCOUNT_ID` (or the fake's
        `access_token` and `ad_account_id`) to configure the transport.
        """
        fake = FakePinterestAPI()
        httpx_mock.add_callback(fake.handle, is_reusable=True, is_optional=True)
        return fake
