"""hostpgo measurement: A/B latency, counters, host-time attribution and reports for interpreters under test."""

SCHEMA = "hostpgo-perf-run/1"
