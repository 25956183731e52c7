"""The sync and async transports, against the fake Pinterest API.

Every behaviour test runs twice, once per transport (`kind`). Waits are
recorded by a fake clock, never slept.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
import time
import traceback
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from pinterest_mw.events import Event, WireEvent, build_event
from pinterest_mw.exceptions import (
    APIError,
    ConfigurationError,
    ConversionsError,
    EventValidationError,
    RateLimitError,
    TransportError,
    UnreadableResponseError,
)
from pinterest_mw.testing import (
    FAKE_ACCESS_TOKEN,
    FAKE_AD_ACCOUNT_ID,
    FakePinterestAPI,
)
from pinterest_mw.transport import (
    DEFAULT_API_URL,
    WITHHELD_MESSAGE,
    AsyncTransport,
    EventResult,
    EventStatus,
    RetryPolicy,
    SendResult,
    Transport,
    _answer_text,
)

pytestmark = pytest.mark.anyio

EVENTS_PATH = f"/v5/ad_accounts/{FAKE_AD_ACCOUNT_ID}/events"
EMAIL = "ann@example.com"
EMAIL_HASH = hashlib.sha256(EMAIL.encode()).hexdigest()


class FakeClock:
    """A monotonic clock that only moves when the transport sleeps."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds

    async def asleep(self, seconds: float) -> None:
        self.sleep(seconds)


async def resolve(value: Any) -> Any:
    """Await what the async transport returns; pass the sync one's through."""
    return await value if inspect.isawaitable(value) else value


def event(n: int = 0, name: str = "checkout", email: str = "", **fields: Any) -> Event:
    return build_event(
        name,
        user_data={"email": email or f"user{n}@example.com"},
        event_id=f"evt-{n}",
        **fields,
    )


def events(count: int) -> list[WireEvent]:
    template = event(0).to_wire()
    wire = []
    for n in range(count):
        template["event_id"] = f"evt-{n}"
        payload = json.dumps(template, separators=(",", ":")).encode()
        wire.append(WireEvent(f"evt-{n}", "checkout", payload))
    return wire


def stale(wire_event: WireEvent) -> WireEvent:
    """The same event, eight days old: Pinterest fails it."""
    data = json.loads(wire_event.payload)
    data["event_time"] -= 8 * 24 * 3600
    return wire_event._replace(payload=json.dumps(data).encode())


@pytest.fixture(params=["sync", "async"])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def make_transport(kind: str, clock: FakeClock, anyio_backend: str):
    """Build transports of the test's kind, with the fake clock; close them after."""
    created: list[Transport | AsyncTransport] = []

    def make(**options: Any) -> Transport | AsyncTransport:
        options.setdefault("access_token", FAKE_ACCESS_TOKEN)
        options.setdefault("ad_account_id", FAKE_AD_ACCOUNT_ID)
        options.setdefault("retry", RetryPolicy(initial_backoff=0.1, jitter=0))
        if kind == "sync":
            transport: Transport | AsyncTransport = Transport(
                sleep=clock.sleep, clock=clock.monotonic, **options
            )
        else:
            transport = AsyncTransport(
                sleep=clock.asleep, clock=clock.monotonic, **options
            )
        created.append(transport)
        return transport

    yield make
    for transport in created:
        if isinstance(transport, Transport):
            transport.close()
        else:
            await transport.aclose()


@pytest.fixture
def serve(httpx_mock: Any) -> Callable[[FakePinterestAPI], FakePinterestAPI]:
    """Put a custom fake behind pytest-httpx (the fixture makes a default one)."""

    def register(fake: FakePinterestAPI) -> FakePinterestAPI:
        httpx_mock.add_callback(fake.handle, is_reusable=True, is_optional=True)
        return fake

    return register


# --- chunking and results ----------------------------------------------------


async def test_events_go_out_in_requests_of_at_most_1000_in_order(
    make_transport, fake_pinterest
):
    result = await resolve(make_transport().send(events(2500)))

    sent = [request.event_ids() for request in fake_pinterest.requests]
    in_order = [event_id for ids in sent for event_id in ids]
    assert [len(ids) for ids in sent] == [1000, 1000, 500]
    assert in_order == [f"evt-{n}" for n in range(2500)]
    assert [r.index for r in result.results] == list(range(2500))
    assert [r.event_id for r in result.results] == in_order


async def test_every_event_of_a_200_is_reported_processed(
    make_transport, fake_pinterest
):
    result = await resolve(make_transport().send([event(0), event(1)]))

    assert result.ok
    assert result.results == [
        EventResult(0, "evt-0", "checkout", EventStatus.PROCESSED),
        EventResult(1, "evt-1", "checkout", EventStatus.PROCESSED),
    ]


async def test_a_processed_event_with_a_warning_is_reported_warned(
    make_transport, fake_pinterest
):
    result = await resolve(make_transport().send([event(0, name="loyalty_signup")]))

    assert result.ok
    assert [r.status for r in result.results] == [EventStatus.WARNED]
    assert result.warned[0].warning_message


async def test_a_422_gives_each_event_its_own_result(make_transport, fake_pinterest):
    batch = events(3)
    batch[1] = stale(batch[1])

    result = await resolve(make_transport().send(batch))

    assert [r.status for r in result.results] == [
        EventStatus.PROCESSED,
        EventStatus.FAILED,
        EventStatus.PROCESSED,
    ]
    assert "in the past" in result.failed[0].error_message
    assert not result.ok
    assert len(fake_pinterest.requests) == 1


async def test_send_batch_returns_the_per_event_results_of_a_422(
    make_transport, fake_pinterest
):
    batch = [stale(events(1)[0])]

    results = await resolve(make_transport().send_batch(batch))

    assert [r.status for r in results] == [EventStatus.FAILED]


async def test_a_200_listing_failed_events_is_reported_as_failure(
    make_transport, serve
):
    serve(FakePinterestAPI(partial_failure_status=200))
    batch = events(2)
    batch[0] = stale(batch[0])

    result = await resolve(make_transport().send(batch))

    assert not result.ok
    assert [r.event_id for r in result.failed] == ["evt-0"]
    assert [r.event_id for r in result.processed] == ["evt-1"]


