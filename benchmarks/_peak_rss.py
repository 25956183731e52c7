"""Run a command's Python entry point and record its own peak memory.

```
python -m benchmarks._peak_rss OUTFILE cli ARGS...      # pinterest-mw ARGS
python -m benchmarks._peak_rss OUTFILE module NAME ARGS...
```

At exit the process writes its peak resident memory in KiB to OUTFILE:
`VmHWM` from `/proc/self/status`, the high-water mark of this process's
own address space since its `exec`. (`getrusage().ru_maxrss` would not
do: Linux carries it over `fork` and `exec`, so a child of a large
benchmark process would report its parent's peak.)
"""

from __future__ import annotations

import atexit
import resource
import runpy
import sys
from pathlib import Path

__all__ = ["main", "peak_rss_kib"]


def peak_rss_kib() -> int:
    """This process's peak resident memory since it started, in KiB."""
    try:
        status = Path("/proc/self/status").read_text(encoding="ascii")
    except OSError:  # not Linux: the best there is
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise RuntimeError("no VmHWM in /proc/self/status")


def main() -> None:
    """Record the peak at exit, then run the command."""
    out, kind, *rest = sys.argv[1:]

    def record() -> None:
        Path(out).write_text(str(peak_rss_kib()), encoding="ascii")

    atexit.register(record)
    if kind == "cli":
        from pinterest_mw.cli import main as cli_main

        sys.argv = ["pinterest-mw", *rest]
        cli_main()
    else:
        name, *arguments = rest
        sys.argv = [name, *arguments]
        runpy.run_module(name, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
