"""The fake Pinterest API: what it checks, how it answers, how it is scripted."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import sys
import threading
import time
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import httpx
import pytest

from pinterest_mw.events import build_event
from pinterest_mw.exceptions import RateLimitError, TransportError
from pinterest_mw.testing import (
    FAKE_ACCESS_TOKEN,
    FAKE_AD_ACCOUNT_ID,
    FakePinterestAPI,
    serve_fake_api,
)
from pinterest_mw.transport import AsyncTransport, RetryPolicy, Transport

NOW = 1_750_000_000
PATH = f"/v5/ad_accounts/{FAKE_AD_ACCOUNT_ID}/events"
URL = f"https://api.pinterest.com{PATH}"
EM = hashlib.sha256(b"ann@example.com").hexdigest()


def wire_event(**changes: Any) -> dict[str, Any]:
    event: dict[str, Any] = {
        "event_name": "checkout",
        "action_source": "web",
        "event_time": NOW - 60,
        "event_id": "evt-1",
        "user_data": {"em": [EM]},
    }
    event.update(changes)
    return event


def post(
    fake: FakePinterestAPI,
    body: Any = None,
    *,
    url: str = URL,
    method: str = "POST",
    token: str | None = FAKE_ACCESS_TOKEN,
    content: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> httpx.Response:
    """Send one request straight to the fake's pytest-httpx callback."""
    all_headers = {"Content-Type": "application/json", **(headers or {})}
    if token is not None:
        all_headers["Authorization"] = f"Bearer {token}"
    if content is None:
        content = json.dumps(
            {"data": [wire_event()]} if body is None else body
        ).encode()
    request = httpx.Request(method, url, content=content, headers=all_headers)
    return fake.handle(request)


@pytest.fixture
def fake() -> FakePinterestAPI:
    return FakePinterestAPI(clock=lambda: NOW)


# --- answers -----------------------------------------------------------------


def test_valid_events_are_answered_200_with_one_result_each(fake):
    body = {"data": [wire_event(event_id="a"), wire_event(event_id="b")]}

    response = post(fake, body)

    assert response.status_code == 200
    assert response.json() == {
        "num_events_received": 2,
        "num_events_processed": 2,
        "events": [
            {"status": "processed", "error_message": "", "warning_message": ""},
            {"status": "processed", "error_message": "", "warning_message": ""},
        ],
    }


def test_accepted_events_are_recorded_as_parsed_json(fake):
    post(fake, {"data": [wire_event(event_id="a")]})

    assert fake.events == [wire_event(event_id="a")]


def test_requests_are_recorded_without_the_authorization_header(fake):
    post(fake, headers={"X-Extra": "1"}, url=f"{URL}?test=true")

    (request,) = fake.requests
    assert (request.method, request.path, request.query) == (
        "POST",
        PATH,
        {"test": "true"},
    )
    assert request.headers["x-extra"] == "1"
    assert "authorization" not in request.headers
    assert FAKE_ACCESS_TOKEN.encode() not in repr(request).encode()
    assert request.json()["data"][0]["event_id"] == "evt-1"


def test_recorded_request_repr_shows_no_body_or_header_value(fake):
    post(fake, headers={"X-Extra": "header-secret"})

    (request,) = fake.requests
    text = repr(request)
    assert "evt-1" not in text
    assert "header-secret" not in text
    assert f"body=<{len(request.body)} bytes>" in text
    assert "'x-extra'" in text


def test_test_requests_are_validated_but_kept_apart(fake):
    response = post(fake, url=f"{URL}?test=true")

    assert response.status_code == 200
    assert fake.events == []
    assert [e["event_id"] for e in fake.test_events] == ["evt-1"]


@pytest.mark.parametrize(
    ("token", "status", "code"),
    [(None, 401, 2), ("pina_other", 401, 2), (FAKE_ACCESS_TOKEN, 200, None)],
)
def test_the_bearer_token_is_checked(fake, token, status, code):
    response = post(fake, token=token)

    assert response.status_code == status
    assert code is None or response.json()["code"] == code


def test_another_scheme_than_bearer_is_refused(fake):
    response = post(fake, token=None, headers={"Authorization": FAKE_ACCESS_TOKEN})

    assert response.status_code == 401


def test_another_ad_account_is_forbidden(fake):
    response = post(fake, url="https://api.pinterest.com/v5/ad_accounts/42/events")

    assert response.status_code == 403
    assert response.json() == {
        "code": 29,
        "message": "You are not permitted to access that resource.",
    }


