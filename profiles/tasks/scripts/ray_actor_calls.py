"""Ray actor round trips: a local cluster, a few actors, many method calls through the core worker, the results
checked. The training task `ray-actor-calls` (a stand-in until the runtime's Ray workload lands) and the Ray
recipe's verify both run it; every worker process writes its own raw profile when the build is instrumented."""
from __future__ import annotations

import argparse
import json
import sys

import ray


@ray.remote
class Accumulator:
    def __init__(self) -> None:
        self.total = 0

    def add(self, x: int) -> int:
        self.total += x
        return self.total


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--actors", type=int, default=2)
    ap.add_argument("--calls", type=int, default=200)
    args = ap.parse_args(argv)
    ray.init(num_cpus=args.actors, include_dashboard=False)
    try:
        actors = [Accumulator.remote() for _ in range(args.actors)]
        ray.get([a.add.remote(i) for i in range(args.calls) for a in actors])
        finals = ray.get([a.add.remote(0) for a in actors])
    finally:
        ray.shutdown()
    expected = args.calls * (args.calls - 1) // 2
    ok = all(f == expected for f in finals)
    print(json.dumps({"actors": args.actors, "calls": args.calls, "finals": finals, "expected": expected, "ok": ok}))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
