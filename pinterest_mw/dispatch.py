"""Background delivery: from the outbox to Pinterest in batches, off the request path.

A dispatcher takes serialized events (`submit`), stores them in an outbox
and returns at once; a worker claims batches of up to `batch_size` events
and sends them, when a batch is full or when `flush_interval` seconds have
passed. Two dispatchers share one interface:

- `ThreadDispatcher`: a daemon thread and a blocking `Transport`. Works
  everywhere: WSGI apps, scripts, workers, and async apps too.
- `AsyncDispatcher`: a task in the running event loop and an
  `AsyncTransport`, for ASGI servers. It needs no lifespan: it starts in
  the loop of the first `asubmit` (or `submit` from a thread of that loop's
  thread pool), and when that loop goes away (Starlette's `TestClient`
  without `with` runs each request in a new loop) the next call starts it
  again in the current one. Calls from threads that belong to no loop start
  it in a private thread with its own loop. `running()` starts it inside a
  task group instead, which is also the way to run it on trio. Once told
  to stop (`running()` ended, `close()`), neither `flush` nor `close`
  starts it again, and it claims no further batch.

What happens to a batch depends on Pinterest's answer:

- processed (with or without a warning): the event is deleted;
- taken (2xx) without a result for the event: it is deleted, not resent
  (Pinterest may have recorded it), and counted `unconfirmed`;
- the event failed (in a 200 or a 422): kept as rejected, with Pinterest's
  message;
- the request was refused (400, 404, ...): all its events are kept as
  rejected with the status, and an ERROR is logged;
- 401 or 403: Pinterest refused the token or the ad account, which says
  nothing about the events. They are deferred, and the whole queue pauses
  (no request at all) for a backoff that grows while the refusals go on;
  one ERROR per pause and the `account_refusals` counter say so;
- 429, 5xx or a network failure, after the transport's own retries: the
  events are deferred, and retried after an exponential backoff (stored
  with them, so it survives a restart with a durable outbox).

An event is deleted only after Pinterest answered for it, so none is lost:
delivery is at least once. A batch whose answer never arrived is sent
again, although Pinterest may have processed it: after a read timeout or a
lost connection once the request was sent (by the transport's retries, or
a later delivery), and when the process sending it was killed or its loop
cancelled before the answer was recorded (a `SQLiteOutbox` hands such a
batch back at once when the process is known to be gone, else when its
lease expires). The repeat keeps its `event_id`, by which Pinterest
de-duplicates web and app events; offline events are not de-duplicated
(Pinterest documents this against its tag's copy of an event, and says
nothing either way of two API copies).
After `max_attempts` deliveries an event is given up: kept as rejected in
a durable outbox, dropped with an ERROR otherwise.

Each event is stored with the dispatcher's `test_mode` and sent in it, so
that what a test-mode client kept never goes out live, nor the reverse.

When the outbox is full the overflow policy applies: `"drop_newest"` (the
default: the events that do not fit are dropped, with a WARNING and the
`dropped` counter), `"block"` (wait up to `block_timeout` for room, then
drop), or `"raise"` (`QueueFullError`, nothing of the call stored). The
policy applies whether or not the dispatcher sends. An outbox that fails to
store events (a disk full, a file locked past its busy timeout) drops them
with an ERROR; under `"raise"`, `OutboxError` (a `QueueFullError`) says so
to the caller. Events refused under `"raise"` are counted `dropped` too.

Every accepted event ends up `processed`, `unconfirmed` (Pinterest took
the request without a result for it: not resent), `failed` (rejected) or
`dropped` in the counters, each with a log line, or stays in the outbox: at
`close()` a memory outbox's leftovers, a batch still in flight included,
are counted dropped (a late answer for that batch is not counted again); a
durable outbox keeps them for the next run. An event is either stored
before `close()` stops the dispatcher, and counted there, or refused as
closed. The first `close()` does the closing; concurrent calls wait for it
to end (for up to their own timeout and a little more).

An outbox that cannot be read (a damaged file) pauses delivery with the
same growing backoff as a failed delivery: one ERROR per
`DROP_LOG_INTERVAL` and the `outbox_errors` counter say so, and the
`/health` endpoints answer `"degraded"` until a read succeeds.

`flush(timeout)` waits for what can go out before the timeout: it returns
False at once when all that is left is deferred past it (a long backoff or
`Retry-After`) or delivery is paused past it.

Fork safety: in a forked child (gunicorn with `--preload`) the dispatcher
starts over with new threads, locks and HTTP clients; a `MemoryOutbox`
starts empty there, and a `SQLiteOutbox`'s leases keep parent and child
from sending the same event.

Shutdown: at interpreter exit, every dispatcher flushes for up to
`shutdown_timeout` seconds. SIGTERM skips that unless something in Python
handles it, so a sending dispatcher over a non-durable outbox installs a
SIGTERM hook when built or started in the main thread: it delivers what
is queued before the process ends, within `shutdown_timeout`, and what it
could not deliver by then is logged at ERROR (and counted dropped when the
process ends next); see `pinterest_mw._shutdown` for how, and for the
window it leaves under uvicorn.

Privacy: log records and `Counters` hold counts, statuses and durations;
never payloads, user data or tokens. `DeliveryFailure` passes event ids and
Pinterest's reasons to the `on_error` callback, never payloads.

Loggers: `pinterest_mw.dispatch` logs each batch at DEBUG, deferrals and
drops at WARNING, rejected requests, account refusals, unstorable and lost
events and unreadable outboxes at ERROR. Drop, storage-failure and
read-failure lines are rate-limited (one per `DROP_LOG_INTERVAL`, with the
count held back, and the rest at close). The messages are the module's
`*_LOG` constants.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import random
import threading
import time
import weakref
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, fields
from typing import Any, Literal, Protocol, TypeVar

import anyio
import anyio.from_thread
import anyio.to_thread

from . import _shutdown
from ._fork import register_fork_aware
from .events import WireEvent
from .exceptions import (
    APIError,
    ConfigurationError,
    OutboxError,
    QueueFullError,
    TransportError,
)
from .outbox import Claim, Outbox, OutboxItem
from .transport import MAX_BATCH_SIZE, EventResult, EventStatus

__all__ = [
    "AsyncDispatcher",
    "AsyncSender",
    "Counters",
    "DeliveryBackoff",
    "DeliveryFailure",
    "Dispatcher",
    "OverflowPolicy",
    "Sender",
    "ThreadDispatcher",
]

logger = logging.getLogger(__name__)

_T = TypeVar("_T")

OverflowPolicy = Literal["drop_newest", "block", "raise"]
_POLICIES: tuple[OverflowPolicy, ...] = ("drop_newest", "block", "raise")

DROP_LOG_INTERVAL = 10.0
"""Seconds between two log lines about dropped (or unstorable) events.

The counts of the lines suppressed meanwhile go into the next line, and what
is still unreported at `close()` into a last one, so the logged counts add
up to the `dropped` counter.
"""

_POLL_INTERVAL = 0.01
_GATE_POLL_INTERVAL = 0.001

# How long close() waits for stores into a memory outbox under way (each
# is a few microseconds, unless the thread doing it is not scheduled).
_GATE_WAIT = 1.0
# How long a later close() waits, past its own timeout, for the first one
# to end: its wait for the worker and for the stores under way.
_LATER_CLOSE_WAIT = 2.0
# How long the SIGTERM hook waits, once its deadline has passed, for a
# lock or a store that the code it interrupted (in the same thread or
# another) may hold; it goes on without it then.
_SIGNAL_WAIT = 0.5

GAVE_UP = "gave up after"
"""How the reason of an event given up after its last attempt begins."""

ACCOUNT_REFUSED_STATUSES = frozenset({401, 403})
"""Statuses that refuse the token or ad account, not the events themselves."""

# Log messages, as constants so that tests can assert them. None of them
# takes a payload, user data or the token: counts, statuses and reasons only.
DROPPED_LOG = "dropped %d events: %s (overflow policy %r)"
DROPPED_UNREPORTED_LOG = (
    "dropped %d more events since the last report (overflow policy %r)"
)
STORE_FAILED_LOG = (
    "could not store %d events in the outbox (%d failed writes since the "
    "last report); they are dropped"
)
ACCOUNT_REFUSED_LOG = (
    "Pinterest refused the access token or ad account (%s): delivery is "
    "paused for %.3g s and %d events are kept for a later attempt"
)
DEFERRED_LOG = "delivery of %d events failed (%s); they will be retried"
LOST_LOG = "%d events are lost: %s"
GAVE_UP_LOG = "%d events were given up and kept in the outbox as rejected: %s"
REFUSED_LOG = (
    "Pinterest refused a request of %d events (%s); they are kept in the "
    "outbox as rejected"
)
REJECTED_LOG = (
    "Pinterest rejected %d events; they are kept in the outbox with their reasons"
)
CLOSED_KEPT_LOG = (
    "closing with %d events not yet delivered; they stay in the outbox for the next run"
)
CLOSED_LOST_LOG = (
    "closing with %d events not delivered (%d of them in flight, their "
    "answer unknown); they are counted as dropped"
)
CLAIM_FAILED_LOG = (
    "could not read the outbox (%d failed reads since the last report); "
    "delivery pauses for %.3g s"
)
RELEASE_FAILED_LOG = "could not hand back %d events"
DEPTH_FAILED_LOG = "could not read the outbox depth at close"
NO_TRANSPORT_LOG = "could not build the transport; nothing is sent"
TRANSPORT_CLOSE_FAILED_LOG = "closing the transport failed"
ON_ERROR_FAILED_LOG = "the on_error callback raised"
BATCH_LOG = (
    "batch of %d events: %d processed, %d unconfirmed, %d rejected, "
    "%d deferred, %d dropped"
)
SEND_FAILED_LOG = "sending %d events failed unexpectedly"
RECORD_FAILED_LOG = "could not record the outcome of %d events"
LATE_BATCH_LOG = (
    "a batch of %d events was answered after close; they were already "
    "counted as dropped"
)
SIGNAL_UNDELIVERED_LOG = (
    "%d events were not delivered within the SIGTERM deadline (%.3g s); "
    "they are retried while the process runs, and lost if it ends first"
)

CLOSED_REASON = "the dispatcher is closed"
OUTBOX_FULL_REASON = "the outbox is full"

OUTBOX_UNREADABLE = "the outbox cannot be read: nothing is delivered"
OUTBOX_UNWRITABLE = "the outbox cannot store events: they are dropped"
ACCOUNT_REFUSED = "Pinterest refuses the access token or ad account"


class Sender(Protocol):
    """What `ThreadDispatcher` sends with: `Transport` fits."""

    def send_batch(
        self, batch: Sequence[WireEvent], *, test: bool | None = None
    ) -> list[EventResult]:
        """Send one request; return one result per event, or raise."""
        ...

    def close(self) -> None:
        """Release the connections."""
        ...


class AsyncSender(Protocol):
    """What `AsyncDispatcher` sends with: `AsyncTransport` fits."""

    async def send_batch(
        self, batch: Sequence[WireEvent], *, test: bool | None = None
    ) -> list[EventResult]:
        """Send one request; return one result per event, or raise."""
        ...

    async def aclose(self) -> None:
        """Release the connections."""
        ...


@dataclass(frozen=True, slots=True)
class Counters:
    """A snapshot of what a dispatcher did in this process.

    - `accepted`: events stored in the outbox by `submit`;
    - `sent`: event deliveries attempted (an event retried counts again);
    - `processed`: events Pinterest accepted (`warned` included);
    - `warned`: events Pinterest accepted with a warning;
    - `failed`: events Pinterest refused, kept as rejected with the reason;
    - `unconfirmed`: events of a request Pinterest took (2xx) without a
      result for them: it may or may not have recorded them, and they are
      not resent, lest it count them twice (`EventStatus.UNCONFIRMED`);
    - `retried`: deliveries deferred for another attempt after a failure;
    - `dropped`: events not accepted because the outbox was full, could
      not store them or the dispatcher closed (under the `"raise"` policy
      too, where the caller got `QueueFullError`); events given up (lost)
      after their last attempt; events left in a memory outbox at
      `close()`;
    - `account_refusals`: requests Pinterest refused for the token or the
      ad account (401, 403), each of which paused delivery;
    - `outbox_errors`: reads and writes of the outbox that failed (a
      failed claim pauses delivery; events that could not be stored are
      counted `dropped` too);
    - `queue_depth`: events in the outbox waiting for delivery (in every
      process sharing a durable outbox).

    Every accepted event ends up counted once as `processed`,
    `unconfirmed`, `failed` or `dropped`, or is still in the outbox
    (`queue_depth`).
    """

    accepted: int = 0
    sent: int = 0
    processed: int = 0
    warned: int = 0
    failed: int = 0
    unconfirmed: int = 0
    retried: int = 0
    dropped: int = 0
    account_refusals: int = 0
    outbox_errors: int = 0
    queue_depth: int = 0

    def as_dict(self) -> dict[str, int]:
        """The counters as a plain dict, for a health endpoint."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass(frozen=True, slots=True)
