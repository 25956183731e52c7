"""Benchmark 3: normalize and hash full user-data records on one core.

Each record holds all twelve hashed fields, raw (see
`benchmarks.workload.full_user_data`), for 20,000 distinct people, so the
phone cache mostly misses. The baseline is the floor: SHA-256 of the same
twelve texts as they are, with no normalization. Rates are per second of
the process's CPU time, so that time other processes of a shared machine
held the core does not count. Target: at least 50,000 records per second.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Mapping, Sequence

from benchmarks._report import Row, median, ratio_median
from benchmarks.workload import full_user_data
from pinterest_mw.hashing import hash_user_data

__all__ = ["run"]

TARGET = 50_000
PEOPLE = 20_000


def _rate(
    work: Callable[[Mapping[str, str]], object],
    records: Sequence[Mapping[str, str]],
    seconds: float,
) -> tuple[float, float]:
    """Records per CPU second and per wall-clock second, over `seconds` of CPU.

    CPU time is what "one core" means, and it leaves out the time other
    processes of this shared machine held the core; the wall-clock rate is
    kept to show how much that was.
    """
    count = 0
    position = 0
    wall = time.perf_counter()
    start = time.process_time()
    while (elapsed := time.process_time() - start) < seconds:
        for record in records[position : position + 2000]:
            work(record)
        count += 2000
        position = (position + 2000) % len(records)
    return count / elapsed, count / (time.perf_counter() - wall)


def _floor(record: Mapping[str, str]) -> None:
    sha256 = hashlib.sha256
    for value in record.values():
        sha256(value.encode()).hexdigest()


def run(*, rounds: int, log: Callable[[str], None]) -> list[Row]:
    """Alternate our hasher and the floor for `rounds` rounds of ~1 s each."""
    records = [full_user_data(index) for index in range(PEOPLE)]
    fields = {len(hash_user_data(r, path="").fields) for r in records[:100]}
    if fields != {12}:
        raise RuntimeError(f"expected 12 hashed fields per record, got {fields}")
    # One pass first: pycountry's tables load and the caches fill.
    for record in records:
        hash_user_data(record)

    ours: list[float] = []
    ours_wall: list[float] = []
    floor: list[float] = []
    for _ in range(rounds):
        cpu, wall = _rate(hash_user_data, records, 1.0)
        ours.append(cpu)
        ours_wall.append(wall)
        floor.append(_rate(_floor, records, 0.5)[0])
    log(f"hashing: {median(ours):,.0f} records/s (floor {median(floor):,.0f})")

    value = median(ours)
    return [
        Row(
            "3 hashing",
            "hash_user_data, 12 fields, 1 core",
            value,
            "records/CPU-s",
            "sha256 only (floor)",
            ratio_median(ours, floor),
            f">= {TARGET:,}/s",
            value >= TARGET,
            note=f"{1e6 / value:.1f} us of CPU per record; "
            f"{median(ours_wall):,.0f} records per wall-clock second; "
            f"floor {median(floor):,.0f}/CPU-s",
        )
    ]
