"""Background delivery: batching, lazy start, flush, overflow, outcomes, counters."""

from __future__ import annotations

import asyncio
import functools
import logging
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from pinterest_mw._shutdown import close_all_at_exit
from pinterest_mw.dispatch import (
    ACCOUNT_REFUSED_LOG,
    CLAIM_FAILED_LOG,
    CLOSED_LOST_LOG,
    CLOSED_REASON,
    DROPPED_LOG,
    DROPPED_UNREPORTED_LOG,
    LOST_LOG,
    ON_ERROR_FAILED_LOG,
    OUTBOX_FULL_REASON,
    OUTBOX_UNREADABLE,
    STORE_FAILED_LOG,
    AsyncDispatcher,
    Counters,
    DeliveryBackoff,
    DeliveryFailure,
    ThreadDispatcher,
    _WhenDone,
)
from pinterest_mw.events import WireEvent, build_event
from pinterest_mw.exceptions import (
    APIError,
    ConfigurationError,
    OutboxError,
    QueueFullError,
    RateLimitError,
    TransportError,
)
from pinterest_mw.outbox import Claim, MemoryOutbox, Outbox, SQLiteOutbox
from pinterest_mw.testing import FAKE_ACCESS_TOKEN, FAKE_AD_ACCOUNT_ID, FakePinterestAPI
from pinterest_mw.transport import (
    EventResult,
    EventStatus,
    RetryPolicy,
    Transport,
)

FAST_BACKOFF = DeliveryBackoff(initial=0.01, maximum=0.05, jitter=0)
SECRET_PAYLOAD = b'{"user_data":{"em":["' + b"a" * 64 + b'"]}}'

Outcome = Any  # a status, a list of statuses (one per event), or an exception


def wire(n: int, start: int = 0) -> list[WireEvent]:
    return [
        WireEvent(f"event-{i}", "checkout", SECRET_PAYLOAD)
        for i in range(start, start + n)
    ]


def returns_within(func: Callable[[], Any], bound: float = 30.0) -> Any:
    """Call `func` in a thread; fail if it has not returned after `bound` seconds.

    For calls that must return at once rather than wait out a long timeout:
    the bound only turns a hang into a failure, it asserts no duration.
    """
    results: list[Any] = []
    thread = threading.Thread(target=lambda: results.append(func()), daemon=True)
    thread.start()
    thread.join(bound)
    assert results, f"still waiting after {bound} s"
    return results[0]


class FakeSender:
    """A scripted transport: each call consumes the next outcome (then "processed")."""

    def __init__(self, *outcomes: Outcome) -> None:
        self.outcomes: deque[Outcome] = deque(outcomes)
        self.batches: list[list[str]] = []
        # The `test` argument of each request, in order.
        self.modes: list[bool | None] = []
        self.closed = False
        self._changed = threading.Condition()

    @property
    def sent_ids(self) -> list[str]:
        with self._changed:
            return [event_id for batch in self.batches for event_id in batch]

    def wait_for_batches(self, count: int, timeout: float = 5.0) -> bool:
        """Wait until `count` requests were made; False if they were not in time."""
        with self._changed:
            return self._changed.wait_for(lambda: len(self.batches) >= count, timeout)

    def answer(
        self, batch: Sequence[WireEvent], test: bool | None = None
    ) -> list[EventResult]:
        with self._changed:
            self.batches.append([event.event_id for event in batch])
            self.modes.append(test)
            outcome = self.outcomes.popleft() if self.outcomes else "processed"
            self._changed.notify_all()
        if isinstance(outcome, BaseException):
            raise outcome
        statuses = outcome if isinstance(outcome, list) else [outcome] * len(batch)
        return [
            EventResult(
                index,
                event.event_id,
                event.event_name,
                EventStatus(status),
                "Given timestamp is in the past." if status == "failed" else None,
            )
            for index, (event, status) in enumerate(zip(batch, statuses, strict=False))
        ]

    def send_batch(
        self, batch: Sequence[WireEvent], *, test: bool | None = None
    ) -> list[EventResult]:
        return self.answer(batch, test)

    def close(self) -> None:
        self.closed = True


class AsyncFakeSender:
    """The async twin of `FakeSender`, sharing its script and records."""

    def __init__(self, fake: FakeSender) -> None:
        self.fake = fake

    async def send_batch(
        self, batch: Sequence[WireEvent], *, test: bool | None = None
    ) -> list[EventResult]:
        await anyio.lowlevel.checkpoint()
        return self.fake.answer(batch, test)

    async def aclose(self) -> None:
        self.fake.closed = True


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
def made() -> Iterator[list[ThreadDispatcher | AsyncDispatcher]]:
    dispatchers: list[ThreadDispatcher | AsyncDispatcher] = []
    yield dispatchers
    for dispatcher in dispatchers:
        if isinstance(dispatcher, ThreadDispatcher) or not dispatcher._closed:
            dispatcher.close(timeout=0.5)


@pytest.fixture
def make_thread(
    made: list[ThreadDispatcher | AsyncDispatcher],
) -> Callable[..., ThreadDispatcher]:
    def make(
        sender: FakeSender | None = None,
        outbox: Outbox | None = None,
        **options: Any,
    ) -> ThreadDispatcher:
        options = {
            "flush_interval": 0.02,
            "backoff": FAST_BACKOFF,
            "shutdown_timeout": 2.0,
            **options,
        }
        dispatcher = ThreadDispatcher(
            outbox if outbox is not None else MemoryOutbox(),
            (lambda: sender) if sender is not None else None,
            **options,
        )
        made.append(dispatcher)
        return dispatcher

    return make


@pytest.fixture
def make_async(
    made: list[ThreadDispatcher | AsyncDispatcher],
) -> Callable[..., AsyncDispatcher]:
    def make(
        sender: FakeSender, outbox: Outbox | None = None, **options: Any
    ) -> AsyncDispatcher:
        options = {
            "flush_interval": 0.02,
            "backoff": FAST_BACKOFF,
            "shutdown_timeout": 2.0,
            **options,
        }
        dispatcher = AsyncDispatcher(
            outbox if outbox is not None else MemoryOutbox(),
            lambda: AsyncFakeSender(sender),
            **options,
        )
        made.append(dispatcher)
        return dispatcher

    return make


def worker_threads(
    besides: Sequence[threading.Thread] = (),
) -> list[threading.Thread]:
    """The dispatcher worker threads alive now, but for those in `besides`
    (taken at a test's start: an earlier test's worker may still be ending)."""
    return [
        t
        for t in threading.enumerate()
        if t.name == "pinterest-mw-dispatcher" and t not in besides
    ]


# --- batching and life cycle ---


def test_full_batches_go_out_before_the_interval(
    make_thread: Callable[..., ThreadDispatcher],
) -> None:
    sender = FakeSender()
    dispatcher = make_thread(sender, batch_size=3, flush_interval=60)

    dispatcher.submit(wire(7))

    assert sender.wait_for_batches(2)
    assert sender.batches[:2] == [
        ["event-0", "event-1", "event-2"],
        ["event-3", "event-4", "event-5"],
    ]


def test_a_partial_batch_goes_out_when_the_interval_passes(
    make_thread: Callable[..., ThreadDispatcher],
) -> None:
    sender = FakeSender()
    dispatcher = make_thread(sender, batch_size=1000, flush_interval=0.05)

    dispatcher.submit(wire(2))

    assert sender.wait_for_batches(1)
    assert sender.batches == [["event-0", "event-1"]]


def test_the_worker_starts_at_the_first_event(
    make_thread: Callable[..., ThreadDispatcher],
) -> None:
    before = worker_threads()
    dispatcher = make_thread(FakeSender())
    started_early = worker_threads(besides=before)

    dispatcher.submit(wire(1))

    assert not started_early
    assert len(worker_threads(besides=before)) == 1


