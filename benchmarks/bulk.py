"""Benchmark 4: `pinterest-mw send` on generated CSV files.

Files of 20,000 and 200,000 rows (event times within the last five days,
twelve columns of raw personal data and custom data) are sent to the fake
Pinterest API on 127.0.0.1. For each run: events per second, upstream
requests per event (1/1000 expected) and the peak resident memory of the
command's process (its own `getrusage`, see `benchmarks._peak_rss`). The
baseline is `benchmarks.naive_upload`, a hand-written script that hashes
without normalizing or validating.
Target: requests per event 1/1000, and memory flat in the file size (the
200,000-row peak within 1.25 times the 20,000-row one).
"""

from __future__ import annotations

import csv
import math
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from benchmarks._procs import ROOT, serve
from benchmarks._report import Row, median, ratio_median
from pinterest_mw.testing import FAKE_ACCESS_TOKEN, FAKE_AD_ACCOUNT_ID

__all__ = ["run"]

SIZES = (20_000, 200_000)
MEMORY_TOLERANCE = 1.25
COLUMNS = (
    "event_name",
    "event_time",
    "event_id",
    "email",
    "phone",
    "first_name",
    "last_name",
    "city",
    "state",
    "zip_code",
    "country",
    "external_id",
    "value",
    "currency",
    "order_id",
)
_STATES = ("CA", "New York", "tx", "Florida", "WA")


def generate(path: Path, rows: int) -> None:
    """Write a CSV of `rows` offline checkouts from the last five days."""
    now = int(time.time())
    with path.open("w", newline="", encoding="utf-8") as file:
        writer = csv.writer(file)
        writer.writerow(COLUMNS)
        for index in range(rows):
            writer.writerow(
                (
                    "checkout",
                    now - 3600 - (index * 7919) % (5 * 86400),
                    f"order-{index}",
                    f"Customer.{index}@Example.com",
                    f"+1 650 {200 + index % 800:03d} {index % 10000:04d}",
                    "Ann",
                    f"Buyer{index % 5000}",
                    "San Francisco",
                    _STATES[index % len(_STATES)],
                    f"{10000 + index % 89999:05d}",
                    "US",
                    f"crm-{index}",
                    f"{10 + index % 500}.{index % 100:02d}",
                    "USD",
                    f"order-{index}",
                )
            )


def _run(command: list[str], env: dict[str, str]) -> tuple[float, int]:
    """Run `python -m benchmarks._peak_rss` with `command`: wall time, peak KiB."""
    with tempfile.TemporaryDirectory() as workdir:
        peak_file = Path(workdir) / "peak"
        start = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-m", "benchmarks._peak_rss", str(peak_file), *command],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        elapsed = time.perf_counter() - start
        if done.returncode != 0:
            raise RuntimeError(
                f"{command[:2]} exited {done.returncode}: {done.stderr[-2000:]}"
            )
        peak = int(peak_file.read_text())

    return elapsed, peak


def run(*, rounds: int, log: Callable[[str], None]) -> list[Row]:
    """Send both files with the CLI and with the baseline, alternated."""
    rows: list[Row] = []
    with (
        tempfile.TemporaryDirectory() as workdir,
        serve("fake", "--latency", "0") as fake,
    ):
        env = {
            **os.environ,
            "PINTEREST_ACCESS_TOKEN": FAKE_ACCESS_TOKEN,
            "PINTEREST_AD_ACCOUNT_ID": FAKE_AD_ACCOUNT_ID,
            "PINTEREST_API_URL": fake.url,
        }

        def stats() -> dict[str, int]:
            counts: dict[str, int] = httpx.get(fake.url + "/_stats").json()
            return counts

        results: dict[int, dict[str, list[float]]] = {}
        for size in SIZES:
            path = Path(workdir) / f"conversions-{size}.csv"
            generate(path, size)
            runs: dict[str, list[float]] = {
                key: [] for key in ("ours", "naive", "rss", "naive_rss", "rpe")
            }
            # The large file once or twice: it is what takes the time.
            for number in range(rounds if size == SIZES[0] else max(1, rounds // 2)):
                order = ("ours", "naive") if number % 2 == 0 else ("naive", "ours")
                for who in order:
                    before = stats()
                    if who == "ours":
                        command = ["cli", "send", str(path)]
                    else:
                        command = [
                            "module",
                            "benchmarks.naive_upload",
                            str(path),
                            fake.url,
                        ]
                    elapsed, rss = _run(command, env)
                    after = stats()
                    events = after["events"] - before["events"]
                    requests = after["requests"] - before["requests"]
                    if events != size:
                        raise RuntimeError(
                            f"{who}: the fake got {events} of {size} events"
                        )
                    runs[who].append(size / elapsed)
                    runs["rss" if who == "ours" else "naive_rss"].append(rss)
                    if who == "ours":
                        runs["rpe"].append(requests / events)
                    log(
                        f"bulk {size:,} rows {who}: {size / elapsed:,.0f} events/s, "
                        f"{requests} requests, peak RSS {rss / 1024:.0f} MiB"
                    )
            results[size] = runs

    for size in SIZES:
        runs = results[size]
        rpe = median(runs["rpe"])
        expected = math.ceil(size / 1000) / size
        rows.append(
            Row(
                "4 bulk send",
                f"{size:,} rows: throughput",
                median(runs["ours"]),
                "events/s",
                "naive script",
                ratio_median(runs["ours"], runs["naive"]),
                note=f"naive {median(runs['naive']):,.0f} events/s",
            )
        )
        rows.append(
            Row(
                "4 bulk send",
                f"{size:,} rows: upstream requests per event",
                rpe * 1000,
                "per 1000",
                target="1 per 1000",
                met=abs(rpe - expected) < 1e-12,
            )
        )
    small = median(results[SIZES[0]]["rss"])
    for size in SIZES:
        peak = median(results[size]["rss"])
        naive_rss = median(results[size]["naive_rss"])
        last = size == SIZES[-1]
        rows.append(
            Row(
                "4 bulk send",
                f"{size:,} rows: peak RSS of the CLI",
                peak / 1024,
                "MiB",
                f"{SIZES[0]:,} rows" if last else "naive script",
                peak / small if last else peak / naive_rss,
                f"<= {MEMORY_TOLERANCE}" if last else "",
                peak / small <= MEMORY_TOLERANCE if last else None,
                note=f"naive script {naive_rss / 1024:.0f} MiB",
            )
        )

    return rows
