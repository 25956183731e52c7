"""Fixtures shared by the whole test suite."""

from __future__ import annotations

import pytest


@pytest.fixture
def anyio_backend() -> str:
    """Run `@pytest.mark.anyio` tests on asyncio, the loop uvicorn uses."""
    return "asyncio"


# The fake Pinterest API and its `fake_pinterest` fixture (pytest-httpx).
pytest_plugins = ["pinterest_mw.testing"]
