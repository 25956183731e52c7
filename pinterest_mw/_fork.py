"""Fork safety: what a forked child must rebuild before it uses the package.

A child created by `os.fork()` (gunicorn with `--preload`, multiprocessing
with the fork start method) has only the thread that forked. Any lock
another thread held at that moment stays held forever in the child, the
parent's worker threads do not exist there, and connections inherited from
the parent must not be used (or closed) by the child.

Three kinds of state register here:

- objects holding threads, locks, connections or HTTP clients
  (`register_fork_aware`): each one's `_after_fork_in_child()` rebuilds
  them in the child;
- module-level locks (`fresh_after_fork`): a callback replaces the lock
  with a new one in the child;
- objects whose connections must not even be open at the fork
  (`close_before_fork`): SQLite's, whose lock bookkeeping a child would
  inherit. They close them in the forking thread, before the fork.

Only `close_before_fork` runs anything in the parent, and nothing runs
where `os.fork` does not exist (`subprocess` does not run these hooks).
"""

from __future__ import annotations

import os
import threading
import weakref
from collections.abc import Callable
from typing import Protocol

__all__ = ["abandon", "close_before_fork", "fresh_after_fork", "register_fork_aware"]


class ForkAware(Protocol):
    """An object that rebuilds its threads, locks and connections in a child."""

    def _after_fork_in_child(self) -> None: ...


class ClosedAtFork(Protocol):
    """An object that closes its connections before a fork.

    `_close_for_fork()` returns whether it did, holding its locks until
    `_after_fork_in_parent()` (called only then) releases them; the child
    rebuilds its locks in `_after_fork_in_child()`.
    """

    def _close_for_fork(self) -> bool: ...

    def _after_fork_in_parent(self) -> None: ...


_fork_aware: weakref.WeakSet[ForkAware] = weakref.WeakSet()
_closed_at_fork: weakref.WeakSet[ClosedAtFork] = weakref.WeakSet()
_closed_for_this_fork: list[ClosedAtFork] = []
_lock = threading.Lock()
# Its own lock: the fork may come from a thread holding `_lock`.
_closed_lock = threading.Lock()

# Objects from the parent that the child must neither use nor close: closing
# a connection inherited through fork can disturb the parent's use of it.
# Keeping a reference stops the garbage collector from closing them.
_abandoned_in_child: list[object] = []


def fresh_after_fork(callback: Callable[[], None]) -> None:
    """Run `callback` in every child forked from now on, before other code.

    For module-level locks: the callback replaces the lock with a new one.
    """
    if hasattr(os, "register_at_fork"):
        os.register_at_fork(after_in_child=callback)


def _new_lock() -> None:
    global _lock, _closed_lock
    _lock = threading.Lock()
    _closed_lock = threading.Lock()


def _rebuild_fork_aware() -> None:
    for obj in list(_fork_aware):
        obj._after_fork_in_child()


# The registry's own lock first, then the objects.
fresh_after_fork(_new_lock)
fresh_after_fork(_rebuild_fork_aware)


def register_fork_aware(obj: ForkAware) -> None:
    """Have `obj._after_fork_in_child()` run in every child forked from now."""
    with _lock:
        _fork_aware.add(obj)


def abandon(*objects: object) -> None:
    """Keep the parent's `objects` alive, unused, in a child (see above)."""
    _abandoned_in_child.extend(obj for obj in objects if obj is not None)


def close_before_fork(obj: ClosedAtFork) -> None:
    """Have `obj._close_for_fork()` run before every fork from now on."""
    with _closed_lock:
        _closed_at_fork.add(obj)


def _before_fork() -> None:
    with _closed_lock:
        objects = list(_closed_at_fork)
    _closed_for_this_fork.extend(obj for obj in objects if obj._close_for_fork())


def _after_fork_in_parent() -> None:
    for obj in _closed_for_this_fork:
        obj._after_fork_in_parent()
    _closed_for_this_fork.clear()


def _forget_closed_in_child() -> None:
    # Their locks are rebuilt by `_after_fork_in_child()`, never released.
    _closed_for_this_fork.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(before=_before_fork, after_in_parent=_after_fork_in_parent)
fresh_after_fork(_forget_closed_in_child)
