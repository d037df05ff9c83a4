"""Benchmarks of rlyard's runtime (run as ``python -m bench.<name>``)."""
