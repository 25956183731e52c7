"""The outbox stores: bounds, claims and leases, outcomes, durability, privacy."""

from __future__ import annotations

import os
import socket
import sqlite3
import stat
import subprocess
import sys
import threading
import warnings
from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from pinterest_mw.events import WireEvent, build_event
from pinterest_mw.exceptions import ConfigurationError
from pinterest_mw.hashing import sha256_hex
from pinterest_mw.outbox import (
    PURGED_LOG,
    RECLAIMED_LOG,
    MemoryOutbox,
    Outbox,
    SQLiteOutbox,
)

RAW_EMAIL = "Ann.Example@Example.com"


class Clock:
    """A settable clock, so that leases, backoff and retention need no sleeping."""

    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def wire(n: int, size: int = 10) -> list[WireEvent]:
    return [
        WireEvent(f"event-{i}", "checkout", b"{" + b"x" * (size - 2) + b"}")
        for i in range(n)
    ]


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture(params=["memory", "sqlite"])
def make_outbox(
    request: pytest.FixtureRequest, tmp_path: Path, clock: Clock
) -> Iterator[Callable[..., Outbox]]:
    """Build either store with the given bounds and the test clock."""
    made: list[Outbox] = []

    def make(**options: object) -> Outbox:
        outbox: Outbox
        if request.param == "memory":
            outbox = MemoryOutbox(clock=clock, **options)  # type: ignore[arg-type]
        else:
            path = tmp_path / f"outbox-{len(made)}.sqlite3"
            outbox = SQLiteOutbox(path, clock=clock, **options)  # type: ignore[arg-type]
        made.append(outbox)
        return outbox

    yield make
    for outbox in made:
        outbox.close()


@pytest.fixture
def sqlite(tmp_path: Path) -> Iterator[Callable[..., SQLiteOutbox]]:
    """Open SQLite outboxes (default file in `tmp_path`), closed after the test."""
    opened: list[SQLiteOutbox] = []

    def open_outbox(path: Path | None = None, **options: Any) -> SQLiteOutbox:
        outbox = SQLiteOutbox(path or tmp_path / "outbox.sqlite3", **options)
        opened.append(outbox)
        return outbox

    yield open_outbox
    for outbox in opened:
        outbox.close()


@pytest.fixture
def outbox(make_outbox: Callable[..., Outbox]) -> Outbox:
    return make_outbox()


def ids(claim_items: object) -> list[str]:
    return [item.event.event_id for item in claim_items]  # type: ignore[attr-defined]


# --- put and bounds ---


def test_put_stores_events_and_counts_them(outbox: Outbox) -> None:
    stored = outbox.put(wire(3))

    assert (stored, outbox.depth()) == (3, 3)


def test_put_stores_the_prefix_that_fits_the_event_bound(
    make_outbox: Callable[..., Outbox],
) -> None:
    outbox = make_outbox(max_events=4)
    outbox.put(wire(3))

    assert outbox.put(wire(3)) == 1
    assert outbox.depth() == 4


def test_put_stores_the_prefix_that_fits_the_byte_bound(
    make_outbox: Callable[..., Outbox],
) -> None:
    outbox = make_outbox(max_bytes=25)

    assert outbox.put(wire(3, size=10)) == 2
    assert outbox.stats().size_bytes == 20


def test_atomic_put_stores_nothing_when_not_everything_fits(
    make_outbox: Callable[..., Outbox],
) -> None:
    outbox = make_outbox(max_events=2)

    assert outbox.put(wire(3), atomic=True) == 0
    assert outbox.depth() == 0


def test_rejected_events_do_not_count_against_the_event_bound(
    make_outbox: Callable[..., Outbox],
) -> None:
    outbox = make_outbox(max_events=2)
    outbox.put(wire(2))
    claim = outbox.claim(10, lease=60)
    assert claim is not None
    outbox.reject(claim, {item.key: "bad" for item in claim.items})

    assert outbox.put(wire(2)) == 2


@pytest.mark.parametrize(
    "options",
    [{"max_events": 0}, {"max_bytes": 0}, {"max_rejected": -1}],
    ids=["max_events", "max_bytes", "max_rejected"],
)
def test_unusable_bounds_are_configuration_errors(
    make_outbox: Callable[..., Outbox], options: dict[str, int]
) -> None:
    with pytest.raises(ConfigurationError):
        make_outbox(**options)


# --- claims and leases ---


def test_claim_takes_the_oldest_due_events_up_to_the_limit(outbox: Outbox) -> None:
    outbox.put(wire(5))

    claim = outbox.claim(3, lease=60)

    assert claim is not None
    assert ids(claim.items) == ["event-0", "event-1", "event-2"]


def test_claim_returns_none_when_nothing_is_due(outbox: Outbox) -> None:
    assert outbox.claim(10, lease=60) is None


def test_claimed_events_are_not_claimed_again_while_leased(outbox: Outbox) -> None:
    outbox.put(wire(2))
    outbox.claim(10, lease=60)

    assert outbox.claim(10, lease=60) is None