@pytest.mark.parametrize("account", ["abc", "1" * 19])
def test_a_malformed_ad_account_is_a_bad_request(fake, account):
    url = f"https://api.pinterest.com/v5/ad_accounts/{account}/events"

    assert post(fake, url=url).status_code == 400


def test_other_paths_are_not_found(fake):
    assert post(fake, url="https://api.pinterest.com/v5/pins").status_code == 404


def test_other_methods_are_not_allowed(fake):
    assert post(fake, method="GET", content=b"").status_code == 405


@pytest.mark.parametrize(
    "body",
    [
        {"data": [wire_event()], "x": 1},
        {"data": [wire_event(x=1)]},
        {"data": [wire_event(custom_data={"x": 1})]},
        {"data": [wire_event(custom_data={"contents": [{"id": "1", "x": 1}]})]},
        {"data": [wire_event(app_info={"x": 1})]},
        {"data": [wire_event(device_info={"x": 1})]},
    ],
    ids=["top", "event", "custom_data", "contents", "app_info", "device_info"],
)
def test_unknown_keys_are_a_bad_request_worded_as_pinterest_does(fake, body):
    response = post(fake, body)

    assert response.status_code == 400
    assert response.json() == {
        "code": 4196,
        "message": (
            "Invalid request: Additional properties are not allowed "
            "('x' was unexpected)"
        ),
    }


@pytest.mark.parametrize(
    "field", ["event_name", "action_source", "event_time", "event_id", "user_data"]
)
def test_a_missing_required_field_is_a_bad_request(fake, field):
    event = wire_event()
    del event[field]

    response = post(fake, {"data": [event]})

    assert response.status_code == 400
    assert field in response.json()["message"]


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"data": []},
        {"data": [wire_event()] * 1001},
        {"data": wire_event()},
        [wire_event()],
        {"data": ["event"]},
    ],
    ids=["no-data", "empty", "1001", "not-array", "not-object", "item-not-object"],
)
def test_a_body_of_the_wrong_shape_is_a_bad_request(fake, body):
    assert post(fake, body).status_code == 400


@pytest.mark.parametrize(
    "event",
    [
        wire_event(event_time="1750000000"),
        wire_event(event_time=True),
        wire_event(event_id=1),
        wire_event(opt_out="yes"),
        wire_event(user_data={"em": EM}),
        wire_event(user_data={"em": [EM], "client_ip_address": 1}),
        wire_event(custom_data={"value": 19.99}),
        wire_event(custom_data={"contents": [{"quantity": "2"}]}),
        wire_event(device_info={"battery_level": 101}),
        wire_event(device_info={"form_factor": "toaster"}),
        wire_event(device_info={"timezone_abbr": "TOOLONG"}),
        wire_event(app_info={"window_width": -1}),
    ],
    ids=[
        "time-string",
        "time-bool",
        "id-int",
        "opt_out-string",
        "hashed-not-array",
        "ip-not-string",
        "value-number",
        "quantity-string",
        "battery-range",
        "form-factor-enum",
        "timezone-length",
        "window-range",
    ],
)
def test_a_value_of_the_wrong_type_or_bounds_is_a_bad_request(fake, event):
    assert post(fake, {"data": [event]}).status_code == 400


@pytest.mark.parametrize(
    "user_data",
    [
        {"ph": [EM]},
        {"client_ip_address": "203.0.113.9"},
        {"external_id": [EM], "client_user_agent": "Mozilla/5.0"},
    ],
)
def test_user_data_without_match_keys_is_a_bad_request(fake, user_data):
    response = post(fake, {"data": [wire_event(user_data=user_data)]})

    assert response.status_code == 400
    assert "em, hashed_maids" in response.json()["message"]


