"""Fork safety: what a forked child must rebuild before it uses the package.

A child created by `os.fork()` (gunicorn with `--preload`, multiprocessing
with the fork start method) has only the thread that forked. Any lock
another thread held at that moment stays held forever in the child, the
parent's worker threads do not exist there, and connections inherited from
the parent must not be used (or closed) by the child.

Two kinds of state register here:

- objects holding threads, locks, connections or HTTP clients
  (`register_fork_aware`): each one's `_after_fork_in_child()` rebuilds
  them in the child;
- module-level locks (`fresh_after_fork`): a callback replaces the lock
  with a new one in the child.

Nothing here runs in the parent, and nothing runs where `os.fork` does not
exist.
"""

from __future__ import annotations

import os
import threading
import weakref
from collections.abc import Callable
from typing import Protocol

__all__ = ["abandon", "fresh_after_fork", "register_fork_aware"]


class ForkAware(Protocol):
    """An object that rebuilds its threads, locks and connections in a child."""

    def _after_fork_in_child(self) -> None: ...


_fork_aware: weakref.WeakSet[ForkAware] = weakref.WeakSet()
_lock = threading.Lock()

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
    global _lock
    _lock = threading.Lock()


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
