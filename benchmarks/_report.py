"""Rows of results, the printed table, and what machine they came from."""

from __future__ import annotations

import datetime
import os
import platform
import statistics
import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "Row",
    "format_table",
    "load_average",
    "machine",
    "median",
    "ratio_median",
]


def median(values: Iterable[float]) -> float:
    """The median, or NaN for no values."""
    values = list(values)
    return statistics.median(values) if values else float("nan")


def ratio_median(numerators: Sequence[float], denominators: Sequence[float]) -> float:
    """The median of per-round ratios: each round's pair shares its noise."""
    return median(n / d for n, d in zip(numerators, denominators, strict=True) if d)


@dataclass(frozen=True, slots=True)
class Row:
    """One line of the table.

    `value` is the median over rounds, in `unit`; `baseline` names what the
    ratio compares against (measured in the same rounds), `ratio` is the
    median of the per-round ratios, and `target`/`met` say what was aimed
    for (None: a reference figure, no target).
    """

    benchmark: str
    variant: str
    value: float
    unit: str
    baseline: str = ""
    ratio: float | None = None
    target: str = ""
    met: bool | None = None
    note: str = ""

    def as_dict(self) -> dict[str, Any]:
        """The row as plain data, for JSON."""
        return asdict(self)


def _number(value: float) -> str:
    if value != value:  # NaN
        return "n/a"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def format_table(rows: Sequence[Row], *, markdown: bool = False) -> str:
    """The rows as an aligned text table (or a Markdown one)."""
    header = ["benchmark", "variant", "median", "vs (same run)", "ratio", "target"]
    lines = [header]
    for row in rows:
        verdict = "" if row.met is None else ("met" if row.met else "MISSED")
        target = f"{row.target} {verdict}".strip()
        lines.append(
            [
                row.benchmark,
                row.variant,
                f"{_number(row.value)} {row.unit}",
                row.baseline,
                "" if row.ratio is None else f"{row.ratio:.2f}",
                target,
            ]
        )
    if markdown:
        out = ["| " + " | ".join(lines[0]) + " |"]
        out.append("|" + "|".join("---" for _ in header) + "|")
        out += ["| " + " | ".join(cells) + " |" for cells in lines[1:]]
        return "\n".join(out)
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    text = []
    for index, cells in enumerate(lines):
        text.append("  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)))
        if index == 0:
            text.append("  ".join("-" * w for w in widths))
    return "\n".join(line.rstrip() for line in text)


def _cpu_model() -> str:
    try:
        with Path("/proc/cpuinfo").open(encoding="utf-8") as file:
            for line in file:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine() -> dict[str, str]:
    """Date, cores, CPU model, Python and server implementations."""
    try:
        import uvicorn

        server = f"uvicorn {uvicorn.__version__}"
    except ImportError:  # pragma: no cover - uvicorn is in the dev group
        server = "uvicorn missing"
    http = "httptools" if _importable("httptools") else "h11"
    loop = "uvloop" if _importable("uvloop") else "asyncio"
    return {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cores": str(len(os.sched_getaffinity(0))),  # what nproc says
        "cpu": _cpu_model(),
        "python": platform.python_version(),
        "server": f"{server} (http={http}, loop={loop}), 1 worker, 127.0.0.1",
        "source": _source(),
        "load average at start": load_average(),
    }


def load_average() -> str:
    """The 1, 5 and 15 minute load averages: how busy the machine was."""
    return " / ".join(f"{load:.2f}" for load in os.getloadavg())


def _source() -> str:
    """The commit measured, and whether the working tree differs from it."""
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        changed = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "pinterest_mw"],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.splitlines()
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"
    if not changed:
        return f"{commit}, pinterest_mw/ unmodified"
    return f"{commit} + {len(changed)} modified files in pinterest_mw/"


def _importable(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None
