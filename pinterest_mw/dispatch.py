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
  task group instead, which is also the way to run it on trio.

What happens to a batch depends on Pinterest's answer:

- processed (with or without a warning): the event is deleted;
- the event failed (in a 200 or a 422): kept as rejected, with Pinterest's
  message;
- the request was refused (400, 401, 403, ...): all its events are kept as
  rejected with the status, and an ERROR is logged;
- 429, 5xx or a network failure, after the transport's own retries: the
  events are deferred, and retried after an exponential backoff (stored
  with them, so it survives a restart with a durable outbox).

An event is deleted only after Pinterest answered for it, so none is lost
and none is sent twice by design. One case remains: a process that dies
(or a loop that is cancelled) after Pinterest received a batch but before
the answer was recorded leaves it to be sent again once its lease expires.
The event keeps its `event_id`, but whether Pinterest drops a repeated API
event is not documented. After `max_attempts` deliveries an event is given
up: kept as rejected in a durable outbox, dropped with an ERROR otherwise.

When the outbox is full the overflow policy applies: `"drop_newest"` (the
default: the events that do not fit are dropped, with a WARNING and the
`dropped` counter), `"block"` (wait up to `block_timeout` for room, then
drop), or `"raise"` (`QueueFullError`, nothing of the call stored).

Fork safety: in a forked child (gunicorn with `--preload`) the dispatcher
starts over with new threads, locks and HTTP clients; a `MemoryOutbox`
starts empty there, and a `SQLiteOutbox`'s leases keep parent and child
from sending the same event. At interpreter exit, every dispatcher flushes
for up to `shutdown_timeout` seconds.

Privacy: log records and `Counters` hold counts, statuses and durations;
never payloads, user data or tokens. `DeliveryFailure` passes event ids and
Pinterest's reasons to the `on_error` callback, never payloads.

Loggers: `pinterest_mw.dispatch` logs each batch at DEBUG, deferrals and
drops at WARNING, rejected requests and lost events at ERROR.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import functools
import logging
import math
import random
import threading
import time
import weakref
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, fields
from typing import Any, Literal, Protocol, TypeVar

import anyio
import anyio.from_thread
import anyio.to_thread

from .events import WireEvent
from .exceptions import APIError, ConfigurationError, QueueFullError, TransportError
from .outbox import Claim, Outbox, OutboxItem, _register_fork_aware
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
"""Seconds between two WARNING lines about dropped events (counts add up)."""

_POLL_INTERVAL = 0.01

GAVE_UP = "gave up after"
"""How the reason of an event given up after its last attempt begins."""


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
    - `retried`: deliveries deferred for another attempt after a failure;
    - `dropped`: events not accepted because the outbox was full or the
      dispatcher closed, or given up (lost) after their last attempt;
    - `queue_depth`: events in the outbox waiting for delivery (in every
      process sharing a durable outbox).
    """

    accepted: int = 0
    sent: int = 0
    processed: int = 0
    warned: int = 0
    failed: int = 0
    retried: int = 0
    dropped: int = 0
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
    `"deferred"` (to be retried) or `"dropped"` (given up, lost).
    `error` is the request-level error, when there was one. No payload and
    no user data is passed.
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
    """Thread-safe running totals behind `Counters`."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
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
    failures: list[DeliveryFailure] = field(default_factory=list)


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


_live_dispatchers: weakref.WeakSet[_BaseDispatcher] = weakref.WeakSet()
_atexit_lock = threading.Lock()
_atexit_installed = False


def _close_all_at_exit() -> None:
    for dispatcher in list(_live_dispatchers):
        try:
            dispatcher._close_at_exit()
        except Exception:
            logger.exception("flushing events at exit failed")


def _register_for_exit(dispatcher: _BaseDispatcher) -> None:
    global _atexit_installed
    with _atexit_lock:
        if not _atexit_installed:
            atexit.register(_close_all_at_exit)
            _atexit_installed = True
        _live_dispatchers.add(dispatcher)


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