@pytest.mark.parametrize(
    "user_data",
    [
        {"em": [EM]},
        {"hashed_maids": [EM]},
        {"client_ip_address": "203.0.113.9", "client_user_agent": "Mozilla/5.0"},
    ],
)
def test_any_one_match_key_set_satisfies_the_rule(fake, user_data):
    assert post(fake, {"data": [wire_event(user_data=user_data)]}).status_code == 200


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"user_data": {"em": ["ann@example.com"]}}, "user_data.em"),
        ({"user_data": {"em": [EM.upper()]}}, "user_data.em"),
        ({"user_data": {"em": [EM], "ph": [EM[:63]]}}, "user_data.ph"),
        ({"event_time": NOW - 8 * 24 * 3600}, "in the past"),
        ({"event_time": NOW * 1000}, "in the future"),
        ({"action_source": "moon"}, "action_source"),
        ({"event_name": "check-out"}, "event_name"),
        ({"custom_data": {"value": "ten"}}, "custom_data.value"),
        (
            {"custom_data": {"contents": [{"item_price": "nan"}]}},
            "custom_data.contents.0.item_price",
        ),
    ],
)
def test_a_failing_event_gets_a_422_with_per_event_details(fake, changes, message):
    body = {"data": [wire_event(event_id="ok"), wire_event(**changes)]}

    response = post(fake, body)

    assert response.status_code == 422
    answer = response.json()
    assert answer["code"] == 953
    details = answer["details"]
    assert (details["num_events_received"], details["num_events_processed"]) == (2, 1)
    assert [e["status"] for e in details["events"]] == ["processed", "failed"]
    assert message in details["events"][1]["error_message"]
    assert details["events"][0]["error_message"] == ""


@pytest.mark.parametrize(
    "amount",
    ["1_000", " 19.99", "19.99 ", "inf", "-Infinity", "nan", "0x1p3", "", "1e999"],
)
def test_money_must_be_decimal_text_not_anything_float_reads(fake, amount):
    """Python's float() takes "1_000"; a decimal string does not (#3)."""
    body = {"data": [wire_event(custom_data={"predicted_ltv": amount})]}

    details = post(fake, body).json()["details"]

    assert "custom_data.predicted_ltv" in details["events"][0]["error_message"]


@pytest.mark.parametrize("amount", ["19.99", "0", "-5", "+5", ".5", "5.", "1e3", "007"])
def test_decimal_money_in_any_common_spelling_is_accepted(fake, amount):
    body = {"data": [wire_event(custom_data={"value": amount})]}

    assert post(fake, body).status_code == 200


def test_only_the_processed_events_of_a_422_are_recorded(fake):
    stale = wire_event(event_id="old", event_time=NOW - 8 * 24 * 3600)

    post(fake, {"data": [wire_event(event_id="ok"), stale]})

    assert [e["event_id"] for e in fake.events] == ["ok"]


def test_partial_failure_can_be_answered_200(fake):
    fake = FakePinterestAPI(clock=lambda: NOW, partial_failure_status=200)
    stale = wire_event(event_time=NOW - 8 * 24 * 3600)

    response = post(fake, {"data": [stale]})

    assert response.status_code == 200
    assert response.json()["events"][0]["status"] == "failed"


@pytest.mark.parametrize(
    ("changes", "warning"),
    [
        ({"event_name": "loyalty_signup"}, "standard event name"),
        ({"user_data": {"em": [EM], "favourite_colour": "blue"}}, "favourite_colour"),
    ],
)
def test_a_questionable_event_is_processed_with_a_warning(fake, changes, warning):
    response = post(fake, {"data": [wire_event(**changes)]})

    assert response.status_code == 200
    (result,) = response.json()["events"]
    assert result["status"] == "processed"
    assert warning in result["warning_message"]


@pytest.mark.parametrize(
    ("headers", "content"),
    [
        ({"Content-Type": "text/plain"}, b"{}"),
        ({}, b"{not json"),
    ],
)
def test_a_body_that_is_not_json_is_a_bad_request(fake, headers, content):
    assert post(fake, content=content, headers=headers).status_code == 400


def test_a_test_flag_that_is_not_boolean_is_a_bad_request(fake):
    assert post(fake, url=f"{URL}?test=yes").status_code == 400


def test_answers_carry_a_date_from_the_fakes_clock(fake):
    response = post(fake)

    assert response.headers["date"] == "Sun, 15 Jun 2025 15:06:40 GMT"


# --- scripted failures -------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "code"), [(429, 8), (500, 1), (503, 4197), (502, 502)]
)
def test_fail_next_answers_the_status_with_pinterests_error_body(fake, status, code):
    fake.fail_next(1, status=status)

    response = post(fake)

    assert (response.status_code, response.json()["code"]) == (status, code)


def test_fail_next_applies_to_that_many_requests_only(fake):
    fake.fail_next(2, status=503)

    statuses = [post(fake).status_code for _ in range(3)]

    assert statuses == [503, 503, 200]
    assert len(fake.events) == 1


