"""What the request hooks share: `@track_conversion` and the middleware's rules.

Both queue events from inside someone else's request, so both go through one
`Emitter` that never raises: a failure is logged (the event name and the
kind of failure, never a value), counted in `hook_counters()` and handed to
the user's `on_error`. The middleware also tells the decorator, through a
contextvar, which request it serves and with which client, and takes the
decorator's events over until it has seen the status of the response.
"""

from __future__ import annotations

import functools
import inspect
import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, fields
from typing import cast

from pydantic_core import PydanticCustomError
from starlette.types import Scope

from ._field_paths import safe_path
from ._fork import fresh_after_fork
from .client import Client, EventInput, get_default_client
from .context import RequestContext
from .events import ActionSource, Event, _validate_event_name
from .exceptions import ConfigurationError, EventValidationError, QueueFullError

__all__ = ["HookCounters", "hook_counters"]

# The decorator's records keep the logger users already tune; the middleware
# passes its own to `Emitter`.
logger = logging.getLogger("pinterest_mw.decorators")

ErrorHook = Callable[[Exception], None]

NOT_QUEUED_MESSAGE = "%s: %s event not queued (%s)"
FIELD_WARNING_MESSAGE = "%s: %s event %s queued with %s at %s: %s"
FIRST_FIELD_WARNING_MESSAGE = (
    FIELD_WARNING_MESSAGE + " (from now on at DEBUG for this hook, event and field)"
)
NOT_ACCEPTED_MESSAGE = "the client did not accept the event; its own log line says why"

NOT_VISIT_METHODS = frozenset({"CONNECT", "HEAD", "OPTIONS", "TRACE"})
"""Request methods that never emit an event.

Starlette and Flask run a GET view for `HEAD`, and link checkers,
prefetchers and CORS preflights send `HEAD` and `OPTIONS`: none of them is
a visit or an action of the person behind the browser.
"""


def is_visit_method(method: str | None) -> bool:
    """Whether a request with this method may emit an event (None: unknown)."""
    return method not in NOT_VISIT_METHODS


# --- counters -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HookCounters:
    """What the request hooks of this process did, since it started.

    Request hooks are `@track_conversion` and the middleware's route rules.

    - `tracked`: events queued on a client;
    - `skipped`: views that returned successfully but whose event was
      skipped (`current_event().skip()` or a `when` predicate saying no);
    - `failed`: events that could not be queued: a callable raised, the
      event was invalid, or the client did not accept it (its queue was
      full, whatever the overflow policy, it was closed, or its outbox
      failed: the client also counts the event in `counters.dropped`).

    What happens once queued is in the client's `counters`.
    """

    tracked: int = 0
    skipped: int = 0
    failed: int = 0

    def as_dict(self) -> dict[str, int]:
        """The counters as a plain dict, for a health endpoint."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


_counts = {"tracked": 0, "skipped": 0, "failed": 0}
_counts_lock = threading.Lock()


def hook_counters() -> HookCounters:
    """A snapshot of the request hooks' counters (see `HookCounters`)."""
    with _counts_lock:
        return HookCounters(**_counts)


def count(name: str) -> None:
    with _counts_lock:
        _counts[name] += 1


class _SeenWarnings:
    """Which field warnings the hooks have logged at WARNING already.

    Bounded: past `limit` kinds, every new one is logged at WARNING too
    (rather than none), which only a hook with that many paths can reach.
    """

    def __init__(self, limit: int = 1000) -> None:
        self._seen: set[tuple[str, str, str]] = set()
        self._limit = limit
        self._lock = threading.Lock()

    def first(self, kind: tuple[str, str, str]) -> bool:
        with self._lock:
            if kind in self._seen:
                return False
            if len(self._seen) < self._limit:
                self._seen.add(kind)
            return True

    def _after_fork_in_child(self) -> None:
        self._lock = threading.Lock()


_seen_warnings = _SeenWarnings()


def _fresh_locks_in_child() -> None:
    global _counts_lock
    _counts_lock = threading.Lock()
    _seen_warnings._after_fork_in_child()


fresh_after_fork(_fresh_locks_in_child)


# --- the request being served ------------------------------------------------------


