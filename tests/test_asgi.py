"""The ASGI sub-app: bodies, enrichment, refusals, CORS, protections, real hosts."""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
from collections.abc import AsyncIterator, Callable, MutableMapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import httpx
import pytest
from _helpers import EMAIL, FAST, FOREIGN, MOCK_URL, SHOP, event
from fastapi import FastAPI
from pytest_httpx import HTTPXMock
from starlette.applications import Starlette
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Mount, Route
from starlette.testclient import TestClient

from pinterest_mw._ingest import QUEUE_FULL_RETRY_AFTER, UNREACHABLE_MESSAGE
from pinterest_mw.asgi import pinterest_app
from pinterest_mw.client import Client
from pinterest_mw.context import TrustedProxies
from pinterest_mw.dispatch import OUTBOX_UNREADABLE
from pinterest_mw.exceptions import ConfigurationError
from pinterest_mw.hashing import sha256_hex
from pinterest_mw.outbox import MemoryOutbox
from pinterest_mw.testing import FAKE_ACCESS_TOKEN, FAKE_AD_ACCOUNT_ID, FakePinterestAPI
from pinterest_mw.transport import Transport

HASHED_EMAIL = sha256_hex("buyer@example.com")
BROWSER_IP = "203.0.113.7"
PROXY_IP = "10.0.0.2"
USER_AGENT = "Mozilla/5.0 (test)"


def http(app: Any, client_ip: str = BROWSER_IP) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, client=(client_ip, 50000))
    return httpx.AsyncClient(transport=transport, base_url="http://testserver")


async def post(
    app: Any,
    body: Any,
    path: str = "/track-event",
    *,
    client_ip: str = BROWSER_IP,
    **headers: str,
) -> httpx.Response:
    headers = {"user-agent": USER_AGENT, **headers}
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers.setdefault("content-type", "application/json")
    async with http(app, client_ip) as session:
        return await session.post(path, content=content, headers=headers)


def delivered_ids(fake: FakePinterestAPI) -> list[str]:
    return [event["event_id"] for event in fake.events]


def asgi_scope(headers: list[tuple[bytes, bytes]]) -> dict[str, Any]:
    """A bare HTTP scope for a POST to /track-event, for hand-driven requests."""
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/track-event",
        "raw_path": b"/track-event",
        "root_path": "",
        "query_string": b"",
        "headers": headers,
        "client": (BROWSER_IP, 1),
        "server": ("testserver", 80),
    }


async def delivered(client: Client, fake: FakePinterestAPI) -> list[dict[str, Any]]:
    assert await client.aflush(timeout=10)
    return fake.events


# --- construction ---------------------------------------------------------------


def test_wildcard_origin_with_credentials_is_refused_at_construction(
    local_client: Client,
) -> None:
    with pytest.raises(ConfigurationError, match="allow_credentials"):
        pinterest_app(local_client, allow_origins=["*"], allow_credentials=True)


@pytest.mark.parametrize(
    "origin", ["https://shop.example/", "shop.example", "https://shop.example/buy"]
)
def test_origin_that_no_browser_sends_is_refused_at_construction(
    local_client: Client, origin: str
) -> None:
    with pytest.raises(ConfigurationError, match="allow_origins"):
        pinterest_app(local_client, allow_origins=[origin])


@pytest.mark.parametrize(
    "options",
    [
        {"allow_origins": SHOP},
        {"allow_origins": [None]},
        {"max_body_size": 0},
        {"rate_limit": 0},
        {"rate_limit": 1, "rate_limit_burst": 0},
        {"trusted_proxies": ["not an address"]},
        {"trusted_proxies": PROXY_IP},
        {"shared_secret": "has a space"},
        {"shared_secret": "s3cret", "shared_secret_header": "Bad Header"},
    ],
)
def test_unusable_option_is_refused_at_construction(
    local_client: Client, options: dict[str, Any]
) -> None:
    with pytest.raises(ConfigurationError):
        pinterest_app(local_client, **options)


def test_a_client_of_another_kind_is_refused(local_client: Client) -> None:
    with pytest.raises(ConfigurationError, match="Client"):
        pinterest_app(object())  # type: ignore[arg-type]


# --- accepting ------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize("path", ["/track-event", "/track-event/"])
async def test_both_path_spellings_accept_without_redirect(
    local_client: Client, path: str
) -> None:
    response = await post(pinterest_app(local_client), event(), path)

    assert response.status_code == 202


@pytest.mark.anyio
async def test_single_event_is_accepted_with_its_event_id(local_client: Client) -> None:
    response = await post(pinterest_app(local_client), event(event_id="order-1"))

    assert response.json() == {"accepted": 1, "event_ids": ["order-1"], "warnings": []}


@pytest.mark.anyio
async def test_data_body_accepts_every_event(local_client: Client) -> None:
    body = {"data": [event(event_id=f"e{i}") for i in range(3)]}

    response = await post(pinterest_app(local_client), body)

    assert response.json()["event_ids"] == ["e0", "e1", "e2"]


@pytest.mark.anyio
@pytest.mark.parametrize(
    "event_data",
    [event(event_id="seed-0"), [event(event_id="seed-0"), event(event_id="seed-1")]],
    ids=["object", "list"],
)
async def test_npm_seed_body_is_accepted(
    make_client: Callable[..., Client], event_data: Any
) -> None:
    app = pinterest_app(make_client())
    body = {"advertiser_id": FAKE_AD_ACCOUNT_ID, "event_data": event_data}

    response = await post(app, body)

    assert response.status_code == 202
    assert response.json()["event_ids"][0] == "seed-0"


@pytest.mark.anyio
async def test_accepted_events_reach_pinterest_hashed(
    client: Client, fake_pinterest: FakePinterestAPI
) -> None:
    await post(pinterest_app(client), event())

    [sent] = await delivered(client, fake_pinterest)
    assert sent["user_data"]["em"] == [HASHED_EMAIL]