PROCESSED_ENTRY = {"status": "processed", "error_message": "", "warning_message": ""}
PORTAL_PAGE = b"<html><body>Sign in to Hotel Wi-Fi to continue</body></html>"
# 2xx answers that are not Pinterest's: the events may never have reached it.
UNREADABLE_ANSWERS = {
    "html": {"content": PORTAL_PAGE, "headers": {"content-type": "text/html"}},
    "not-json": {"text": "OK"},
    "empty-204": {"status_code": 204},
    "json-list": {"json": [PROCESSED_ENTRY, PROCESSED_ENTRY]},
    "other-json": {"json": {"status": "ok"}},
}
# Pinterest's answer, without one result per event: it got the events.
UNCONFIRMED_ANSWERS = {
    "no-events": {"json": {"num_events_received": 2, "num_events_processed": 2}},
    "events-not-a-list": {"json": {"events": "processed"}},
    "too-few-events": {"json": {"events": [PROCESSED_ENTRY]}},
    "too-many-events": {"json": {"events": [PROCESSED_ENTRY] * 3}},
    "entries-not-objects": {"json": {"events": ["processed", "processed"]}},
    "created-201": {"status_code": 201, "json": {"events": []}},
}


@pytest.mark.parametrize(
    "answer", UNREADABLE_ANSWERS.values(), ids=UNREADABLE_ANSWERS.keys()
)
async def test_a_2xx_that_is_not_a_per_event_answer_raises_a_retryable_error(
    make_transport, httpx_mock, answer
):
    """Such an answer says nothing of the events: they must not count as sent."""
    httpx_mock.add_response(**{"status_code": 200, **answer})
    transport = make_transport(retry=RetryPolicy(attempts=1))

    with pytest.raises(UnreadableResponseError) as caught:
        await resolve(transport.send(events(2)))

    error = caught.value
    assert isinstance(error, APIError)
    assert (error.status_code, error.code) == (answer.get("status_code", 200), None)
    assert error.is_retryable
    assert "could not be read" in str(error)


async def test_an_unreadable_answers_message_quotes_nothing_of_its_body(
    make_transport, httpx_mock
):
    httpx_mock.add_response(content=PORTAL_PAGE, headers={"content-type": "text/html"})

    with pytest.raises(UnreadableResponseError) as caught:
        await resolve(make_transport(retry=RetryPolicy(attempts=1)).send(events(1)))

    for text in (str(caught.value), repr(caught.value), caught.value.message or ""):
        assert "Hotel" not in text
        assert "html" not in text


async def test_an_unreadable_2xx_is_retried_and_the_retry_delivers(
    make_transport, httpx_mock, clock
):
    fake = FakePinterestAPI()
    httpx_mock.add_response(content=PORTAL_PAGE, headers={"content-type": "text/html"})
    httpx_mock.add_callback(fake.handle)

    result = await resolve(make_transport().send(events(2)))

    assert [r.status for r in result.results] == [EventStatus.PROCESSED] * 2
    assert [e["event_id"] for e in fake.events] == ["evt-0", "evt-1"]
    assert clock.sleeps == [0.1]


async def test_with_raise_on_error_off_an_unreadable_2xx_leaves_events_not_sent(
    make_transport, httpx_mock
):
    httpx_mock.add_response(content=PORTAL_PAGE, headers={"content-type": "text/html"})
    transport = make_transport(retry=RetryPolicy(attempts=1))

    result = await resolve(transport.send(events(2), raise_on_error=False))

    assert [type(e) for e in result.errors] == [UnreadableResponseError]
    assert [r.status for r in result.results] == [EventStatus.NOT_SENT] * 2
    assert not result.ok


@pytest.mark.parametrize(
    "answer", UNCONFIRMED_ANSWERS.values(), ids=UNCONFIRMED_ANSWERS.keys()
)
async def test_pinterests_2xx_without_a_result_per_event_leaves_them_unconfirmed(
    make_transport, httpx_mock, clock, answer
):
    """Pinterest got the events; a resend might count them twice, as its
    de-duplication of resent events is not confirmed (#3)."""
    httpx_mock.add_response(**{"status_code": 200, **answer})

    result = await resolve(make_transport().send(events(2)))

    assert len(httpx_mock.get_requests()) == 1
    assert clock.sleeps == []
    assert [r.status for r in result.results] == [EventStatus.UNCONFIRMED] * 2
    assert [r.event_id for r in result.unconfirmed] == ["evt-0", "evt-1"]
    assert "not resent" in (result.results[0].error_message or "")
    assert (result.ok, result.errors, result.processed) == (False, [], [])


async def test_unconfirmed_events_are_logged_as_a_warning(
    make_transport, httpx_mock, caplog
):
    httpx_mock.add_response(json={"events": [PROCESSED_ENTRY]})

    await resolve(make_transport().send(events(2)))

    [record] = [r for r in caplog.records if r.name == "pinterest_mw.transport"]
    assert record.levelno == logging.WARNING
    assert "2 event(s) are unconfirmed" in record.getMessage()


async def test_send_batch_reports_unconfirmed_events_too(make_transport, httpx_mock):
    httpx_mock.add_response(json={"events": []})

    results = await resolve(make_transport().send_batch(events(1)))

    assert [r.status for r in results] == [EventStatus.UNCONFIRMED]


async def test_mappings_are_validated_and_hashed_before_sending(
    make_transport, fake_pinterest
):
    data = {
        "event_name": "lead",
        "action_source": "web",
        "event_id": "evt-m",
        "user_data": {"email": EMAIL},
    }

    await resolve(make_transport().send([data]))

    assert fake_pinterest.events[0]["user_data"]["em"] != [EMAIL]
    assert fake_pinterest.events[0]["event_id"] == "evt-m"


