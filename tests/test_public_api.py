"""The flat public API: everything public is importable from `pinterest_mw`."""

from __future__ import annotations

import importlib

import pytest

import pinterest_mw

COMPONENTS = [
    "asgi",
    "client",
    "context",
    "decorators",
    "dispatch",
    "events",
    "exceptions",
    "hashing",
    "middleware",
    "outbox",
    "transport",
    "wsgi",
]


def test_all_has_no_duplicates() -> None:
    assert len(pinterest_mw.__all__) == len(set(pinterest_mw.__all__))


def test_every_name_in_all_is_importable() -> None:
    missing = [name for name in pinterest_mw.__all__ if not hasattr(pinterest_mw, name)]

    assert missing == []


@pytest.mark.parametrize("component", COMPONENTS)
def test_every_public_name_of_a_component_is_exported(component: str) -> None:
    module = importlib.import_module(f"pinterest_mw.{component}")

    assert set(module.__all__) <= set(pinterest_mw.__all__)


def test_exported_names_are_the_components_public_names() -> None:
    """Nothing private or accidental is exported from the package."""
    public = {"__version__"}
    for component in COMPONENTS:
        public |= set(importlib.import_module(f"pinterest_mw.{component}").__all__)

    assert set(pinterest_mw.__all__) == public


def test_version_is_read_from_the_package_metadata() -> None:
    assert pinterest_mw.__version__ == importlib.metadata.version("pinterest-mw")
