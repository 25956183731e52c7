"""The client: one object with the configuration, the transports and the dispatcher.

```python
client = Client(access_token=token, ad_account_id="549755813888")
client.track({"event_name": "checkout", "user_data": {"email": email}})
```

`track()` validates and hashes the event, enriches it from the current
request (client IP, user agent, click id, page URL), stores it and returns;
a background worker delivers it. Nothing on the way waits for Pinterest.

Without credentials the client runs on an embedded default: events are
validated, hashed and kept in a local SQLite outbox
(`./pinterest-mw-data/outbox.sqlite3`) but not sent, and one WARNING says
so. A later client started with credentials and no outbox of its own, in
the same working directory, takes that file as its outbox (one INFO line
says so) and sends them first.

`get_default_client()` builds one client per process from the environment
(`PINTEREST_ACCESS_TOKEN`, `PINTEREST_AD_ACCOUNT_ID`, `PINTEREST_API_URL`,
`PINTEREST_TEST_MODE`, `PINTEREST_OUTBOX`); the sub-apps, middleware and
decorators fall back to it.

Privacy: the access token is in no `repr`, log record or error message.
What is stored and sent holds hashed user data, plus the unhashed IP
address, user agent and click id Pinterest asks for.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Self

import anyio
import anyio.to_thread

from . import _shutdown
from ._env import env_flag
from ._fork import abandon, fresh_after_fork, register_fork_aware
from .context import RequestContext, current_context, enrich_event_data
from .dispatch import (
    AsyncDispatcher,
    Counters,
    DeliveryBackoff,
    DeliveryFailure,
    DispatcherOptions,
    OverflowPolicy,
    ThreadDispatcher,
    _running_asyncio_loop,
)
from .events import ActionSource, Event, WireEvent, parse_event
from .exceptions import ConfigurationError, EventValidationError, FieldError
from .hashing import check_default_region
from .outbox import MemoryOutbox, Outbox, SQLiteOutbox
from .transport import (
    MAX_BATCH_SIZE,
    AsyncTransport,
    EventResult,
    RetryPolicy,
    SendResult,
    Transport,
    _check_test_mode,
)

__all__ = [
    "DEFAULT_OUTBOX_PATH",
    "Client",
    "get_default_client",
    "lifespan",
    "set_default_client",
]

logger = logging.getLogger(__name__)

DEFAULT_OUTBOX_PATH = Path("pinterest-mw-data") / "outbox.sqlite3"
"""Where the embedded default keeps events, relative to the working directory."""

MEMORY_MAX_EVENTS = 10_000
SQLITE_MAX_EVENTS = 100_000

DEFAULT_MEMORY_MAX_ATTEMPTS = 20
"""Deliveries of an event in memory before it is given up (about an hour)."""

NOT_SENDING_MESSAGE = (
    "pinterest_mw is not sending events (%s): they are validated, hashed and "
    "kept in %s until a client with credentials runs"
)
KEPT_OUTBOX_MESSAGE = (
    "sending the events kept in %s first: without an outbox of its own, this "
    "client uses that file"
)
RELEASE_FAILED_MESSAGE = "closing the client's transport or outbox failed"
START_FAILED_MESSAGE = "starting delivery for the track endpoints failed"

TEST_SEND_WITHIN = 15.0
"""Seconds `/track-event-test` may wait for Pinterest, retries included."""

_SHORTEST_TIMEOUT = 0.1

DEFAULT_ACTION_SOURCE = ActionSource.WEB.value
"""The `action_source` of a tracked mapping that names none, as in `build_event`."""

DispatcherKind = Literal["auto", "thread", "async"]
EventInput = Event | Mapping[str, Any]
_Dispatcher = ThreadDispatcher | AsyncDispatcher

_ENV_TOKEN = "PINTEREST_ACCESS_TOKEN"  # noqa: S105 - the variable's name, not a token
_ENV_AD_ACCOUNT = "PINTEREST_AD_ACCOUNT_ID"
_ENV_API_URL = "PINTEREST_API_URL"
_ENV_TEST_MODE = "PINTEREST_TEST_MODE"
_ENV_OUTBOX = "PINTEREST_OUTBOX"
_ENV_ADVERTISER_IDS = "PINTEREST_ADVERTISER_IDS"
_ENV_DEFAULT_REGION = "PINTEREST_DEFAULT_REGION"


class _BorrowedTransport:
    """The client's transport lent to the worker thread, which must not close it."""

    def __init__(self, transport: Transport) -> None:
        self._transport = transport

    def send_batch(
        self, batch: Sequence[WireEvent], *, test: bool | None = None
    ) -> list[EventResult]:
        return self._transport.send_batch(batch, test=test)

    def close(self) -> None:
        """Leave the transport open: the client closes it."""


