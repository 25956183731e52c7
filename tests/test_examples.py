"""The apps and the script in examples/, run as they are, against the fake API.

The apps are imported from their files with the environment pointing at a
fake Pinterest API served on 127.0.0.1, then driven in-process (Starlette's
`TestClient`, Flask's test client) and as the real processes the README
starts. Every run happens in a temporary directory without bytecode, so
nothing is written into the repository.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest
from starlette.testclient import TestClient

from pinterest_mw import deterministic_event_id, sha256_hex
from pinterest_mw.testing import (
    FAKE_ACCESS_TOKEN,
    FAKE_AD_ACCOUNT_ID,
    FakePinterestAPI,
    serve_fake_api,
)

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples"
APPS = ["starlette", "fastapi", "flask"]
SHOP = "https://shop.example"
BROWSER_IP = "203.0.113.9"
USER_AGENT = "Mozilla/5.0 (examples test)"
DEADLINE = 20.0
"""Seconds a process may take to start, or an event to arrive: a bound, no check."""

ORDER_ID = "1001"
# Order 1001 belongs to Jane.Doe@Example.com in every example.
ORDER_EMAIL_HASH = sha256_hex("jane.doe@example.com")
BUYER_EMAIL = "Buyer@Example.com"
BUYER_EMAIL_HASH = sha256_hex("buyer@example.com")
CHECKOUT = {
    "starlette": ("GET", f"/orders/{ORDER_ID}/thank-you"),
    "fastapi": ("POST", f"/orders/{ORDER_ID}/checkout"),
    "flask": ("GET", f"/orders/{ORDER_ID}/thank-you"),
}
UNKNOWN_ORDER = {
    "starlette": ("GET", "/orders/404/thank-you"),
    "fastapi": ("POST", "/orders/404/checkout"),
    "flask": ("GET", "/orders/404/thank-you"),
}
# What the shop's page posts (sendBeacon sends a string as text/plain).
POSTED_EVENT = {"event_name": "add_to_cart", "user_data": {"email": BUYER_EMAIL}}
# The id as the Starlette and Flask pages hand it to the tag, or FastAPI's JSON.
SHOWN_EVENT_ID = re.compile(r'"?event_id"?:\s*"([^"]+)"')


@dataclass
class Page:
    """One answer of an example app."""

    status: int
    text: str

    def shown_event_id(self) -> str:
        match = SHOWN_EVENT_ID.search(self.text)
        assert match is not None, f"no event_id on the page:\n{self.text}"
        return match.group(1)

    def json(self) -> Any:
        return json.loads(self.text)


Browse = Callable[..., Page]


def process_env(**values: str) -> dict[str, str]:
    """This process's environment without any PINTEREST_ variable, plus `values`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PINTEREST_")}
    return {**env, "PYTHONDONTWRITEBYTECODE": "1", **values}


def credentials(api_url: str) -> dict[str, str]:
    return {
        "PINTEREST_ACCESS_TOKEN": FAKE_ACCESS_TOKEN,
        "PINTEREST_AD_ACCOUNT_ID": FAKE_AD_ACCOUNT_ID,
        "PINTEREST_API_URL": api_url,
    }


def wait_for_event(fake: FakePinterestAPI, event_id: str) -> dict[str, Any]:
    """The event with this id, once the app's background delivery brought it."""
    deadline = time.monotonic() + DEADLINE
    while time.monotonic() < deadline:
        for event in fake.events:
            if event["event_id"] == event_id:
                return event
        time.sleep(0.02)
    raise AssertionError(f"event {event_id} never reached the fake")


# --- fixtures ------------------------------------------------------------------


@pytest.fixture(scope="module")
def served_fake() -> Iterator[tuple[FakePinterestAPI, str]]:
    """One fake Pinterest API on 127.0.0.1 for the module, and its URL."""
    fake = FakePinterestAPI()
    with serve_fake_api(fake) as api_url:
        yield fake, api_url


@pytest.fixture
def fake(served_fake: tuple[FakePinterestAPI, str]) -> FakePinterestAPI:
    """The served fake, with nothing recorded yet."""
    served_fake[0].reset()
    return served_fake[0]


