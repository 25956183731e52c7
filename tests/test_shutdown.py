"""The SIGTERM hook: installed once where it can be, and delivering before the end.

The hook's choices are tested in this process, with the SIGTERM handler
restored after each test; what it does at a real SIGTERM is tested with
real processes against the fake Pinterest API served on 127.0.0.1.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import FrameType

import httpx
import pytest

from pinterest_mw import _shutdown
from pinterest_mw.client import Client
from pinterest_mw.dispatch import (
    CLOSED_LOST_LOG,
    SIGNAL_UNDELIVERED_LOG,
    AsyncDispatcher,
    ThreadDispatcher,
)
from pinterest_mw.events import WireEvent
from pinterest_mw.outbox import MemoryOutbox
from pinterest_mw.testing import (
    FAKE_ACCESS_TOKEN,
    FAKE_AD_ACCOUNT_ID,
    FakePinterestAPI,
    serve_fake_api,
)
from pinterest_mw.transport import EventResult, EventStatus

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="POSIX signals")

HERE = Path(__file__).parent
HELPER = HERE / "outbox_process.py"
STARTUP_TIMEOUT = 30.0


@pytest.fixture
def sigterm(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A hook not installed yet, no open dispatcher; the handler restored after."""
    previous = signal.getsignal(signal.SIGTERM)
    monkeypatch.setattr(_shutdown, "_sigterm_installed", False)
    monkeypatch.setattr(_shutdown, "_open", weakref.WeakSet())
    yield
    signal.signal(signal.SIGTERM, previous)


class RecordingSender:
    """A transport that processes everything and records the event ids."""

    def __init__(self) -> None:
        self.sent: list[str] = []

    def send_batch(
        self, batch: Sequence[WireEvent], *, test: bool | None = None
    ) -> list[EventResult]:
        self.sent.extend(event.event_id for event in batch)
        return [
            EventResult(index, event.event_id, event.event_name, EventStatus.PROCESSED)
            for index, event in enumerate(batch)
        ]

    def close(self) -> None:
        pass


def test_the_hook_goes_over_the_default_action(sigterm: None) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)

    _shutdown.watch_sigterm()

    assert signal.getsignal(signal.SIGTERM) is _shutdown._deliver_then_die


def test_over_a_python_handler_the_hook_calls_it_then_delivers(
    sigterm: None,
) -> None:
    """The server's handler first (uvicorn starts its graceful shutdown)."""
    order: list[str] = []
    sender = RecordingSender()

    def server_handler(signum: int, frame: FrameType | None) -> None:
        order.append(f"server saw {len(sender.sent)} sent")

    signal.signal(signal.SIGTERM, server_handler)
    _shutdown.watch_sigterm()
    dispatcher = ThreadDispatcher(MemoryOutbox(), lambda: sender, flush_interval=3600)
    dispatcher.submit(
        [WireEvent("a", "checkout", b"{}"), WireEvent("b", "lead", b"{}")]
    )
    hook = signal.getsignal(signal.SIGTERM)
    assert callable(hook)

    hook(signal.SIGTERM, None)

    assert order == ["server saw 0 sent"]
    assert sender.sent == ["a", "b"]
    dispatcher.close(timeout=1)


def test_nothing_is_installed_over_an_ignored_signal(sigterm: None) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)

    _shutdown.watch_sigterm()

    assert signal.getsignal(signal.SIGTERM) is signal.SIG_IGN


def test_nothing_is_installed_from_another_thread(sigterm: None) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)

    thread = threading.Thread(target=_shutdown.watch_sigterm)
    thread.start()
    thread.join()

    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL


def test_the_hook_is_installed_once(sigterm: None) -> None:
    """A handler set later by other code is left in place."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    _shutdown.watch_sigterm()

    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    _shutdown.watch_sigterm()

    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL


def test_a_sending_client_in_memory_installs_the_hook(sigterm: None) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)

    Client(FAKE_ACCESS_TOKEN, FAKE_AD_ACCOUNT_ID).close()

    assert signal.getsignal(signal.SIGTERM) is _shutdown._deliver_then_die


def test_a_client_with_a_durable_outbox_installs_no_hook(
    sigterm: None, tmp_path: Path
) -> None:
    """Its events survive the process: the next one sends them."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    client = Client(
        FAKE_ACCESS_TOKEN, FAKE_AD_ACCOUNT_ID, outbox=tmp_path / "outbox.sqlite3"
    )

    client.track({"event_name": "checkout", "user_data": {"email": "a@b.co"}})
    client.close(timeout=0)

    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL


# --- real processes ---


@pytest.fixture
def fake_api() -> Iterator[tuple[FakePinterestAPI, str]]:
    fake = FakePinterestAPI()
    with serve_fake_api(fake) as url:
        yield fake, url


def _environment(api_url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PINTEREST_")}
    return {
        **env,
        "PYTHONPATH": str(HERE.parent),
        "PINTEREST_ACCESS_TOKEN": FAKE_ACCESS_TOKEN,
        "PINTEREST_AD_ACCOUNT_ID": FAKE_AD_ACCOUNT_ID,
        "PINTEREST_API_URL": api_url,
    }


def _delivered(fake: FakePinterestAPI) -> list[str]:
    return sorted(event["event_id"] for event in fake.events)


@pytest.mark.e2e
def test_sigterm_delivers_what_a_script_queued_and_still_ends_it(
    fake_api: tuple[FakePinterestAPI, str], tmp_path: Path
) -> None:
    """Python's default action: no atexit; the hook sends, then re-raises."""
    fake, url = fake_api
    process = subprocess.Popen(
        [sys.executable, str(HELPER), "sigterm", url, "3"],
        stdout=subprocess.PIPE,
        text=True,
        env=_environment(url),
        cwd=tmp_path,
    )
    assert process.stdout is not None
    accepted = [line.strip() for line in iter(process.stdout.readline, "accepted\n")]

    process.send_signal(signal.SIGTERM)
    status = process.wait(timeout=STARTUP_TIMEOUT)
    process.stdout.close()

    assert status == -signal.SIGTERM
    assert _delivered(fake) == sorted(accepted)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def _uvicorn_imports_the_app(port: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "uvicorn",
        "sigterm_app:app",
        "--app-dir",
        str(HERE),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--log-level",
        "warning",
    ]


def _script_runs_uvicorn(port: int) -> list[str]:
    return [sys.executable, str(HERE / "sigterm_app.py"), str(port)]


def _wait_until_serving(url: str, process: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while True:
        try:
            if httpx.get(f"{url}/pinterest/health", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            assert process.poll() is None, "the server ended at start-up"
            assert time.monotonic() < deadline, "the server did not start"
            time.sleep(0.05)


@pytest.mark.e2e
@pytest.mark.parametrize(
    "command",
    [_uvicorn_imports_the_app, _script_runs_uvicorn],
    ids=["uvicorn-app", "script-runs-uvicorn"],
)
def test_sigterm_under_uvicorn_delivers_what_a_mounted_sub_app_queued(
    fake_api: tuple[FakePinterestAPI, str],
    tmp_path: Path,
    command: Callable[[int], list[str]],
) -> None:
    """No lifespan: uvicorn re-raises SIGTERM after its graceful shutdown."""
    fake, api_url = fake_api
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    process = subprocess.Popen(
        command(port), env=_environment(api_url), cwd=tmp_path, text=True
    )
    try:
        _wait_until_serving(url, process)
        answers = [
            httpx.post(
                f"{url}/pinterest/track-event",
                json={"event_name": "checkout", "user_data": {"email": email}},
                timeout=10,
            )
            for email in ("ann@example.com", "bob@example.com")
        ]
        assert [answer.status_code for answer in answers] == [202, 202]
        assert fake.events == []

        process.send_signal(signal.SIGTERM)
        status = process.wait(timeout=STARTUP_TIMEOUT)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=STARTUP_TIMEOUT)

    accepted = sorted(i for answer in answers for i in answer.json()["event_ids"])
    assert status == -signal.SIGTERM
    assert _delivered(fake) == accepted


# --- when delivery cannot finish by the deadline ---


class StuckSender(RecordingSender):
    """A blocking sender whose requests wait until `release` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()

    def send_batch(
        self, batch: Sequence[WireEvent], *, test: bool | None = None
    ) -> list[EventResult]:
        self.release.wait(30)
        return super().send_batch(batch, test=test)


class IdleAsyncSender:
    """The worker's async sender; the tests below never let it send."""

    async def send_batch(
        self, batch: Sequence[WireEvent], *, test: bool | None = None
    ) -> list[EventResult]:
        raise AssertionError("the worker was not to send")

    async def aclose(self) -> None:
        pass


def _stuck_at_signal(stuck: StuckSender) -> AsyncDispatcher:
    """A dispatcher holding two events whose SIGTERM delivery never ends."""
    dispatcher = AsyncDispatcher(
        MemoryOutbox(),
        IdleAsyncSender,
        blocking_transport=lambda seconds: stuck,
        flush_interval=3600,
        shutdown_timeout=0.2,
    )
    dispatcher.submit(
        [WireEvent("a", "checkout", b"{}"), WireEvent("b", "lead", b"{}")]
    )
    return dispatcher


def test_closing_at_sigterm_counts_what_a_stuck_delivery_left_by_the_deadline(
    sigterm: None, caplog: pytest.LogCaptureFixture
) -> None:
    """The handler's thread counts and logs them, the process may end next."""
    stuck = StuckSender()
    dispatcher = _stuck_at_signal(stuck)

    _shutdown._deliver_all(closing=True)

    dropped = dispatcher.counters.dropped
    stuck.release.set()
    assert dropped == 2
    assert CLOSED_LOST_LOG % (2, 2) in caplog.messages


def test_over_a_server_handler_what_a_stuck_delivery_left_is_logged(
    sigterm: None, caplog: pytest.LogCaptureFixture
) -> None:
    """Not counted: the server goes on, and may still deliver them."""
    stuck = StuckSender()
    dispatcher = _stuck_at_signal(stuck)

    _shutdown._deliver_all(closing=False)

    dropped = dispatcher.counters.dropped
    stuck.release.set()
    assert dropped == 0
    assert SIGNAL_UNDELIVERED_LOG % (2, 0.2) in caplog.messages
    dispatcher.close(timeout=1)


@pytest.fixture
def stalled_api() -> Iterator[tuple[str, threading.Event]]:
    """An API that takes connections and never answers: Pinterest stalled.

    Yields its URL and an event set at its first connection.
    """
    server = socket.create_server(("127.0.0.1", 0))
    reached = threading.Event()
    held: list[socket.socket] = []

    def accept() -> None:
        while True:
            try:
                connection, _ = server.accept()
            except OSError:
                return
            held.append(connection)
            reached.set()

    threading.Thread(target=accept, daemon=True).start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}", reached
    server.close()
    for connection in held:
        connection.close()


def test_the_sigterm_delivery_of_an_async_dispatcher_ends_by_its_deadline(
    stalled_api: tuple[str, threading.Event],
) -> None:
    """Its transport's timeout and retry budget are cut to the time left."""
    url, _ = stalled_api
    client = Client(
        FAKE_ACCESS_TOKEN,
        FAKE_AD_ACCOUNT_ID,
        api_url=url,
        dispatcher="async",
        flush_interval=3600,
        timeout=30,
    )
    client.track({"event_name": "checkout", "user_data": {"email": "a@b.co"}})
    dispatcher = client._get_dispatcher()
    helper = threading.Thread(
        target=dispatcher._deliver_at_signal,
        args=(time.monotonic() + 1,),
        kwargs={"closing": False},
        daemon=True,
    )

    helper.start()
    helper.join(20)

    assert not helper.is_alive()
    assert (dispatcher.counters.retried, client.outbox.depth()) == (1, 1)
    client.close(timeout=0)


@pytest.mark.e2e
@pytest.mark.parametrize("kind", ["thread", "async"])
def test_sigterm_while_pinterest_stalls_logs_and_counts_the_loss(
    stalled_api: tuple[str, threading.Event], tmp_path: Path, kind: str
) -> None:
    """The process still ends by SIGTERM, one ERROR line saying what was lost."""
    url, reached = stalled_api
    process = subprocess.Popen(
        [sys.executable, str(HELPER), "stall", url, "3", kind],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_environment(url),
        cwd=tmp_path,
    )
    try:
        assert process.stdout is not None
        while process.stdout.readline() not in ("accepted\n", ""):
            pass
        assert reached.wait(STARTUP_TIMEOUT)

        process.send_signal(signal.SIGTERM)
        _, errors = process.communicate(timeout=STARTUP_TIMEOUT)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=STARTUP_TIMEOUT)

    assert process.returncode == -signal.SIGTERM
    assert "closing with 3 events not delivered" in errors