async def test_invalid_mappings_are_all_reported_and_nothing_is_sent(
    make_transport, fake_pinterest
):
    valid = event(0).to_wire()
    invalid = {"event_name": "lead", "action_source": "moon", "user_data": {}}

    with pytest.raises(EventValidationError) as caught:
        await resolve(make_transport().send([valid, invalid, invalid]))

    paths = {error.path.split(".", 2)[1] for error in caught.value.errors}
    assert paths == {"1", "2"}
    assert fake_pinterest.requests == []


async def test_a_lone_surrogate_in_a_mapping_is_reported_and_nothing_is_sent(
    make_transport, fake_pinterest
):
    data = {
        "event_name": "lead",
        "action_source": "web",
        "user_data": {"email": EMAIL, "click_id": json.loads('"\\udc00"')},
    }

    with pytest.raises(EventValidationError) as caught:
        await resolve(make_transport().send([event(0), data]))

    assert [e.path for e in caught.value.errors] == ["data.1.user_data.click_id"]
    assert fake_pinterest.requests == []


async def test_sending_nothing_makes_no_request(make_transport, fake_pinterest):
    result = await resolve(make_transport().send([]))

    assert result == SendResult([])
    assert fake_pinterest.requests == []


async def test_send_batch_refuses_more_than_1000_events(make_transport, fake_pinterest):
    with pytest.raises(ValueError, match="1000"):
        await resolve(make_transport().send_batch(events(1001)))


# --- retries -----------------------------------------------------------------


async def test_retry_after_seconds_is_a_floor_for_the_wait(
    make_transport, fake_pinterest, clock
):
    fake_pinterest.fail_next(1, status=429, retry_after=7)

    result = await resolve(make_transport().send(events(1)))

    assert result.ok
    assert clock.sleeps == [7.0]


async def test_retry_after_http_date_is_a_floor_for_the_wait(
    make_transport, serve, clock
):
    now = float(int(time.time()))
    fake = serve(FakePinterestAPI(clock=lambda: now))
    fake.fail_next(1, status=429, retry_after=datetime.fromtimestamp(now + 30, UTC))

    result = await resolve(make_transport().send(events(1)))

    assert result.ok
    assert clock.sleeps == [30.0]


PROCESSED_ONE = {
    "num_events_received": 1,
    "num_events_processed": 1,
    "events": [{"status": "processed", "error_message": "", "warning_message": ""}],
}


async def test_retry_after_http_date_is_measured_against_the_answers_date(
    make_transport, httpx_mock, clock
):
    """A skewed local clock does not change the wait the server asked for."""
    httpx_mock.add_response(
        status_code=503,
        headers={
            "Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT",
            "Date": "Wed, 21 Oct 2015 07:27:00 GMT",
        },
    )
    httpx_mock.add_response(json=PROCESSED_ONE)

    result = await resolve(make_transport().send(events(1)))

    assert result.ok
    assert clock.sleeps == [60.0]


@pytest.mark.parametrize(
    "retry_after",
    ["Wed, 21 Oct 2015 07:28:00 GMT", "soon", "-5", "inf", "nan", ""],
)
async def test_a_past_or_unreadable_retry_after_leaves_the_backoff(
    make_transport, httpx_mock, clock, retry_after
):
    httpx_mock.add_response(status_code=429, headers={"Retry-After": retry_after})
    httpx_mock.add_response(json=PROCESSED_ONE)

    result = await resolve(make_transport().send(events(1)))

    assert result.ok
    assert clock.sleeps == [0.1]


@pytest.mark.parametrize(
    ("retry_after", "expected"),
    [
        ("120", 120.0),
        ("1.5", 1.5),
        ("Wed, 21 Oct 2015 07:30:00 GMT", 180.0),
        ("Wednesday, 21-Oct-15 07:29:00 GMT", 120.0),
        ("Wed, 21 Oct 2015 07:20:00 GMT", 0.0),
        ("later", None),
    ],
)
async def test_a_rate_limit_error_carries_retry_after_in_seconds(
    make_transport, httpx_mock, retry_after, expected
):
    httpx_mock.add_response(
        status_code=429,
        headers={"Retry-After": retry_after, "Date": "Wed, 21 Oct 2015 07:27:00 GMT"},
    )

    with pytest.raises(RateLimitError) as caught:
        await resolve(make_transport(retry=RetryPolicy(attempts=1)).send(events(1)))

    assert caught.value.retry_after == expected


async def test_backoff_wins_over_a_shorter_retry_after(
    make_transport, fake_pinterest, clock
):
    fake_pinterest.fail_next(1, status=429, retry_after=0)
    policy = RetryPolicy(initial_backoff=2.0, jitter=0)

    await resolve(make_transport(retry=policy).send(events(1)))

    assert clock.sleeps == [2.0]


@pytest.mark.parametrize("status", [408, 500, 502, 503, 504])
async def test_server_errors_are_retried_with_exponential_backoff(
    make_transport, fake_pinterest, clock, status
):
    fake_pinterest.fail_next(3, status=status)
    policy = RetryPolicy(initial_backoff=1.0, multiplier=2.0, jitter=0)

    result = await resolve(make_transport(retry=policy).send(events(1)))

    assert result.ok
    assert clock.sleeps == [1.0, 2.0, 4.0]


async def test_jitter_keeps_each_wait_within_its_share_of_the_backoff(
    make_transport, fake_pinterest, clock
):
    fake_pinterest.fail_next(3, status=503)
    policy = RetryPolicy(initial_backoff=1.0, multiplier=2.0, jitter=0.5)

    await resolve(make_transport(retry=policy).send(events(1)))

    for wait, base in zip(clock.sleeps, [1.0, 2.0, 4.0], strict=True):
        assert base / 2 <= wait <= base


async def test_timeouts_are_retried(make_transport, fake_pinterest):
    fake_pinterest.timeout_next(2)

    result = await resolve(make_transport().send(events(1)))

    assert result.ok
    assert len(fake_pinterest.requests) == 3


