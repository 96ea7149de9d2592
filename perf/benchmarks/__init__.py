"""Benchmark programs that run inside each interpreter under test (pyperf scripts and counter targets)."""
