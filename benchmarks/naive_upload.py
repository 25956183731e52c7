"""The bulk-upload baseline: what a short hand-written script does.

```
python -m benchmarks.naive_upload FILE API_URL
```

Reads the CSV with `csv.DictReader`, lowercases and SHA-256-hashes the
personal-data columns without any other normalization or validation,
and posts the events 1000 per request with httpx. It needs the same
columns as the generated benchmark files. Prints how many requests it made.
"""

from __future__ import annotations

import csv
import hashlib
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from pinterest_mw.testing import FAKE_ACCESS_TOKEN, FAKE_AD_ACCOUNT_ID

__all__ = ["main"]

_HASHED = {
    "email": "em",
    "phone": "ph",
    "first_name": "fn",
    "last_name": "ln",
    "city": "ct",
    "state": "st",
    "zip_code": "zp",
    "country": "country",
    "external_id": "external_id",
}
_CUSTOM = ("value", "currency", "order_id")


def _events(path: str) -> Iterator[dict[str, Any]]:
    with Path(path).open(newline="", encoding="utf-8") as file:
        for row in csv.DictReader(file):
            user_data = {
                code: [hashlib.sha256(row[name].strip().lower().encode()).hexdigest()]
                for name, code in _HASHED.items()
                if row.get(name)
            }
            yield {
                "event_name": row["event_name"],
                "action_source": "offline",
                "event_time": int(row["event_time"]),
                "event_id": row["event_id"],
                "user_data": user_data,
                "custom_data": {k: row[k] for k in _CUSTOM if row.get(k)},
            }


def main(argv: list[str] | None = None) -> None:
    """Upload FILE to API_URL in batches of 1000."""
    path, api_url = argv if argv is not None else sys.argv[1:3]
    url = f"{api_url}/v5/ad_accounts/{FAKE_AD_ACCOUNT_ID}/events"
    headers = {
        "Authorization": f"Bearer {FAKE_ACCESS_TOKEN}",
        "Content-Type": "application/json",
    }
    requests = 0
    batch: list[dict[str, Any]] = []
    with httpx.Client(timeout=30) as client:
        for event in _events(path):
            batch.append(event)
            if len(batch) == 1000:
                client.post(url, content=json.dumps({"data": batch}), headers=headers)
                requests += 1
                batch = []
        if batch:
            client.post(url, content=json.dumps({"data": batch}), headers=headers)
            requests += 1
    print(requests)


if __name__ == "__main__":
    main()