class Client:
    """Configuration, transports and background delivery for one ad account.

    Args:
        access_token: the conversion access token. Without it (or without
            `ad_account_id`) the client does not send: see the module docs.
        ad_account_id: the ad account events go to, 1 to 18 digits.
        api_url: the API's base URL (default `PINTEREST_API_URL`, then
            Pinterest's).
        test_mode: send with `?test=true`: Pinterest validates, records nothing.
        advertiser_ids: the `advertiser_id` values a posted body may carry
            (the sub-apps refuse others with `403`); defaults to
            `ad_account_id` alone. This only checks the body: every event
            still goes to `ad_account_id`, whatever the body names (a body
            never chooses where events go). List here the ids your pages
            already send, such as the old npm package's.
        default_region: region assumed for phone numbers without a country
            code, such as `"US"`.
        flush_interval: seconds between deliveries of partial batches.
        batch_size: the most events per request, 1 to 1000.
        max_queue_size: the most events waiting in an outbox the client
            builds: 10,000 in memory and 100,000 in SQLite by default (an
            `Outbox` passed in keeps its own bounds, bytes included).
        overflow: what happens when the outbox is full: `"drop_newest"`,
            `"block"` (for up to `block_timeout` seconds) or `"raise"`
            (`QueueFullError`; `OutboxError` when the outbox failed to
            store them). Events refused under `"raise"` are counted
            `dropped` too.
        retry: the transport's retry policy within one delivery.
        backoff: the wait between deliveries of a failed batch.
        max_attempts: deliveries before an event is given up; `"auto"`: 20
            in memory, unlimited in a durable outbox; None: unlimited.
        timeout: seconds allowed for one HTTP request.
        outbox: None (in memory, or `DEFAULT_OUTBOX_PATH` when that file
            exists or the client does not send), a path (a `SQLiteOutbox`
            there), or an `Outbox`.
        dispatcher: `"thread"`, `"async"`, or `"auto"`: async when first
            used in an asyncio loop running in the main thread (what ASGI
            servers run), a thread otherwise (WSGI, scripts, Flask's async
            views, Starlette's `TestClient`, loops in other threads).
        shutdown_timeout: seconds spent flushing at `close()`, at exit and
            at SIGTERM.
        on_error: called with each `DeliveryFailure`, from the worker.
        sending: False stores events without sending even with credentials;
            None (default) sends when credentials are set.

    Raises:
        ConfigurationError: for any unusable option, at construction
            (an outbox file that cannot be used included).

    A sending client with an in-memory outbox, built in the main thread,
    installs a SIGTERM hook that delivers what is queued before the process
    ends (see `lifespan()` for what it leaves out under uvicorn).
    """

    def __init__(
        self,
        access_token: str | None = None,
        ad_account_id: str | int | None = None,
        *,
        api_url: str | None = None,
        test_mode: bool = False,
        advertiser_ids: Iterable[str | int] | None = None,
        default_region: str | None = None,
        flush_interval: float = 1.0,
        batch_size: int = MAX_BATCH_SIZE,
        max_queue_size: int | None = None,
        overflow: OverflowPolicy = "drop_newest",
        block_timeout: float = 1.0,
        retry: RetryPolicy | None = None,
        backoff: DeliveryBackoff | None = None,
        max_attempts: int | Literal["auto"] | None = "auto",
        timeout: float = 10.0,
        outbox: Outbox | str | os.PathLike[str] | None = None,
        dispatcher: DispatcherKind = "auto",
        shutdown_timeout: float = 5.0,
        on_error: Callable[[DeliveryFailure], None] | None = None,
        sending: bool | None = None,
    ) -> None:
        if dispatcher not in ("auto", "thread", "async"):
            raise ConfigurationError('dispatcher must be "auto", "thread" or "async"')
        missing = _missing_credentials(access_token, ad_account_id)
        if sending and missing:
            raise ConfigurationError(f"sending needs {missing}")
        self._sending = sending is not False and not missing
        # Checked here too: a client that does not send builds no transport.
        self.test_mode = _check_test_mode(test_mode)
        self.default_region = check_default_region(default_region)
        self.retry = retry if retry is not None else RetryPolicy()
        self.timeout = timeout
        self._transport_options = _transport_options(
            access_token,
            ad_account_id,
            api_url=api_url,
            test_mode=test_mode,
            timeout=timeout,
            retry=self.retry,
        )
        self._setup()
        self._resolve_account(ad_account_id, advertiser_ids)

        self.outbox, self._owns_outbox = _build_outbox(
            outbox, self._sending, max_queue_size
        )
        self._dispatcher_kind: DispatcherKind = dispatcher
        # The dispatcher itself is built at first use, when it is known
        # whether that happens in an event loop; its options are checked now.
        self._dispatcher_options = DispatcherOptions(
            batch_size=batch_size,
            flush_interval=flush_interval,
            overflow=overflow,
            block_timeout=block_timeout,
            backoff=backoff,
            max_attempts=_max_attempts(max_attempts, self.outbox),
            lease=self.retry.total_budget + 2 * timeout + 30.0,
            shutdown_timeout=shutdown_timeout,
            on_error=on_error,
            test_mode=test_mode,
        )
        if not self._sending:
            reason = "sending=False" if sending is False else f"no {missing}"
            logger.warning(NOT_SENDING_MESSAGE, reason, self.outbox)
        elif not self.outbox.durable:
            # Now: the dispatcher may first be used in a thread (Flask's
            # request threads), where no signal handler can be set.
            _shutdown.watch_sigterm()
        register_fork_aware(self)

    def _resolve_account(
        self,
        ad_account_id: str | int | None,
        advertiser_ids: Iterable[str | int] | None,
    ) -> None:
        """Set the ad account, API URL and allowed advertisers; check them."""
        self.ad_account_id: str | None = None
        self.api_url: str | None = None
        if self._sending:
            # Building the transport validates token, account, URL and timeout.
            transport = self._build_transport()
            self.ad_account_id = transport.ad_account_id
            self.api_url = transport.api_url
        elif ad_account_id is not None:
            self.ad_account_id = str(ad_account_id)
        self.advertiser_ids = _check_advertiser_ids(advertiser_ids, self.ad_account_id)

    def _setup(self) -> None:
        self._lock = threading.RLock()
        self._transport: Transport | None = None
        self._test_transport: Transport | None = None
        self._dispatcher: _Dispatcher | None = None
        # Whether the track endpoints started delivery in this process (see
        # `_start_delivery_once`); a forked child starts its own.
        self._endpoints_started = False

    def _after_fork_in_child(self) -> None:
        # The dispatcher rebuilds itself; the parent's connections are left alone.
        abandon(self._transport, self._test_transport)
        dispatcher = self._dispatcher
        self._setup()
        self._dispatcher = dispatcher

    def __repr__(self) -> str:
        return (
            f"Client(ad_account_id={self.ad_account_id!r}, "
            f"sending={self._sending}, test_mode={self.test_mode}, "
            f"outbox={self.outbox!r}, dispatcher={self._dispatcher_kind!r})"
        )

    @classmethod
    def from_env(cls, **overrides: Any) -> Client:
        """Build a client from the environment; keyword arguments win.

        Reads `PINTEREST_ACCESS_TOKEN`, `PINTEREST_AD_ACCOUNT_ID`,
        `PINTEREST_API_URL`, `PINTEREST_TEST_MODE` (1/true/yes/on or
        0/false/no/off), `PINTEREST_OUTBOX` (a path for a SQLite outbox),
        `PINTEREST_ADVERTISER_IDS` (comma-separated ad accounts a request
        body may name) and `PINTEREST_DEFAULT_REGION` (for phone numbers
        written without a country code, such as `US`).
        """
        advertiser_ids = os.environ.get(_ENV_ADVERTISER_IDS, "")
        options: dict[str, Any] = {
            "access_token": os.environ.get(_ENV_TOKEN) or None,
            "ad_account_id": os.environ.get(_ENV_AD_ACCOUNT) or None,
            "api_url": os.environ.get(_ENV_API_URL) or None,
            "test_mode": env_flag(_ENV_TEST_MODE),
            "outbox": os.environ.get(_ENV_OUTBOX) or None,
            "advertiser_ids": [
                entry.strip() for entry in advertiser_ids.split(",") if entry.strip()
            ]
            or None,
            "default_region": os.environ.get(_ENV_DEFAULT_REGION) or None,
        }
        options.update(overrides)

        return cls(**options)

    # --- state ---

    @property
    def is_sending(self) -> bool:
        """Whether events are sent (False: only validated, hashed and stored)."""
        return self._sending

    @property
    def counters(self) -> Counters:
        """What this process's dispatcher did: accepted, sent, processed, ..."""
        dispatcher = self._dispatcher
        if dispatcher is None:
            return Counters(queue_depth=self.outbox.depth())
        return dispatcher.counters

    @property
    def _delivery_problem(self) -> str | None:
        """Why delivery is stalled (see `/health`); None when it is not."""
        dispatcher = self._dispatcher
        return None if dispatcher is None else dispatcher._delivery_problem

    async def acounters(self) -> Counters:
        """`counters` for async code: a durable outbox is read in a thread."""
        if self.outbox.blocking:
            return await anyio.to_thread.run_sync(lambda: self.counters)
        return self.counters

    @property
    def transport(self) -> Transport:
        """The blocking transport, for sending and waiting for the answer.

        Raises `ConfigurationError` when the client has no credentials.
        """
        with self._lock:
            if self._transport is None:
                self._transport = self._build_transport()
            return self._transport

    def is_allowed_advertiser(self, advertiser_id: str | int) -> bool:
        """Whether a request body may carry this `advertiser_id`.

        A check of the body only: events go to `ad_account_id` either way.
        """
        return str(advertiser_id) in self.advertiser_ids

    # --- tracking ---

    def track(
        self, event: EventInput, *, context: RequestContext | None = None
    ) -> Event:
        """Validate, hash and queue one event; return it as built.

        A mapping is enriched from `context`, or from the current request
        when there is one (`pinterest_mw.context.current_context()`): the
        request's IP, user agent and click id replace the body's, and its
        page URL and language fill in when absent. A mapping without
        `action_source` is a `"web"` event, as with `build_event`. An
        `Event` is queued as it is, unless `context` is given explicitly.

        Never waits for Pinterest; with a durable outbox it returns once the
        event is on disk. When the outbox is full the overflow policy
        applies (with `"drop_newest"` the event is dropped and counted).

        Raises:
            EventValidationError: the event cannot be built.
            QueueFullError: the outbox is full and the policy is `"raise"`;
                `OutboxError`, a subclass, when the outbox failed to store
                the event. Either way it is counted `dropped`.
        """
        built = self._build(event, context, "")
        self._get_dispatcher().submit([built.to_wire_event()])

        return built

    def build(
        self, event: EventInput, *, context: RequestContext | None = None
    ) -> Event:
        """Validate, enrich and hash an event as `track` does, without queueing it.

        For code that queues with `submit`, whose return value says whether
        the queue took the event (`track` leaves that to the counters).
        `context` defaults to the current request's.

        Raises:
            EventValidationError: listing every problem, with its path.
        """
        return self._build(event, context, "")

    def track_many(
        self, events: Sequence[EventInput], *, context: RequestContext | None = None
    ) -> list[Event]:
        """Validate every event, then queue them all; like `track` for a list.

        Nothing is queued if any event is invalid: `EventValidationError`
        lists every problem, with paths starting `data.<index>.`.
        """
        built = self._build_many(events, context)
        self.submit(built)

        return built

    async def atrack(
        self, event: EventInput, *, context: RequestContext | None = None
    ) -> Event:
        """`track` for async code: a durable write runs in a worker thread."""
        built = self._build(event, context, "")
        await self._get_dispatcher().asubmit([built.to_wire_event()])

        return built

    async def atrack_many(
        self, events: Sequence[EventInput], *, context: RequestContext | None = None
    ) -> list[Event]:
        """`track_many` for async code."""
        built = self._build_many(events, context)
        await self.asubmit(built)

        return built

    def submit(self, events: Sequence[Event | WireEvent]) -> int:
        """Queue events already built; return how many were accepted.

        For callers that parse events themselves (the sub-apps). The ones
        not accepted were dropped by the overflow policy and counted.
        """
        wire = [_wire(event) for event in events]
        return self._get_dispatcher().submit(wire)

    async def asubmit(self, events: Sequence[Event | WireEvent]) -> int:
        """`submit` for async code, never blocking the loop."""
        wire = [_wire(event) for event in events]
        return await self._get_dispatcher().asubmit(wire)

    # --- sending and waiting for the answer ---

    def send(
        self,
        events: Iterable[Event | Mapping[str, Any] | WireEvent],
        *,
        test: bool | None = None,
        raise_on_error: bool = True,
    ) -> SendResult:
        """Send now, bypassing the queue, and return Pinterest's per-event results.

        For tests, the CLI and the test endpoint. See `Transport.send`.
        """
        return self.transport.send(events, test=test, raise_on_error=raise_on_error)

    async def asend(
        self,
        events: Iterable[Event | Mapping[str, Any] | WireEvent],
        *,
        test: bool | None = None,
        raise_on_error: bool = True,
    ) -> SendResult:
        """`send` for async code.

        Uses a new `AsyncTransport` per call: an async HTTP client belongs to
        one event loop, and the caller's loop may not live long.
        """
        async with self._build_async_transport() as transport:
            return await transport.send(
                events, test=test, raise_on_error=raise_on_error
            )

    # --- life cycle ---

    def start(self) -> None:
        """Start delivery now rather than at the first event.

        Delivers what a durable outbox kept from earlier runs.
        """
        if self._sending:
            self._get_dispatcher().start()

    def _start_delivery_once(self) -> None:
        """Start delivery for the track endpoints, once per process.

        At their first request (see `pinterest_app`), or when one is built
        (`_start_if_events_kept`). Only a sending client with a durable
        outbox needs it: what the outbox kept from an earlier run, or what
        another process left in it, goes out without waiting for a new event
        or a lifespan (a mounted app gets none). A memory outbox keeps
        nothing from earlier, and its delivery starts with its first event.
        After a fork, the child starts its own at its first request.
        """
        if self._endpoints_started:
            return
        self._endpoints_started = True
        if not (self._sending and self.outbox.durable):
            return
        try:
            self.start()
        except Exception:
            # Delivery starts with the next event anyway.
            logger.exception(START_FAILED_MESSAGE)

    def _start_if_events_kept(self, *, thread_only: bool) -> None:
        """When a track endpoint app is built: start delivery now if a
        durable outbox holds events of earlier runs.

        With `thread_only`, only when the dispatcher is (or will be) a
        thread, since an async one needs the server's event loop, which
        does not run yet; it starts at the first request.
        """
        if not (self._sending and self.outbox.durable):
            return
        if thread_only and not self._is_thread_dispatched():
            return
        try:
            kept = self.outbox.depth()
        except Exception:  # noqa: BLE001 - the worker logs what fails, rate-limited
            kept = 1
        if kept:
            self._start_delivery_once()

    def _is_thread_dispatched(self) -> bool:
        dispatcher = self._dispatcher
        if dispatcher is not None:
            return isinstance(dispatcher, ThreadDispatcher)
        return self._dispatcher_kind == "thread"

    def flush(self, timeout: float = 10.0) -> bool:
        """Deliver what is waiting; True if the outbox emptied within `timeout`.

        Returns False at once when nothing left can go out in time: events
        deferred past the timeout (a `Retry-After`, a long backoff) or
        delivery paused after Pinterest refused the token or ad account.
        """
        return self._get_dispatcher().flush(timeout)

    async def aflush(self, timeout: float = 10.0) -> bool:  # noqa: ASYNC109 - twin of flush(timeout)
        """`flush` for async code."""
        return await self._get_dispatcher().aflush(timeout)

    def close(self, timeout: float | None = None) -> None:
        """Flush for up to `timeout` seconds (`shutdown_timeout` by default), then stop.

        Later events are dropped and counted. The client's own outbox and
        transport are closed once the worker has stopped: a worker still
        waiting for Pinterest's answer when the timeout passes records it
        first, and they are closed as it ends. Called while another thread
        closes the client, it waits for that close to end (for up to the
        timeout and two seconds more), and the outbox and transport are
        closed only once it has.
        """
        # A dispatcher is built if none was: closed, it drops and counts
        # what comes later, where none would have started one to deliver it.
        self._get_dispatcher().close(timeout)
        self._release()

    async def aclose(self, timeout: float | None = None) -> None:  # noqa: ASYNC109 - twin of close(timeout)
        """`close` for async code."""
        await self._get_dispatcher().aclose(timeout)
        self._release()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()

    @asynccontextmanager
    async def running(self) -> AsyncIterator[Self]:
        """Deliver for the duration of the block, then flush (not close).

        What `lifespan()` uses. The client stays usable afterwards, so an
        app may start and stop several times (as tests do). An async
        dispatcher's worker is stopped at the end: a later `close()` or
        `aclose()` starts no other one to send what the flush left, but a
        later `track()` does.
        """
        dispatcher = self._get_dispatcher()
        timeout = self._dispatcher_options.shutdown_timeout
        if isinstance(dispatcher, AsyncDispatcher):
            async with dispatcher.running():
                yield self
            return
        if self._sending:
            dispatcher.start()
        try:
            yield self
        finally:
            await dispatcher.aflush(timeout)

    # --- internals ---

    def _build(
        self, event: EventInput, context: RequestContext | None, path: str
    ) -> Event:
        if isinstance(event, Event):
            if context is None:
                return event
            data: Mapping[str, Any] = event.to_wire()
        else:
            # As `build_event` does: tracked from a web app, unless it says not.
            data = {"action_source": DEFAULT_ACTION_SOURCE, **event}
            context = context if context is not None else current_context()
        if context is not None:
            data = enrich_event_data(data, context)

        return parse_event(data, default_region=self.default_region, path=path)

    def _build_many(
        self, events: Sequence[EventInput], context: RequestContext | None
    ) -> list[Event]:
        built: list[Event] = []
        errors: list[FieldError] = []
        for index, event in enumerate(events):
            try:
                built.append(self._build(event, context, f"data.{index}"))
            except EventValidationError as exc:
                errors.extend(exc.errors)
        if errors:
            raise EventValidationError(errors)

        return built

    def _get_dispatcher(self) -> _Dispatcher:
        dispatcher = self._dispatcher
        if dispatcher is not None:
            return dispatcher
        with self._lock:
            if self._dispatcher is None:
                self._dispatcher = self._build_dispatcher()
            return self._dispatcher

    def _build_dispatcher(self) -> _Dispatcher:
        kind = self._dispatcher_kind
        if kind == "auto":
            kind = "async" if _in_a_main_thread_loop() else "thread"
        options = self._dispatcher_options.as_kwargs()
        if not self._sending:
            return ThreadDispatcher(self.outbox, None, **options)
        if kind == "async":
            return AsyncDispatcher(
                self.outbox,
                self._build_async_transport,
                blocking_transport=self._transport_within,
                **options,
            )

        return ThreadDispatcher(
            self.outbox, lambda: _BorrowedTransport(self.transport), **options
        )

    def _build_transport(self) -> Transport:
        transport = self._new_transport()
        self._transport = transport

        return transport

    def _new_transport(self, **changes: Any) -> Transport:
        """A blocking transport of its own, with options `changes`; no lock taken."""
        if not self._sending:
            raise ConfigurationError(
                "this client does not send: it has no access token or ad account"
            )
        return Transport(**{**self._transport_options(), **changes})

    def _transport_within(self, seconds: float) -> Transport:
        """A blocking transport that gives up within `seconds` (the SIGTERM hook's).

        Each request's timeout and its retry budget are cut to fit: the
        budget bounds the waits between attempts, and the last attempt may
        start just before it ends, so it leaves room for one timeout.
        """
        timeout = min(self.timeout, max(seconds, _SHORTEST_TIMEOUT))
        budget = min(self.retry.total_budget, max(seconds - timeout, 0.0))
        retry = dataclasses.replace(self.retry, total_budget=budget)

        return self._new_transport(timeout=timeout, retry=retry)

    def _send_for_test_endpoint(self, events: Sequence[Event]) -> SendResult:
        """Send in test mode and wait, within `TEST_SEND_WITHIN` seconds.

        For `/track-event-test`: a developer waits for its answer, and a
        thread of the server's is held meanwhile.
        """
        with self._lock:
            if self._test_transport is None:
                self._test_transport = self._transport_within(TEST_SEND_WITHIN)
            transport = self._test_transport

        return transport.send(events, test=True, raise_on_error=False)

    def _build_async_transport(self) -> AsyncTransport:
        if not self._sending:
            raise ConfigurationError(
                "this client does not send: it has no access token or ad account"
            )
        return AsyncTransport(**self._transport_options())

    def _release(self) -> None:
        """Close the transports and an outbox of the client's own, once
        neither the worker nor the dispatcher's first `close()` uses them
        any more (see `close`).
        """
        dispatcher = self._dispatcher
        if dispatcher is None:
            self._release_now()
        else:
            dispatcher._after_close(self._release_now)

    def _release_now(self) -> None:
        with self._lock:
            transports = [self._transport, self._test_transport]
            self._transport = self._test_transport = None
        try:
            for transport in transports:
                if transport is not None:
                    transport.close()
            if self._owns_outbox:
                self.outbox.close()
        except Exception:
            logger.exception(RELEASE_FAILED_MESSAGE)


