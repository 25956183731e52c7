"""Field paths shown in logs and messages: our names kept, the caller's hidden."""

from __future__ import annotations

import pytest

from pinterest_mw._field_paths import UNKNOWN_KEY, safe_path


@pytest.mark.parametrize(
    "path",
    [
        "user_data.em",
        "user_data.email",
        "custom_data.contents.0.item_price",
        "data.3.event_time",
        "app_info.app_version",
        "custom_data.np",
        "device_info.type",
        "",
    ],
)
def test_paths_of_our_own_names_are_shown_as_they_are(path: str) -> None:
    assert safe_path(path) == path


@pytest.mark.parametrize(
    ("path", "shown"),
    [
        ("user_data.jane.doe@example.com", f"user_data.{UNKNOWN_KEY}"),
        ("custom_data.Secret-Key-9", f"custom_data.{UNKNOWN_KEY}"),
        ("data.0.user_data.a.b.c", f"data.0.user_data.{UNKNOWN_KEY}"),
        ("Jane Doe", UNKNOWN_KEY),
    ],
)
def test_other_parts_are_hidden_behind_one_marker(path: str, shown: str) -> None:
    """A key with dots (an email) splits into parts: one marker for all of them."""
    assert safe_path(path) == shown
