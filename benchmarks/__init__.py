"""Latency and numeric drift of every runtime on the same inputs (see README, Benchmarks)."""
