"""What the request hooks share: `@track_conversion` and the middleware's rules.

Both queue events from inside someone else's request, so both go through one
`Emitter` that never raises: a failure is logged (the event name and the
kind of failure, never a value), counted in `hook_counters()` and handed to
the user's `on_error`. The middleware also tells the decorator, through a
contextvar, which request it serves and with which client.
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

from .client import Client, EventInput, get_default_client
from .context import RequestContext
from .events import ActionSource, _validate_event_name
from .exceptions import ConfigurationError, EventValidationError

__all__ = ["HookCounters", "hook_counters"]

# The decorator's records keep the logger users already tune; the middleware
# passes its own to `Emitter`.
logger = logging.getLogger("pinterest_mw.decorators")

ErrorHook = Callable[[Exception], None]

NOT_QUEUED_MESSAGE = "%s: %s event not queued (%s)"

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
    - `skipped`: successful views whose event was skipped
      (`current_event().skip()` or a `when` predicate saying no);
    - `failed`: events that could not be queued: a callable raised, the
      event was invalid, or the queue refused it.

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


# --- the request being served ------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Serving:
    """What the middleware tells the hooks about the request it serves."""

    scope: Scope | None
    client: Client | None


serving_var: ContextVar[Serving | None] = ContextVar(
    "pinterest_mw_serving", default=None
)


@contextmanager
def served_by_middleware(scope: Scope | None, client: Client | None) -> Iterator[None]:
    """Let hooks find the ASGI scope and the middleware's client (for middleware)."""
    token = serving_var.set(Serving(scope, client))
    try:
        yield
    finally:
        serving_var.reset(token)


def serving_client() -> Client:
    serving = serving_var.get()
    if serving is not None and serving.client is not None:
        return serving.client
    return get_default_client()


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
        paths = ", ".join(sorted({e.path for e in error.errors}))
        return f"invalid event: {paths}"

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
    """Queues events on a client for a request hook, and never raises."""

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

    def track(self, event_name: str, prepare: Prepare) -> None:
        try:
            data, context = prepare()
            event = self.client().track(data, context=context)
        except Exception as error:  # noqa: BLE001 - logged and counted by fail()
            self.fail(event_name, error)
            return
        self._tracked(event_name, event.event_id)

    async def atrack(self, event_name: str, prepare: Prepare) -> None:
        try:
            data, context = prepare()
            event = await self.client().atrack(data, context=context)
        except Exception as error:  # noqa: BLE001 - logged and counted by fail()
            self.fail(event_name, error)
            return
        self._tracked(event_name, event.event_id)

    def fail(self, event_name: str, error: Exception) -> None:
        _report_failure(self._log, self.origin, event_name, error, self._on_error)

    def _tracked(self, event_name: str, event_id: str) -> None:
        count("tracked")
        self._log.debug("%s: queued %s event %s", self.origin, event_name, event_id)
