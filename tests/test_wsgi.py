"""The WSGI twin: the same answers as the ASGI app, a thread dispatcher, Flask."""

from __future__ import annotations

import io
import json
import logging
import os
import sqlite3
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from _helpers import EMAIL, FAST, FOREIGN, MOCK_URL, SHOP, event
from flask import Flask
from pytest_httpx import HTTPXMock
from starlette.testclient import TestClient
from werkzeug.middleware.dispatcher import DispatcherMiddleware

from pinterest_mw.asgi import pinterest_app
from pinterest_mw.client import Client
from pinterest_mw.dispatch import OUTBOX_UNREADABLE, ThreadDispatcher
from pinterest_mw.exceptions import ConfigurationError
from pinterest_mw.hashing import sha256_hex
from pinterest_mw.outbox import MemoryOutbox
from pinterest_mw.testing import FAKE_ACCESS_TOKEN, FAKE_AD_ACCOUNT_ID, FakePinterestAPI
from pinterest_mw.wsgi import pinterest_wsgi_app

HASHED_EMAIL = sha256_hex("buyer@example.com")
BROWSER_IP = "203.0.113.7"
USER_AGENT = "Mozilla/5.0 (test)"
SECRET = "s3cret-value"


def http(app: Any, client_ip: str = BROWSER_IP) -> httpx.Client:
    transport = httpx.WSGITransport(app=app, remote_addr=client_ip)
    return httpx.Client(transport=transport, base_url="http://testserver")


