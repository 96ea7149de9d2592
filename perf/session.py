"""One measurement run: resolve interpreters, prepare venvs, run the chosen stages, record, report."""

from __future__ import annotations

import concurrent.futures
import os
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from . import attribute, counters, envs, guard, interpreters, latency, report, results
from . import stack as stackmod
from .catalog import Target, venv_extras
from .errors import IncompatibleResults, ResultsError, SpecError
from .interpreters import Interpreter
from .workspace import hostpgo_home, safe_name

STAGES = ("latency", "counters", "attribute", "guard")
RECORD_KEYS = {"latency": "latency", "counters": "counters", "attribute": "attribution", "guard": "guard"}
"""Where each stage keeps its results in run.json."""


@dataclass(frozen=True)
class Plan:
    """Everything a run needs, resolved from the command line (pure data)."""

    interpreters: tuple[Interpreter, ...]
    targets: tuple[Target, ...]
    stages: tuple[str, ...]
    run_dir: Path
    quick: bool = False
    use_venvs: bool = True
    """False runs each interpreter as given (it must import pyperf and this project itself)."""
    backend: str = "auto"
    guard_benchmarks: tuple[str, ...] = guard.DEFAULT_SUBSET
    provider: str | None = None
    """Override of the workload provider module (tests use a fake runtime)."""
    env: Mapping[str, str] = field(default_factory=dict)
    """Extra environment for every benchmark process (also inherited by pyperf workers)."""
    argv: tuple[str, ...] = ()
    redo: bool = False
    """Measure stages again even when a resumed run already holds them."""
    guard_fast: bool = False
    """pyperformance --fast for the guard without shortening the other stages."""
    counter_targets: tuple[Target, ...] | None = None
    """Targets of the counters stage when they differ from `targets` (a runtime target costs minutes
    per interpreter under valgrind; the pure-Python ones isolate the interpreter for seconds)."""
    stack: tuple[stackmod.StackStep, ...] = ()
    """Which subjects are steps (a)-(d) of the optimized stack (`--stack-step`), kept in run.json for the report's
    stack section; empty for a run without one."""

    @property
    def count_targets(self) -> tuple[Target, ...]:
        return self.targets if self.counter_targets is None else self.counter_targets

    @property
    def all_targets(self) -> tuple[Target, ...]:
        return tuple(dict.fromkeys((*self.targets, *self.count_targets)))


ONE_PROCESS_SKIP = {
    "counters": "counters difference two unit counts inside one process: a start-up target's unit is the process "
                "itself (under valgrind one MindSpore import alone takes 5-10 minutes), and a Ray target's model "
                "runs in actor processes that the counted process does not hold",
    "attribute": "`perf record` samples the measured units inside one process: a start-up target's unit is the "
                 "process itself, and a Ray target's model runs in actor processes Ray starts",
}
"""Why the counters and attribution stages skip `command` (per-process) targets and Ray targets."""


def stage_targets(plan: Plan, stage: str) -> tuple[tuple[Target, ...], tuple[Target, ...]]:
    """(targets the stage measures, targets it skips: per-process and Ray targets) - pure."""
    chosen = plan.count_targets if stage == "counters" else plan.targets
    if stage not in ONE_PROCESS_SKIP:
        return tuple(chosen), ()
    return tuple(t for t in chosen if t.in_one_process), tuple(t for t in chosen if not t.in_one_process)


def parse_stages(text: str) -> tuple[str, ...]:
    names = tuple(s.strip() for s in text.split(",") if s.strip())
    for name in names:
        if name not in STAGES:
            raise SpecError(f"--stages: unknown stage {name!r}; choose from {', '.join(STAGES)}")
    if not names:
        raise SpecError("--stages: empty list")
    return names


def _stamp(interp: Interpreter, wheelhouse: str) -> dict[str, str]:
    return {"hostpgo_interp": interp.name, "hostpgo_manifest_sha256": interp.manifest_digest,
            "hostpgo_build_id": interp.build_id,
            "hostpgo_exe_sha256": interp.exe_sha256[:16], "hostpgo_wheelhouse": wheelhouse[:16] or "none",
            "hostpgo_host_settings": interp.host_name,
            **({"hostpgo_wheels": interp.wheels_digest[:16]} if interp.wheels else {})}


def _open_record(plan: Plan) -> dict:
    """Reuse the run record when `--out` names an existing run of the same interpreters."""
    names = [i.name for i in plan.interpreters]
    if (plan.run_dir / results.RUN_FILE).is_file():
        record = results.load(plan.run_dir)
        have = [i["name"] for i in record["interpreters"]]
        if have != names:
            raise ResultsError(
                f"{plan.run_dir / results.RUN_FILE}: run was made with interpreters {have}, not {names}; "
                "choose another --out")
        # Results kept from earlier commands belong to those executables and host settings: a rebuilt
        # interpreter under the same name would mix old and new figures in one report.
        for old, interp in zip(record["interpreters"], plan.interpreters):
            now = interp.to_json()
            changed = [k for k in ("exe_sha256", "host_env", "wheels") if (old.get(k) or []) != (now.get(k) or [])]
            if changed:
                raise IncompatibleResults(
                    f"{plan.run_dir / results.RUN_FILE}: interpreter {interp.name!r} is not the one this run "
                    f"measured ({', '.join(changed)} changed since); choose another --out")
        record["interpreters"] = [i.to_json() for i in plan.interpreters]
        for t in plan.all_targets:
            if t.name not in record["targets"]:
                record["targets"].append(t.name)
        return record
    if any(plan.run_dir.iterdir()):
        raise SpecError(f"--out {plan.run_dir}: holds files but no {results.RUN_FILE}, so it is not a perf run; "
                        "refusing to write into it: choose a new or empty directory")
    return results.new_record(plan.run_dir, [i.to_json() for i in plan.interpreters],
                              [t.name for t in plan.all_targets], list(plan.argv))