async def test_connection_errors_are_retried(make_transport, httpx_mock):
    fake = FakePinterestAPI()
    httpx_mock.add_exception(httpx.ConnectError("connection refused"))
    httpx_mock.add_callback(fake.handle, is_reusable=True)

    result = await resolve(make_transport().send(events(1)))

    assert result.ok
    assert len(fake.events) == 1


async def test_retries_stop_when_the_time_budget_is_spent(
    make_transport, fake_pinterest, clock
):
    fake_pinterest.fail_next(20, status=503)
    policy = RetryPolicy(
        attempts=20, initial_backoff=1.0, multiplier=2.0, jitter=0, total_budget=10.0
    )

    with pytest.raises(APIError) as caught:
        await resolve(make_transport(retry=policy).send(events(1)))

    assert caught.value.status_code == 503
    assert clock.sleeps == [1.0, 2.0, 4.0]
    assert len(fake_pinterest.requests) == 4


async def test_a_retry_after_beyond_the_budget_gives_up_at_once(
    make_transport, fake_pinterest, clock
):
    fake_pinterest.fail_next(1, status=429, retry_after=3600)

    with pytest.raises(RateLimitError) as caught:
        await resolve(make_transport().send(events(1)))

    assert caught.value.retry_after == 3600
    assert clock.sleeps == []


async def test_retries_stop_after_the_last_attempt(
    make_transport, fake_pinterest, clock
):
    fake_pinterest.fail_next(5, status=500)

    with pytest.raises(APIError):
        await resolve(make_transport(retry=RetryPolicy(attempts=3)).send(events(1)))

    assert len(fake_pinterest.requests) == 3


@pytest.mark.parametrize("status", [400, 401, 403, 422])
async def test_client_errors_are_never_retried(
    make_transport, fake_pinterest, clock, status
):
    fake_pinterest.fail_next(1, status=status)

    with pytest.raises(APIError):
        await resolve(make_transport().send(events(1)))

    assert len(fake_pinterest.requests) == 1
    assert clock.sleeps == []


async def test_a_retried_request_is_byte_identical(make_transport, fake_pinterest):
    fake_pinterest.fail_next(2, status=503)

    await resolve(make_transport().send([event(0), event(1)]))

    first, *retries = [request.body for request in fake_pinterest.requests]
    assert len(retries) == 2
    assert all(body == first for body in retries)


async def test_a_retried_event_keeps_its_id_and_time(make_transport, fake_pinterest):
    fake_pinterest.fail_next(1, status=503)

    await resolve(make_transport().send([event(0)]))

    sent = [request.json()["data"][0] for request in fake_pinterest.requests]
    assert sent[0]["event_id"] == sent[1]["event_id"] == "evt-0"
    assert sent[0]["event_time"] == sent[1]["event_time"]


# --- errors ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "error_class", "code"),
    [
        (400, APIError, 4196),
        (401, APIError, 2),
        (403, APIError, 29),
        (429, RateLimitError, 8),
        (500, APIError, 1),
        (503, APIError, 4197),
    ],
)
async def test_a_final_failure_raises_a_typed_error_with_pinterests_code(
    make_transport, fake_pinterest, status, error_class, code
):
    fake_pinterest.fail_next(1, status=status, message="Pinterest said no.")

    with pytest.raises(error_class) as caught:
        await resolve(make_transport(retry=RetryPolicy(attempts=1)).send(events(1)))

    assert type(caught.value) is error_class
    assert (caught.value.status_code, caught.value.code) == (status, code)
    assert caught.value.message == "Pinterest said no."


async def test_a_wrong_token_raises_authentication_failed(
    make_transport, fake_pinterest
):
    with pytest.raises(APIError) as caught:
        await resolve(make_transport(access_token="pina_wrong").send(events(1)))

    assert (caught.value.status_code, caught.value.code) == (401, 2)


async def test_another_ad_account_raises_forbidden(make_transport, fake_pinterest):
    with pytest.raises(APIError) as caught:
        await resolve(make_transport(ad_account_id="42").send(events(1)))

    assert (caught.value.status_code, caught.value.code) == (403, 29)


@pytest.mark.parametrize("status", [401, 403])
async def test_an_account_refusal_is_an_api_error_with_its_status_and_no_retry(
    make_transport, httpx_mock, clock, status
):
    httpx_mock.add_response(status_code=status, json={"code": 2, "message": "No."})

    with pytest.raises(APIError) as caught:
        await resolve(make_transport().send(events(1)))

    assert type(caught.value) is APIError
    assert (caught.value.status_code, caught.value.code) == (status, 2)
    assert not caught.value.is_retryable
    assert clock.sleeps == []


@pytest.mark.parametrize("status", [401, 403])
async def test_a_token_echoed_in_an_error_message_is_redacted(
    make_transport, httpx_mock, status
):
    """A gateway that repeats the Authorization header must not leak it."""
    echo = f"Invalid header: Authorization: Bearer {FAKE_ACCESS_TOKEN}"
    httpx_mock.add_response(status_code=status, json={"code": 2, "message": echo})

    with pytest.raises(APIError) as caught:
        await resolve(make_transport().send(events(1)))

    error = caught.value
    assert error.status_code == status
    for text in (str(error), repr(error), error.message or ""):
        assert FAKE_ACCESS_TOKEN not in text
    assert error.message == "Invalid header: Authorization: Bearer <redacted>"


def test_answer_text_redacts_the_token_before_cutting_the_text():
    """Cut first, a token across the cut would be left half visible."""
    text = "x" * 490 + FAKE_ACCESS_TOKEN

    cleaned = _answer_text(text, FAKE_ACCESS_TOKEN, ())

    assert cleaned == ("x" * 490 + "<redacted>")[:500]
    assert FAKE_ACCESS_TOKEN[:5] not in cleaned


@pytest.mark.parametrize("value", [None, "", 42, ["message"]])
def test_answer_text_is_none_for_anything_but_a_non_empty_string(value):
    assert _answer_text(value, FAKE_ACCESS_TOKEN, ()) is None


# --- Pinterest's messages that repeat what was sent --------------------------------

