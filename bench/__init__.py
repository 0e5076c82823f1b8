"""Benchmark harness, task metrics, reports and comparisons."""
