"""Hardware-counter style figures per unit of work, from `perf stat` or, without counters, valgrind.

Each target runs twice in the interpreter's venv, for a small and a large number of units
(steps or dispatches) after the same set-up and warm-up; the difference of the two counts
divided by the difference of units is the cost of one unit, free of start-up and import.

Backends:
- `perf-stat`: hardware counters (instructions, cycles, branches, branch-misses,
  L1-icache-load-misses, iTLB-load-misses); IPC is measured.
- `cachegrind`: exact instruction counts with simulated I1/D1/LL caches and branch predictor at
  a fixed cache geometry (recorded); there are no cycles, so IPC is only a model estimate.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from hostpgo import runner
from hostpgo.errors import CommandError, HostpgoError

from .errors import PerfError, ResultsError, SpecError, UncountableError

PERF_EVENTS = ("instructions", "cycles", "branches", "branch-misses",
               "L1-icache-load-misses", "iTLB-load-misses")

# Fixed simulated cache geometry so that figures do not depend on what valgrind guesses.
CACHEGRIND_CACHES = {"I1": "32768,8,64", "D1": "32768,8,64", "LL": "8388608,16,64"}

# The cost model behind the cachegrind IPC estimate (cycles charged per event).
IPC_MODEL = {"instruction": 1, "L1 miss": 10, "LL miss": 100, "branch mispredict": 15}
IPC_MODEL_TEXT = ("estimate, not measured: cycles modelled as 1 per instruction + 10 per L1 miss "
                  "+ 100 per LL miss + 15 per mispredicted branch")


@dataclass(frozen=True)
class Backend:
    name: str
    reason: str
    """Why this backend was chosen, for the console and the results."""
    config: dict = field(default_factory=dict)


def parse_perf_stat_csv(text: str) -> dict[str, float | None]:
    """Parse `perf stat -x,` output: event -> count, or None where `<not supported>`/`<not counted>`."""
    counts: dict[str, float | None] = {}
    for line in text.splitlines():
        parts = line.strip().split(",")
        if len(parts) < 3 or line.startswith("#"):
            continue
        value, event = parts[0], parts[2]
        if not event:
            continue
        event = event.split(":")[0]
        if value.startswith("<"):
            counts[event] = None
            continue
        try:
            counts[event] = float(value)
        except ValueError:
            continue
    return counts


def perf_stat_supported(run: Callable[..., object] = runner.capture) -> tuple[bool, str]:
    """Whether `perf stat` can count instructions here, with a reason."""
    if runner.which("perf") is None:
        return False, "`perf` is not installed"
    try:
        proc = run(["perf", "stat", "-x,", "-e", "instructions", "--", "true"], check=False, timeout=60)
    except HostpgoError as exc:
        return False, f"`perf stat` failed: {exc}"
    counts = parse_perf_stat_csv(getattr(proc, "stderr", "") or "")
    if counts.get("instructions") is None:
        return False, "`perf stat -e instructions` says <not supported> (no hardware counters, e.g. a VM)"
    return True, "`perf stat -e instructions` counts on this machine"


def select_backend(prefer: str = "auto", *, probe: Callable[[], tuple[bool, str]] = perf_stat_supported) -> Backend:
    """Pick the counter backend: `auto` prefers perf stat and falls back to cachegrind."""
    if prefer not in ("auto", "perf-stat", "cachegrind"):
        raise SpecError(f"--backend {prefer!r}: choose auto, perf-stat or cachegrind")
    if prefer in ("auto", "perf-stat"):
        ok, why = probe()
        if ok:
            return Backend("perf-stat", why, {"events": list(PERF_EVENTS)})
        if prefer == "perf-stat":
            raise SpecError(f"--backend perf-stat: {why}")
        fallback = f"{why}; falling back to valgrind cachegrind (simulated caches and branches)"
    else:
        fallback = "cachegrind asked for with --backend"
    if runner.which("valgrind") is None:
        raise SpecError(f"no counter backend: {fallback}, but `valgrind` is not installed")
    return Backend("cachegrind", fallback, {"caches": dict(CACHEGRIND_CACHES), "ipc_model": dict(IPC_MODEL)})


_CG_LINE = re.compile(r"^(events|summary):\s*(.*)$")


def parse_cachegrind_out(text: str) -> dict[str, int]:
    """Parse a cachegrind out file's `events:` and `summary:` lines into event -> count."""
    events = summary = None
    for line in text.splitlines():
        m = _CG_LINE.match(line)
        if m and m.group(1) == "events":
            events = m.group(2).split()
        elif m and m.group(1) == "summary":
            summary = [int(x) for x in m.group(2).split()]
    if events is None or summary is None:
        raise ResultsError("cachegrind output has no events:/summary: lines")
    if len(events) != len(summary):
        raise ResultsError(f"cachegrind output: {len(events)} events but {len(summary)} summary values")
    return dict(zip(events, summary))


