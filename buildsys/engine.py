"""Library entry points: prepare a build's inputs, plan it, run it; the pipeline of baseline + optimized."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from rich.console import Console

from . import cpython, flags, patches, profile as profmod, sources, stages, toolchain, training
from .errors import ToolchainError
from .paths import WorkArea
from .runner import Runner

BASELINE_PROFILE = "baseline"
DEFAULT_OPTIMIZED_PROFILE = "pgo-lto"


def hypothetical_compiler(family: str) -> toolchain.Compiler:
    """A stand-in compiler for planning where none is installed (show-profile, unit tests)."""
    if family == "gcc":
        return toolchain.Compiler("gcc", "gcc", "g++", "0", "gcc (not installed)",
                                  {"ar": "gcc-ar", "ranlib": "gcc-ranlib", "nm": "gcc-nm"})
    tools = {r: f"{n}" for r, n in toolchain.LLVM_TOOLS.items()}
    return toolchain.Compiler(family, "clang", "clang++", "0", f"{family} (not installed)", tools)


def prepare(profile_ref: str, *, overrides: Sequence[str] = (), jobs: int | None = None,
            user_source: Path | None = None, work: WorkArea | None = None,
            detected: toolchain.Toolchains | None = None, allow_missing_compiler: bool = False) -> cpython.Inputs:
    prof = profmod.load(profile_ref, target="cpython", overrides=overrides)
    tcs = detected or toolchain.detect()
    try:
        comp, notes = flags.select_compiler(prof, tcs)
    except ToolchainError as e:
        if not allow_missing_compiler:
            raise
        comp = hypothetical_compiler(prof.toolchain.family)
        notes = (f"no usable compiler: {e}",)
    pin = sources.pinned("cpython")
    return cpython.Inputs(
        profile=prof, compiler=comp, host=tcs.host, work=work or WorkArea.from_env(), pin=pin,
        patches=patches.series("cpython", pin.version),
        tasks=training.resolve(prof.pgo.tasks) if prof.optimize.pgo == "on" else (),
        jobs=jobs or os.cpu_count() or 1, user_source=user_source, compiler_notes=notes)


def build(inp: cpython.Inputs, *, console: Console | None = None, live: bool = True) -> stages.Execution:
    plan = cpython.plan(inp)
    return stages.execute(plan, inp.work.stamps, inp.work.logs, console=console, live=live)


def ensure_toolchain(profile_refs: Sequence[str], console: Console) -> toolchain.Toolchains:
    """Detect; as root on Debian/Ubuntu, install what a profile lacks; otherwise fail with the command."""
    tcs = toolchain.detect()
    missing = []
    packages = toolchain.missing_packages(tcs.host)
    if packages:
        missing.append(f"missing packages: {' '.join(packages)} (needed for the toolchains and for CPython's "
                       f"optional modules). Install them: {toolchain.install_hint(tcs.host)}")
    for ref in profile_refs:
        try:
            flags.select_compiler(profmod.load(ref), tcs)
        except ToolchainError as e:
            missing.append(str(e))
    if not missing:
        return tcs
    if os.geteuid() == 0 and tcs.host.is_debian_like:
        console.print(f"[yellow]missing toolchain:[/] {missing[0]}\ninstalling: {toolchain.install_hint(tcs.host)}")
        work = WorkArea.from_env()
        toolchain.install(tcs.host, Runner(work.logs / "toolchain-install.log"))
        tcs = toolchain.detect()
        for ref in profile_refs:
            flags.select_compiler(profmod.load(ref), tcs)
        return tcs
    raise ToolchainError(missing[0])


@dataclass(frozen=True)
class PipelineResult:
    builds: tuple[stages.Execution, ...]


def pipeline(*, optimized: str = DEFAULT_OPTIMIZED_PROFILE, jobs: int | None = None,
             user_source: Path | None = None, console: Console | None = None, live: bool = True) -> PipelineResult:
    console = console or Console(stderr=True)
    tcs = ensure_toolchain([BASELINE_PROFILE, optimized], console)
    out = []
    for ref in (BASELINE_PROFILE, optimized):
        inp = prepare(ref, jobs=jobs, user_source=user_source, detected=tcs)
        out.append(build(inp, console=console, live=live))
    return PipelineResult(tuple(out))
