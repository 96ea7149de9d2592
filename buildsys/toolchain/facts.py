"""Host facts that need a probe (branch-stack sampling for BOLT, hardware counters): probed once, cached in
the work area keyed by the probing tool's identity, and handed to the planners, which never probe."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from hostpgo import fsutil
from hostpgo.errors import CommandError
from hostpgo.runner import Runner, format_command, which

FACTS_VERSION = 1
PERF_PROBE = ("perf", "record", "-q", "-e", "cycles:u", "-j", "any,u", "-o", "{out}", "--", "true")
"""A one-instruction-long branch-stack recording: it either works or perf says why not."""
COUNTER_PROBE = ("perf", "stat", "-x", ",", "-e", "instructions:u", "--", "true")
"""Counting user-space instructions of `true`: `<not supported>` (or a failure) means no hardware counters."""


@dataclass(frozen=True)
class Probe:
    """One probed capability."""

    available: bool
    detail: str
    """What the probe ran and what it saw."""


@dataclass(frozen=True)
class HostFacts:
    """What the probes found on this machine, for the plan to show and the planners to decide on."""

    branch_sampling: Probe
    """`perf record -j any,u` works: LBR on x86, BRBE on aarch64 (BOLT's perf collection)."""
    hardware_counters: Probe
    """`perf stat -e instructions:u` counts (measurement can use perf instead of valgrind)."""
    tool: str
    """The identity of the probing tool the cache entry is keyed by (path, size, mtime; kernel release)."""
    cached: bool = False
    """True when read from the work area's cache (no probe ran in this process)."""

    def describe(self) -> dict[str, str]:
        return {"branch_sampling": f"{'yes' if self.branch_sampling.available else 'no'} "
                                   f"({self.branch_sampling.detail})",
                "hardware_counters": f"{'yes' if self.hardware_counters.available else 'no'} "
                                     f"({self.hardware_counters.detail})",
                "probed_with": self.tool + (" (cached)" if self.cached else "")}


def tool_identity(perf: str | None) -> str:
    """What the cache is keyed by: the perf executable's path, size and mtime, and the kernel and machine."""
    uname = f"kernel {platform.release()} {platform.machine()}"
    if perf is None:
        return f"no perf; {uname}"
    st = os.stat(os.path.realpath(perf))
    return f"{os.path.realpath(perf)} size={st.st_size} mtime={st.st_mtime_ns}; {uname}"


def _run_probe(argv: list[str], runner: Runner, shown: list[str] | None = None) -> tuple[bool, str]:
    """Run one probe; the detail shows `shown` (argv without its temporary paths) so it stays stable."""
    shown = shown or argv
    try:
        done = runner.capture(argv, timeout=60, check=False)
    except CommandError as exc:
        return False, f"{format_command(shown)}: {str(exc).splitlines()[0]}"
    said = " ".join((done.stderr or done.stdout).split())[:300]
    if done.returncode != 0:
        return False, f"{format_command(shown)} exited {done.returncode}: {said}"
    if "<not supported>" in said or "<not counted>" in said:
        return False, f"{format_command(shown)}: {said}"
    return True, f"{format_command(shown)} succeeded"


def probe(runner: Runner) -> tuple[Probe, Probe]:
    """Run both probes now (through the runner)."""
    if which("perf") is None:
        none = Probe(False, "perf is not installed")
        return none, none
    with tempfile.TemporaryDirectory(prefix="hostpgo-perf-probe-") as tmp:
        ok, detail = _run_probe([a.format(out=f"{tmp}/probe.data") for a in PERF_PROBE], runner,
                                [a.format(out="<tmp>/probe.data") for a in PERF_PROBE])
    sampling = Probe(ok, detail)
    counters = Probe(*_run_probe(list(COUNTER_PROBE), runner))
    return sampling, counters


def host_facts(cache_dir: Path, log: Path | None = None) -> HostFacts:
    """The facts for this machine: from `cache_dir` when the probing tool is unchanged, else probed and cached."""
    ident = tool_identity(which("perf"))
    path = Path(cache_dir) / f"host-{hashlib.sha256(ident.encode()).hexdigest()[:16]}.json"
    try:
        doc = json.loads(path.read_text())
        if doc.get("version") == FACTS_VERSION and doc.get("tool") == ident:
            return HostFacts(Probe(**doc["branch_sampling"]), Probe(**doc["hardware_counters"]), ident, cached=True)
    except (OSError, ValueError, KeyError, TypeError):
        pass
    sampling, counters = probe(Runner(log))
    facts = HostFacts(sampling, counters, ident)
    fsutil.write_json(path, {"version": FACTS_VERSION, "tool": ident, "branch_sampling": asdict(sampling),
                             "hardware_counters": asdict(counters)})
    return facts
