"""Run the benchmarks and print one table of medians and ratios.

```
python -m benchmarks                 # everything, about four minutes
python -m benchmarks --only hashing,decorator --rounds 5
python -m benchmarks --loadgen python --json results.json
```

Every figure is a median over rounds; every ratio compares with a baseline
measured in the same rounds, alternated with it, because this machine is
shared and noisy. Servers run as subprocesses on free ports of 127.0.0.1
and are stopped when the run ends, however it ends; nothing leaves the
machine.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

from benchmarks import bulk, decorator, endpoint, hashing
from benchmarks._report import Row, format_table, load_average, machine
from benchmarks.loadgen import has_wrk

__all__ = ["main"]

SECTIONS = ("hashing", "decorator", "endpoint", "bulk")


def _log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _exit_on_signal(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> None:
    """Parse the options, run the chosen sections, print the table."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks")
    parser.add_argument(
        "--only",
        default=",".join(SECTIONS),
        help="comma-separated: " + ", ".join(SECTIONS),
    )
    parser.add_argument("--rounds", type=int, default=3, help="rounds per comparison")
    parser.add_argument(
        "--duration",
        type=float,
        default=4.0,
        help="seconds of load per server and round",
    )
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument(
        "--loadgen",
        choices=("auto", "wrk", "python"),
        default="auto",
        help="auto: wrk when installed, else the Python keep-alive client",
    )
    parser.add_argument("--json", help="also write the rows and the machine here")
    parser.add_argument(
        "--markdown", action="store_true", help="print a Markdown table"
    )
    args = parser.parse_args(argv)

    chosen = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = set(chosen) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown sections: {', '.join(sorted(unknown))}")
    tool = args.loadgen
    if tool == "auto":
        tool = "wrk" if has_wrk() else "python"
    if tool == "wrk" and not has_wrk():
        parser.error("wrk is not installed (apt-get install wrk), use --loadgen python")
    # A SIGTERM or SIGHUP unwinds like Ctrl-C does, so that every server
    # started so far is stopped on the way out (see `benchmarks._procs`).
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _exit_on_signal)
    # The servers import `benchmarks` from the repository root.
    os.chdir(Path(__file__).resolve().parent.parent)

    info = machine()
    info["load generator"] = tool
    load = {"duration": args.duration, "connections": args.connections, "tool": tool}
    runners: dict[str, Callable[[], list[Row]]] = {
        "hashing": lambda: hashing.run(rounds=max(args.rounds, 5), log=_log),
        "decorator": lambda: decorator.run(rounds=args.rounds, log=_log, **load),
        "endpoint": lambda: endpoint.run(rounds=args.rounds, log=_log, **load),
        "bulk": lambda: bulk.run(rounds=args.rounds, log=_log),
    }
    rows: list[Row] = []
    started = time.perf_counter()
    for section in SECTIONS:
        if section in chosen:
            _log(f"running {section}")
            rows += runners[section]()
    info["run time"] = f"{time.perf_counter() - started:.0f} s"
    info["load average at end"] = load_average()

    print()
    for key, value in info.items():
        print(f"{key}: {value}")
    print()
    print(format_table(rows, markdown=args.markdown))
    notes = [f"- {r.benchmark} / {r.variant}: {r.note}" for r in rows if r.note]
    if notes:
        print("\nnotes:")
        print("\n".join(notes))
    if args.json:
        report = {"machine": info, "rows": [r.as_dict() for r in rows]}
        Path(args.json).write_text(json.dumps(report, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
