"""The process bolt-wheel profiles and verifies: a script run by the target interpreter, never imported by buildsys.

    python buildsys/pipeline/wheelbolt_driver.py [--callgrind] [--maps FILE] workload NAME STEPS
    python buildsys/pipeline/wheelbolt_driver.py [--callgrind] [--maps FILE] call MODULE:FUNC [ARG ...]
    python buildsys/pipeline/wheelbolt_driver.py loaded MODULE            # import it; print the loaded .so files (JSON)

`workload` opens a runtime workload (`runtime.workloads.open_workload`: import MindSpore, load the
checkpoint, build and warm up the engine) and then runs STEPS engine steps. `call` imports MODULE and
calls FUNC(*ARGS), which does its set-up and returns the zero-argument callable to measure.

With --callgrind the process runs under `valgrind --tool=callgrind --instr-atstart=no`, and only the
measured call is instrumented: the driver asks callgrind itself, `callgrind_control -i on <its pid>`
before and `-i off` after. Why this toggle: it needs no compiled helper (a client request is a magic
instruction sequence that Python cannot issue without a C extension or ctypes), it keeps import and
warm-up uninstrumented (the slow part under callgrind), and it brackets exactly the measured steps.
callgrind_control talks to valgrind through vgdb, which valgrind polls while the program runs code,
so the driver spins on the command's completion instead of blocking in wait().

--maps FILE writes, just before the measured call, every shared object the process has mapped and its
load base (from /proc/self/maps), so the converter can check callgrind's addresses.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the checkout: hostpgo, runtime

from hostpgo.errors import HostpgoError
from hostpgo.fsutil import write_json
from hostpgo.runner import Runner


def mapped_objects(maps_text: str) -> dict[str, int]:
    """File-backed mappings ending in .so (or .so.N): path -> lowest start address (the load base)."""
    out: dict[str, int] = {}
    for line in maps_text.splitlines():
        parts = line.split(None, 5)
        if len(parts) < 6 or not parts[5].startswith("/"):
            continue
        path = parts[5].strip()
        name = os.path.basename(path)
        if ".so" not in name:
            continue
        start = int(parts[0].split("-")[0], 16)
        out[path] = min(start, out.get(path, start))
    return out


def instrumentation(on: bool) -> None:
    """`callgrind_control -i on|off <this pid>`, spinning until it answers (see the module docstring)."""
    runner = Runner(None)
    failure: list[Exception] = []

    def ask() -> None:
        try:
            runner.capture(["callgrind_control", "-i", "on" if on else "off", str(os.getpid())], timeout=300)
        except (HostpgoError, OSError) as e:  # reported on the main thread
            failure.append(e)

    t = threading.Thread(target=ask, daemon=True)
    t.start()
    spins = 0
    while t.is_alive():
        spins += 1  # run code, so valgrind polls vgdb
    if failure:
        raise failure[0]


def _measured(args) -> tuple[object, dict]:
    if args.mode == "workload":
        from runtime.workloads import open_workload

        wl = open_workload(args.name, checkpoint=None, seed=0)
        steps = int(args.steps)
        return (lambda: wl.run_steps(steps)), {"workload": args.name, "steps": steps}
    module, _, func = args.target.partition(":")
    fn = getattr(importlib.import_module(module), func)
    return fn(*args.args), {"call": args.target, "args": args.args}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--callgrind", action="store_true", help="toggle callgrind instrumentation around the call")
    p.add_argument("--maps", type=Path, help="write the mapped shared objects and load bases here (JSON)")
    sub = p.add_subparsers(dest="mode", required=True)
    w = sub.add_parser("workload")
    w.add_argument("name")
    w.add_argument("steps")
    c = sub.add_parser("call")
    c.add_argument("target")
    c.add_argument("args", nargs="*")
    lo = sub.add_parser("loaded")
    lo.add_argument("module")
    args = p.parse_args(argv)
    try:
        if args.mode == "loaded":
            importlib.import_module(args.module)
            print(json.dumps(sorted(mapped_objects(Path("/proc/self/maps").read_text()))))
            return 0
        fn, what = _measured(args)
        if args.maps:
            write_json(args.maps, {"pid": os.getpid(), **what,
                                   "objects": mapped_objects(Path("/proc/self/maps").read_text())})
        if args.callgrind:
            instrumentation(True)
        result = fn()
        if args.callgrind:
            instrumentation(False)
    except HostpgoError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    summary = {k: v for k, v in result.items() if k in ("steps", "tokens", "digest", "dispatches")} \
        if isinstance(result, dict) else {"result": str(result)}
    print(json.dumps({**what, **summary}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