class _BaseDispatcher:
    """Storage, overflow policy, outcome handling and counters, for both dispatchers."""

    def __init__(
        self,
        outbox: Outbox,
        *,
        batch_size: int,
        flush_interval: float,
        overflow: OverflowPolicy,
        block_timeout: float,
        backoff: DeliveryBackoff | None,
        max_attempts: int | None,
        lease: float,
        shutdown_timeout: float,
        on_error: Callable[[DeliveryFailure], None] | None,
    ) -> None:
        _check_options(
            batch_size=batch_size,
            flush_interval=flush_interval,
            overflow=overflow,
            block_timeout=block_timeout,
            max_attempts=max_attempts,
            lease=lease,
            shutdown_timeout=shutdown_timeout,
        )
        self.outbox = outbox
        self.batch_size = batch_size
        self.flush_interval = flush_interval
        self.overflow = overflow
        self.block_timeout = block_timeout
        self.backoff = backoff if backoff is not None else DeliveryBackoff()
        self.max_attempts = max_attempts
        self.lease = lease
        self.shutdown_timeout = shutdown_timeout
        self.on_error = on_error
        self._closed = False
        self._setup_shared()
        _register_fork_aware(self)
        _register_for_exit(self)

    def _setup_shared(self) -> None:
        self._counters = _CounterSet()
        self._drop_lock = threading.Lock()
        self._drops_unlogged = 0
        self._drop_logged_at = -math.inf
        self._fresh = 0

    def _after_fork_in_child(self) -> None:
        self._setup_shared()

    @property
    def is_sending(self) -> bool:
        """Whether events are sent (False: they are only kept in the outbox)."""
        raise NotImplementedError

    @property
    def counters(self) -> Counters:
        """A snapshot of the counters; `queue_depth` is read from the outbox."""
        return self._counters.snapshot(self.outbox.depth())

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(outbox={self.outbox!r}, "
            f"batch_size={self.batch_size}, flush_interval={self.flush_interval}, "
            f"sending={self.is_sending})"
        )

    # --- storing ---

    def _accept(self, events: Sequence[WireEvent]) -> int:
        """Store events under the overflow policy; count and log what is dropped."""
        if not events:
            return 0
        if self._closed:
            self._drop(len(events), "the dispatcher is closed")
            return 0
        try:
            stored = self._put(events)
        except QueueFullError:
            self._drop(len(events), "the outbox is full")
            raise
        except Exception:
            logger.exception("could not store %d events in the outbox", len(events))
            self._drop(len(events), "the outbox could not store them")
            return 0
        if stored:
            self._counters.add(accepted=stored)
            self._after_accept(stored)
        if stored < len(events):
            self._drop(len(events) - stored, "the outbox is full")

        return stored

    def _put(self, events: Sequence[WireEvent]) -> int:
        if self.overflow == "raise":
            if not self.outbox.put(events, atomic=True):
                raise QueueFullError("the delivery queue is full")
            return len(events)
        stored = self.outbox.put(events)
        if self.overflow == "block" and stored < len(events):
            deadline = time.monotonic() + self.block_timeout
            if self.is_sending:
                self._ensure_worker()
            while stored < len(events) and time.monotonic() < deadline:
                self._wake_worker()
                time.sleep(_POLL_INTERVAL)
                stored += self.outbox.put(events[stored:])

        return stored

    def _after_accept(self, count: int) -> None:
        """Start the worker if needed; wake it when a batch is full."""
        if not self.is_sending:
            return
        self._ensure_worker()
        self._fresh += count
        if self._fresh >= self.batch_size:
            self._fresh = 0
            self._wake_worker()

    def _drop(self, count: int, why: str) -> None:
        self._counters.add(dropped=count)
        now = time.monotonic()
        with self._drop_lock:
            self._drops_unlogged += count
            if now - self._drop_logged_at < DROP_LOG_INTERVAL:
                return
            count, self._drops_unlogged = self._drops_unlogged, 0
            self._drop_logged_at = now
        logger.warning(
            "dropped %d events: %s (overflow policy %r)", count, why, self.overflow
        )

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
            reason = _describe(error)
            if _is_refusal(error):
                for item in claim.items:
                    plan.rejected[item.key] = reason
                self._note(plan, "rejected", claim.items, reason, error)
            else:
                retry_after = getattr(error, "retry_after", None)
                self._defer(plan, claim.items, reason, retry_after, error)
            return plan

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
        for message, items in refused.items():
            self._note(plan, "rejected", items, message)
        if unsent:
            self._defer(plan, unsent, "no result for the event", None, None)

        return plan

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

    def _report(self, claim: Claim, plan: _Settlement) -> None:
        """Count, log and tell `on_error` what became of a batch."""
        self._counters.add(
            processed=len(plan.completed),
            warned=plan.warned,
            failed=len(plan.rejected),
            retried=len(plan.deferred),
            dropped=len(plan.dropped),
        )
        logger.debug(
            "batch of %d events: %d processed, %d rejected, %d deferred, %d dropped",
            len(claim),
            len(plan.completed),
            len(plan.rejected),
            len(plan.deferred),
            len(plan.dropped),
        )
        for failure in plan.failures:
            self._log_failure(failure)
            self._call_on_error(failure)

    def _log_failure(self, failure: DeliveryFailure) -> None:
        count = len(failure.event_ids)
        if failure.outcome == "dropped":
            logger.error("%d events are lost: %s", count, failure.reason)
        elif failure.outcome == "deferred":
            logger.warning(
                "delivery of %d events failed (%s); they will be retried",
                count,
                failure.reason,
            )
        elif failure.reason.startswith(GAVE_UP):
            logger.error(
                "%d events were given up and kept in the outbox as rejected: %s",
                count,
                failure.reason,
            )
        elif failure.error is not None:
            logger.error(
                "Pinterest refused a request of %d events (%s); they are kept "
                "in the outbox as rejected",
                count,
                failure.reason,
            )
        else:
            logger.warning(
                "Pinterest rejected %d events; they are kept in the outbox "
                "with its reasons",
                count,
            )

    def _call_on_error(self, failure: DeliveryFailure) -> None:
        if self.on_error is None:
            return
        try:
            self.on_error(failure)
        except Exception:
            logger.exception("the on_error callback raised")

    def _account_leftovers(self) -> None:
        """At close: say what stays undelivered; count it lost if not durable."""
        try:
            left = self.outbox.depth()
        except Exception:
            logger.exception("could not read the outbox depth at close")
            return
        if not left:
            return
        if self.outbox.durable:
            # Keeping events is the whole job of a client that does not send.
            logger.log(
                logging.WARNING if self.is_sending else logging.INFO,
                "closing with %d events not yet delivered; they stay in the "
                "outbox for the next run",
                left,
            )
        else:
            self._counters.add(dropped=left)
            logger.error("closing with %d events not delivered; they are lost", left)

    def _close_at_exit(self) -> None:
        raise NotImplementedError


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
        shutdown_timeout: seconds `close()` and the exit hook flush for.
        on_error: called (in the worker) with each `DeliveryFailure`.
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
    ) -> None:
        self._make_sender = transport
        self._setup_thread()
        super().__init__(
            outbox,
            batch_size=batch_size,
            flush_interval=flush_interval,
            overflow=overflow,
            block_timeout=block_timeout,
            backoff=backoff,
            max_attempts=max_attempts,
            lease=lease,
            shutdown_timeout=shutdown_timeout,
            on_error=on_error,
        )

    def _setup_thread(self) -> None:
        self._lock = threading.Lock()
        self._wakeup = threading.Condition(self._lock)
        self._progress = threading.Condition()
        self._wake_requested = False
        self._stop_requested = False
        self._thread: threading.Thread | None = None

    def _after_fork_in_child(self) -> None:
        # The worker thread does not exist in the child; its transport (and
        # its connections, shared with the parent) are left untouched.
        super()._after_fork_in_child()
        self._setup_thread()

    @property
    def is_sending(self) -> bool:
        """Whether events are sent (False: they are only kept in the outbox)."""
        return self._make_sender is not None

    def submit(self, events: Sequence[WireEvent]) -> int:
        """Store events for delivery; return how many were accepted.

        Raises `QueueFullError` under the `"raise"` policy when they do not
        all fit; otherwise events that do not fit are dropped and counted.
        """
        return self._accept(events)

    async def asubmit(self, events: Sequence[WireEvent]) -> int:
        """`submit` for async code: disk writes and waits run in a thread."""
        if self.outbox.blocking or self.overflow == "block":
            return await anyio.to_thread.run_sync(self._accept, events)
        return self._accept(events)

    def start(self) -> None:
        """Start the worker now rather than at the first event.

        Useful to deliver what a durable outbox kept from an earlier run.
        """
        if self.is_sending and not self._closed:
            self._ensure_worker()
            self._wake_worker()

    def flush(self, timeout: float = 10.0) -> bool:
        """Send everything waiting now; wait until the outbox is empty.

        Deferred events are retried when their backoff ends, within the
        timeout. Returns True if the outbox emptied in time (in every
        process sharing it), False otherwise or when sending is off.
        """
        if not self.is_sending or self._closed:
            return self.outbox.depth() == 0
        self._ensure_worker()
        self._wake_worker()
        deadline = time.monotonic() + timeout
        while self.outbox.depth():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            with self._progress:
                self._progress.wait(min(remaining, self.flush_interval))

        return True

    async def aflush(self, timeout: float = 10.0) -> bool:  # noqa: ASYNC109 - twin of flush(timeout)
        """`flush` for async code, waiting in a thread."""
        return await anyio.to_thread.run_sync(self.flush, timeout)

    def close(self, timeout: float | None = None) -> None:
        """Flush for up to `timeout` seconds (`shutdown_timeout` by default), then stop.

        Events submitted afterwards are dropped and counted. Undelivered
        events stay in a durable outbox; in memory they are counted as
        dropped and logged at ERROR.
        """
        if self._closed:
            return
        timeout = self.shutdown_timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        if self.is_sending:
            self.flush(timeout)
        self._closed = True
        with self._wakeup:
            self._stop_requested = True
            self._wakeup.notify_all()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(max(deadline - time.monotonic(), 0.1))
        self._account_leftovers()

    async def aclose(self, timeout: float | None = None) -> None:  # noqa: ASYNC109 - twin of close(timeout)
        """`close` for async code, waiting in a thread."""
        await anyio.to_thread.run_sync(self.close, timeout)

    def _close_at_exit(self) -> None:
        self.close()

    # --- the worker ---

    def _ensure_worker(self) -> None:
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                return
            if self._stop_requested:
                return
            self._thread = threading.Thread(
                target=self._run, name="pinterest-mw-dispatcher", daemon=True
            )
            self._thread.start()

    def _wake_worker(self) -> None:
        with self._wakeup:
            self._wake_requested = True
            self._wakeup.notify_all()

    def _run(self) -> None:
        assert self._make_sender is not None
        try:
            sender = self._make_sender()
        except Exception:
            logger.exception("could not build the transport; nothing is sent")
            return
        try:
            while True:
                stopping = self._wait_for_work()
                self._deliver_due(sender)
                with self._progress:
                    self._progress.notify_all()
                if stopping:
                    break
        finally:
            try:
                sender.close()
            except Exception:
                logger.exception("closing the transport failed")

    def _wait_for_work(self) -> bool:
        """Sleep until woken or `flush_interval` passes; True when stopping."""
        with self._wakeup:
            if not (self._wake_requested or self._stop_requested):
                self._wakeup.wait(self.flush_interval)
            self._wake_requested = False
            self._fresh = 0
            return self._stop_requested

    def _deliver_due(self, sender: Sender) -> None:
        while True:
            try:
                claim = self.outbox.claim(self.batch_size, lease=self.lease)
            except Exception:
                logger.exception("could not read the outbox; retrying later")
                return
            if claim is None:
                return
            self._deliver(sender, claim)
            if len(claim) < self.batch_size:
                return

    def _deliver(self, sender: Sender, claim: Claim) -> None:
        self._counters.add(sent=len(claim))
        batch = [item.event for item in claim.items]
        try:
            results = sender.send_batch(batch)
        except (APIError, TransportError) as exc:
            plan = self._plan(claim, None, exc)
        except Exception as exc:
            logger.exception("sending %d events failed unexpectedly", len(claim))
            plan = self._plan(claim, None, exc)
        else:
            plan = self._plan(claim, results, None)
        # Counted before the outbox changes, so that whoever sees the outbox
        # empty (a flush) also sees the counters of its last batch.
        self._report(claim, plan)
        try:
            self._apply(claim, plan)
        except Exception:
            # The lease expires and the batch is claimed again.
            logger.exception("could not record the outcome of %d events", len(claim))