def test_events_of_an_expired_lease_are_claimable_again(
    outbox: Outbox, clock: Clock
) -> None:
    """A worker that died holding a batch does not keep it forever."""
    outbox.put(wire(2))
    outbox.claim(10, lease=60)
    clock.advance(61)

    claim = outbox.claim(10, lease=60)

    assert claim is not None
    assert ids(claim.items) == ["event-0", "event-1"]


def test_claims_of_two_connections_to_one_file_never_overlap(
    sqlite: Callable[..., SQLiteOutbox], tmp_path: Path
) -> None:
    """Claiming is atomic across connections, as across processes."""
    path = tmp_path / "shared.sqlite3"
    sqlite(path).put(wire(400))
    stores = [sqlite(path), sqlite(path)]
    claimed: list[list[str]] = [[], []]

    def drain(index: int) -> None:
        while (claim := stores[index].claim(7, lease=60)) is not None:
            claimed[index].extend(ids(claim.items))

    threads = [threading.Thread(target=drain, args=(i,)) for i in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    everything = claimed[0] + claimed[1]
    assert sorted(everything) == sorted(f"event-{i}" for i in range(400))


# --- outcomes ---


def test_complete_deletes_the_events(outbox: Outbox) -> None:
    outbox.put(wire(2))
    claim = outbox.claim(10, lease=60)
    assert claim is not None

    outbox.complete(claim, [item.key for item in claim.items])

    assert outbox.depth() == 0


def test_complete_after_the_lease_expired_still_deletes(
    outbox: Outbox, clock: Clock
) -> None:
    """An event Pinterest answered for is not sent again by a later claim."""
    outbox.put(wire(1))
    first = outbox.claim(10, lease=60)
    assert first is not None
    clock.advance(61)
    outbox.claim(10, lease=60)

    outbox.complete(first, [first.items[0].key])

    assert outbox.depth() == 0


def test_reject_keeps_the_event_with_its_reason(outbox: Outbox) -> None:
    outbox.put(wire(1))
    claim = outbox.claim(10, lease=60)
    assert claim is not None

    outbox.reject(claim, {claim.items[0].key: "Given timestamp is in the past."})

    stats = outbox.stats()
    assert (stats.rejected, stats.depth) == (1, 0)
    assert stats.rejected_reasons == {"Given timestamp is in the past.": 1}


def test_listed_rejected_events_carry_ids_and_reasons(outbox: Outbox) -> None:
    outbox.put(wire(1))
    claim = outbox.claim(10, lease=60)
    assert claim is not None
    outbox.reject(claim, {claim.items[0].key: "HTTP 400"})

    [rejected] = outbox.list_rejected()

    assert (rejected.event_id, rejected.reason, rejected.attempts) == (
        "event-0",
        "HTTP 400",
        1,
    )


def test_rejected_events_are_purged_after_the_retention(
    make_outbox: Callable[..., Outbox], clock: Clock
) -> None:
    outbox = make_outbox(rejected_retention=3600)
    outbox.put(wire(1))
    claim = outbox.claim(10, lease=60)
    assert claim is not None
    outbox.reject(claim, {claim.items[0].key: "HTTP 400"})
    clock.advance(3601)
    outbox.put(wire(1))
    second = outbox.claim(10, lease=60)
    assert second is not None

    outbox.reject(second, {second.items[0].key: "HTTP 400"})

    assert outbox.stats().rejected == 1


def test_the_oldest_rejected_events_go_beyond_the_rejected_bound(
    make_outbox: Callable[..., Outbox],
) -> None:
    outbox = make_outbox(max_rejected=2)
    outbox.put(wire(3))
    claim = outbox.claim(10, lease=60)
    assert claim is not None

    outbox.reject(claim, {item.key: "HTTP 400" for item in claim.items})

    assert [r.event_id for r in outbox.list_rejected()] == ["event-2", "event-1"]


def test_purging_rejected_events_is_logged_with_a_count(
    make_outbox: Callable[..., Outbox], caplog: pytest.LogCaptureFixture
) -> None:
    outbox = make_outbox(max_rejected=2)
    outbox.put(wire(3))
    claim = outbox.claim(10, lease=60)
    assert claim is not None

    outbox.reject(claim, {item.key: "HTTP 400" for item in claim.items})

    assert caplog.messages == [PURGED_LOG % 1]


def test_deferred_events_wait_for_their_delay(outbox: Outbox, clock: Clock) -> None:
    outbox.put(wire(1))
    claim = outbox.claim(10, lease=60)
    assert claim is not None

    outbox.defer(claim, {claim.items[0].key: 30.0}, "HTTP 503")

    assert outbox.claim(10, lease=60) is None
    clock.advance(31)
    again = outbox.claim(10, lease=60)
    assert again is not None
    assert again.items[0].attempts == 1


def test_stats_show_deferred_events_with_their_retry_time_and_reason(
    outbox: Outbox, clock: Clock
) -> None:
    outbox.put(wire(2))
    claim = outbox.claim(1, lease=60)
    assert claim is not None
    outbox.defer(claim, {claim.items[0].key: 30.0}, "HTTP 503")

    stats = outbox.stats()

    assert (stats.pending, stats.deferred, stats.in_flight) == (2, 1, 0)
    assert stats.next_attempt_at == clock.now + 30.0
    assert stats.deferred_reasons == {"HTTP 503": 1}


def test_stats_count_events_in_flight(outbox: Outbox) -> None:
    outbox.put(wire(3))
    outbox.claim(2, lease=60)

    stats = outbox.stats()

    assert (stats.pending, stats.in_flight, stats.depth) == (1, 2, 3)


def test_defer_leaves_events_another_claim_took_over(
    outbox: Outbox, clock: Clock
) -> None:
    """A late answer to an expired claim cannot push back the new holder's events."""
    outbox.put(wire(1))
    first = outbox.claim(10, lease=60)
    assert first is not None
    clock.advance(61)
    second = outbox.claim(10, lease=60)
    assert second is not None

    outbox.defer(first, {first.items[0].key: 30.0}, "HTTP 503")

    assert outbox.stats().in_flight == 1


def test_released_events_are_due_again_without_an_attempt(outbox: Outbox) -> None:
    outbox.put(wire(2))
    claim = outbox.claim(10, lease=60)
    assert claim is not None

    outbox.release(claim, [item.key for item in claim.items])

    again = outbox.claim(10, lease=60)
    assert again is not None
    assert [(i.event.event_id, i.attempts) for i in again.items] == [
        ("event-0", 0),
        ("event-1", 0),
    ]


def _reject_all(outbox: Outbox, reasons: list[str]) -> None:
    outbox.put(wire(len(reasons)))
    claim = outbox.claim(len(reasons), lease=60)
    assert claim is not None
    outbox.reject(
        claim,
        {item.key: reason for item, reason in zip(claim.items, reasons, strict=True)},
    )


def test_requeue_makes_rejected_events_pending_again(outbox: Outbox) -> None:
    _reject_all(outbox, ["HTTP 401", "HTTP 401"])

    assert outbox.requeue_rejected() == 2
    claim = outbox.claim(10, lease=60)
    assert claim is not None
    assert [item.attempts for item in claim.items] == [0, 0]


def test_requeue_can_pick_rejected_events_by_reason(outbox: Outbox) -> None:
    _reject_all(outbox, ["HTTP 401", "Given timestamp is in the past."])

    assert outbox.requeue_rejected(reason="HTTP 401") == 1
    assert outbox.stats().rejected_reasons == {"Given timestamp is in the past.": 1}


def test_reasons_are_kept_on_one_line_and_bounded(outbox: Outbox) -> None:
    _reject_all(outbox, ["first line\nsecond line " + "x" * 2000])

    [reason] = outbox.stats().rejected_reasons

    assert "\n" not in reason
    assert len(reason) == 500


# --- SQLite specifics ---


def test_sqlite_events_survive_a_new_connection_with_their_backoff(
    sqlite: Callable[..., SQLiteOutbox], tmp_path: Path, clock: Clock
) -> None:
    path = tmp_path / "outbox.sqlite3"
    first = sqlite(path, clock=clock)
    first.put(wire(2))
    claim = first.claim(1, lease=60)
    assert claim is not None
    first.defer(claim, {claim.items[0].key: 30.0}, "HTTP 503")
    first.close()

    reopened = sqlite(path, clock=clock)

    stats = reopened.stats()
    assert (stats.depth, stats.deferred) == (2, 1)
    assert stats.next_attempt_at == clock.now + 30.0


def test_sqlite_uses_wal_mode(
    sqlite: Callable[..., SQLiteOutbox], tmp_path: Path
) -> None:
    path = tmp_path / "outbox.sqlite3"
    sqlite(path).put(wire(1))

    with closing(sqlite3.connect(path)) as conn:
        (mode,) = conn.execute("PRAGMA journal_mode").fetchone()

    assert mode == "wal"


def _open_and_close_in_another_process(path: Path) -> int:
    """What `pinterest-mw outbox` does: a connection of its own, then closed.

    Returns how many events that process saw.
    """
    script = (
        "import sqlite3, sys\n"
        "conn = sqlite3.connect(sys.argv[1])\n"
        "print(conn.execute('SELECT count(*) FROM events').fetchone()[0])\n"
        "conn.close()\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(path)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return int(done.stdout)


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX advisory locks")
@pytest.mark.parametrize("second", ["same-outbox", "another-outbox"])
def test_opening_the_file_again_keeps_this_processs_sqlite_locks(
    sqlite: Callable[..., SQLiteOutbox], tmp_path: Path, second: str
) -> None:
    """Closing any descriptor of a file drops the process's POSIX locks on it.

    Were the outbox to open the file with Python while its connections are
    open (to read the header of a new reading connection, or of a second
    outbox on the same file), another process closing its own connection
    would think itself the last one, fold the -wal file into the database
    and delete it: what this process wrote afterwards would go to a file
    gone from the disk, lost at the next crash and invisible to the others.
    """
    path = tmp_path / "outbox.sqlite3"
    writer = sqlite(path)
    writer.put(wire(1))
    if second == "same-outbox":
        writer.stats()  # its reading connection
    else:
        sqlite(path, readonly=True).stats()

    assert _open_and_close_in_another_process(path) == 1
    writer.put(wire(2)[1:])

    assert path.with_name(path.name + "-wal").exists()
    assert _open_and_close_in_another_process(path) == 2


def test_a_file_counts_as_open_until_sqlite_has_closed_its_connection(
    sqlite: Callable[..., SQLiteOutbox], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The last connection's close checkpoints and deletes the -wal file.

    It holds an EXCLUSIVE lock for that: were the file to count as closed
    before SQLite is done, another thread opening an outbox on it would read
    the header with Python, and closing that descriptor would drop the lock
    while another process may open the file and write to the -wal file
    about to be deleted.
    """
    from pinterest_mw import outbox as outbox_module

    closed_first: list[bool] = []
    connections: list[sqlite3.Connection] = []
    release = outbox_module._ConnectedFiles._release

    def spy(self: Any, file: tuple[int, int], generation: int) -> None:
        for conn in connections:
            try:
                conn.execute("SELECT 1")
            except sqlite3.ProgrammingError:
                closed_first.append(True)
            else:
                closed_first.append(False)
        release(self, file, generation)

    monkeypatch.setattr(outbox_module._ConnectedFiles, "_release", spy)
    outbox = sqlite(tmp_path / "outbox.sqlite3")
    outbox.put(wire(1))
    assert outbox._writer is not None
    connections.append(outbox._writer)

    outbox.close()

    assert closed_first == [True]


def test_sqlite_stats_come_from_one_snapshot_of_the_file(
    sqlite: Callable[..., SQLiteOutbox], tmp_path: Path
) -> None:
    """Another process storing and claiming events while stats() reads.

    Each count from the file as it was at the first query: never more
    events in flight than live ones (a negative `pending`).
    """
    path = tmp_path / "outbox.sqlite3"
    reader = sqlite(path, readonly=False)
    other = sqlite(path)
    reader.stats()  # opens its reading connection
    assert reader._reader is not None
    done: list[bool] = []

    def between_queries(statement: str) -> None:
        if "FROM events" in statement and not done:
            done.append(True)
            other.put(wire(3))
            assert other.claim(3, lease=60) is not None

    reader._reader.set_trace_callback(between_queries)
    stats = reader.stats()

    assert done
    assert (stats.pending, stats.in_flight, stats.depth) == (0, 0, 0)
    assert reader.stats().in_flight == 3


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX file modes")
def test_sqlite_file_is_readable_by_its_owner_only(
    sqlite: Callable[..., SQLiteOutbox], tmp_path: Path
) -> None:
    path = tmp_path / "data" / "outbox.sqlite3"
    sqlite(path).put(wire(1))

    assert stat.S_IMODE(path.stat().st_mode) == 0o600


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX file modes")
def test_sqlite_narrows_the_mode_of_existing_files(
    sqlite: Callable[..., SQLiteOutbox], tmp_path: Path
) -> None:
    """A file (and its -wal and -shm) left readable by others is narrowed."""
    path = tmp_path / "outbox.sqlite3"
    first = sqlite(path)
    first.put(wire(1))
    files = [path, tmp_path / "outbox.sqlite3-wal", tmp_path / "outbox.sqlite3-shm"]
    for name in files:
        name.chmod(0o644)

    sqlite(path).put(wire(1))

    assert [stat.S_IMODE(name.stat().st_mode) for name in files] == [0o600] * 3


def test_an_outbox_path_under_a_file_is_refused_at_construction(
    tmp_path: Path,
) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    path = blocker / "outbox.sqlite3"

    with pytest.raises(ConfigurationError, match=str(path)):
        SQLiteOutbox(path)


def test_an_outbox_path_naming_a_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="is a directory"):
        SQLiteOutbox(tmp_path)


@pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() == 0,
    reason="POSIX permissions, which root ignores",
)
def test_an_outbox_in_a_read_only_directory_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        with pytest.raises(ConfigurationError, match="not writable"):
            SQLiteOutbox(folder / "outbox.sqlite3")
    finally:
        folder.chmod(0o700)


def test_a_missing_directory_is_created_at_construction(tmp_path: Path) -> None:
    """The file is opened, and checked, when the outbox is built."""
    path = tmp_path / "new" / "deeper" / "outbox.sqlite3"

    SQLiteOutbox(path).close()

    assert path.is_file()


def test_sqlite_file_holds_hashed_user_data_only(
    sqlite: Callable[..., SQLiteOutbox], tmp_path: Path
) -> None:
    path = tmp_path / "outbox.sqlite3"
    event = build_event(
        "checkout", user_data={"email": RAW_EMAIL, "phone": "+1 650 555 1212"}
    )
    outbox = sqlite(path)
    outbox.put([event.to_wire_event()])
    outbox.close()

    stored = b"".join(p.read_bytes() for p in tmp_path.iterdir())

    assert RAW_EMAIL.lower().encode() not in stored.lower()
    assert b"5551212" not in stored
    assert sha256_hex(RAW_EMAIL.lower()).encode() in stored


def test_concurrent_puts_share_commits(
    sqlite: Callable[..., SQLiteOutbox], tmp_path: Path
) -> None:
    """Puts arriving while a commit runs are written together in the next one."""
    outbox = sqlite()
    outbox.put(wire(1))
    commits: list[int] = []
    store = outbox._store
    committing, queued = threading.Event(), threading.Condition()

    class WatchedQueue(list[Any]):
        def append(self, item: Any) -> None:
            with queued:
                super().append(item)
                queued.notify_all()

    def held_store(batch: list[Any]) -> None:
        commits.append(len(batch))
        if len(commits) == 1:
            # The first commit holds until the other puts have queued up.
            outbox._queue = WatchedQueue()
            committing.set()
            with queued:
                queued.wait_for(lambda: len(outbox._queue) == 39, 10)
        store(batch)

    outbox._store = held_store  # type: ignore[method-assign]
    results: list[int] = []

    def put_one() -> None:
        results.append(outbox.put(wire(1)))

    threads = [threading.Thread(target=put_one) for _ in range(40)]
    threads[0].start()
    assert committing.wait(10)
    for thread in threads[1:]:
        thread.start()
    for thread in threads:
        thread.join()

    assert results == [1] * 40
    assert outbox.depth() == 41
    assert commits == [1, 39]


def test_a_failed_commit_fails_every_put_in_it(
    sqlite: Callable[..., SQLiteOutbox], tmp_path: Path
) -> None:
    outbox = sqlite()

    def broken_store(batch: list[object]) -> None:
        raise sqlite3.OperationalError("disk I/O error")

    outbox._store = broken_store  # type: ignore[method-assign, assignment]

    with pytest.raises(sqlite3.OperationalError):
        outbox.put(wire(1))


def test_sqlite_refuses_a_file_from_a_newer_version(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite3"
    with closing(sqlite3.connect(path)) as conn:
        conn.execute("PRAGMA user_version = 99")

    with pytest.raises(ConfigurationError):
        SQLiteOutbox(path).depth()


@pytest.mark.parametrize("path", [":memory:", ""])
def test_sqlite_needs_a_file(path: str) -> None:
    with pytest.raises(ConfigurationError):
        SQLiteOutbox(path)


def test_sqlite_refuses_an_unknown_synchronous_mode(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError):
        SQLiteOutbox(tmp_path / "o.sqlite3", synchronous="OFF")  # type: ignore[arg-type]


@pytest.mark.parametrize("store", [MemoryOutbox, SQLiteOutbox])
def test_stores_satisfy_the_outbox_protocol(store: type, tmp_path: Path) -> None:
    instance = store() if store is MemoryOutbox else store(tmp_path / "o.sqlite3")

    assert isinstance(instance, Outbox)


def test_repr_names_no_event(outbox: Outbox) -> None:
    outbox.put(wire(1))

    assert "event-0" not in repr(outbox)


def test_claims_and_their_items_show_no_payload(outbox: Outbox) -> None:
    [event] = wire(1)
    outbox.put([event])
    claim = outbox.claim(1, lease=60)
    assert claim is not None

    shown = repr(claim) + repr(claim.items[0]) + repr(claim.items)

    assert event.payload.decode() not in shown
    assert "payload" not in shown
    assert "event-0" in repr(claim.items[0])


# --- fork ---


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_starts_with_an_empty_memory_outbox() -> None:
    """Events queued in the parent are the parent's to send, not the child's."""
    outbox = MemoryOutbox()
    outbox.put(wire(3))
    read_end, write_end = os.pipe()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # fork with threads
        pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        try:
            os.write(write_end, str(outbox.depth()).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    child_depth = os.read(read_end, 16)
    os.waitpid(pid, 0)
    os.close(read_end)

    assert (child_depth, outbox.depth()) == (b"0", 3)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_opens_its_own_sqlite_connection(
    sqlite: Callable[..., SQLiteOutbox], tmp_path: Path
) -> None:
    outbox = sqlite()
    outbox.put(wire(1))
    read_end, write_end = os.pipe()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        try:
            outbox.put([WireEvent("child", "checkout", b"{}")])
            os.write(write_end, str(outbox.depth()).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    child_depth = os.read(read_end, 16)
    os.waitpid(pid, 0)
    os.close(read_end)

    assert (child_depth, outbox.depth()) == (b"2", 2)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_childs_connection_holds_its_own_sqlite_locks(
    sqlite: Callable[..., SQLiteOutbox], tmp_path: Path
) -> None:
    """gunicorn --preload: the parent's outbox is open when the worker forks.

    SQLite keeps its POSIX lock bookkeeping per process, and a child
    inherits the parent's copy: a connection the child opens on the same
    file believes the parent's locks are its own and takes none. Once the
    parent closes its outbox (or exits), it finds itself alone, folds the
    -wal file into the database and deletes it, and the child's later
    writes go to a file gone from the disk: stored, answered 202, lost.
    """
    path = tmp_path / "outbox.sqlite3"
    outbox = sqlite(path)
    outbox.put(wire(1))
    to_child, from_parent = os.pipe()
    to_parent, from_child = os.pipe()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # fork with threads
        pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        code = 1
        try:
            outbox.put([WireEvent("child-0", "checkout", b"{}")])
            os.write(from_child, b"1")
            os.read(to_child, 1)  # the parent closes its outbox meanwhile
            for i in range(1, 5):
                outbox.put([WireEvent(f"child-{i}", "checkout", b"{}")])
            outbox.close()
            code = 0
        finally:
            os._exit(code)
    os.read(to_parent, 1)
    outbox.close()
    os.write(from_parent, b"1")
    _, status = os.waitpid(pid, 0)
    for end in (to_child, from_parent, to_parent, from_child):
        os.close(end)

    assert os.waitstatus_to_exitcode(status) == 0
    with closing(sqlite3.connect(path)) as conn:
        (count,) = conn.execute("SELECT count(*) FROM events").fetchone()
    assert count == 6


# --- test mode ---


def test_a_claim_takes_events_of_the_oldest_ones_mode_only(outbox: Outbox) -> None:
    """Events stored in test mode never share a request with live ones."""
    live, test = wire(4), [WireEvent(f"test-{i}", "checkout", b"{}") for i in range(2)]
    outbox.put(live[:2], test=False)
    outbox.put(test, test=True)
    outbox.put(live[2:], test=False)

    first = outbox.claim(10, lease=60)
    second = outbox.claim(10, lease=60)

    assert first is not None
    assert second is not None
    assert (ids(first.items), first.test) == (
        ["event-0", "event-1", "event-2", "event-3"],
        False,
    )
    assert (ids(second.items), second.test) == (["test-0", "test-1"], True)


def test_events_stored_without_a_mode_are_claimed_for_the_senders_own(
    outbox: Outbox,
) -> None:
    outbox.put(wire(1))

    claim = outbox.claim(10, lease=60)

    assert claim is not None
    assert claim.test is None


def test_a_requeued_event_keeps_its_mode(outbox: Outbox) -> None:
    outbox.put(wire(1), test=True)
    claim = outbox.claim(10, lease=60)
    assert claim is not None
    outbox.reject(claim, {claim.items[0].key: "HTTP 400"})
    outbox.requeue_rejected()

    again = outbox.claim(10, lease=60)

    assert again is not None
    assert again.test is True


# --- retention of rejected events ---


@pytest.fixture
def expired_rejection(make_outbox: Callable[..., Outbox], clock: Clock) -> Outbox:
    """An outbox holding one event rejected longer ago than its retention."""
    outbox = make_outbox(rejected_retention=3600)
    outbox.put(wire(1))
    claim = outbox.claim(10, lease=60)
    assert claim is not None
    outbox.reject(claim, {claim.items[0].key: "HTTP 400"})
    clock.advance(3601)
    return outbox


def test_rejected_events_past_the_retention_are_not_counted(
    expired_rejection: Outbox,
) -> None:
    stats = expired_rejection.stats()

    assert (stats.rejected, stats.rejected_reasons) == (0, {})


def test_rejected_events_past_the_retention_are_not_listed(
    expired_rejection: Outbox,
) -> None:
    assert expired_rejection.list_rejected() == []


def test_rejected_events_past_the_retention_are_not_requeued(
    expired_rejection: Outbox,
) -> None:
    assert expired_rejection.requeue_rejected() == 0
    assert expired_rejection.depth() == 0


# --- leases of processes that are gone ---


def _ended_process_id() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait(timeout=30)
    return child.pid


@pytest.fixture
def live_process_id() -> Iterator[int]:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield child.pid
    child.kill()
    child.wait(timeout=30)


def _lease_to(path: Path, pid: int, token: str, host: str | None = None) -> None:
    """Make every leased event of the file look leased by another process."""
    with closing(sqlite3.connect(path)) as conn, conn:
        conn.execute(
            "UPDATE events SET lease_pid = ?, lease_token = ?,"
            " lease_host = coalesce(?, lease_host) WHERE lease_id IS NOT NULL",
            (pid, token, host),
        )


@pytest.fixture
def leased(sqlite: Callable[..., SQLiteOutbox], tmp_path: Path) -> SQLiteOutbox:
    """An outbox with two events claimed for a minute."""
    outbox = sqlite(tmp_path / "leased.sqlite3")
    outbox.put(wire(2))
    assert outbox.claim(10, lease=60) is not None
    return outbox


def test_a_lease_names_the_process_that_took_it(leased: SQLiteOutbox) -> None:
    with closing(sqlite3.connect(leased.path)) as conn:
        rows = conn.execute(
            "SELECT DISTINCT lease_host, lease_pid, length(lease_token) FROM events"
        ).fetchall()

    [(host, pid, token_length)] = rows
    assert (pid, token_length) == (os.getpid(), 16)
    assert host.startswith(socket.gethostname())


@pytest.mark.skipif(os.name != "posix", reason="probes processes with signal 0")
def test_a_claim_takes_over_the_leases_of_a_process_that_ended(
    leased: SQLiteOutbox, caplog: pytest.LogCaptureFixture
) -> None:
    """Not after the lease expires: the process is known to be gone."""
    gone = _ended_process_id()
    _lease_to(leased.path, gone, "ended")

    claim = leased.claim(10, lease=60)

    assert claim is not None
    assert ids(claim.items) == ["event-0", "event-1"]
    assert caplog.messages == [RECLAIMED_LOG % (2, gone)]


@pytest.mark.skipif(os.name != "posix", reason="probes processes with signal 0")
def test_opening_the_file_hands_back_the_leases_of_a_process_that_ended(
    leased: SQLiteOutbox, sqlite: Callable[..., SQLiteOutbox]
) -> None:
    _lease_to(leased.path, _ended_process_id(), "ended")

    reopened = sqlite(leased.path)

    assert (reopened.stats().in_flight, reopened.stats().pending) == (0, 2)


def test_leases_of_an_earlier_process_with_this_id_are_taken_over(
    leased: SQLiteOutbox,
) -> None:
    """A container's first process has the same id after every restart."""
    _lease_to(leased.path, os.getpid(), "an-earlier-run")

    assert leased.claim(10, lease=60) is not None


def test_leases_of_a_process_still_running_are_kept(
    leased: SQLiteOutbox, live_process_id: int
) -> None:
    _lease_to(leased.path, live_process_id, "running")

    assert leased.claim(10, lease=60) is None


def test_this_processs_own_leases_are_kept(leased: SQLiteOutbox) -> None:
    assert leased.claim(10, lease=60) is None


@pytest.mark.skipif(os.name != "posix", reason="probes processes with signal 0")
def test_leases_of_another_host_wait_for_their_expiry(
    leased: SQLiteOutbox, clock: Clock
) -> None:
    """Its process ids say nothing here, even those of no process."""
    _lease_to(leased.path, _ended_process_id(), "elsewhere", host="another-host")

    assert leased.claim(10, lease=60) is None


# --- opening ---

SCHEMA_1 = """
CREATE TABLE events (
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
    rejected_at REAL
);
CREATE INDEX events_due ON events (state, available_at, id);
CREATE INDEX events_lease ON events (lease_id) WHERE lease_id IS NOT NULL;
CREATE INDEX events_rejected ON events (state, rejected_at) WHERE state = 1;
CREATE TABLE totals (
    id INTEGER PRIMARY KEY CHECK (id = 0),
    live_count INTEGER NOT NULL,
    live_bytes INTEGER NOT NULL,
    rejected_count INTEGER NOT NULL
);
INSERT INTO totals VALUES (0, 1, 2, 1);
INSERT INTO events (event_id, event_name, payload, size, created_at, available_at)
    VALUES ('kept', 'checkout', X'7b7d', 2, 1.0, 1.0);
INSERT INTO events (event_id, event_name, payload, size, state, attempts,
    created_at, available_at, reason, rejected_at)
    VALUES ('refused', 'lead', X'7b7d', 2, 1, 1, 1.0, 1.0, 'HTTP 400', 1e10);
PRAGMA user_version = 1;
PRAGMA journal_mode = WAL;
"""
"""An outbox as the first release wrote it: one pending, one rejected event."""


@pytest.fixture
def schema_1_file(tmp_path: Path) -> Path:
    path = tmp_path / "schema-1.sqlite3"
    with closing(sqlite3.connect(path)) as conn:
        conn.executescript(SCHEMA_1)
    return path


def _user_version(path: Path) -> int:
    with closing(sqlite3.connect(path)) as conn:
        (version,) = conn.execute("PRAGMA user_version").fetchone()
    return int(version)


def test_an_outbox_of_schema_1_is_upgraded_and_keeps_its_events(
    sqlite: Callable[..., SQLiteOutbox], schema_1_file: Path
) -> None:
    outbox = sqlite(schema_1_file)

    claim = outbox.claim(10, lease=60)

    assert _user_version(schema_1_file) == 2
    assert claim is not None
    assert (ids(claim.items), claim.test) == (["kept"], None)
    assert [r.event_id for r in outbox.list_rejected()] == ["refused"]


def _junk(path: Path) -> None:
    path.write_bytes(b"order_id,email\n1,ann@example.com\n" * 20)


def _damaged(path: Path) -> None:
    SQLiteOutbox(path).close()
    data = bytearray(path.read_bytes())
    data[100:4096] = b"\xff" * (4096 - 100)
    path.write_bytes(bytes(data))
    for side in ("-wal", "-shm"):
        path.with_name(path.name + side).unlink(missing_ok=True)


def _newer(path: Path) -> None:
    with closing(sqlite3.connect(path)) as conn:
        conn.execute("PRAGMA user_version = 99")


def _foreign(path: Path) -> None:
    with closing(sqlite3.connect(path)) as conn:
        conn.execute("CREATE TABLE orders (id INTEGER PRIMARY KEY, email TEXT)")


@pytest.mark.parametrize(
    ("make_file", "reason"),
    [
        (_junk, "not an SQLite database"),
        (_damaged, "malformed"),
        (_newer, "newer pinterest_mw"),
        (_foreign, "not a pinterest_mw outbox"),
    ],
    ids=["not-sqlite", "damaged", "newer", "another-apps-database"],
)
@pytest.mark.parametrize("readonly", [False, True], ids=["writable", "read-only"])
def test_a_file_that_is_no_usable_outbox_is_refused_at_construction(
    tmp_path: Path, make_file: Callable[[Path], None], reason: str, readonly: bool
) -> None:
    """One line naming the path and the reason, never the file's content."""
    path = tmp_path / "outbox.sqlite3"
    make_file(path)

    with pytest.raises(ConfigurationError) as raised:
        SQLiteOutbox(path, readonly=readonly)

    message = str(raised.value)
    assert str(path) in message
    assert reason in message
    assert "\n" not in message
    assert "ann@example.com" not in message


@pytest.mark.parametrize("make_file", [_junk, _foreign], ids=["not-sqlite", "foreign"])
def test_a_refused_file_is_left_as_it_was(
    tmp_path: Path, make_file: Callable[[Path], None]
) -> None:
    path = tmp_path / "outbox.sqlite3"
    make_file(path)
    path.chmod(0o644)
    before = (path.read_bytes(), stat.S_IMODE(path.stat().st_mode))

    with pytest.raises(ConfigurationError):
        SQLiteOutbox(path)

    assert (path.read_bytes(), stat.S_IMODE(path.stat().st_mode)) == before


# --- read-only ---


@pytest.fixture
def kept_file(tmp_path: Path) -> Path:
    """An outbox with one pending event, in rollback-journal mode, mode 0644."""
    path = tmp_path / "kept.sqlite3"
    outbox = SQLiteOutbox(path)
    outbox.put(wire(1))
    outbox.close()
    with closing(sqlite3.connect(path)) as conn:
        conn.execute("PRAGMA journal_mode = DELETE")
    path.chmod(0o644)
    return path


def _journal_mode(path: Path) -> str:
    with closing(sqlite3.connect(path)) as conn:
        (mode,) = conn.execute("PRAGMA journal_mode").fetchone()
    return str(mode)


def test_reading_an_outbox_read_only_changes_nothing_in_it(kept_file: Path) -> None:
    """No schema change, no WAL switch, no chmod: the file stays byte for byte."""
    before = kept_file.read_bytes()
    outbox = SQLiteOutbox(kept_file, readonly=True)

    stats = outbox.stats()
    outbox.list_rejected()
    outbox.depth()
    outbox.close()

    assert stats.pending == 1
    assert kept_file.read_bytes() == before
    assert stat.S_IMODE(kept_file.stat().st_mode) == 0o644
    assert _journal_mode(kept_file) == "delete"


def test_a_read_only_outbox_refuses_writes(kept_file: Path) -> None:
    outbox = SQLiteOutbox(kept_file, readonly=True)

    with pytest.raises(sqlite3.OperationalError, match="read-only"):
        outbox.put(wire(1))
    outbox.close()


def test_a_read_only_outbox_reads_a_file_of_schema_1(schema_1_file: Path) -> None:
    outbox = SQLiteOutbox(schema_1_file, readonly=True)

    stats = outbox.stats()
    outbox.close()

    assert (stats.pending, stats.rejected) == (1, 1)
    assert _user_version(schema_1_file) == 1


def test_a_read_only_outbox_needs_an_existing_file(tmp_path: Path) -> None:
    path = tmp_path / "missing.sqlite3"

    with pytest.raises(ConfigurationError, match=r"missing\.sqlite3"):
        SQLiteOutbox(path, readonly=True)

    assert not path.exists()


# --- steps of the wall clock ---


def test_a_memory_outbox_waits_out_a_backoff_on_the_monotonic_clock(
    clock: Clock,
) -> None:
    """A step back of the wall clock (NTP) holds no retry back."""
    monotonic = Clock()
    outbox = MemoryOutbox(clock=clock, monotonic=monotonic)
    outbox.put(wire(1))
    claim = outbox.claim(1, lease=60)
    assert claim is not None
    outbox.defer(claim, {claim.items[0].key: 30.0}, "HTTP 503")

    clock.advance(-3600)
    monotonic.advance(31)

    assert outbox.claim(1, lease=60) is not None


def test_a_memory_outbox_reports_its_times_on_the_wall_clock(clock: Clock) -> None:
    outbox = MemoryOutbox(clock=clock, monotonic=Clock())
    outbox.put(wire(2))
    claim = outbox.claim(1, lease=60)
    assert claim is not None
    outbox.defer(claim, {claim.items[0].key: 30.0}, "HTTP 503")
    second = outbox.claim(1, lease=60)

    assert second is not None
    assert second.expires_at == clock.now + 60
    assert outbox.stats().next_attempt_at == clock.now + 30


def test_a_step_back_of_the_clock_moves_stored_retry_times_back(
    sqlite: Callable[..., SQLiteOutbox], clock: Clock
) -> None:
    outbox = sqlite(clock=clock)
    outbox.put(wire(1))
    claim = outbox.claim(1, lease=60)
    assert claim is not None
    outbox.defer(claim, {claim.items[0].key: 30.0}, "HTTP 503")

    clock.advance(-3600)
    early = outbox.claim(1, lease=60)
    clock.advance(31)

    assert early is None
    assert outbox.claim(1, lease=60) is not None


@pytest.mark.skipif(os.name != "posix", reason="probes processes with signal 0")
def test_a_deferred_event_keeps_its_retry_time_when_its_process_ended(
    sqlite: Callable[..., SQLiteOutbox], tmp_path: Path, clock: Clock
) -> None:
    """Only leased events are handed back, and those were due when claimed."""
    outbox = sqlite(tmp_path / "ended.sqlite3", clock=clock)
    outbox.put(wire(2))
    claim = outbox.claim(2, lease=60)
    assert claim is not None
    outbox.defer(claim, {claim.items[0].key: 30.0}, "HTTP 503")
    _lease_to(outbox.path, _ended_process_id(), "ended")

    reclaimed = outbox.claim(2, lease=60)

    assert reclaimed is not None
    assert ids(reclaimed.items) == ["event-1"]
    assert outbox.stats().next_attempt_at == clock.now + 30