@pytest.fixture
def api_url(served_fake: tuple[FakePinterestAPI, str]) -> str:
    return served_fake[1]


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No PINTEREST_ setting leaks in, and the examples run in a temporary directory."""
    for name in list(os.environ):
        if name.startswith("PINTEREST_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def sending(monkeypatch: pytest.MonkeyPatch, api_url: str) -> None:
    """Credentials for the served fake, as a deployment would set them."""
    for name, value in credentials(api_url).items():
        monkeypatch.setenv(name, value)


@pytest.fixture
def load_example(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[str], Any]]:
    """Import an example app from its file, as uvicorn would; close its client."""
    loaded: list[Any] = []
    monkeypatch.setattr(sys, "dont_write_bytecode", True)

    def load(name: str) -> Any:
        module_name = f"{name}_app"
        spec = importlib.util.spec_from_file_location(
            module_name, EXAMPLES / f"{module_name}.py"
        )
        assert spec is not None
        assert spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        monkeypatch.setitem(sys.modules, module_name, module)
        spec.loader.exec_module(module)
        loaded.append(module)
        return module

    yield load
    for module in loaded:
        module.client.close(timeout=2)


@contextmanager
def browsing(name: str, module: ModuleType) -> Iterator[Browse]:
    """Drive the app in-process; what it queued is delivered when the block ends."""
    if name == "flask":
        flask_client = module.app.test_client()
        environ = {"REMOTE_ADDR": BROWSER_IP, "HTTP_USER_AGENT": USER_AGENT}

        def flask_browse(method: str, path: str, body: Any = None) -> Page:
            response = flask_client.open(
                path, method=method, json=body, base_url=SHOP, environ_base=environ
            )
            return Page(response.status_code, response.get_data(as_text=True))

        yield flask_browse
        module.client.flush(timeout=DEADLINE)
        return

    # The TestClient runs the app's lifespan, which flushes at shutdown.
    with TestClient(
        module.app,
        base_url=SHOP,
        client=(BROWSER_IP, 50000),
        headers={"user-agent": USER_AGENT},
    ) as test_client:

        def asgi_browse(method: str, path: str, body: Any = None) -> Page:
            response = test_client.request(method, path, json=body)
            return Page(response.status_code, response.text)

        yield asgi_browse


# --- the apps, in-process ---------------------------------------------------------


@pytest.mark.usefixtures("sending")
@pytest.mark.parametrize("name", APPS)
def test_checkout_event_arrives_hashed_with_the_event_id_the_view_shows(
    name: str, load_example: Callable[[str], Any], fake: FakePinterestAPI
) -> None:
    module = load_example(name)
    with browsing(name, module) as browse:
        page = browse(*CHECKOUT[name])

    [event] = fake.events
    assert page.status == 200
    assert event["event_id"] == page.shown_event_id()
    assert event["user_data"]["em"] == [ORDER_EMAIL_HASH]


@pytest.mark.usefixtures("sending")
@pytest.mark.parametrize("name", APPS)
def test_checkout_event_carries_the_order_and_the_browser(
    name: str, load_example: Callable[[str], Any], fake: FakePinterestAPI
) -> None:
    module = load_example(name)
    with browsing(name, module) as browse:
        browse(*CHECKOUT[name])

    [event] = fake.events
    assert event["custom_data"] == {
        "value": "59.90",
        "currency": "USD",
        "order_id": ORDER_ID,
    }
    assert event["user_data"]["client_ip_address"] == BROWSER_IP
    assert event["user_data"]["client_user_agent"] == USER_AGENT


@pytest.mark.usefixtures("sending")
@pytest.mark.parametrize("name", APPS)
def test_checkout_shown_twice_is_one_event_id(
    name: str, load_example: Callable[[str], Any], fake: FakePinterestAPI
) -> None:
    """A reloaded page or a retried checkout gives Pinterest the same id to dedupe."""
    module = load_example(name)
    with browsing(name, module) as browse:
        shown = {browse(*CHECKOUT[name]).shown_event_id() for _ in range(2)}

    assert shown == {deterministic_event_id("order", ORDER_ID)}
    assert {event["event_id"] for event in fake.events} == shown


@pytest.mark.usefixtures("sending")
@pytest.mark.parametrize("name", APPS)
def test_unknown_order_is_404_and_sends_nothing(
    name: str, load_example: Callable[[str], Any], fake: FakePinterestAPI
) -> None:
    module = load_example(name)
    with browsing(name, module) as browse:
        page = browse(*UNKNOWN_ORDER[name])

    assert page.status == 404
    assert fake.requests == []


@pytest.mark.usefixtures("sending")
@pytest.mark.parametrize("name", APPS)
def test_posted_event_arrives_hashed_with_the_event_id_returned(
    name: str, load_example: Callable[[str], Any], fake: FakePinterestAPI
) -> None:
    module = load_example(name)
    with browsing(name, module) as browse:
        page = browse("POST", "/pinterest/track-event", POSTED_EVENT)

    [event] = fake.events
    assert page.status == 202
    assert [event["event_id"]] == page.json()["event_ids"]
    assert event["user_data"]["em"] == [BUYER_EMAIL_HASH]


@pytest.mark.parametrize("name", APPS)
def test_without_credentials_the_event_is_kept_in_the_local_outbox(
    name: str,
    load_example: Callable[[str], Any],
    fake: FakePinterestAPI,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    outbox = tmp_path / "outbox.sqlite3"
    monkeypatch.setenv("PINTEREST_OUTBOX", str(outbox))
    module = load_example(name)
    with browsing(name, module) as browse:
        page = browse(*CHECKOUT[name])

    assert page.status == 200
    assert module.client.outbox.depth() == 1
    assert outbox.exists()
    assert fake.requests == []


# --- the apps, as real processes ---------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def uvicorn_command(name: str) -> Callable[[int], tuple[list[str], dict[str, str]]]:
    """`uvicorn --no-proxy-headers examples.<name>_app:app`, from the repo root."""
    target = f"examples.{name}_app:app"
    return lambda port: (
        [
            *("-m", "uvicorn", "--no-proxy-headers", "--app-dir", str(REPO)),
            *(target, "--port", str(port)),
        ],
        {},
    )


def script_command(name: str) -> Callable[[int], tuple[list[str], dict[str, str]]]:
    """`python examples/<name>_app.py`, on the port `$PORT` says."""
    script = str(EXAMPLES / f"{name}_app.py")
    return lambda port: ([script], {"PORT": str(port)})


def flask_cli(port: int) -> tuple[list[str], dict[str, str]]:
    """`flask --app examples/flask_app run`."""
    app = str(EXAMPLES / "flask_app")
    return ["-m", "flask", "--app", app, "run", "--port", str(port)], {}


SERVERS = {
    "starlette-uvicorn": uvicorn_command("starlette"),
    "starlette-script": script_command("starlette"),
    "fastapi-uvicorn": uvicorn_command("fastapi"),
    "flask-cli": flask_cli,
    "flask-script": script_command("flask"),
}


@dataclass
class Served:
    """An example app running as its own process."""

    name: str
    url: str
    process: subprocess.Popen[bytes]
    log: Path

    def wait_until_serving(self) -> None:
        deadline = time.monotonic() + DEADLINE
        while True:
            try:
                httpx.get(f"{self.url}/pinterest/health", timeout=2, trust_env=False)
            except httpx.TransportError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    output = self.log.read_text()
                    raise AssertionError(
                        f"the example never answered:\n{output}"
                    ) from None
                time.sleep(0.05)
            else:
                return

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)


@pytest.fixture(scope="module")
def served(
    served_fake: tuple[FakePinterestAPI, str],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[dict[str, Served]]:
    """Every example started as the README says, each in a temporary directory.

    They start side by side, which keeps the module fast; each is stopped
    at the end whatever happens.
    """
    env = credentials(served_fake[1])
    servers: dict[str, Served] = {}
    try:
        for key, command in SERVERS.items():
            workdir = tmp_path_factory.mktemp(key)
            port = free_port()
            args, extra_env = command(port)
            log = workdir / "server.log"
            with log.open("wb") as output:
                process = subprocess.Popen(
                    [sys.executable, *args],
                    cwd=workdir,
                    env=process_env(**env, **extra_env),
                    stdout=output,
                    stderr=subprocess.STDOUT,
                )
            name = key.split("-")[0]
            servers[key] = Served(name, f"http://127.0.0.1:{port}", process, log)
        for server in servers.values():
            server.wait_until_serving()
        yield servers
    finally:
        for server in servers.values():
            server.stop()


@pytest.mark.parametrize("key", sorted(SERVERS))
def test_served_example_delivers_the_checkout_and_a_posted_event_hashed(
    key: str, served: dict[str, Served], fake: FakePinterestAPI
) -> None:
    """Both with the event id the shop showed: the page's, the 202's."""
    server = served[key]
    method, path = CHECKOUT[server.name]
    with httpx.Client(
        base_url=server.url, headers={"user-agent": USER_AGENT}, trust_env=False
    ) as browser:
        page = browser.request(method, path)
        posted = browser.post(
            "/pinterest/track-event",
            content=json.dumps(POSTED_EVENT),
            headers={"content-type": "text/plain;charset=UTF-8"},
        )
    [posted_id] = posted.json()["event_ids"]

    checkout = wait_for_event(fake, Page(page.status_code, page.text).shown_event_id())
    add_to_cart = wait_for_event(fake, posted_id)

    assert checkout["user_data"]["em"] == [ORDER_EMAIL_HASH]
    assert add_to_cart["user_data"]["em"] == [BUYER_EMAIL_HASH]


@pytest.mark.parametrize("key", sorted(SERVERS))
def test_served_example_does_not_believe_a_local_peers_forwarded_for(
    key: str, served: dict[str, Served], fake: FakePinterestAPI
) -> None:
    """uvicorn's own proxy handling, on by default, trusts 127.0.0.1."""
    server = served[key]
    with httpx.Client(base_url=server.url, trust_env=False) as browser:
        posted = browser.post(
            "/pinterest/track-event",
            content=json.dumps(POSTED_EVENT),
            headers={
                "content-type": "text/plain;charset=UTF-8",
                "user-agent": USER_AGENT,
                "x-forwarded-for": BROWSER_IP,
            },
        )
    [posted_id] = posted.json()["event_ids"]

    event = wait_for_event(fake, posted_id)

    assert event["user_data"]["client_ip_address"] == "127.0.0.1"