def post(
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
    with http(app, client_ip) as session:
        return session.post(path, content=content, headers=headers)


def delivered(client: Client, fake: FakePinterestAPI) -> list[dict[str, Any]]:
    assert client.flush(timeout=10)
    return fake.events


def call(app: Any, environ: dict[str, Any]) -> tuple[str, bytes]:
    """Call a WSGI app directly with a hand-made environ; return status and body."""
    statuses: list[str] = []

    def start_response(status: str, headers: list[tuple[str, str]]) -> None:
        statuses.append(status)

    body = b"".join(app(environ, start_response))
    return statuses[0], body


def environ_for(body: bytes, **extra: Any) -> dict[str, Any]:
    return {
        "REQUEST_METHOD": "POST",
        "PATH_INFO": "/track-event",
        "SCRIPT_NAME": "",
        "QUERY_STRING": "",
        "SERVER_NAME": "testserver",
        "SERVER_PORT": "80",
        "REMOTE_ADDR": BROWSER_IP,
        "CONTENT_TYPE": "application/json",
        "HTTP_USER_AGENT": USER_AGENT,
        "wsgi.input": io.BytesIO(body),
        "wsgi.url_scheme": "http",
        **extra,
    }


@pytest.fixture
def client(make_client: Callable[..., Client]) -> Client:
    """A sending client whose dispatcher is a thread, as under a WSGI server."""
    return make_client(dispatcher="thread")


# --- the same answers as the ASGI app --------------------------------------------

PREFLIGHT = {"origin": SHOP, "access-control-request-method": "POST"}
_VALID = json.dumps(event(event_id="e1")).encode()
PARITY_CASES: list[tuple[str, str, bytes, dict[str, str]]] = [
    ("POST", "/track-event", _VALID, {"origin": SHOP}),
    ("POST", "/track-event/", _VALID, {}),
    ("POST", "/track-event", _VALID, {"origin": FOREIGN}),
    ("POST", "/track-event", _VALID, {"origin": "null"}),
    ("POST", "/track-event", _VALID, {"origin": "http://testserver"}),
    ("POST", "/track-event", _VALID, {"content-type": "text/plain;charset=UTF-8"}),
    ("POST", "/track-event", b"{", {"origin": SHOP}),
    ("POST", "/track-event", _VALID, {"content-type": "application/xml"}),
    ("POST", "/track-event", b" " * 2000, {}),
    ("POST", "/track-event", b'{"data": []}', {}),
    ("POST", "/track-event", b'{"advertiser_id": "1", "event_data": {}}', {}),
    (
        "POST",
        "/track-event",
        json.dumps(event(event_time="yesterday")).encode(),
        {"origin": FOREIGN},
    ),
    ("POST", "/track-event-test", _VALID, {}),
    ("GET", "/track-event", b"", {"origin": SHOP}),
    ("GET", "/nowhere", b"", {}),
    ("GET", "/health", b"", {"origin": SHOP}),
    ("OPTIONS", "/track-event", b"", PREFLIGHT),
    ("OPTIONS", "/track-event", b"", {**PREFLIGHT, "origin": FOREIGN}),
    (
        "OPTIONS",
        "/track-event",
        b"",
        {**PREFLIGHT, "access-control-request-method": "DELETE"},
    ),
    (
        "OPTIONS",
        "/track-event",
        b"",
        {**PREFLIGHT, "access-control-request-headers": "content-type, x-other"},
    ),
    (
        "OPTIONS",
        "/track-event",
        b"",
        {**PREFLIGHT, "access-control-request-private-network": "true"},
    ),
    (
        "OPTIONS",
        "/track-event",
        b"",
        {**PREFLIGHT, "access-control-request-headers": "Content-Type"},
    ),
]
COMPARED_HEADERS = (
    "content-type",
    "allow",
    "retry-after",
    "vary",
    "access-control-allow-origin",
    "access-control-allow-credentials",
    "access-control-allow-methods",
    "access-control-allow-headers",
    "access-control-expose-headers",
    "access-control-max-age",
)


PARITY_OPTIONS: dict[str, dict[str, Any]] = {
    "listed-origin": {"allow_origins": [SHOP]},
    "any-origin": {"allow_origins": ["*"]},
    "credentials-and-secret": {
        "allow_origins": [SHOP],
        "allow_credentials": True,
        "shared_secret": SECRET,
    },
}


@pytest.mark.parametrize("options", PARITY_OPTIONS.values(), ids=PARITY_OPTIONS)
@pytest.mark.parametrize(
    ("method", "path", "body", "headers"),
    PARITY_CASES,
    ids=[f"{m} {p} {i}" for i, (m, p, _, _) in enumerate(PARITY_CASES)],
)
def test_wsgi_answers_as_the_asgi_app(
    make_local_client: Callable[[], Client],
    method: str,
    path: str,
    body: bytes,
    headers: dict[str, str],
    options: dict[str, Any],
) -> None:
    """Status, body and every CORS header, byte for byte."""
    options = {**options, "max_body_size": 1000}
    headers = {"content-type": "application/json", "user-agent": USER_AGENT, **headers}
    asgi_app = pinterest_app(make_local_client(), **options)
    wsgi_app = pinterest_wsgi_app(make_local_client(), **options)

    with TestClient(asgi_app, client=(BROWSER_IP, 1)) as asgi:
        expected = asgi.request(method, path, content=body, headers=headers)
    with http(wsgi_app) as wsgi:
        answer = wsgi.request(method, path, content=body, headers=headers)

    assert answer.status_code == expected.status_code
    assert answer.content == expected.content
    for name in COMPARED_HEADERS:
        assert answer.headers.get(name) == expected.headers.get(name), name


# --- construction ---------------------------------------------------------------


def test_wildcard_origin_with_credentials_is_refused_at_construction(
    local_client: Client,
) -> None:
    with pytest.raises(ConfigurationError, match="allow_credentials"):
        pinterest_wsgi_app(local_client, allow_origins=["*"], allow_credentials=True)


def test_importing_the_wsgi_app_imports_no_web_framework() -> None:
    """Plain WSGI: loading it imports neither Flask, Werkzeug nor Django."""
    import subprocess
    import sys

    code = (
        "import sys, pinterest_mw.wsgi; "
        "print(sorted(m for m in ('flask', 'werkzeug', 'django') if m in sys.modules))"
    )
    output = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )

    assert output.stdout.strip() == "[]"


def test_an_auto_client_dispatches_from_a_thread(
    fake_pinterest: FakePinterestAPI,
) -> None:
    auto = Client(FAKE_ACCESS_TOKEN, FAKE_AD_ACCOUNT_ID, api_url=MOCK_URL, **FAST)
    try:
        post(pinterest_wsgi_app(auto), event())

        assert isinstance(auto._dispatcher, ThreadDispatcher)
    finally:
        auto.close(timeout=5)


# --- delivery -------------------------------------------------------------------