def test_flush_delivers_everything_waiting(
    make_thread: Callable[..., ThreadDispatcher],
) -> None:
    sender = FakeSender()
    dispatcher = make_thread(sender, flush_interval=60)
    dispatcher.submit(wire(3))

    assert dispatcher.flush(timeout=5)
    assert sender.sent_ids == ["event-0", "event-1", "event-2"]


def test_close_flushes_and_closes_the_transport(
    make_thread: Callable[..., ThreadDispatcher],
) -> None:
    sender = FakeSender()
    dispatcher = make_thread(sender, flush_interval=60)
    dispatcher.submit(wire(2))

    dispatcher.close(timeout=5)

    assert sender.sent_ids == ["event-0", "event-1"]
    assert sender.closed


def test_the_exit_hook_flushes_open_dispatchers(
    make_thread: Callable[..., ThreadDispatcher],
) -> None:
    sender = FakeSender()
    dispatcher = make_thread(sender, flush_interval=60)
    dispatcher.submit(wire(2))

    close_all_at_exit()

    assert sender.sent_ids == ["event-0", "event-1"]


def test_events_submitted_after_close_are_dropped_and_counted(
    make_thread: Callable[..., ThreadDispatcher],
) -> None:
    dispatcher = make_thread(FakeSender())
    dispatcher.close()

    assert dispatcher.submit(wire(2)) == 0
    assert dispatcher.counters.dropped == 2


def test_closing_with_undelivered_events_in_memory_counts_them_lost(
    make_thread: Callable[..., ThreadDispatcher], caplog: pytest.LogCaptureFixture
) -> None:
    dispatcher = make_thread(None)
    dispatcher.submit(wire(2))

    dispatcher.close(timeout=0.1)

    assert dispatcher.counters.dropped == 2
    assert CLOSED_LOST_LOG % (2, 0) in caplog.messages


def test_closing_with_undelivered_events_in_a_durable_outbox_keeps_them(
    sqlite: Callable[..., SQLiteOutbox],
    make_thread: Callable[..., ThreadDispatcher],
    tmp_path: Path,
) -> None:
    outbox = sqlite()
    dispatcher = make_thread(None, outbox)
    dispatcher.submit(wire(2))

    dispatcher.close(timeout=0.1)

    assert (dispatcher.counters.dropped, outbox.depth()) == (0, 2)


class BlockingSender(FakeSender):
    """Holds each request until `release` is set; `entered` tells it started."""

    def __init__(self, *outcomes: Outcome) -> None:
        super().__init__(*outcomes)
        self.entered = threading.Event()
        self.release = threading.Event()

    def send_batch(
        self, batch: Sequence[WireEvent], *, test: bool | None = None
    ) -> list[EventResult]:
        self.entered.set()
        self.release.wait(10)
        return self.answer(batch)


def test_counters_add_up_after_closing_with_a_batch_in_flight(
    make_thread: Callable[..., ThreadDispatcher], caplog: pytest.LogCaptureFixture
) -> None:
    """Events still being sent at close are counted once, answered or not."""
    sender = BlockingSender()
    dispatcher = make_thread(sender, batch_size=2, flush_interval=3600)
    dispatcher.submit(wire(3))
    assert sender.entered.wait(5)
    thread = dispatcher._thread
    assert thread is not None

    dispatcher.close(timeout=0)
    sender.release.set()
    thread.join(10)

    counters = dispatcher.counters
    assert not thread.is_alive()
    assert counters.processed + counters.failed + counters.dropped == 3
    assert CLOSED_LOST_LOG % (3, 2) in caplog.messages


@pytest.mark.anyio
async def test_async_counters_add_up_after_closing_with_a_batch_in_flight() -> None:
    entered, release = anyio.Event(), anyio.Event()
    fake = FakeSender()

    class HeldSender(AsyncFakeSender):
        async def send_batch(
            self, batch: Sequence[WireEvent], *, test: bool | None = None
        ) -> list[EventResult]:
            entered.set()
            await release.wait()
            return self.fake.answer(batch)

    dispatcher = AsyncDispatcher(
        MemoryOutbox(), lambda: HeldSender(fake), batch_size=2, flush_interval=3600
    )
    await dispatcher.asubmit(wire(3))
    with anyio.fail_after(5):
        await entered.wait()
    worker = dispatcher._worker
    assert worker is not None
    assert worker.task is not None

    await dispatcher.aclose(timeout=0)
    release.set()
    await asyncio.wait([worker.task], timeout=5)

    counters = dispatcher.counters
    assert worker.done
    assert counters.processed + counters.failed + counters.dropped == 3


def test_counters_add_up_after_closing_a_durable_outbox_with_a_batch_in_flight(
    sqlite: Callable[..., SQLiteOutbox],
    make_thread: Callable[..., ThreadDispatcher],
) -> None:
    sender = BlockingSender()
    outbox = sqlite()
    dispatcher = make_thread(sender, outbox, batch_size=2, flush_interval=3600)
    dispatcher.submit(wire(3))
    assert sender.entered.wait(5)
    thread = dispatcher._thread
    assert thread is not None

    dispatcher.close(timeout=0)
    sender.release.set()
    thread.join(10)

    counters = dispatcher.counters
    settled = counters.processed + counters.failed + counters.dropped
    assert settled + outbox.depth() == 3


def test_without_a_transport_events_are_only_stored(
    make_thread: Callable[..., ThreadDispatcher],
) -> None:
    dispatcher = make_thread(None)

    dispatcher.submit(wire(2))

    assert not dispatcher.is_sending
    assert dispatcher.counters == Counters(accepted=2, queue_depth=2)
    assert not dispatcher.flush(timeout=0.1)


def test_start_delivers_what_a_durable_outbox_kept(
    sqlite: Callable[..., SQLiteOutbox],
    make_thread: Callable[..., ThreadDispatcher],
    tmp_path: Path,
) -> None:
    outbox = sqlite()
    outbox.put(wire(2))
    sender = FakeSender()
    dispatcher = make_thread(sender, outbox)

    dispatcher.start()

    assert sender.wait_for_batches(1)
    assert sender.sent_ids == ["event-0", "event-1"]


# --- overflow ---


def test_drop_newest_keeps_what_fits_and_counts_the_rest(
    make_thread: Callable[..., ThreadDispatcher], caplog: pytest.LogCaptureFixture
) -> None:
    dispatcher = make_thread(None, MemoryOutbox(max_events=2))

    accepted = dispatcher.submit(wire(3))

    assert (accepted, dispatcher.counters.dropped) == (2, 1)
    assert DROPPED_LOG % (1, "the outbox is full", "drop_newest") in caplog.messages


def test_drop_warnings_are_rate_limited_but_counts_add_up(
    make_thread: Callable[..., ThreadDispatcher], caplog: pytest.LogCaptureFixture
) -> None:
    dispatcher = make_thread(None, MemoryOutbox(max_events=1))
    dispatcher.submit(wire(1))

    for _ in range(5):
        dispatcher.submit(wire(1))

    assert dispatcher.counters.dropped == 5
    assert len([r for r in caplog.records if r.msg == DROPPED_LOG]) == 1


def test_drops_held_back_by_the_rate_limit_are_logged_at_close(
    make_thread: Callable[..., ThreadDispatcher], caplog: pytest.LogCaptureFixture
) -> None:
    dispatcher = make_thread(None, MemoryOutbox(max_events=1))
    dispatcher.submit(wire(1))
    for _ in range(5):
        dispatcher.submit(wire(1))

    dispatcher.close(timeout=0)

    assert caplog.messages[:2] == [
        DROPPED_LOG % (1, "the outbox is full", "drop_newest"),
        DROPPED_UNREPORTED_LOG % (4, "drop_newest"),
    ]


def test_raise_policy_raises_and_stores_nothing_of_the_call(
    make_thread: Callable[..., ThreadDispatcher],
) -> None:
    outbox = MemoryOutbox(max_events=2)
    dispatcher = make_thread(None, outbox, overflow="raise")
    dispatcher.submit(wire(1))

    with pytest.raises(QueueFullError):
        dispatcher.submit(wire(2))
    assert (outbox.depth(), dispatcher.counters.dropped) == (1, 2)


