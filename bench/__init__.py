"""Benchmarks: `python -m bench.<name>` from the repository root; one JSON line per measurement."""