def test_accepted_events_reach_pinterest_hashed(
    client: Client, fake_pinterest: FakePinterestAPI
) -> None:
    post(pinterest_wsgi_app(client), {"data": [event(), event()]})

    events = delivered(client, fake_pinterest)
    assert [e["user_data"]["em"] for e in events] == [[HASHED_EMAIL]] * 2
    assert all(EMAIL.encode() not in r.body for r in fake_pinterest.requests)


def test_request_ip_and_user_agent_replace_the_body_ones(
    client: Client, fake_pinterest: FakePinterestAPI
) -> None:
    body = event()
    body["user_data"].update(ip_address="198.51.100.1", user_agent="forged")

    post(pinterest_wsgi_app(client), body)

    [sent] = delivered(client, fake_pinterest)
    assert sent["user_data"]["client_ip_address"] == BROWSER_IP
    assert sent["user_data"]["client_user_agent"] == USER_AGENT


@pytest.mark.parametrize(
    ("peer", "expected"),
    [("10.0.0.2", BROWSER_IP), ("198.51.100.50", "198.51.100.50")],
    ids=["trusted-proxy", "untrusted-peer"],
)
def test_forwarded_for_counts_only_through_a_trusted_proxy(
    client: Client, fake_pinterest: FakePinterestAPI, peer: str, expected: str
) -> None:
    app = pinterest_wsgi_app(client, trusted_proxies=["10.0.0.0/8"])

    post(app, event(), client_ip=peer, **{"x-forwarded-for": BROWSER_IP})

    [sent] = delivered(client, fake_pinterest)
    assert sent["user_data"]["client_ip_address"] == expected


def test_no_event_lost_or_duplicated_while_pinterest_refuses(
    client: Client, fake_pinterest: FakePinterestAPI
) -> None:
    """429s and 503s for a while: every event arrives, exactly once."""
    fake_pinterest.fail_next(3, status=429, retry_after=0)
    fake_pinterest.fail_next(2, status=503)
    app = pinterest_wsgi_app(client)
    posted: list[str] = []
    for request in range(4):
        body = {"data": [event(event_id=f"r{request}-{i}") for i in range(3)]}
        posted += post(app, body).json()["event_ids"]

    events = delivered(client, fake_pinterest)

    assert sorted(e["event_id"] for e in events) == sorted(posted)


def test_mounted_in_flask_through_dispatcher_middleware_delivers(
    client: Client, fake_pinterest: FakePinterestAPI
) -> None:
    flask_app = Flask(__name__)

    @flask_app.get("/")
    def home() -> str:
        return "shop"

    flask_app.wsgi_app = DispatcherMiddleware(  # type: ignore[method-assign]
        flask_app.wsgi_app, {"/pinterest": pinterest_wsgi_app(client)}
    )
    browser = flask_app.test_client()

    response = browser.post(
        "/pinterest/track-event",
        json=event(),
        headers={"user-agent": USER_AGENT, "referer": f"{SHOP}/cart"},
        environ_base={"REMOTE_ADDR": BROWSER_IP},
    )

    assert response.status_code == 202
    [sent] = delivered(client, fake_pinterest)
    assert sent["event_id"] == response.get_json()["event_ids"][0]
    assert sent["event_source_url"] == f"{SHOP}/cart"


def test_host_flask_routes_still_answer(local_client: Client) -> None:
    flask_app = Flask(__name__)

    @flask_app.get("/")
    def home() -> str:
        return "shop"

    flask_app.wsgi_app = DispatcherMiddleware(  # type: ignore[method-assign]
        flask_app.wsgi_app, {"/pinterest": pinterest_wsgi_app(local_client)}
    )

    assert flask_app.test_client().get("/").text == "shop"


# --- what only WSGI has to care about ----------------------------------------------


def test_a_lone_surrogate_is_422_naming_its_path(local_client: Client) -> None:
    body = json.dumps(event(event_id="x")).encode().replace(b'"x"', b'"\\udfff"')

    response = post(pinterest_wsgi_app(local_client), body)

    assert response.status_code == 422
    assert [error["path"] for error in response.json()["errors"]] == ["event_id"]
    assert local_client.counters.accepted == 0


def test_body_without_length_is_411(local_client: Client) -> None:
    environ = environ_for(json.dumps(event()).encode())

    status, _ = call(pinterest_wsgi_app(local_client), environ)

    assert status == "411 Length Required"