def _unchanged(plan: Plan, stage: str) -> None:
    """Before a stage's results are kept: every interpreter is still the binary the run started with."""
    for interp in plan.interpreters:
        interpreters.assert_unchanged(interp, f"the {stage} stage")


def _ran(record: dict, plan: Plan, stage: str) -> None:
    """Remember which command produced a stage's results (a run may be built up over several commands)."""
    record.setdefault("stage_commands", {})[stage] = " ".join(plan.argv)
    record.setdefault("stage_done", {})[stage] = _signature(plan, stage)


def _signature(plan: Plan, stage: str) -> dict:
    """What a stage's results depend on besides the interpreters (which a resumed run must match)."""
    if stage == "guard":
        return {"benchmarks": list(plan.guard_benchmarks), "quick": plan.quick or plan.guard_fast}
    chosen = plan.count_targets if stage == "counters" else plan.targets
    return {"targets": sorted(t.name for t in chosen), "quick": plan.quick}


def _done(record: dict, plan: Plan, stage: str, say: Callable[[str], None]) -> bool:
    """Whether a resumed run (same --out) already holds this stage for the same targets and settings."""
    if stage not in plan.stages or plan.redo:
        return stage not in plan.stages
    have = record.get("stage_done", {}).get(stage)
    if have == _signature(plan, stage) and RECORD_KEYS[stage] in record:
        say(f"{stage}: kept from the earlier command of this run (--redo measures it again)")
        return True
    return False


