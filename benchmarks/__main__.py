"""`python -m benchmarks`: run every benchmark and print the table."""

from __future__ import annotations

from benchmarks.run import main

main()