def lifespan(
    client: Client | None = None,
) -> Callable[[Any], AbstractAsyncContextManager[None]]:
    """A Starlette or FastAPI lifespan that starts delivery and flushes at shutdown.

    `client` defaults to `get_default_client()`, looked up when the app
    starts. Without it, a mounted sub-app still delivers (from the first
    event; with a sending client and a durable outbox, also from its first
    request, which sends what the outbox kept from an earlier run), and at
    SIGTERM a hook delivers what is queued in memory. Two
    windows are left there: what a durable outbox kept waits for the app's
    first request; and under uvicorn, events accepted during its graceful
    shutdown (by requests still being answered) are sent at once but not
    waited for, since uvicorn then ends the process with SIGTERM; a request
    to Pinterest still under way is lost with them (logged at ERROR). The
    lifespan starts delivery at start-up and flushes after the last
    request, which closes both, as does a durable outbox the second (the
    next process sends what is left).

    To combine it with a lifespan of your own, enter the client's
    `running()` inside it:

    ```python
    app = Starlette(lifespan=lifespan(client))


    @asynccontextmanager
    async def app_lifespan(app):
        async with client.running():
            yield
    ```
    """

    @asynccontextmanager
    async def run(app: Any) -> AsyncIterator[None]:
        running = client if client is not None else get_default_client()
        async with running.running():
            yield

    return run


