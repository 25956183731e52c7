"""Send events to Pinterest's events endpoint, with retries and typed results.

`Transport` (blocking, on `httpx.Client`) and `AsyncTransport` (on
`httpx.AsyncClient`, for asyncio or trio) share their names and behaviour:

- `send()` takes any number of events (`Event`, mappings, `WireEvent`) and
  posts them in requests of at most 1000, in order, over one pooled client;
- a request is serialized once and retried byte for byte on 408, 429, 5xx,
  timeouts and connection errors, with exponential backoff and jitter, a
  `Retry-After` floor and a total time budget (`RetryPolicy`); 400, 401,
  403 and 422 are never retried;
- the answer becomes one `EventResult` per input event (processed, warned,
  failed or not sent), read from the 200 body or from the 422 `details`. A
  2xx that is Pinterest's answer but without one result per event leaves
  its events `unconfirmed`, and they are not resent: Pinterest got them,
  and whether it de-duplicates a resent event is not confirmed. A 2xx that
  is not Pinterest's answer at all (a captive portal's page, say) is
  `UnreadableResponseError`, retried like a 5xx;
- a request that finally fails raises `APIError` (`RateLimitError` for
  429) or `TransportError`, carrying the `SendResult` of every event so
  far as `send_result`, or is reported in the `SendResult` with
  `raise_on_error=False`.

A `Transport` may be shared between threads and an `AsyncTransport`
between the tasks of one event loop.

Privacy: the access token only ever goes into the `Authorization` header.
It is in no `repr`, log record or exception message: every text taken from
Pinterest's answers (error and per-event messages) has it redacted, and is
withheld when it repeats a value that was sent (see `EventResult`). Log
records carry counts, event names and ids, statuses and durations; never
bodies, user data or URLs with their query.

Loggers: `pinterest_mw.transport` logs each request at DEBUG, and each
retry and each request it gives up on at WARNING (the error then goes to the
caller, which knows whether the events are lost: the dispatcher keeps them).
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import random
import re
import ssl
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from enum import StrEnum
from types import TracebackType
from typing import Any, Self

import anyio
import httpx
from tenacity import AsyncRetrying, RetryCallState, Retrying, retry_if_exception

from ._parsing import parsed_or_none
from ._version import __version__
from .events import Event, WireEvent, batch_body, parse_event
from .exceptions import (
    APIError,
    ConfigurationError,
    ConversionsError,
    EventValidationError,
    FieldError,
    RateLimitError,
    TransportError,
    UnreadableResponseError,
)

__all__ = [
    "DEFAULT_API_URL",
    "MAX_BATCH_SIZE",
    "AsyncTransport",
    "EventResult",
    "EventStatus",
    "RetryPolicy",
    "SendResult",
    "Transport",
]

logger = logging.getLogger(__name__)

DEFAULT_API_URL = "https://api.pinterest.com"
"""Where events go unless `api_url` or `PINTEREST_API_URL` says otherwise."""

API_URL_ENV = "PINTEREST_API_URL"

MAX_BATCH_SIZE = 1000
"""The most events Pinterest accepts in one request."""

DEFAULT_TIMEOUT = 10.0
CONNECT_TIMEOUT = 5.0
_MAX_MESSAGE_LENGTH = 500

WITHHELD_MESSAGE = "Pinterest's message is withheld: it repeats a value that was sent"
"""What stands for a Pinterest message that repeats a value sent (see
`EventResult`)."""

# Values Pinterest's messages may quote: what our results and log lines
# show anyway (the event's name and id), or what names no one (its time and
# source). Every other value sent is compared with the message.
_SHOWN_FIELDS = frozenset({"event_name", "event_id", "event_time", "action_source"})
# Short numbers (a quantity, a number of days) say nothing of a person and
# turn up in many messages; longer ones (a phone number) are compared by
# their digits too, as a message may show them normalized. Shorter texts
# count only as whole words.
_SHORT_NUMBER = 5
_PHONE_DIGITS = 7
_SHORT_TEXT = 4

_NO_VERDICT = "Pinterest's answer held no result for this event"
_NO_REASON = "Pinterest rejected the event without a message"
_UNKNOWN_STATUS = "Pinterest answered an unknown status for this event"
_UNCONFIRMED_MESSAGE = (
    "Pinterest answered 2xx without a result for this event; it may or may"
    " not have been recorded, and was not resent"
)

_AD_ACCOUNT_ID = re.compile(r"[0-9]{1,18}")
_TOKEN = re.compile(r"[\x21-\x7e]+")

# Network failures worth another try. Others (an unsupported scheme, a
# request httpx refuses to build) would fail the same way again.
_RETRYABLE_HTTPX_ERRORS = (
    httpx.TimeoutException,
    httpx.NetworkError,
    httpx.RemoteProtocolError,
)

# Statuses after which the rest of a send() is not attempted: the account
# is refused, or Pinterest stayed unavailable for a whole retry budget.
_ACCOUNT_WIDE_STATUSES = frozenset({401, 403})


class EventStatus(StrEnum):
    """What became of one event."""

    PROCESSED = "processed"
    """Pinterest accepted the event."""
    WARNED = "warned"
    """Pinterest accepted the event with a warning (see `warning_message`)."""
    FAILED = "failed"
    """Pinterest rejected the event (see `error_message`)."""
    NOT_SENT = "not_sent"
    """The request carrying the event failed finally (see `error_message`)."""
    UNCONFIRMED = "unconfirmed"
    """Pinterest answered 2xx without a result for the event.

    It may or may not have been recorded, and it is not resent, lest
    Pinterest count it twice (see `error_message`).
    """


@dataclass(frozen=True, slots=True)
class EventResult:
    """The outcome of one event of a send.

    `index` is the event's position in what was passed to `send()` (or to
    `send_batch()`). `error_message` is Pinterest's message for a failed
    event, or why the event was not sent; `warning_message` is Pinterest's
    warning for a warned one. Both are None when there is nothing to say.

    Privacy: a message of Pinterest's that repeats a value sent with the
    event (an email's digest, an IP address, a custom data value; its name,
    id, time and action source aside) is replaced with `WITHHELD_MESSAGE`,
    and so is an `APIError`'s message that repeats a value of its request.
    Case and spacing are ignored, and a number of 7 digits or more is also
    found among other characters (`+1 415-555-0123`); numbers shorter than
    5 digits and texts shorter than 4 characters count only as whole
    words. A message that quotes part of a value only is not caught.
    """

    index: int
    event_id: str
    event_name: str
    status: EventStatus
    error_message: str | None = None
    warning_message: str | None = None

    @property
    def is_processed(self) -> bool:
        """Whether Pinterest accepted the event, with or without a warning."""
        return self.status in (EventStatus.PROCESSED, EventStatus.WARNED)


@dataclass(frozen=True, slots=True)
class SendResult:
    """The outcome of `send()`: one result per input event, in input order.

    `errors` lists the requests that failed finally (their events are
    `not_sent`): every one with `raise_on_error=False`, or the one raised,
    in the `send_result` that error carries.
    """

    results: list[EventResult]
    errors: list[ConversionsError] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Whether every event was processed (warnings allowed)."""
        return not self.errors and all(r.is_processed for r in self.results)

    @property
    def processed(self) -> list[EventResult]:
        """The events Pinterest accepted, warned ones included."""
        return [r for r in self.results if r.is_processed]

    @property
    def warned(self) -> list[EventResult]:
        """The events Pinterest accepted with a warning."""
        return self._with_status(EventStatus.WARNED)

    @property
    def failed(self) -> list[EventResult]:
        """The events Pinterest rejected."""
        return self._with_status(EventStatus.FAILED)

    @property
    def not_sent(self) -> list[EventResult]:
        """The events whose request failed finally."""
        return self._with_status(EventStatus.NOT_SENT)

    @property
    def unconfirmed(self) -> list[EventResult]:
        """The events Pinterest got but gave no result for (not resent)."""
        return self._with_status(EventStatus.UNCONFIRMED)

    def _with_status(self, status: EventStatus) -> list[EventResult]:
        return [r for r in self.results if r.status is status]


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How a request is retried after a 429, a 5xx, a timeout or a lost connection.

    The wait before retry n (n = 1, 2, ...) is `initial_backoff *
    multiplier ** (n - 1)`, capped at `max_backoff`; `jitter` is the share
    of that wait that is random (0 for none, 1 for "full jitter"). A
    `Retry-After` from Pinterest is a floor: the wait is never shorter.
    `total_budget` bounds the time spent on one request, waits included: a
    retry whose wait would end past it is not made, and the last error is
    raised. `attempts` counts the first try; `RetryPolicy(attempts=1)`
    never retries.
    """

    attempts: int = 5
    initial_backoff: float = 0.5
    max_backoff: float = 30.0
    multiplier: float = 2.0
    jitter: float = 0.5
    total_budget: float = 60.0

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ConfigurationError("RetryPolicy.attempts must be at least 1")
        numbers = (self.initial_backoff, self.max_backoff, self.total_budget)
        if not all(math.isfinite(n) and n >= 0 for n in numbers):
            raise ConfigurationError(
                "RetryPolicy backoffs and budget must be finite and not negative"
            )
        if self.multiplier < 1 or not math.isfinite(self.multiplier):
            raise ConfigurationError("RetryPolicy.multiplier must be at least 1")
        if not 0 <= self.jitter <= 1:
            raise ConfigurationError("RetryPolicy.jitter must be between 0 and 1")

    def backoff(self, retry_number: int) -> float:
        """The wait before retry `retry_number` (from 1), jitter applied."""
        exponent = min(retry_number - 1, 64)
        base = min(self.max_backoff, self.initial_backoff * self.multiplier**exponent)
        spread = base * self.jitter

        return base - spread + spread * random.random()  # noqa: S311 - jitter, not a secret


_REDACTED = "<redacted>"


class _Secret(str):
    """A string whose repr hides it, for values that end up in locals."""

    __slots__ = ()

    def __repr__(self) -> str:
        return f"'{_REDACTED}'"

    @classmethod
    def wrap(cls, value: object) -> _Secret:
        """Hide a token at once; never raises.

        Called first thing in each constructor, so that no frame holds the
        token as plain text when a later check raises: error trackers that
        record local variables would keep it. Anything but a string becomes
        an empty secret, which `_check_token` refuses.
        """
        return cls(value) if isinstance(value, str) else cls()


class _BaseTransport:
    """Configuration, request building and answer reading shared by both transports."""

    def __init__(
        self,
        access_token: str,
        ad_account_id: str | int,
        *,
        api_url: str | None,
        test_mode: bool,
        timeout: float,
        retry: RetryPolicy | None,
        clock: Callable[[], float],
    ) -> None:
        access_token = _Secret.wrap(access_token)
        self.ad_account_id = _check_ad_account_id(ad_account_id)
        self.api_url = _check_api_url(api_url or os.environ.get(API_URL_ENV))
        self.test_mode = _check_test_mode(test_mode)
        self.timeout = _check_timeout(timeout)
        self.retry = retry if retry is not None else RetryPolicy()
        self._clock = clock
        self._url = f"{self.api_url}/v5/ad_accounts/{self.ad_account_id}/events"
        self._token = _Secret(_check_token(access_token))
        self._headers = {
            "Authorization": _Secret(f"Bearer {self._token}"),
            "Content-Type": "application/json",
            "Accept": "application/json",
            "User-Agent": f"pinterest-mw/{__version__}",
        }
        self._closed = False

    def __repr__(self) -> str:
        # getattr: a constructor that raised leaves a half-built object, and
        # tracebacks that show local variables call repr() on it.
        return (
            f"{type(self).__name__}("
            f"ad_account_id={getattr(self, 'ad_account_id', None)!r}, "
            f"api_url={getattr(self, 'api_url', None)!r})"
        )

    def _httpx_timeout(self) -> httpx.Timeout:
        return httpx.Timeout(self.timeout, connect=min(self.timeout, CONNECT_TIMEOUT))

    def _request_timeout(
        self, client: httpx.Client | httpx.AsyncClient
    ) -> httpx.Timeout:
        """The timeouts of every request: the client's, with ours for any it
        leaves unbounded, so that a request never waits forever."""
        given, ours = client.timeout, self._httpx_timeout()
        parts = {
            name: _bounded(getattr(given, name), getattr(ours, name))
            for name in ("connect", "read", "write", "pool")
        }
        if parts != {name: getattr(given, name) for name in parts}:
            logger.warning(
                "the http_client given leaves some timeouts unbounded; they"
                " are %.1f s for this transport's requests (at most 5 s to"
                " connect)",
                self.timeout,
            )

        return httpx.Timeout(**parts)

    def _params(self, test: bool | None) -> dict[str, str]:
        """The query of this call's requests; raises TypeError for `test`."""
        if test is not None and not isinstance(test, bool):
            raise TypeError("test must be True, False or None")
        is_test = self.test_mode if test is None else test

        return {"test": "true"} if is_test else {}

    def _check_open(self) -> None:
        if self._closed:
            raise TransportError("the transport has been closed")

    def _retry_options(self, batch: Sequence[WireEvent]) -> dict[str, Any]:
        """The tenacity settings for one request, its budget starting now."""
        policy = self.retry
        started = self._clock()

        def wait(state: RetryCallState) -> float:
            delay = policy.backoff(state.attempt_number)
            error = _outcome_error(state)
            if isinstance(error, APIError) and error.retry_after is not None:
                delay = max(delay, error.retry_after)
            return delay

        def stop(state: RetryCallState) -> bool:
            if state.attempt_number >= policy.attempts:
                return True
            elapsed = self._clock() - started
            return elapsed + state.upcoming_sleep > policy.total_budget

        def before_sleep(state: RetryCallState) -> None:
            logger.warning(
                "request of %d event(s) failed (%s) on attempt %d of %d; "
                "retrying in %.2f s",
                len(batch),
                _failure_label(_outcome_error(state)),
                state.attempt_number,
                policy.attempts,
                state.upcoming_sleep,
            )

        return {
            "wait": wait,
            "stop": stop,
            "retry": retry_if_exception(_is_retryable),
            "before_sleep": before_sleep,
            "reraise": True,
        }

    def _read_answer(
        self,
        response: httpx.Response,
        batch: Sequence[WireEvent],
        offset: int,
        started: float,
    ) -> list[EventResult]:
        """Turn one answer into per-event results, or raise its error."""
        status = response.status_code
        logger.debug(
            "request of %d event(s) answered %d in %.3f s",
            len(batch),
            status,
            self._clock() - started,
        )
        document = _json_or_none(response)
        if 200 <= status < 300:
            if _has_a_result_per_event(document, len(batch)):
                return _summary_results(document, batch, offset, self._token)
            if _is_pinterests_answer(document):
                return _unconfirmed(status, batch, offset)
            raise UnreadableResponseError(status, retry_after=_retry_after(response))

        code, message = _error_fields(document, self._token, batch)
        if status == 422:
            details = document.get("details") if isinstance(document, dict) else None
            if _is_summary(details):
                return _summary_results(details, batch, offset, self._token)
        error_class = RateLimitError if status == 429 else APIError
        raise error_class(status, code, message, retry_after=_retry_after(response))

    def _log_results(self, results: Sequence[EventResult]) -> None:
        failed = [r for r in results if r.status is EventStatus.FAILED]
        warned = sum(r.status is EventStatus.WARNED for r in results)
        unconfirmed = sum(r.status is EventStatus.UNCONFIRMED for r in results)
        logger.debug(
            "batch of %d events: %d processed, %d warned, %d failed, %d unconfirmed",
            len(results),
            len(results) - len(failed) - warned - unconfirmed,
            warned,
            len(failed),
            unconfirmed,
        )
        for result in failed:
            logger.debug(
                "event %s (%s) at index %d failed",
                result.event_id,
                result.event_name,
                result.index,
            )
        if failed:
            logger.warning(
                "Pinterest rejected %d of %d events", len(failed), len(results)
            )

    def _log_abandoned(
        self, batch: Sequence[WireEvent], attempts: int, error: ConversionsError
    ) -> None:
        # WARNING, not ERROR: the error is raised to the caller, who decides
        # whether the events are lost (the dispatcher keeps them for later).
        logger.warning(
            "gave up on a request of %d event(s) after %d attempt(s): %s",
            len(batch),
            attempts,
            _failure_label(error),
        )