def execute(plan: Plan, say: Callable[[str], None] = print) -> Path:
    """Run the plan's stages, saving run.json after each, and return the report path."""
    run_dir = plan.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    log = run_dir / "commands.log"
    record = _open_record(plan)
    if plan.stack:
        record["stack"] = [s.to_json() for s in plan.stack]
    results.save(run_dir, record)
    targets = list(plan.targets)

    if plan.use_venvs:
        extras = venv_extras(plan.all_targets)
        say(f"preparing venvs ({','.join(extras)}) from one wheelhouse ...")
        prepared = envs.prepare(list(plan.interpreters), extras, log)
        pythons = {e.interp.name: e.python for e in prepared}
        stamps = {e.interp.name: _stamp(e.interp, e.wheelhouse_digest) for e in prepared}
        # What a counter run depends on besides its command line: the executable and the installed code.
        reuse_keys = {e.interp.name: f"{e.interp.exe_sha256}:{e.wheelhouse_digest}" + (f":{e.pycs}" if e.pycs else "")
                      + (f":whl-{e.interp.wheels_digest}" if e.interp.wheels else "") for e in prepared}
        record["venvs"] = {e.interp.name: {"python": str(e.python), "wheelhouse_sha256": e.wheelhouse_digest,
                                           "pycs": e.pycs or "as pip wrote them (timestamp)",
                                           **({"precompiled": {k: e.precompiled.get(k) for k in
                                                               ("mode", "no_debug_ranges", "files", "compiled",
                                                                "seconds", "paths")}}
                                              if e.precompiled else {}),
                                           **({"wheels": list(e.wheels)} if e.wheels else {})}
                           for e in prepared}
    else:
        pythons = {i.name: Path(i.python) for i in plan.interpreters}
        stamps = {i.name: _stamp(i, "") for i in plan.interpreters}
        reuse_keys = {}  # the code the interpreters import is not pinned: never reuse a counter run
        record.setdefault("notes", []).append("interpreters ran without per-interpreter venvs (--no-venv)")
    env = dict(plan.env)
    # Every benchmark process shares the work area (the runtime keeps its checkpoint there),
    # whatever directory it runs in.
    env.setdefault("HOSTPGO_HOME", str(hostpgo_home()))
    # Each subject's host settings (allocator preload, tunables, runtime settings) go on top.
    envs_by = {i.name: {**env, **dict(i.host_env)} for i in plan.interpreters}

    if not _done(record, plan, "latency", say):
        settings = latency.LatencySettings.quick() if plan.quick else latency.LatencySettings()
        subjects = [latency.Subject(i.name, pythons[i.name], stamps[i.name], dict(i.host_env))
                    for i in plan.interpreters]
        say(f"latency: {len(targets)} target(s) x {len(subjects)} interpreter(s), {settings.rounds} interleaved rounds")
        record["latency"] = latency.run_interleaved(
            subjects, targets, run_dir / "latency", settings, provider=plan.provider, env=env, log=log,
            progress=lambda m: say("  " + m))
        _unchanged(plan, "latency")
        _ran(record, plan, "latency")
        results.save(run_dir, record)

    for stage in ONE_PROCESS_SKIP:
        kept, skipped = stage_targets(plan, stage)
        if stage in plan.stages and skipped:
            note = (f"{stage}: skipped {', '.join(t.name for t in skipped)} ({ONE_PROCESS_SKIP[stage]})"
                    + ("" if kept else "; nothing left to measure in this stage"))
            say(note)
            notes = record.setdefault("notes", [])
            if note not in notes:
                notes.append(note)
                results.save(run_dir, record)
    if stage_targets(plan, "counters")[0] and not _done(record, plan, "counters", say):
        backend = counters.select_backend(plan.backend)
        say(f"counters: backend {backend.name} - {backend.reason}")
        # Simulated counts do not depend on what else runs, so valgrind runs go in parallel (one per
        # core); hardware counters do (shared caches), so perf stat runs one at a time.
        workers = (os.cpu_count() or 1) if backend.name == "cachegrind" else 1
        earlier = record.get("counters") or {}
        kept = earlier.get("results", {}) if earlier.get("backend") == backend.name and not plan.redo else {}
        per: dict[str, dict] = {i.name: {} for i in plan.interpreters}
        lock = threading.Lock()
        jobs = []
        count_targets = list(stage_targets(plan, "counters")[0])
        # Target-major order: a stage cut short still compares every interpreter on the first targets.
        for t in count_targets:
            for interp in plan.interpreters:
                lo, hi = t.count_units
                units = [lo, (lo + hi) // 2] if plan.quick else [lo, hi]
                have = kept.get(interp.name, {}).get(t.name)
                if have is not None and have.get("units") == units:
                    per[interp.name][t.name] = have
                    say(f"  {interp.name} {t.name}: kept from the earlier command of this run")
                else:
                    jobs.append((interp, t, tuple(units)))

        def count(job) -> None:
            interp, t, units = job
            m = counters.measure(backend, pythons[interp.name], t.name, units,
                                 run_dir / "counters" / safe_name(interp.name), provider=plan.provider,
                                 env=envs_by[interp.name], log=log,
                                 reuse_key=None if plan.redo else reuse_keys.get(interp.name))
            interpreters.assert_unchanged(interp, f"the counters stage ({t.name})")
            with lock:  # each finished pair is saved, so an interrupted stage resumes pair by pair
                per[interp.name][t.name] = m
                record["counters"] = {"backend": backend.name, "reason": backend.reason, "config": backend.config,
                                      "results": per}
                results.save(run_dir, record)
            say(f"  {interp.name} {t.name}: {m['per_unit']['instructions']:,.0f} instructions per {t.unit}")

        if jobs:
            say(f"  {len(jobs)} interpreter x target pair(s), {min(workers, len(jobs))} at a time")
        with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, min(workers, len(jobs) or 1))) as pool:
            for fut in [pool.submit(count, j) for j in jobs]:
                fut.result()
        # Pairs of targets this command did not ask for stay, so counts can be added target by target.
        ordered = {i.name: {**{n: m for n, m in kept.get(i.name, {}).items() if n not in per[i.name]},
                            **{t.name: per[i.name][t.name] for t in count_targets}} for i in plan.interpreters}
        record["counters"] = {"backend": backend.name, "reason": backend.reason, "config": backend.config,
                              "results": ordered}
        _unchanged(plan, "counters")
        _ran(record, plan, "counters")
        results.save(run_dir, record)

    if stage_targets(plan, "attribute")[0] and not _done(record, plan, "attribute", say):
        per = {}
        for interp in plan.interpreters:
            per[interp.name] = {}
            for t in stage_targets(plan, "attribute")[0]:
                units = t.attribute_units // (4 if plan.quick else 1)
                r = attribute.record(pythons[interp.name], t.name, units,
                                     run_dir / "attribution" / safe_name(interp.name), provider=plan.provider,
                                     env=envs_by[interp.name], log=log)
                per[interp.name][t.name] = r
                top = ", ".join(f"{g} {p:.1f}%" for g, p in list(r["groups"].items())[:4])
                say(f"  {interp.name} {t.name}: {top}")
        record["attribution"] = per
        _unchanged(plan, "attribute")
        _ran(record, plan, "attribute")
        results.save(run_dir, record)

    if not _done(record, plan, "guard", say):
        say(f"guard: pyperformance {','.join(plan.guard_benchmarks)}")
        subjects3 = [(i.name, pythons[i.name], stamps[i.name]) for i in plan.interpreters]
        record["guard"] = guard.run_guard(subjects3, plan.guard_benchmarks, run_dir / "pyperformance",
                                          fast=plan.quick or plan.guard_fast, log=log, progress=lambda m: say("  " + m))
        _unchanged(plan, "guard")
        _ran(record, plan, "guard")
        results.save(run_dir, record)

    return report.build(run_dir)