# --- async dispatcher ----------------------------------------------------------


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

    def is_alive(self) -> bool:
        if self.done or self.stopping:
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

    Args: as for `ThreadDispatcher`, with `transport` building an async
    sender (an `AsyncTransport`); it is called once per worker, in the
    worker's loop, since an async HTTP client belongs to one loop.
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
    ) -> None:
        self._make_sender = transport
        self._setup_worker()
        super().__init__(
            outbox,
            batch_size=batch_size,
            flush_interval=flush_interval,
            overflow=overflow,
            block_timeout=block_timeout,
            backoff=backoff,
            max_attempts=max_attempts,
            lease=lease,
            shutdown_timeout=shutdown_timeout,
            on_error=on_error,
        )

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

    @property
    def is_sending(self) -> bool:
        """Whether events are sent (False: they are only kept in the outbox)."""
        return self._make_sender is not None

    # --- public interface ---

    def submit(self, events: Sequence[WireEvent]) -> int:
        """Store events for delivery; return how many were accepted.

        Blocks for a durable outbox's write: in async code use `asubmit`.
        """
        return self._accept(events)

    async def asubmit(self, events: Sequence[WireEvent]) -> int:
        """Store events for delivery without blocking the loop."""
        if self.is_sending and not self._closed:
            self._ensure_worker()
        return await self._offload(self._accept, events, blocking=self._put_blocks)

    def start(self) -> None:
        """Start the worker now (in the caller's loop, or a private thread)."""
        if self.is_sending and not self._closed:
            self._ensure_worker()
            self._wake_worker()

    def flush(self, timeout: float = 10.0) -> bool:
        """Send everything waiting now; wait until the outbox is empty.

        Must not be called from the loop the worker runs in (it would wait
        for a worker it blocks): use `aflush` there.
        """
        if not self.is_sending or self._closed or not self.outbox.depth():
            return self.outbox.depth() == 0
        deadline = time.monotonic() + timeout
        try:
            self._ensure_worker()
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
        self._wake_worker()
        while self.outbox.depth():
            if time.monotonic() >= deadline:
                return False
            time.sleep(_POLL_INTERVAL)

        return True

    async def aflush(self, timeout: float = 10.0) -> bool:  # noqa: ASYNC109 - twin of flush(timeout)
        """Send everything waiting now; wait (without blocking) until it is out."""
        if not self.is_sending or self._closed:
            return await self._offload(self.outbox.depth) == 0
        self._ensure_worker()
        self._wake_worker()
        with anyio.move_on_after(timeout):
            # Polled: other processes sharing the outbox change it too.
            while await self._offload(self.outbox.depth):  # noqa: ASYNC110
                await anyio.sleep(_POLL_INTERVAL)
            return True

        return False

    def close(self, timeout: float | None = None) -> None:
        """Flush for up to `timeout` seconds, then stop the worker.

        From the worker's own loop, use `aclose`.
        """
        if self._closed:
            return
        timeout = self.shutdown_timeout if timeout is None else timeout
        if self.is_sending:
            self.flush(timeout)
        self._stop()
        thread = self._private_thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=1.0)
        self._account_leftovers()

    async def aclose(self, timeout: float | None = None) -> None:  # noqa: ASYNC109 - twin of close(timeout)
        """Flush for up to `timeout` seconds, then stop the worker."""
        if self._closed:
            return
        timeout = self.shutdown_timeout if timeout is None else timeout
        if self.is_sending:
            await self.aflush(timeout)
        await self._await_stopped(self._stop())
        await self._offload(self._account_leftovers)

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
            try:
                yield self
            finally:
                with anyio.CancelScope(shield=True):
                    if self.is_sending and not self._closed:
                        await self.aflush(self.shutdown_timeout)
                    await self._await_stopped(self._stop_worker())
                # A worker still waiting for Pinterest hands its batch back.
                group.cancel_scope.cancel()

    def _close_at_exit(self) -> None:
        self.close()

    # --- starting and stopping ---

    @property
    def _put_blocks(self) -> bool:
        return self.outbox.blocking or self.overflow == "block"

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
            if current is not None and current.is_alive():
                return
            worker = _Worker(detached=True, loop=loop, thread_id=threading.get_ident())
            worker.task = loop.create_task(
                self._work(worker), name="pinterest-mw-dispatcher"
            )
            self._worker = worker

    def _start_private_thread(self) -> None:
        with self._start_lock:
            current = self._worker
            if current is not None and current.is_alive():
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

    def _stop(self) -> _Worker | None:
        self._closed = True
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

    async def _work(self, worker: _Worker) -> None:
        assert self._make_sender is not None
        worker.thread_id = threading.get_ident()
        worker.loop = _running_asyncio_loop()
        worker.event = anyio.Event()
        try:
            sender = self._make_sender()
        except Exception:
            worker.done = True
            logger.exception("could not build the transport; nothing is sent")
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
        while not worker.forked:
            try:
                claim = await self._offload(
                    functools.partial(
                        self.outbox.claim, self.batch_size, lease=self.lease
                    )
                )
            except Exception:
                logger.exception("could not read the outbox; retrying later")
                return
            if claim is None:
                return
            try:
                await self._deliver(sender, claim)
            except anyio.get_cancelled_exc_class():
                # The loop is going away: hand the batch back for the next
                # worker instead of letting it wait for the lease to expire.
                self._release_quietly(claim)
                raise
            if len(claim) < self.batch_size:
                return

    async def _deliver(self, sender: AsyncSender, claim: Claim) -> None:
        self._counters.add(sent=len(claim))
        batch = [item.event for item in claim.items]
        try:
            results = await sender.send_batch(batch)
        except (APIError, TransportError) as exc:
            plan = self._plan(claim, None, exc)
        except Exception as exc:
            logger.exception("sending %d events failed unexpectedly", len(claim))
            plan = self._plan(claim, None, exc)
        else:
            plan = self._plan(claim, results, None)
        self._report(claim, plan)
        try:
            await self._offload(self._apply, claim, plan)
        except Exception:
            logger.exception("could not record the outcome of %d events", len(claim))

    def _release_quietly(self, claim: Claim) -> None:
        try:
            self.outbox.release(claim, [item.key for item in claim.items])
        except Exception:
            logger.exception("could not hand back %d events", len(claim))

    async def _offload(
        self, func: Callable[..., _T], *args: Any, blocking: bool | None = None
    ) -> _T:
        """Call `func` in a worker thread if it may block, else right here."""
        if blocking is None:
            blocking = self.outbox.blocking
        if blocking and not self._inline_io:
            return await anyio.to_thread.run_sync(func, *args)
        return func(*args)

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