# --- the process-wide default ---------------------------------------------------

_default_client: Client | None = None
_default_lock = threading.Lock()


def _new_default_lock() -> None:
    global _default_lock
    _default_lock = threading.Lock()


fresh_after_fork(_new_default_lock)


def get_default_client() -> Client:
    """The process's client, built from the environment at the first call.

    After a fork the same object is returned; its dispatcher, transports and
    outbox connections rebuild themselves in the child.
    """
    global _default_client
    client = _default_client
    if client is not None:
        return client
    with _default_lock:
        if _default_client is None:
            _default_client = Client.from_env()
        return _default_client


def set_default_client(client: Client | None) -> None:
    """Make `client` the default (None: build from the environment next time)."""
    global _default_client
    with _default_lock:
        _default_client = client


# --- option checks -------------------------------------------------------------


def _transport_options(
    access_token: str | None, ad_account_id: str | int | None, **options: Any
) -> Callable[[], dict[str, Any]]:
    """The transports' arguments, behind a closure.

    Kept out of any attribute or `repr` of the client: the token only lives
    in the closure and, once built, in the transport's request headers.
    """

    def arguments() -> dict[str, Any]:
        return {"access_token": access_token, "ad_account_id": ad_account_id, **options}

    return arguments


def _missing_credentials(access_token: str | None, ad_account_id: object) -> str:
    missing = [
        name
        for name, value in (
            ("access token", access_token),
            ("ad account id", ad_account_id),
        )
        if value is None or value == ""
    ]
    return " and ".join(missing)