class DeliveryBackoff:
    """How long a failed delivery waits before its next attempt.

    The wait before attempt n + 1 is `initial * multiplier ** (n - 1)`,
    capped at `maximum`, of which a share `jitter` is random. A
    `Retry-After` from Pinterest is a floor. These waits come on top of the
    transport's own retries within one delivery (`RetryPolicy`).
    """

    initial: float = 5.0
    maximum: float = 300.0
    multiplier: float = 2.0
    jitter: float = 0.2

    def __post_init__(self) -> None:
        numbers = (self.initial, self.maximum)
        if not all(math.isfinite(n) and n >= 0 for n in numbers):
            raise ConfigurationError(
                "DeliveryBackoff initial and maximum must be finite and not negative"
            )
        if not math.isfinite(self.multiplier) or self.multiplier < 1:
            raise ConfigurationError("DeliveryBackoff.multiplier must be at least 1")
        if not 0 <= self.jitter <= 1:
            raise ConfigurationError("DeliveryBackoff.jitter must be between 0 and 1")

    def delay(self, attempts: int, retry_after: float | None = None) -> float:
        """The wait after `attempts` failed deliveries (from 1), jitter applied."""
        exponent = min(max(attempts - 1, 0), 64)
        base = min(self.maximum, self.initial * self.multiplier**exponent)
        spread = base * self.jitter
        wait = base - spread + spread * random.random()  # noqa: S311 - jitter, not a secret

        return max(wait, retry_after or 0.0)


@dataclass(frozen=True, slots=True)
class DeliveryFailure:
    """What the `on_error` callback is told when a delivery did not succeed.

    `outcome` is `"rejected"` (kept in the outbox with `reason`),
    `"deferred"` (to be retried; also after a 401 or 403, which pauses
    delivery) or `"dropped"` (given up, lost). `error` is the request-level
    error, when there was one. The callback runs once the outcome is
    recorded in the outbox. No payload and no user data is passed.
    """

    outcome: Literal["rejected", "deferred", "dropped"]
    event_ids: tuple[str, ...]
    reason: str
    error: Exception | None = None


class Dispatcher(Protocol):
    """The interface both dispatchers share."""

    outbox: Outbox

    @property
    def is_sending(self) -> bool:
        """Whether events are sent (False: only stored in the outbox)."""
        ...

    @property
    def counters(self) -> Counters:
        """A snapshot of the counters."""
        ...

    def submit(self, events: Sequence[WireEvent]) -> int:
        """Store events for delivery; return how many were accepted."""
        ...

    async def asubmit(self, events: Sequence[WireEvent]) -> int:
        """`submit` for async callers, never blocking the event loop."""
        ...

    def flush(self, timeout: float = ...) -> bool:
        """Deliver what is waiting; True if the outbox emptied in time."""
        ...

    async def aflush(self, timeout: float = ...) -> bool:  # noqa: ASYNC109 - twin of flush(timeout)
        """`flush` for async callers."""
        ...

    def close(self, timeout: float | None = None) -> None:
        """Flush, stop the worker, refuse later events."""
        ...

    async def aclose(self, timeout: float | None = None) -> None:  # noqa: ASYNC109 - twin of close(timeout)
        """`close` for async callers."""
        ...


# --- shared machinery ----------------------------------------------------------


class _CounterSet:
    """Thread-safe running totals behind `Counters`.

    Its lock is reentrant: a SIGTERM handler may count in the main thread
    while the code it interrupted there holds it (see `_shutdown`).
    """

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._values = dict.fromkeys(
            (f.name for f in fields(Counters) if f.name != "queue_depth"), 0
        )

    def add(self, **amounts: int) -> None:
        with self._lock:
            for name, amount in amounts.items():
                self._values[name] += amount

    def snapshot(self, queue_depth: int) -> Counters:
        with self._lock:
            return Counters(queue_depth=queue_depth, **self._values)


@dataclass(slots=True)
class _Settlement:
    """What to do with the events of one claim after its delivery."""

    completed: list[int] = field(default_factory=list)
    rejected: dict[int, str] = field(default_factory=dict)
    deferred: dict[int, float] = field(default_factory=dict)
    dropped: list[int] = field(default_factory=list)
    defer_reason: str = ""
    warned: int = 0
    # Of `completed`: taken by Pinterest without a result (not resent).
    unconfirmed: int = 0
    failures: list[DeliveryFailure] = field(default_factory=list)
    # Seconds delivery pauses for, when Pinterest refused the token or
    # ad account (0: it did not).
    paused_for: float = 0.0

    @property
    def leaving(self) -> int:
        """Events that writing the plan takes out of the outbox's depth."""
        return len(self.completed) + len(self.dropped) + len(self.rejected)


class _LogLimiter:
    """Lets one log line through per interval and keeps count of the rest.

    `add` returns what to report now, as (events, calls): this call's and
    those held back since the last line, or (0, 0) while the interval runs.
    `take` returns what is still unreported, for a last line at close.
    Reentrant, as `_CounterSet` is.
    """

    def __init__(self, interval: float) -> None:
        self._interval = interval
        self._lock = threading.RLock()
        self._unreported = 0
        self._calls = 0
        self._reported_at = -math.inf

    def add(self, count: int) -> tuple[int, int]:
        """Count `count` more; return (count, calls) to report now, or (0, 0)."""
        now = time.monotonic()
        with self._lock:
            self._unreported += count
            self._calls += 1
            if now - self._reported_at < self._interval:
                return 0, 0
            self._reported_at = now
            return self._take()

    def take(self) -> tuple[int, int]:
        """What is unreported: (count, calls); both reset to 0."""
        with self._lock:
            return self._take()

    def _take(self) -> tuple[int, int]:
        reported = (self._unreported, self._calls)
        self._unreported = self._calls = 0

        return reported


