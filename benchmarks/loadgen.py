"""Load generators: wrk when it is installed, else a Python keep-alive client.

Both run a closed loop: `connections` clients each send the same request
again as soon as the previous answer arrived, for `duration` seconds, over
keep-alive connections. They report requests per second, the 50th and 99th
latency percentiles, and the answers that were not 2xx.

```
python -m benchmarks.loadgen URL --method POST --body-file F --header "K: V"
```

runs the Python client alone and prints its result as JSON; the benchmark
runs it that way, in a process of its own, so that it never shares an
interpreter with what it measures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from urllib.parse import urlsplit

__all__ = ["LoadResult", "has_wrk", "run_load"]


@dataclass(frozen=True, slots=True)
class LoadResult:
    """One load run: throughput, latency percentiles (ms), failures."""

    requests_per_second: float
    p50_ms: float
    p99_ms: float
    requests: int
    non_2xx: int
    errors: int
    tool: str


def has_wrk() -> bool:
    """Whether the wrk binary is on PATH."""
    return shutil.which("wrk") is not None


def run_load(
    url: str,
    *,
    method: str = "POST",
    body: bytes = b"",
    headers: Mapping[str, str] | None = None,
    duration: float = 5.0,
    connections: int = 16,
    tool: str = "auto",
) -> LoadResult:
    """Load `url` for `duration` seconds; `tool` is `auto`, `wrk` or `python`."""
    headers = dict(headers or {})
    if tool == "auto":
        tool = "wrk" if has_wrk() else "python"
    if tool == "wrk":
        return _run_wrk(url, method, body, headers, duration, connections)
    return _run_python(url, method, body, headers, duration, connections)


# --- wrk ------------------------------------------------------------------------


def _lua_string(data: bytes) -> str:
    return '"' + "".join(f"\\{byte}" for byte in data) + '"'


_WRK_SCRIPT = """
wrk.method = {method}
wrk.body = {body}
{headers}
done = function(summary, latency, requests)
  io.write(string.format("RESULT %d %f %f %d %d %d\\n",
    summary.requests, latency:percentile(50), latency:percentile(99),
    summary.errors.connect + summary.errors.read + summary.errors.write
      + summary.errors.timeout, summary.errors.status, summary.duration))
