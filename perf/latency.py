"""Interleaved A/B latency: alternate interpreters round by round, one pyperf process each, then merge.

Alternating the order (A B, B A, A B, ...) spreads machine drift - a parallel build, thermal
state, a noisy neighbour - evenly over the interpreters instead of letting it land on one.
Loops per value are calibrated once, on the baseline, and fixed for every process so that
all runs of a benchmark measure the same amount of work.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from hostpgo import runner

from . import extra
from .catalog import Target
from .errors import ResultsError
from .workspace import safe_name


@dataclass(frozen=True)
class LatencySettings:
    rounds: int = 6
    """pyperf processes per interpreter (one per round)."""
    values: int = 5
    """Timed values per process."""
    warmups: int = 1
    min_time: float = 0.1
    """Seconds per value that loop calibration aims for."""
    timeout: float = 1800
    loops: int | None = None
    """Fixed loops per value for every target; None calibrates on the baseline."""

    @classmethod
    def quick(cls) -> LatencySettings:
        return cls(rounds=4, values=3, warmups=1, min_time=0.05)


@dataclass(frozen=True)
class Subject:
    """One interpreter as the latency harness sees it: a name and the python to execute."""

    name: str
    python: Path
    stamp: Mapping[str, str | int | float]
    """Metadata stamped into every benchmark of this subject's results."""
    env: Mapping[str, str] | None = None
    """Environment this subject adds to every process (its host settings: preload, tunables)."""


def subject_env(subject: Subject, env: Mapping[str, str] | None) -> dict[str, str]:
    """The run's shared environment with the subject's own on top."""
    return {**(env or {}), **(subject.env or {})}


def round_order(names: list[str], rounds: int) -> list[list[str]]:
    """Order of interpreters in each round: forward on even rounds, reversed on odd ones."""
    return [list(names) if r % 2 == 0 else list(reversed(names)) for r in range(rounds)]


def _pyperf_cmd(python: Path, target: Target, provider: str | None, out: Path,
                settings: LatencySettings, loops: int | None, inherit: list[str]) -> list[str]:
    cmd = [str(python), "-m", "perf.benchmarks.latency", "--target", target.name,
           "--processes", "1", "--quiet", "-o", str(out)]
    if provider:
        cmd += ["--provider", provider]
    if loops is None:
        cmd += ["--values", "1", "--warmups", "1", "--min-time", str(settings.min_time)]
    else:
        cmd += ["--values", str(settings.values), "--warmups", str(settings.warmups),
                "--loops", str(loops)]
    if inherit:
        cmd += ["--inherit-environ", ",".join(inherit)]
    return cmd


def calibrate_loops(subject: Subject, target: Target, work: Path, settings: LatencySettings,
                    *, provider: str | None = None, env: Mapping[str, str] | None = None,
                    log: Path | None = None) -> int:
    out = work / f"calibrate-{safe_name(target.name)}.json"
    out.unlink(missing_ok=True)
    env = subject_env(subject, env)
    runner.capture(_pyperf_cmd(subject.python, target, provider, out, settings, None, sorted(env)),
                   cwd=work, env=env, log=log, timeout=settings.timeout)
    bench = extra.pyperf().Benchmark.load(str(out))
    loops = bench.get_metadata().get("loops")
    if not isinstance(loops, int) or loops < 1:
        raise ResultsError(f"{out}: pyperf calibration gave no loop count")
    return loops


def run_interleaved(
    subjects: list[Subject],
    targets: list[Target],
    out_dir: Path,
    settings: LatencySettings,
    *,
    provider: str | None = None,
    env: Mapping[str, str] | None = None,
    log: Path | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict:
    """Run every target on every subject, interleaved, and merge per subject.

    Writes `<out_dir>/raw/<subject>/<target>-rNN.json` per process and the merged suite
    `<out_dir>/<subject>.json` (pyperf JSON, stamped with the subject's metadata). Returns a
    record of what ran: loops per target, the round order and the files.
    """
    pyperf = extra.pyperf()
    raw = out_dir / "raw"
    work = out_dir / "work"
    work.mkdir(parents=True, exist_ok=True)
    names = [s.name for s in subjects]
    by_name = {s.name: s for s in subjects}
    order = round_order(names, settings.rounds)
    loops_by_target: dict[str, int] = {}
    for target in targets:
        if settings.loops is None:
            loops = calibrate_loops(subjects[0], target, work, settings, provider=provider, env=env, log=log)
            how = f"calibrated on {subjects[0].name}"
        else:
            loops, how = settings.loops, "fixed"
        loops_by_target[target.name] = loops
        if progress:
            progress(f"{target.name}: {loops} loop(s) per value, {how}")
        for r, names_in_round in enumerate(order):
            for name in names_in_round:
                subject = by_name[name]
                dest = raw / safe_name(name) / f"{safe_name(target.name)}-r{r:02d}.json"
                dest.parent.mkdir(parents=True, exist_ok=True)
                dest.unlink(missing_ok=True)
                senv = subject_env(subject, env)
                runner.capture(_pyperf_cmd(subject.python, target, provider, dest, settings, loops, sorted(senv)),
                          cwd=work, env=senv, log=log, timeout=settings.timeout)
                if progress:
                    bench = pyperf.Benchmark.load(str(dest))
                    progress(f"{target.name} round {r + 1}/{settings.rounds} {name}: "
                             f"median {bench.median() * 1e6:.1f} us")
    files: dict[str, str] = {}
    for subject in subjects:
        merged: pyperf.BenchmarkSuite | None = None
        for target in targets:
            for r in range(settings.rounds):
                part = pyperf.BenchmarkSuite.load(
                    str(raw / safe_name(subject.name) / f"{safe_name(target.name)}-r{r:02d}.json"))
                if merged is None:
                    merged = part
                else:
                    merged.add_runs(part)
        assert merged is not None
        for bench in merged.get_benchmarks():
            bench.update_metadata(dict(subject.stamp))
        dest = out_dir / f"{safe_name(subject.name)}.json"
        dest.unlink(missing_ok=True)
        merged.dump(str(dest))
        files[subject.name] = os.path.relpath(dest, out_dir.parent)
    return {"loops": loops_by_target, "order": order, "files": files,
            "settings": settings.__dict__}