def normalise_cachegrind(raw: Mapping[str, float]) -> dict[str, float]:
    """Cachegrind events in the perf-stat vocabulary, plus simulated extras."""
    g = lambda k: float(raw.get(k, 0))  # noqa: E731
    return {
        "instructions": g("Ir"),
        "branches": g("Bc") + g("Bi"),
        "branch-misses": g("Bcm") + g("Bim"),
        "L1-icache-load-misses": g("I1mr"),
        "LL-icache-misses": g("ILmr"),
        "L1-dcache-misses": g("D1mr") + g("D1mw"),
        "LL-dcache-misses": g("DLmr") + g("DLmw"),
    }


def derived(backend: str, per_unit: Mapping[str, float | None]) -> dict[str, float | None]:
    """IPC (measured or estimated) and miss rates per kilo-instruction."""
    ins = per_unit.get("instructions") or 0.0
    out: dict[str, float | None] = {}
    if backend == "perf-stat":
        cyc = per_unit.get("cycles")
        out["ipc"] = ins / cyc if cyc else None
    else:
        l1 = (per_unit.get("L1-icache-load-misses") or 0) + (per_unit.get("L1-dcache-misses") or 0)
        ll = (per_unit.get("LL-icache-misses") or 0) + (per_unit.get("LL-dcache-misses") or 0)
        cycles = (ins * IPC_MODEL["instruction"] + l1 * IPC_MODEL["L1 miss"]
                  + ll * IPC_MODEL["LL miss"] + (per_unit.get("branch-misses") or 0) * IPC_MODEL["branch mispredict"])
        out["ipc_estimate"] = ins / cycles if cycles else None
    if ins:
        for key in ("branch-misses", "L1-icache-load-misses", "iTLB-load-misses"):
            if per_unit.get(key) is not None:
                out[f"{key} per 1k instructions"] = 1000 * per_unit[key] / ins
    return out


UNDECODABLE_RE = re.compile(r"vex \S+->IR: unhandled instruction bytes: ((?:0x[0-9A-Fa-f]+ ?)+)")
"""What valgrind prints before it stops a program at an instruction its VEX decoder does not know."""
UNCOUNTABLE = "valgrind cannot decode an instruction it executes"


def uncountable_reason(python: Path, output: str) -> str | None:
    """Why valgrind stopped `python`, when its output shows an undecodable instruction; else None."""
    m = UNDECODABLE_RE.search(output or "")
    if m is None:
        return None
    first = m.group(1).split()[0].lower()
    hint = (" (AVX-512: 0x62 starts an EVEX instruction, and valgrind has no AVX-512 support; an interpreter "
            "built with -march=native on an AVX-512 CPU, or -march=x86-64-v4, uses it)" if first == "0x62" else "")
    return (f"{python}: {UNCOUNTABLE} (bytes {m.group(1).strip()}){hint}. Count it with hardware counters "
            "(--backend perf-stat, on a host that has them), or build it for an instruction set valgrind "
            "decodes (e.g. optimize.arch = \"march=x86-64-v3\")")


