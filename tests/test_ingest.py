"""The rules both sub-apps share, where they are easier to pin down alone."""

from __future__ import annotations

import pytest

from pinterest_mw._ingest import BodyBuffer, CORSPolicy, RateLimiter, Reply


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


def test_bucket_allows_a_burst_then_refuses(clock: Clock) -> None:
    limiter = RateLimiter(1.0, 3, clock=clock)

    answers = [limiter.retry_after("198.51.100.1") for _ in range(4)]

    assert answers == [None, None, None, 1]


def test_bucket_refills_at_the_rate(clock: Clock) -> None:
    limiter = RateLimiter(2.0, 1, clock=clock)
    limiter.retry_after("198.51.100.1")
    clock.now += 0.5

    assert limiter.retry_after("198.51.100.1") is None


def test_retry_after_is_the_wait_for_one_token_rounded_up(clock: Clock) -> None:
    limiter = RateLimiter(0.25, 1, clock=clock)
    limiter.retry_after("198.51.100.1")
    clock.now += 1.0

    assert limiter.retry_after("198.51.100.1") == 3


def test_requests_without_an_ip_share_one_bucket(clock: Clock) -> None:
    limiter = RateLimiter(1.0, 1, clock=clock)
    limiter.retry_after(None)

    assert limiter.retry_after("") == 1


def test_remembered_addresses_stay_bounded(clock: Clock) -> None:
    limiter = RateLimiter(1.0, 5, max_clients=10, clock=clock)

    for host in range(100):
        limiter.retry_after(f"198.51.100.{host}")

    assert len(limiter._buckets) <= 10


def test_idle_addresses_are_forgotten_before_busy_ones(clock: Clock) -> None:
    limiter = RateLimiter(1.0, 2, max_clients=3, clock=clock)
    limiter.retry_after("busy")
    limiter.retry_after("busy")
    limiter.retry_after("idle-1")
    limiter.retry_after("idle-2")
    clock.now += 1.5

    limiter.retry_after("new")

    assert limiter.retry_after("busy") is None
    assert limiter.retry_after("busy") == 1


def test_body_buffer_takes_exactly_its_limit() -> None:
    buffer = BodyBuffer(4)

    assert buffer.add(b"ab")
    assert buffer.add(b"cd")
    assert buffer.getvalue() == b"abcd"


def test_body_buffer_refuses_one_byte_more() -> None:
    buffer = BodyBuffer(4)
    buffer.add(b"abcd")

    assert not buffer.add(b"e")


@pytest.mark.parametrize(
    ("status", "line"), [(202, "202 Accepted"), (299, "299 Unknown")]
)
def test_status_line(status: int, line: str) -> None:
    assert Reply(status, b"").status_line == line


def test_configured_origins_are_compared_as_browsers_send_them() -> None:
    policy = CORSPolicy(["HTTPS://Shop.Example"])

    assert policy.is_allowed_origin("https://shop.example")