def test_terminated_input_without_length_is_read(local_client: Client) -> None:
    environ = environ_for(
        json.dumps(event()).encode(), **{"wsgi.input_terminated": True}
    )

    status, _ = call(pinterest_wsgi_app(local_client), environ)

    assert status == "202 Accepted"


def test_terminated_input_over_the_limit_is_413(local_client: Client) -> None:
    environ = environ_for(b" " * 5000, **{"wsgi.input_terminated": True})

    status, _ = call(pinterest_wsgi_app(local_client, max_body_size=1000), environ)

    assert status == "413 Request Entity Too Large"


def test_declared_length_over_the_limit_is_refused_unread(local_client: Client) -> None:
    stream = io.BytesIO(b" " * 5000)
    environ = environ_for(b"", CONTENT_LENGTH="5000", **{"wsgi.input": stream})

    status, _ = call(pinterest_wsgi_app(local_client, max_body_size=1000), environ)

    assert status == "413 Request Entity Too Large"
    assert stream.tell() == 0


def test_head_on_health_has_no_body(local_client: Client) -> None:
    with http(pinterest_wsgi_app(local_client)) as session:
        response = session.head("/health")

    assert response.status_code == 200
    assert response.content == b""


# --- the queue, failures, the test endpoint -------------------------------------


def test_full_queue_answers_503_naming_the_dropped_events() -> None:
    with Client(sending=False, outbox=MemoryOutbox(2), **FAST) as client:
        body = {"data": [event(event_id=f"e{i}") for i in range(3)]}

        response = post(pinterest_wsgi_app(client), body)

    assert response.status_code == 503
    assert response.json()["dropped_event_ids"] == ["e2"]
    assert response.headers["retry-after"]


def test_full_queue_under_the_raise_policy_accepts_nothing() -> None:
    with Client(
        sending=False, outbox=MemoryOutbox(2), overflow="raise", **FAST
    ) as client:
        body = {"data": [event(event_id=f"e{i}") for i in range(3)]}

        response = post(pinterest_wsgi_app(client), body)

    assert response.status_code == 503
    assert response.json()["accepted"] == 0


def test_test_endpoint_can_be_switched_off(local_client: Client) -> None:
    app = pinterest_wsgi_app(local_client, test_endpoint=False)

    assert post(app, event(), "/track-event-test").status_code == 404


def test_failure_of_our_own_code_is_503_not_500(
    local_client: Client,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    def broken(events: Any) -> int:
        raise RuntimeError(EMAIL)

    monkeypatch.setattr(local_client, "submit", broken)

    with caplog.at_level(logging.DEBUG, logger="pinterest_mw"):
        response = post(pinterest_wsgi_app(local_client), event())

    assert response.status_code == 503
    assert EMAIL not in caplog.text


def test_test_endpoint_answers_with_pinterest_verdict_per_event(
    client: Client, fake_pinterest: FakePinterestAPI
) -> None:
    body = {"data": [event(event_id="a"), event(event_id="b", event_name="my_own")]}

    response = post(
        pinterest_wsgi_app(client, test_endpoint=True), body, "/track-event-test"
    )

    statuses = [(r["event_id"], r["status"]) for r in response.json()["results"]]
    assert statuses == [("a", "processed"), ("b", "warned")]
    assert len(fake_pinterest.test_events) == 2


def test_test_endpoint_reports_an_unreachable_pinterest_as_502(
    client: Client, fake_pinterest: FakePinterestAPI
) -> None:
    fake_pinterest.fail_next(1, status=503)

    response = post(
        pinterest_wsgi_app(client, test_endpoint=True), event(), "/track-event-test"
    )

    assert response.status_code == 502


def test_test_endpoint_without_credentials_says_nothing_was_sent(
    local_client: Client,
) -> None:
    response = post(
        pinterest_wsgi_app(local_client, test_endpoint=True),
        event(),
        "/track-event-test",
    )

    assert response.json()["sent_to_pinterest"] is False


# --- protections ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({}, 401),
        ({"x-pinterest-mw-secret": "nope"}, 401),
        ({"x-pinterest-mw-secret": SECRET}, 202),
    ],
    ids=["missing", "wrong", "right"],
)
def test_shared_secret_is_required_when_configured(
    local_client: Client, headers: dict[str, str], status: int
) -> None:
    app = pinterest_wsgi_app(local_client, shared_secret=SECRET)

    assert post(app, event(), **headers).status_code == status


