"""Call ASGI and WSGI apps in-process, without a server or a socket.

Used to time and profile the request path itself: what a server adds
(parsing HTTP, the socket) is left out, so these figures are the cost of
the app alone.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["asgi_caller", "time_calls", "wsgi_caller"]


def _scope(method: str, path: str, headers: Mapping[str, str], body: bytes) -> Any:
    raw = [
        (k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()
    ]
    raw.append((b"host", b"127.0.0.1:8000"))
    raw.append((b"content-length", str(len(body)).encode()))
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": raw,
        "client": ("198.51.100.23", 51234),
        "server": ("127.0.0.1", 8000),
        "state": {},
    }


def asgi_caller(
    app: Any,
    method: str,
    path: str,
    headers: Mapping[str, str],
    body: bytes = b"",
) -> Callable[[], Any]:
    """A coroutine function making one request to `app`; returns the status."""
    template = _scope(method, path, headers, body)
    request_message = {"type": "http.request", "body": body, "more_body": False}

    async def call() -> int:
        status = 0

        async def receive() -> Any:
            return request_message

        async def send(message: Any) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]

        await app(dict(template, headers=list(template["headers"])), receive, send)
        return status

    return call


def wsgi_caller(
    app: Any, method: str, path: str, headers: Mapping[str, str], body: bytes = b""
) -> Callable[[], int]:
    """A function making one request to a WSGI `app`; returns the status."""
    import io

    environ: dict[str, Any] = {
        "REQUEST_METHOD": method,
        "SCRIPT_NAME": "",
        "PATH_INFO": path,
        "QUERY_STRING": "",
        "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": "8000",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": "198.51.100.23",
        "HTTP_HOST": "127.0.0.1:8000",
        "CONTENT_LENGTH": str(len(body)),
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": "http",
        "wsgi.errors": io.StringIO(),
        "wsgi.multithread": True,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
    }
    for name, value in headers.items():
        key = name.upper().replace("-", "_")
        if key == "CONTENT_TYPE":
            environ[key] = value
        else:
            environ["HTTP_" + key] = value

    def call() -> int:
        status = ""

        def start_response(line: str, headers: Any, exc_info: Any = None) -> Any:
            nonlocal status
            status = line
            return lambda data: None

        env = dict(environ, **{"wsgi.input": io.BytesIO(body)})
        result = app(env, start_response)
        try:
            for _ in result:
                pass
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                close()
        return int(status[:3])

    return call


def time_calls(call: Callable[[], Any], seconds: float) -> float:
    """Calls per second of a blocking `call`, run for about `seconds`."""
    count = 0
    batch = 50
    start = time.perf_counter()
    deadline = start + seconds
    while True:
        for _ in range(batch):
            call()
        count += batch
        now = time.perf_counter()
        if now >= deadline:
            return count / (now - start)
