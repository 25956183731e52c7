"""Parsing a caller's text so that the parser's error goes no further."""

from __future__ import annotations

import ipaddress

import pytest

from pinterest_mw._parsing import parsed_or_none


def test_a_parsed_text_is_returned():
    assert parsed_or_none(ipaddress.ip_address, "::1") == ipaddress.ip_address("::1")


def test_a_failure_named_is_none():
    assert parsed_or_none(ipaddress.ip_address, "jane-laptop") is None


def test_a_failure_not_named_is_raised():
    """Only the parser's expected failure is turned into None."""

    def broken(text: str) -> str:
        raise RuntimeError("a bug, not bad input")

    with pytest.raises(RuntimeError):
        parsed_or_none(broken, "text")