class _WhenDone:
    """Callbacks to run once something has ended: at once if it already has.

    For what must wait for a worker, or for the first `close()`, to end:
    closing the outbox and the transport they use, say.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ended = threading.Event()
        self._callbacks: list[Callable[[], None]] = []

    def add(self, callback: Callable[[], None]) -> None:
        with self._lock:
            if not self._ended.is_set():
                self._callbacks.append(callback)
                return
        callback()

    def finish(self) -> None:
        """Mark it ended; run the callbacks waiting, here, in order."""
        with self._lock:
            self._ended.set()
            callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            callback()

    def wait(self, timeout: float) -> bool:
        """Wait up to `timeout` seconds for the end; whether it came."""
        return self._ended.wait(timeout)


class _Closing:
    """A dispatcher's way from open to closed: steps taken once, in order.

    1. stopped (`stop`): events are refused from here on, the worker stops
       and flushes return. A store into a memory outbox that began before
       is let through and waited for (`enter`, `wait_for_stores`), so that
       each accepted event is in the count of what is left, or refused.
    2. counted (`claim_count`, then `end_count`): what is left is counted
       (and logged), once. From the moment a memory outbox's leftovers are
       read (`leftovers_read`), no batch is claimed, and a late answer for
       one in flight is not counted again.
    3. done (`claim_close`, then `done.finish()`): the first `close()` has
       ended; later calls wait for it, and what waits for it (the client
       closing its outbox) runs then.

    The SIGTERM hook takes steps 1 and 2 only: the process ends next.
    Nothing on the way of a store or of the hook waits for a lock, since
    the hook may interrupt any code in the main thread, and must neither
    wait for it nor meet a lock it holds: setting or reading a flag, and
    appending to or removing from a deque, are atomic under the GIL, every
    flag is only ever set, and a claim is a lock taken without waiting and
    never given back. A store registers itself before it reads `stopped`,
    and `wait_for_stores` looks for stores after `stopped` was set, so one
    of the two always sees the other.
    """

    def __init__(self, *, closed: bool = False) -> None:
        self.stopped = False
        self.leftovers_read = False
        self.count_ended = False
        self.done = _WhenDone()
        self._close_claim = threading.Lock()
        self._count_claim = threading.Lock()
        self._counting_in: int | None = None
        self._passing: deque[object] = deque()
        if closed:
            self.stop()
            self.claim_close()
            self.claim_count()
            self.leftovers_read = self.count_ended = True
            self.done.finish()

    def in_child(self) -> _Closing:
        """This state in a forked child: closed stays closed, the rest starts over."""
        return _Closing(closed=self.stopped)

    def stop(self) -> None:
        self.stopped = True

    def enter(self) -> object | None:
        """Register a store; None (nothing registered) once stopped."""
        token = object()
        self._passing.append(token)
        if not self.stopped:
            return token
        self._passing.remove(token)
        return None

    def leave(self, token: object) -> None:
        self._passing.remove(token)

    def wait_for_stores(self, wait: float) -> None:
        """Wait up to `wait` seconds for the stores that began before the stop."""
        deadline = time.monotonic() + wait
        while self._passing and time.monotonic() < deadline:
            time.sleep(_GATE_POLL_INTERVAL)

    def claim_close(self) -> bool:
        """Whether the caller is the first to close (it calls `done.finish()`)."""
        return self._close_claim.acquire(blocking=False)

    def claim_count(self, *, take_over_after: float | None = None) -> bool:
        """Whether the caller counts what is left: the first caller does.

        With `take_over_after` (the SIGTERM hook's, the process ending
        next), also when the count claimed earlier runs in this thread
        (code the handler interrupted, which never resumes), or has not
        ended after that many seconds.
        """
        me = threading.get_ident()
        if self._count_claim.acquire(blocking=False):
            self._counting_in = me
            return True
        if take_over_after is None:
            return False
        deadline = time.monotonic() + take_over_after
        while (
            self._counting_in != me
            and not self.count_ended
            and time.monotonic() < deadline
        ):
            time.sleep(_GATE_POLL_INTERVAL)

        return not self.count_ended

    def end_count(self) -> None:
        self.count_ended = True


class _ClosedError(Exception):
    """A store refused because the dispatcher is stopped.

    `stored` events of the call went in before (under `"block"`, which
    stores a call's events as room comes).
    """

    def __init__(self, stored: int = 0) -> None:
        super().__init__(stored)
        self.stored = stored


def _describe(error: BaseException) -> str:
    """A reason for a failed request: status and Pinterest's words, or a class."""
    if isinstance(error, APIError):
        text = f"HTTP {error.status_code}"
        if error.code is not None:
            text += f" (code {error.code})"
        if error.message:
            text += f": {error.message}"
        return text
    if isinstance(error, TransportError):
        # The transport's messages name the failure, never the URL or body.
        return str(error)

    return type(error).__name__


def _is_refusal(error: BaseException) -> bool:
    """Whether Pinterest refused the request in a way a resend cannot fix."""
    return isinstance(error, APIError) and not error.is_retryable


def _is_account_refusal(error: BaseException | None) -> bool:
    """Whether Pinterest refused the token or ad account, not the events.

    Such a refusal (401, 403) holds for every event until someone fixes the
    credentials or permissions, so the events wait rather than being
    rejected one batch after another.
    """
    return isinstance(error, APIError) and error.status_code in ACCOUNT_REFUSED_STATUSES


def _check_positive(name: str, value: float, *, allow_zero: bool = False) -> None:
    ok = math.isfinite(value) and (value >= 0 if allow_zero else value > 0)
    if not ok:
        rule = "zero or more" if allow_zero else "more than zero"
        raise ConfigurationError(f"{name} must be a finite number, {rule}")


def _check_options(
    *,
    batch_size: int,
    flush_interval: float,
    overflow: str,
    block_timeout: float,
    max_attempts: int | None,
    lease: float,
    shutdown_timeout: float,
) -> None:
    """Raise `ConfigurationError` for an unusable dispatcher option."""
    if not 1 <= batch_size <= MAX_BATCH_SIZE:
        raise ConfigurationError(f"batch_size must be between 1 and {MAX_BATCH_SIZE}")
    if overflow not in _POLICIES:
        raise ConfigurationError(
            "overflow must be one of " + ", ".join(repr(p) for p in _POLICIES)
        )
    if max_attempts is not None and max_attempts < 1:
        raise ConfigurationError("max_attempts must be at least 1, or None")
    _check_positive("flush_interval", flush_interval)
    _check_positive("lease", lease)
    _check_positive("block_timeout", block_timeout, allow_zero=True)
    _check_positive("shutdown_timeout", shutdown_timeout, allow_zero=True)


@dataclass(frozen=True, slots=True)
class DispatcherOptions:
    """A dispatcher's options, checked when built (see `ThreadDispatcher`).

    What the client keeps until it builds its dispatcher at first use; the
    dispatchers take the same names as keyword arguments.

    Raises:
        ConfigurationError: for an unusable value.
    """

    batch_size: int = MAX_BATCH_SIZE
    flush_interval: float = 1.0
    overflow: OverflowPolicy = "drop_newest"
    block_timeout: float = 1.0
    backoff: DeliveryBackoff | None = None
    max_attempts: int | None = None
    lease: float = 300.0
    shutdown_timeout: float = 5.0
    on_error: Callable[[DeliveryFailure], None] | None = None
    test_mode: bool | None = None

    def __post_init__(self) -> None:
        _check_options(
            batch_size=self.batch_size,
            flush_interval=self.flush_interval,
            overflow=self.overflow,
            block_timeout=self.block_timeout,
            max_attempts=self.max_attempts,
            lease=self.lease,
            shutdown_timeout=self.shutdown_timeout,
        )

    def as_kwargs(self) -> dict[str, Any]:
        """The options as keyword arguments for a dispatcher."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


class _BaseDispatcher:
    """Storage, overflow policy, outcome handling and counters, for both dispatchers."""

    def __init__(
        self,
        outbox: Outbox,
        transport: Callable[[], object] | None,
        options: DispatcherOptions,
    ) -> None:
        self.outbox = outbox
        self._make_sender = transport
        self.batch_size = options.batch_size
        self.flush_interval = options.flush_interval
        self.overflow = options.overflow
        self.block_timeout = options.block_timeout
        self.backoff = (
            options.backoff if options.backoff is not None else DeliveryBackoff()
        )
        self.max_attempts = options.max_attempts
        self.lease = options.lease
        self.shutdown_timeout = options.shutdown_timeout
        self.on_error = options.on_error
        self.test_mode = options.test_mode
        self._closing = _Closing()
        self._setup_shared()
        register_fork_aware(self)
        _shutdown.register(self)
        self._watch_sigterm()

    def _setup_shared(self) -> None:
        self._counters = _CounterSet()
        self._drop_log = _LogLimiter(DROP_LOG_INTERVAL)
        self._store_failure_log = _LogLimiter(DROP_LOG_INTERVAL)
        self._claim_failure_log = _LogLimiter(DROP_LOG_INTERVAL)
        self._fresh = 0
        # Held while a batch's outcome is counted and written, and while
        # close() reads what is left, so that no event is counted twice.
        # Not reentrant: a SIGTERM handler that interrupted a settle in its
        # own thread must not read the outbox halfway through it (see
        # `_read_leftovers`).
        self._settle_lock = threading.Lock()
        # Events a settle under way counted, and has yet to take out of the
        # outbox (see `_settle`).
        self._unwritten = 0
        # Set while the outbox fails: the last claim, or the last store.
        self._claim_failures = 0
        self._store_failing = False
        self._in_flight = 0
        # The batch being sent, if any, for a SIGTERM to take over.
        self._current: Claim | None = None
        # After a SIGTERM under a server that goes on: wake at every event.
        self._prompt = False
        # After Pinterest refused the token or ad account: no claim before
        # this (monotonic) time; the streak makes the pauses grow.
        self._paused_until = -math.inf
        self._refusal_streak = 0
        # Per event loop: the asubmit calls waiting for the outbox write in
        # flight there (see `_accept_grouped`).
        self._write_groups: weakref.WeakKeyDictionary[
            asyncio.AbstractEventLoop, _WriteGroup
        ] = weakref.WeakKeyDictionary()

    def _after_fork_in_child(self) -> None:
        self._closing = self._closing.in_child()
        self._setup_shared()

    @property
    def is_sending(self) -> bool:
        """Whether events are sent (False: they are only kept in the outbox)."""
        return self._make_sender is not None

    @property
    def counters(self) -> Counters:
        """A snapshot of the counters; `queue_depth` is read from the outbox."""
        return self._counters.snapshot(self.outbox.depth())

    @property
    def _closed(self) -> bool:
        """Whether events are refused: `close()` or SIGTERM stopped the dispatcher."""
        return self._closing.stopped

    @property
    def _needs_signal_delivery(self) -> bool:
        """Whether a SIGTERM would lose events: sending, open, not durable."""
        return self.is_sending and not self._closed and not self.outbox.durable

    def _watch_sigterm(self) -> None:
        """Have the SIGTERM hook installed, if this dispatcher needs it."""
        if self._needs_signal_delivery:
            _shutdown.watch_sigterm()

    def submit(self, events: Sequence[WireEvent]) -> int:
        """Store events for delivery; return how many were accepted.

        Raises `QueueFullError` under the `"raise"` policy when they do not
        all fit; otherwise events that do not fit are dropped and counted.
        Blocks for a durable outbox's write: in async code use `asubmit`.
        """
        return self._accept(events)

    def start(self) -> None:
        """Start the worker now rather than at the first event.

        Useful to deliver what a durable outbox kept from an earlier run.
        """
        if self.is_sending and not self._closed:
            self._ensure_worker()
            self._wake_worker()

    def close(self, timeout: float | None = None) -> None:
        """Flush for up to `timeout` seconds (`shutdown_timeout` by default), then stop.

        Events submitted afterwards are dropped and counted. Undelivered
        events stay in a durable outbox; in memory they are counted as
        dropped and logged at ERROR. Only the first of concurrent calls
        does this; the others wait for it to end, for up to their own
        timeout and two seconds more. A `flush` waiting in another thread
        returns False.

        Returns once the timeout has passed even if the worker is still
        waiting for Pinterest's answer to a request: it records that answer
        (a memory outbox's events are already counted dropped) and ends.
        """
        timeout = self.shutdown_timeout if timeout is None else timeout
        if not self._closing.claim_close():
            self._closing.done.wait(timeout + _LATER_CLOSE_WAIT)
            return
        try:
            self._close_now(timeout)
        finally:
            self._closing.done.finish()

    def _close_now(self, timeout: float) -> None:
        """The closing, by the first `close()`: flush, stop, count what is left."""
        raise NotImplementedError

    def _close_at_exit(self) -> None:
        self.close()

    def _after_worker(self, callback: Callable[[], None]) -> None:
        """Call `callback` once the worker has ended: now if none runs."""
        raise NotImplementedError

    def _after_close(self, callback: Callable[[], None]) -> None:
        """Call `callback` once the first `close()` and the worker have ended.

        For what they use and their owner closes (the client's transport
        and outbox): a worker still waiting for an answer after `close()`
        records it first, and a `close()` still counting what is left reads
        the outbox first. Now if both have ended.
        """
        self._closing.done.add(functools.partial(self._after_worker, callback))

    def _deliver_at_signal(self, deadline: float, *, closing: bool) -> None:
        """At SIGTERM (see `_shutdown`): deliver by `deadline`; close if `closing`."""
        raise NotImplementedError

    def _after_signal_delivery(self, *, closing: bool) -> None:
        """At SIGTERM, in the handler's thread, once delivery ended or its
        deadline passed (see `_shutdown`).

        Closing (the process ends next): events are refused, and what is
        left is counted dropped and logged, here and nowhere else (the
        delivery only delivers and stops), unless a `close()` in another
        thread counted it already. Nothing here waits long for the delivery,
        a store or a settle under way, which may be stuck on a request or
        interrupted by this very handler: `_SIGNAL_WAIT` at most for each.
        Otherwise (a server goes on with its graceful shutdown, and may
        still deliver them): what is left is logged, and counted by a later
        `close()` if the process gets there.
        """
        if closing:
            self._closing.stop()
            if self._closing.claim_count(take_over_after=_SIGNAL_WAIT):
                self._count_leftovers(gate_wait=_SIGNAL_WAIT, lock_wait=_SIGNAL_WAIT)
            return
        left = self.outbox.depth()
        if left:
            logger.error(SIGNAL_UNDELIVERED_LOG, left, self.shutdown_timeout)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(outbox={self.outbox!r}, "
            f"batch_size={self.batch_size}, flush_interval={self.flush_interval}, "
            f"sending={self.is_sending})"
        )

    # --- storing ---

    def _accept(self, events: Sequence[WireEvent]) -> int:
        """Store events under the overflow policy; count and log what is dropped.

        Raises `QueueFullError` under `"raise"` when they do not fit, and
        `OutboxError` then when the outbox failed to store them.
        """
        if not events:
            return 0
        if self._closed:
            self._drop(len(events), CLOSED_REASON)
            return 0
        try:
            stored = self._put(events)
        except QueueFullError:
            self._drop(len(events), OUTBOX_FULL_REASON)
            raise
        except _ClosedError as closed:
            self._tally(len(events), closed.stored, CLOSED_REASON)
            return closed.stored
        except Exception as exc:
            self._store_failed(len(events), exc)
            if self.overflow == "raise":
                raise OutboxError(
                    f"the outbox could not store the events ({type(exc).__name__})"
                ) from exc
            return 0
        self._store_failing = False
        self._tally(len(events), stored)

        return stored

    def _tally(self, count: int, stored: int, why: str = OUTBOX_FULL_REASON) -> None:
        """Count a call's `stored` events accepted, the rest of `count` dropped."""
        if stored:
            self._counters.add(accepted=stored)
            self._after_accept(stored)
        if stored < count:
            self._drop(count - stored, why)

    @property
    def _groups_writes(self) -> bool:
        """Whether concurrent `asubmit` calls share one outbox write.

        Only for a blocking (durable) outbox, where a write costs a thread
        hop and a commit, and only under `"drop_newest"`, where a call's
        outcome is its own share of one write: `"block"` waits and retries
        per call, and `"raise"` stores all of a call or none of it.
        """
        return self.outbox.blocking and self.overflow == "drop_newest"

    async def _accept_grouped(self, events: Sequence[WireEvent]) -> int:
        """`_accept` in a worker thread, grouped with this loop's other calls.

        While one write is in flight, the calls arriving in the same event
        loop wait, and their events go together into the next write: one
        thread hop and (with `put_many`) one commit for the group. Each
        call still returns how many of its own events were stored, once
        they are stored. A call cancelled while it waits is left out of the
        write (nothing of it is stored); one cancelled once its write began
        is stored and counted, as with an ungrouped write.
        """
        loop = _running_asyncio_loop()
        if loop is None or not events:
            return await anyio.to_thread.run_sync(self._accept, events)
        group = self._write_groups.get(loop)
        if group is None:
            group = self._write_groups[loop] = _WriteGroup()
        future: asyncio.Future[int] = loop.create_future()
        group.waiting.append((events, future))
        if group.writer is None:
            group.writer = loop.create_task(
                self._write_waiting(group), name="pinterest-mw-outbox-write"
            )

        return await future

    async def _write_waiting(self, group: _WriteGroup) -> None:
        """Write what waits in `group`, a group per thread hop, until none is left."""
        taken: list[tuple[Sequence[WireEvent], asyncio.Future[int]]] = []
        try:
            while True:
                # A cancelled caller's future is done: its events stay out.
                taken = [entry for entry in group.waiting if not entry[1].done()]
                group.waiting.clear()
                if not taken:
                    return
                counts = await anyio.to_thread.run_sync(
                    self._accept_many, [events for events, _ in taken]
                )
                for (_, future), count in zip(taken, counts, strict=True):
                    if not future.done():
                        future.set_result(count)
                taken = []
        except BaseException as exc:
            # The loop is closing (or a bug): no caller is left waiting.
            # Those taken may have been stored; the others were not.
            for _, future in [*taken, *group.waiting]:
                if future.done():
                    continue
                if isinstance(exc, Exception):
                    future.set_exception(exc)
                else:
                    future.cancel()
            group.waiting.clear()
            raise
        finally:
            group.writer = None

    def _accept_many(self, batches: list[Sequence[WireEvent]]) -> list[int]:
        """`_accept` for several calls' events, in one outbox write if it can."""
        put_many = getattr(self.outbox, "put_many", None)
        if put_many is None or self._closed:
            return [self._accept(events) for events in batches]
        try:
            stored: list[int] = put_many(batches, test=self.test_mode)
        except Exception as exc:  # noqa: BLE001 - logged with its traceback, rate-limited
            # One failed write, whatever the number of calls it carried.
            self._store_failed(sum(len(events) for events in batches), exc)
            return [0] * len(batches)
        self._store_failing = False
        for events, count in zip(batches, stored, strict=True):
            self._tally(len(events), count)

        return stored

    def _put(self, events: Sequence[WireEvent]) -> int:
        if self.overflow == "raise":
            if not self._store(events, atomic=True):
                raise QueueFullError("the delivery queue is full")
            return len(events)
        stored = self._store(events)
        if self.overflow == "block" and stored < len(events):
            stored = self._wait_for_room(events, stored)

        return stored

    def _wait_for_room(self, events: Sequence[WireEvent], stored: int) -> int:
        """Under `"block"`: store the rest as room comes, for `block_timeout`.

        Raises `_ClosedError`, with how many were stored, when the
        dispatcher stops meanwhile.
        """
        deadline = time.monotonic() + self.block_timeout
        if self.is_sending:
            self._ensure_worker()
        while stored < len(events) and time.monotonic() < deadline:
            self._wake_worker()
            time.sleep(_POLL_INTERVAL)
            if self._closed:
                # A durable outbox's stores have no gate: stop here too.
                raise _ClosedError(stored)
            try:
                stored += self._store(events[stored:])
            except _ClosedError:
                raise _ClosedError(stored) from None

        return stored

    def _store(self, events: Sequence[WireEvent], *, atomic: bool = False) -> int:
        """One write to the outbox; `_ClosedError` for a memory outbox once
        the dispatcher stopped (see `_Closing`).
        """
        if self.outbox.durable:
            # What is stored after close() stays for the next run.
            return self.outbox.put(events, atomic=atomic, test=self.test_mode)
        token = self._closing.enter()
        if token is None:
            raise _ClosedError
        try:
            return self.outbox.put(events, atomic=atomic, test=self.test_mode)
        finally:
            self._closing.leave(token)

    def _after_accept(self, count: int) -> None:
        """Start the worker if needed; wake it when a batch is full.

        After a SIGTERM that the server survives for a while (its graceful
        shutdown), every event wakes it: the process may end any moment.
        """
        if not self.is_sending:
            return
        self._ensure_worker()
        self._fresh += count
        if self._fresh >= self.batch_size or self._prompt:
            self._fresh = 0
            self._wake_worker()

    def _send_promptly(self) -> None:
        """From now on, send each event as soon as it is accepted."""
        self._prompt = True
        self._wake_worker()

    def _drop(self, count: int, why: str) -> None:
        self._counters.add(dropped=count)
        count, _ = self._drop_log.add(count)
        if count:
            logger.warning(DROPPED_LOG, count, why, self.overflow)

    def _store_failed(self, count: int, error: Exception) -> None:
        """Count events the outbox failed to store; log one line per interval."""
        self._store_failing = True
        self._counters.add(dropped=count, outbox_errors=1)
        count, calls = self._store_failure_log.add(count)
        if count:
            # With the traceback of this failure; earlier ones are counted.
            logger.error(STORE_FAILED_LOG, count, calls, exc_info=error)

    def _report_unlogged_drops(self) -> None:
        """At close: log the drops the rate limit held back."""
        count, _ = self._drop_log.take()
        if count:
            logger.warning(DROPPED_UNREPORTED_LOG, count, self.overflow)
        count, calls = self._store_failure_log.take()
        if count:
            logger.error(STORE_FAILED_LOG, count, calls)

    def _flush_wait(self, deadline: float) -> tuple[float, bool] | None:
        """How long a flush waits before looking again, and whether to wake
        the worker then; None when waiting is hopeless.

        Hopeless means nothing left can go out before `deadline` (monotonic):
        delivery is paused past it after an account refusal, or every event
        left is deferred past it (a long backoff or `Retry-After`). Events
        due now while this worker sends nothing (a backoff that ended before
        this look) wake it at once: asleep for its interval, it would leave
        them until the interval ends.
        """
        now = time.monotonic()
        remaining = deadline - now
        if remaining <= 0 or self._paused_until >= deadline:
            return None
        if self._paused_until > now:
            return self._paused_until - now, True
        stats = self.outbox.stats()
        if stats.pending > stats.deferred and not self._in_flight:
            self._wake_worker()
        if stats.deferred < stats.depth or stats.next_attempt_at is None:
            # Due now or in flight: the worker is on it.
            return remaining, False
        # The outbox's clock is Unix time; the deadline is monotonic.
        due_in = stats.next_attempt_at - time.time()
        if due_in >= remaining:
            return None

        return max(due_in, _POLL_INTERVAL), True

    def _ensure_worker(self) -> None:
        raise NotImplementedError

    def _wake_worker(self) -> None:
        raise NotImplementedError

    # --- settling ---

    def _plan(
        self,
        claim: Claim,
        results: Sequence[EventResult] | None,
        error: Exception | None,
    ) -> _Settlement:
        """Decide each event's fate from Pinterest's answer (or the error)."""
        plan = _Settlement()
        if error is not None:
            self._plan_error(plan, claim, error)
            return plan
        # Pinterest answered for the events: the token and account work.
        self._refusal_streak = 0

        by_index = {result.index: result for result in results or ()}
        refused: dict[str, list[OutboxItem]] = {}
        unsent: list[OutboxItem] = []
        for index, item in enumerate(claim.items):
            result = by_index.get(index)
            if result is None or result.status is EventStatus.NOT_SENT:
                unsent.append(item)
            elif result.status is EventStatus.FAILED:
                message = result.error_message or "rejected without a message"
                plan.rejected[item.key] = message
                refused.setdefault(message, []).append(item)
            else:
                plan.completed.append(item.key)
                plan.warned += result.status is EventStatus.WARNED
                plan.unconfirmed += result.status is EventStatus.UNCONFIRMED
        for message, items in refused.items():
            self._note(plan, "rejected", items, message)
        if unsent:
            self._defer(plan, unsent, "no result for the event", None, None)

        return plan

    def _plan_error(self, plan: _Settlement, claim: Claim, error: Exception) -> None:
        reason = _describe(error)
        if _is_account_refusal(error):
            plan.paused_for = self._pause()
            self._defer(plan, claim.items, reason, plan.paused_for, error)
        elif _is_refusal(error):
            for item in claim.items:
                plan.rejected[item.key] = reason
            self._note(plan, "rejected", claim.items, reason, error)
        else:
            retry_after = getattr(error, "retry_after", None)
            self._defer(plan, claim.items, reason, retry_after, error)

    def _plan_failure(self, claim: Claim, error: Exception) -> _Settlement:
        """`_plan` for a request that raised; an unexpected error is logged."""
        if not isinstance(error, APIError | TransportError):
            logger.error(SEND_FAILED_LOG, len(claim), exc_info=error)
        return self._plan(claim, None, error)

    def _pause(self) -> float:
        """Stop claiming for a backoff that grows with each refusal in a row."""
        self._refusal_streak += 1
        delay = self.backoff.delay(self._refusal_streak)
        self._paused_until = time.monotonic() + delay

        return delay

    def _may_claim(self) -> bool:
        """Whether the worker may take a batch now.

        Not while paused after an account refusal or a failed claim, nor
        once `close()` has counted a memory outbox's leftovers as dropped.
        """
        return (
            time.monotonic() >= self._paused_until and not self._closing.leftovers_read
        )

    def _claim_now(self) -> Claim | None:
        """Claim a batch (blocking I/O for a durable outbox); None if none is
        due or the outbox failed, which pauses claiming (see `_claim_failed`).
        """
        try:
            claim = self.outbox.claim(self.batch_size, lease=self.lease)
        except Exception as exc:  # noqa: BLE001 - logged with its traceback, rate-limited
            self._claim_failed(exc)
            return None
        self._claim_failures = 0

        return claim

    def _claim_failed(self, error: Exception) -> None:
        """Pause claiming for a backoff that grows while the outbox fails.

        A damaged file fails every read alike: retrying at each round would
        only fill the log. One ERROR per `DROP_LOG_INTERVAL`, with the
        traceback of the latest failure and the count of the others.
        """
        self._claim_failures += 1
        delay = self.backoff.delay(self._claim_failures)
        self._paused_until = max(self._paused_until, time.monotonic() + delay)
        self._counters.add(outbox_errors=1)
        _, calls = self._claim_failure_log.add(1)
        if calls:
            logger.error(CLAIM_FAILED_LOG, calls, delay, exc_info=error)

    @property
    def _delivery_problem(self) -> str | None:
        """Why delivery is stalled, for a health check; None when it is not."""
        if self._claim_failures:
            return OUTBOX_UNREADABLE
        if self._store_failing:
            return OUTBOX_UNWRITABLE
        if self._refusal_streak:
            return ACCOUNT_REFUSED
        return None

    def _start_batch(self, claim: Claim) -> None:
        self._in_flight = len(claim)
        self._current = claim
        self._counters.add(sent=len(claim))

    def _end_batch(self) -> None:
        self._in_flight = 0
        self._current = None

    def _send_due_blocking(self, sender: Sender, deadline: float = math.inf) -> int:
        """Claim and send due batches with a blocking sender; return how many events.

        Goes on while batches come back full and claiming is allowed (see
        `_may_claim`), and not past `deadline` (monotonic).
        """
        claimed = 0
        while self._may_claim() and time.monotonic() < deadline:
            claim = self._claim_now()
            if claim is None:
                break
            claimed += len(claim)
            self._deliver_blocking(sender, claim)
            if len(claim) < self.batch_size:
                break

        return claimed

    def _deliver_blocking(self, sender: Sender, claim: Claim) -> None:
        self._start_batch(claim)
        events = [item.event for item in claim.items]
        try:
            results = sender.send_batch(events, test=claim.test)
        except Exception as exc:  # noqa: BLE001 - deferred, and logged if unexpected
            plan = self._plan_failure(claim, exc)
        else:
            plan = self._plan(claim, results, None)
        try:
            self._settle(claim, plan)
        except Exception as exc:  # noqa: BLE001 - logged with its traceback
            # The lease expires and the batch is claimed again.
            self._record_failed(claim, exc)
        finally:
            self._end_batch()
        self._tell(plan)

    def _record_failed(self, claim: Claim, error: Exception) -> None:
        self._counters.add(outbox_errors=1)
        logger.error(RECORD_FAILED_LOG, len(claim), exc_info=error)

    def _defer(
        self,
        plan: _Settlement,
        items: Sequence[OutboxItem],
        reason: str,
        retry_after: float | None,
        error: Exception | None,
    ) -> None:
        plan.defer_reason = reason
        given_up: list[OutboxItem] = []
        deferred: list[OutboxItem] = []
        for item in items:
            attempts = item.attempts + 1
            if self.max_attempts is not None and attempts >= self.max_attempts:
                given_up.append(item)
            else:
                plan.deferred[item.key] = self.backoff.delay(attempts, retry_after)
                deferred.append(item)
        if deferred:
            self._note(plan, "deferred", deferred, reason, error)
        if not given_up:
            return
        final = f"{GAVE_UP} {self.max_attempts} delivery attempts: {reason}"
        if self.outbox.durable:
            for item in given_up:
                plan.rejected[item.key] = final
            self._note(plan, "rejected", given_up, final, error)
        else:
            plan.dropped.extend(item.key for item in given_up)
            self._note(plan, "dropped", given_up, final, error)

    @staticmethod
    def _note(
        plan: _Settlement,
        outcome: Literal["rejected", "deferred", "dropped"],
        items: Sequence[OutboxItem],
        reason: str,
        error: Exception | None = None,
    ) -> None:
        ids = tuple(item.event.event_id for item in items)
        plan.failures.append(DeliveryFailure(outcome, ids, reason, error))

    def _apply(self, claim: Claim, plan: _Settlement) -> None:
        """Write the plan to the outbox (blocking I/O for a durable one)."""
        if plan.completed or plan.dropped:
            self.outbox.complete(claim, plan.completed + plan.dropped)
        if plan.rejected:
            self.outbox.reject(claim, plan.rejected)
        if plan.deferred:
            self.outbox.defer(claim, plan.deferred, plan.defer_reason)

    def _settle(self, claim: Claim, plan: _Settlement) -> None:
        """Count a batch's outcome and write it to the outbox, as one step.

        Counted and logged before the outbox changes, so that whoever sees
        the outbox empty or paused (a flush) also sees the counters and the
        log lines of its last batch. A batch answered after `close()`
        counted a memory outbox's leftovers is not counted again. Raises
        what the outbox raises.
        """
        with self._settle_lock:
            if self._closing.leftovers_read:
                logger.warning(LATE_BATCH_LOG, len(claim))
            else:
                self._count(plan)
                self._unwritten = plan.leaving
            for failure in plan.failures:
                self._log_failure(failure, plan.paused_for)
            try:
                self._apply(claim, plan)
            finally:
                self._unwritten = 0
        logger.debug(
            BATCH_LOG,
            len(claim),
            len(plan.completed) - plan.unconfirmed,
            plan.unconfirmed,
            len(plan.rejected),
            len(plan.deferred),
            len(plan.dropped),
        )

    def _count(self, plan: _Settlement) -> None:
        self._counters.add(
            processed=len(plan.completed) - plan.unconfirmed,
            unconfirmed=plan.unconfirmed,
            warned=plan.warned,
            failed=len(plan.rejected),
            retried=len(plan.deferred),
            dropped=len(plan.dropped),
            account_refusals=1 if plan.paused_for else 0,
        )

    def _tell(self, plan: _Settlement) -> None:
        """Pass each failure of a batch (logged as it settled) to `on_error`."""
        for failure in plan.failures:
            self._call_on_error(failure)

    def _log_failure(self, failure: DeliveryFailure, paused_for: float) -> None:
        count = len(failure.event_ids)
        if failure.outcome == "dropped":
            logger.error(LOST_LOG, count, failure.reason)
        elif failure.outcome == "deferred" and paused_for:
            # One line per pause: no request is made until it ends.
            logger.error(ACCOUNT_REFUSED_LOG, failure.reason, paused_for, count)
        elif failure.outcome == "deferred":
            logger.warning(DEFERRED_LOG, count, failure.reason)
        elif failure.reason.startswith(GAVE_UP):
            logger.error(GAVE_UP_LOG, count, failure.reason)
        elif failure.error is not None:
            logger.error(REFUSED_LOG, count, failure.reason)
        else:
            logger.warning(REJECTED_LOG, count)

    def _call_on_error(self, failure: DeliveryFailure) -> None:
        if self.on_error is None:
            return
        try:
            self.on_error(failure)
        except Exception:
            logger.exception(ON_ERROR_FAILED_LOG)

    def _account_leftovers(self) -> None:
        """At close: say what stays undelivered; count it dropped if not durable.

        Once per dispatcher, whoever calls first (see `_count_leftovers`).
        """
        if self._closing.claim_count():
            self._count_leftovers(gate_wait=_GATE_WAIT, lock_wait=-1)

    def _count_leftovers(self, *, gate_wait: float, lock_wait: float) -> None:
        """Stop, then count and log what is left, by whoever claimed the count.

        A memory outbox's leftovers include the batch a worker may still be
        sending, whose answer is unknown; they are counted dropped, and a
        late answer is not counted again (see `_settle`). Stores under way
        are waited for up to `gate_wait` seconds, so that each accepted
        event is in the count or was refused; the settle lock for up to
        `lock_wait` seconds (-1: for as long as it takes).
        """
        self._closing.stop()
        try:
            if not self.outbox.durable:
                self._closing.wait_for_stores(gate_wait)
            self._report_unlogged_drops()
            left = self._read_leftovers(lock_wait)
            if left:
                self._report_leftovers(left)
        finally:
            self._closing.end_count()

    def _read_leftovers(self, lock_wait: float) -> int:
        """How many events the outbox holds undelivered (0 when unreadable).

        Past `lock_wait`, read without the settle lock: its holder (code a
        SIGTERM handler interrupted, or stuck behind it) has counted its
        batch, and may not have taken it out of the outbox yet, so that
        batch is left out of the count. If it was halfway through the write,
        the count may miss part of that batch.
        """
        locked = self._settle_lock.acquire(timeout=lock_wait)
        try:
            if not self.outbox.durable:
                self._closing.leftovers_read = True
            # Always 0 with the lock held.
            return max(self.outbox.depth() - self._unwritten, 0)
        except Exception:
            logger.exception(DEPTH_FAILED_LOG)
            return 0
        finally:
            if locked:
                self._settle_lock.release()

    def _report_leftovers(self, left: int) -> None:
        if not self.outbox.durable:
            self._counters.add(dropped=left)
            logger.error(CLOSED_LOST_LOG, left, min(self._in_flight, left))
            return
        # Keeping events is the whole job of a client that does not send.
        level = logging.WARNING if self.is_sending else logging.INFO
        logger.log(level, CLOSED_KEPT_LOG, left)


# --- thread dispatcher ---------------------------------------------------------


class ThreadDispatcher(_BaseDispatcher):
    """Deliver from a daemon thread with a blocking transport.

    The thread starts with the first accepted event (or `flush`). `submit`
    never waits on the network; with a durable outbox it waits for the
    write to disk, and with the `"block"` policy for room in the outbox.

    Args:
        outbox: where events wait (a `MemoryOutbox` or `SQLiteOutbox`).
        transport: builds the sender (a `Transport`); called in the worker
            thread, again after a fork. None stores events without sending.
        batch_size: the most events per request (1 to 1000).
        flush_interval: seconds between deliveries of partial batches.
        overflow: `"drop_newest"`, `"block"` or `"raise"` (module docs).
        block_timeout: seconds `"block"` waits for room before dropping.
        backoff: waits between delivery attempts of a failed batch.
        max_attempts: deliveries before an event is given up; None: never.
        lease: seconds a claimed batch is reserved for this worker; keep it
            above the transport's total retry budget.
        shutdown_timeout: seconds `close()`, the exit hook and the SIGTERM
            hook flush for.
        on_error: called (in the worker) with each `DeliveryFailure`.
        test_mode: the mode events are stored and sent in: True for
            Pinterest's test mode, False live, None (default) whatever the
            transport sends in.
    """

    def __init__(
        self,
        outbox: Outbox,
        transport: Callable[[], Sender] | None,
        *,
        batch_size: int = MAX_BATCH_SIZE,
        flush_interval: float = 1.0,
        overflow: OverflowPolicy = "drop_newest",
        block_timeout: float = 1.0,
        backoff: DeliveryBackoff | None = None,
        max_attempts: int | None = None,
        lease: float = 300.0,
        shutdown_timeout: float = 5.0,
        on_error: Callable[[DeliveryFailure], None] | None = None,
        test_mode: bool | None = None,
    ) -> None:
        self._make_sender: Callable[[], Sender] | None = transport
        self._setup_thread()
        options = DispatcherOptions(
            batch_size=batch_size,
            flush_interval=flush_interval,
            overflow=overflow,
            block_timeout=block_timeout,
            backoff=backoff,
            max_attempts=max_attempts,
            lease=lease,
            shutdown_timeout=shutdown_timeout,
            on_error=on_error,
            test_mode=test_mode,
        )
        super().__init__(outbox, transport, options)

    def _setup_thread(self) -> None:
        self._lock = threading.Lock()
        self._wakeup = threading.Condition(self._lock)
        self._progress = threading.Condition()
        self._rounds = 0
        self._wake_requested = False
        self._stop_requested = False
        self._thread: threading.Thread | None = None
        # The end of the latest worker thread (see `_after_worker`).
        self._thread_end: _WhenDone | None = None

    def _after_fork_in_child(self) -> None:
        # The worker thread does not exist in the child; its transport (and
        # its connections, shared with the parent) are left untouched.
        super()._after_fork_in_child()
        self._setup_thread()

    async def asubmit(self, events: Sequence[WireEvent]) -> int:
        """`submit` for async code: disk writes and waits run in a thread.

        Concurrent calls in one event loop share a durable outbox's writes
        (see `_accept_grouped`).
        """
        if self._groups_writes:
            return await self._accept_grouped(events)
        if self.outbox.blocking or self.overflow == "block":
            return await anyio.to_thread.run_sync(self._accept, events)
        return self._accept(events)

    def flush(self, timeout: float = 10.0) -> bool:
        """Send everything waiting now; wait until the outbox is empty.

        Deferred events due within the timeout are retried when their
        backoff ends. Returns True if the outbox emptied in time (in every
        process sharing it); False when the timeout passes, when sending is
        off, and at once when nothing left can go out before the timeout
        (every event deferred past it, or delivery paused past it after
        Pinterest refused the token or ad account).
        """
        if not self.is_sending or self._closed:
            return self.outbox.depth() == 0
        self._ensure_worker()
        deadline = time.monotonic() + timeout
        wake = True
        while self.outbox.depth():
            # Before `_flush_wait`, which may wake the worker: a round it
            # ends meanwhile must not be waited for again.
            with self._progress:
                seen = self._rounds
            plan = self._flush_wait(deadline)
            if plan is None or self._closed:
                # Closed meanwhile by another thread: nothing more goes out.
                return False
            if wake:
                self._wake_worker()
            wait, wake = plan
            self._wait_for_round_after(seen, wait)

        return True

    def _wait_for_round_after(self, seen: int, timeout: float) -> None:
        """Wait until the worker finishes a round after round `seen`, or a close."""
        with self._progress:
            self._progress.wait_for(
                lambda: self._rounds != seen or self._closed, timeout
            )

    async def aflush(self, timeout: float = 10.0) -> bool:  # noqa: ASYNC109 - twin of flush(timeout)
        """`flush` for async code, waiting in a thread."""
        return await anyio.to_thread.run_sync(self.flush, timeout)

    def _close_now(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        if self.is_sending:
            self.flush(timeout)
        self._stop_and_join(deadline)
        self._account_leftovers()

    def _stop_and_join(self, deadline: float) -> None:
        """Stop the worker; wait for it until `deadline` (0.1 s at least)."""
        thread = self._stop()
        if thread is not None and thread is not threading.current_thread():
            thread.join(max(deadline - time.monotonic(), 0.1))

    def _stop(self) -> threading.Thread | None:
        """Refuse events, stop the worker, wake waiting flushes; no waiting."""
        self._closing.stop()
        with self._wakeup:
            self._stop_requested = True
            self._wakeup.notify_all()
            thread = self._thread
        with self._progress:
            self._progress.notify_all()

        return thread

    async def aclose(self, timeout: float | None = None) -> None:  # noqa: ASYNC109 - twin of close(timeout)
        """`close` for async code, waiting in a thread."""
        await anyio.to_thread.run_sync(self.close, timeout)

    def _deliver_at_signal(self, deadline: float, *, closing: bool) -> None:
        """At SIGTERM, from a helper thread: the worker thread does the sending.

        Closing, it only delivers and stops: `_after_signal_delivery`
        counts what is left, in the handler's thread, by the deadline. A
        request already under way keeps the transport's own timeout and
        retry budget: it may outlast the deadline, and the count.
        """
        self.flush(max(deadline - time.monotonic(), 0.0))
        if closing:
            self._stop_and_join(deadline)
            return
        self._send_promptly()

    # --- the worker ---

    def _ensure_worker(self) -> None:
        # Without the lock while the thread runs (every event comes here):
        # a SIGTERM handler's delivery may need it (see `_shutdown`).
        thread = self._thread
        if thread is not None and thread.is_alive():
            return
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                return
            if self._stop_requested:
                return
            end = _WhenDone()
            self._thread = threading.Thread(
                target=self._run,
                args=(end,),
                name="pinterest-mw-dispatcher",
                daemon=True,
            )
            self._thread.start()
            self._thread_end = end
        self._watch_sigterm()

    def _may_claim(self) -> bool:
        """Also not once `close()` asked the worker to stop."""
        return super()._may_claim() and not self._stop_requested

    def _wake_worker(self) -> None:
        with self._wakeup:
            self._wake_requested = True
            self._wakeup.notify_all()

    def _after_worker(self, callback: Callable[[], None]) -> None:
        """Call `callback` once the worker thread has ended: now if none ran.

        Called from the worker itself (an `on_error` callback closing the
        client), it runs as the worker ends.
        """
        end = self._thread_end
        if end is None:
            callback()
        else:
            end.add(callback)

    def _run(self, end: _WhenDone) -> None:
        try:
            self._work()
        finally:
            end.finish()

    def _work(self) -> None:
        assert self._make_sender is not None
        try:
            sender = self._make_sender()
        except Exception:
            logger.exception(NO_TRANSPORT_LOG)
            return
        try:
            while True:
                stopping = self._wait_for_work()
                self._deliver_due(sender)
                with self._progress:
                    self._rounds += 1
                    self._progress.notify_all()
                if stopping:
                    break
        finally:
            try:
                sender.close()
            except Exception:
                logger.exception(TRANSPORT_CLOSE_FAILED_LOG)

    def _wait_for_work(self) -> bool:
        """Sleep until woken or `flush_interval` passes; True when stopping."""
        with self._wakeup:
            if not (self._wake_requested or self._stop_requested):
                self._wakeup.wait(self.flush_interval)
            self._wake_requested = False
            self._fresh = 0
            return self._stop_requested

    def _deliver_due(self, sender: Sender) -> None:
        self._send_due_blocking(sender)


# --- async dispatcher ----------------------------------------------------------


class _PortalSender:
    """A blocking sender over an async one, run in an event loop of its own.

    A request still under way at `deadline` (monotonic) is cancelled, and
    fails as a `TransportError`.
    """

    def __init__(
        self, make: Callable[[], AsyncSender], deadline: float = math.inf
    ) -> None:
        self._deadline = deadline
        self._portal_context = anyio.from_thread.start_blocking_portal()
        self._portal = self._portal_context.__enter__()
        try:
            self._sender = self._portal.call(self._build, make)
        except BaseException:
            self._portal_context.__exit__(None, None, None)
            raise

    @staticmethod
    async def _build(make: Callable[[], AsyncSender]) -> AsyncSender:
        # In the portal's loop, which the async HTTP client then belongs to.
        return make()

    def send_batch(
        self, batch: Sequence[WireEvent], *, test: bool | None = None
    ) -> list[EventResult]:
        send = functools.partial(self._send_by_deadline, batch, test)
        return self._portal.call(send)

    async def _send_by_deadline(
        self, batch: Sequence[WireEvent], test: bool | None
    ) -> list[EventResult]:
        try:
            with anyio.fail_after(max(self._deadline - time.monotonic(), 0.0)):
                return await self._sender.send_batch(batch, test=test)
        except TimeoutError:
            raise TransportError("no answer before the SIGTERM deadline") from None

    def close(self) -> None:
        try:
            self._portal.call(self._sender.aclose)
        finally:
            self._portal_context.__exit__(None, None, None)


class _WriteGroup:
    """The `asubmit` calls of one event loop waiting for a shared outbox write."""

    __slots__ = ("waiting", "writer")

    def __init__(self) -> None:
        self.waiting: list[tuple[Sequence[WireEvent], asyncio.Future[int]]] = []
        self.writer: asyncio.Task[None] | None = None


class _ClaimHandover:
    """Passes a claim from a worker thread to a coroutine that may be gone.

    The thread stores the claim unless the coroutine was cancelled, in which
    case it releases it; a coroutine cancelled after the thread stored it
    releases it itself. Whichever comes second does the release.
    """

    def __init__(self, release: Callable[[Claim], None]) -> None:
        self._release = release
        self._lock = threading.Lock()
        self._abandoned = False
        self._claim: Claim | None = None

    def run(self, claim_now: Callable[[], Claim | None]) -> Claim | None:
        claim = claim_now()
        with self._lock:
            if not self._abandoned:
                self._claim = claim
                return claim
        if claim is not None:
            self._release(claim)
        return None

    def receive(self) -> None:
        with self._lock:
            self._claim = None

    def abandon(self) -> None:
        with self._lock:
            self._abandoned = True
            claim, self._claim = self._claim, None
        if claim is not None:
            self._release(claim)


def _running_asyncio_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


class _Worker:
    """One run of the async worker, in one event loop.

    A worker started as a bare task in a loop it does not own (`detached`)
    is alive only while that loop runs; one in a task group or a private
    thread is alive until its coroutine ends.
    """

    def __init__(
        self,
        *,
        detached: bool,
        loop: asyncio.AbstractEventLoop | None,
        thread_id: int | None = None,
    ) -> None:
        self.detached = detached
        self.loop = loop
        self.thread_id = thread_id
        self.event: anyio.Event | None = None
        self.wake_requested = False
        self.stopping = False
        self.done = False
        self.forked = False
        self.task: asyncio.Task[None] | None = None
        # Its end, for `AsyncDispatcher._after_worker`.
        self.end = _WhenDone()

    def is_alive(self) -> bool:
        return not self.stopping and self.is_running()

    def is_running(self) -> bool:
        """Alive, or told to stop but not done yet."""
        if self.done:
            return False
        if not self.detached or self.loop is None:
            return True

        return self.loop.is_running() and not self.loop.is_closed()

    def in_this_thread(self) -> bool:
        return self.thread_id == threading.get_ident()

    def wake(self) -> None:
        self.wake_requested = True
        event = self.event
        if event is None:
            return
        if self.in_this_thread():
            event.set()
        elif self.loop is not None:
            # A closed loop raises RuntimeError: its worker is gone anyway.
            with contextlib.suppress(RuntimeError):
                self.loop.call_soon_threadsafe(event.set)

    async def wait(self, interval: float) -> None:
        """Sleep until woken or `interval` passes."""
        event = self.event
        if event is None:
            event = self.event = anyio.Event()
        if not self.wake_requested:
            with anyio.move_on_after(interval):
                await event.wait()
        self.wake_requested = False
        self.event = anyio.Event()


class AsyncDispatcher(_BaseDispatcher):
    """Deliver from a task in the running event loop with an async transport.

    Starts by itself in the loop of the first `asubmit`/`aflush`, restarts
    in the current loop when that one is gone, and picks up events submitted
    from other threads. Durable-outbox calls run in a worker thread, never
    in the loop. See the module docs for the life cycle.

    Limitations: started by itself, the worker runs on asyncio (in the
    caller's loop, or in a private thread with its own loop when the caller
    runs on no asyncio loop). On trio, use `running()` to run it in a task
    group.

    Once the worker was told to stop (`running()` ended, or `close()`),
    `flush` and `close` do not start another: they deliver nothing more and
    return (a memory outbox's leftovers are then counted dropped). A later
    `submit` or `asubmit` does start one, for an app started again.

    Args: as for `ThreadDispatcher`, with `transport` building an async
    sender (an `AsyncTransport`); it is called once per worker, in the
    worker's loop, since an async HTTP client belongs to one loop.
    `blocking_transport` builds a blocking sender (a `Transport`) for the
    SIGTERM hook, which delivers from the signal handler's thread, where
    nothing may await. It is called with the seconds left before the
    hook's deadline, and should give up by then (a `Transport` whose
    timeout and retry budget fit in them), so that what it could not send
    is back in the outbox in time. Without it, the hook runs an async
    sender in an event loop of its own, cancelled at the deadline.
    """

    def __init__(
        self,
        outbox: Outbox,
        transport: Callable[[], AsyncSender] | None,
        *,
        batch_size: int = MAX_BATCH_SIZE,
        flush_interval: float = 1.0,
        overflow: OverflowPolicy = "drop_newest",
        block_timeout: float = 1.0,
        backoff: DeliveryBackoff | None = None,
        max_attempts: int | None = None,
        lease: float = 300.0,
        shutdown_timeout: float = 5.0,
        on_error: Callable[[DeliveryFailure], None] | None = None,
        test_mode: bool | None = None,
        blocking_transport: Callable[[float], Sender] | None = None,
    ) -> None:
        self._make_sender: Callable[[], AsyncSender] | None = transport
        self._make_blocking_sender = blocking_transport
        self._setup_worker()
        options = DispatcherOptions(
            batch_size=batch_size,
            flush_interval=flush_interval,
            overflow=overflow,
            block_timeout=block_timeout,
            backoff=backoff,
            max_attempts=max_attempts,
            lease=lease,
            shutdown_timeout=shutdown_timeout,
            on_error=on_error,
            test_mode=test_mode,
        )
        super().__init__(outbox, transport, options)

    def _setup_worker(self) -> None:
        self._inline_io = False
        self._start_lock = threading.Lock()
        self._worker: _Worker | None = None
        self._private_thread: threading.Thread | None = None

    def _after_fork_in_child(self) -> None:
        worker = self._worker
        if worker is not None:
            # If the child keeps running the parent's loop, the old task
            # must stop without closing the parent's connections.
            worker.forked = True
            worker.stopping = True
        super()._after_fork_in_child()
        self._setup_worker()

    # --- public interface ---

    async def asubmit(self, events: Sequence[WireEvent]) -> int:
        """Store events for delivery without blocking the loop.

        Concurrent calls in one event loop share a durable outbox's writes:
        one worker-thread hop and one commit per group (`_accept_grouped`).
        """
        if self.is_sending and not self._closed:
            self._ensure_worker()
        if self._groups_writes and not self._inline_io:
            return await self._accept_grouped(events)
        return await self._offload(self._accept, events, blocking=self._put_blocks)

    def flush(self, timeout: float = 10.0) -> bool:
        """Send everything waiting now; wait until the outbox is empty.

        Must not be called from the loop the worker runs in (it would wait
        for a worker it blocks): use `aflush` there.
        """
        if not self.is_sending or self._closed or not self.outbox.depth():
            return self.outbox.depth() == 0
        deadline = time.monotonic() + timeout
        try:
            if not self._worker_for_flush():
                return self.outbox.depth() == 0
        except RuntimeError:
            # No thread can be started (interpreter shutdown): run the
            # delivery here, in a loop of our own.
            return self._drain_here(deadline)
        worker = self._worker
        if worker is not None and worker.in_this_thread():
            raise RuntimeError(
                "flush() would block the event loop the dispatcher runs in; "
                "await aflush() instead"
            )
        wake = True
        while self.outbox.depth():
            plan = self._flush_wait(deadline)
            if plan is None or self._closed:
                return False
            if wake:
                self._wake_worker()
            wait, wake = plan
            # Polled while the worker (in another thread's loop) is busy;
            # a wait for a backoff to end sleeps it out in one go.
            time.sleep(wait if wake else min(wait, _POLL_INTERVAL))

        return True

    async def aflush(self, timeout: float = 10.0) -> bool:  # noqa: ASYNC109 - twin of flush(timeout)
        """Send everything waiting now; wait (without blocking) until it is out.

        Gives up at once, like `flush`, when nothing left can go out before
        the timeout.
        """
        if not self.is_sending or self._closed or not self._worker_for_flush():
            return await self._offload(self.outbox.depth) == 0
        deadline = time.monotonic() + timeout
        wake = True
        # Polled: other processes sharing the outbox change it too.
        while await self._offload(self.outbox.depth):
            plan = await self._offload(self._flush_wait, deadline)
            if plan is None or self._closed:
                return False
            if wake:
                self._wake_worker()
            wait, wake = plan
            await anyio.sleep(wait if wake else min(wait, _POLL_INTERVAL))

        return True

    def close(self, timeout: float | None = None) -> None:
        """Flush for up to `timeout` seconds, then stop the worker.

        From the worker's own loop, use `aclose`. Otherwise as
        `ThreadDispatcher.close`: only the first of concurrent calls
        (`aclose` included) closes, and the others wait for it.
        """
        super().close(timeout)

    def _close_now(self, timeout: float) -> None:
        if self.is_sending:
            self.flush(timeout)
        self._stop()
        thread = self._private_thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=1.0)
        self._account_leftovers()

    async def aclose(self, timeout: float | None = None) -> None:  # noqa: ASYNC109 - twin of close(timeout)
        """Flush for up to `timeout` seconds, then stop the worker."""
        timeout = self.shutdown_timeout if timeout is None else timeout
        if not self._closing.claim_close():
            wait = functools.partial(
                self._closing.done.wait, timeout + _LATER_CLOSE_WAIT
            )
            await anyio.to_thread.run_sync(wait)
            return
        try:
            if self.is_sending:
                await self.aflush(timeout)
            await self._await_stopped(self._stop())
            await self._offload(self._account_leftovers)
        finally:
            self._closing.done.finish()

    @asynccontextmanager
    async def running(self) -> AsyncIterator[AsyncDispatcher]:
        """Run the worker in a task group for the duration of the block.

        For a lifespan: events are flushed (up to `shutdown_timeout`) when
        the block ends. Works on asyncio and trio.
        """
        async with anyio.create_task_group() as group:
            if self.is_sending and not self._closed:
                with self._start_lock:
                    current = self._worker
                    if current is None or not current.is_alive():
                        worker = _Worker(
                            detached=False,
                            loop=_running_asyncio_loop(),
                            thread_id=threading.get_ident(),
                        )
                        self._worker = worker
                        group.start_soon(self._work, worker)
                self._watch_sigterm()
            try:
                yield self
            finally:
                with anyio.CancelScope(shield=True):
                    if self.is_sending and not self._closed:
                        await self.aflush(self.shutdown_timeout)
                    await self._await_stopped(self._stop_worker())
                # A worker still waiting for Pinterest hands its batch back.
                group.cancel_scope.cancel()

    # --- starting and stopping ---

    @property
    def _put_blocks(self) -> bool:
        return self.outbox.blocking or self.overflow == "block"

    def _worker_for_flush(self) -> bool:
        """Start a worker for a flush if needed; False when none will deliver.

        A worker told to stop is not replaced: a flush at shutdown must not
        start delivering anew.
        """
        worker = self._worker
        if worker is not None and worker.stopping:
            return False
        self._ensure_worker()
        worker = self._worker

        return worker is not None and worker.is_alive()

    def _ensure_worker(self) -> None:
        worker = self._worker
        if worker is not None and worker.is_alive():
            return
        if self._closed or not self.is_sending:
            return
        loop = _running_asyncio_loop()
        if loop is not None:
            self._start_in(loop)
            return
        try:
            anyio.from_thread.run_sync(self._start_in_current_loop)
        except RuntimeError:
            self._start_private_thread()

    def _start_in_current_loop(self) -> None:
        loop = _running_asyncio_loop()
        if loop is None:
            raise RuntimeError("not on an asyncio loop")
        self._start_in(loop)

    def _start_in(self, loop: asyncio.AbstractEventLoop) -> None:
        with self._start_lock:
            current = self._worker
            if self._closed or (current is not None and current.is_alive()):
                return
            worker = _Worker(detached=True, loop=loop, thread_id=threading.get_ident())
            worker.task = loop.create_task(
                self._work(worker), name="pinterest-mw-dispatcher"
            )
            self._worker = worker
        self._watch_sigterm()

    def _start_private_thread(self) -> None:
        with self._start_lock:
            current = self._worker
            if self._closed or (current is not None and current.is_alive()):
                return
            worker = _Worker(detached=False, loop=None)
            thread = threading.Thread(
                target=anyio.run,
                args=(self._work, worker),
                name="pinterest-mw-dispatcher",
                daemon=True,
            )
            thread.start()
            self._worker = worker
            self._private_thread = thread
        self._watch_sigterm()

    def _stop(self) -> _Worker | None:
        self._closing.stop()
        return self._stop_worker()

    def _stop_worker(self) -> _Worker | None:
        worker = self._worker
        if worker is not None:
            worker.stopping = True
            worker.wake()
        return worker

    async def _await_stopped(self, worker: _Worker | None) -> None:
        """Give a worker of this loop a moment to finish its round and close."""
        if worker is None or not worker.in_this_thread():
            return
        with anyio.move_on_after(1.0):
            while not worker.done:  # noqa: ASYNC110 - a brief wait at shutdown
                await anyio.sleep(_POLL_INTERVAL)

    def _wake_worker(self) -> None:
        worker = self._worker
        if worker is not None:
            worker.wake()

    # --- the worker ---

    def _after_worker(self, callback: Callable[[], None]) -> None:
        """Call `callback` once the worker has ended: now if none runs.

        A worker in a loop that went away counts as ended.
        """
        worker = self._worker
        if worker is None or not worker.is_running():
            callback()
        else:
            worker.end.add(callback)

    async def _work(self, worker: _Worker) -> None:
        try:
            await self._run(worker)
        finally:
            worker.done = True
            worker.end.finish()

    async def _run(self, worker: _Worker) -> None:
        assert self._make_sender is not None
        worker.thread_id = threading.get_ident()
        worker.loop = _running_asyncio_loop()
        worker.event = anyio.Event()
        try:
            sender = self._make_sender()
        except Exception:
            logger.exception(NO_TRANSPORT_LOG)
            return
        try:
            while not worker.stopping:
                await worker.wait(self.flush_interval)
                self._fresh = 0
                await self._deliver_due(sender, worker)
        finally:
            worker.done = True
            if not worker.forked:
                with anyio.CancelScope(shield=True), anyio.move_on_after(1.0):
                    await sender.aclose()

    async def _deliver_due(self, sender: AsyncSender, worker: _Worker) -> None:
        while not (worker.forked or worker.stopping) and self._may_claim():
            claim = await self._claim()
            if claim is None:
                return
            try:
                await self._deliver(sender, claim)
            except anyio.get_cancelled_exc_class():
                # The loop is going away: hand the batch back for the next
                # worker instead of letting it wait for the lease to expire.
                self._end_batch()
                self._release_quietly(claim)
                raise
            if len(claim) < self.batch_size:
                return

    async def _claim(self) -> Claim | None:
        """Claim a batch; a claim whose caller is cancelled is handed back.

        A durable outbox claims in a worker thread, which a cancellation
        does not stop (a native asyncio cancel abandons it, shield or not):
        whichever of the thread and the cancelled caller comes second
        releases the claim, so its events are due again at once rather than
        invisible until the lease expires.
        """
        if not self.outbox.blocking or self._inline_io:
            return self._claim_now()
        handover = _ClaimHandover(self._release_quietly)
        try:
            claim = await anyio.to_thread.run_sync(handover.run, self._claim_now)
        except anyio.get_cancelled_exc_class():
            handover.abandon()
            raise
        handover.receive()

        return claim

    async def _deliver(self, sender: AsyncSender, claim: Claim) -> None:
        self._start_batch(claim)
        events = [item.event for item in claim.items]
        try:
            results = await sender.send_batch(events, test=claim.test)
        except Exception as exc:  # noqa: BLE001 - deferred, and logged if unexpected
            plan = self._plan_failure(claim, exc)
        else:
            plan = self._plan(claim, results, None)
        try:
            await self._offload(self._settle, claim, plan)
        except Exception as exc:  # noqa: BLE001 - logged with its traceback
            self._record_failed(claim, exc)
        finally:
            self._end_batch()
        self._tell(plan)

    def _release_quietly(self, claim: Claim) -> None:
        try:
            self.outbox.release(claim, [item.key for item in claim.items])
        except Exception:
            logger.exception(RELEASE_FAILED_LOG, len(claim))

    async def _offload(
        self, func: Callable[..., _T], *args: Any, blocking: bool | None = None
    ) -> _T:
        """Call `func` in a worker thread if it may block, else right here."""
        if blocking is None:
            blocking = self.outbox.blocking
        if blocking and not self._inline_io:
            return await anyio.to_thread.run_sync(func, *args)
        return func(*args)

    # --- at SIGTERM ---

    def _deliver_at_signal(self, deadline: float, *, closing: bool) -> None:
        """At SIGTERM, from a helper thread: send with a blocking sender.

        The signal handler waits for this in the main thread, so a worker
        running in the main thread's loop is frozen meanwhile. Closing (the
        process ends next), its batch in flight is taken over and sent
        again, since its answer will never be read; otherwise (the server
        goes on with its graceful shutdown) it is left to the worker, which
        then sends every later event at once.

        The sender is built to give up by `deadline` (see
        `blocking_transport`), so that what it could not deliver is back in
        the outbox, deferred, by then.
        """
        worker = self._worker
        main = threading.main_thread().ident
        frozen = worker is not None and worker.thread_id == main
        stuck = self._current
        if closing and frozen and stuck is not None:
            self._release_quietly(stuck)
        sender = self._blocking_sender(deadline)
        try:
            self._send_at_signal(sender, deadline, closing=closing)
        finally:
            sender.close()
        if closing:
            # `_after_signal_delivery` counts what is left.
            self._stop()
        else:
            self._send_promptly()

    def _send_at_signal(
        self, sender: Sender, deadline: float, *, closing: bool
    ) -> None:
        """Send what is due; closing, also what comes due before `deadline`."""
        while self._send_due_blocking(sender, deadline):
            pass
        while closing and self.outbox.depth():
            plan = self._flush_wait(deadline)
            if plan is None:
                return
            wait, _ = plan
            time.sleep(min(wait, _POLL_INTERVAL))
            self._send_due_blocking(sender, deadline)

    def _blocking_sender(self, deadline: float) -> Sender:
        if self._make_blocking_sender is not None:
            return self._make_blocking_sender(max(deadline - time.monotonic(), 0.0))
        assert self._make_sender is not None
        return _PortalSender(self._make_sender, deadline)

    def _drain_here(self, deadline: float) -> bool:
        """Deliver in a private loop in this thread: the exit path of last resort."""

        async def drain() -> bool:
            assert self._make_sender is not None
            sender = self._make_sender()
            worker = _Worker(detached=False, loop=None)
            try:
                while self.outbox.depth():
                    if time.monotonic() >= deadline:
                        return False
                    await self._deliver_due(sender, worker)
                    await anyio.sleep(min(self.flush_interval, _POLL_INTERVAL * 5))
                return True
            finally:
                await sender.aclose()

        self._inline_io = True
        try:
            return anyio.run(drain)
        finally:
            self._inline_io = False