@pytest.mark.anyio
async def test_raw_email_never_leaves_the_process(
    client: Client, fake_pinterest: FakePinterestAPI
) -> None:
    await post(pinterest_app(client), {"data": [event(), event(email="x@y.example")]})

    await delivered(client, fake_pinterest)
    assert all(EMAIL.encode() not in r.body for r in fake_pinterest.requests)


@pytest.mark.anyio
async def test_wire_names_and_prehashed_values_are_accepted(
    client: Client, fake_pinterest: FakePinterestAPI
) -> None:
    body = event()
    body["user_data"] = {"em": [HASHED_EMAIL], "ph": "+1 (415) 555-0100"}

    await post(pinterest_app(client), body)

    [sent] = await delivered(client, fake_pinterest)
    assert sent["user_data"]["em"] == [HASHED_EMAIL]
    assert sent["user_data"]["ph"] == [sha256_hex("14155550100")]


@pytest.mark.anyio
async def test_dropped_personal_data_is_a_warning_without_its_value(
    local_client: Client,
) -> None:
    body = {"data": [event(user_data={"email": EMAIL, "phone": "call me maybe"})]}

    response = await post(pinterest_app(local_client), body)

    [warning] = response.json()["warnings"]
    assert warning["path"] == "data.0.user_data.phone"
    assert "call me" not in response.text


@pytest.mark.anyio
async def test_action_source_defaults_to_web(
    client: Client, fake_pinterest: FakePinterestAPI
) -> None:
    body = event()
    del body["action_source"]

    await post(pinterest_app(client), body)

    [sent] = await delivered(client, fake_pinterest)
    assert sent["action_source"] == "web"


# --- enrichment -----------------------------------------------------------------


@pytest.mark.anyio
async def test_request_ip_and_user_agent_replace_the_body_ones(
    client: Client, fake_pinterest: FakePinterestAPI
) -> None:
    body = event()
    body["user_data"].update(client_ip_address="198.51.100.1", user_agent="forged")

    await post(pinterest_app(client), body)

    [sent] = await delivered(client, fake_pinterest)
    assert sent["user_data"]["client_ip_address"] == BROWSER_IP
    assert sent["user_data"]["client_user_agent"] == USER_AGENT


@pytest.mark.anyio
async def test_epik_cookie_becomes_the_click_id(
    client: Client, fake_pinterest: FakePinterestAPI
) -> None:
    await post(pinterest_app(client), event(), cookie="_epik=dj0yJnU9abc")

    [sent] = await delivered(client, fake_pinterest)
    assert sent["user_data"]["click_id"] == "dj0yJnU9abc"


@pytest.mark.anyio
async def test_referer_fills_in_a_missing_event_source_url(
    client: Client, fake_pinterest: FakePinterestAPI
) -> None:
    await post(pinterest_app(client), event(), referer=f"{SHOP}/cart")

    [sent] = await delivered(client, fake_pinterest)
    assert sent["event_source_url"] == f"{SHOP}/cart"


@pytest.mark.anyio
async def test_referer_does_not_replace_the_event_source_url(
    client: Client, fake_pinterest: FakePinterestAPI
) -> None:
    body = event(event_source_url=f"{SHOP}/thanks")

    await post(pinterest_app(client), body, referer=f"{SHOP}/cart")

    [sent] = await delivered(client, fake_pinterest)
    assert sent["event_source_url"] == f"{SHOP}/thanks"


@pytest.mark.anyio
async def test_forwarded_for_through_a_trusted_proxy_is_the_client_ip(
    client: Client, fake_pinterest: FakePinterestAPI
) -> None:
    app = pinterest_app(client, trusted_proxies=["10.0.0.0/8"])

    await post(app, event(), client_ip=PROXY_IP, **{"x-forwarded-for": f"{BROWSER_IP}"})

    [sent] = await delivered(client, fake_pinterest)
    assert sent["user_data"]["client_ip_address"] == BROWSER_IP


@pytest.mark.anyio
async def test_trusted_proxies_may_be_given_ready_made(
    client: Client, fake_pinterest: FakePinterestAPI
) -> None:
    app = pinterest_app(client, trusted_proxies=TrustedProxies([PROXY_IP]))

    await post(app, event(), client_ip=PROXY_IP, **{"x-forwarded-for": BROWSER_IP})

    [sent] = await delivered(client, fake_pinterest)
    assert sent["user_data"]["client_ip_address"] == BROWSER_IP


@pytest.mark.anyio
async def test_forwarded_for_from_an_untrusted_peer_is_ignored(
    client: Client, fake_pinterest: FakePinterestAPI
) -> None:
    app = pinterest_app(client, trusted_proxies=["10.0.0.0/8"])

    await post(app, event(), **{"x-forwarded-for": "198.51.100.99"})

    [sent] = await delivered(client, fake_pinterest)
    assert sent["user_data"]["client_ip_address"] == BROWSER_IP


@pytest.mark.anyio
async def test_trusted_proxies_default_to_the_environment(
    client: Client, fake_pinterest: FakePinterestAPI, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PINTEREST_TRUSTED_PROXIES", "192.0.2.1, 10.0.0.0/8")
    app = pinterest_app(client)

    await post(app, event(), client_ip=PROXY_IP, **{"x-forwarded-for": BROWSER_IP})

    [sent] = await delivered(client, fake_pinterest)
    assert sent["user_data"]["client_ip_address"] == BROWSER_IP


# --- advertiser ids -------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize("advertiser_id", [FAKE_AD_ACCOUNT_ID, int(FAKE_AD_ACCOUNT_ID)])
async def test_the_own_ad_account_may_be_named(
    client: Client, advertiser_id: str | int
) -> None:
    body = {"advertiser_id": advertiser_id, "data": [event()]}

    response = await post(pinterest_app(client), body)

    assert response.status_code == 202


@pytest.mark.anyio
@pytest.mark.parametrize("advertiser_id", ["1", 42, True, ["549755813888"], {}])
async def test_another_advertiser_id_is_forbidden(
    client: Client, advertiser_id: Any
) -> None:
    body = {"advertiser_id": advertiser_id, "event_data": event()}

    response = await post(pinterest_app(client), body)

    assert response.status_code == 403
    assert response.json()["field"] == "advertiser_id"


@pytest.mark.anyio
async def test_forbidden_advertiser_queues_nothing(client: Client) -> None:
    body = {"advertiser_id": "1", "event_data": event()}

    await post(pinterest_app(client), body)

    assert (await client.acounters()).accepted == 0


# --- bad input ------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize(
    "body",
    [b"", b"{", b"\xff\xfe{}", b'{"event_name": NaN}', b"[" * 50_000],
    ids=["empty", "truncated", "not-utf8", "nan", "too-deep"],
)
async def test_malformed_json_is_400(local_client: Client, body: bytes) -> None:
    response = await post(pinterest_app(local_client), body)

    assert response.status_code == 400
    assert response.json()["error"] == "malformed_json"