IP = "203.0.113.77"


def marked_event() -> WireEvent:
    return event(
        7,
        name="markerevent",
        email=EMAIL,
        event_time=int(time.time()),
        custom_data={"order_id": "ORD-MARKER-9", "value": "1234.56", "num_items": 12},
    ).to_wire_event()


def rejected_with(message: str) -> dict[str, Any]:
    result = {"status": "failed", "error_message": message, "warning_message": ""}
    return {"num_events_received": 1, "num_events_processed": 0, "events": [result]}


@pytest.mark.parametrize(
    "message",
    [
        f"bad em {EMAIL_HASH}",
        f"bad em {EMAIL_HASH.upper()}",
        "order   ord-marker-9 is closed",
        "1234.56 is too much",
    ],
)
def test_a_message_repeating_a_value_sent_is_withheld(message):
    """Even hashed, an email is an identifier (#3)."""
    assert _answer_text(message, FAKE_ACCESS_TOKEN, [marked_event()]) == (
        WITHHELD_MESSAGE
    )


@pytest.mark.parametrize(
    "message",
    [
        "markerevent is not an event Pinterest knows",
        "event evt-7 is a duplicate",
        "12 items is too many",
        "event_time is too old",
    ],
)
def test_a_message_quoting_what_is_shown_anyway_is_kept(message):
    """The event's name and id, short numbers: no value of a person."""
    assert _answer_text(message, FAKE_ACCESS_TOKEN, [marked_event()]) == message


async def test_per_event_messages_repeating_a_value_are_withheld(
    make_transport, httpx_mock
):
    """Results feed the dispatcher's logs, the outbox's reasons and the CLI."""
    httpx_mock.add_response(json=rejected_with(f"bad em {EMAIL_HASH}"))

    result = await resolve(make_transport().send([event(0, email=EMAIL)]))

    assert [r.error_message for r in result.results] == [WITHHELD_MESSAGE]


async def test_a_warning_repeating_the_ip_address_is_withheld(
    make_transport, httpx_mock
):
    wire = build_event(
        "checkout",
        user_data={"client_ip_address": IP, "client_user_agent": "Mozilla/5.0"},
    ).to_wire_event()
    entry = {"status": "processed", "error_message": "", "warning_message": IP}
    body = {"num_events_received": 1, "num_events_processed": 1, "events": [entry]}
    httpx_mock.add_response(json=body)

    result = await resolve(make_transport().send([wire]))

    assert [r.warning_message for r in result.results] == [WITHHELD_MESSAGE]


async def test_an_error_message_repeating_a_value_of_the_request_is_withheld(
    make_transport, httpx_mock
):
    """APIError's message reaches logs, on_error and `request failed: ...`."""
    echo = f"Invalid parameter: em {EMAIL_HASH}"
    httpx_mock.add_response(status_code=400, json={"code": 1, "message": echo})

    with pytest.raises(APIError) as caught:
        await resolve(make_transport().send([event(0, email=EMAIL)]))

    assert caught.value.message == WITHHELD_MESSAGE
    assert EMAIL_HASH not in str(caught.value)


async def test_a_token_across_the_cut_of_a_long_error_message_is_redacted(
    make_transport, httpx_mock
):
    message = "Invalid header: " + "x" * 470 + f" Bearer {FAKE_ACCESS_TOKEN}"
    assert len(message) > 500 > message.index(FAKE_ACCESS_TOKEN)
    httpx_mock.add_response(status_code=400, json={"code": 1, "message": message})

    with pytest.raises(APIError) as caught:
        await resolve(make_transport().send(events(1)))

    error = caught.value
    assert error.message is not None
    assert len(error.message) <= 500
    for text in (str(error), repr(error), error.message):
        assert FAKE_ACCESS_TOKEN[:5] not in text


@pytest.mark.parametrize("status", [200, 422])
async def test_a_token_in_per_event_messages_is_redacted(
    make_transport, httpx_mock, status
):
    echo = f"Authorization: Bearer {FAKE_ACCESS_TOKEN}"
    long_echo = "y" * 490 + FAKE_ACCESS_TOKEN
    summary = {
        "num_events_received": 3,
        "num_events_processed": 1,
        "events": [
            {"status": "processed", "error_message": "", "warning_message": echo},
            {"status": "failed", "error_message": echo, "warning_message": ""},
            {"status": "failed", "error_message": long_echo, "warning_message": ""},
        ],
    }
    body = (
        summary if status == 200 else {"code": 953, "message": "no", "details": summary}
    )
    httpx_mock.add_response(status_code=status, json=body)

    result = await resolve(make_transport().send(events(3)))

    messages = [
        text
        for r in result.results
        for text in (r.error_message, r.warning_message)
        if text
    ]
    assert messages == [
        "Authorization: Bearer <redacted>",
        "Authorization: Bearer <redacted>",
        ("y" * 490 + "<redacted>")[:500],
    ]


async def test_a_429_error_carries_retry_after(make_transport, fake_pinterest):
    fake_pinterest.fail_next(1, status=429, retry_after=12)

    with pytest.raises(RateLimitError) as caught:
        await resolve(make_transport(retry=RetryPolicy(attempts=1)).send(events(1)))

    assert caught.value.retry_after == 12


@pytest.mark.parametrize(
    "body", [b"<html>Bad gateway</html>", b"[1, 2]", b'{"code": "x", "message": 5}']
)
async def test_an_error_body_of_unknown_shape_still_gives_the_status(
    make_transport, httpx_mock, body
):
    httpx_mock.add_response(status_code=502, content=body)

    with pytest.raises(APIError) as caught:
        await resolve(make_transport(retry=RetryPolicy(attempts=1)).send(events(1)))

    assert (caught.value.status_code, caught.value.code) == (502, None)
    assert caught.value.message is None


async def test_a_422_without_details_raises(make_transport, httpx_mock):
    httpx_mock.add_response(status_code=422, json={"code": 953, "message": "no"})

    with pytest.raises(APIError) as caught:
        await resolve(make_transport().send(events(1)))

    assert caught.value.status_code == 422


