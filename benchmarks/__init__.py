"""Benchmarks of pinterest_mw: runnable scripts, not tests.

Run everything with `python -m benchmarks` from the repository root; see
`benchmarks/README.md` for what is measured and the latest figures.
"""