# --- send_batch.py ---------------------------------------------------------------


def send_batch(
    *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(EXAMPLES / "send_batch.py"), *args],
        capture_output=True,
        text=True,
        env=process_env(**(env or {})),
        timeout=60,
        check=False,
    )


def result_lines(stdout: str) -> list[list[str]]:
    """The per-event lines: event name, event id, status (and a note)."""
    return [line.split() for line in stdout.splitlines() if line.startswith("  ")]


def test_send_batch_with_fake_prints_one_processed_result_per_event() -> None:
    result = send_batch("--fake")

    assert result.returncode == 0, result.stderr
    assert [line[::2] for line in result_lines(result.stdout)] == [
        ["checkout", "processed"],
        ["lead", "processed"],
        ["signup", "processed"],
    ]


def test_send_batch_without_credentials_uses_the_fake_and_says_so() -> None:
    result = send_batch()

    assert result.returncode == 0
    assert "No Pinterest credentials: sending to a fake API." in result.stderr


def test_send_batch_sends_the_events_hashed_in_one_request(
    fake: FakePinterestAPI, api_url: str
) -> None:
    result = send_batch(env=credentials(api_url))

    [request] = fake.requests
    printed_ids = [line[1] for line in result_lines(result.stdout)]
    assert request.event_ids() == printed_ids
    assert request.json()["data"][0]["user_data"]["em"] == [ORDER_EMAIL_HASH]


