"""Start benchmark servers as subprocesses, and always stop them."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

__all__ = ["ROOT", "Server", "serve"]

ROOT = Path(__file__).resolve().parent.parent
"""The repository root: servers run from there, so `benchmarks` imports."""


class Server:
    """A running benchmark server: its process and base URL."""

    def __init__(self, process: subprocess.Popen[bytes], port: int, kind: str) -> None:
        self.process = process
        self.port = port
        self.kind = kind
        self.url = f"http://127.0.0.1:{port}"

    def __repr__(self) -> str:
        return f"Server({self.kind!r}, {self.url!r}, pid={self.process.pid})"


def _wait_until_accepting(port: int, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server on port {port} exited at start")
        with (
            contextlib.suppress(OSError),
            socket.create_connection(("127.0.0.1", port), timeout=0.5),
        ):
            return
        time.sleep(0.05)
    raise RuntimeError(f"server on port {port} did not start in time")


def stop(process: subprocess.Popen[bytes]) -> None:
    """Terminate a server's process group; kill it if it lingers."""
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=5)


@contextlib.contextmanager
def serve(kind: str, *args: str, log: Path | None = None) -> Iterator[Server]:
    """Run `python -m benchmarks.serve KIND ARGS...` until the block ends."""
    command: Sequence[str] = [sys.executable, "-m", "benchmarks.serve", kind, *args]
    stderr = log.open("ab") if log is not None else subprocess.DEVNULL
    process = subprocess.Popen(
        command,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=stderr,
        start_new_session=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        if not line.strip().isdigit():
            raise RuntimeError(f"benchmark server {kind} did not start")
        port = int(line)
        _wait_until_accepting(port, process)
        yield Server(process, port, kind)
    finally:
        stop(process)
        if process.stdout is not None:
            process.stdout.close()
        if log is not None:
            stderr.close()  # type: ignore[union-attr]