def _check_advertiser_ids(
    advertiser_ids: Iterable[str | int] | None, own: str | None
) -> frozenset[str]:
    if advertiser_ids is None:
        return frozenset({own} if own else ())
    ids = frozenset(str(a) for a in advertiser_ids)
    if not all(a.isascii() and a.isdigit() and len(a) <= 18 for a in ids):
        raise ConfigurationError(
            "advertiser_ids must be ad account ids of 1 to 18 digits"
        )

    return ids


def _in_a_main_thread_loop() -> bool:
    """Whether an asyncio loop runs here, in the main thread (an ASGI server).

    Loops elsewhere (asgiref's per-request loop under Flask, the portal of
    Starlette's `TestClient`) may end with the request: a worker task in
    them would end too.
    """
    in_main = threading.current_thread() is threading.main_thread()
    return in_main and _running_asyncio_loop() is not None


def _build_outbox(
    outbox: Outbox | str | os.PathLike[str] | None,
    sending: bool,
    max_events: int | None,
) -> tuple[Outbox, bool]:
    """The outbox to use, and whether the client owns (and closes) it."""
    if max_events is not None and max_events < 1:
        raise ConfigurationError("max_queue_size must be at least 1")
    if isinstance(outbox, Outbox):
        return outbox, False
    if outbox is None and sending and not DEFAULT_OUTBOX_PATH.is_file():
        return MemoryOutbox(max_events or MEMORY_MAX_EVENTS), True
    if outbox is None:
        if sending:
            logger.info(KEPT_OUTBOX_MESSAGE, DEFAULT_OUTBOX_PATH)
        outbox = DEFAULT_OUTBOX_PATH
    if not isinstance(outbox, str | os.PathLike):
        raise ConfigurationError("outbox must be None, a path or an Outbox")

    return SQLiteOutbox(outbox, max_events or SQLITE_MAX_EVENTS), True


def _max_attempts(value: int | Literal["auto"] | None, outbox: Outbox) -> int | None:
    if value == "auto":
        return None if outbox.durable else DEFAULT_MEMORY_MAX_ATTEMPTS
    return value


def _wire(event: Event | WireEvent) -> WireEvent:
    return event if isinstance(event, WireEvent) else event.to_wire_event()
