"""Values and builders shared by the endpoint, middleware and decorator tests."""

from __future__ import annotations

from typing import Any

from pinterest_mw.dispatch import DeliveryBackoff
from pinterest_mw.transport import RetryPolicy

MOCK_URL = "https://pinterest.example"
"""Where the in-process fake (pytest-httpx) is reached: no socket is opened."""

EMAIL = "Buyer@Example.com"
SHOP = "https://shop.example"
FOREIGN = "https://evil.example"

FAST: dict[str, Any] = {
    "flush_interval": 0.02,
    "retry": RetryPolicy(attempts=1),
    "backoff": DeliveryBackoff(initial=0.02, maximum=0.1, jitter=0),
    "shutdown_timeout": 5.0,
}
"""Client options for tests: short intervals, one attempt, no jitter."""


def event(email: str = EMAIL, **changes: Any) -> dict[str, Any]:
    """A valid checkout event as a browser would post it, with `changes`."""
    return {
        "event_name": "checkout",
        "action_source": "web",
        "user_data": {"email": email},
        **changes,
    }


class HugeInt(int):
    """An integer with more digits than Python writes out by default (4300).

    Its repr says so instead, so that pytest and hypothesis can report a
    failing example holding one; `str()` still gives (or refuses) the digits.
    """

    def __repr__(self) -> str:
        return f"<integer of {self.bit_length()} bits>"

    def __str__(self) -> str:
        # int's own str() is its repr: keep the real digits (and their limit).
        return int.__repr__(self)


HUGE = HugeInt(10**5000)
"""An integer of 5001 digits."""