class Transport(_BaseTransport):
    """Post events to Pinterest with a blocking `httpx.Client`.

    One client (and its connection pool) serves every request; close the
    transport, or use it as a context manager, to release it. A client
    passed as `http_client` is used as it is, timeouts included, and is
    left open; only a timeout it leaves unbounded (`None`, as with
    `httpx.Client(timeout=None)`) is replaced by `timeout` (five seconds at
    most to connect), with a warning, so that no request waits forever.
    Its timeouts are read once, when the transport is built.

    Args:
        access_token: the conversion access token (never logged or shown).
        ad_account_id: the ad account, 1 to 18 digits.
        api_url: the API's base URL. Defaults to `PINTEREST_API_URL`, then
            to `https://api.pinterest.com`.
        test_mode: send every request with `?test=true` (Pinterest then
            validates the events without recording them), unless a call
            says otherwise.
        timeout: seconds allowed for one request (the connection gets at
            most five of them).
        retry: the retry policy; `RetryPolicy()` by default.
        sleep: how to wait between attempts; replace it to test waits
            without waiting.
        clock: a monotonic clock in seconds, for the retry budget.

    Raises:
        ConfigurationError: for an unusable token, ad account, URL,
            timeout or `test_mode` (which must be a bool), before any
            request is made.
    """

    def __init__(
        self,
        access_token: str,
        ad_account_id: str | int,
        *,
        api_url: str | None = None,
        test_mode: bool = False,
        timeout: float = DEFAULT_TIMEOUT,
        retry: RetryPolicy | None = None,
        http_client: httpx.Client | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        access_token = _Secret.wrap(access_token)
        super().__init__(
            access_token,
            ad_account_id,
            api_url=api_url,
            test_mode=test_mode,
            timeout=timeout,
            retry=retry,
            clock=clock,
        )
        self._sleep = sleep
        self._owns_client = http_client is None
        self._client = http_client or httpx.Client(
            timeout=self._httpx_timeout(), verify=_shared_ssl_context()
        )
        self._timeout = self._request_timeout(self._client)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Release the connection pool (a caller's `http_client` stays open)."""
        self._closed = True
        if self._owns_client:
            self._client.close()

    def send(
        self,
        events: Iterable[Event | Mapping[str, Any] | WireEvent],
        *,
        test: bool | None = None,
        raise_on_error: bool = True,
    ) -> SendResult:
        """Send any number of events, in requests of at most 1000, in order.

        Mappings are validated and hashed with `parse_event` first; if any
        is invalid, `EventValidationError` lists every problem (paths start
        with `data.<index>.`) and nothing is sent.

        A request that finally fails raises `APIError`, `RateLimitError`,
        `UnreadableResponseError` or `TransportError`; the requests before
        it were delivered and the ones after it are not attempted. The
        error's `send_result` says what became of every event: the results
        of the earlier requests, then its own events and the later ones
        `not_sent`, with the reason as `error_message`. With
        `raise_on_error=False` the error is listed in `SendResult.errors`
        and its events are `not_sent`; later requests still go out unless
        the error concerns the whole account (401, 403) or Pinterest stayed
        unavailable for a whole retry budget.

        `test` overrides the transport's `test_mode` for this call; a value
        other than True, False or None raises TypeError before anything is
        sent.
        """
        self._check_open()
        params = self._params(test)
        outcome = _SendOutcome(raise_on_error)
        for offset, chunk in _chunks(_prepare(events)):
            if outcome.stopped:
                outcome.skip(chunk, offset)
                continue
            try:
                outcome.add(self._send_chunk(chunk, offset, params))
            except (APIError, TransportError) as exc:
                outcome.fail(exc, chunk, offset)

        return outcome.result()

    def send_batch(
        self, batch: Sequence[WireEvent], *, test: bool | None = None
    ) -> list[EventResult]:
        """Send one request of up to 1000 events, retrying as the policy allows.

        Returns one result per event (a 422 is read into per-event results,
        not raised). Raises `APIError`, `RateLimitError`,
        `UnreadableResponseError` or `TransportError` when the request
        finally fails, ValueError for more than 1000 events, and TypeError
        for a `test` that is not a bool or None.
        """
        self._check_open()
        params = self._params(test)
        return self._send_chunk(_check_batch(batch), 0, params)

    def _send_chunk(
        self, batch: Sequence[WireEvent], offset: int, params: dict[str, str]
    ) -> list[EventResult]:
        if not batch:
            return []
        body = batch_body(event.payload for event in batch)
        retrying = Retrying(sleep=self._sleep, **self._retry_options(batch))
        logger.debug("sending %d events (test=%s)", len(batch), bool(params))
        try:
            results = retrying(self._attempt, body, params, batch, offset)
        except (APIError, TransportError) as exc:
            self._log_abandoned(batch, retrying.statistics["attempt_number"], exc)
            raise
        self._log_results(results)

        return results

    def _attempt(
        self,
        body: bytes,
        params: dict[str, str],
        batch: Sequence[WireEvent],
        offset: int,
    ) -> list[EventResult]:
        started = self._clock()
        try:
            response = self._client.post(
                self._url,
                content=body,
                params=params,
                headers=self._headers,
                timeout=self._timeout,
            )
        except httpx.HTTPError as exc:
            raise _transport_error(exc) from exc

        return self._read_answer(response, batch, offset, started)


class AsyncTransport(_BaseTransport):
    """Post events to Pinterest with an `httpx.AsyncClient` (asyncio or trio).

    The twin of `Transport`: same arguments, same behaviour, with `async
    send`, `async send_batch` and `aclose()`. `sleep` is awaited between
    attempts (`anyio.sleep` by default).
    """

    def __init__(
        self,
        access_token: str,
        ad_account_id: str | int,
        *,
        api_url: str | None = None,
        test_mode: bool = False,
        timeout: float = DEFAULT_TIMEOUT,
        retry: RetryPolicy | None = None,
        http_client: httpx.AsyncClient | None = None,
        sleep: Callable[[float], Awaitable[None]] = anyio.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        access_token = _Secret.wrap(access_token)
        super().__init__(
            access_token,
            ad_account_id,
            api_url=api_url,
            test_mode=test_mode,
            timeout=timeout,
            retry=retry,
            clock=clock,
        )
        self._sleep = sleep
        self._owns_client = http_client is None
        self._client = http_client or httpx.AsyncClient(
            timeout=self._httpx_timeout(), verify=_shared_ssl_context()
        )
        self._timeout = self._request_timeout(self._client)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Release the connection pool (a caller's `http_client` stays open)."""
        self._closed = True
        if self._owns_client:
            await self._client.aclose()

    async def send(
        self,
        events: Iterable[Event | Mapping[str, Any] | WireEvent],
        *,
        test: bool | None = None,
        raise_on_error: bool = True,
    ) -> SendResult:
        """Send any number of events, in requests of at most 1000, in order.

        Behaves as `Transport.send`.
        """
        self._check_open()
        params = self._params(test)
        outcome = _SendOutcome(raise_on_error)
        for offset, chunk in _chunks(_prepare(events)):
            if outcome.stopped:
                outcome.skip(chunk, offset)
                continue
            try:
                outcome.add(await self._send_chunk(chunk, offset, params))
            except (APIError, TransportError) as exc:
                outcome.fail(exc, chunk, offset)

        return outcome.result()

    async def send_batch(
        self, batch: Sequence[WireEvent], *, test: bool | None = None
    ) -> list[EventResult]:
        """Send one request of up to 1000 events, retrying as the policy allows.

        Behaves as `Transport.send_batch`.
        """
        self._check_open()
        params = self._params(test)
        return await self._send_chunk(_check_batch(batch), 0, params)

    async def _send_chunk(
        self, batch: Sequence[WireEvent], offset: int, params: dict[str, str]
    ) -> list[EventResult]:
        if not batch:
            return []
        body = batch_body(event.payload for event in batch)
        retrying = AsyncRetrying(sleep=self._sleep, **self._retry_options(batch))
        logger.debug("sending %d events (test=%s)", len(batch), bool(params))
        try:
            results: list[EventResult] = await retrying(
                self._attempt, body, params, batch, offset
            )
        except (APIError, TransportError) as exc:
            self._log_abandoned(batch, retrying.statistics["attempt_number"], exc)
            raise
        self._log_results(results)

        return results

    async def _attempt(
        self,
        body: bytes,
        params: dict[str, str],
        batch: Sequence[WireEvent],
        offset: int,
    ) -> list[EventResult]:
        started = self._clock()
        try:
            response = await self._client.post(
                self._url,
                content=body,
                params=params,
                headers=self._headers,
                timeout=self._timeout,
            )
        except httpx.HTTPError as exc:
            raise _transport_error(exc) from exc

        return self._read_answer(response, batch, offset, started)


class _SendOutcome:
    """Collects the results of the requests of one `send()`.

    With `raise_on_error`, the first failed request stops the send, and
    `result()` raises its error carrying the results of every event.
    """

    def __init__(self, raise_on_error: bool) -> None:
        self.raise_on_error = raise_on_error
        self.results: list[EventResult] = []
        self.errors: list[ConversionsError] = []
        self.stopped_by: APIError | TransportError | None = None

    @property
    def stopped(self) -> bool:
        return self.stopped_by is not None

    def add(self, results: list[EventResult]) -> None:
        self.results.extend(results)

    def fail(
        self, error: APIError | TransportError, chunk: Sequence[WireEvent], offset: int
    ) -> None:
        self.errors.append(error)
        self.results.extend(_not_sent(chunk, offset, f"request failed: {error}"))
        if self.raise_on_error or _stops_the_send(error):
            self.stopped_by = error

    def skip(self, chunk: Sequence[WireEvent], offset: int) -> None:
        reason = f"not attempted after an earlier request failed: {self.stopped_by}"
        self.results.extend(_not_sent(chunk, offset, reason))

    def result(self) -> SendResult:
        result = SendResult(self.results, self.errors)
        error = self.stopped_by
        if self.raise_on_error and error is not None:
            error.send_result = result
            raise error

        return result


@functools.cache
def _shared_ssl_context() -> ssl.SSLContext:
    """One TLS context for every transport of the process.

    Loading the CA bundle takes tens of milliseconds; a process that builds
    several transports (sync and async, one per worker) pays it once.
    """
    return httpx.create_ssl_context()


def _check_ad_account_id(value: str | int) -> str:
    text = (
        str(value) if isinstance(value, int) and not isinstance(value, bool) else value
    )
    if not isinstance(text, str) or _AD_ACCOUNT_ID.fullmatch(text) is None:
        raise ConfigurationError("ad_account_id must be 1 to 18 digits")

    return text


def _check_token(value: str) -> str:
    problem = (
        "access_token must be a non-empty string of printable ASCII without whitespace"
    )
    if not isinstance(value, str):
        raise ConfigurationError(problem)
    if _TOKEN.fullmatch(value) is None:
        raise ConfigurationError(problem)

    return value


def _check_api_url(value: str | None) -> str:
    if not value:
        return DEFAULT_API_URL
    problem = "api_url must be an http(s) URL without credentials, query or fragment"
    url = parsed_or_none(httpx.URL, value, (httpx.InvalidURL, TypeError))
    if (
        url is None
        or url.scheme not in ("http", "https")
        or not url.host
        or url.userinfo
        or url.query
        or url.fragment
    ):
        raise ConfigurationError(problem)

    return str(url).rstrip("/")


def _check_test_mode(value: bool) -> bool:
    # A string such as "false" would be truthy and send every request as a test.
    if not isinstance(value, bool):
        raise ConfigurationError("test_mode must be True or False")

    return value


def _check_timeout(value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigurationError("timeout must be a number of seconds")
    if not (math.isfinite(value) and value > 0):
        raise ConfigurationError("timeout must be finite and positive")

    return float(value)


def _bounded(given: float | None, ours: float | None) -> float | None:
    return given if given is not None and math.isfinite(given) else ours


def _check_batch(batch: Sequence[WireEvent]) -> Sequence[WireEvent]:
    if len(batch) > MAX_BATCH_SIZE:
        raise ValueError(f"a batch holds at most {MAX_BATCH_SIZE} events")

    return batch


def _prepare(
    events: Iterable[Event | Mapping[str, Any] | WireEvent],
) -> list[WireEvent]:
    """Serialize every event once, or raise with every invalid one's problems.

    An `Event` that skipped validation and holds raw personal data is
    refused too (see `Event.to_json`), its paths starting `data.<index>.`.
    """
    wire: list[WireEvent] = []
    problems: list[FieldError] = []
    for index, item in enumerate(events):
        if isinstance(item, WireEvent):
            wire.append(item)
            continue
        try:
            wire.append(_serialized(item, f"data.{index}"))
        except EventValidationError as exc:
            problems.extend(exc.errors)
    if problems:
        raise EventValidationError(problems)

    return wire


def _serialized(item: Event | Mapping[str, Any], path: str) -> WireEvent:
    if isinstance(item, Mapping):
        return parse_event(item, path=path).to_wire_event()
    if not isinstance(item, Event):
        raise TypeError(
            "events must be Event, mapping or WireEvent objects, "
            f"not {type(item).__name__}"
        )
    try:
        return item.to_wire_event()
    except EventValidationError as exc:
        problems = [FieldError(f"{path}.{e.path}", e.message) for e in exc.errors]
    # Raised outside the except block: ours chains nothing.
    raise EventValidationError(problems)


def _chunks(events: list[WireEvent]) -> Iterator[tuple[int, list[WireEvent]]]:
    for offset in range(0, len(events), MAX_BATCH_SIZE):
        yield offset, events[offset : offset + MAX_BATCH_SIZE]


def _not_sent(
    chunk: Sequence[WireEvent], offset: int, reason: str
) -> list[EventResult]:
    return [
        EventResult(
            offset + i, event.event_id, event.event_name, EventStatus.NOT_SENT, reason
        )
        for i, event in enumerate(chunk)
    ]


def _stops_the_send(error: APIError | TransportError) -> bool:
    if isinstance(error, TransportError):
        return True

    return error.status_code in _ACCOUNT_WIDE_STATUSES or error.is_retryable


def _is_retryable(error: BaseException) -> bool:
    if isinstance(error, APIError):
        return error.is_retryable
    if isinstance(error, TransportError):
        return isinstance(error.__cause__, _RETRYABLE_HTTPX_ERRORS)

    return False


def _outcome_error(state: RetryCallState) -> BaseException | None:
    if state.outcome is None or not state.outcome.failed:
        return None

    return state.outcome.exception()


def _failure_label(error: BaseException | None) -> str:
    """Name a failure for a log line: a status, or an exception's class."""
    if isinstance(error, APIError):
        return f"status {error.status_code}"
    if error is not None and error.__cause__ is not None:
        return type(error.__cause__).__name__

    return type(error).__name__


def _transport_error(exc: httpx.HTTPError) -> TransportError:
    # httpx's own message can hold the URL and its query: keep it out of ours.
    if isinstance(exc, httpx.TimeoutException):
        what = "timed out"
    elif isinstance(exc, httpx.NetworkError):
        what = "connection failed"
    else:
        what = "request failed"

    return TransportError(f"Pinterest request {what} ({type(exc).__name__})")


def _json_or_none(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None


def _error_fields(
    document: Any, secret: str, sent: Sequence[WireEvent]
) -> tuple[int | None, str | None]:
    if not isinstance(document, dict):
        return None, None
    code = document.get("code")
    if not isinstance(code, int) or isinstance(code, bool):
        code = None

    return code, _answer_text(document.get("message"), secret, sent)


def _answer_text(value: Any, secret: str, sent: Sequence[WireEvent]) -> str | None:
    """A text from Pinterest's answer, fit for our messages, logs and reprs.

    Anything but a non-empty string is None. `secret` (the access token) is
    redacted first, since a proxy or a gateway may echo the request's
    `Authorization` header. A text that repeats a value of the `sent`
    events (an email's digest, an IP address) is `WITHHELD_MESSAGE`.
    Then the text is cut to 500 characters: cutting first would leave the
    start of a token or a value that straddles the cut unnoticed.
    """
    if not isinstance(value, str) or not value:
        return None
    text = value.replace(secret, _REDACTED)
    if _repeats_a_value(text, _sent_values(sent)):
        return WITHHELD_MESSAGE

    return text[:_MAX_MESSAGE_LENGTH]


def _sent_values(sent: Sequence[WireEvent]) -> Iterator[str]:
    """Every value of the events, as text, but for the `_SHOWN_FIELDS`."""
    for event in sent:
        try:
            document = json.loads(event.payload)
        except ValueError:
            # Not JSON: a hand-made WireEvent, which Pinterest refuses whole.
            continue
        if not isinstance(document, dict):
            yield from _texts(document)
            continue
        for name, value in document.items():
            if name not in _SHOWN_FIELDS:
                yield from _texts(value)


def _texts(value: Any) -> Iterator[str]:
    if isinstance(value, dict):
        for item in value.values():
            yield from _texts(item)
    elif isinstance(value, list):
        for item in value:
            yield from _texts(item)
    elif value is not None and not isinstance(value, bool):
        yield str(value)


def _repeats_a_value(message: str, values: Iterable[str]) -> bool:
    """Whether `message` repeats one of `values`, ignoring case and spacing.

    A message that quotes only part of a value (a digest's first characters)
    is not caught.
    """
    text = " ".join(message.split()).casefold()
    long_runs = [run for run in re.findall(r"\d+", text) if len(run) >= _PHONE_DIGITS]
    for value in values:
        folded = " ".join(value.split()).casefold()
        if not folded or (folded.isdigit() and len(folded) < _SHORT_NUMBER):
            continue
        if len(folded) >= _SHORT_TEXT:
            if folded in text:
                return True
        elif re.search(rf"(?<!\w){re.escape(folded)}(?!\w)", text):
            return True
        if long_runs:
            number = re.sub(r"\D", "", folded)
            if len(number) >= _PHONE_DIGITS and any(number in run for run in long_runs):
                return True

    return False


def _retry_after(response: httpx.Response) -> float | None:
    """Seconds to wait per `Retry-After`: a number, or an HTTP date.

    A date is measured against the answer's own `Date` header when there is
    one, so a skewed local clock does not shorten the wait.
    """
    value = response.headers.get("retry-after", "").strip()
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        return max(0.0, seconds) if math.isfinite(seconds) else None

    retry_at = _http_date(value)
    if retry_at is None:
        return None
    now = _http_date(response.headers.get("date", "")) or datetime.now(UTC)

    return max(0.0, (retry_at - now).total_seconds())


def _http_date(value: str) -> datetime | None:
    try:
        moment = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)

    return moment


def _is_summary(document: Any) -> bool:
    return isinstance(document, dict) and isinstance(document.get("events"), list)


_SUMMARY_KEYS = ("events", "num_events_received", "num_events_processed")


def _is_pinterests_answer(document: Any) -> bool:
    """Whether a 2xx body is shaped as Pinterest's answer, if not fully.

    A JSON object with one of its keys came from Pinterest, which then got
    the events; a page, an empty body or other JSON may well not have.
    """
    return isinstance(document, dict) and any(key in document for key in _SUMMARY_KEYS)


def _unconfirmed(
    status: int, batch: Sequence[WireEvent], offset: int
) -> list[EventResult]:
    logger.warning(
        "Pinterest answered %d without one result per event; %d event(s) are"
        " unconfirmed and were not resent",
        status,
        len(batch),
    )
    return [
        EventResult(
            offset + i,
            event.event_id,
            event.event_name,
            EventStatus.UNCONFIRMED,
            _UNCONFIRMED_MESSAGE,
        )
        for i, event in enumerate(batch)
    ]


def _has_a_result_per_event(document: Any, count: int) -> bool:
    """Whether a 2xx body is Pinterest's answer: one result object per event.

    Anything else (not JSON, no `events` list, a list of another length)
    says nothing of what became of the events.
    """
    if not _is_summary(document):
        return False
    entries = document["events"]

    return len(entries) == count and all(isinstance(e, dict) for e in entries)


def _summary_results(
    summary: Any, batch: Sequence[WireEvent], offset: int, secret: str
) -> list[EventResult]:
    """One result per event of `batch`, from Pinterest's per-event list.

    An event the list does not cover (possible in a 422's `details` only: a
    2xx must cover every event) is reported failed without a verdict.
    """
    entries = summary["events"]
    results = []
    for i, event in enumerate(batch):
        entry = entries[i] if i < len(entries) else None
        results.append(_event_result(entry, offset + i, event, secret))

    return results


def _event_result(entry: Any, index: int, event: WireEvent, secret: str) -> EventResult:
    def build(
        status: EventStatus, error: str | None = None, warning: str | None = None
    ) -> EventResult:
        return EventResult(
            index, event.event_id, event.event_name, status, error, warning
        )

    if not isinstance(entry, dict):
        return build(EventStatus.FAILED, _NO_VERDICT)
    status = entry.get("status")
    if status == "processed":
        warning = _answer_text(entry.get("warning_message"), secret, (event,))
        return build(
            EventStatus.WARNED if warning else EventStatus.PROCESSED, None, warning
        )
    if status == "failed":
        error = _answer_text(entry.get("error_message"), secret, (event,))
        error = error or _NO_REASON
        return build(EventStatus.FAILED, error)

    return build(EventStatus.FAILED, _UNKNOWN_STATUS)