class Serving:
    """What the middleware tells the hooks about the request it serves.

    A view's event waits in `held` until the middleware has seen the status
    actually sent: only the middleware knows it (a response model that
    fails validation, a `response_class`, a dependency that sets the
    status all change it after the view returned).
    """

    __slots__ = ("client", "held", "is_open", "scope")

    def __init__(self, scope: Scope | None, client: Client | None) -> None:
        self.scope = scope
        self.client = client
        self.held: list[HeldEvent] = []
        self.is_open = True

    def hold(self, event: HeldEvent) -> bool:
        """Keep `event` until the response is known; False once it was."""
        if self.is_open:
            self.held.append(event)
        return self.is_open


serving_var: ContextVar[Serving | None] = ContextVar(
    "pinterest_mw_serving", default=None
)


@contextmanager
def served_by_middleware(serving: Serving) -> Iterator[Serving]:
    """Let hooks find the request and the middleware's client (for middleware).

    Events held once the block ends are the middleware's to queue or drop;
    when the app raises, they are dropped.
    """
    token = serving_var.set(serving)
    try:
        yield serving
    except BaseException:
        if serving.held:
            logger.debug("%d held event(s) dropped: the app raised", len(serving.held))
        serving.held.clear()
        raise
    finally:
        serving.is_open = False
        serving_var.reset(token)


def serving_client() -> Client:
    serving = serving_var.get()
    if serving is not None and serving.client is not None:
        return serving.client
    return get_default_client()


def is_success(status: int | None) -> bool:
    return status is not None and 200 <= status < 300


def release_held(serving: Serving, status: int | None) -> None:
    """Queue the events held for this response if its status is 2xx."""
    for held in _releasable(serving, status):
        held.submit()


async def arelease_held(serving: Serving, status: int | None) -> None:
    """`release_held` for async code."""
    for held in _releasable(serving, status):
        await held.asubmit()


def _releasable(serving: Serving, status: int | None) -> list[HeldEvent]:
    held, serving.held = serving.held, []
    if held and not is_success(status):
        logger.debug("no event for a response with status %s", status)
        return []
    return held


def check_event_name(event_name: object, owner: str) -> str:
    try:
        return str(_validate_event_name(event_name))
    except PydanticCustomError:
        raise ConfigurationError(
            f"{owner}: event_name must be a standard Pinterest event name or "
            "an advertiser-defined name of letters and underscores"
        ) from None


def check_action_source(action_source: str, owner: str) -> str:
    try:
        return str(ActionSource(action_source))
    except ValueError:
        choices = ", ".join(source.value for source in ActionSource)
        raise ConfigurationError(
            f"{owner}: action_source must be one of {choices}"
        ) from None


def is_async_callable(value: object) -> bool:
    """Whether calling `value` gives an awaitable, as Starlette tells it.

    Sees through `functools.partial` and recognises objects whose
    `__call__` is a coroutine function.
    """
    while isinstance(value, functools.partial):
        value = value.func
    if inspect.iscoroutinefunction(value):
        return True
    if isinstance(value, type) or inspect.isroutine(value):
        # Calling a class builds an instance, whatever its __call__ does.
        return False
    call = getattr(value, "__call__", None)  # noqa: B004 - the method, not callable()
    return inspect.iscoroutinefunction(call)


# --- reporting failures ---------------------------------------------------------


class SourceError(Exception):
    """A user callable raised: which one, with the original as `__cause__`."""

    def __init__(self, source: str) -> None:
        super().__init__(source)
        self.source = source


def _reason(error: Exception) -> str:
    """Why an event was not queued, in words that hold no value."""
    if isinstance(error, SourceError):
        cause = error.__cause__
        return f"the {error.source} callable raised {type(cause).__name__}"
    if isinstance(error, EventValidationError):
        paths = ", ".join(sorted({safe_path(e.path) for e in error.errors}))
        return f"invalid event: {paths}"
    if isinstance(error, QueueFullError):
        # Ours, and value-free: a full queue, a failed outbox, or not taken.
        return str(error)

    return type(error).__name__