end
"""


def _run_wrk(
    url: str,
    method: str,
    body: bytes,
    headers: Mapping[str, str],
    duration: float,
    connections: int,
) -> LoadResult:
    header_lines = "\n".join(
        f"wrk.headers[{_lua_string(k.encode())}] = {_lua_string(v.encode())}"
        for k, v in headers.items()
    )
    script = _WRK_SCRIPT.format(
        method=_lua_string(method.encode()),
        body=_lua_string(body),
        headers=header_lines,
    )
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as file:
        file.write(script)
        path = Path(file.name)
    try:
        output = subprocess.run(
            [
                "wrk",
                "-t1",
                f"-c{connections}",
                f"-d{max(1, round(duration))}s",
                "--timeout",
                "10s",
                "-s",
                str(path),
                url,
            ],
            capture_output=True,
            text=True,
            check=True,
            timeout=duration + 30,
        ).stdout
    finally:
        path.unlink(missing_ok=True)

    return _parse_wrk(output)


def _parse_wrk(output: str) -> LoadResult:
    found = re.search(r"RESULT (\d+) ([\d.]+) ([\d.]+) (\d+) (\d+) (\d+)", output)
    if found is None:
        raise RuntimeError("could not read wrk's output:\n" + output)
    requests, p50_us, p99_us, errors, non_2xx, duration_us = found.groups()
    # wrk counts answers outside 2xx and 3xx itself ("status" errors); a Lua
    # response() hook would make it parse every answer in Lua instead.
    return LoadResult(
        requests_per_second=int(requests) / (int(duration_us) / 1e6),
        p50_ms=float(p50_us) / 1000,
        p99_ms=float(p99_us) / 1000,
        requests=int(requests),
        non_2xx=int(non_2xx),
        errors=int(errors),
        tool="wrk",
    )


# --- Python ---------------------------------------------------------------------


def _run_python(
    url: str,
    method: str,
    body: bytes,
    headers: Mapping[str, str],
    duration: float,
    connections: int,
) -> LoadResult:
    with tempfile.NamedTemporaryFile(suffix=".body", delete=False) as file:
        file.write(body)
        body_path = Path(file.name)
    command = [
        sys.executable,
        "-m",
        "benchmarks.loadgen",
        url,
        "--method",
        method,
        "--body-file",
        str(body_path),
        "--duration",
        str(duration),
        "--connections",
        str(connections),
    ]
    for name, value in headers.items():
        command += ["--header", f"{name}: {value}"]
    try:
        output = subprocess.run(
            command,
            capture_output=True,
            text=True,
            check=True,
            timeout=duration + 30,
            cwd=Path(__file__).resolve().parent.parent,
        ).stdout
    finally:
        body_path.unlink(missing_ok=True)

    return LoadResult(**json.loads(output))


def _request_bytes(
    url: str, method: str, body: bytes, headers: Mapping[str, str]
) -> tuple[str, int, bytes]:
    parts = urlsplit(url)
    host = parts.hostname or "127.0.0.1"
    port = parts.port or 80
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}:{port}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    if body or method in ("POST", "PUT", "PATCH"):
        lines.append(f"Content-Length: {len(body)}")
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    return host, port, head + body


async def _read_response(reader: asyncio.StreamReader) -> int:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = 0
    chunked = False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"transfer-encoding" and b"chunked" in value.lower():
            chunked = True
    if chunked:
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            await reader.readexactly(size + 2)
            if size == 0:
                break
    elif length:
        await reader.readexactly(length)

    return status


async def _client(
    host: str,
    port: int,
    request: bytes,
    deadline: float,
    latencies: list[float],
    counts: dict[str, int],
) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        while time.perf_counter() < deadline:
            start = time.perf_counter()
            writer.write(request)
            try:
                status = await _read_response(reader)
            except (asyncio.IncompleteReadError, ConnectionError):
                counts["errors"] += 1
                writer.close()
                reader, writer = await asyncio.open_connection(host, port)
                continue
            latencies.append(time.perf_counter() - start)
            if not 200 <= status < 300:
                counts["non_2xx"] += 1
    finally:
        writer.close()


async def _python_load(
    url: str,
    method: str,
    body: bytes,
    headers: Mapping[str, str],
    duration: float,
    connections: int,
) -> LoadResult:
    host, port, request = _request_bytes(url, method, body, headers)
    latencies: list[float] = []
    counts = {"errors": 0, "non_2xx": 0}
    start = time.perf_counter()
    deadline = start + duration
    await asyncio.gather(
        *(
            _client(host, port, request, deadline, latencies, counts)
            for _ in range(connections)
        )
    )
    elapsed = time.perf_counter() - start
    latencies.sort()
    count = len(latencies)

    def percentile(share: float) -> float:
        if not latencies:
            return float("nan")
        return latencies[min(count - 1, int(share * count))] * 1000

    return LoadResult(
        requests_per_second=count / elapsed,
        p50_ms=percentile(0.50),
        p99_ms=percentile(0.99),
        requests=count,
        non_2xx=counts["non_2xx"],
        errors=counts["errors"],
        tool="python",
    )


def main(argv: list[str] | None = None) -> None:
    """Run the Python load generator once and print its result as JSON."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.loadgen")
    parser.add_argument("url")
    parser.add_argument("--method", default="GET")
    parser.add_argument("--body-file")
    parser.add_argument("--header", action="append", default=[])
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--connections", type=int, default=16)
    args = parser.parse_args(argv)

    body = Path(args.body_file).read_bytes() if args.body_file else b""
    headers: dict[str, str] = {}
    for line in args.header:
        name, _, value = line.partition(":")
        headers[name.strip()] = value.strip()
    result = asyncio.run(
        _python_load(
            args.url, args.method, body, headers, args.duration, args.connections
        )
    )
    print(json.dumps(asdict(result)))


if __name__ == "__main__":
    main()
