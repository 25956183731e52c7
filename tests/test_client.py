"""The client: configuration, tracking, the embedded default, delivery end to end."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.exceptions import StarletteDeprecationWarning
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from pinterest_mw.client import (
    DEFAULT_OUTBOX_PATH,
    KEPT_OUTBOX_MESSAGE,
    NOT_SENDING_MESSAGE,
    TEST_SEND_WITHIN,
    Client,
    get_default_client,
    lifespan,
    set_default_client,
)
from pinterest_mw.context import RequestContext, use_context
from pinterest_mw.dispatch import (
    AsyncDispatcher,
    DeliveryBackoff,
    DeliveryFailure,
    ThreadDispatcher,
)
from pinterest_mw.events import Event, build_event
from pinterest_mw.exceptions import (
    ConfigurationError,
    EventValidationError,
    OutboxError,
    QueueFullError,
)
from pinterest_mw.hashing import sha256_hex
from pinterest_mw.outbox import MemoryOutbox, OutboxStats, SQLiteOutbox
from pinterest_mw.testing import (
    FAKE_ACCESS_TOKEN,
    FAKE_AD_ACCOUNT_ID,
    FakePinterestAPI,
    serve_fake_api,
)
from pinterest_mw.transport import RetryPolicy

with warnings.catch_warnings():
    # Starlette 1.10 asks for httpx2 under its TestClient; httpx still works.
    warnings.simplefilter("ignore", StarletteDeprecationWarning)
    from starlette.testclient import TestClient

HELPER = Path(__file__).with_name("outbox_process.py")
EMAIL = "Buyer@Example.com"
FAST = {
    "flush_interval": 0.02,
    "retry": RetryPolicy(attempts=1),
    "backoff": DeliveryBackoff(initial=0.02, maximum=0.1, jitter=0),
    "shutdown_timeout": 5.0,
}
# Where the in-process fake (pytest-httpx) is reached: no socket is opened.
MOCK_URL = "https://pinterest.example"


def event_data(email: str = EMAIL, **changes: Any) -> dict[str, Any]:
    return {
        "event_name": "checkout",
        "action_source": "web",
        "user_data": {"email": email},
        **changes,
    }


def delivered_ids(fake: FakePinterestAPI) -> list[str]:
    return sorted(event["event_id"] for event in fake.events)


@pytest.fixture
def clients() -> Iterator[list[Client]]:
    made: list[Client] = []
    yield made
    for client in made:
        client.close(timeout=1)


@pytest.fixture
def make_client(fake_pinterest: FakePinterestAPI) -> Iterator[Callable[..., Client]]:
    """A sending client in front of the in-process fake, closed after the test.

    Closed before the fake goes away, so that no request leaves the process.
    """
    made: list[Client] = []

    def make(**options: Any) -> Client:
        client = Client(
            FAKE_ACCESS_TOKEN,
            FAKE_AD_ACCOUNT_ID,
            api_url=MOCK_URL,
            **{**FAST, **options},
        )
        made.append(client)
        return client

    yield make
    for client in made:
        client.close(timeout=1)


@pytest.fixture
def served_fake() -> Iterator[tuple[FakePinterestAPI, str]]:
    """The fake served by uvicorn on 127.0.0.1, for other processes to reach."""
    fake = FakePinterestAPI()
    with serve_fake_api(fake) as url:
        yield fake, url


@pytest.fixture
def no_default_client() -> Iterator[None]:
    set_default_client(None)
    yield
    set_default_client(None)


# --- configuration ---


@pytest.mark.parametrize(
    "options",
    [
        {"ad_account_id": "12ab"},
        {"ad_account_id": "1" * 19},
        {"access_token": "has space"},
        {"api_url": "ftp://pinterest.example"},
        {"batch_size": 0},
        {"batch_size": 1001},
        {"flush_interval": -1},
        {"overflow": "drop_oldest"},
        {"dispatcher": "process"},
        {"default_region": "Narnia"},
        {"advertiser_ids": ["not-digits"]},
        {"max_queue_size": 0},
        {"max_attempts": 0},
        {"outbox": 42},
    ],
)
def test_unusable_options_are_refused_at_construction(
    options: dict[str, Any], tmp_path: Path
) -> None:
    base: dict[str, Any] = {
        "access_token": FAKE_ACCESS_TOKEN,
        "ad_account_id": FAKE_AD_ACCOUNT_ID,
    }
    with pytest.raises(ConfigurationError):
        Client(**{**base, **options})


def test_an_unusable_outbox_path_is_refused_at_construction(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("")
    path = tmp_path / "a-file" / "outbox.sqlite3"

    with pytest.raises(ConfigurationError, match=str(path)):
        Client(outbox=path)


def test_sending_without_credentials_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError):
        Client(sending=True, outbox=tmp_path / "o.sqlite3")


def test_repr_and_attributes_never_show_the_token() -> None:
    client = Client(FAKE_ACCESS_TOKEN, FAKE_AD_ACCOUNT_ID)

    assert FAKE_ACCESS_TOKEN not in repr(client)
    assert FAKE_ACCESS_TOKEN not in repr(vars(client))


def test_configuration_errors_never_quote_the_token() -> None:
    with pytest.raises(ConfigurationError) as caught:
        Client("pina_secret value", FAKE_AD_ACCOUNT_ID)

    assert "pina_secret" not in str(caught.value)


def test_the_own_ad_account_is_the_only_allowed_advertiser_by_default() -> None:
    client = Client(FAKE_ACCESS_TOKEN, FAKE_AD_ACCOUNT_ID)

    assert client.is_allowed_advertiser(FAKE_AD_ACCOUNT_ID)
    assert not client.is_allowed_advertiser("123")


def test_advertiser_ids_can_be_listed() -> None:
    client = Client(FAKE_ACCESS_TOKEN, FAKE_AD_ACCOUNT_ID, advertiser_ids=[1, "22"])

    assert client.is_allowed_advertiser(22)
    assert not client.is_allowed_advertiser(FAKE_AD_ACCOUNT_ID)


def test_from_env_reads_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PINTEREST_ACCESS_TOKEN", FAKE_ACCESS_TOKEN)
    monkeypatch.setenv("PINTEREST_AD_ACCOUNT_ID", FAKE_AD_ACCOUNT_ID)
    monkeypatch.setenv("PINTEREST_API_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("PINTEREST_TEST_MODE", "yes")
    monkeypatch.setenv("PINTEREST_OUTBOX", str(tmp_path / "o.sqlite3"))

    client = Client.from_env()

    assert client.is_sending
    assert (client.ad_account_id, client.api_url) == (
        FAKE_AD_ACCOUNT_ID,
        "http://127.0.0.1:9",
    )
    assert client.test_mode
    assert isinstance(client.outbox, SQLiteOutbox)


def test_from_env_reads_advertiser_ids_and_default_region(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PINTEREST_ADVERTISER_IDS", " 111, 222 ,")
    monkeypatch.setenv("PINTEREST_DEFAULT_REGION", "GB")

    client = Client.from_env(sending=False, outbox=MemoryOutbox())

    assert client.is_allowed_advertiser("222")
    assert not client.is_allowed_advertiser("333")
    assert client.default_region == "GB"


def test_from_env_arguments_win(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PINTEREST_ACCESS_TOKEN", FAKE_ACCESS_TOKEN)
    monkeypatch.setenv("PINTEREST_AD_ACCOUNT_ID", FAKE_AD_ACCOUNT_ID)

    client = Client.from_env(ad_account_id="42")

    assert client.ad_account_id == "42"


def test_an_unreadable_test_mode_flag_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PINTEREST_TEST_MODE", "maybe")

    with pytest.raises(ConfigurationError):
        Client.from_env()


@pytest.mark.parametrize("sending", [True, False], ids=["sending", "local"])
@pytest.mark.parametrize("test_mode", ["false", 1, None])
def test_a_test_mode_that_is_not_a_boolean_is_refused(
    sending: bool, test_mode: object
) -> None:
    token = FAKE_ACCESS_TOKEN if sending else None

    with pytest.raises(ConfigurationError, match="test_mode"):
        Client(
            token,
            FAKE_AD_ACCOUNT_ID,
            test_mode=test_mode,  # type: ignore[arg-type]
            outbox=MemoryOutbox(),
        )


def test_send_refuses_a_test_argument_that_is_not_a_boolean(
    make_client: Callable[..., Client], fake_pinterest: FakePinterestAPI
) -> None:
    events = [build_event("lead", user_data={"em": "a@b.co"})]

    with pytest.raises(TypeError, match="test"):
        make_client().send(events, test="no")  # type: ignore[arg-type]

    assert fake_pinterest.requests == []


def test_the_default_client_is_built_once(
    monkeypatch: pytest.MonkeyPatch, no_default_client: None
) -> None:
    monkeypatch.setenv("PINTEREST_ACCESS_TOKEN", FAKE_ACCESS_TOKEN)
    monkeypatch.setenv("PINTEREST_AD_ACCOUNT_ID", FAKE_AD_ACCOUNT_ID)

    assert get_default_client() is get_default_client()


def test_the_default_client_can_be_replaced(no_default_client: None) -> None:
    client = Client(FAKE_ACCESS_TOKEN, FAKE_AD_ACCOUNT_ID)

    set_default_client(client)

    assert get_default_client() is client


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
@pytest.mark.parametrize(
    ("module", "name"),
    [
        ("pinterest_mw.client", "_default_lock"),
        ("pinterest_mw._shutdown", "_lock"),
        ("pinterest_mw._fork", "_lock"),
    ],
)
def test_a_forked_child_never_inherits_a_held_module_lock(
    module: str, name: str
) -> None:
    """A lock held at fork time (by another thread, say) is fresh in the child."""
    lock = getattr(sys.modules[module], name)
    read_end, write_end = os.pipe()
    with lock, warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # fork with threads
        pid = os.fork()
        if pid == 0:  # pragma: no cover - runs in the child
            try:
                fresh = getattr(sys.modules[module], name).acquire(timeout=5)
                os.write(write_end, b"1" if fresh else b"0")
            finally:
                os._exit(0)
    os.close(write_end)
    answer = os.read(read_end, 1)
    os.waitpid(pid, 0)
    os.close(read_end)

    assert answer == b"1"


# --- the embedded default ---


def test_without_credentials_events_are_kept_locally_not_sent(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    clients: list[Client],
) -> None:
    monkeypatch.chdir(tmp_path)
    client = Client()
    clients.append(client)

    client.track(event_data())

    assert not client.is_sending
    assert isinstance(client.outbox, SQLiteOutbox)
    assert client.outbox.path == DEFAULT_OUTBOX_PATH
    assert (tmp_path / DEFAULT_OUTBOX_PATH).exists()
    assert client.counters.queue_depth == 1


def test_the_embedded_default_says_so_once(
    caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    client = Client(access_token=FAKE_ACCESS_TOKEN, outbox=tmp_path / "o.sqlite3")

    [record] = [r for r in caplog.records if r.name == "pinterest_mw.client"]
    assert record.levelno == logging.WARNING
    assert record.getMessage() == NOT_SENDING_MESSAGE % (
        "no ad account id",
        client.outbox,
    )
    assert FAKE_ACCESS_TOKEN not in record.getMessage()


def test_the_local_outbox_holds_no_raw_personal_data(
    tmp_path: Path, clients: list[Client]
) -> None:
    client = Client(outbox=tmp_path / "outbox.sqlite3")
    clients.append(client)

    client.track(event_data(user_data={"email": EMAIL, "phone": "+1 650-555-1212"}))

    stored = b"".join(path.read_bytes() for path in tmp_path.iterdir()).lower()
    assert EMAIL.lower().encode() not in stored
    assert b"650-555-1212" not in stored
    assert b"6505551212" not in stored
    assert sha256_hex(EMAIL.lower()).encode() in stored


@pytest.mark.anyio
async def test_counters_can_be_read_without_blocking_the_loop(
    tmp_path: Path, clients: list[Client]
) -> None:
    client = Client(outbox=tmp_path / "outbox.sqlite3")
    clients.append(client)
    await client.atrack(event_data())

    counters = await client.acounters()

    assert (counters.accepted, counters.queue_depth) == (1, 1)


def test_a_client_can_be_kept_from_sending(tmp_path: Path) -> None:
    client = Client(
        FAKE_ACCESS_TOKEN,
        FAKE_AD_ACCOUNT_ID,
        sending=False,
        outbox=tmp_path / "o.sqlite3",
    )

    assert not client.is_sending
    with pytest.raises(ConfigurationError):
        client.send([event_data()])


def test_events_kept_without_credentials_are_sent_once_credentials_come(
    tmp_path: Path,
    make_client: Callable[..., Client],
    fake_pinterest: FakePinterestAPI,
) -> None:
    path = tmp_path / "outbox.sqlite3"
    kept = Client(outbox=path)
    event = kept.track(event_data())
    kept.close()

    sender = make_client(outbox=path)
    sender.start()

    assert sender.flush(timeout=5)
    assert delivered_ids(fake_pinterest) == [event.event_id]


@pytest.mark.parametrize("kept_in_test_mode", [True, False], ids=["test", "live"])
def test_kept_events_go_out_in_the_mode_they_were_kept_in(
    tmp_path: Path,
    make_client: Callable[..., Client],
    fake_pinterest: FakePinterestAPI,
    kept_in_test_mode: bool,
) -> None:
    """Whatever the mode of the client that finally sends them."""
    path = tmp_path / "outbox.sqlite3"
    keeper = Client(test_mode=kept_in_test_mode, outbox=path)
    event = keeper.track(event_data())
    keeper.close()

    sender = make_client(outbox=path, test_mode=not kept_in_test_mode)
    sender.start()

    assert sender.flush(timeout=5)
    [request] = fake_pinterest.requests
    assert request.is_test is kept_in_test_mode
    assert request.event_ids() == [event.event_id]


def test_a_sending_client_takes_over_what_the_embedded_default_kept(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    make_client: Callable[..., Client],
    fake_pinterest: FakePinterestAPI,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """No outbox configured: the default file, when there is one, is its outbox."""
    monkeypatch.chdir(tmp_path)
    keeper = Client()
    event = keeper.track(event_data())
    keeper.close()
    caplog.set_level(logging.INFO, logger="pinterest_mw.client")

    sender = make_client()
    sender.start()

    assert sender.flush(timeout=5)
    assert delivered_ids(fake_pinterest) == [event.event_id]
    assert isinstance(sender.outbox, SQLiteOutbox)
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.INFO] == [
        KEPT_OUTBOX_MESSAGE % DEFAULT_OUTBOX_PATH
    ]


def test_without_a_kept_file_a_sending_client_queues_in_memory(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    make_client: Callable[..., Client],
) -> None:
    monkeypatch.chdir(tmp_path)

    client = make_client()

    assert isinstance(client.outbox, MemoryOutbox)
    assert list(tmp_path.iterdir()) == []


# --- tracking ---


def test_track_returns_the_built_event(make_client: Callable[..., Client]) -> None:
    event = make_client().track(event_data())

    assert isinstance(event, Event)
    assert event.to_wire()["user_data"]["em"] == [sha256_hex(EMAIL.lower())]


def test_track_refuses_an_invalid_event(make_client: Callable[..., Client]) -> None:
    client = make_client()

    with pytest.raises(EventValidationError):
        client.track({"event_name": "checkout"})
    assert client.counters.accepted == 0


def test_a_tracked_mapping_without_action_source_is_a_web_event(
    make_client: Callable[..., Client],
) -> None:
    data = event_data()
    del data["action_source"]

    event = make_client().track(data)

    assert event.to_wire()["action_source"] == "web"
    assert "action_source" not in data


def test_a_tracked_mapping_keeps_its_own_action_source(
    make_client: Callable[..., Client],
) -> None:
    event = make_client().track(event_data(action_source="offline"))

    assert event.to_wire()["action_source"] == "offline"


def test_track_enriches_from_the_given_context(
    make_client: Callable[..., Client],
) -> None:
    context = RequestContext(client_ip="203.0.113.9", user_agent="Browser/1.0")

    event = make_client().track(event_data(), context=context)

    user_data = event.to_wire()["user_data"]
    assert (user_data["client_ip_address"], user_data["client_user_agent"]) == (
        "203.0.113.9",
        "Browser/1.0",
    )


def test_track_enriches_from_the_current_request(
    make_client: Callable[..., Client],
) -> None:
    with use_context(RequestContext(client_ip="203.0.113.9")):
        event = make_client().track(event_data())

    assert event.to_wire()["user_data"]["client_ip_address"] == "203.0.113.9"


def test_a_built_event_is_queued_as_it_is(make_client: Callable[..., Client]) -> None:
    """The current request does not rewrite an event the caller built."""
    built = build_event("checkout", user_data={"email": EMAIL})

    with use_context(RequestContext(client_ip="203.0.113.9")):
        event = make_client().track(built)

    assert event is built


def test_a_built_event_is_enriched_from_an_explicit_context(
    make_client: Callable[..., Client],
) -> None:
    built = build_event("checkout", user_data={"email": EMAIL})

    event = make_client().track(built, context=RequestContext(client_ip="::1"))

    assert event.event_id == built.event_id
    assert event.to_wire()["user_data"]["client_ip_address"] == "::1"


def test_the_default_region_reads_local_phone_numbers(
    make_client: Callable[..., Client],
) -> None:
    client = make_client(default_region="us")

    event = client.track(
        event_data(user_data={"email": EMAIL, "phone": "650 555 1212"})
    )

    assert client.default_region == "US"
    assert event.to_wire()["user_data"]["ph"] == [sha256_hex("16505551212")]


def test_track_many_reports_every_invalid_event_and_queues_none(
    make_client: Callable[..., Client],
) -> None:
    client = make_client()

    with pytest.raises(EventValidationError) as caught:
        client.track_many([event_data(), {"event_name": "x"}, {}])

    assert {e.path.split(".")[1] for e in caught.value.errors} == {"1", "2"}
    assert client.counters.accepted == 0


def test_track_many_queues_them_all(
    make_client: Callable[..., Client], fake_pinterest: FakePinterestAPI
) -> None:
    client = make_client()

    events = client.track_many([event_data(f"b{i}@example.com") for i in range(3)])
    client.flush(timeout=5)

    assert delivered_ids(fake_pinterest) == sorted(e.event_id for e in events)


def test_the_raise_policy_reaches_the_caller(
    make_client: Callable[..., Client],
) -> None:
    client = make_client(outbox=MemoryOutbox(max_events=1), overflow="raise")
    client.track(event_data())

    with pytest.raises(QueueFullError):
        client.track(event_data())


def test_the_overflow_policy_applies_when_not_sending(clients: list[Client]) -> None:
    client = Client(outbox=MemoryOutbox(max_events=1), overflow="raise")
    clients.append(client)
    client.track(event_data())

    with pytest.raises(QueueFullError):
        client.track(event_data())
    assert client.counters.dropped == 1


def test_send_waits_for_pinterest_and_returns_results(
    make_client: Callable[..., Client],
) -> None:
    result = make_client().send([event_data()])

    assert result.ok


@pytest.mark.anyio
async def test_asend_waits_for_pinterest_and_returns_results(
    make_client: Callable[..., Client],
) -> None:
    result = await make_client().asend([event_data()])

    assert result.ok


# --- delivery ---


def test_tracked_events_reach_pinterest_in_one_batch(
    make_client: Callable[..., Client], fake_pinterest: FakePinterestAPI
) -> None:
    client = make_client(flush_interval=60)
    events = [client.track(event_data(f"b{i}@example.com")) for i in range(3)]

    assert client.flush(timeout=5)
    assert len(fake_pinterest.requests) == 1
    assert delivered_ids(fake_pinterest) == sorted(e.event_id for e in events)


def test_outside_an_event_loop_the_thread_dispatcher_is_used(
    make_client: Callable[..., Client],
) -> None:
    client = make_client()

    client.track(event_data())

    assert isinstance(client._dispatcher, ThreadDispatcher)


@pytest.mark.anyio
async def test_atrack_delivers_from_the_running_loop(
    make_client: Callable[..., Client], fake_pinterest: FakePinterestAPI
) -> None:
    client = make_client()

    event = await client.atrack(event_data())

    assert await client.aflush(timeout=5)
    assert isinstance(client._dispatcher, AsyncDispatcher)
    assert delivered_ids(fake_pinterest) == [event.event_id]


def test_in_a_loop_outside_the_main_thread_the_thread_dispatcher_is_used(
    make_client: Callable[..., Client], fake_pinterest: FakePinterestAPI
) -> None:
    """Such a loop (Flask's, a TestClient portal's) may end with the request."""
    client = make_client()
    tracked: list[Event] = []

    def request_in_its_own_loop() -> None:
        tracked.append(asyncio.run(client.atrack(event_data())))

    thread = threading.Thread(target=request_in_its_own_loop)
    thread.start()
    thread.join(10)

    assert isinstance(client._dispatcher, ThreadDispatcher)
    assert client.flush(timeout=5)
    assert delivered_ids(fake_pinterest) == [tracked[0].event_id]


def _wait_for(condition: Callable[[], bool], bound: float = 10.0) -> bool:
    """Poll until `condition` holds; the bound turns a hang into a failure."""
    deadline = time.monotonic() + bound
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


@pytest.mark.parametrize("call", ["track", "atrack"])
def test_events_tracked_in_a_flask_async_view_are_delivered_without_a_flush(
    make_client: Callable[..., Client], fake_pinterest: FakePinterestAPI, call: str
) -> None:
    """asgiref runs each async view in a loop that ends with the request."""
    pytest.importorskip("asgiref", reason="Flask runs async views with asgiref")
    import flask

    client = make_client()
    app = flask.Flask(__name__)

    @app.post("/buy")
    async def buy() -> dict[str, str]:
        if call == "atrack":
            event = await client.atrack(event_data())
        else:
            event = client.track(event_data())
        return {"event_id": event.event_id}

    http = app.test_client()
    ids = [http.post("/buy").get_json()["event_id"] for _ in range(5)]

    assert _wait_for(lambda: len(fake_pinterest.events) == 5)
    assert delivered_ids(fake_pinterest) == sorted(ids)
    assert isinstance(client._dispatcher, ThreadDispatcher)


@pytest.mark.anyio
async def test_atrack_many_queues_them_all(
    make_client: Callable[..., Client], fake_pinterest: FakePinterestAPI
) -> None:
    client = make_client()

    events = await client.atrack_many([event_data(), event_data("c@example.com")])
    await client.aclose()

    assert delivered_ids(fake_pinterest) == sorted(e.event_id for e in events)


@pytest.mark.parametrize("status", [429, 503])
def test_nothing_is_lost_or_doubled_while_pinterest_refuses_for_a_while(
    make_client: Callable[..., Client],
    fake_pinterest: FakePinterestAPI,
    status: int,
) -> None:
    fake_pinterest.fail_next(4, status=status, retry_after=0)
    client = make_client(batch_size=3)

    events = [client.track(event_data(f"b{i}@example.com")) for i in range(7)]

    assert client.flush(timeout=10)
    assert delivered_ids(fake_pinterest) == sorted(e.event_id for e in events)
    assert client.counters.retried >= 3


def test_rejected_events_are_kept_with_reasons_and_can_be_sent_again(
    make_client: Callable[..., Client],
    fake_pinterest: FakePinterestAPI,
    tmp_path: Path,
) -> None:
    fake_pinterest.fail_next(1, status=400)
    client = make_client(outbox=tmp_path / "outbox.sqlite3")
    events = [client.track(event_data()), client.track(event_data("c@example.com"))]
    client.flush(timeout=5)
    stats = client.outbox.stats()

    requeued = client.outbox.requeue_rejected()
    client.flush(timeout=5)

    assert stats.rejected == 2
    assert list(stats.rejected_reasons) == [
        "HTTP 400 (code 4196): The request was invalid."
    ]
    assert requeued == 2
    assert delivered_ids(fake_pinterest) == sorted(e.event_id for e in events)


def test_logs_of_a_failing_delivery_hold_no_token_or_user_data(
    make_client: Callable[..., Client],
    fake_pinterest: FakePinterestAPI,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="pinterest_mw")
    fake_pinterest.fail_next(1, status=503)
    fake_pinterest.fail_next(1, status=401)
    client = make_client()
    client.track(event_data())
    client.flush(timeout=5)

    text = caplog.text.lower()
    assert caplog.records
    assert FAKE_ACCESS_TOKEN.lower() not in text
    assert EMAIL.lower() not in text
    assert sha256_hex(EMAIL.lower()) not in text


def test_leaving_the_client_context_delivers_what_is_queued(
    make_client: Callable[..., Client], fake_pinterest: FakePinterestAPI
) -> None:
    with make_client(flush_interval=60) as client:
        event = client.track(event_data())

    assert delivered_ids(fake_pinterest) == [event.event_id]


@pytest.mark.anyio
async def test_leaving_the_async_client_context_delivers_what_is_queued(
    make_client: Callable[..., Client], fake_pinterest: FakePinterestAPI
) -> None:
    async with make_client(flush_interval=60) as client:
        event = await client.atrack(event_data())

    assert delivered_ids(fake_pinterest) == [event.event_id]


@pytest.mark.anyio
async def test_the_lifespan_also_drives_a_thread_dispatcher(
    make_client: Callable[..., Client], fake_pinterest: FakePinterestAPI
) -> None:
    client = make_client(flush_interval=60, dispatcher="thread")

    async with client.running():
        event = await client.atrack(event_data())

    assert delivered_ids(fake_pinterest) == [event.event_id]


# --- apps ---


def _app(client: Client, **options: Any) -> Starlette:
    async def buy(request: Request) -> JSONResponse:
        event = await client.atrack(event_data())
        return JSONResponse({"event_id": event.event_id})

    def buy_sync(request: Request) -> JSONResponse:
        event = client.track(event_data())
        return JSONResponse({"event_id": event.event_id})

    routes = [
        Route("/buy", buy, methods=["POST"]),
        Route("/buy-sync", buy_sync, methods=["POST"]),
    ]
    return Starlette(routes=routes, **options)


def test_the_lifespan_flushes_when_the_app_stops(
    make_client: Callable[..., Client], fake_pinterest: FakePinterestAPI
) -> None:
    client = make_client(flush_interval=60)
    app = _app(client, lifespan=lifespan(client))

    with TestClient(app) as http:
        event_id = http.post("/buy").json()["event_id"]

    assert delivered_ids(fake_pinterest) == [event_id]


def test_the_lifespan_works_inside_an_apps_own_lifespan(
    make_client: Callable[..., Client], fake_pinterest: FakePinterestAPI
) -> None:
    client = make_client(flush_interval=60)
    entered: list[object] = []

    @asynccontextmanager
    async def app_lifespan(app: Starlette) -> Any:
        async with client.running() as running:
            entered.append(running)
            yield

    with TestClient(_app(client, lifespan=app_lifespan)) as http:
        event_id = http.post("/buy").json()["event_id"]

    assert entered == [client]
    assert delivered_ids(fake_pinterest) == [event_id]


@pytest.mark.parametrize("dispatcher", ["auto", "async"])
def test_delivery_survives_a_new_event_loop_per_request(
    make_client: Callable[..., Client],
    fake_pinterest: FakePinterestAPI,
    dispatcher: str,
) -> None:
    """TestClient without `with` runs each request in a loop of its own."""
    client = make_client(flush_interval=60, dispatcher=dispatcher)
    http = TestClient(_app(client))

    ids = [http.post("/buy").json()["event_id"] for _ in range(2)]

    assert client.flush(timeout=5)
    assert delivered_ids(fake_pinterest) == sorted(ids)


def test_a_sync_view_feeds_the_async_dispatcher(
    make_client: Callable[..., Client], fake_pinterest: FakePinterestAPI
) -> None:
    client = make_client(dispatcher="async")

    with TestClient(_app(client)) as http:
        event_id = http.post("/buy-sync").json()["event_id"]
        assert client.flush(timeout=5)

    assert delivered_ids(fake_pinterest) == [event_id]


# --- processes ---


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def _run_helper(*args: str, stdin: bool = False) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(HELPER), *args],
        stdout=subprocess.PIPE,
        stdin=subprocess.PIPE if stdin else None,
        text=True,
        env={**os.environ, "PYTHONPATH": str(HELPER.parent.parent)},
    )


def _read_until(process: subprocess.Popen[str], marker: str) -> list[str]:
    assert process.stdout is not None
    lines = []
    for line in process.stdout:
        if line.strip() == marker:
            return lines
        lines.append(line.strip())
    raise AssertionError(f"the helper ended before printing {marker!r}")


@pytest.mark.e2e
@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_events_of_a_killed_process_are_delivered_once_by_the_next(
    served_fake: tuple[FakePinterestAPI, str], tmp_path: Path
) -> None:
    fake, url = served_fake
    outbox = str(tmp_path / "outbox.sqlite3")
    accepting = _run_helper("accept", outbox, url, "20")
    accepted = _read_until(accepting, "accepted")
    accepting.send_signal(signal.SIGKILL)
    accepting.wait(timeout=10)
    accepting.stdout.close()  # type: ignore[union-attr]

    delivering = subprocess.run(
        [sys.executable, str(HELPER), "deliver", outbox, url, "20"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )

    assert delivering.stdout.strip() == "delivered 20"
    assert delivered_ids(fake) == sorted(accepted)


@pytest.mark.e2e
@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_a_batch_in_flight_when_its_process_is_killed_is_sent_again_at_once(
    tmp_path: Path,
) -> None:
    """The restart sees the sender gone: no wait for its lease (about a minute).

    Pinterest (here the fake) received that batch but its answer was never
    recorded: it arrives twice, by design (at least once, by event_id).
    """
    fake = FakePinterestAPI(latency=30)
    outbox = str(tmp_path / "outbox.sqlite3")
    with serve_fake_api(fake) as url:
        sending = _run_helper("send", outbox, url, "20", "5")
        accepted = _read_until(sending, "accepted")
        deadline = time.monotonic() + 30
        while not fake.requests and time.monotonic() < deadline:
            time.sleep(0.01)
        in_flight = fake.requests[0].event_ids()
        sending.send_signal(signal.SIGKILL)
        sending.wait(timeout=10)
        sending.stdout.close()  # type: ignore[union-attr]
        fake.latency = 0

        started = time.monotonic()
        delivering = subprocess.run(
            [sys.executable, str(HELPER), "deliver", outbox, url, "20"],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
            env={**os.environ, "PYTHONPATH": str(HELPER.parent.parent)},
        )
        took = time.monotonic() - started

    received = Counter(event["event_id"] for event in fake.events)
    assert delivering.stdout.strip() == "delivered 20"
    assert took < 20
    assert sorted(received) == sorted(accepted)
    assert {i for i, n in received.items() if n > 1} <= set(in_flight)


@pytest.mark.e2e
def test_two_processes_sharing_an_outbox_send_each_event_once(
    tmp_path: Path,
) -> None:
    """Thirty batches, each held a little by the fake: both claim, none twice.

    Without working leases one process would claim a batch the other is
    still sending, and the fake would receive it twice.
    """
    fake = FakePinterestAPI(latency=0.02)
    outbox = tmp_path / "outbox.sqlite3"
    keeper = Client(outbox=outbox)
    accepted = [
        keeper.track(event_data(f"b{i}@example.com")).event_id for i in range(300)
    ]
    keeper.close()

    with serve_fake_api(fake) as url:
        workers = [
            _run_helper("share", str(outbox), url, "10", stdin=True) for _ in range(2)
        ]
        for worker in workers:
            _read_until(worker, "ready")
        for worker in workers:
            assert worker.stdin is not None
            worker.stdin.write("go\n")
            worker.stdin.flush()
        outputs = [worker.communicate(timeout=60)[0] for worker in workers]

    processed = [int(output.split()[-1]) for output in outputs]
    received = Counter(event["event_id"] for event in fake.events)
    assert sorted(received) == sorted(accepted)
    assert set(received.values()) == {1}
    assert sum(processed) == 300
    assert min(processed) > 0


@pytest.mark.e2e
def test_the_exit_hook_delivers_what_is_queued(
    served_fake: tuple[FakePinterestAPI, str],
) -> None:
    fake, url = served_fake

    finished = subprocess.run(
        [sys.executable, str(HELPER), "exit", url, "3"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )

    assert delivered_ids(fake) == sorted(finished.stdout.split())


@pytest.mark.e2e
def test_delivery_waits_out_an_unreachable_api_then_sends_everything_once(
    tmp_path: Path, clients: list[Client]
) -> None:
    port = _closed_port()
    backing_off: list[OutboxStats] = []
    retried_twice = threading.Event()

    def on_error(failure: DeliveryFailure) -> None:
        # Told after the outcome is recorded: the outbox shows the deferral.
        backing_off.append(client.outbox.stats())
        if len(backing_off) >= 2:
            retried_twice.set()

    client = Client(
        FAKE_ACCESS_TOKEN,
        FAKE_AD_ACCOUNT_ID,
        api_url=f"http://127.0.0.1:{port}",
        outbox=tmp_path / "outbox.sqlite3",
        on_error=on_error,
        **{**FAST, "backoff": DeliveryBackoff(initial=0.1, maximum=0.3, jitter=0)},
    )
    clients.append(client)
    events = [client.track(event_data(f"b{i}@example.com")) for i in range(5)]
    assert retried_twice.wait(10)

    fake = FakePinterestAPI()
    with serve_fake_api(fake, port=port):
        assert client.flush(timeout=10)

    assert client.counters.retried >= 10
    assert (backing_off[1].deferred, list(backing_off[1].deferred_reasons)) == (
        5,
        ["Pinterest request connection failed (ConnectError)"],
    )
    assert delivered_ids(fake) == sorted(e.event_id for e in events)


@pytest.mark.e2e
@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_an_event_tracked_in_a_forked_child_is_delivered_once(
    served_fake: tuple[FakePinterestAPI, str], clients: list[Client]
) -> None:
    fake, url = served_fake
    client = Client(
        FAKE_ACCESS_TOKEN,
        FAKE_AD_ACCOUNT_ID,
        api_url=url,
        dispatcher="thread",
        **{**FAST, "flush_interval": 60},
    )
    clients.append(client)
    from_parent = client.track(event_data())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # fork with threads
        pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        code = 1
        try:
            client.track(event_data("child@example.com", event_id="from-child"))
            code = 0 if client.flush(timeout=10) else 3
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)

    assert client.flush(timeout=10)
    assert os.waitstatus_to_exitcode(status) == 0
    assert delivered_ids(fake) == sorted([from_parent.event_id, "from-child"])


# --- closing, the outbox failing, bounded sends ---


def test_a_storage_failure_under_the_raise_policy_reaches_the_caller(
    clients: list[Client], tmp_path: Path
) -> None:
    """Another process holds the file's lock past the busy timeout."""
    path = tmp_path / "outbox.sqlite3"
    client = Client(
        outbox=SQLiteOutbox(path, busy_timeout=0.05), overflow="raise", sending=False
    )
    clients.append(client)
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")

    try:
        with pytest.raises(OutboxError):
            client.track(event_data())
    finally:
        holder.execute("ROLLBACK")
        holder.close()

    assert client.counters.dropped == 1
    assert client.outbox.depth() == 0