@pytest.mark.parametrize(
    ("args", "test_mode"), [((), True), (("--live",), False)], ids=["test", "live"]
)
def test_send_batch_uses_test_mode_unless_live(
    args: tuple[str, ...], test_mode: bool, fake: FakePinterestAPI, api_url: str
) -> None:
    send_batch(*args, env=credentials(api_url))

    assert [request.is_test for request in fake.requests] == [test_mode]


def test_send_batch_refused_request_exits_2_without_a_traceback(
    fake: FakePinterestAPI, api_url: str
) -> None:
    """An ad account the token does not serve: Pinterest answers 403."""
    env = {**credentials(api_url), "PINTEREST_AD_ACCOUNT_ID": "123"}

    result = send_batch(env=env)

    assert result.returncode == 2
    assert result.stderr.splitlines()[-1].startswith("Not sent: Pinterest answered 403")
    assert "Traceback" not in result.stderr
    assert FAKE_ACCESS_TOKEN not in result.stderr


# --- the README's examples ---------------------------------------------------


def readme_example(name: str) -> str:
    """The Python block that the README marks `<!-- readme-example: NAME -->`."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    found = re.search(
        rf"<!-- readme-example: {name} -->\n```python\n(.*?)```", readme, re.DOTALL
    )
    assert found is not None, f"no {name!r} example in the README"
    return found[1]


def run_python(code: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=process_env(**env),
        timeout=60,
        check=False,
    )


def test_readme_track_example_sends_a_mapping_and_a_built_event(
    fake: FakePinterestAPI, api_url: str
) -> None:
    result = run_python(readme_example("track"), credentials(api_url))

    assert result.returncode == 0, result.stderr
    lead, checkout = fake.events
    assert (lead["event_name"], lead["action_source"]) == ("lead", "offline")
    assert lead["user_data"]["em"] == [sha256_hex("ann@example.com")]
    assert (checkout["event_name"], checkout["event_id"]) == ("checkout", "order-1001")


def test_readme_fake_example_prints_what_the_fake_received() -> None:
    result = run_python(readme_example("fake"), {})

    assert result.returncode == 0, result.stderr
    assert sha256_hex("ann@example.com") in result.stdout


def test_readme_gives_the_token_and_ad_account_the_fake_accepts() -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")

    assert f"export PINTEREST_ACCESS_TOKEN={FAKE_ACCESS_TOKEN}\n" in readme
    assert f"export PINTEREST_AD_ACCOUNT_ID={FAKE_AD_ACCOUNT_ID}\n" in readme