@pytest.mark.parametrize(
    ("retry_after", "header"),
    [
        (7, "7"),
        (1.5, "1.5"),
        (datetime(2025, 6, 15, 15, 7, 10, tzinfo=UTC), "Sun, 15 Jun 2025 15:07:10 GMT"),
        pytest.param(
            datetime(2025, 6, 15, 17, 7, 10, tzinfo=timezone(timedelta(hours=2))),
            "Sun, 15 Jun 2025 15:07:10 GMT",
            id="offset",
        ),
        pytest.param(
            datetime(2025, 6, 15, 15, 7, 10),
            "Sun, 15 Jun 2025 15:07:10 GMT",
            id="naive",
        ),
        ("120", "120"),
    ],
)
def test_fail_next_can_send_retry_after(fake, retry_after, header):
    fake.fail_next(1, status=429, retry_after=retry_after)

    assert post(fake).headers["retry-after"] == header


def test_fail_next_can_replace_code_and_message(fake):
    fake.fail_next(1, status=500, code=77, message="boom")

    assert post(fake).json() == {"code": 77, "message": "boom"}


def test_timeout_next_raises_read_timeout_through_pytest_httpx(fake):
    fake.timeout_next(1)

    with pytest.raises(httpx.ReadTimeout):
        post(fake)

    assert fake.requests[0].status_code is None
    assert post(fake).status_code == 200


def test_random_failures_follow_the_seed():
    def statuses(seed: int) -> list[int]:
        fake = FakePinterestAPI(seed=seed, clock=lambda: NOW)
        fake.fail_randomly(0.3, status=503)
        return [post(fake).status_code for _ in range(100)]

    first = statuses(7)

    assert first == statuses(7)
    assert 10 < first.count(503) < 50


@pytest.mark.parametrize(("fraction", "expected"), [(0.0, 0), (1.0, 20)])
def test_random_failures_of_none_or_all(fake, fraction, expected):
    fake.fail_randomly(fraction, status=500)

    statuses = [post(fake).status_code for _ in range(20)]

    assert statuses.count(500) == expected


def test_random_timeouts_raise_read_timeout(fake):
    fake.timeout_randomly(1.0)

    with pytest.raises(httpx.ReadTimeout):
        post(fake)


@pytest.mark.parametrize("fraction", [-0.1, 1.5])
def test_a_fraction_outside_zero_to_one_is_refused(fake, fraction):
    with pytest.raises(ValueError, match="fraction"):
        fake.fail_randomly(fraction)


def test_reset_forgets_requests_events_and_failures(fake):
    post(fake)
    fake.fail_next(3)
    fake.fail_randomly(1.0)

    fake.reset()

    assert (fake.requests, fake.events) == ([], [])
    assert post(fake).status_code == 200


def test_latency_delays_every_answer(fake, monkeypatch):
    waits: list[float] = []
    monkeypatch.setattr(time, "sleep", waits.append)
    fake.latency = 0.25

    post(fake)

    assert waits == [0.25]


def test_the_fake_is_safe_to_use_from_many_threads(fake):
    def send_many() -> None:
        for _ in range(25):
            post(fake)

    threads = [threading.Thread(target=send_many) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert len(fake.requests) == len(fake.events) == 200


def test_repr_names_the_account_and_counts(fake):
    post(fake)

    assert repr(fake) == (
        f"FakePinterestAPI(ad_account_id={FAKE_AD_ACCOUNT_ID!r}, requests=1, events=1)"
    )


# --- ways in -----------------------------------------------------------------


def test_the_fixture_answers_every_httpx_request(fake_pinterest):
    response = httpx.post(
        URL,
        json={"data": [build_event("lead", user_data={"email": "a@b.co"}).to_wire()]},
        headers={"Authorization": f"Bearer {FAKE_ACCESS_TOKEN}"},
    )

    assert response.status_code == 200
    assert len(fake_pinterest.events) == 1


def test_the_module_imports_without_pytest(monkeypatch):
    """Importing pinterest_mw.testing where pytest is missing defines no fixture."""
    monkeypatch.setitem(sys.modules, "pytest", None)
    spec = importlib.util.find_spec("pinterest_mw.testing")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)

    spec.loader.exec_module(module)

    assert hasattr(module, "FakePinterestAPI")
    assert not hasattr(module, "fake_pinterest")


