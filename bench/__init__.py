"""Benchmarks: ``python -m bench`` (or ``scripts/bench``) measures the sidecar against a
plain upstream and nginx in one run; see docs/benchmarks.md."""
