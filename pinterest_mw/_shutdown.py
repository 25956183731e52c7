"""Last chances to deliver queued events: at interpreter exit and at SIGTERM.

Every dispatcher registers here while it is open. At interpreter exit
(`atexit`) each one is closed, which flushes it for up to its
`shutdown_timeout`.

SIGTERM ends a process without `atexit` when nothing in Python handles it:
that is Python's default, which `flask run` (werkzeug) keeps, and the
action uvicorn restores and raises again after its graceful shutdown.
Events waiting in memory would be lost at every deploy. So when a sending
dispatcher over a non-durable outbox (or a client that will build one) is
created or started in the main thread, a process-wide SIGTERM hook is
installed, once:

- Over the default action: at SIGTERM, every open dispatcher delivers what
  it holds within its `shutdown_timeout` and is closed; then the default
  action is restored and the signal raised again, so the process ends as
  before, killed by SIGTERM (status -15, or 143 in a shell). What could
  not be delivered by the deadline (Pinterest down or stalled) is counted
  dropped and logged at ERROR before that, by the handler itself, whatever
  became of the delivery (which only delivers and stops).
- Over a handler written in Python (uvicorn's, gunicorn's): that handler
  runs first, then what is queued is delivered there and then within the
  deadline, with a blocking transport (the handler runs in the event
  loop's thread, so nothing there may await), and from then on every
  accepted event wakes the worker at once. What is still undelivered at
  the deadline is logged at ERROR; it is retried while the process runs
  (and counted at its `close()`, if it gets there).

Nothing is installed over `SIG_IGN` or a handler set outside Python, from
a thread other than the main one, or for a durable outbox, whose events
survive the process anyway.

Limitations:

- Under uvicorn (`uvicorn app:app`), the hook runs when SIGTERM arrives,
  before the graceful shutdown. Events accepted during that shutdown, by
  requests still being answered, are sent at once, but nothing waits for
  them: uvicorn then restores the default action and raises SIGTERM again,
  and a request to Pinterest still under way dies with the process. Give
  the app `lifespan=lifespan(client)`, or use a durable outbox, to close
  that window. (A client built before uvicorn installs its handlers, as in
  a script that calls `uvicorn.run()`, installs the hook over the default
  action; uvicorn then calls it last, and nothing is left out.)
- Delivery runs in a helper thread that the handler waits for, up to the
  deadline. If the signal interrupts the main thread while it holds a lock
  that delivery needs (in the middle of a `track()`), delivery waits in
  vain until the deadline, and what was queued is lost (counted and
  logged). A request the thread dispatcher's worker already had under way
  keeps its transport's timeout and retry budget: it is not waited for
  past the deadline.
- A handler installed later by other code replaces the hook; it is not
  installed again.
"""

from __future__ import annotations

import atexit
import logging
import signal
import threading
import time
import weakref
from collections.abc import Callable
from types import FrameType
from typing import Any, Protocol

from ._fork import fresh_after_fork

__all__ = ["close_all_at_exit", "register", "watch_sigterm"]

logger = logging.getLogger(__name__)

EXIT_FLUSH_FAILED_LOG = "flushing events at exit failed"
SIGNAL_DELIVERY_FAILED_LOG = "delivering events at SIGTERM failed"


class Closable(Protocol):
    """What registers here: a dispatcher, seen from its shutdown."""

    shutdown_timeout: float

    @property
    def _needs_signal_delivery(self) -> bool:
        """Whether SIGTERM would lose what it holds: sending, open, in memory."""
        ...

    def _close_at_exit(self) -> None: ...

    def _deliver_at_signal(self, deadline: float, *, closing: bool) -> None: ...

    def _after_signal_delivery(self, *, closing: bool) -> None: ...


_open: weakref.WeakSet[Closable] = weakref.WeakSet()
_lock = threading.Lock()
_atexit_installed = False
_sigterm_installed = False


def _new_lock() -> None:
    global _lock
    _lock = threading.Lock()


fresh_after_fork(_new_lock)


def register(dispatcher: Closable) -> None:
    """Have `dispatcher` closed at exit (and delivered at SIGTERM, if hooked)."""
    global _atexit_installed
    with _lock:
        if not _atexit_installed:
            atexit.register(close_all_at_exit)
            _atexit_installed = True
        _open.add(dispatcher)


def close_all_at_exit() -> None:
    """Close every open dispatcher; a failure is logged and the others go on."""
    for dispatcher in list(_open):
        try:
            dispatcher._close_at_exit()
        except Exception:
            logger.exception(EXIT_FLUSH_FAILED_LOG)


def watch_sigterm() -> None:
    """Install the SIGTERM hook (see the module docs), once per process.

    Does nothing outside the main thread, over `SIG_IGN` or a handler not
    set from Python, or once installed. Cheap enough to call at every
    construction: it makes no system call.
    """
    global _sigterm_installed
    if _sigterm_installed or threading.current_thread() is not threading.main_thread():
        return
    previous = signal.getsignal(signal.SIGTERM)
    if previous == signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _deliver_then_die)
    elif callable(previous):
        signal.signal(signal.SIGTERM, _Chained(previous))
    else:
        return
    _sigterm_installed = True


def _deliver_then_die(signum: int, frame: FrameType | None) -> None:
    """Over the default action: deliver and close, then end as the signal would."""
    try:
        _deliver_all(closing=True)
    finally:
        signal.signal(signum, signal.SIG_DFL)
        signal.raise_signal(signum)


class _Chained:
    """Over a Python handler: run it, then deliver what is queued."""

    def __init__(self, previous: Callable[[int, FrameType | None], Any]) -> None:
        self.previous = previous

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        try:
            self.previous(signum, frame)
        finally:
            _deliver_all(closing=False)


def _deliver_all(*, closing: bool) -> None:
    """Deliver for every dispatcher that needs it, each within its deadline.

    In helper threads that this (the signal handler's) thread waits for: a
    lock the interrupted code holds can then stall a delivery, not the
    handler. Once a delivery ended or its deadline passed, the dispatcher
    says (and, closing, counts) what is left, here, whatever became of the
    helper: the process may end as soon as this returns.
    """
    now = time.monotonic()
    started: list[tuple[Closable, threading.Thread | None, float]] = []
    for dispatcher in list(_open):
        if not dispatcher._needs_signal_delivery:
            continue
        deadline = now + dispatcher.shutdown_timeout
        started.append(
            (dispatcher, _start_helper(dispatcher, deadline, closing), deadline)
        )
    for dispatcher, helper, deadline in started:
        if helper is not None:
            helper.join(max(deadline - time.monotonic(), 0.0))
        try:
            dispatcher._after_signal_delivery(closing=closing)
        except Exception:
            logger.exception(SIGNAL_DELIVERY_FAILED_LOG)


def _start_helper(
    dispatcher: Closable, deadline: float, closing: bool
) -> threading.Thread | None:
    helper = threading.Thread(
        target=_deliver_one,
        args=(dispatcher, deadline, closing),
        name="pinterest-mw-sigterm",
        daemon=True,
    )
    try:
        helper.start()
    except RuntimeError:
        # No thread can start (interpreter shutdown): nothing to wait for.
        return None

    return helper


def _deliver_one(dispatcher: Closable, deadline: float, closing: bool) -> None:
    try:
        dispatcher._deliver_at_signal(deadline, closing=closing)
    except Exception:
        logger.exception(SIGNAL_DELIVERY_FAILED_LOG)
