"""Benchmarks: fan-out (``python -m bench.fanout``) and others; loopback only."""
