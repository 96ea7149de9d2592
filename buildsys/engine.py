"""Library entry points: prepare a build's inputs, plan it, run it; the pipeline of baseline + optimized."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console

from hostenv import allocators as allocator
from hostpgo.errors import CommandError
from hostpgo.runner import Runner, format_command

from . import image as imagemod
from . import targets, toolchain
from .core import stages
from .core.paths import PROFILES_DIR, WorkArea
from .errors import HostpgoError, InputError, ToolchainError
from .pipeline import wheelbolt, wheeldecide
from .targets.cpython import runtime_requirements
from .toolchain import facts, flags
from .toolchain import profile as profmod

BASELINE_PROFILE = "baseline"
PIPELINE_TARGET = "cpython"
"""What the pipeline builds and measures: interpreters, side by side."""
DEFAULT_OPTIMIZED_PROFILE = "workload-pgo-lto-tcmalloc"
"""The best measured stack: workload PGO + LTO + tcmalloc linked (README, run final-20261129: 0.813 geometric
mean of latency ratios vs the gcc baseline, against 0.866 for workload-pgo-lto)."""
DEFAULT_COMPARE_PROFILES = ("generic-pgo-lto", "workload-pgo-lto")
"""Built and measured beside the optimized default: the same build trained on CPython's own task, and the
optimized one without the allocator (so the report shows the allocator's share)."""
DEFAULT_IMAGE_SETTINGS = "tcmalloc"
"""The image's host settings for the default build: the same allocator the build links (the image refuses
settings whose allocator differs from the build's)."""
SYSTEM_PYTHON = Path("/usr/bin/python3.11")
"""Debian's own PGO+LTO build of the same 3.11.2 source: measured too where it exists, also with the
optimized default's allocator preloaded (`@tcmalloc` host settings)."""
SYSTEM_SETTINGS = "tcmalloc"
"""Host settings of the second system-interpreter entry: the allocator of DEFAULT_OPTIMIZED_PROFILE."""
MEASURE_TIMEOUT = 12 * 3600.0
"""Seconds the measurement may take (valgrind counting on a machine without hardware counters is slow)."""
PIPELINE_WORKLOADS = ("decode-b1", "decode-b8", "serve-mixed", "op-dispatch", "decode-b8-graph")
"""Timed side by side: eager decode and serving (PyNative, the `--enforce-eager` path), single-op dispatch, and
graph-mode decode (mindspore.jit, how vLLM-MindSpore runs decode)."""
# Counted under valgrind where there are no hardware counters: a runtime target costs minutes per
# interpreter there (MindSpore's import dominates each run) and its threads' yield loops make whole-process
# counts depend on scheduling, so the interpreter-only targets come first and decode-b1 stands for the runtime.
PIPELINE_COUNTER_WORKLOADS = ("pure-python", "pure-dispatch", "decode-b1")
PIPELINE_STAGES = ("latency", "counters", "attribute", "guard")
BOLT_WHEEL_PACKAGES = ("mindspore",)
"""Packages `pipeline --bolt-wheels` can rewrite (those with a [packages.NAME] list in wheelbolt.toml that the
runtime's workloads exercise). Off by default: see `pipeline`."""


def hypothetical_compiler(family: str) -> toolchain.Compiler:
    """A stand-in compiler for planning where none is installed (show-profile, unit tests)."""
    if family == "gcc":
        return toolchain.Compiler("gcc", "gcc", "g++", "0", "gcc (not installed)",
                                  {"ar": "gcc-ar", "ranlib": "gcc-ranlib", "nm": "gcc-nm"})
    tools = {r: f"{n}" for r, n in toolchain.LLVM_TOOLS.items()}
    return toolchain.Compiler(family, "clang", "clang++", "0", f"{family} (not installed)", tools)


def prepare(profile_ref: str, *, target: str = "cpython", overrides: Sequence[str] = (), jobs: int | None = None,
            user_source: Path | None = None, work: WorkArea | None = None,
            detected: toolchain.Toolchains | None = None, allow_missing_compiler: bool = False,
            profile_data: Path | None = None, target_args: dict[str, str] | None = None):
    """The inputs of one build of a registered target: the profile resolved for it, the compiler, the probed
    host facts it needs, then the target's own `prepare` (which validates --source and --profile-data).
    `target_args` are the values of the extra build options the target declares (its data's `cli_args`)."""
    spec = targets.get(target)
    targets.check_target_args(spec, target_args or {})
    prof = profmod.load(profile_ref, target=target, overrides=overrides)
    tcs = detected or toolchain.detect()
    try:
        comp, notes = flags.select_compiler(prof, tcs)
    except ToolchainError as e:
        if not allow_missing_compiler:
            raise
        comp = hypothetical_compiler(prof.toolchain.family)
        notes = (f"no usable compiler: {e}",)
    work = work or WorkArea.from_env()
    probed = facts.host_facts(work.facts, work.logs / "host-facts.log") if prof.optimize.bolt else None
    return spec.module().prepare(targets.Request(
        spec=spec, profile=prof, compiler=comp, compiler_notes=tuple(notes), toolchains=tcs, work=work,
        jobs=jobs or os.cpu_count() or 1, facts=probed, user_source=user_source,
        profile_data=profile_data.resolve() if profile_data else None, allow_missing=allow_missing_compiler,
        target_args=dict(target_args or {})))


def plan(inp) -> stages.BuildPlan:
    """The plan of prepared inputs, by the recipe of the target they were prepared for (pure)."""
    return targets.get(inp.TARGET).module().plan(inp)


def build(inp, *, console: Console | None = None, live: bool = True) -> stages.Execution:
    return stages.execute(plan(inp), inp.work.stamps, inp.work.logs, console=console, live=live)


def default_image_settings(profile_ref: str) -> str:
    """Host settings whose allocator is the one the build links: the allocator's own settings file
    (profiles/host/NAME.toml), or `default` for glibc."""
    try:
        alloc = profmod.load(profile_ref, environ={}).optimize.allocator
    except HostpgoError:
        return "default"
    return alloc if alloc != "glibc" and (PROFILES_DIR / "host" / f"{alloc}.toml").is_file() else "default"


def ensure_toolchain(profile_refs: Sequence[str], console: Console) -> toolchain.Toolchains:
    """Detect; as root on Debian/Ubuntu, install what a profile lacks; otherwise fail with the command."""
    tcs = toolchain.detect()
    missing = []
    # The builds' packages, and what the measurement runs (valgrind's cachegrind, perf record).
    packages = [*toolchain.missing_packages(tcs.host), *toolchain.missing_packages(tcs.host, "measure")]
    if packages:
        missing.append(f"missing packages: {' '.join(packages)} (needed for the toolchains and for CPython's "
                       f"optional modules). Install them: {toolchain.install_hint(tcs.host)}")
    alloc_packages = []
    for ref in profile_refs:
        prof = profmod.load(ref)
        try:
            flags.select_compiler(prof, tcs)
        except ToolchainError as e:
            missing.append(str(e))
        if prof.optimize.allocator != "glibc" and not prof.optimize.allocator_build:
            try:
                allocator.find(prof.optimize.allocator, tcs.host, query_version=False, key="optimize.allocator")
            except allocator.AllocatorNotFound as e:
                missing.append(str(e))
                pkg = allocator.table()[prof.optimize.allocator].packages.get(allocator.family(tcs.host))
                if pkg:
                    alloc_packages.append(pkg)
    if not missing:
        return tcs
    if os.geteuid() == 0 and tcs.host.is_debian_like:
        console.print(f"[yellow]missing toolchain:[/] {missing[0]}\ninstalling: {toolchain.install_hint(tcs.host)}")
        work = WorkArea.from_env()
        runner = Runner(work.logs / "toolchain-install.log")
        toolchain.install(tcs.host, runner)
        toolchain.install(tcs.host, runner, "measure")
        if alloc_packages:
            runner.run(["apt-get", "install", "-y", *alloc_packages], timeout=1800)
        tcs = toolchain.detect()
        for ref in profile_refs:
            flags.select_compiler(profmod.load(ref), tcs)
        return tcs
    raise ToolchainError(missing[0])


@dataclass(frozen=True)
class PipelineResult:
    builds: tuple[stages.Execution, ...]
    report: Path | None = None
    """The measurement run's report.md (None when measurement was skipped)."""
    image: stages.Execution | None = None
    """The optimized build's OCI image (None with --no-image)."""
    wheels: tuple[dict, ...] = ()
    """With --bolt-wheels: each package's hostpgo-wheelbolt.json (its `decision` says whether it was kept)."""


def bolt_wheel_subject(optimized: stages.Execution, wheels: Sequence[Path]) -> str:
    """The `--interp` of the optimized build with its kept rewritten wheels in place of the stock ones (pure)."""
    names = "-".join(Path(w).name.split("-", 1)[0].lower() for w in wheels)
    return (f"{optimized.plan.summary['profile']}+bolt-{names}={optimized.plan.summary['prefix']}/bin/python3"
            + "".join(f"+wheel:{w}" for w in wheels))


def wheel_venv_plan(python: Path, build_id: str, work: WorkArea,
                    requirements: Sequence[str] | None = None) -> stages.BuildPlan:
    """A venv of the optimized build with the runtime's dependencies installed as distributions (pure): what
    bolt-wheel reads the stock wheel from (the build's own runtime-deps directory is a `pip --target` tree on
    PYTHONPATH, which an interpreter's importlib.metadata does not see without it)."""
    reqs = tuple(requirements if requirements is not None else runtime_requirements())
    dest = work.root / "wheelbolt" / "venvs" / build_id
    key = stages.digest({"stage": "wheelbolt-venv", "python": str(python), "requirements": reqs})
    steps = (stages.Cmd((str(python), "-m", "venv", str(dest)), timeout=600),
             stages.Cmd((str(dest / "bin" / "python"), "-m", "pip", "install", "--only-binary=:all:",
                         "--disable-pip-version-check", *reqs), timeout=3600))
    st = stages.Stage("wheelbolt-venv", f"a venv of {build_id} with the runtime's wheels installed", key, steps,
                      outputs=(dest,))
    return stages.BuildPlan(f"wheelbolt-venv-{build_id}", (st,), (), {"python": str(dest / "bin" / "python"),
                                                                      "prefix": str(dest)})


def bolt_wheel_argv(package: str, profile: str, interp: Path | str, *, quick: bool = False) -> list[str]:
    """bolt-wheel's options for the pipeline (pure): the optimized profile's training, the decision on."""
    if package not in BOLT_WHEEL_PACKAGES:
        raise InputError(f"--bolt-wheels {package}: not one of {', '.join(BOLT_WHEEL_PACKAGES)}")
    return ["--package", package, "--profile", profile, "--interp", str(interp), "--keep-if-faster",
            *(["--quick"] if quick else [])]


def measure_command(builds: Sequence[stages.Execution], *, run_name: str, quick: bool = False,
                    system: Path | None = SYSTEM_PYTHON, system_settings: str | None = SYSTEM_SETTINGS,
                    workloads: Sequence[str] = PIPELINE_WORKLOADS,
                    counter_workloads: Sequence[str] = PIPELINE_COUNTER_WORKLOADS,
                    wheels: Sequence[Path] = ()) -> list[str]:
    """The `python -m perf bench` line that compares the builds (the first is the baseline) and the system python
    (as it is, and with `system_settings` applied: the same allocator preloaded), in one interleaved run; with
    `wheels` (kept rewritten wheels), the last build once more with them in its venv, as the last subject."""
    cmd = [sys.executable, "-m", "perf", "bench"]
    first, *rest = builds
    cmd += ["--interp", f"{first.plan.summary['profile']}={first.plan.summary['prefix']}/bin/python3"]
    if system is not None and system.exists():
        cmd += ["--interp", f"debian={system}"]
        if system_settings:
            cmd += ["--interp", f"debian+{system_settings}={system}@{system_settings}"]
    for ex in rest:
        cmd += ["--interp", f"{ex.plan.summary['profile']}={ex.plan.summary['prefix']}/bin/python3"]
    if wheels:
        cmd += ["--interp", bolt_wheel_subject(builds[-1], wheels)]
    cmd += ["--workloads", ",".join(workloads), "--counter-workloads", ",".join(counter_workloads),
            "--stages", ",".join(PIPELINE_STAGES), "--guard-fast", "--out", run_name]
    if quick:
        cmd.append("--quick")
    return cmd


def pipeline(*, optimized: str = DEFAULT_OPTIMIZED_PROFILE, compare: Sequence[str] = DEFAULT_COMPARE_PROFILES,
             jobs: int | None = None, user_source: Path | None = None, console: Console | None = None,
             live: bool = True, measure: bool = True, quick: bool = False, run_name: str | None = None,
             system: Path | None = SYSTEM_PYTHON, image: bool = True,
             image_settings: str = DEFAULT_IMAGE_SETTINGS, bolt_wheels: Sequence[str] = ()) -> PipelineResult:
    """Build baseline, the comparison profiles and the optimized one; measure them side by side; then the
    optimized build's OCI image.

    `bolt_wheels` (opt-in, `--bolt-wheels mindspore`): after the builds, bolt-wheel rewrites each package's
    stock wheel in a venv of the optimized build and times stock against rewritten (its decide stage); a wheel
    the decision keeps is measured as one more subject (the optimized build with it) and installed in the image.
    Off by default: the decision needs an interleaved A/B of its own (tens of minutes, more under valgrind's
    collection), and no real run of it has shown a kept wheel yet."""
    console = console or Console(stderr=True)
    refs = list(dict.fromkeys((BASELINE_PROFILE, *compare, optimized)))
    tcs = ensure_toolchain(refs, console)
    if image:  # the image stages need root and their tools: checked before any build
        try:
            imagemod.check_host()
        except imagemod.ImageError as e:
            raise HostpgoError(f"{e} (or pass --no-image to build and measure without the image)") from None
    for package in bolt_wheels:  # refused before any build
        bolt_wheel_argv(package, optimized, "-")
    out = []
    for ref in refs:
        inp = prepare(ref, target=PIPELINE_TARGET, jobs=jobs, user_source=user_source, detected=tcs)
        out.append(build(inp, console=console, live=live))

    manifests: list[dict] = []
    if bolt_wheels:
        work = WorkArea.from_env()
        opt = out[-1]
        vplan = wheel_venv_plan(Path(opt.plan.summary["prefix"]) / "bin" / "python3", opt.plan.build_id, work)
        stages.execute(vplan, work.stamps, work.logs, console=console, live=live)
        for package in bolt_wheels:
            argv = bolt_wheel_argv(package, optimized, vplan.summary["python"], quick=quick)
            console.print(f"[bold]bolt-wheel:[/] python -m buildsys bolt-wheel {' '.join(argv)}")
            _, doc, _ = wheelbolt.build(wheelbolt.arguments(argv), live=live)
            manifests.append(doc)
            d = doc["decision"]
            console.print(f"  {package}: {'kept' if d['kept'] else 'not kept'} ({d['verdict']}): {d['why']}")
    kept = [w for w in (wheeldecide.kept_wheel(m) for m in manifests) if w is not None]

    def make_image() -> stages.Execution | None:
        if not image:
            return None
        iinp = imagemod.prepare(optimized, settings=image_settings, wheels=tuple(kept))
        return stages.execute(imagemod.plan(iinp), iinp.work.stamps, iinp.work.logs, console=console, live=live)

    if not measure:
        return PipelineResult(tuple(out), None, make_image(), tuple(manifests))
    name = run_name or "pipeline-" + time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    cmd = measure_command(out, run_name=name, quick=quick, system=system, wheels=kept)
    log = WorkArea.from_env().logs / f"measure-{name}.log"
    console.print(f"[bold]measure:[/] {format_command(cmd)}  (log {log})")
    lines: list[str] = []
    try:
        Runner(log).run(cmd, timeout=MEASURE_TIMEOUT, collect=lines)
    except CommandError as e:
        raise CommandError(f"measurement failed: {e}\nthe builds are installed and stamped, so rerunning the "
                           "pipeline only measures again", argv=e.argv, returncode=e.returncode,
                           log_path=e.log_path) from None
    # perf bench prints the report's path as its last line on stdout (its progress goes to stderr, merged here).
    report = next((Path(ln.strip()) for ln in reversed(lines) if ln.strip() and Path(ln.strip()).exists()), None)
    return PipelineResult(tuple(out), report, make_image(), tuple(manifests))