@pytest.mark.anyio
async def test_json_nested_too_deeply_is_told_apart_from_broken_json(
    local_client: Client,
) -> None:
    """Valid JSON past the decoder's depth is not called invalid."""
    app = pinterest_app(local_client)

    deep = await post(app, b"[" * 5_000 + b"]" * 5_000)
    broken = await post(app, b"{")

    assert deep.status_code == broken.status_code == 400
    assert "nested too deeply" in deep.json()["message"]
    assert "not valid UTF-8 JSON" in broken.json()["message"]


@pytest.mark.anyio
@pytest.mark.parametrize(
    "content_type",
    ["application/x-www-form-urlencoded", "multipart/form-data", "application/xml"],
)
async def test_other_content_types_are_415(
    local_client: Client, content_type: str
) -> None:
    response = await post(
        pinterest_app(local_client), event(), **{"content-type": content_type}
    )

    assert response.status_code == 415


@pytest.mark.anyio
async def test_missing_content_type_is_415(local_client: Client) -> None:
    async with http(pinterest_app(local_client)) as session:
        response = await session.post("/track-event", content=b"{}")

    assert response.status_code == 415


@pytest.mark.anyio
@pytest.mark.parametrize(
    "content_type",
    ["application/json", "application/json; charset=utf-8", "text/plain;charset=UTF-8"],
)
async def test_json_and_beacon_content_types_are_accepted(
    local_client: Client, content_type: str
) -> None:
    response = await post(
        pinterest_app(local_client), event(), **{"content-type": content_type}
    )

    assert response.status_code == 202


@pytest.mark.anyio
async def test_declared_body_over_the_limit_is_413(local_client: Client) -> None:
    app = pinterest_app(local_client, max_body_size=100)

    response = await post(app, event(custom_data={"search_string": "x" * 200}))

    assert response.status_code == 413
    assert response.json()["limit"] == 100


@pytest.mark.anyio
async def test_streamed_body_over_the_limit_is_413(local_client: Client) -> None:
    """Without Content-Length the body is read in chunks and refused past the limit."""
    app = pinterest_app(local_client, max_body_size=1000)

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(100):
            yield b" " * 100

    async with http(app) as session:
        response = await session.post(
            "/track-event",
            content=chunks(),
            headers={"content-type": "application/json"},
        )

    assert response.status_code == 413


@pytest.mark.anyio
async def test_streamed_body_within_the_limit_is_accepted(
    local_client: Client,
) -> None:
    body = json.dumps(event()).encode()

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(body), 10):
            yield body[start : start + 10]

    async with http(pinterest_app(local_client)) as session:
        response = await session.post(
            "/track-event",
            content=chunks(),
            headers={"content-type": "application/json", "user-agent": USER_AGENT},
        )

    assert response.status_code == 202


@pytest.mark.anyio
async def test_non_numeric_content_length_is_400(local_client: Client) -> None:
    app = pinterest_app(local_client)
    scope_headers = [
        (b"content-type", b"application/json"),
        (b"content-length", b"ten"),
    ]
    messages: list[MutableMapping[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"{}", "more_body": False}

    async def send(message: MutableMapping[str, Any]) -> None:
        messages.append(message)

    await app(asgi_scope(scope_headers), receive, send)

    assert messages[0]["status"] == 400


@pytest.mark.anyio
async def test_invalid_events_are_422_with_every_path(local_client: Client) -> None:
    body = {
        "data": [
            event(),
            event(event_time="yesterday"),
            event(custom_data={"value": "lots", "currency": "dollars"}),
        ]
    }

    response = await post(pinterest_app(local_client), body)

    assert response.status_code == 422
    paths = {error["path"] for error in response.json()["errors"]}
    assert paths == {
        "data.1.event_time",
        "data.2.custom_data.value",
        "data.2.custom_data.currency",
    }


@pytest.mark.anyio
async def test_a_lone_surrogate_is_422_naming_its_path(local_client: Client) -> None:
    """JSON's "\\ud800" decodes to text that no UTF-8 payload can carry."""
    body = b'{"data": [%s, %s]}' % (
        json.dumps(event()).encode(),
        json.dumps(event(custom_data={"search_string": "x"}))
        .encode()
        .replace(b'"x"', b'"\\ud800"'),
    )

    response = await post(pinterest_app(local_client), body)

    assert response.status_code == 422
    assert [error["path"] for error in response.json()["errors"]] == [
        "data.1.custom_data.search_string"
    ]
    assert (await local_client.acounters()).accepted == 0


@pytest.mark.anyio
async def test_invalid_events_queue_nothing(local_client: Client) -> None:
    body = {"data": [event(), event(event_time="yesterday")]}

    await post(pinterest_app(local_client), body)

    assert (await local_client.acounters()).accepted == 0


@pytest.mark.anyio
async def test_invalid_event_answer_repeats_no_value(local_client: Client) -> None:
    body = event(event_time="not-a-time", user_data={"email": EMAIL, "bogus": EMAIL})

    response = await post(pinterest_app(local_client), body)

    assert response.status_code == 422
    assert EMAIL not in response.text
    assert "not-a-time" not in response.text


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("body", "path"),
    [
        ([event()], "body"),
        ("checkout", "body"),
        ({"data": []}, "data"),
        ({"data": event()}, "data"),
        ({"data": [event()] * 1001}, "data"),
        ({"data": [event()], "extra": 1}, "extra"),
        ({"data": ["checkout"]}, "data.0"),
        ({"advertiser_id": FAKE_AD_ACCOUNT_ID}, "event_data"),
        ({"event_data": "checkout"}, "event_data"),
        (event(user_data="buyer@example.com"), "user_data"),
    ],
    ids=[
        "list",
        "string",
        "empty-data",
        "data-object",
        "too-many",
        "extra-key",
        "data-item",
        "seed-without-events",
        "seed-string",
        "user-data-string",
    ],
)
async def test_body_of_the_wrong_shape_is_422_naming_the_path(
    local_client: Client, body: Any, path: str
) -> None:
    app = pinterest_app(local_client, max_body_size=1 << 20)

    response = await post(app, body)

    assert response.status_code == 422
    assert [error["path"] for error in response.json()["errors"]] == [path]