async def test_a_timeout_raises_transport_error_chained_from_httpx(
    make_transport, fake_pinterest
):
    fake_pinterest.timeout_next(1)

    with pytest.raises(TransportError) as caught:
        await resolve(make_transport(retry=RetryPolicy(attempts=1)).send(events(1)))

    assert isinstance(caught.value.__cause__, httpx.ReadTimeout)
    assert "timed out" in str(caught.value)


async def test_an_unsupported_scheme_is_not_retried(make_transport, httpx_mock):
    httpx_mock.add_exception(httpx.UnsupportedProtocol("no"))

    with pytest.raises(TransportError):
        await resolve(make_transport().send(events(1)))

    assert len(httpx_mock.get_requests()) == 1


async def test_with_raise_on_error_off_a_failed_request_is_reported(
    make_transport, fake_pinterest
):
    fake_pinterest.fail_next(1, status=400)

    result = await resolve(make_transport().send(events(2), raise_on_error=False))

    assert [type(e) for e in result.errors] == [APIError]
    assert [r.status for r in result.results] == [EventStatus.NOT_SENT] * 2
    assert "400" in result.results[0].error_message


async def test_with_raise_on_error_off_a_bad_request_does_not_stop_the_rest(
    make_transport, fake_pinterest
):
    fake_pinterest.fail_next(1, status=400)

    result = await resolve(make_transport().send(events(1500), raise_on_error=False))

    assert len(result.not_sent) == 1000
    assert len(result.processed) == 500


async def test_with_raise_on_error_off_an_auth_failure_skips_the_rest(
    make_transport, fake_pinterest
):
    transport = make_transport(access_token="pina_wrong")

    result = await resolve(transport.send(events(2500), raise_on_error=False))

    assert len(fake_pinterest.requests) == 1
    assert len(result.not_sent) == 2500
    assert len(result.errors) == 1


def fail_the_second_request(
    httpx_mock: Any,
) -> tuple[FakePinterestAPI, list[httpx.Request]]:
    """The fake answers every request but the second, which gets a final 503."""
    fake = FakePinterestAPI()
    answered: list[httpx.Request] = []

    def second_request_fails(request: httpx.Request) -> httpx.Response:
        answered.append(request)
        if len(answered) == 2:
            return httpx.Response(503, json={"code": 4197, "message": "down"})
        return fake.handle(request)

    httpx_mock.add_callback(second_request_fails, is_reusable=True)
    return fake, answered


async def test_an_error_midway_raises_after_earlier_requests_were_delivered(
    make_transport, httpx_mock
):
    fake, answered = fail_the_second_request(httpx_mock)
    transport = make_transport(retry=RetryPolicy(attempts=1))

    with pytest.raises(APIError):
        await resolve(transport.send(events(2500)))

    assert len(fake.events) == 1000
    assert len(answered) == 2


async def test_an_error_midway_carries_what_became_of_every_event(
    make_transport, httpx_mock
):
    fail_the_second_request(httpx_mock)
    transport = make_transport(retry=RetryPolicy(attempts=1))

    with pytest.raises(APIError) as caught:
        await resolve(transport.send(events(2500)))

    result = caught.value.send_result
    assert result is not None
    assert [r.index for r in result.results] == list(range(2500))
    assert [r.event_id for r in result.results] == [f"evt-{n}" for n in range(2500)]
    assert [r.status for r in result.results] == (
        [EventStatus.PROCESSED] * 1000 + [EventStatus.NOT_SENT] * 1500
    )
    assert result.errors == [caught.value]
    assert result.results[1000].error_message.startswith("request failed:")
    assert result.results[2000].error_message.startswith("not attempted")


async def test_a_failed_first_request_carries_every_event_as_not_sent(
    make_transport, fake_pinterest
):
    fake_pinterest.timeout_next(1)

    with pytest.raises(TransportError) as caught:
        await resolve(make_transport(retry=RetryPolicy(attempts=1)).send(events(3)))

    result = caught.value.send_result
    assert result is not None
    assert [r.status for r in result.not_sent] == [EventStatus.NOT_SENT] * 3
    assert not result.ok


async def test_errors_are_conversions_errors(make_transport, fake_pinterest):
    fake_pinterest.timeout_next(1)

    with pytest.raises(ConversionsError):
        await resolve(make_transport(retry=RetryPolicy(attempts=1)).send(events(1)))


# --- test mode ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("test_mode", "test", "expected"),
    [
        (False, None, {}),
        (True, None, {"test": "true"}),
        (True, False, {}),
        (False, True, {"test": "true"}),
    ],
)
async def test_test_mode_follows_the_call_then_the_transport(
    make_transport, fake_pinterest, test_mode, test, expected
):
    transport = make_transport(test_mode=test_mode)

    await resolve(transport.send(events(1), test=test))

    assert fake_pinterest.requests[0].query == expected


@pytest.mark.parametrize("test_mode", ["false", "true", 0, 1, None])
async def test_a_test_mode_that_is_not_a_boolean_is_refused_at_construction(
    make_transport, test_mode
):
    with pytest.raises(ConfigurationError, match="test_mode"):
        make_transport(test_mode=test_mode)


@pytest.mark.parametrize("test", ["false", "true", 0, 1])
async def test_a_test_argument_that_is_not_a_boolean_is_refused(
    make_transport, fake_pinterest, test
):
    transport = make_transport()

    with pytest.raises(TypeError, match="test"):
        await resolve(transport.send(events(1), test=test))
    with pytest.raises(TypeError, match="test"):
        await resolve(transport.send_batch(events(1), test=test))
    assert fake_pinterest.requests == []


async def test_test_requests_are_validated_but_not_recorded(
    make_transport, fake_pinterest
):
    await resolve(make_transport(test_mode=True).send(events(2)))

    assert fake_pinterest.events == []
    assert len(fake_pinterest.test_events) == 2


async def test_send_batch_follows_test_mode(make_transport, fake_pinterest):
    await resolve(make_transport().send_batch(events(1), test=True))

    assert fake_pinterest.requests[0].is_test


