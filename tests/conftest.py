"""Fixtures shared by the whole test suite."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from _helpers import FAST, MOCK_URL

from pinterest_mw.client import Client
from pinterest_mw.outbox import MemoryOutbox

if TYPE_CHECKING:
    from pinterest_mw.testing import FakePinterestAPI

# Not imported at the top: pytest must load the plugin module itself (below)
# to rewrite its assertions.
_FAKE = "pinterest_mw.testing"


@pytest.fixture(autouse=True)
def own_working_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test runs in a directory of its own.

    The embedded default keeps events in `./pinterest-mw-data`, and a
    sending client without an outbox takes that file over when it exists
    (a `pinterest-mw serve` run from the checkout leaves one): no test may
    read or write the directory the suite is started from.
    """
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def anyio_backend() -> str:
    """Run `@pytest.mark.anyio` tests on asyncio, the loop uvicorn uses."""
    return "asyncio"


@pytest.fixture
def make_client(fake_pinterest: FakePinterestAPI) -> Iterator[Callable[..., Client]]:
    """Sending clients in front of the in-process fake, closed after the test."""
    from pinterest_mw.testing import FAKE_ACCESS_TOKEN, FAKE_AD_ACCOUNT_ID

    made: list[Client] = []

    def make(**options: Any) -> Client:
        client = Client(
            FAKE_ACCESS_TOKEN,
            FAKE_AD_ACCOUNT_ID,
            api_url=MOCK_URL,
            **{**FAST, **options},
        )
        made.append(client)
        return client

    yield make
    for client in made:
        client.close(timeout=1)


@pytest.fixture
def client(make_client: Callable[..., Client]) -> Client:
    """A sending client in front of the in-process fake."""
    return make_client()


@pytest.fixture
def make_local_client() -> Iterator[Callable[..., Client]]:
    """Clients without credentials, keeping events in memory (not sending)."""
    from pinterest_mw.testing import FAKE_AD_ACCOUNT_ID

    made: list[Client] = []

    def make(**options: Any) -> Client:
        client = Client(
            sending=False,
            ad_account_id=FAKE_AD_ACCOUNT_ID,
            outbox=MemoryOutbox(100),
            **{**FAST, **options},
        )
        made.append(client)
        return client

    yield make
    for client in made:
        client.close(timeout=1)


@pytest.fixture
def local_client(make_local_client: Callable[..., Client]) -> Client:
    """A client that does not send: its counters show what was queued."""
    return make_local_client()


# The fake Pinterest API and its `fake_pinterest` fixture (pytest-httpx).
pytest_plugins = [_FAKE]
