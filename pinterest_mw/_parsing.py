"""Parsing a caller's text without letting the parser's error travel on.

A parser's error often quotes its input: `datetime.fromisoformat`,
`ipaddress.ip_address` and `httpx.URL` do, and the input may be personal
data or a URL with credentials. Raised inside the `except` block that
caught it, our own error would keep that error as its `__context__`, for
any traceback, debugger or error tracker to show. `parsed_or_none` turns
the failure into None, so that the caller raises outside the block.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

__all__ = ["parsed_or_none"]

_T = TypeVar("_T")


def parsed_or_none(
    parse: Callable[[str], _T],
    text: str,
    errors: type[Exception] | tuple[type[Exception], ...] = ValueError,
) -> _T | None:
    """`parse(text)`, or None when it raises one of `errors`."""
    try:
        return parse(text)
    except errors:
        return None