# --- configuration -----------------------------------------------------------


@pytest.mark.parametrize(
    "ad_account_id", ["", "12a", "-1", "1" * 19, "١٢٣", " 123", 12.0, None]
)
async def test_an_unusable_ad_account_is_refused_at_construction(
    make_transport, fake_pinterest, ad_account_id
):
    with pytest.raises(ConfigurationError):
        make_transport(ad_account_id=ad_account_id)

    assert fake_pinterest.requests == []


async def test_an_integer_ad_account_is_accepted(make_transport, fake_pinterest):
    result = await resolve(
        make_transport(ad_account_id=int(FAKE_AD_ACCOUNT_ID)).send(events(1))
    )

    assert result.ok


@pytest.mark.parametrize(
    "token", ["", "pina token", "pina_token\n", "\tpina", "pina_tökén", None]
)
async def test_an_unusable_token_is_refused_without_repeating_it(make_transport, token):
    with pytest.raises(ConfigurationError) as caught:
        make_transport(access_token=token)

    assert not token or token.strip() not in str(caught.value)


@pytest.mark.parametrize(
    "api_url",
    [
        "ftp://api.pinterest.com",
        "https://user:secret@api.pinterest.com",
        "https://api.pinterest.com/?x=1",
        "api.pinterest.com",
        "https://",
    ],
)
async def test_an_unusable_api_url_is_refused(make_transport, api_url):
    with pytest.raises(ConfigurationError):
        make_transport(api_url=api_url)


@pytest.mark.parametrize("seconds", [0, -1, float("inf"), float("nan"), "10"])
async def test_an_unusable_timeout_is_refused(make_transport, seconds):
    with pytest.raises(ConfigurationError):
        make_transport(timeout=seconds)


@pytest.mark.parametrize(
    "options",
    [
        {"attempts": 0},
        {"initial_backoff": -1},
        {"total_budget": float("inf")},
        {"multiplier": 0.5},
        {"jitter": 2},
    ],
)
def test_an_unusable_retry_policy_is_refused(options):
    with pytest.raises(ConfigurationError):
        RetryPolicy(**options)


@pytest.mark.parametrize(
    ("argument", "environment", "expected"),
    [
        (None, None, DEFAULT_API_URL),
        (None, "http://127.0.0.1:8080/", "http://127.0.0.1:8080"),
        ("http://localhost:1", "http://127.0.0.1:8080", "http://localhost:1"),
    ],
)
async def test_the_api_url_comes_from_argument_then_environment_then_default(
    make_transport, monkeypatch, argument, environment, expected
):
    monkeypatch.delenv("PINTEREST_API_URL", raising=False)
    if environment:
        monkeypatch.setenv("PINTEREST_API_URL", environment)

    assert make_transport(api_url=argument).api_url == expected


async def test_requests_go_to_the_ad_accounts_events_path(
    make_transport, fake_pinterest
):
    await resolve(make_transport().send(events(1)))

    request = fake_pinterest.requests[0]
    assert (request.method, request.path) == ("POST", EVENTS_PATH)
    assert request.headers["content-type"] == "application/json"


async def test_the_default_timeout_is_finite(make_transport, kind):
    transport = make_transport()

    timeout = transport._client.timeout
    assert all(
        value is not None and value <= 10
        for value in (timeout.connect, timeout.read, timeout.write, timeout.pool)
    )


def timeouts_of(request: httpx.Request) -> dict[str, float | None]:
    timeout: dict[str, float | None] = request.extensions["timeout"]
    return timeout


async def test_a_callers_client_without_timeouts_gets_ours(
    kind, fake_pinterest, httpx_mock, caplog
):
    """`timeout=None` would let a request wait forever (#3)."""
    client_class = httpx.Client if kind == "sync" else httpx.AsyncClient
    client = client_class(timeout=httpx.Timeout(None, read=30.0))
    transport_class = Transport if kind == "sync" else AsyncTransport
    transport = transport_class(
        FAKE_ACCESS_TOKEN, FAKE_AD_ACCOUNT_ID, http_client=client, timeout=7
    )

    await resolve(transport.send(events(1)))

    [request] = httpx_mock.get_requests()
    assert timeouts_of(request) == {
        "connect": 5.0,
        "read": 30.0,
        "write": 7.0,
        "pool": 7.0,
    }
    assert "leaves some timeouts unbounded" in caplog.text
    await resolve(client.close() if kind == "sync" else client.aclose())


async def test_a_callers_client_keeps_its_own_finite_timeouts(
    kind, fake_pinterest, httpx_mock, caplog
):
    client_class = httpx.Client if kind == "sync" else httpx.AsyncClient
    client = client_class(timeout=httpx.Timeout(60.0, connect=1.0))
    transport_class = Transport if kind == "sync" else AsyncTransport
    transport = transport_class(
        FAKE_ACCESS_TOKEN, FAKE_AD_ACCOUNT_ID, http_client=client
    )

    await resolve(transport.send(events(1)))

    [request] = httpx_mock.get_requests()
    assert timeouts_of(request) == {
        "connect": 1.0,
        "read": 60.0,
        "write": 60.0,
        "pool": 60.0,
    }
    assert caplog.records == []
    await resolve(client.close() if kind == "sync" else client.aclose())


async def test_one_pooled_client_serves_every_request(
    make_transport, fake_pinterest, monkeypatch, kind
):
    client_class = httpx.Client if kind == "sync" else httpx.AsyncClient
    created = []
    original_init = client_class.__init__

    def counting_init(self: Any, *args: Any, **kwargs: Any) -> None:
        created.append(self)
        original_init(self, *args, **kwargs)

    monkeypatch.setattr(client_class, "__init__", counting_init)
    transport = make_transport()

    await resolve(transport.send(events(1500)))
    await resolve(transport.send(events(1)))

    assert len(fake_pinterest.requests) == 3
    assert len(created) == 1