@pytest.mark.anyio
async def test_other_methods_are_405(local_client: Client) -> None:
    async with http(pinterest_app(local_client)) as session:
        response = await session.get("/track-event")

    assert response.status_code == 405
    assert response.headers["allow"] == "POST"
    assert response.json()["error"] == "method_not_allowed"


@pytest.mark.anyio
async def test_unknown_path_is_404_json(local_client: Client) -> None:
    async with http(pinterest_app(local_client)) as session:
        response = await session.get("/nowhere")

    assert response.status_code == 404
    assert response.json()["error"] == "not_found"


@pytest.mark.anyio
async def test_failure_of_our_own_code_is_503_not_500(
    local_client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(events: Any) -> int:
        raise RuntimeError("boom")

    monkeypatch.setattr(local_client, "asubmit", broken)

    response = await post(pinterest_app(local_client), event())

    assert response.status_code == 503
    assert response.headers["retry-after"]


@pytest.mark.anyio
async def test_failing_health_is_503_not_500(
    local_client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken() -> Any:
        raise OSError("disk gone")

    monkeypatch.setattr(local_client, "acounters", broken)

    async with http(pinterest_app(local_client)) as session:
        response = await session.get("/health")

    assert response.status_code == 503


@pytest.mark.anyio
async def test_client_gone_before_its_body_is_answered_quietly(
    local_client: Client, caplog: pytest.LogCaptureFixture
) -> None:
    """A browser that leaves mid-body gets no 500 and logs no error."""
    app = pinterest_app(local_client)
    messages: list[MutableMapping[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.disconnect"}

    async def send(message: MutableMapping[str, Any]) -> None:
        messages.append(message)

    scope = asgi_scope([(b"content-type", b"application/json")])
    with caplog.at_level(logging.WARNING, logger="pinterest_mw"):
        await app(scope, receive, send)

    assert messages[0]["status"] == 400
    assert caplog.records == []


@pytest.mark.anyio
async def test_failure_log_holds_no_personal_data(
    local_client: Client,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def broken(events: Any) -> int:
        raise RuntimeError(EMAIL)

    monkeypatch.setattr(local_client, "asubmit", broken)

    with caplog.at_level(logging.DEBUG, logger="pinterest_mw"):
        await post(pinterest_app(local_client), event())

    assert "RuntimeError" in caplog.text
    assert EMAIL not in caplog.text


@pytest.mark.anyio
async def test_logs_of_a_tracked_request_hold_no_personal_data(
    client: Client, fake_pinterest: FakePinterestAPI, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG, logger="pinterest_mw"):
        await post(pinterest_app(client), event(), referer=f"{SHOP}/?q=secret")
        await delivered(client, fake_pinterest)

    for secret in (EMAIL, HASHED_EMAIL, BROWSER_IP, USER_AGENT, "q=secret"):
        assert secret not in caplog.text


# --- the queue ------------------------------------------------------------------


@pytest.mark.anyio
async def test_full_queue_answers_503_naming_the_dropped_events() -> None:
    with Client(sending=False, outbox=MemoryOutbox(2), **FAST) as client:
        body = {"data": [event(event_id=f"e{i}") for i in range(3)]}

        response = await post(pinterest_app(client), body)

    assert response.status_code == 503
    assert response.headers["retry-after"] == str(QUEUE_FULL_RETRY_AFTER)
    assert response.json()["event_ids"] == ["e0", "e1"]
    assert response.json()["dropped_event_ids"] == ["e2"]


@pytest.mark.anyio
async def test_full_queue_under_the_raise_policy_accepts_nothing() -> None:
    with Client(
        sending=False, outbox=MemoryOutbox(2), overflow="raise", **FAST
    ) as client:
        body = {"data": [event(event_id=f"e{i}") for i in range(3)]}

        response = await post(pinterest_app(client), body)

    assert response.status_code == 503
    assert response.json()["accepted"] == 0


@pytest.mark.anyio
async def test_no_event_lost_or_duplicated_while_pinterest_refuses(
    client: Client, fake_pinterest: FakePinterestAPI
) -> None:
    """429s and 503s for a while: every event arrives, exactly once."""
    fake_pinterest.fail_next(3, status=429, retry_after=0)
    fake_pinterest.fail_next(2, status=503)
    app = pinterest_app(client)
    posted: list[str] = []
    for request in range(4):
        body = {"data": [event(event_id=f"r{request}-{i}") for i in range(3)]}
        response = await post(app, body)
        posted += response.json()["event_ids"]

    events = await delivered(client, fake_pinterest)

    assert sorted(e["event_id"] for e in events) == sorted(posted)


# --- the test endpoint ----------------------------------------------------------


@pytest.mark.anyio
async def test_test_endpoint_answers_with_pinterest_verdict_per_event(
    client: Client, fake_pinterest: FakePinterestAPI
) -> None:
    body = {"data": [event(event_id="a"), event(event_id="b", event_name="my_own")]}

    response = await post(
        pinterest_app(client, test_endpoint=True), body, "/track-event-test"
    )

    assert response.status_code == 200
    results = response.json()["results"]
    assert [(r["event_id"], r["status"]) for r in results] == [
        ("a", "processed"),
        ("b", "warned"),
    ]
    assert response.json()["sent_to_pinterest"] is True


@pytest.mark.anyio
async def test_test_endpoint_sends_in_test_mode_only(
    client: Client, fake_pinterest: FakePinterestAPI
) -> None:
    await post(pinterest_app(client, test_endpoint=True), event(), "/track-event-test/")

    assert len(fake_pinterest.test_events) == 1
    assert fake_pinterest.events == []


@pytest.mark.anyio
async def test_test_endpoint_without_credentials_says_nothing_was_sent(
    local_client: Client,
) -> None:
    response = await post(
        pinterest_app(local_client, test_endpoint=True),
        event(event_id="x"),
        "/track-event-test",
    )

    assert response.status_code == 200
    assert response.json()["sent_to_pinterest"] is False
    assert response.json()["results"][0]["event_id"] == "x"


@pytest.mark.anyio
async def test_test_endpoint_reports_an_unreachable_pinterest_as_502(
    client: Client, fake_pinterest: FakePinterestAPI
) -> None:
    fake_pinterest.fail_next(1, status=503)

    response = await post(
        pinterest_app(client, test_endpoint=True), event(), "/track-event-test"
    )

    assert response.status_code == 502
    assert response.json()["results"][0]["status"] == "not_sent"


@pytest.mark.anyio
async def test_test_endpoint_reports_a_timeout_as_502(
    client: Client, fake_pinterest: FakePinterestAPI
) -> None:
    fake_pinterest.timeout_next(1)

    response = await post(
        pinterest_app(client, test_endpoint=True), event(), "/track-event-test"
    )

    assert response.status_code == 502
    assert response.json()["errors"][0]["message"] == "Pinterest could not be reached"


@pytest.mark.anyio
async def test_test_endpoint_refuses_invalid_events(client: Client) -> None:
    response = await post(
        pinterest_app(client, test_endpoint=True),
        event(event_time="later"),
        "/track-event-test",
    )

    assert response.status_code == 422


@pytest.mark.anyio
async def test_test_endpoint_can_be_switched_off(local_client: Client) -> None:
    app = pinterest_app(local_client, test_endpoint=False)

    response = await post(app, event(), "/track-event-test")

    assert response.status_code == 404


# --- health ---------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize("path", ["/health", "/health/"])
async def test_health_reports_the_counters(local_client: Client, path: str) -> None:
    app = pinterest_app(local_client)
    await post(app, event())

    async with http(app) as session:
        response = await session.get(path)

    assert response.status_code == 200
    assert response.json()["counters"]["accepted"] == 1


@pytest.mark.anyio
async def test_health_shows_no_token(client: Client) -> None:
    async with http(pinterest_app(client)) as session:
        response = await session.get("/health")

    assert FAKE_ACCESS_TOKEN not in response.text


# --- CORS -----------------------------------------------------------------------


async def preflight(app: Any, origin: str, **headers: str) -> httpx.Response:
    async with http(app) as session:
        return await session.options(
            "/track-event",
            headers={
                "origin": origin,
                "access-control-request-method": "POST",
                "access-control-request-headers": "content-type",
                **headers,
            },
        )


@pytest.mark.anyio
async def test_preflight_from_an_allowed_origin_is_allowed(
    local_client: Client,
) -> None:
    response = await preflight(pinterest_app(local_client, allow_origins=[SHOP]), SHOP)

    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == SHOP


@pytest.mark.anyio
async def test_preflight_from_a_foreign_origin_is_refused(local_client: Client) -> None:
    app = pinterest_app(local_client, allow_origins=[SHOP])

    response = await preflight(app, FOREIGN)

    assert response.status_code == 400
    assert "access-control-allow-origin" not in response.headers


@pytest.mark.anyio
async def test_response_to_an_allowed_origin_names_it(local_client: Client) -> None:
    app = pinterest_app(local_client, allow_origins=[SHOP])

    response = await post(app, event(), origin=SHOP)

    assert response.status_code == 202
    assert response.headers["access-control-allow-origin"] == SHOP


@pytest.mark.anyio
async def test_response_to_a_foreign_origin_does_not_allow_it(
    local_client: Client,
) -> None:
    app = pinterest_app(local_client, allow_origins=[SHOP])

    response = await post(app, event(), origin=FOREIGN)

    assert "access-control-allow-origin" not in response.headers


@pytest.mark.anyio
async def test_error_response_carries_the_cors_headers(local_client: Client) -> None:
    app = pinterest_app(local_client, allow_origins=[SHOP])

    response = await post(app, b"{", origin=SHOP)

    assert response.status_code == 400
    assert response.headers["access-control-allow-origin"] == SHOP


@pytest.mark.anyio
async def test_retry_after_is_readable_by_the_page(local_client: Client) -> None:
    app = pinterest_app(local_client, allow_origins=[SHOP])

    response = await post(app, event(), origin=SHOP)

    assert response.headers["access-control-expose-headers"] == "Retry-After"


@pytest.mark.anyio
async def test_allowed_origins_default_to_the_environment(
    local_client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PINTEREST_ALLOW_ORIGINS", f"{SHOP}, https://other.example")

    response = await preflight(pinterest_app(local_client), SHOP)

    assert response.headers["access-control-allow-origin"] == SHOP


# --- shared secret and rate limit -----------------------------------------------

SECRET = "s3cret-value"


@pytest.mark.anyio
@pytest.mark.parametrize("given", [None, "wrong", "s3cret-valuE", "s3cret-value-x"])
async def test_missing_or_wrong_secret_is_401(
    local_client: Client, given: str | None
) -> None:
    app = pinterest_app(local_client, shared_secret=SECRET)
    headers = {} if given is None else {"x-pinterest-mw-secret": given}

    response = await post(app, event(), **headers)

    assert response.status_code == 401


@pytest.mark.anyio
async def test_right_secret_is_accepted(local_client: Client) -> None:
    app = pinterest_app(
        local_client, shared_secret=SECRET, shared_secret_header="X-Shop-Key"
    )

    response = await post(app, event(), **{"x-shop-key": SECRET})

    assert response.status_code == 202


@pytest.mark.anyio
async def test_secret_defaults_to_the_environment(
    local_client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PINTEREST_SHARED_SECRET", SECRET)

    response = await post(pinterest_app(local_client), event())

    assert response.status_code == 401


@pytest.mark.anyio
async def test_preflight_allows_the_secret_header(local_client: Client) -> None:
    app = pinterest_app(local_client, allow_origins=[SHOP], shared_secret=SECRET)

    response = await preflight(
        app,
        SHOP,
        **{"access-control-request-headers": "content-type, x-pinterest-mw-secret"},
    )

    assert response.status_code == 200


@pytest.mark.anyio
async def test_requests_over_the_rate_limit_get_429(local_client: Client) -> None:
    app = pinterest_app(local_client, rate_limit=0.01, rate_limit_burst=2)

    statuses = [(await post(app, event())).status_code for _ in range(3)]

    assert statuses == [202, 202, 429]


@pytest.mark.anyio
async def test_rate_limited_answer_says_when_to_retry(local_client: Client) -> None:
    app = pinterest_app(local_client, rate_limit=0.5, rate_limit_burst=1)
    await post(app, event())

    response = await post(app, event())

    assert response.headers["retry-after"] == "2"


@pytest.mark.anyio
async def test_rate_limit_counts_each_client_ip_apart(local_client: Client) -> None:
    app = pinterest_app(local_client, rate_limit=0.01, rate_limit_burst=1)
    await post(app, event(), client_ip="198.51.100.1")

    response = await post(app, event(), client_ip="198.51.100.2")

    assert response.status_code == 202


# --- real host apps -------------------------------------------------------------


def test_mounted_under_a_starlette_app_with_its_own_lifespan_delivers(
    client: Client, fake_pinterest: FakePinterestAPI
) -> None:
    """Starlette runs no lifespan for mounted apps: delivery starts by itself."""
    started: list[bool] = []

    @asynccontextmanager
    async def host_lifespan(app: Starlette) -> AsyncIterator[None]:
        started.append(True)
        yield

    async def home(request: Request) -> JSONResponse:
        return JSONResponse({"ok": True})

    host = Starlette(
        routes=[Route("/", home), Mount("/pinterest", pinterest_app(client))],
        lifespan=host_lifespan,
    )
    with TestClient(host, client=(BROWSER_IP, 1)) as browser:
        response = browser.post(
            "/pinterest/track-event", json=event(), headers={"user-agent": USER_AGENT}
        )
        assert client.flush(timeout=10)

    assert started == [True]
    assert response.status_code == 202
    assert delivered_ids(fake_pinterest) == response.json()["event_ids"]


def test_mounted_under_fastapi_delivers(
    client: Client, fake_pinterest: FakePinterestAPI
) -> None:
    host = FastAPI()
    host.mount("/pinterest", pinterest_app(client))

    with TestClient(host, client=(BROWSER_IP, 1)) as browser:
        response = browser.post(
            "/pinterest/track-event/", json=event(), headers={"user-agent": USER_AGENT}
        )
        assert client.flush(timeout=10)

    assert delivered_ids(fake_pinterest) == response.json()["event_ids"]


def test_mounted_app_builds_its_page_url_from_the_referer_not_the_mount(
    client: Client, fake_pinterest: FakePinterestAPI
) -> None:
    host = FastAPI()
    host.mount("/pinterest", pinterest_app(client))

    with TestClient(host, client=(BROWSER_IP, 1)) as browser:
        browser.post(
            "/pinterest/track-event",
            json=event(),
            headers={"user-agent": USER_AGENT, "referer": f"{SHOP}/p/1"},
        )
        assert client.flush(timeout=10)

    assert fake_pinterest.events[0]["event_source_url"] == f"{SHOP}/p/1"


# --- origins of posts -----------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("options", "origin"),
    [
        ({"allow_origins": [SHOP]}, FOREIGN),
        ({"allow_origins": [SHOP]}, "null"),
        ({}, FOREIGN),
        ({}, "null"),
        ({}, "http://testserver.evil.example"),
    ],
    ids=["unlisted", "null", "none-listed", "none-listed-null", "lookalike-host"],
)
async def test_post_from_an_unlisted_origin_is_403(
    local_client: Client, options: dict[str, Any], origin: str
) -> None:
    """CORS alone would let the post through: a page can post text/plain."""
    app = pinterest_app(local_client, **options)

    response = await post(app, event(), origin=origin, **{"content-type": "text/plain"})

    assert response.status_code == 403
    assert response.json()["error"] == "origin_not_allowed"
    assert origin not in response.text
    assert (await local_client.acounters()).accepted == 0


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("options", "headers"),
    [
        ({"allow_origins": [SHOP]}, {"origin": SHOP}),
        ({"allow_origins": ["*"]}, {"origin": FOREIGN}),
        ({"allow_origins": ["*"]}, {"origin": "null"}),
        ({}, {"origin": "http://testserver"}),
        ({}, {"origin": "https://testserver"}),
        ({}, {"origin": "http://shop.example", "host": "shop.example:80"}),
        ({}, {}),
    ],
    ids=[
        "listed",
        "any",
        "any-null",
        "same-host",
        "same-host-behind-tls-proxy",
        "default-port",
        "no-origin",
    ],
)
async def test_post_from_an_allowed_origin_or_without_one_is_accepted(
    local_client: Client, options: dict[str, Any], headers: dict[str, str]
) -> None:
    response = await post(pinterest_app(local_client, **options), event(), **headers)

    assert response.status_code == 202


@pytest.mark.anyio
async def test_origin_refusal_still_carries_cors_headers(local_client: Client) -> None:
    app = pinterest_app(local_client, allow_origins=[SHOP])

    response = await post(app, event(), origin=FOREIGN)

    assert response.headers["vary"] == "Origin"
    assert "access-control-allow-origin" not in response.headers


# --- values a body may not choose -----------------------------------------------


@pytest.mark.anyio
async def test_body_ip_and_user_agent_are_dropped_when_the_request_has_none(
    client: Client, fake_pinterest: FakePinterestAPI
) -> None:
    body = event()
    body["user_data"].update(client_ip_address="198.51.100.1", user_agent="forged")

    await post(pinterest_app(client), body, client_ip="unknown", **{"user-agent": ""})

    [sent] = await delivered(client, fake_pinterest)
    assert "client_ip_address" not in sent["user_data"]
    assert "client_user_agent" not in sent["user_data"]


@pytest.mark.anyio
async def test_body_click_id_is_kept_when_the_request_has_none(
    client: Client, fake_pinterest: FakePinterestAPI
) -> None:
    body = event()
    body["user_data"]["click_id"] = "from-the-page"

    await post(pinterest_app(client), body)

    [sent] = await delivered(client, fake_pinterest)
    assert sent["user_data"]["click_id"] == "from-the-page"


@pytest.mark.anyio
async def test_referer_query_string_is_not_sent_except_marketing_parameters(
    client: Client, fake_pinterest: FakePinterestAPI
) -> None:
    referer = f"{SHOP}/reset?email=buyer%40example.com&utm_source=pin&epik=e1"

    await post(pinterest_app(client), event(), referer=referer)

    [sent] = await delivered(client, fake_pinterest)
    assert sent["event_source_url"] == f"{SHOP}/reset?utm_source=pin&epik=e1"


@pytest.mark.anyio
async def test_event_source_url_of_the_body_is_sent_as_given(
    client: Client, fake_pinterest: FakePinterestAPI
) -> None:
    url = f"{SHOP}/thanks?order=17#top"

    await post(pinterest_app(client), event(event_source_url=url))

    [sent] = await delivered(client, fake_pinterest)
    assert sent["event_source_url"] == url


@pytest.mark.anyio
async def test_malformed_referer_and_host_are_dropped_not_a_failure(
    client: Client, fake_pinterest: FakePinterestAPI
) -> None:
    response = await post(
        pinterest_app(client), event(), referer="http://[::1/?epik=x", host="[::1"
    )

    [sent] = await delivered(client, fake_pinterest)
    assert response.status_code == 202
    assert "event_source_url" not in sent


@pytest.mark.anyio
async def test_advertiser_refusal_says_how_to_allow_it(client: Client) -> None:
    body = {"advertiser_id": "1", "event_data": event()}

    response = await post(pinterest_app(client), body)

    assert "PINTEREST_ADVERTISER_IDS" in response.json()["message"]
    assert "advertiser_ids=" in response.json()["message"]


@pytest.mark.anyio
async def test_advertiser_refusal_promises_no_routing(client: Client) -> None:
    """Every event goes to the client's ad account, whatever the body names."""
    body = {"advertiser_id": "1", "event_data": event()}

    response = await post(pinterest_app(client), body)

    message = response.json()["message"]
    assert "sends events for" not in message
    assert "whatever the body names" in message


# --- the test endpoint is opt-in -------------------------------------------------


@pytest.mark.anyio
async def test_test_endpoint_is_off_by_default(
    client: Client,
    fake_pinterest: FakePinterestAPI,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("PINTEREST_TEST_ENDPOINT", raising=False)

    response = await post(pinterest_app(client), event(), "/track-event-test")

    assert response.status_code == 404
    assert fake_pinterest.test_events == []


@pytest.mark.anyio
@pytest.mark.parametrize(("value", "status"), [("1", 200), ("off", 404)])
async def test_test_endpoint_follows_the_environment(
    local_client: Client, monkeypatch: pytest.MonkeyPatch, value: str, status: int
) -> None:
    monkeypatch.setenv("PINTEREST_TEST_ENDPOINT", value)

    response = await post(pinterest_app(local_client), event(), "/track-event-test")

    assert response.status_code == status


def test_unusable_test_endpoint_setting_is_refused_at_construction(
    local_client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PINTEREST_TEST_ENDPOINT", "maybe")

    with pytest.raises(ConfigurationError, match="PINTEREST_TEST_ENDPOINT"):
        pinterest_app(local_client)


@pytest.mark.anyio
async def test_test_endpoint_reuses_one_transport(
    client: Client,
    fake_pinterest: FakePinterestAPI,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """No HTTP client is built per call: one transport (with its shorter
    budget, see `TEST_SEND_WITHIN`) sends them all."""
    built: list[Transport] = []

    def counted_transport(*args: Any, **kwargs: Any) -> Transport:
        built.append(Transport(*args, **kwargs))
        return built[-1]

    def no_async_transport(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("an async transport was built for a test call")

    transport = client.transport
    monkeypatch.setattr("pinterest_mw.client.AsyncTransport", no_async_transport)
    monkeypatch.setattr("pinterest_mw.client.Transport", counted_transport)
    app = pinterest_app(client, test_endpoint=True)

    statuses = [
        (await post(app, event(), "/track-event-test")).status_code for _ in range(2)
    ]

    assert statuses == [200, 200]
    assert len(built) == 1
    assert client.transport is transport
    assert len(fake_pinterest.test_events) == 2


# --- what a durable outbox kept, the outbox failing --------------------------------


def keep_events(path: Path, count: int) -> list[str]:
    """Events a client without credentials kept in the outbox at `path`."""
    with Client(sending=False, outbox=path) as keeper:
        return [keeper.track(event()).event_id for _ in range(count)]


async def wait_for_delivery(fake: FakePinterestAPI, count: int) -> list[str]:
    """The ids Pinterest got, once it got `count` events (or 10 s passed)."""
    with anyio.move_on_after(10):
        while len(fake.events) < count:  # noqa: ASYNC110 - polls another thread's work
            await anyio.sleep(0.01)
    return sorted(delivered_ids(fake))


@pytest.mark.anyio
async def test_the_first_request_of_any_kind_sends_what_the_outbox_kept(
    make_client: Callable[..., Client],
    fake_pinterest: FakePinterestAPI,
    tmp_path: Path,
) -> None:
    """Mounted without a lifespan: a health check is enough to start."""
    kept = keep_events(tmp_path / "outbox.sqlite3", 2)
    app = pinterest_app(make_client(outbox=tmp_path / "outbox.sqlite3"))

    async with http(app) as session:
        await session.get("/health")

    assert await wait_for_delivery(fake_pinterest, 2) == sorted(kept)


@pytest.mark.anyio
async def test_a_thread_dispatcher_sends_what_the_outbox_kept_from_the_start(
    make_client: Callable[..., Client],
    fake_pinterest: FakePinterestAPI,
    tmp_path: Path,
) -> None:
    kept = keep_events(tmp_path / "outbox.sqlite3", 1)

    pinterest_app(make_client(outbox=tmp_path / "outbox.sqlite3", dispatcher="thread"))

    assert await wait_for_delivery(fake_pinterest, 1) == kept


def test_an_app_that_started_delivery_when_built_does_not_start_it_again(
    make_client: Callable[..., Client],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    """One switch per process, whoever flips it: the build or a request."""
    keep_events(tmp_path / "outbox.sqlite3", 1)
    client = make_client(outbox=tmp_path / "outbox.sqlite3", dispatcher="thread")
    started: list[bool] = []
    monkeypatch.setattr(client, "start", lambda: started.append(True))
    app = pinterest_app(client)

    with TestClient(app) as session:
        session.get("/health")
        session.get("/health")

    assert started == [True]


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/health"),
        ("POST", "/track-event"),
        ("GET", "/track-event"),
        ("GET", "/no-such-page"),
    ],
)
def test_any_request_but_a_preflight_starts_delivery_once(
    make_client: Callable[..., Client],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    method: str,
    path: str,
) -> None:
    client = make_client(outbox=tmp_path / "outbox.sqlite3")
    app = pinterest_app(client)
    started: list[bool] = []
    monkeypatch.setattr(client, "start", lambda: started.append(True))

    with TestClient(app) as session:
        session.options(
            "/track-event",
            headers={"origin": SHOP, "access-control-request-method": "POST"},
        )
        assert started == []
        session.request(method, path, json=event())
        session.request(method, path, json=event())

    assert started == [True]


def test_delivery_is_started_without_a_middleware_layer(client: Client) -> None:
    """Every request would pay for it; the endpoints start it themselves."""
    app = pinterest_app(client)

    assert [middleware.cls for middleware in app.user_middleware] == [CORSMiddleware]


class UnreadableOutbox(MemoryOutbox):
    """Every claim fails, as a damaged file's do."""

    def claim(self, limit: int, *, lease: float) -> Any:
        raise sqlite3.DatabaseError("database disk image is malformed")


@pytest.mark.anyio
async def test_health_says_degraded_while_the_outbox_cannot_be_read(
    make_client: Callable[..., Client],
) -> None:
    client = make_client(outbox=UnreadableOutbox())
    app = pinterest_app(client)
    await post(app, event())

    with anyio.fail_after(10):
        while not client.counters.outbox_errors:  # noqa: ASYNC110 - polls a worker
            await anyio.sleep(0.01)
    async with http(app) as session:
        health = (await session.get("/health")).json()

    assert (health["status"], health["problem"]) == ("degraded", OUTBOX_UNREADABLE)
    assert health["counters"]["outbox_errors"] >= 1


@pytest.mark.anyio
async def test_health_is_ok_while_delivery_works(client: Client) -> None:
    async with http(pinterest_app(client)) as session:
        health = (await session.get("/health")).json()

    assert health["status"] == "ok"
    assert "problem" not in health


# --- the test endpoint's answers and threads ---------------------------------------


@pytest.mark.anyio
async def test_test_endpoint_says_nothing_reached_pinterest_when_it_was_not(
    client: Client, fake_pinterest: FakePinterestAPI
) -> None:
    fake_pinterest.timeout_next(1)

    response = await post(
        pinterest_app(client, test_endpoint=True), event(), "/track-event-test"
    )

    answer = response.json()
    assert response.status_code == 502
    assert answer["sent_to_pinterest"] is False
    assert answer["message"] == UNREACHABLE_MESSAGE


@pytest.mark.anyio
async def test_test_endpoint_says_pinterest_answered_when_it_refused(
    client: Client, fake_pinterest: FakePinterestAPI
) -> None:
    fake_pinterest.fail_next(1, status=503)

    response = await post(
        pinterest_app(client, test_endpoint=True), event(), "/track-event-test"
    )

    assert response.status_code == 502
    assert response.json()["sent_to_pinterest"] is True


@pytest.mark.anyio
async def test_test_sends_hold_no_thread_of_the_default_pool(
    httpx_mock: HTTPXMock, tmp_path: Path
) -> None:
    """With one thread in anyio's pool, `/health` (a durable outbox's read)
    still answers while a test send waits for Pinterest."""
    fake = FakePinterestAPI()
    entered, release = threading.Event(), threading.Event()

    def held(request: httpx.Request) -> httpx.Response:
        entered.set()
        release.wait(10)
        return fake.handle(request)

    httpx_mock.add_callback(held, is_reusable=True)
    client = Client(
        FAKE_ACCESS_TOKEN,
        FAKE_AD_ACCOUNT_ID,
        api_url=MOCK_URL,
        outbox=tmp_path / "outbox.sqlite3",
    )
    app = pinterest_app(client, test_endpoint=True)
    pool = anyio.to_thread.current_default_thread_limiter()
    size, pool.total_tokens = pool.total_tokens, 1
    try:
        async with anyio.create_task_group() as group:
            group.start_soon(post, app, event(), "/track-event-test")
            await anyio.to_thread.run_sync(entered.wait, 10)
            with anyio.fail_after(10):
                async with http(app) as session:
                    health = await session.get("/health")
            release.set()
    finally:
        release.set()
        pool.total_tokens = size
        client.close(timeout=0)

    assert health.status_code == 200
