"""Benchmarks: run them as scripts (``python benchmarks/bench_ingest.py``)."""