def command(backend: Backend, argv: list[str], out_file: Path) -> list[str]:
    if backend.name == "perf-stat":
        return ["perf", "stat", "-x,", "-o", str(out_file), "-e", ",".join(PERF_EVENTS), "--", *argv]
    caches = [f"--{k}={v}" for k, v in CACHEGRIND_CACHES.items()]
    return ["valgrind", "--tool=cachegrind", "--cache-sim=yes", "--branch-sim=yes", *caches,
            f"--cachegrind-out-file={out_file}", *argv]


def parse_output(backend: Backend, out_file: Path) -> dict[str, float | None]:
    text = out_file.read_text(encoding="utf-8", errors="replace")
    if backend.name == "perf-stat":
        return parse_perf_stat_csv(text)
    return normalise_cachegrind(parse_cachegrind_out(text))


def per_unit(small: Mapping[str, float | None], large: Mapping[str, float | None],
             units: tuple[int, int]) -> dict[str, float | None]:
    """Cost of one unit from two runs that differ only in the number of units."""
    if units[1] <= units[0]:
        raise SpecError(f"unit counts must grow: got {units}")
    span = units[1] - units[0]
    out: dict[str, float | None] = {}
    for key in large:
        a, b = small.get(key), large.get(key)
        out[key] = None if a is None or b is None else (b - a) / span
    return out


def _kept_output(backend: Backend, out_file: Path, sidecar: Path, made_by: Mapping) -> dict | None:
    """The parsed counts of an earlier run's output file, if that run was this one and finished."""
    try:
        if json.loads(sidecar.read_text(encoding="utf-8")) != made_by:
            return None
        counts = parse_output(backend, out_file)
    except (OSError, ValueError, PerfError):
        return None
    return counts if counts.get("instructions") else None


def measure(backend: Backend, python: Path, target_name: str, units: tuple[int, int], work: Path,
            *, provider: str | None = None, env: Mapping[str, str] | None = None,
            log: Path | None = None, timeout: float = 3600, reuse_key: str | None = None) -> dict:
    """Count one target in one venv at two unit counts; return totals and per-unit figures.

    With `reuse_key` (what else the count depends on: the executable and the venv's wheelhouse digest), a unit
    count whose output file an interrupted earlier command left complete, made by the same command line, environment
    and key, is read instead of run again (each valgrind run of a runtime target takes minutes).
    """
    work.mkdir(parents=True, exist_ok=True)
    totals = []
    for n in units:
        out_file = work / f"{target_name}-{n}.{backend.name}.out"
        argv = [str(python), "-m", "perf.benchmarks.count", "--target", target_name, "--units", str(n)]
        if provider:
            argv += ["--provider", provider]
        # A fixed hash seed makes dict and set layouts, and so instruction counts, repeatable.
        env_delta = {"PYTHONHASHSEED": "0", **(env or {})}
        cmd = command(backend, argv, out_file)
        made_by = {"command": [str(c) for c in cmd], "env": env_delta, "key": reuse_key}
        sidecar = out_file.with_name(out_file.name + ".json")
        kept = _kept_output(backend, out_file, sidecar, made_by) if reuse_key is not None else None
        if kept is not None:
            runner.Runner(log).note(f"KEPT: {out_file} (same command, environment and key as the run that wrote it)")
            totals.append(kept)
            continue
        out_file.unlink(missing_ok=True)
        sidecar.unlink(missing_ok=True)
        try:
            runner.capture(cmd, cwd=work, env=env_delta, log=log, timeout=timeout)
        except CommandError as exc:
            why = uncountable_reason(python, exc.log_tail) if backend.name == "cachegrind" else None
            if why:
                raise UncountableError(why) from exc
            raise
        totals.append(parse_output(backend, out_file))
        sidecar.write_text(json.dumps(made_by, indent=1) + "\n", encoding="utf-8")
    unit_costs = per_unit(totals[0], totals[1], units)
    return {"units": list(units), "totals": totals, "per_unit": unit_costs,
            "derived": derived(backend.name, unit_costs)}
