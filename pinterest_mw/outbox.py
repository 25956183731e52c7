"""Where accepted events wait until Pinterest has answered for them.

An outbox holds serialized events (`WireEvent`s: hashed user data only,
never a raw email or phone number) between the moment `track()` accepts
them and the moment Pinterest answers for them. The dispatcher is its only
reader, and every store follows the same life cycle:

```
put ──► pending ──claim──► in flight (leased) ──complete──► deleted
           ▲                    │    │
           │◄──defer (backoff)──┘    └──reject──► rejected ──purge──► deleted
           │◄──release (unsent)──┘                   │
           └───────────────requeue_rejected──────────┘
```

- A claim takes up to N due events under a lease (a claim id and an expiry),
  all stored in one mode (test or live, see `put`). A lease that expires,
  because its process died or hung, makes its events claimable again, so
  another worker re-sends them; a `SQLiteOutbox` also hands back at once
  the leases of a process of this host that is gone.
- `complete` deletes events Pinterest processed; `reject` keeps events
  Pinterest refused, with its reason, until `rejected_retention` passes;
  `defer` puts events back after a retryable failure, one attempt more and
  not before their backoff delay; `release` puts back events that were
  claimed but not sent.
- The store is bounded by a number of events and of payload bytes (pending
  and in flight; rejected events have their own bound). `put` stores the
  longest prefix of its events that fits and returns how many it stored;
  with `atomic=True` it stores all of them or none.
- Each stored event keeps the mode it was accepted in (`test`: Pinterest's
  test mode, live, or None for "the sender's own"), so that events kept by
  a test-mode client never go out live from another one, nor the reverse.

Delivery is at least once. An event is deleted only once Pinterest answered
for it, so a batch whose answer never arrived is sent again: after a read
timeout or a lost connection once the request was sent, and when the
process holding it was killed mid-send. The repeat carries the same
`event_id`, by which Pinterest de-duplicates web and app events (offline
events are not de-duplicated).

Two stores: `MemoryOutbox` (in-process, the default) and `SQLiteOutbox`
(a file; survives restarts and can be shared by several processes).
Rejected events past `rejected_retention` are neither counted, listed nor
requeued, in either store.

Privacy: stores hold what the `WireEvent` payload holds, that is hashed user
data and the unhashed IP address, user agent and click id Pinterest needs.
Their statistics, `repr`s and log records hold counts, event ids, event
names, process ids and Pinterest's messages, never payloads.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import math
import os
import secrets
import socket
import sqlite3
import threading
import time
import uuid
import weakref
from collections import Counter, OrderedDict, deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, NamedTuple, Protocol, runtime_checkable

from ._fork import (
    abandon,
    close_before_fork,
    fresh_after_fork,
    register_fork_aware,
)
from .events import WireEvent
from .exceptions import ConfigurationError

__all__ = [
    "Claim",
    "MemoryOutbox",
    "Outbox",
    "OutboxItem",
    "OutboxStats",
    "RejectedEvent",
    "SQLiteOutbox",
]

logger = logging.getLogger(__name__)

DEFAULT_REJECTED_RETENTION = 7 * 24 * 3600.0
"""Seconds a rejected event is kept: Pinterest refuses events older than that."""

PURGED_LOG = (
    "deleted %d rejected events for good (past the retention or beyond the "
    "max_rejected bound)"
)
RECLAIMED_LOG = (
    "%d events leased by process %d, which is gone, are due again at once; "
    "Pinterest may have received them already"
)
CLOCK_STEP_LOG = (
    "the clock stepped back by %.0f s: the retry times of %d deferred events "
    "are moved back as much"
)

# Backward steps of the wall clock smaller than this are not corrected.
_CLOCK_STEP_TOLERANCE = 1.0

_MAX_REASON_LENGTH = 500
_MAX_LISTED_REASONS = 20


class OutboxItem(NamedTuple):
    """One claimed event: its store key, the event, and its earlier attempts.

    Its `repr` names the event by id and name only, never its payload.
    """

    key: int
    event: WireEvent
    attempts: int

    def __repr__(self) -> str:
        return (
            f"OutboxItem(key={self.key}, event_id={self.event.event_id!r}, "
            f"event_name={self.event.event_name!r}, attempts={self.attempts})"
        )


@dataclass(frozen=True, slots=True, repr=False)
class Claim:
    """Events taken for one delivery, held under a lease until `expires_at`.

    `expires_at` is in Unix seconds (the outbox's clock). Settle every item
    with `complete`, `reject`, `defer` or `release` before then; after it,
    another claim may take them again. `test` is the mode every event of
    the claim was stored in: send them with it (None: the sender's own).
    Its `repr` counts the events and shows no payload.
    """

    claim_id: str
    expires_at: float
    items: tuple[OutboxItem, ...]
    test: bool | None = None

    def __len__(self) -> int:
        return len(self.items)

    def __repr__(self) -> str:
        return (
            f"Claim(claim_id={self.claim_id!r}, expires_at={self.expires_at}, "
            f"events={len(self.items)}, test={self.test})"
        )


@dataclass(frozen=True, slots=True)
class OutboxStats:
    """Counts by state, and the reasons behind deferred and rejected events.

    - `pending`: waiting to be sent, due now or later (`deferred` included);
    - `deferred`: waiting for their retry time after a failed attempt;
    - `in_flight`: claimed under a lease that has not expired;
    - `rejected`: refused by Pinterest (or given up), kept with a reason;
    - `size_bytes`: payload bytes of pending and in-flight events;
    - `next_attempt_at`: Unix time of the earliest deferred retry, if any;
    - `rejected_reasons` / `deferred_reasons`: reason -> count, most
      frequent first (at most 20 each). Reasons are Pinterest's messages or
      ours ("HTTP 503", "TransportError"); they never quote event fields.
    """

    pending: int
    deferred: int
    in_flight: int
    rejected: int
    size_bytes: int
    next_attempt_at: float | None = None
    rejected_reasons: Mapping[str, int] = field(default_factory=dict)
    deferred_reasons: Mapping[str, int] = field(default_factory=dict)

    @property
    def depth(self) -> int:
        """Events still to deliver: pending plus in flight."""
        return self.pending + self.in_flight


@dataclass(frozen=True, slots=True)
class RejectedEvent:
    """A rejected event as listed for an operator: ids, reason, times.

    Holds no payload, so listing rejected events shows no user data.
    """

    key: int
    event_id: str
    event_name: str
    reason: str
    rejected_at: float
    attempts: int


@runtime_checkable
class Outbox(Protocol):
    """A store of serialized events awaiting delivery (see the module docs).

    Implementations are thread-safe. `durable` says whether events survive
    the process; `blocking` says whether calls may wait on disk or locks,
    in which case async code calls them through a worker thread.
    """

    @property
    def durable(self) -> bool:
        """Whether stored events survive the end of the process."""
        ...

    @property
    def blocking(self) -> bool:
        """Whether calls may block on I/O (async callers use a thread)."""
        ...

    def put(
        self,
        events: Sequence[WireEvent],
        *,
        atomic: bool = False,
        test: bool | None = None,
    ) -> int:
        """Store events in order; return how many were stored.

        The longest prefix that fits within the bounds is stored (all or
        none with `atomic=True`). Returns only once they are stored (on disk
        for a durable store). `test` is the mode they are to be sent in
        (True: Pinterest's test mode; None: whatever the sender uses).
        """
        ...

    def claim(self, limit: int, *, lease: float) -> Claim | None:
        """Take up to `limit` due events for `lease` seconds; None if none is due.

        The events of one claim share their mode: the oldest due event's.
        """
        ...

    def complete(self, claim: Claim, keys: Iterable[int]) -> None:
        """Delete events Pinterest processed."""
        ...

    def reject(self, claim: Claim, reasons: Mapping[int, str]) -> None:
        """Keep events Pinterest refused, each with its reason (key -> reason)."""
        ...

    def defer(self, claim: Claim, delays: Mapping[int, float], reason: str) -> None:
        """Put events back after a retryable failure (key -> delay in seconds).

        Each counts one more attempt and is not due before its delay passes.
        Events whose lease was meanwhile taken by another claim are left alone.
        """
        ...

    def release(self, claim: Claim, keys: Iterable[int]) -> None:
        """Put back events that were claimed but not sent: due now, no attempt."""
        ...

    def depth(self) -> int:
        """Events still to deliver: pending plus in flight."""
        ...

    def stats(self) -> OutboxStats:
        """Counts by state and the reasons behind deferred and rejected events."""
        ...

    def list_rejected(self, limit: int = 100) -> list[RejectedEvent]:
        """The most recently rejected events, newest first, without payloads.

        Events past the retention are left out.
        """
        ...

    def requeue_rejected(self, *, reason: str | None = None) -> int:
        """Make rejected events (all, or those with `reason`) pending again.

        Their attempts start over; those past the retention are purged
        instead. Returns how many were requeued. The size bound is not
        applied: this is an operator's decision.
        """
        ...

    def close(self) -> None:
        """Release the store's resources (connections, files)."""
        ...


# --- shared helpers ------------------------------------------------------------


def _clean_reason(reason: str | None) -> str:
    text = " ".join((reason or "").split()) or "no reason given"
    return text[:_MAX_REASON_LENGTH]


def _check_bounds(max_events: int, max_bytes: int, max_rejected: int) -> None:
    if max_events < 1:
        raise ConfigurationError("outbox max_events must be at least 1")
    if max_bytes < 1:
        raise ConfigurationError("outbox max_bytes must be at least 1")
    if max_rejected < 0:
        raise ConfigurationError("outbox max_rejected must not be negative")


def _fitting(
    events: Sequence[WireEvent],
    atomic: bool,
    room_events: int,
    room_bytes: int,
) -> int:
    """How many of `events`, from the first, fit in the room left."""
    count = 0
    for event in events:
        size = len(event.payload)
        if count >= room_events or size > room_bytes:
            break
        count += 1
        room_bytes -= size
    if atomic and count < len(events):
        return 0

    return count


def _log_purged(count: int) -> None:
    if count:
        # They were counted (`failed`) and logged when rejected; now they
        # are gone for good.
        logger.warning(PURGED_LOG, count)


def _most_common(counter: Counter[str]) -> dict[str, int]:
    return dict(counter.most_common(_MAX_LISTED_REASONS))


# --- in memory -----------------------------------------------------------------


@dataclass(slots=True, eq=False, repr=False)
class _MemoryEntry:
    key: int
    event: WireEvent
    test: bool | None = None
    attempts: int = 0
    reason: str | None = None
    rejected_at: float = 0.0
    claim_id: str | None = None
    # Set when the entry left the store while still listed in the ready
    # queue or the deferred heap; both skip such entries instead of paying
    # for a removal from the middle.
    gone: bool = False

    @property
    def size(self) -> int:
        return len(self.event.payload)


class MemoryOutbox:
    """A bounded in-process outbox: fast, and gone when the process ends.

    The default store. A forked child starts with an empty one, so events
    queued in the parent before the fork are sent by the parent only.

    Args:
        max_events: the most pending and in-flight events held.
        max_bytes: the most payload bytes held.
        max_rejected: the most rejected events kept (the oldest go first).
        rejected_retention: seconds a rejected event is kept.
        clock: the time in Unix seconds, for the times the store reports
            (`Claim.expires_at`, `next_attempt_at`, `rejected_at`) and the
            retention; `time.time` by default.
        monotonic: the clock retry times and leases follow:
            `time.monotonic` by default, so that a step of the wall clock
            (NTP, a resumed laptop) neither holds a retry back nor hastens
            it. A test that passes only `clock` gets it for both.
    """

    durable = False
    blocking = False

    def __init__(
        self,
        max_events: int = 10_000,
        max_bytes: int = 32 * 1024 * 1024,
        *,
        max_rejected: int = 1000,
        rejected_retention: float = DEFAULT_REJECTED_RETENTION,
        clock: Callable[[], float] | None = None,
        monotonic: Callable[[], float] | None = None,
    ) -> None:
        _check_bounds(max_events, max_bytes, max_rejected)
        self.max_events = max_events
        self.max_bytes = max_bytes
        self.max_rejected = max_rejected
        self.rejected_retention = rejected_retention
        self._clock = monotonic or clock or time.monotonic
        self._wall_clock = clock or time.time
        self._setup()
        register_fork_aware(self)

    def _setup(self) -> None:
        self._lock = threading.Lock()
        self._keys = itertools.count(1)
        self._live: dict[int, _MemoryEntry] = {}
        self._live_bytes = 0
        self._ready: deque[_MemoryEntry] = deque()
        # (due time, key, entry): deferred events by the end of their backoff.
        self._deferred: list[tuple[float, int, _MemoryEntry]] = []
        self._leases: dict[str, tuple[float, dict[int, _MemoryEntry]]] = {}
        self._rejected: OrderedDict[int, _MemoryEntry] = OrderedDict()

    def _after_fork_in_child(self) -> None:
        self._setup()

    def __repr__(self) -> str:
        return (
            f"MemoryOutbox(max_events={self.max_events}, "
            f"max_bytes={self.max_bytes}, depth={len(self._live)})"
        )

    def put(
        self,
        events: Sequence[WireEvent],
        *,
        atomic: bool = False,
        test: bool | None = None,
    ) -> int:
        """Store events in order; return how many fit (see `Outbox.put`)."""
        with self._lock:
            count = _fitting(
                events,
                atomic,
                self.max_events - len(self._live),
                self.max_bytes - self._live_bytes,
            )
            for event in events[:count]:
                self._add(_MemoryEntry(next(self._keys), event, test))

        return count

    def claim(self, limit: int, *, lease: float) -> Claim | None:
        """Take up to `limit` due events for `lease` seconds (oldest first).

        Only events of the oldest one's mode: the others keep their place.
        """
        with self._lock:
            now = self._clock()
            self._return_expired_leases(now)
            self._return_due_deferred(now)
            claim_id = uuid.uuid4().hex
            taken = self._take_ready(limit, claim_id)
            if not taken:
                return None
            self._leases[claim_id] = (now + lease, {e.key: e for e in taken})

        items = tuple(OutboxItem(e.key, e.event, e.attempts) for e in taken)
        expires_at = self._as_unix_time(now + lease, now)
        return Claim(claim_id, expires_at, items, taken[0].test)

    def _as_unix_time(self, moment: float, now: float) -> float:
        """A moment of `self._clock` (whose reading is `now`) as Unix time."""
        return self._wall_clock() + (moment - now)

    def _take_ready(self, limit: int, claim_id: str) -> list[_MemoryEntry]:
        """Up to `limit` ready entries of the first one's mode, leased to `claim_id`."""
        taken: list[_MemoryEntry] = []
        # Entries of the other mode, put back in front in their order. One
        # client stores one mode, so this stays empty unless clients of both
        # modes share the outbox.
        skipped: list[_MemoryEntry] = []
        while self._ready and len(taken) < limit:
            entry = self._ready.popleft()
            if entry.gone:
                continue
            if taken and entry.test != taken[0].test:
                skipped.append(entry)
                continue
            entry.claim_id = claim_id
            taken.append(entry)
        self._ready.extendleft(reversed(skipped))

        return taken

    def complete(self, claim: Claim, keys: Iterable[int]) -> None:
        """Delete events Pinterest processed (whoever holds them now)."""
        with self._lock:
            for key in keys:
                entry = self._live.get(key)
                if entry is not None:
                    self._remove(entry)

    def reject(self, claim: Claim, reasons: Mapping[int, str]) -> None:
        """Keep refused events with their reasons, within the rejected bounds."""
        with self._lock:
            now = self._wall_clock()
            for key, reason in reasons.items():
                entry = self._live.get(key)
                if entry is None:
                    continue
                self._remove(entry)
                entry.attempts += 1
                entry.reason = _clean_reason(reason)
                entry.rejected_at = now
                self._rejected[key] = entry
            self._purge_rejected(now)

    def defer(self, claim: Claim, delays: Mapping[int, float], reason: str) -> None:
        """Put events back, one attempt more, due after their delay."""
        with self._lock:
            now = self._clock()
            text = _clean_reason(reason)
            for key, delay in delays.items():
                entry = self._unlease(claim, key)
                if entry is not None:
                    entry.attempts += 1
                    entry.reason = text
                    heapq.heappush(self._deferred, (now + delay, key, entry))

    def release(self, claim: Claim, keys: Iterable[int]) -> None:
        """Put back unsent events, due now, ahead of newer ones."""
        with self._lock:
            entries = [self._unlease(claim, key) for key in keys]
            self._ready.extendleft(e for e in reversed(entries) if e is not None)

    def depth(self) -> int:
        """Events still to deliver: pending plus in flight."""
        return len(self._live)

    def stats(self) -> OutboxStats:
        """Counts by state, and the reasons behind deferred and rejected events."""
        with self._lock:
            now = self._clock()
            self._purge_rejected(self._wall_clock())
            in_flight = sum(
                len(entries)
                for expires, entries in self._leases.values()
                if expires > now
            )
            waiting = [
                due for due, _, entry in self._deferred if due > now and not entry.gone
            ]
            return OutboxStats(
                pending=len(self._live) - in_flight,
                deferred=len(waiting),
                in_flight=in_flight,
                rejected=len(self._rejected),
                size_bytes=self._live_bytes,
                next_attempt_at=(
                    self._as_unix_time(min(waiting), now) if waiting else None
                ),
                rejected_reasons=_most_common(
                    Counter(e.reason or "" for e in self._rejected.values())
                ),
                deferred_reasons=_most_common(
                    Counter(
                        e.reason for e in self._live.values() if e.attempts and e.reason
                    )
                ),
            )

    def list_rejected(self, limit: int = 100) -> list[RejectedEvent]:
        """The most recently rejected events, newest first, without payloads."""
        with self._lock:
            self._purge_rejected(self._wall_clock())
            newest = list(reversed(self._rejected.values()))[:limit]
            return [
                RejectedEvent(
                    e.key,
                    e.event.event_id,
                    e.event.event_name,
                    e.reason or "",
                    e.rejected_at,
                    e.attempts,
                )
                for e in newest
            ]

    def requeue_rejected(self, *, reason: str | None = None) -> int:
        """Make rejected events (all, or those with `reason`) pending again."""
        with self._lock:
            self._purge_rejected(self._wall_clock())
            chosen = [
                entry
                for entry in self._rejected.values()
                if reason is None or entry.reason == reason
            ]
            for entry in chosen:
                del self._rejected[entry.key]
                self._add(_MemoryEntry(entry.key, entry.event, entry.test))

        return len(chosen)

    def close(self) -> None:
        """Nothing to release: the events stay until the object is dropped."""

    def _add(self, entry: _MemoryEntry) -> None:
        self._live[entry.key] = entry
        self._live_bytes += entry.size
        self._ready.append(entry)

    def _remove(self, entry: _MemoryEntry) -> None:
        """Take a live entry out of the store, wherever it waits."""
        del self._live[entry.key]
        self._live_bytes -= entry.size
        if entry.claim_id is not None:
            lease = self._leases.get(entry.claim_id)
            if lease is not None:
                lease[1].pop(entry.key, None)
                if not lease[1]:
                    del self._leases[entry.claim_id]
            entry.claim_id = None
        else:
            entry.gone = True

    def _unlease(self, claim: Claim, key: int) -> _MemoryEntry | None:
        """Take an entry back from `claim`, if that claim still holds it."""
        lease = self._leases.get(claim.claim_id)
        if lease is None:
            return None
        entry = lease[1].pop(key, None)
        if not lease[1]:
            del self._leases[claim.claim_id]
        if entry is not None:
            entry.claim_id = None

        return entry

    def _return_expired_leases(self, now: float) -> None:
        expired = [cid for cid, (expires, _) in self._leases.items() if expires <= now]
        for claim_id in expired:
            _, entries = self._leases.pop(claim_id)
            for entry in entries.values():
                entry.claim_id = None
            self._ready.extendleft(reversed(entries.values()))

    def _return_due_deferred(self, now: float) -> None:
        while self._deferred and self._deferred[0][0] <= now:
            _, _, entry = heapq.heappop(self._deferred)
            if not entry.gone:
                self._ready.append(entry)

    def _purge_rejected(self, now: float) -> None:
        cutoff = now - self.rejected_retention
        purged = 0
        while self._rejected:
            oldest = next(iter(self._rejected.values()))
            if oldest.rejected_at > cutoff and len(self._rejected) <= self.max_rejected:
                break
            self._rejected.popitem(last=False)
            purged += 1
        _log_purged(purged)


# --- SQLite --------------------------------------------------------------------

_FILE_MODE = 0o600

MODE_NOT_RESTRICTED_LOG = (
    "could not make the outbox file %s readable by its owner only (%s); it "
    "holds hashed user data, IP addresses and user agents"
)


def _check_usable_path(path: Path) -> None:
    """Raise `ConfigurationError` when the outbox path cannot be used.

    Checked before anything is created: the file must be a readable and
    writable file, or creatable; its directory (created when missing) must
    be writable, since SQLite keeps its -wal and -shm files beside it.
    """
    if path.is_dir():
        raise ConfigurationError(f"the outbox path {path} is a directory, not a file")
    if path.exists() and not os.access(path, os.R_OK | os.W_OK):
        raise ConfigurationError(
            f"the outbox file {path} is not readable and writable by this process"
        )
    folder = next(p for p in (path.parent, *path.parent.parents) if p.exists())
    if not folder.is_dir():
        raise ConfigurationError(
            f"the outbox path {path} is not usable: {folder} is not a directory"
        )
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ConfigurationError(
            f"the outbox path {path} is not usable: the directory {folder} "
            "is not writable by this process"
        )


def _sqlite_files(path: Path) -> tuple[Path, ...]:
    """The database file and the -wal and -shm files SQLite keeps beside it."""
    return (
        path,
        path.with_name(path.name + "-wal"),
        path.with_name(path.name + "-shm"),
    )


def _restrict_mode(path: Path) -> None:
    """Make an existing file readable by its owner only (POSIX)."""
    if os.name != "posix":
        return
    try:
        mode = path.stat().st_mode & 0o777
        if mode & ~_FILE_MODE:
            path.chmod(mode & _FILE_MODE)
    except FileNotFoundError:
        return
    except OSError as exc:
        logger.warning(MODE_NOT_RESTRICTED_LOG, path, type(exc).__name__)


_SCHEMA_VERSION = 2
_PENDING = 0
_REJECTED = 1
_SQLITE_HEADER = b"SQLite format 3\x00"

# `available_at` is when an event may next be claimed: its creation, the end
# of its backoff, or the end of the lease holding it. A single indexed column
# makes "what is due" one range scan, whatever the reason for the wait.
# `test_mode` is the mode an event was accepted in: 1 test, 0 live, NULL
# the sender's own (events of schema 1, or of a dispatcher given no mode).
# `lease_host`, `lease_pid` and `lease_token` name the process holding the
# lease, so that the leases of a process of this host that is gone can be
# handed back at once instead of when they expire.
# The triggers keep the bounds (counts and bytes) in one row, so `put` checks
# them without scanning the table.
_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id TEXT NOT NULL,
    event_name TEXT NOT NULL,
    payload BLOB NOT NULL,
    size INTEGER NOT NULL,
    state INTEGER NOT NULL DEFAULT 0,
    attempts INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,
    available_at REAL NOT NULL,
    lease_id TEXT,
    reason TEXT,
    rejected_at REAL,
    test_mode INTEGER,
    lease_host TEXT,
    lease_pid INTEGER,
    lease_token TEXT
);
CREATE INDEX IF NOT EXISTS events_due ON events (state, available_at, id);
CREATE INDEX IF NOT EXISTS events_lease ON events (lease_id)
    WHERE lease_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS events_rejected ON events (state, rejected_at)
    WHERE state = 1;
CREATE TABLE IF NOT EXISTS totals (
    id INTEGER PRIMARY KEY CHECK (id = 0),
    live_count INTEGER NOT NULL,
    live_bytes INTEGER NOT NULL,
    rejected_count INTEGER NOT NULL
);
INSERT OR IGNORE INTO totals VALUES (0, 0, 0, 0);
CREATE TRIGGER IF NOT EXISTS events_inserted AFTER INSERT ON events BEGIN
    UPDATE totals SET
        live_count = live_count + (NEW.state = 0),
        live_bytes = live_bytes + (NEW.state = 0) * NEW.size,
        rejected_count = rejected_count + (NEW.state = 1)
    WHERE id = 0;
END;
CREATE TRIGGER IF NOT EXISTS events_deleted AFTER DELETE ON events BEGIN
    UPDATE totals SET
        live_count = live_count - (OLD.state = 0),
        live_bytes = live_bytes - (OLD.state = 0) * OLD.size,
        rejected_count = rejected_count - (OLD.state = 1)
    WHERE id = 0;
END;
CREATE TRIGGER IF NOT EXISTS events_state AFTER UPDATE OF state ON events
WHEN OLD.state <> NEW.state BEGIN
    UPDATE totals SET
        live_count = live_count + (NEW.state = 0) - (OLD.state = 0),
        live_bytes = live_bytes + ((NEW.state = 0) - (OLD.state = 0)) * NEW.size,
        rejected_count = rejected_count + (NEW.state = 1) - (OLD.state = 1)
    WHERE id = 0;
END;
"""

# What brings a file of version n - 1 to version n. Columns are only ever
# added, so that processes still running an older version keep working.
_UPGRADES: dict[int, str] = {
    2: """
ALTER TABLE events ADD COLUMN test_mode INTEGER;
ALTER TABLE events ADD COLUMN lease_host TEXT;
ALTER TABLE events ADD COLUMN lease_pid INTEGER;
ALTER TABLE events ADD COLUMN lease_token TEXT;
""",
}


class _Claimant(NamedTuple):
    """The process a lease names: its host, its id, and a token of this run."""

    host: str
    pid: int
    token: str


def _host_name() -> str:
    """This host as leases name it: its name and its process-id namespace.

    Process ids mean the same thing only within one namespace: containers
    that share a file and a host name, but not their process ids, count as
    different hosts (their leases expire instead).
    """
    name = socket.gethostname()
    try:
        namespace = Path("/proc/self/ns/pid").readlink()
    except OSError:
        return name

    return f"{name} {namespace}"


def _new_claimant() -> _Claimant:
    return _Claimant(_host_name(), os.getpid(), secrets.token_hex(8))


# Made once, at import, so that every thread claims under the same token;
# a forked child makes its own.
_claimant = _new_claimant()


def _renew_claimant() -> None:
    global _claimant
    _claimant = _new_claimant()


fresh_after_fork(_renew_claimant)


def _is_gone(pid: int, token: str, me: _Claimant) -> bool:
    """Whether process `pid` of this host, which leased as `token`, has ended."""
    if pid == me.pid:
        # An earlier process with this id: a container's first process
        # after a restart, for one.
        return token != me.token
    if os.name != "posix" or pid <= 0:
        # Signal 0 probes only on POSIX; ids below 1 name process groups.
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:
        # PermissionError: it runs, under another user.
        return False

    return False


def _unusable(path: Path, reason: str) -> ConfigurationError:
    return ConfigurationError(f"the outbox file {path} cannot be used: {reason}")


def _error_reason(error: BaseException) -> str:
    """One line for an SQLite or OS error; they name no event field."""
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    return " ".join(str(error).split()) or type(error).__name__


class _PendingPut:
    """One `put` call waiting for the group commit that stores it."""

    __slots__ = (
        "atomic",
        "error",
        "events",
        "finished",
        "leads",
        "stored",
        "test",
        "wake",
    )

    def __init__(
        self, events: Sequence[WireEvent], atomic: bool, test: bool | None
    ) -> None:
        self.events = events
        self.atomic = atomic
        self.test = test
        self.stored = 0
        self.error: BaseException | None = None
        self.finished = False
        self.leads = False
        self.wake = threading.Event()


class SQLiteOutbox:
    """A durable outbox in one SQLite file, shareable by several processes.

    Events are written before `put` returns, so an accepted event survives a
    crash or a `kill -9` of the process, and the next process to open the
    file sends it. Several processes (uvicorn or gunicorn workers) may share
    the file: a claim is one `BEGIN IMMEDIATE` transaction, so each event is
    leased to one process at a time. Each lease names its process (host,
    process id and a random token of that run); the leases of a process of
    this host that has ended are handed back when the file is opened and at
    every claim, so a restart after a crash re-sends that batch at once.
    Leases of other hosts, of processes in another process-id namespace
    (containers) or of older versions expire instead. Retry times are
    stored, so backoff survives restarts.

    Lease expiries and retry times are Unix times (`clock`), the one clock
    processes share. A step of that clock moves them: forward by more than
    the lease, and another process may claim a batch still in flight,
    which Pinterest then gets twice (delivery is at least once); backward,
    and waits would grow by the step, so a process that sees its clock go
    back between two claims moves the stored retry times back as much (a
    process started after the step cannot tell, and several processes that
    each see it may make those retries come early). Leases of live
    processes keep their expiry.

    The batch a killed process was sending is sent again, although
    Pinterest may have processed it: delivery is at least once, and
    Pinterest de-duplicates web and app events by `event_id` (offline
    events are not de-duplicated).

    Writes from many threads are grouped: while one transaction commits,
    the `put`s arriving meanwhile queue up and go into the next one
    together, so a burst of requests costs a few commits, not one each.
    Each `put` still returns only once its own events are committed.

    The file uses WAL mode with `synchronous=NORMAL`: a commit survives the
    process being killed; after a power loss the last commits may be lost.
    Pass `synchronous="FULL"` to sync every commit to disk.

    The file is opened at construction: a path that cannot be used (under a
    file, a directory, not writable), a file that is not an SQLite
    database, is damaged, is another application's database or was written
    by a newer version raises `ConfigurationError` naming the path. A file
    of an older version is upgraded in place.

    Args:
        path: the database file; its directory is created if missing.
        max_events: the most pending and in-flight events held.
        max_bytes: the most payload bytes held by those events.
        max_rejected: the most rejected events kept (oldest purged first).
        rejected_retention: seconds a rejected event is kept.
        busy_timeout: seconds to wait for another process's transaction.
        synchronous: `"NORMAL"` (default) or `"FULL"`.
        clock: the time in Unix seconds, shared across processes.
        readonly: open an existing outbox to read it only (`stats`,
            `depth`, `list_rejected`): nothing is created, upgraded,
            changed or chmodded, and a file that is not an outbox raises
            `ConfigurationError`. SQLite may still create the -wal and -shm
            files it needs to read a WAL database. Writes raise
            `sqlite3.OperationalError`.

    Privacy: the file holds hashed user data and the unhashed IP address,
    user agent and click id of each pending or rejected event. On POSIX it
    is made readable by its owner only (mode 0600), with its -wal and -shm
    files, whether this class created it or found it; when that fails (a
    file owned by another user) a WARNING says so.
    """

    durable = True
    blocking = True

    def __init__(
        self,
        path: str | os.PathLike[str],
        max_events: int = 100_000,
        max_bytes: int = 256 * 1024 * 1024,
        *,
        max_rejected: int = 100_000,
        rejected_retention: float = DEFAULT_REJECTED_RETENTION,
        busy_timeout: float = 5.0,
        synchronous: Literal["NORMAL", "FULL"] = "NORMAL",
        clock: Callable[[], float] = time.time,
        readonly: bool = False,
    ) -> None:
        if str(path) == ":memory:" or not str(path):
            raise ConfigurationError(
                "SQLiteOutbox needs a file path; use MemoryOutbox for memory"
            )
        if synchronous not in ("NORMAL", "FULL"):
            raise ConfigurationError('synchronous must be "NORMAL" or "FULL"')
        _check_bounds(max_events, max_bytes, max_rejected)
        if not readonly:
            _check_usable_path(Path(path))
        self.path = Path(path)
        self.max_events = max_events
        self.max_bytes = max_bytes
        self.max_rejected = max_rejected
        self.rejected_retention = rejected_retention
        self.busy_timeout = busy_timeout
        self.synchronous = synchronous
        self.readonly = readonly
        self._clock = clock
        self._setup()
        self._open()
        register_fork_aware(self)
        close_before_fork(self)

    def _setup(self) -> None:
        self._write_lock = threading.Lock()
        self._read_lock = threading.Lock()
        self._queue_lock = threading.Lock()
        self._queue: list[_PendingPut] = []
        self._committing = False
        self._writer: sqlite3.Connection | None = None
        self._reader: sqlite3.Connection | None = None
        self._last_claimed_at = -math.inf

    def _after_fork_in_child(self) -> None:
        # SQLite connections must not cross a fork: the child opens its own.
        # (`_close_for_fork` closed them in the parent; abandon any left.)
        abandon(self._writer, self._reader)
        self._setup()

    def _close_for_fork(self) -> bool:
        """Before a fork: close the connections, holding both locks until after it.

        SQLite keeps its POSIX lock bookkeeping per process, in memory a
        child inherits: a connection the child opened while one of the
        parent's was open would believe the parent's locks its own and take
        none, so that the parent closing its outbox (or exiting) deletes the
        -wal file under the child. Closed now, they are reopened at the next
        use, in the parent as in the child. Returns whether the locks were
        taken (False: a transaction outlasted the wait; left as it was).
        """
        wait = self.busy_timeout + 1.0
        if not self._write_lock.acquire(timeout=wait):
            return False
        if not self._read_lock.acquire(timeout=wait):
            self._write_lock.release()
            return False
        for conn in (self._writer, self._reader):
            if conn is not None:
                with suppress(sqlite3.Error):
                    conn.close()
        self._writer = None
        self._reader = None
        return True

    def _after_fork_in_parent(self) -> None:
        self._read_lock.release()
        self._write_lock.release()

    def __repr__(self) -> str:
        readonly = ", readonly=True" if self.readonly else ""
        return f"SQLiteOutbox({str(self.path)!r}{readonly})"

    # --- connections ---

    def _open(self) -> None:
        """Open the file now, so that an unusable one fails at construction."""
        try:
            if self.readonly:
                with self._reading():
                    pass
            else:
                with self._write_lock:
                    self._write_connection()
        except ConfigurationError:
            self.close()
            raise
        except (sqlite3.Error, OSError) as exc:
            self.close()
            raise _unusable(self.path, _error_reason(exc)) from None

    def _connect(self) -> sqlite3.Connection:
        if self.readonly:
            # Never creates the file, and never writes to it.
            target: str | Path = self.path.resolve().as_uri() + "?mode=ro"
        else:
            target = self.path
        with _connected_files.lock:
            file = _connected_files.key(self.path)
            if not _connected_files.in_use(file):
                self._check_header()
            conn = sqlite3.connect(
                target,
                timeout=self.busy_timeout,
                isolation_level=None,
                check_same_thread=False,
                uri=self.readonly,
                factory=_Connection,
            )
            _connected_files.opened(conn, file)
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout * 1000)}")
        except BaseException:
            conn.close()
            raise

        return conn

    def _create_file(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if not self.path.exists():
            fd = os.open(self.path, os.O_CREAT | os.O_WRONLY, _FILE_MODE)
            os.close(fd)

    def _check_header(self) -> None:
        """Refuse a file that is not SQLite's before SQLite touches it.

        Only while no connection of this process has the file open (see
        `_ConnectedFiles`); when one has, SQLite already read the header.
        """
        with self.path.open("rb") as file:
            header = file.read(len(_SQLITE_HEADER))
        if header and header != _SQLITE_HEADER:
            raise _unusable(self.path, "it is not an SQLite database")

    def _write_connection(self) -> sqlite3.Connection:
        if self.readonly:
            raise sqlite3.OperationalError("this outbox was opened read-only")
        if self._writer is None:
            self._create_file()
            conn = self._connect()
            try:
                _prepare_schema(conn, self.path)
                # Only once the file is known to be an outbox: SQLite gives
                # new -wal and -shm files the database file's mode, and a
                # file created by an older version or another tool may be
                # wider.
                for name in _sqlite_files(self.path):
                    _restrict_mode(name)
                conn.execute("PRAGMA journal_mode = WAL")
                conn.execute(f"PRAGMA synchronous = {self.synchronous}")
                with _transaction(conn):
                    self._release_dead_leases(conn, self._clock())
            except BaseException:
                conn.close()
                raise
            self._writer = conn

        return self._writer

    def _read_connection(self) -> sqlite3.Connection:
        if self._reader is None:
            conn = self._connect()
            if self.readonly:
                try:
                    _check_schema(conn, self.path)
                except BaseException:
                    conn.close()
                    raise
            self._reader = conn

        return self._reader

    @contextmanager
    def _reading(self) -> Iterator[sqlite3.Connection]:
        if self._writer is None and not self.readonly:
            # The schema is created by the write connection, once.
            with self._write_lock:
                self._write_connection()
        with self._read_lock:
            yield self._read_connection()

    @contextmanager
    def _writing(self) -> Iterator[sqlite3.Connection]:
        with self._write_lock:
            conn = self._write_connection()
            with _transaction(conn):
                yield conn

    # --- writes ---

    def put(
        self,
        events: Sequence[WireEvent],
        *,
        atomic: bool = False,
        test: bool | None = None,
    ) -> int:
        """Store events in order, committed before this returns (group commit).

        Returns how many were stored: the longest prefix that fits, or all
        or none with `atomic=True`. `test` is kept with each (see
        `Outbox.put`). Raises `sqlite3.Error` when the write fails (disk
        full, file locked past `busy_timeout`).
        """
        if not events:
            return 0
        return self.put_many([events], atomic=atomic, test=test)[0]

    def put_many(
        self,
        batches: Sequence[Sequence[WireEvent]],
        *,
        atomic: bool = False,
        test: bool | None = None,
    ) -> list[int]:
        """`put` several callers' events in one transaction, each on its own.

        Returns how many of each batch were stored, in order: each batch is
        fitted (as a prefix, or all or none with `atomic=True`) after those
        before it, as if `put` had been called for each in turn. Raises
        `sqlite3.Error` when the write fails, for all of them.
        """
        requests = [_PendingPut(events, atomic, test) for events in batches if events]
        if requests:
            self._put_requests(requests)
        stored = iter(request.stored for request in requests)

        return [next(stored) if events else 0 for events in batches]

    def _put_requests(self, requests: list[_PendingPut]) -> None:
        # Queued together under the lock, the requests go into one commit:
        # whoever commits takes the whole queue at once.
        first = requests[0]
        with self._queue_lock:
            self._queue.extend(requests)
            leads = not self._committing
            self._committing = True
        if not leads:
            first.wake.wait()
        if not first.finished:
            self._commit_queued()
        if first.error is not None:
            raise first.error

    def _commit_queued(self) -> None:
        """Commit every queued put in one transaction, then pass the lead on."""
        with self._queue_lock:
            batch, self._queue = self._queue, []
        try:
            self._store(batch)
        except BaseException as exc:
            for request in batch:
                request.error = exc
            raise
        finally:
            for request in batch:
                request.finished = True
                request.wake.set()
            with self._queue_lock:
                if self._queue:
                    # Whoever queued first while we committed leads the next
                    # round; we return now rather than serve them too.
                    self._queue[0].wake.set()
                else:
                    self._committing = False

    def _store(self, batch: list[_PendingPut]) -> None:
        now = self._clock()
        with self._writing() as conn:
            live_count, live_bytes = conn.execute(
                "SELECT live_count, live_bytes FROM totals WHERE id = 0"
            ).fetchone()
            room_events = self.max_events - live_count
            room_bytes = self.max_bytes - live_bytes
            rows = []
            for request in batch:
                count = _fitting(
                    request.events, request.atomic, room_events, room_bytes
                )
                request.stored = count
                mode = None if request.test is None else int(request.test)
                for event in request.events[:count]:
                    size = len(event.payload)
                    room_events -= 1
                    room_bytes -= size
                    rows.append(
                        (
                            event.event_id,
                            event.event_name,
                            event.payload,
                            size,
                            now,
                            now,
                            mode,
                        )
                    )
            conn.executemany(
                "INSERT INTO events (event_id, event_name, payload, size,"
                " created_at, available_at, test_mode)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                rows,
            )

    def claim(self, limit: int, *, lease: float) -> Claim | None:
        """Take up to `limit` due events for `lease` seconds, atomically.

        All of the oldest due event's mode. The leases of processes of this
        host that have ended are handed back first (see the class docs).
        """
        claim_id = uuid.uuid4().hex
        now = self._clock()
        expires_at = now + lease
        me = _claimant
        with self._writing() as conn:
            self._undo_backward_step(conn, now)
            self._release_dead_leases(conn, now)
            oldest = conn.execute(
                "SELECT test_mode FROM events WHERE state = 0 AND available_at <= ?"
                " ORDER BY available_at, id LIMIT 1",
                (now,),
            ).fetchone()
            if oldest is None:
                return None
            (mode,) = oldest
            conn.execute(
                "UPDATE events SET lease_id = ?, available_at = ?, lease_host = ?,"
                " lease_pid = ?, lease_token = ? WHERE id IN ("
                " SELECT id FROM events WHERE state = 0 AND available_at <= ?"
                " AND test_mode IS ? ORDER BY available_at, id LIMIT ?)",
                (claim_id, expires_at, me.host, me.pid, me.token, now, mode, limit),
            )
            rows = conn.execute(
                "SELECT id, event_id, event_name, payload, attempts FROM events"
                " WHERE lease_id = ? ORDER BY id",
                (claim_id,),
            ).fetchall()
        items = tuple(
            OutboxItem(key, WireEvent(event_id, name, bytes(payload)), attempts)
            for key, event_id, name, payload, attempts in rows
        )

        return Claim(claim_id, expires_at, items, None if mode is None else bool(mode))

    def _undo_backward_step(self, conn: sqlite3.Connection, now: float) -> None:
        """Move retry times back by a backward step of the clock, if there was one.

        Retry times are stored as Unix times: after a step back, a wait
        would last as long again as the step. This process sees the step
        when its clock reads earlier than at its last claim.
        """
        step = self._last_claimed_at - now
        self._last_claimed_at = now
        if step <= _CLOCK_STEP_TOLERANCE:
            return
        shifted = conn.execute(
            "UPDATE events SET available_at = max(?, available_at - ?)"
            " WHERE state = 0 AND lease_id IS NULL AND available_at > ?",
            (now, step, now),
        ).rowcount
        if shifted:
            logger.warning(CLOCK_STEP_LOG, step, shifted)

    def _release_dead_leases(self, conn: sqlite3.Connection, now: float) -> None:
        """Hand back the leases of processes of this host that have ended."""
        me = _claimant
        holders = conn.execute(
            "SELECT DISTINCT lease_pid, lease_token FROM events"
            " WHERE lease_id IS NOT NULL AND state = 0 AND available_at > ?"
            " AND lease_host = ? AND lease_token IS NOT NULL",
            (now, me.host),
        ).fetchall()
        for pid, token in holders:
            if not _is_gone(pid, token, me):
                continue
            released = conn.execute(
                "UPDATE events SET lease_id = NULL, lease_host = NULL,"
                " lease_pid = NULL, lease_token = NULL, available_at = created_at"
                " WHERE lease_token = ? AND lease_id IS NOT NULL AND state = 0",
                (token,),
            ).rowcount
            if released:
                logger.warning(RECLAIMED_LOG, released, pid)

    def complete(self, claim: Claim, keys: Iterable[int]) -> None:
        """Delete events Pinterest processed (whoever holds them now)."""
        with self._writing() as conn:
            conn.executemany("DELETE FROM events WHERE id = ?", [(k,) for k in keys])

    def reject(self, claim: Claim, reasons: Mapping[int, str]) -> None:
        """Keep refused events with their reasons; purge old rejected ones."""
        now = self._clock()
        with self._writing() as conn:
            conn.executemany(
                "UPDATE events SET state = 1, reason = ?, rejected_at = ?,"
                " lease_id = NULL, lease_host = NULL, lease_pid = NULL,"
                " lease_token = NULL, attempts = attempts + 1"
                " WHERE id = ? AND state = 0",
                [(_clean_reason(r), now, key) for key, r in reasons.items()],
            )
            self._purge_rejected(conn, now)

    def defer(self, claim: Claim, delays: Mapping[int, float], reason: str) -> None:
        """Put events back after a retryable failure, due after their delay."""
        now = self._clock()
        text = _clean_reason(reason)
        with self._writing() as conn:
            conn.executemany(
                "UPDATE events SET lease_id = NULL, lease_host = NULL,"
                " lease_pid = NULL, lease_token = NULL, attempts = attempts + 1,"
                " available_at = ?, reason = ? WHERE id = ? AND lease_id = ?",
                [(now + d, text, key, claim.claim_id) for key, d in delays.items()],
            )

    def release(self, claim: Claim, keys: Iterable[int]) -> None:
        """Put back unsent events, due at once, in their original order."""
        with self._writing() as conn:
            conn.executemany(
                "UPDATE events SET lease_id = NULL, lease_host = NULL,"
                " lease_pid = NULL, lease_token = NULL, available_at = created_at"
                " WHERE id = ? AND lease_id = ?",
                [(key, claim.claim_id) for key in keys],
            )

    def requeue_rejected(self, *, reason: str | None = None) -> int:
        """Make rejected events (all, or those with `reason`) pending again.

        Those past the retention are purged first, not requeued.
        """
        now = self._clock()
        query = (
            "UPDATE events SET state = 0, attempts = 0, reason = NULL,"
            " rejected_at = NULL, lease_id = NULL, lease_host = NULL,"
            " lease_pid = NULL, lease_token = NULL, available_at = ?"
            " WHERE state = 1"
        )
        with self._writing() as conn:
            self._purge_rejected(conn, now)
            if reason is None:
                cursor = conn.execute(query, (now,))
            else:
                cursor = conn.execute(query + " AND reason = ?", (now, reason))

        return cursor.rowcount

    def _purge_rejected(self, conn: sqlite3.Connection, now: float) -> None:
        purged = conn.execute(
            "DELETE FROM events WHERE state = 1 AND rejected_at <= ?",
            (now - self.rejected_retention,),
        ).rowcount
        (rejected,) = conn.execute(
            "SELECT rejected_count FROM totals WHERE id = 0"
        ).fetchone()
        if rejected > self.max_rejected:
            purged += conn.execute(
                "DELETE FROM events WHERE id IN (SELECT id FROM events"
                " WHERE state = 1 ORDER BY rejected_at, id LIMIT ?)",
                (rejected - self.max_rejected,),
            ).rowcount
        _log_purged(purged)

    # --- reads ---

    def depth(self) -> int:
        """Events still to deliver, in every process sharing the file."""
        with self._reading() as conn:
            (count,) = conn.execute(
                "SELECT live_count FROM totals WHERE id = 0"
            ).fetchone()

        return int(count)

    def stats(self) -> OutboxStats:
        """Counts by state and the reasons behind deferred and rejected events.

        Rejected events past the retention are left out (they are purged by
        the next write that purges: `reject`, `requeue_rejected`).
        """
        now = self._clock()
        kept_since = now - self.rejected_retention
        with self._reading() as conn, _read_transaction(conn):
            live, size = conn.execute(
                "SELECT live_count, live_bytes FROM totals WHERE id = 0"
            ).fetchone()
            (rejected,) = conn.execute(
                "SELECT count(*) FROM events WHERE state = 1 AND rejected_at > ?",
                (kept_since,),
            ).fetchone()
            in_flight, deferred, next_at = conn.execute(
                "SELECT"
                " count(CASE WHEN lease_id IS NOT NULL THEN 1 END),"
                " count(CASE WHEN lease_id IS NULL THEN 1 END),"
                " min(CASE WHEN lease_id IS NULL THEN available_at END)"
                " FROM events WHERE state = 0 AND available_at > ?",
                (now,),
            ).fetchone()
            rejected_reasons = self._reasons(
                conn, "state = 1 AND rejected_at > ?", (kept_since,)
            )
            deferred_reasons = self._reasons(
                conn, "state = 0 AND reason IS NOT NULL AND attempts > 0", ()
            )

        return OutboxStats(
            pending=live - in_flight,
            deferred=deferred,
            in_flight=in_flight,
            rejected=rejected,
            size_bytes=size,
            next_attempt_at=next_at,
            rejected_reasons=rejected_reasons,
            deferred_reasons=deferred_reasons,
        )

    @staticmethod
    def _reasons(
        conn: sqlite3.Connection, where: str, parameters: tuple[float, ...]
    ) -> dict[str, int]:
        rows = conn.execute(
            f"SELECT reason, count(*) AS n FROM events WHERE {where}"  # noqa: S608 - fixed clauses, no input
            f" GROUP BY reason ORDER BY n DESC, reason LIMIT {_MAX_LISTED_REASONS}",
            parameters,
        ).fetchall()
        return {reason or "": n for reason, n in rows}

    def list_rejected(self, limit: int = 100) -> list[RejectedEvent]:
        """The most recently rejected events, newest first, without payloads.

        Those past the retention are left out.
        """
        kept_since = self._clock() - self.rejected_retention
        with self._reading() as conn:
            rows = conn.execute(
                "SELECT id, event_id, event_name, reason, rejected_at, attempts"
                " FROM events WHERE state = 1 AND rejected_at > ?"
                " ORDER BY rejected_at DESC, id DESC LIMIT ?",
                (kept_since, limit),
            ).fetchall()

        return [RejectedEvent(*row) for row in rows]

    def close(self) -> None:
        """Close the connections; a later call opens them again."""
        with self._write_lock, self._read_lock:
            for conn in (self._writer, self._reader):
                if conn is not None:
                    conn.close()
            self._writer = None
            self._reader = None


class _ConnectedFiles:
    """The files this process holds SQLite connections to.

    POSIX record locks belong to the process, not to a descriptor: closing
    any descriptor of a file releases every lock the process holds on it,
    those of SQLite's own connections included. Another process closing
    its last connection then believes itself alone, folds the -wal file
    into the database and deletes it, and whatever this process writes
    afterwards goes to a file no longer on the disk (lost at a crash,
    invisible to the other processes). SQLite's own connections guard
    against this among themselves; Python code must not open the file
    while one is open, so `_check_header` runs only when none is.

    Files are told apart by device and inode, so that two spellings of one
    path count as one file. `lock` is held from the check to the
    connection's registration; a connection leaves the count when it is
    closed or collected.
    """

    def __init__(self) -> None:
        self.lock = threading.RLock()  # reentrant: a collection may release
        self._counts: Counter[tuple[int, int]] = Counter()
        self._generation = 0

    @staticmethod
    def key(path: Path) -> tuple[int, int] | None:
        try:
            status = path.stat()
        except OSError:
            return None  # `_check_header` says why the file is not usable
        return (status.st_dev, status.st_ino)

    def in_use(self, file: tuple[int, int] | None) -> bool:
        return file is not None and self._counts[file] > 0

    def opened(self, conn: _Connection, file: tuple[int, int] | None) -> None:
        if file is None:
            return
        self._counts[file] += 1
        release = weakref.finalize(conn, self._release, file, self._generation)
        release.atexit = False
        conn.release = release

    def _release(self, file: tuple[int, int], generation: int) -> None:
        with self.lock:
            if generation != self._generation:
                return  # a parent's connection, in a child
            self._counts[file] -= 1
            if self._counts[file] <= 0:
                del self._counts[file]

    def forget_after_fork(self) -> None:
        # A child holds none of its parent's locks: its own count starts now.
        self.lock = threading.RLock()
        self._counts.clear()
        self._generation += 1


class _Connection(sqlite3.Connection):
    """An outbox's connection: leaves `_connected_files` when closed."""

    release: weakref.finalize[..., _Connection] | None = None

    def close(self) -> None:
        # Counted until SQLite has closed it: a last connection's close
        # checkpoints and deletes the -wal file under its EXCLUSIVE lock,
        # which a `_check_header` in another thread meanwhile would drop.
        super().close()
        if self.release is not None:
            self.release()


_connected_files = _ConnectedFiles()
fresh_after_fork(_connected_files.forget_after_fork)


def _prepare_schema(conn: sqlite3.Connection, path: Path) -> None:
    """Create the schema in a new file, or bring an older outbox up to date."""
    with _transaction(conn):
        version = _check_schema(conn, path, allow_empty=True)
        if version == 0:
            script = _SCHEMA
        else:
            steps = range(version + 1, _SCHEMA_VERSION + 1)
            script = "".join(_UPGRADES[step] for step in steps)
        for statement in _statements(script):
            conn.execute(statement)
        conn.execute(f"PRAGMA user_version = {_SCHEMA_VERSION}")


def _check_schema(
    conn: sqlite3.Connection, path: Path, *, allow_empty: bool = False
) -> int:
    """The outbox's schema version; `ConfigurationError` if it is none of ours.

    Version 0 is a database without tables (a new file), allowed only with
    `allow_empty`.
    """
    (version,) = conn.execute("PRAGMA user_version").fetchone()
    if version > _SCHEMA_VERSION:
        raise _unusable(
            path,
            f"it was written by a newer pinterest_mw (schema version {version})",
        )
    listed = conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
    tables = {name for (name,) in listed}
    if version == 0 and allow_empty and not tables:
        return 0
    if version < 1 or not {"events", "totals"} <= tables:
        raise _unusable(path, "it is not a pinterest_mw outbox")

    return int(version)


@contextmanager
def _transaction(conn: sqlite3.Connection) -> Iterator[None]:
    """One `BEGIN IMMEDIATE` transaction: the write lock is taken up front.

    Taking it at BEGIN, rather than at the first write, is what makes a
    claim (a read then a write) atomic across processes.
    """
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


@contextmanager
def _read_transaction(conn: sqlite3.Connection) -> Iterator[None]:
    """One read transaction: its queries see one snapshot of the file.

    Without it each query sees the file as it is then, and writes of other
    processes between them make the counts disagree (more in flight than
    live events: a negative `pending`).
    """
    conn.execute("BEGIN")
    try:
        yield
    finally:
        conn.execute("ROLLBACK")  # nothing was written


def _statements(script: str) -> Iterator[str]:
    """Split a script into statements, keeping trigger bodies whole."""
    statement = ""
    for line in script.splitlines(keepends=True):
        statement += line
        if sqlite3.complete_statement(statement):
            yield statement.strip()
            statement = ""
