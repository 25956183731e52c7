"""What the benchmarks send: one browser-like request and user-data records."""

from __future__ import annotations

import json
from typing import Any

__all__ = [
    "HEADERS",
    "TRACK_BODY",
    "full_user_data",
    "track_event",
]

HEADERS: dict[str, str] = {
    "Content-Type": "application/json",
    "Origin": "https://shop.example",
    "Referer": "https://shop.example/checkout/thanks?order=1001",
    "User-Agent": (
        "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko)"
        " Chrome/126.0 Safari/537.36"
    ),
    "Accept-Language": "en-US,en;q=0.9",
    "Cookie": "_epik=dj0yJnU9ZmFrZS1jbGljay1pZCZuPTE; session=abc123",
}
"""The headers a browser sends with a `fetch` from the shop's page."""


def track_event() -> dict[str, Any]:
    """One checkout as a page posts it: raw personal data, friendly names."""
    return {
        "event_name": "checkout",
        "user_data": {
            "email": "Ann.Buyer@Example.com",
            "phone": "+1 (650) 555-0134",
            "first_name": "Ann",
            "last_name": "Buyer",
            "zip_code": "94025",
            "country": "US",
        },
        "custom_data": {
            "value": "129.90",
            "currency": "usd",
            "order_id": "1001",
            "num_items": 2,
            "content_ids": ["sku-1", "sku-2"],
        },
    }


TRACK_BODY = json.dumps(track_event(), separators=(",", ":")).encode()
"""The posted body: no `event_id` or `event_time`, so each request is new."""


def full_user_data(index: int) -> dict[str, str]:
    """A user-data record with all twelve hashed fields, raw, person `index`.

    Distinct people have distinct emails, phones, names and ids, so caches
    keyed by those values do not flatter the figures; gender, state and
    country repeat, as they do in real data.
    """
    return {
        "email": f"Person.{index}@Example.com",
        "phone": f"+1 (650) {200 + index % 800:03d}-{index % 10000:04d}",
        "first_name": f"Ann-Marie{index % 1000}",
        "last_name": f"O'Brien {index}",
        "gender": "Female" if index % 2 else "m",
        "date_of_birth": f"19{50 + index % 50}-04-{1 + index % 28:02d}",
        "city": "San Francisco" if index % 3 else "New York",
        "state": "California" if index % 3 else "NY",
        "zip_code": f"{10000 + index % 89999:05d}-1234",
        "country": "US" if index % 5 else "United States",
        "external_id": f"customer-{index}",
        "hashed_maids": f"6d92078a-8246-4ba4-ae5b-{index:012d}",
    }
