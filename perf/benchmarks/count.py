"""Counter target: open a catalog target, warm it, run N units and report; run under perf stat or valgrind."""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from contextlib import contextmanager

from perf.catalog import TARGETS


@contextmanager
def _profiled():
    """Enable a waiting `perf record --control=fifo:CTL,ACK` only around the measured units."""
    spec = os.environ.get("HOSTPGO_PERF_CTL")
    if not spec:
        yield
        return
    ctl_path, ack_path = spec.split(",")
    ctl = os.open(ctl_path, os.O_WRONLY)
    ack = os.open(ack_path, os.O_RDONLY)
    try:
        os.write(ctl, b"enable\n")
        os.read(ack, 16)
        yield
        os.write(ctl, b"disable\n")
        os.read(ack, 16)
    finally:
        os.close(ctl)
        os.close(ack)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m perf.benchmarks.count")
    ap.add_argument("--target", required=True, choices=sorted(TARGETS))
    ap.add_argument("--units", type=int, required=True, help="steps or dispatches to run after warm-up")
    ap.add_argument("--provider", default=None)
    args = ap.parse_args(argv)
    target = TARGETS[args.target]
    provider = importlib.import_module(args.provider or target.provider)
    wl = provider.open_workload(target.workload, checkpoint=None, seed=0)
    if target.mode == "steps":
        wl.run_steps(2)
        with _profiled():
            result = wl.run_steps(args.units) if args.units else {"tokens": 0, "dispatches": 0}
    else:
        wl.dispatch_loop(10)
        with _profiled():
            result = wl.dispatch_loop(args.units) if args.units else {"dispatches": 0}
    json.dump({"target": target.name, "units": args.units, "result": result}, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