@pytest.mark.anyio
async def test_the_asgi_app_answers_in_process(fake):
    transport = httpx.ASGITransport(app=fake.app)
    async with httpx.AsyncClient(transport=transport) as client:
        response = await client.post(
            URL,
            json={"data": [wire_event()]},
            headers={"Authorization": f"Bearer {FAKE_ACCESS_TOKEN}"},
        )

    assert response.status_code == 200
    assert len(fake.events) == 1


@pytest.mark.e2e
def test_a_transport_sends_to_the_fake_served_by_uvicorn():
    fake = FakePinterestAPI()
    events = [build_event("checkout", user_data={"email": "a@b.co"}) for _ in range(3)]

    with (
        serve_fake_api(fake) as url,
        Transport(FAKE_ACCESS_TOKEN, FAKE_AD_ACCOUNT_ID, api_url=url) as transport,
    ):
        result = transport.send(events)

    assert url.startswith("http://127.0.0.1:")
    assert result.ok
    assert [e["event_id"] for e in fake.events] == [e.event_id for e in events]


@pytest.mark.e2e
@pytest.mark.anyio
async def test_an_async_transport_finds_the_fake_through_the_environment(
    monkeypatch,
):
    fake = FakePinterestAPI()
    fake.fail_next(1, status=503)

    with serve_fake_api(fake) as url:
        monkeypatch.setenv("PINTEREST_API_URL", url)
        policy = RetryPolicy(initial_backoff=0.01)
        async with AsyncTransport(
            FAKE_ACCESS_TOKEN, FAKE_AD_ACCOUNT_ID, retry=policy
        ) as transport:
            result = await transport.send([build_event("lead", user_data={"em": EM})])

    assert result.ok
    assert [r.status_code for r in fake.requests] == [503, 200]


@pytest.mark.e2e
def test_the_served_fake_sends_retry_after():
    fake = FakePinterestAPI()
    fake.fail_next(1, status=429, retry_after=30)

    with (
        serve_fake_api(fake) as url,
        Transport(
            FAKE_ACCESS_TOKEN,
            FAKE_AD_ACCOUNT_ID,
            api_url=url,
            retry=RetryPolicy(attempts=1),
        ) as transport,
        pytest.raises(RateLimitError) as caught,
    ):
        transport.send([build_event("lead", user_data={"em": EM})])

    assert caught.value.retry_after == 30


@pytest.mark.e2e
def test_a_served_timeout_holds_the_request_past_the_client_timeout():
    fake = FakePinterestAPI(timeout_delay=5.0)
    fake.timeout_next(1)

    with (
        serve_fake_api(fake) as url,
        Transport(
            FAKE_ACCESS_TOKEN,
            FAKE_AD_ACCOUNT_ID,
            api_url=url,
            timeout=0.2,
            retry=RetryPolicy(attempts=1),
        ) as transport,
        pytest.raises(TransportError) as caught,
    ):
        transport.send([build_event("lead", user_data={"em": EM})])

    assert isinstance(caught.value.__cause__, httpx.TimeoutException)


@pytest.mark.e2e
def test_a_served_timeout_that_ends_in_a_504_is_recorded_as_504():
    fake = FakePinterestAPI(timeout_delay=0.05)
    fake.timeout_next(1)
    body = {"data": [wire_event(event_time=int(time.time()))]}

    with serve_fake_api(fake) as url:
        response = httpx.post(
            f"{url}{PATH}",
            json=body,
            headers={"Authorization": f"Bearer {FAKE_ACCESS_TOKEN}"},
            timeout=10,
        )

    assert response.status_code == 504
    assert [request.status_code for request in fake.requests] == [504]


@pytest.mark.e2e
def test_a_served_timeout_the_client_gave_up_on_is_recorded_without_status():
    fake = FakePinterestAPI(timeout_delay=5.0)
    fake.timeout_next(1)

    with serve_fake_api(fake) as url, pytest.raises(httpx.TimeoutException):
        httpx.post(
            f"{url}{PATH}",
            json={"data": [wire_event()]},
            headers={"Authorization": f"Bearer {FAKE_ACCESS_TOKEN}"},
            timeout=0.2,
        )

    assert [request.status_code for request in fake.requests] == [None]


@pytest.mark.e2e
def test_serving_picks_a_free_port_each_time():
    with serve_fake_api() as first, serve_fake_api() as second:
        assert first != second
        assert httpx.get(f"{first}/v5/nowhere").status_code == 404