def test_block_policy_drops_after_the_timeout(
    make_thread: Callable[..., ThreadDispatcher],
) -> None:
    dispatcher = make_thread(
        None, MemoryOutbox(max_events=1), overflow="block", block_timeout=0.05
    )

    accepted = dispatcher.submit(wire(2))

    assert (accepted, dispatcher.counters.dropped) == (1, 1)


def test_block_policy_waits_for_the_worker_to_make_room(
    make_thread: Callable[..., ThreadDispatcher],
) -> None:
    sender = FakeSender()
    dispatcher = make_thread(
        sender,
        MemoryOutbox(max_events=2),
        overflow="block",
        block_timeout=5,
        flush_interval=60,
    )

    accepted = dispatcher.submit(wire(5))

    assert (accepted, dispatcher.counters.dropped) == (5, 0)


class FullOutbox(MemoryOutbox):
    """A memory outbox of one event, full; `refused` is set at each refusal."""

    def __init__(self) -> None:
        super().__init__(max_events=1)
        super().put(wire(1, start=100))
        self.refused = threading.Event()

    def put(
        self,
        events: Sequence[WireEvent],
        *,
        atomic: bool = False,
        test: bool | None = None,
    ) -> int:
        stored = super().put(events, atomic=atomic, test=test)
        if stored < len(events):
            self.refused.set()
        return stored


def test_a_blocked_store_refused_by_close_is_dropped_as_closed(
    make_thread: Callable[..., ThreadDispatcher], caplog: pytest.LogCaptureFixture
) -> None:
    """Not as "the outbox is full": the close, not the room, ended its wait."""
    outbox = FullOutbox()
    dispatcher = make_thread(None, outbox, overflow="block", block_timeout=60)
    results: list[int] = []
    submitting = threading.Thread(
        target=lambda: results.append(dispatcher.submit(wire(1)))
    )
    submitting.start()
    assert outbox.refused.wait(5)

    dispatcher.close(timeout=0)
    submitting.join(30)

    # Dropped: the event refused, and the one the outbox held at close.
    assert (results, dispatcher.counters.dropped) == ([0], 2)
    assert DROPPED_LOG % (1, CLOSED_REASON, "block") in caplog.messages
    assert not any(OUTBOX_FULL_REASON in message for message in caplog.messages)