def _report_failure(
    log: logging.Logger,
    origin: str,
    event_name: str,
    error: Exception,
    on_error: ErrorHook | None,
) -> None:
    """Log, count and pass on a failure; the request carries on whatever happens."""
    count("failed")
    log.warning(NOT_QUEUED_MESSAGE, origin, event_name, _reason(error))
    if on_error is None:
        return
    original = error.__cause__ if isinstance(error, SourceError) else error
    try:
        on_error(cast(Exception, original))
    except Exception as hook_error:  # noqa: BLE001 - the user's hook must not break the view
        log.warning(
            "%s: the on_error hook raised %s", origin, type(hook_error).__name__
        )


# Builds an event's data and finds its request context; may raise.
Prepare = Callable[[], tuple[EventInput, RequestContext | None]]


class Emitter:
    """Queues events on a client for a request hook, and never raises.

    `track` builds (validates and hashes) and queues at once; a hook that
    must wait for the response builds first (`build`, so that the data is
    read while the request is there) and queues later (`HeldEvent.submit`).
    """

    __slots__ = ("_client", "_log", "_on_error", "origin")

    def __init__(
        self,
        origin: str,
        client: Client | None,
        on_error: ErrorHook | None,
        log: logging.Logger = logger,
    ) -> None:
        self.origin = origin
        self._client = client
        self._on_error = on_error
        self._log = log

    def client(self) -> Client:
        return self._client if self._client is not None else serving_client()

    def build(self, event_name: str, prepare: Prepare) -> HeldEvent | None:
        """The event built, with its client; None when it failed (reported)."""
        try:
            data, context = prepare()
            client = self.client()
            event = client.build(data, context=context)
        except Exception as error:  # noqa: BLE001 - logged and counted by fail()
            self.fail(event_name, error)
            return None
        return HeldEvent(self, event_name, client, event)

    def track(self, event_name: str, prepare: Prepare) -> None:
        held = self.build(event_name, prepare)
        if held is not None:
            held.submit()

    async def atrack(self, event_name: str, prepare: Prepare) -> None:
        held = self.build(event_name, prepare)
        if held is not None:
            await held.asubmit()

    def fail(self, event_name: str, error: Exception) -> None:
        _report_failure(self._log, self.origin, event_name, error, self._on_error)

    def queued(self, event_name: str, event: Event, accepted: int) -> None:
        """Count an event the client took, or report one it did not take.

        A taken event's field warnings (a value dropped, or hashed on an
        assumption: matches Pinterest may miss) are logged by path and
        reason, never by value; each kind once at WARNING, then at DEBUG,
        so that a hook seeing the same data every request cannot flood the
        log.
        """
        if not accepted:
            # A full queue, a closed client or a failed outbox: the client
            # logged which, and counted the event dropped.
            self.fail(event_name, QueueFullError(NOT_ACCEPTED_MESSAGE))
            return
        count("tracked")
        self._log.debug(
            "%s: queued %s event %s", self.origin, event_name, event.event_id
        )
        for warning in event.warnings:
            path = safe_path(warning.path)
            first = _seen_warnings.first((self.origin, event_name, path))
            self._log.log(
                logging.WARNING if first else logging.DEBUG,
                FIRST_FIELD_WARNING_MESSAGE if first else FIELD_WARNING_MESSAGE,
                self.origin,
                event_name,
                event.event_id,
                "a value dropped" if warning.dropped else "a value sent as assumed",
                path,
                warning.reason,
            )


@dataclass(frozen=True, slots=True)
class HeldEvent:
    """An event built by a hook, waiting to be queued on `client`."""

    emitter: Emitter
    event_name: str
    client: Client
    event: Event

    def submit(self) -> None:
        """Queue the event; a failure is reported by the emitter, never raised."""
        try:
            accepted = self.client.submit([self.event])
        except Exception as error:  # noqa: BLE001 - logged and counted by fail()
            self.emitter.fail(self.event_name, error)
            return
        self.emitter.queued(self.event_name, self.event, accepted)

    async def asubmit(self) -> None:
        """`submit` for async code."""
        try:
            accepted = await self.client.asubmit([self.event])
        except Exception as error:  # noqa: BLE001 - logged and counted by fail()
            self.emitter.fail(self.event_name, error)
            return
        self.emitter.queued(self.event_name, self.event, accepted)