async def test_a_callers_client_is_used_and_left_open(kind, clock, fake_pinterest):
    client_class = httpx.Client if kind == "sync" else httpx.AsyncClient
    client = client_class(headers={"X-Caller": "yes"})
    if kind == "sync":
        with Transport(FAKE_ACCESS_TOKEN, FAKE_AD_ACCOUNT_ID, http_client=client) as t:
            t.send(events(1))
    else:
        async with AsyncTransport(
            FAKE_ACCESS_TOKEN, FAKE_AD_ACCOUNT_ID, http_client=client
        ) as t:
            await t.send(events(1))

    assert fake_pinterest.requests[0].headers["x-caller"] == "yes"
    assert not client.is_closed
    await resolve(client.close() if kind == "sync" else client.aclose())


async def test_closing_releases_the_transports_own_client(kind):
    if kind == "sync":
        with Transport(FAKE_ACCESS_TOKEN, FAKE_AD_ACCOUNT_ID) as transport:
            pass
    else:
        async with AsyncTransport(FAKE_ACCESS_TOKEN, FAKE_AD_ACCOUNT_ID) as transport:
            pass

    assert transport._client.is_closed


async def test_a_closed_transport_refuses_to_send(make_transport, fake_pinterest):
    transport = make_transport()
    await resolve(
        transport.close() if isinstance(transport, Transport) else transport.aclose()
    )

    with pytest.raises(TransportError):
        await resolve(transport.send(events(1)))


# --- privacy -----------------------------------------------------------------


async def test_repr_shows_ad_account_and_url_only(make_transport):
    transport = make_transport()

    assert repr(transport) == (
        f"{type(transport).__name__}(ad_account_id={FAKE_AD_ACCOUNT_ID!r}, "
        f"api_url={DEFAULT_API_URL!r})"
    )


async def test_the_token_is_in_no_repr_of_the_transport_state(make_transport):
    transport = make_transport()

    assert FAKE_ACCESS_TOKEN not in repr(vars(transport))


@pytest.mark.parametrize(
    "options",
    [
        {"ad_account_id": "act_123"},
        {"api_url": "ftp://example.com"},
        {"timeout": -1},
        {"access_token": FAKE_ACCESS_TOKEN + " x"},
    ],
    ids=["ad-account", "api-url", "timeout", "token"],
)
async def test_a_construction_error_leaves_no_token_in_any_frame(
    make_transport, options
):
    """Error trackers record local variables: in every frame the token must
    already be hidden when a check raises, and a traceback with locals must
    still render the half-built transport (#3)."""
    with pytest.raises(ConfigurationError) as caught:
        make_transport(**options)

    shown = traceback.TracebackException.from_exception(
        caught.value, capture_locals=True
    )

    ours = [f for f in shown.stack if f.filename.endswith("pinterest_mw/transport.py")]
    assert ours
    assert all(
        FAKE_ACCESS_TOKEN not in text
        for frame in ours
        for text in (frame.locals or {}).values()
    )


def test_the_repr_of_a_half_built_transport_does_not_raise():
    transport = Transport.__new__(Transport)

    assert repr(transport) == "Transport(ad_account_id=None, api_url=None)"


async def test_an_api_url_error_chains_nothing_that_quotes_the_url(make_transport):
    """httpx's InvalidURL quotes the URL, credentials included."""
    with pytest.raises(ConfigurationError) as caught:
        make_transport(api_url="https://user:secret@[::1")

    assert (caught.value.__context__, caught.value.__cause__) == (None, None)


async def test_an_event_that_skipped_validation_is_refused_and_nothing_is_sent(
    make_transport, fake_pinterest
):
    """Raw personal data never reaches Pinterest past validation (#2)."""
    raw = event(1).model_copy(update={"user_data": {"em": "Raw.Person@Example.com"}})

    with pytest.raises(EventValidationError) as caught:
        await resolve(make_transport().send([event(0), raw]))

    assert [e.path for e in caught.value.errors] == ["data.1.user_data"]
    assert "Raw.Person" not in str(caught.value)
    assert fake_pinterest.requests == []


async def test_logs_carry_no_token_and_no_user_data(
    make_transport, fake_pinterest, caplog
):
    caplog.set_level(logging.DEBUG)
    fake_pinterest.fail_next(1, status=429, retry_after=1)
    fake_pinterest.timeout_next(1)
    batch = [event(0, email=EMAIL), stale(event(1).to_wire_event())]

    await resolve(make_transport(test_mode=True).send(batch))
    fake_pinterest.fail_next(1, status=401)
    with pytest.raises(APIError):
        await resolve(make_transport().send(batch))

    ours = [r for r in caplog.records if r.name.startswith("pinterest_mw")]
    assert {logging.DEBUG, logging.WARNING} <= {record.levelno for record in ours}
    assert FAKE_ACCESS_TOKEN not in caplog.text
    for secret in (EMAIL, EMAIL_HASH, "user1", "?test"):
        assert all(secret not in record.getMessage() for record in ours)


@pytest.mark.parametrize("status", [400, 401, 429, 503])
async def test_error_messages_carry_no_token(make_transport, fake_pinterest, status):
    fake_pinterest.fail_next(1, status=status)

    with pytest.raises(APIError) as caught:
        await resolve(make_transport(retry=RetryPolicy(attempts=1)).send(events(1)))

    assert FAKE_ACCESS_TOKEN not in str(caught.value)
    assert FAKE_ACCESS_TOKEN not in repr(caught.value)


async def test_transport_error_messages_carry_no_url_or_token(
    make_transport, httpx_mock
):
    url = f"{DEFAULT_API_URL}{EVENTS_PATH}?test=true&token={FAKE_ACCESS_TOKEN}"
    httpx_mock.add_exception(httpx.ConnectError(f"cannot reach {url}"))

    with pytest.raises(TransportError) as caught:
        await resolve(make_transport(retry=RetryPolicy(attempts=1)).send(events(1)))

    assert FAKE_ACCESS_TOKEN not in str(caught.value)
    assert "api.pinterest.com" not in str(caught.value)