def test_a_storage_failure_drops_and_logs(
    sqlite: Callable[..., SQLiteOutbox],
    make_thread: Callable[..., ThreadDispatcher],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    outbox = sqlite()

    def broken_put(events: Sequence[WireEvent], *, atomic: bool = False) -> int:
        raise OSError("disk full")

    outbox.put = broken_put  # type: ignore[method-assign]
    dispatcher = make_thread(FakeSender(), outbox)

    assert dispatcher.submit(wire(1)) == 0
    assert dispatcher.counters.dropped == 1
    assert STORE_FAILED_LOG % (1, 1) in caplog.messages


def test_repeated_storage_failures_log_once_per_interval_and_add_up(
    sqlite: Callable[..., SQLiteOutbox],
    make_thread: Callable[..., ThreadDispatcher],
    caplog: pytest.LogCaptureFixture,
) -> None:
    outbox = sqlite()

    def broken_put(events: Sequence[WireEvent], *, atomic: bool = False) -> int:
        raise OSError("disk full")

    outbox.put = broken_put  # type: ignore[method-assign]
    dispatcher = make_thread(None, outbox)
    for count in (1, 2, 3):
        dispatcher.submit(wire(count))

    dispatcher.close(timeout=0)

    failures = [r for r in caplog.records if r.msg == STORE_FAILED_LOG]
    assert [r.getMessage() for r in failures] == [
        STORE_FAILED_LOG % (1, 1),
        STORE_FAILED_LOG % (5, 2),
    ]
    assert dispatcher.counters.dropped == 6


@pytest.mark.anyio
async def test_a_failed_grouped_write_counts_one_outbox_error(
    sqlite: Callable[..., SQLiteOutbox], make_thread: Callable[..., ThreadDispatcher]
) -> None:
    """Three calls share one write: one failure of the outbox, three drops."""
    outbox = sqlite()
    writes: list[int] = []

    def broken_put_many(batches: Sequence[Sequence[WireEvent]], **options: Any) -> Any:
        writes.append(len(batches))
        raise sqlite3.OperationalError("database is locked")

    outbox.put_many = broken_put_many  # type: ignore[method-assign]
    dispatcher = make_thread(None, outbox)

    accepted = await asyncio.gather(*(dispatcher.asubmit(wire(1)) for _ in "abc"))

    counters = dispatcher.counters
    assert (writes, accepted) == ([3], [0, 0, 0])
    assert (counters.outbox_errors, counters.dropped) == (1, 3)


# --- outcomes ---


def test_unconfirmed_events_are_counted_apart_from_processed_ones(
    make_thread: Callable[..., ThreadDispatcher],
) -> None:
    """Pinterest took the request without a result for them: not resent."""
    sender = FakeSender("unconfirmed")
    dispatcher = make_thread(sender)
    dispatcher.submit(wire(2))

    assert dispatcher.flush(timeout=5)
    counters = dispatcher.counters
    assert (counters.processed, counters.unconfirmed) == (0, 2)
    assert sender.sent_ids == ["event-0", "event-1"]
    assert counters.as_dict()["unconfirmed"] == 2


def test_processed_events_leave_the_outbox(
    make_thread: Callable[..., ThreadDispatcher],
) -> None:
    outbox = MemoryOutbox()
    dispatcher = make_thread(FakeSender(), outbox)
    dispatcher.submit(wire(2))

    assert dispatcher.flush(timeout=5)
    assert dispatcher.counters == Counters(accepted=2, sent=2, processed=2)


def test_events_pinterest_rejects_are_kept_with_its_message(
    make_thread: Callable[..., ThreadDispatcher],
) -> None:
    outbox = MemoryOutbox()
    dispatcher = make_thread(FakeSender(["processed", "failed", "warned"]), outbox)
    dispatcher.submit(wire(3))

    dispatcher.flush(timeout=5)

    stats = outbox.stats()
    assert (stats.depth, stats.rejected) == (0, 1)
    assert stats.rejected_reasons == {"Given timestamp is in the past.": 1}
    assert dispatcher.counters == Counters(
        accepted=3, sent=3, processed=2, warned=1, failed=1
    )


@pytest.mark.parametrize("status", [400, 404])
def test_a_refused_request_rejects_all_its_events_and_logs_an_error(
    make_thread: Callable[..., ThreadDispatcher],
    caplog: pytest.LogCaptureFixture,
    status: int,
) -> None:
    outbox = MemoryOutbox()
    error = APIError(status, 1, "Invalid parameters.")
    dispatcher = make_thread(FakeSender(error), outbox)
    dispatcher.submit(wire(2))

    dispatcher.flush(timeout=5)

    assert outbox.stats().rejected_reasons == {
        f"HTTP {status} (code 1): Invalid parameters.": 2
    }
    assert any(r.levelno == logging.ERROR for r in caplog.records)


@pytest.mark.parametrize("status", [401, 403])
def test_an_account_refusal_keeps_the_events_and_retries_them(
    make_thread: Callable[..., ThreadDispatcher], status: int
) -> None:
    """A bad token or missing permission is no verdict on the events."""
    sender = FakeSender(APIError(status, 2, "Authentication failed."))
    dispatcher = make_thread(sender)
    dispatcher.submit(wire(2))

    assert dispatcher.flush(timeout=5)
    assert sender.batches == [["event-0", "event-1"], ["event-0", "event-1"]]
    assert dispatcher.counters == Counters(
        accepted=2, sent=4, processed=2, retried=2, account_refusals=1
    )


def test_an_account_refusal_pauses_the_whole_queue(
    make_thread: Callable[..., ThreadDispatcher], caplog: pytest.LogCaptureFixture
) -> None:
    """Events not in the refused batch wait too, and one ERROR says so."""
    sender = FakeSender(APIError(401, 2, "Authentication failed."))
    backoff = DeliveryBackoff(initial=600, maximum=600, jitter=0)
    dispatcher = make_thread(sender, batch_size=1, backoff=backoff)
    dispatcher.submit(wire(3))

    assert not returns_within(lambda: dispatcher.flush(timeout=60))
    assert sender.batches == [["event-0"]]
    assert dispatcher.counters.account_refusals == 1
    assert dispatcher.outbox.stats().rejected == 0
    reason = "HTTP 401 (code 2): Authentication failed."
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == [ACCOUNT_REFUSED_LOG % (reason, 600, 1)]


def test_events_refused_for_the_account_are_counted_when_given_up(
    make_thread: Callable[..., ThreadDispatcher], caplog: pytest.LogCaptureFixture
) -> None:
    sender = FakeSender(*[APIError(403, 2, "Forbidden.")] * 2)
    dispatcher = make_thread(sender, max_attempts=2)
    dispatcher.submit(wire(1))

    assert dispatcher.flush(timeout=5)
    assert dispatcher.counters.dropped == 1
    reason = "gave up after 2 delivery attempts: HTTP 403 (code 2): Forbidden."
    assert LOST_LOG % (1, reason) in caplog.messages


@pytest.mark.parametrize(
    "error",
    [
        RateLimitError(429, 8, "rate limited", retry_after=0.01),
        APIError(503, 4197),
        TransportError("Pinterest request connection failed (ConnectError)"),
        RuntimeError("a bug"),
    ],
    ids=["429", "503", "network", "unexpected"],
)
def test_a_retryable_failure_defers_and_the_retry_delivers(
    make_thread: Callable[..., ThreadDispatcher], error: Exception
) -> None:
    sender = FakeSender(error)
    dispatcher = make_thread(sender)
    dispatcher.submit(wire(2))

    assert dispatcher.flush(timeout=5)
    assert sender.batches == [["event-0", "event-1"], ["event-0", "event-1"]]
    assert dispatcher.counters == Counters(accepted=2, sent=4, processed=2, retried=2)


def test_an_unreadable_success_answer_keeps_the_events_for_a_retry(
    make_thread: Callable[..., ThreadDispatcher], httpx_mock: Any
) -> None:
    """A 2xx that is not Pinterest's answer (a captive portal's page, say) is
    no verdict on the events: they stay queued and go out again."""
    fake = FakePinterestAPI()
    httpx_mock.add_response(text="<html>Sign in to the Wi-Fi</html>")
    httpx_mock.add_callback(fake.handle, is_reusable=True)
    transport = Transport(
        FAKE_ACCESS_TOKEN, FAKE_AD_ACCOUNT_ID, retry=RetryPolicy(attempts=1)
    )
    events = [
        build_event("lead", user_data={"em": "a@b.co"}, event_id=f"e-{n}")
        for n in range(2)
    ]
    dispatcher = make_thread(transport)
    dispatcher.submit([event.to_wire_event() for event in events])

    assert dispatcher.flush(timeout=5)
    assert [event["event_id"] for event in fake.events] == ["e-0", "e-1"]
    assert dispatcher.counters == Counters(accepted=2, sent=4, processed=2, retried=2)


def test_a_deferred_event_records_its_attempt_and_retry_time(
    sqlite: Callable[..., SQLiteOutbox],
    make_thread: Callable[..., ThreadDispatcher],
    tmp_path: Path,
) -> None:
    outbox = sqlite()
    backoff = DeliveryBackoff(initial=600, maximum=600, jitter=0)
    told = threading.Event()
    dispatcher = make_thread(
        FakeSender(APIError(503)),
        outbox,
        backoff=backoff,
        on_error=lambda failure: told.set(),
    )
    dispatcher.submit(wire(1))

    assert told.wait(5)
    stats = outbox.stats()
    assert stats.next_attempt_at is not None
    assert stats.next_attempt_at > time.time() + 500
    assert stats.deferred_reasons == {"HTTP 503": 1}


def test_flush_gives_up_at_once_on_events_deferred_past_its_timeout(
    make_thread: Callable[..., ThreadDispatcher],
) -> None:
    sender = FakeSender(RateLimitError(429, 8, "rate limited", retry_after=7200))
    dispatcher = make_thread(sender)
    dispatcher.submit(wire(1))

    assert not returns_within(lambda: dispatcher.flush(timeout=3600))
    assert dispatcher.outbox.stats().deferred == 1


def test_flush_waits_for_a_backoff_that_ends_within_its_timeout(
    make_thread: Callable[..., ThreadDispatcher],
) -> None:
    """A worker asleep for its long interval is woken when the backoff ends."""
    sender = FakeSender(APIError(503))
    dispatcher = make_thread(sender, flush_interval=3600)
    dispatcher.submit(wire(1))

    assert returns_within(lambda: dispatcher.flush(timeout=3600))
    assert sender.sent_ids == ["event-0", "event-0"]


def test_flush_wakes_the_worker_for_a_backoff_that_ended_before_it_looked(
    make_thread: Callable[..., ThreadDispatcher],
) -> None:
    """A slow worker (here its `on_error`) outlasts the backoff: the event is
    due again by the time the flush looks, and the worker asleep."""
    sender = FakeSender(APIError(503))
    dispatcher = make_thread(
        sender,
        flush_interval=3600,
        on_error=lambda failure: time.sleep(FAST_BACKOFF.initial * 5),
    )
    dispatcher.submit(wire(1))

    assert returns_within(lambda: dispatcher.flush(timeout=3600))
    assert sender.sent_ids == ["event-0", "event-0"]


@pytest.mark.anyio
async def test_aflush_gives_up_at_once_on_events_deferred_past_its_timeout(
    make_async: Callable[..., AsyncDispatcher],
) -> None:
    sender = FakeSender(RateLimitError(429, 8, "rate limited", retry_after=7200))
    dispatcher = make_async(sender)
    await dispatcher.asubmit(wire(1))

    with anyio.fail_after(30):
        assert not await dispatcher.aflush(timeout=3600)
    assert sender.sent_ids == ["event-0"]


def test_events_without_a_result_are_deferred(
    make_thread: Callable[..., ThreadDispatcher],
) -> None:
    sender = FakeSender(["processed", "not_sent"])
    dispatcher = make_thread(sender)
    dispatcher.submit(wire(2))

    assert dispatcher.flush(timeout=5)
    assert sender.batches == [["event-0", "event-1"], ["event-1"]]


def test_events_in_memory_are_dropped_after_their_last_attempt(
    make_thread: Callable[..., ThreadDispatcher], caplog: pytest.LogCaptureFixture
) -> None:
    outbox = MemoryOutbox()
    sender = FakeSender(*[APIError(503)] * 3)
    dispatcher = make_thread(sender, outbox, max_attempts=2)
    dispatcher.submit(wire(1))

    assert dispatcher.flush(timeout=5)
    assert len(sender.batches) == 2
    assert dispatcher.counters.dropped == 1
    assert LOST_LOG % (1, "gave up after 2 delivery attempts: HTTP 503") in (
        caplog.messages
    )


def test_durable_events_are_rejected_after_their_last_attempt(
    sqlite: Callable[..., SQLiteOutbox],
    make_thread: Callable[..., ThreadDispatcher],
    tmp_path: Path,
) -> None:
    outbox = sqlite()
    dispatcher = make_thread(FakeSender(APIError(503)), outbox, max_attempts=1)
    dispatcher.submit(wire(1))

    dispatcher.flush(timeout=5)

    assert outbox.stats().rejected_reasons == {
        "gave up after 1 delivery attempts: HTTP 503": 1
    }


def test_on_error_hears_of_each_failure(
    make_thread: Callable[..., ThreadDispatcher],
) -> None:
    failures: list[DeliveryFailure] = []
    error = APIError(503)
    dispatcher = make_thread(
        FakeSender(error, ["failed", "processed"]), on_error=failures.append
    )
    dispatcher.submit(wire(2))

    dispatcher.flush(timeout=5)

    assert [(f.outcome, f.event_ids, f.error) for f in failures] == [
        ("deferred", ("event-0", "event-1"), error),
        ("rejected", ("event-0",), None),
    ]


def test_a_failing_on_error_callback_is_logged_not_raised(
    make_thread: Callable[..., ThreadDispatcher], caplog: pytest.LogCaptureFixture
) -> None:
    def callback(failure: DeliveryFailure) -> None:
        raise ValueError("oops")

    dispatcher = make_thread(FakeSender(APIError(400)), on_error=callback)
    dispatcher.submit(wire(1))

    dispatcher.flush(timeout=5)

    assert ON_ERROR_FAILED_LOG in caplog.messages


def test_logs_never_hold_payloads(
    make_thread: Callable[..., ThreadDispatcher], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="pinterest_mw")
    sender = FakeSender(APIError(503), ["failed"], APIError(401))
    dispatcher = make_thread(sender, MemoryOutbox(max_events=1), max_attempts=3)
    dispatcher.submit(wire(2))
    dispatcher.flush(timeout=5)
    dispatcher.submit(wire(1, start=5))
    dispatcher.flush(timeout=5)

    assert caplog.records
    assert "a" * 64 not in caplog.text
    assert "user_data" not in caplog.text


# --- backoff ---


def test_backoff_grows_and_is_capped() -> None:
    backoff = DeliveryBackoff(initial=1, maximum=5, multiplier=2, jitter=0)

    assert [backoff.delay(n) for n in (1, 2, 3, 4)] == [1, 2, 4, 5]


def test_retry_after_is_a_floor_of_the_backoff() -> None:
    backoff = DeliveryBackoff(initial=1, jitter=0)

    assert backoff.delay(1, retry_after=30) == 30


@pytest.mark.parametrize(
    "options",
    [{"initial": -1}, {"maximum": float("inf")}, {"multiplier": 0.5}, {"jitter": 2}],
)
def test_unusable_backoff_is_a_configuration_error(options: dict[str, float]) -> None:
    with pytest.raises(ConfigurationError):
        DeliveryBackoff(**options)


@pytest.mark.parametrize(
    "options",
    [
        {"batch_size": 0},
        {"batch_size": 1001},
        {"flush_interval": 0},
        {"overflow": "drop_oldest"},
        {"block_timeout": -1},
        {"max_attempts": 0},
        {"lease": float("nan")},
    ],
)
def test_unusable_options_are_configuration_errors(options: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError):
        ThreadDispatcher(MemoryOutbox(), None, **options)


def test_counters_convert_to_a_dict(
    sqlite: Callable[..., SQLiteOutbox],
) -> None:
    assert Counters(accepted=1).as_dict()["accepted"] == 1


# --- the async dispatcher ---


@pytest.mark.anyio
async def test_async_dispatcher_starts_in_the_running_loop(
    make_async: Callable[..., AsyncDispatcher],
) -> None:
    before = worker_threads()
    sender = FakeSender()
    dispatcher = make_async(sender)

    await dispatcher.asubmit(wire(2))

    assert await dispatcher.aflush(timeout=5)
    assert sender.sent_ids == ["event-0", "event-1"]
    assert not worker_threads(besides=before)


@pytest.mark.anyio
async def test_async_dispatcher_writes_a_durable_outbox_off_the_loop(
    sqlite: Callable[..., SQLiteOutbox], make_async: Callable[..., AsyncDispatcher]
) -> None:
    sender = FakeSender()
    outbox = sqlite()
    dispatcher = make_async(sender, outbox)
    loop_thread = threading.get_ident()
    put_many = outbox.put_many
    put_threads: list[int] = []

    # `put` writes through `put_many`, and grouped writes call it directly.
    def recording_put_many(
        batches: Sequence[Sequence[WireEvent]],
        *,
        atomic: bool = False,
        test: bool | None = None,
    ) -> list[int]:
        put_threads.append(threading.get_ident())
        return put_many(batches, atomic=atomic, test=test)

    outbox.put_many = recording_put_many  # type: ignore[method-assign]

    await dispatcher.asubmit(wire(2))

    assert await dispatcher.aflush(timeout=5)
    assert put_threads
    assert loop_thread not in put_threads


def test_async_dispatcher_restarts_in_a_new_loop(
    make_async: Callable[..., AsyncDispatcher],
) -> None:
    """Each request of Starlette's TestClient without `with` runs in a new loop."""
    sender = FakeSender()
    dispatcher = make_async(sender, flush_interval=60)

    async def one_request(start: int) -> None:
        await dispatcher.asubmit(wire(1, start=start))

    asyncio.run(one_request(0))
    asyncio.run(one_request(1))

    assert dispatcher.flush(timeout=5)
    assert sorted(sender.sent_ids) == ["event-0", "event-1"]


def test_async_dispatcher_picks_up_events_from_other_threads(
    make_async: Callable[..., AsyncDispatcher],
) -> None:
    sender = FakeSender()
    dispatcher = make_async(sender)

    async def serve() -> None:
        await dispatcher.asubmit(wire(1))
        await anyio.to_thread.run_sync(dispatcher.submit, wire(1, start=1))
        assert await dispatcher.aflush(timeout=5)

    asyncio.run(serve())

    assert sorted(sender.sent_ids) == ["event-0", "event-1"]


def test_async_dispatcher_starts_from_a_loop_thread_pool(
    make_async: Callable[..., AsyncDispatcher],
) -> None:
    """A sync view in the loop's thread pool starts the worker in that loop."""
    sender = FakeSender()
    dispatcher = make_async(sender)
    loop_threads: list[int] = []

    async def serve() -> None:
        loop_threads.append(threading.get_ident())
        await anyio.to_thread.run_sync(dispatcher.submit, wire(1))
        assert await dispatcher.aflush(timeout=5)

    asyncio.run(serve())

    assert sender.sent_ids == ["event-0"]
    assert dispatcher._worker is not None
    assert dispatcher._worker.thread_id == loop_threads[0]


def test_async_dispatcher_without_a_loop_uses_a_private_thread(
    make_async: Callable[..., AsyncDispatcher],
) -> None:
    before = worker_threads()
    sender = FakeSender()
    dispatcher = make_async(sender)

    dispatcher.submit(wire(1))

    assert dispatcher.flush(timeout=5)
    assert sender.sent_ids == ["event-0"]
    assert worker_threads(besides=before)


def test_async_dispatcher_delivers_in_place_when_no_thread_can_start(
    make_async: Callable[..., AsyncDispatcher], monkeypatch: pytest.MonkeyPatch
) -> None:
    """At interpreter exit (Python 3.12+) no thread starts: flush runs a loop here."""
    sender = FakeSender()
    dispatcher = make_async(sender, flush_interval=60)
    asyncio.run(dispatcher.asubmit(wire(2)))

    def refuse(thread: threading.Thread) -> None:
        raise RuntimeError("can't create new thread at interpreter shutdown")

    monkeypatch.setattr(threading.Thread, "start", refuse)

    assert dispatcher.flush(timeout=5)
    assert sender.sent_ids == ["event-0", "event-1"]


@pytest.mark.anyio
async def test_sync_flush_in_the_workers_loop_is_refused(
    make_async: Callable[..., AsyncDispatcher],
) -> None:
    dispatcher = make_async(FakeSender(), flush_interval=60)
    await dispatcher.asubmit(wire(1))

    with pytest.raises(RuntimeError, match="aflush"):
        dispatcher.flush(timeout=1)


@pytest.mark.anyio
async def test_running_delivers_and_flushes_at_the_end(
    make_async: Callable[..., AsyncDispatcher],
) -> None:
    sender = FakeSender()
    dispatcher = make_async(sender, flush_interval=60)

    async with dispatcher.running():
        await dispatcher.asubmit(wire(2))

    assert sender.sent_ids == ["event-0", "event-1"]
    assert sender.closed


@pytest.mark.anyio
async def test_running_leaves_the_dispatcher_usable(
    make_async: Callable[..., AsyncDispatcher],
) -> None:
    """An app's lifespan may run several times (tests start apps often)."""
    sender = FakeSender()
    dispatcher = make_async(sender)
    async with dispatcher.running():
        pass

    async with dispatcher.running():
        await dispatcher.asubmit(wire(1))

    assert sender.sent_ids == ["event-0"]


@pytest.mark.anyio
async def test_aclose_flushes_and_refuses_later_events(
    make_async: Callable[..., AsyncDispatcher],
) -> None:
    sender = FakeSender()
    dispatcher = make_async(sender, flush_interval=60)
    await dispatcher.asubmit(wire(1))

    await dispatcher.aclose()

    assert sender.sent_ids == ["event-0"]
    assert await dispatcher.asubmit(wire(1)) == 0


@pytest.mark.anyio
async def test_a_cancelled_delivery_hands_its_batch_back(
    make_async: Callable[..., AsyncDispatcher],
) -> None:
    """A loop shutting down mid-request leaves the batch for the next worker."""
    outbox = MemoryOutbox()
    started = threading.Event()

    class HangingSender:
        async def send_batch(
            self, batch: Sequence[WireEvent], *, test: bool | None = None
        ) -> list[EventResult]:
            started.set()
            await anyio.sleep_forever()
            raise AssertionError  # pragma: no cover - never reached

        async def aclose(self) -> None:
            pass

    dispatcher = AsyncDispatcher(outbox, HangingSender, flush_interval=0.01)
    await dispatcher.asubmit(wire(1))
    await anyio.to_thread.run_sync(started.wait, 5)
    worker = dispatcher._worker
    assert worker is not None
    assert worker.task is not None

    worker.task.cancel()
    await asyncio.wait([worker.task], timeout=5)

    assert outbox.stats().pending == 1
    dispatcher._closing.stop()


@pytest.mark.anyio
async def test_a_claim_cancelled_midway_is_handed_back(
    sqlite: Callable[..., SQLiteOutbox],
) -> None:
    """The claim finishes in its thread; its events are due again at once."""
    outbox = sqlite()
    entered, gate, released = threading.Event(), threading.Event(), threading.Event()
    claim, release = outbox.claim, outbox.release

    def slow_claim(limit: int, *, lease: float) -> Any:
        entered.set()
        gate.wait(10)
        return claim(limit, lease=lease)

    def recording_release(taken: Any, keys: Any) -> None:
        release(taken, keys)
        released.set()

    outbox.claim = slow_claim  # type: ignore[method-assign]
    outbox.release = recording_release  # type: ignore[method-assign, assignment]
    dispatcher = AsyncDispatcher(
        outbox, lambda: AsyncFakeSender(FakeSender()), flush_interval=0.01
    )
    await dispatcher.asubmit(wire(1))
    assert await anyio.to_thread.run_sync(entered.wait, 5)
    worker = dispatcher._worker
    assert worker is not None
    assert worker.task is not None

    worker.task.cancel()
    await asyncio.wait([worker.task], timeout=5)
    dispatcher._closing.stop()
    gate.set()

    assert await anyio.to_thread.run_sync(released.wait, 5)
    stats = outbox.stats()
    assert (stats.pending, stats.in_flight) == (1, 0)


# --- test mode ---


@pytest.mark.parametrize("mode", [True, False, None])
def test_events_are_stored_in_the_dispatchers_test_mode(
    make_thread: Callable[..., ThreadDispatcher], mode: bool | None
) -> None:
    outbox = MemoryOutbox()
    dispatcher = make_thread(None, outbox, test_mode=mode)

    dispatcher.submit(wire(1))

    claim = outbox.claim(10, lease=60)
    assert claim is not None
    assert claim.test is mode


@pytest.mark.anyio
async def test_grouped_writes_store_the_dispatchers_test_mode(
    sqlite: Callable[..., SQLiteOutbox],
) -> None:
    outbox = sqlite()
    dispatcher = AsyncDispatcher(outbox, None, test_mode=True)

    await dispatcher.asubmit(wire(1))

    claim = outbox.claim(10, lease=60)
    assert claim is not None
    assert claim.test is True
    await dispatcher.aclose()


def _stored_in_both_modes() -> MemoryOutbox:
    outbox = MemoryOutbox()
    outbox.put(wire(2), test=True)
    outbox.put(wire(1, start=2), test=False)
    return outbox


def test_each_batch_goes_out_in_the_mode_its_events_were_stored_in(
    make_thread: Callable[..., ThreadDispatcher],
) -> None:
    """Whatever the mode of the dispatcher sending them."""
    sender = FakeSender()
    dispatcher = make_thread(sender, _stored_in_both_modes(), test_mode=False)

    assert dispatcher.flush(timeout=5)
    assert list(zip(sender.batches, sender.modes, strict=True)) == [
        (["event-0", "event-1"], True),
        (["event-2"], False),
    ]


@pytest.mark.anyio
async def test_the_async_dispatcher_sends_each_batch_in_its_mode(
    make_async: Callable[..., AsyncDispatcher],
) -> None:
    sender = FakeSender()
    dispatcher = make_async(sender, _stored_in_both_modes(), test_mode=True)

    dispatcher.start()

    assert await dispatcher.aflush(timeout=5)
    assert sender.modes == [True, False]


# --- stopping ---


@pytest.mark.anyio
async def test_aclose_after_running_starts_no_new_worker(
    make_async: Callable[..., AsyncDispatcher],
) -> None:
    """Shutdown after a lifespan ended: no worker starts to claim what is left."""
    sender = FakeSender()
    outbox = MemoryOutbox()
    dispatcher = make_async(sender, outbox, flush_interval=60)
    async with dispatcher.running():
        pass
    outbox.put(wire(2))

    await dispatcher.aclose(timeout=1)

    assert sender.batches == []
    assert dispatcher.counters.dropped == 2


@pytest.mark.anyio
async def test_a_stopping_async_worker_claims_no_further_batch() -> None:
    entered, release = anyio.Event(), anyio.Event()
    fake = FakeSender()

    class HeldSender(AsyncFakeSender):
        async def send_batch(
            self, batch: Sequence[WireEvent], *, test: bool | None = None
        ) -> list[EventResult]:
            entered.set()
            await release.wait()
            return self.fake.answer(batch, test)

    dispatcher = AsyncDispatcher(
        MemoryOutbox(), lambda: HeldSender(fake), batch_size=1, flush_interval=0.01
    )
    await dispatcher.asubmit(wire(3))
    with anyio.fail_after(5):
        await entered.wait()

    worker = dispatcher._stop_worker()  # as `running()` does at its end
    release.set()
    assert worker is not None
    assert worker.task is not None
    await asyncio.wait([worker.task], timeout=5)

    assert fake.batches == [["event-0"]]
    await dispatcher.aclose(timeout=0)


def test_a_closing_thread_worker_claims_no_further_batch(
    sqlite: Callable[..., SQLiteOutbox],
    make_thread: Callable[..., ThreadDispatcher],
) -> None:
    """Its batch in flight is settled; the rest stays in the durable outbox."""
    sender = BlockingSender()
    outbox = sqlite()
    dispatcher = make_thread(sender, outbox, batch_size=2, flush_interval=3600)
    dispatcher.submit(wire(5))
    assert sender.entered.wait(5)
    thread = dispatcher._thread
    assert thread is not None

    dispatcher.close(timeout=0)
    sender.release.set()
    thread.join(10)

    assert sender.batches == [["event-0", "event-1"]]
    assert outbox.depth() == 3


def test_what_waits_for_an_end_runs_once_then_and_at_once_after() -> None:
    """The helper both dispatchers run what waits for their worker with."""
    end = _WhenDone()
    ran: list[str] = []
    end.add(lambda: ran.append("before"))

    end.finish()
    end.add(lambda: ran.append("after"))

    assert ran == ["before", "after"]
    assert end.wait(0)


@pytest.mark.parametrize("kind", ["thread", "async"])
def test_what_waits_for_the_worker_runs_as_it_ends(
    make_thread: Callable[..., ThreadDispatcher],
    make_async: Callable[..., AsyncDispatcher],
    kind: str,
) -> None:
    """Not before: the worker is still waiting for Pinterest's answer."""
    sender = HeldAnswerSender()
    make = make_thread if kind == "thread" else make_async
    dispatcher = make(sender, flush_interval=3600)
    dispatcher.submit(wire(1))
    dispatcher.start()
    assert sender.entered.wait(5)
    ended = threading.Event()
    dispatcher.close(timeout=0)

    dispatcher._after_worker(ended.set)

    ran_early = ended.is_set()
    sender.release.set()
    assert ended.wait(10)
    assert not ran_early


# --- at SIGTERM ---


def test_at_sigterm_a_thread_dispatcher_delivers_and_closes(
    make_thread: Callable[..., ThreadDispatcher],
) -> None:
    sender = FakeSender()
    dispatcher = make_thread(sender, flush_interval=3600)
    dispatcher.submit(wire(2))

    dispatcher._deliver_at_signal(time.monotonic() + 5, closing=True)

    assert sender.sent_ids == ["event-0", "event-1"]
    assert dispatcher.submit(wire(1)) == 0


def test_after_a_sigterm_the_server_survives_each_event_is_sent_at_once(
    make_thread: Callable[..., ThreadDispatcher],
) -> None:
    """Its graceful shutdown may end the process any moment."""
    sender = FakeSender()
    dispatcher = make_thread(sender, flush_interval=3600)
    dispatcher._deliver_at_signal(time.monotonic() + 5, closing=False)

    dispatcher.submit(wire(1))

    assert sender.wait_for_batches(1)
    assert sender.sent_ids == ["event-0"]


@pytest.mark.anyio
async def test_at_sigterm_an_async_dispatcher_sends_with_a_loop_of_its_own(
    make_async: Callable[..., AsyncDispatcher],
) -> None:
    """Without a blocking transport: its async sender, in a private loop."""
    sender = FakeSender()
    dispatcher = make_async(sender, flush_interval=3600)
    await dispatcher.asubmit(wire(2))
    deadline = time.monotonic() + 5

    await anyio.to_thread.run_sync(
        functools.partial(dispatcher._deliver_at_signal, deadline, closing=False)
    )

    assert sender.sent_ids == ["event-0", "event-1"]


@pytest.mark.anyio
async def test_at_sigterm_the_batch_of_a_frozen_loop_is_sent_again() -> None:
    """The handler blocks the loop, whose request will never be answered."""
    entered, release = anyio.Event(), anyio.Event()

    class HeldSender(AsyncFakeSender):
        async def send_batch(
            self, batch: Sequence[WireEvent], *, test: bool | None = None
        ) -> list[EventResult]:
            entered.set()
            await release.wait()
            return self.fake.answer(batch, test)

    blocking = FakeSender()
    dispatcher = AsyncDispatcher(
        MemoryOutbox(),
        lambda: HeldSender(FakeSender()),
        blocking_transport=lambda seconds: blocking,
        batch_size=2,
        flush_interval=0.01,
    )
    await dispatcher.asubmit(wire(3))
    with anyio.fail_after(5):
        await entered.wait()
    helper = threading.Thread(
        target=dispatcher._deliver_at_signal,
        args=(time.monotonic() + 5,),
        kwargs={"closing": True},
    )

    helper.start()
    helper.join(10)  # in the loop's thread, as a signal handler waits

    assert sorted(blocking.sent_ids) == ["event-0", "event-1", "event-2"]
    assert dispatcher._closed
    release.set()
    worker = dispatcher._worker
    assert worker is not None
    assert worker.task is not None
    await asyncio.wait([worker.task], timeout=5)


class StuckOnceStopped(MemoryOutbox):
    """A memory outbox whose depth, read by the SIGTERM delivery's thread once
    the dispatcher stopped, waits for `release`: a delivery that got stuck
    counting what is left. `stuck` is set when it does."""

    def __init__(self) -> None:
        super().__init__()
        self.dispatcher: ThreadDispatcher | AsyncDispatcher | None = None
        self.stuck = threading.Event()
        self.release = threading.Event()

    def depth(self) -> int:
        stopped = self.dispatcher is not None and self.dispatcher._closed
        if stopped and threading.current_thread().name == "sigterm-delivery":
            self.stuck.set()
            self.release.wait(30)
        return super().depth()


@pytest.mark.parametrize("kind", ["thread", "async"])
def test_closing_at_sigterm_only_the_handler_counts_what_is_left(
    make_thread: Callable[..., ThreadDispatcher],
    make_async: Callable[..., AsyncDispatcher],
    caplog: pytest.LogCaptureFixture,
    kind: str,
) -> None:
    """The delivery only delivers and stops: were it to count, and get stuck
    doing so, the handler would find the count taken and return with nothing
    counted, and the process would end."""
    outbox = StuckOnceStopped()
    make = make_thread if kind == "thread" else make_async
    # Pinterest is down; the retry is due after the SIGTERM deadline.
    dispatcher = make(
        FakeSender(TransportError("down")),
        outbox,
        flush_interval=0.01,
        backoff=DeliveryBackoff(initial=60, maximum=60, jitter=0),
    )
    outbox.dispatcher = dispatcher
    dispatcher.submit(wire(3))
    deadline = time.monotonic() + 30
    while dispatcher.counters.retried < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert dispatcher.counters.retried == 3
    delivery = threading.Thread(
        target=dispatcher._deliver_at_signal,
        args=(time.monotonic() + 30,),
        kwargs={"closing": True},
        name="sigterm-delivery",
        daemon=True,
    )

    delivery.start()
    # Until the delivery ended, or got stuck counting.
    while delivery.is_alive() and not outbox.stuck.is_set():
        delivery.join(0.01)
    dispatcher._after_signal_delivery(closing=True)

    dropped = dispatcher.counters.dropped
    outbox.release.set()
    assert dropped == 3
    assert CLOSED_LOST_LOG % (3, 0) in caplog.messages


class InterruptedOutbox(MemoryOutbox):
    """A memory outbox that runs `interrupt` in the middle of the first write
    of a batch's outcome, as a SIGTERM handler interrupting it would."""

    def __init__(self) -> None:
        super().__init__()
        self.interrupt: Callable[[], None] = lambda: None
        self.interrupted = threading.Event()

    def complete(self, claim: Claim, keys: Any) -> None:
        if not self.interrupted.is_set():
            self.interrupt()
            self.interrupted.set()
        super().complete(claim, keys)


def test_a_sigterm_handler_interrupting_a_settle_counts_its_batch_once(
    make_thread: Callable[..., ThreadDispatcher], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The batch was counted processed, not yet taken out of the outbox: the
    handler, in the same thread, must not count it dropped too."""
    monkeypatch.setattr("pinterest_mw.dispatch._SIGNAL_WAIT", 0.05)
    outbox = InterruptedOutbox()
    dispatcher = make_thread(FakeSender(), outbox, flush_interval=0.01)
    outbox.interrupt = lambda: dispatcher._after_signal_delivery(closing=True)

    dispatcher.submit(wire(3))

    assert outbox.interrupted.wait(5)
    counters = dispatcher.counters
    assert (counters.processed, counters.dropped) == (3, 0)


# --- closing while other threads submit, flush or close ---


class HeldPutOutbox(MemoryOutbox):
    """A memory outbox whose next `put` waits, once it began, for `release`."""

    def __init__(self) -> None:
        super().__init__()
        self.hold = True
        self.entered = threading.Event()
        self.release = threading.Event()

    def put(
        self,
        events: Sequence[WireEvent],
        *,
        atomic: bool = False,
        test: bool | None = None,
    ) -> int:
        if self.hold:
            self.hold = False
            self.entered.set()
            self.release.wait(10)
        return super().put(events, atomic=atomic, test=test)


def test_an_event_stored_while_close_counts_the_leftovers_is_counted(
    make_thread: Callable[..., ThreadDispatcher], monkeypatch: pytest.MonkeyPatch
) -> None:
    """close() waits for a store under way, so its event is in the count."""
    monkeypatch.setattr("pinterest_mw.dispatch._GATE_WAIT", 30.0)
    outbox = HeldPutOutbox()
    dispatcher = make_thread(FakeSender(), outbox, flush_interval=3600)
    submitting = threading.Thread(target=dispatcher.submit, args=(wire(1),))
    submitting.start()
    assert outbox.entered.wait(5)
    closing = threading.Thread(target=dispatcher.close, args=(0,))

    closing.start()
    while not dispatcher._closed:
        time.sleep(0.001)
    outbox.release.set()
    submitting.join(10)
    closing.join(10)

    counters = dispatcher.counters
    assert (counters.accepted, counters.dropped) == (1, 1)


def test_an_event_stored_after_the_leftovers_were_counted_is_refused(
    make_thread: Callable[..., ThreadDispatcher], caplog: pytest.LogCaptureFixture
) -> None:
    dispatcher = make_thread(FakeSender(), flush_interval=3600)
    dispatcher._account_leftovers()

    accepted = dispatcher.submit(wire(1))

    counters = dispatcher.counters
    assert (accepted, counters.accepted, counters.dropped) == (0, 0, 1)
    assert DROPPED_LOG % (1, CLOSED_REASON, "drop_newest") in caplog.messages


class HeldAnswerSender(FakeSender):
    """Holds each answer until `release` is set, for both dispatchers."""

    def __init__(self) -> None:
        super().__init__()
        self.entered = threading.Event()
        self.release = threading.Event()

    def answer(
        self, batch: Sequence[WireEvent], test: bool | None = None
    ) -> list[EventResult]:
        self.entered.set()
        self.release.wait(10)
        return super().answer(batch, test)


@pytest.mark.parametrize("kind", ["thread", "async"])
def test_concurrent_closes_count_the_leftovers_once(
    make_thread: Callable[..., ThreadDispatcher],
    make_async: Callable[..., AsyncDispatcher],
    caplog: pytest.LogCaptureFixture,
    kind: str,
) -> None:
    sender = HeldAnswerSender()
    make = make_thread if kind == "thread" else make_async
    dispatcher = make(sender, flush_interval=3600)
    dispatcher.submit(wire(3))
    dispatcher.start()
    assert sender.entered.wait(5)
    closes = [threading.Thread(target=dispatcher.close, args=(0.2,)) for _ in "ab"]

    for close in closes:
        close.start()
    for close in closes:
        close.join(10)
    sender.release.set()

    lost = [r for r in caplog.records if r.msg == CLOSED_LOST_LOG]
    assert (dispatcher.counters.dropped, len(lost)) == (3, 1)


class HeldDepthOutbox(MemoryOutbox):
    """A memory outbox whose depth, read once the dispatcher stopped, waits
    for `release` (once): a close() slow to count what is left."""

    def __init__(self) -> None:
        super().__init__()
        self.dispatcher: ThreadDispatcher | AsyncDispatcher | None = None
        self.entered = threading.Event()
        self.release = threading.Event()

    def depth(self) -> int:
        stopped = self.dispatcher is not None and self.dispatcher._closed
        if stopped and not self.entered.is_set():
            self.entered.set()
            self.release.wait(30)
        return super().depth()


@pytest.mark.parametrize("kind", ["thread", "async"])
def test_a_later_close_waits_for_the_first_to_end(
    make_thread: Callable[..., ThreadDispatcher],
    make_async: Callable[..., AsyncDispatcher],
    monkeypatch: pytest.MonkeyPatch,
    kind: str,
) -> None:
    monkeypatch.setattr("pinterest_mw.dispatch._LATER_CLOSE_WAIT", 60.0)
    outbox = HeldDepthOutbox()
    make = make_thread if kind == "thread" else make_async
    dispatcher = make(FakeSender(), outbox, flush_interval=3600)
    outbox.dispatcher = dispatcher
    dispatcher.submit(wire(1))
    first = threading.Thread(target=dispatcher.close, args=(0,), daemon=True)
    first.start()
    assert outbox.entered.wait(5)
    later = threading.Thread(target=dispatcher.close, args=(0,), daemon=True)

    later.start()
    later.join(0.5)
    waited = later.is_alive()
    outbox.release.set()
    first.join(30)
    later.join(30)

    assert waited
    assert not later.is_alive()
    assert dispatcher.counters.dropped == 1


@pytest.mark.parametrize("kind", ["thread", "async"])
def test_a_flush_in_another_thread_returns_once_the_dispatcher_is_closed(
    make_thread: Callable[..., ThreadDispatcher],
    make_async: Callable[..., AsyncDispatcher],
    kind: str,
) -> None:
    sender = HeldAnswerSender()
    make = make_thread if kind == "thread" else make_async
    dispatcher = make(sender, flush_interval=3600)
    dispatcher.submit(wire(1))
    results: list[bool] = []
    flushing = threading.Thread(target=lambda: results.append(dispatcher.flush(60)))
    flushing.start()
    assert sender.entered.wait(5)

    dispatcher.close(timeout=0)
    flushing.join(30)
    sender.release.set()

    assert results == [False]


# --- an outbox that fails ---


def test_a_storage_failure_under_the_raise_policy_raises(
    sqlite: Callable[..., SQLiteOutbox],
    make_thread: Callable[..., ThreadDispatcher],
) -> None:
    outbox = sqlite()

    def broken_put(events: Sequence[WireEvent], **options: Any) -> int:
        raise sqlite3.OperationalError("database is locked")

    outbox.put = broken_put  # type: ignore[method-assign]
    dispatcher = make_thread(None, outbox, overflow="raise")

    with pytest.raises(OutboxError) as raised:
        dispatcher.submit(wire(1))

    assert isinstance(raised.value, QueueFullError)
    assert isinstance(raised.value.__cause__, sqlite3.OperationalError)
    counters = dispatcher.counters
    assert (counters.dropped, counters.outbox_errors) == (1, 1)


class UnreadableOutbox(MemoryOutbox):
    """Stores events, but claims fail while `readable` is False, as a damaged
    file's do."""

    def __init__(self) -> None:
        super().__init__()
        self.readable = False

    def claim(self, limit: int, *, lease: float) -> Claim | None:
        if not self.readable:
            raise sqlite3.DatabaseError("database disk image is malformed")
        return super().claim(limit, lease=lease)


def test_an_unreadable_outbox_is_logged_once_per_interval_and_paused(
    make_thread: Callable[..., ThreadDispatcher], caplog: pytest.LogCaptureFixture
) -> None:
    """Each failed claim pauses claiming for a growing backoff, and counts."""
    dispatcher = make_thread(FakeSender(), UnreadableOutbox(), flush_interval=0.001)
    dispatcher.submit(wire(1))

    while dispatcher.counters.outbox_errors < 3:
        time.sleep(0.001)

    failures = [r for r in caplog.records if r.msg == CLAIM_FAILED_LOG]
    assert len(failures) == 1
    assert failures[0].exc_info is not None
    assert dispatcher._delivery_problem == OUTBOX_UNREADABLE


def test_an_outbox_readable_again_is_delivered_from(
    make_thread: Callable[..., ThreadDispatcher],
) -> None:
    outbox = UnreadableOutbox()
    sender = FakeSender()
    dispatcher = make_thread(sender, outbox, flush_interval=0.001)
    dispatcher.submit(wire(1))
    while not dispatcher.counters.outbox_errors:
        time.sleep(0.001)

    outbox.readable = True

    assert dispatcher.flush(10)
    assert dispatcher._delivery_problem is None
    assert sender.sent_ids == ["event-0"]