def test_close_leaves_the_outbox_and_transport_to_a_worker_still_sending(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The late answer is recorded, then both are closed; nothing is cut."""
    fake = FakePinterestAPI(latency=1.0)
    with serve_fake_api(fake) as url:
        client = Client(
            FAKE_ACCESS_TOKEN,
            FAKE_AD_ACCOUNT_ID,
            api_url=url,
            outbox=tmp_path / "outbox.sqlite3",
            dispatcher="thread",
            **FAST,
        )
        client.track(event_data())
        deadline = time.monotonic() + 30
        while not fake.requests and time.monotonic() < deadline:
            time.sleep(0.01)
        dispatcher = client._get_dispatcher()
        assert isinstance(dispatcher, ThreadDispatcher)
        worker = dispatcher._thread
        assert worker is not None

        client.close(timeout=0)
        worker.join(30)

    # Closed once the worker recorded the answer (a later read opens it).
    assert isinstance(client.outbox, SQLiteOutbox)
    assert client.outbox._writer is None
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == []
    assert dispatcher.counters.processed == 1


def test_a_client_closed_twice_at_once_counts_what_is_left_once(
    clients: list[Client], stalled_api: str
) -> None:
    client = Client(
        FAKE_ACCESS_TOKEN, FAKE_AD_ACCOUNT_ID, api_url=stalled_api, timeout=1, **FAST
    )
    clients.append(client)
    client.track(event_data())
    closes = [threading.Thread(target=client.close, args=(0.1,)) for _ in "ab"]

    for close in closes:
        close.start()
    for close in closes:
        close.join(30)

    assert client.counters.dropped == 1
    dispatcher = client._get_dispatcher()
    assert isinstance(dispatcher, ThreadDispatcher)
    if dispatcher._thread is not None:
        dispatcher._thread.join(30)


@pytest.fixture
def stalled_api() -> Iterator[str]:
    """The URL of an API that takes connections and never answers."""
    server = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []

    def accept() -> None:
        while True:
            try:
                held.append(server.accept()[0])
            except OSError:
                return

    threading.Thread(target=accept, daemon=True).start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}"
    server.close()
    for connection in held:
        connection.close()


@pytest.mark.parametrize(
    ("seconds", "timeout", "budget"), [(2.0, 2.0, 0.0), (30.0, 10.0, 20.0)]
)
def test_the_sigterm_transport_fits_its_requests_in_the_time_left(
    clients: list[Client], seconds: float, timeout: float, budget: float
) -> None:
    client = Client(FAKE_ACCESS_TOKEN, FAKE_AD_ACCOUNT_ID, timeout=10)
    clients.append(client)

    transport = client._transport_within(seconds)

    assert (transport.timeout, transport.retry.total_budget) == (timeout, budget)
    transport.close()


def test_test_endpoint_sends_fit_in_their_time_limit(clients: list[Client]) -> None:
    client = Client(
        FAKE_ACCESS_TOKEN,
        FAKE_AD_ACCOUNT_ID,
        timeout=10,
        retry=RetryPolicy(total_budget=60),
    )
    clients.append(client)

    transport = client._transport_within(TEST_SEND_WITHIN)

    assert transport.timeout + transport.retry.total_budget <= TEST_SEND_WITHIN
    transport.close()


class SlowCountOutbox(SQLiteOutbox):
    """A SQLite outbox whose first depth read once `slow` is set waits for
    `release`: a close() slow to count what is left. `closed_while_reading`
    records whether `close()` came meanwhile."""

    def __init__(self, path: Path, *args: Any, **options: Any) -> None:
        super().__init__(path, *args, **options)
        self.slow = False
        self.reading = threading.Event()
        self.release = threading.Event()
        self.closed_while_reading: list[bool] = []

    def depth(self) -> int:
        if self.slow and not self.reading.is_set():
            self.reading.set()
            self.release.wait(30)
            depth = super().depth()
            self.slow = False
            return depth
        return super().depth()

    def close(self) -> None:
        self.closed_while_reading.append(self.slow)
        super().close()


def test_a_client_closed_twice_at_once_closes_its_outbox_after_the_first_close(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The later close() may give up waiting, but never closes the outbox
    under the first one, still counting what is left (no worker runs)."""
    monkeypatch.setattr("pinterest_mw.dispatch._LATER_CLOSE_WAIT", 0.0)
    monkeypatch.setattr("pinterest_mw.client.SQLiteOutbox", SlowCountOutbox)
    client = Client(sending=False, outbox=tmp_path / "outbox.sqlite3")
    outbox = client.outbox
    assert isinstance(outbox, SlowCountOutbox)
    client.track(event_data())
    outbox.slow = True
    first = threading.Thread(target=client.close, args=(0,), daemon=True)
    first.start()
    assert outbox.reading.wait(5)

    client.close(timeout=0)
    closed_early = list(outbox.closed_while_reading)
    outbox.release.set()
    first.join(30)

    assert closed_early == []
    assert outbox.closed_while_reading
    assert True not in outbox.closed_while_reading


def test_a_client_closed_before_any_event_drops_and_counts_later_ones(
    make_client: Callable[..., Client], fake_pinterest: FakePinterestAPI
) -> None:
    """Closing builds the dispatcher it never needed, so that it stays closed."""
    client = make_client()
    client.close(timeout=0)

    client.track(event_data())
    client.close(timeout=0)

    assert client.counters.dropped == 1
    assert client.counters.accepted == 0
    assert fake_pinterest.requests == []


@pytest.mark.parametrize("kind", ["thread", "async"])
def test_close_leaves_the_outbox_to_a_worker_of_either_kind_still_sending(
    tmp_path: Path, kind: str
) -> None:
    """The late answer is recorded, then the outbox is closed."""
    fake = FakePinterestAPI(latency=1.0)
    with serve_fake_api(fake) as url:
        client = Client(
            FAKE_ACCESS_TOKEN,
            FAKE_AD_ACCOUNT_ID,
            api_url=url,
            outbox=tmp_path / "outbox.sqlite3",
            dispatcher=kind,  # type: ignore[arg-type]
            **FAST,
        )
        client.track(event_data())
        deadline = time.monotonic() + 30
        while not fake.requests and time.monotonic() < deadline:
            time.sleep(0.01)
        dispatcher = client._get_dispatcher()

        client.close(timeout=0)
        # Waits behind the client's release, registered by close().
        ended = threading.Event()
        dispatcher._after_worker(ended.set)
        assert ended.wait(30)

    assert isinstance(client.outbox, SQLiteOutbox)
    assert client.outbox._writer is None
    assert dispatcher.counters.processed == 1