def test_requests_over_the_rate_limit_get_429(local_client: Client) -> None:
    app = pinterest_wsgi_app(local_client, rate_limit=0.01, rate_limit_burst=2)

    statuses = [post(app, event()).status_code for _ in range(3)]

    assert statuses == [202, 202, 429]


def test_rate_limit_counts_each_client_ip_apart(local_client: Client) -> None:
    app = pinterest_wsgi_app(local_client, rate_limit=0.01, rate_limit_burst=1)
    post(app, event(), client_ip="198.51.100.1")

    assert post(app, event(), client_ip="198.51.100.2").status_code == 202


def test_repr_does_not_show_the_secret(local_client: Client) -> None:
    app = pinterest_wsgi_app(local_client, shared_secret=SECRET, rate_limit=5)

    assert SECRET not in repr(app)


def test_logs_of_a_tracked_request_hold_no_personal_data(
    client: Client, fake_pinterest: FakePinterestAPI, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG, logger="pinterest_mw"):
        post(pinterest_wsgi_app(client), event(), referer=f"{SHOP}/?q=secret")
        delivered(client, fake_pinterest)

    for secret in (EMAIL, HASHED_EMAIL, BROWSER_IP, USER_AGENT, "q=secret"):
        assert secret not in caplog.text


# --- origins, values a body may not choose, the opt-in test endpoint --------------


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({"origin": FOREIGN}, 403),
        ({"origin": "null"}, 403),
        ({"origin": SHOP}, 202),
        ({"origin": "http://testserver"}, 202),
        ({}, 202),
    ],
    ids=["unlisted", "null", "listed", "same-host", "no-origin"],
)
def test_post_origin_is_checked_as_in_the_asgi_app(
    local_client: Client, headers: dict[str, str], status: int
) -> None:
    app = pinterest_wsgi_app(local_client, allow_origins=[SHOP])

    response = post(app, event(), **{"content-type": "text/plain", **headers})

    assert response.status_code == status


def test_post_from_an_unlisted_origin_queues_nothing(local_client: Client) -> None:
    response = post(pinterest_wsgi_app(local_client), event(), origin=FOREIGN)

    assert response.json()["error"] == "origin_not_allowed"
    assert local_client.counters.accepted == 0


def test_body_ip_and_user_agent_are_dropped_when_the_request_has_none(
    client: Client, fake_pinterest: FakePinterestAPI
) -> None:
    body = event()
    body["user_data"].update(ip_address="198.51.100.1", user_agent="forged")
    environ = environ_for(json.dumps(body).encode(), REMOTE_ADDR="unknown")
    del environ["HTTP_USER_AGENT"]
    environ["CONTENT_LENGTH"] = str(environ["wsgi.input"].getbuffer().nbytes)

    status, _ = call(pinterest_wsgi_app(client), environ)

    [sent] = delivered(client, fake_pinterest)
    assert status.startswith("202")
    assert "client_ip_address" not in sent["user_data"]
    assert "client_user_agent" not in sent["user_data"]


def test_referer_query_string_is_not_sent_except_marketing_parameters(
    client: Client, fake_pinterest: FakePinterestAPI
) -> None:
    referer = f"{SHOP}/reset?token=abc&utm_medium=social"

    post(pinterest_wsgi_app(client), event(), referer=referer)

    [sent] = delivered(client, fake_pinterest)
    assert sent["event_source_url"] == f"{SHOP}/reset?utm_medium=social"


def test_test_endpoint_is_off_by_default(
    local_client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PINTEREST_TEST_ENDPOINT", raising=False)

    response = post(pinterest_wsgi_app(local_client), event(), "/track-event-test")

    assert response.status_code == 404


def test_test_endpoint_follows_the_environment(
    local_client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PINTEREST_TEST_ENDPOINT", "true")

    response = post(pinterest_wsgi_app(local_client), event(), "/track-event-test")

    assert response.status_code == 200


# --- what a durable outbox kept, the outbox failing, test sends ---


def wait_for_delivery(fake: FakePinterestAPI, count: int) -> list[str]:
    """The ids Pinterest got, once it got `count` events (or 10 s passed)."""
    deadline = time.monotonic() + 10
    while len(fake.events) < count and time.monotonic() < deadline:
        time.sleep(0.01)
    return sorted(e["event_id"] for e in fake.events)


def test_the_app_sends_what_the_outbox_kept_from_when_it_is_built(
    make_client: Callable[..., Client],
    fake_pinterest: FakePinterestAPI,
    tmp_path: Path,
) -> None:
    """No request, no event, no `start()`: a WSGI app has no lifespan."""
    with Client(sending=False, outbox=tmp_path / "outbox.sqlite3") as keeper:
        kept = [keeper.track(event()).event_id for _ in range(2)]

    pinterest_wsgi_app(make_client(outbox=tmp_path / "outbox.sqlite3"))

    assert wait_for_delivery(fake_pinterest, 2) == sorted(kept)


def test_the_first_request_of_any_kind_starts_delivery(
    make_client: Callable[..., Client],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    """For what another process may have left in a shared durable outbox."""
    client = make_client(outbox=tmp_path / "outbox.sqlite3", dispatcher="thread")
    app = pinterest_wsgi_app(client)
    started: list[bool] = []
    monkeypatch.setattr(client, "start", lambda: started.append(True))

    with http(app) as session:
        session.get("/health")
        session.get("/health")

    assert started == [True]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_worker_starts_delivery_at_its_own_first_request(
    make_client: Callable[..., Client],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    """gunicorn with `--preload`: the parent's start does not cover the child."""
    client = make_client(outbox=tmp_path / "outbox.sqlite3", dispatcher="thread")
    app = pinterest_wsgi_app(client)
    started: list[int] = []
    monkeypatch.setattr(client, "start", lambda: started.append(os.getpid()))
    health = environ_for(b"", REQUEST_METHOD="GET", PATH_INFO="/health")
    call(app, health)
    read_end, write_end = os.pipe()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # fork with threads
        pid = os.fork()
        if pid == 0:  # pragma: no cover - runs in the child
            try:
                call(app, {**health, "wsgi.input": io.BytesIO()})
                os.write(write_end, b"1" if started[-1] == os.getpid() else b"0")
            finally:
                os._exit(0)
    os.close(write_end)
    answer = os.read(read_end, 1)
    os.waitpid(pid, 0)
    os.close(read_end)

    assert answer == b"1"
    assert started == [os.getpid()]


def test_health_counts_unconfirmed_events_apart(httpx_mock: HTTPXMock) -> None:
    """Pinterest answered 2xx without a result for the event: not processed."""
    httpx_mock.add_response(json={"events": []})
    client = Client(
        FAKE_ACCESS_TOKEN,
        FAKE_AD_ACCOUNT_ID,
        api_url=MOCK_URL,
        dispatcher="thread",
        **FAST,
    )
    app = pinterest_wsgi_app(client)
    try:
        post(app, event())
        assert client.flush(timeout=10)
        with http(app) as session:
            counters = session.get("/health").json()["counters"]
    finally:
        client.close(timeout=1)

    assert (counters["unconfirmed"], counters["processed"]) == (1, 0)


class UnreadableOutbox(MemoryOutbox):
    """Every claim fails, as a damaged file's do."""

    def claim(self, limit: int, *, lease: float) -> Any:
        raise sqlite3.DatabaseError("database disk image is malformed")


def test_health_says_degraded_while_the_outbox_cannot_be_read(
    make_client: Callable[..., Client],
) -> None:
    client = make_client(outbox=UnreadableOutbox(), dispatcher="thread")
    app = pinterest_wsgi_app(client)
    post(app, event())
    deadline = time.monotonic() + 10
    while not client.counters.outbox_errors and time.monotonic() < deadline:
        time.sleep(0.01)

    with http(app) as session:
        health = session.get("/health").json()

    assert (health["status"], health["problem"]) == ("degraded", OUTBOX_UNREADABLE)


def test_test_endpoint_says_nothing_reached_pinterest_when_it_was_not(
    client: Client, fake_pinterest: FakePinterestAPI
) -> None:
    fake_pinterest.timeout_next(1)

    response = post(
        pinterest_wsgi_app(client, test_endpoint=True), event(), "/track-event-test"
    )

    assert response.status_code == 502
    assert response.json()["sent_to_pinterest"] is False
