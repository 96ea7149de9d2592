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
from .core import disk, stages
from .core.paths import PROFILES_DIR, WorkArea
from .errors import HostpgoError, InputError, ToolchainError
from .pipeline import stack as stackmod
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
DEFAULT_COMPARE_PROFILES = ("workload-pgo-lto",)
"""Built and measured beside the optimized default: the optimized one without the allocator (so the report shows
the allocator's share; it is also the stack's step (b)). `--compare generic-pgo-lto,workload-pgo-lto` adds the
same build trained on CPython's own task (27 min of build on 2 cores), as the default did before the stack."""
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
DEFAULT_STACK = True
"""Whether `pipeline` builds and measures the whole stack (`--stack`: the allocator and the extension wheels built
with the optimized profile, steps (a)-(e) in the report, the image shipping the stack); `--no-stack` gives the
interpreter-only pipeline."""
BOLT_WHEEL_PACKAGES = ("mindspore",)
"""Packages `pipeline --bolt-wheels` can rewrite (those with a [packages.NAME] list in wheelbolt.toml that the
pipeline's measurement workloads run in the measured process; Ray's `_raylet.so` is rewritten by `bolt-wheel
--package ray`, timed on ray-decode, which the pipeline does not measure)."""
DEFAULT_BOLT_WHEELS = ("mindspore",)
"""Rewritten by default (`--bolt-wheels ''` for none): a wheel is kept, measured as step (e) and shipped only when
bolt-wheel's own interleaved A/B says it is faster."""


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
class StackResult:
    """What `pipeline --stack` built besides the interpreters."""

    stack: stackmod.Stack
    allocator: stages.Execution
    """The allocator target's build with the optimized profile."""
    verify: stages.Execution
    """stack-verify: the interpreter-only build under the stack's host settings, the built allocator in effect."""
    wheels: tuple[stages.Execution, ...]
    """The extension target's build of each stack wheel, in `stack.wheels` order."""
    wheel_files: tuple[Path, ...]
    """The installed wheels (.hostpgo/wheels/<build id>/*.whl), same order."""


@dataclass(frozen=True)
class PipelineResult:
    builds: tuple[stages.Execution, ...]
    report: Path | None = None
    """The measurement run's report.md (None when measurement was skipped)."""
    image: stages.Execution | None = None
    """The optimized build's OCI image (None with --no-image)."""
    wheels: tuple[dict, ...] = ()
    """With --bolt-wheels: each package's hostpgo-wheelbolt.json (its `decision` says whether it was kept)."""
    stack: StackResult | None = None
    """With --stack: the allocator, its check and the extension wheels."""


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


def stack_subjects(builds: Sequence[stages.Execution], stack: stackmod.Stack, stack_wheels: Sequence[Path], *,
                   system: Path | None = SYSTEM_PYTHON, bolt_wheels: Sequence[Path] = ()) -> stackmod.Subjects:
    """Steps (a)-(e) of `stack` among the pipeline's builds (pure): (a) `debian` (when measured) and the baseline,
    (b) the interpreter-only build, (c) it with the hostpgo-built allocator (beside the optimized build, which
    links the distribution's), (d) (c) with `stack_wheels`, (e) with `bolt_wheels` (the kept BOLT-rewritten
    framework wheels) too."""
    by = {ex.plan.summary["profile"]: ex.plan.summary for ex in builds}
    if stack.interpreter not in by:
        raise InputError(f"--stack: step (b) is build {stack.interpreter}, which this pipeline did not build")
    return stackmod.subjects(stack, interpreter_prefix=by[stack.interpreter]["prefix"],
                             baseline=builds[0].plan.summary["profile"],
                             system="debian" if system is not None and system.exists() else None,
                             linked_reference=stack.optimized if stack.optimized in by else None,
                             wheels=stack_wheels, bolt_wheels=bolt_wheels)


def measure_command(builds: Sequence[stages.Execution], *, run_name: str, quick: bool = False,
                    system: Path | None = SYSTEM_PYTHON, system_settings: str | None = SYSTEM_SETTINGS,
                    workloads: Sequence[str] = PIPELINE_WORKLOADS,
                    counter_workloads: Sequence[str] = PIPELINE_COUNTER_WORKLOADS,
                    wheels: Sequence[Path] = (), stack: stackmod.Subjects | None = None) -> list[str]:
    """The `python -m perf bench` line that compares the builds (the first is the baseline) and the system python
    (as it is, and with `system_settings` applied: the same allocator preloaded), in one interleaved run; with
    `wheels` (kept rewritten wheels), the last build once more with them in its venv, as the last subject.

    With `stack` (`pipeline --stack`), its subjects (c) and (d) come last, the workloads gain graph-mode
    decode-b1 (stackmod.EXTRA_WORKLOADS), and `--stack-step` names each step's subjects for the report."""
    cmd = [sys.executable, "-m", "perf", "bench"]
    first, *rest = builds
    cmd += ["--interp", f"{first.plan.summary['profile']}={first.plan.summary['prefix']}/bin/python3"]
    if system is not None and system.exists():
        cmd += ["--interp", f"debian={system}"]
        if system_settings:
            cmd += ["--interp", f"debian+{system_settings}={system}@{system_settings}"]
    for ex in rest:
        cmd += ["--interp", f"{ex.plan.summary['profile']}={ex.plan.summary['prefix']}/bin/python3"]
    if wheels and stack is None:  # with --stack, the kept wheels are step (e) (stack_subjects)
        cmd += ["--interp", bolt_wheel_subject(builds[-1], wheels)]
    if stack is not None:
        for spec in stack.interps:
            cmd += ["--interp", spec]
        workloads = tuple(dict.fromkeys((*workloads, *stackmod.EXTRA_WORKLOADS)))
    cmd += ["--workloads", ",".join(workloads), "--counter-workloads", ",".join(counter_workloads),
            "--stages", ",".join(PIPELINE_STAGES), "--guard-fast", "--out", run_name]
    if stack is not None:
        cmd += stack.argv()
    if quick:
        cmd.append("--quick")
    return cmd


def pipeline_profiles(optimized: str, compare: Sequence[str], stack: stackmod.Stack | None = None) -> list[str]:
    """The CPython profiles the pipeline builds, in order (pure): baseline, the comparison ones, with --stack the
    interpreter-only profile of step (b) when it is not among them, then the optimized one."""
    extra = (stack.interpreter,) if stack is not None else ()
    return list(dict.fromkeys((BASELINE_PROFILE, *compare, *extra, optimized)))


def stack_image_args(stack: StackResult) -> dict:
    """The image of --stack (pure): the interpreter-only build, the host settings that preload the hostpgo-built
    allocator (the image ships that build), and every stack wheel in its venv."""
    return {"build": stack.stack.interpreter, "settings": stack.stack.settings, "wheels": stack.wheel_files}


def build_stack(stack: stackmod.Stack, builds: Sequence[stages.Execution], tcs: toolchain.Toolchains, *,
                jobs: int | None = None, console: Console | None = None, live: bool = True) -> StackResult:
    """The allocator of the optimized profile (its registry target), the check that the interpreter-only build
    runs with it in effect, then each stack wheel (the extension target, built for the optimized interpreter).
    Every stage is stamped: a rerun rebuilds nothing that is done. A wheel that fails is a CommandError naming the
    package and the failed stage's log."""
    from .targets.cpython import runtime_deps_stage
    work = WorkArea.from_env()
    by = {ex.plan.summary["profile"]: ex for ex in builds}
    alloc = build(prepare(stack.optimized, target=stack.allocator, jobs=jobs, detected=tcs), console=console,
                  live=live)
    interp = by[stack.interpreter].plan.summary
    _, deps, _ = runtime_deps_stage(work, ".".join(str(interp["version"]).split(".")[:2]))
    vplan = stackmod.verify_plan(stack, python=Path(interp["prefix"]) / "bin" / "python3", deps=deps, work=work)
    verify = stages.execute(vplan, work.stamps, work.logs, console=console, live=live)
    opt_python = Path(by[stack.optimized].plan.summary["prefix"]) / "bin" / "python3"
    done: list[stages.Execution] = []
    for package in stack.wheels:
        try:
            winp = prepare(stack.optimized, target="extension", jobs=jobs, detected=tcs,
                           target_args=stackmod.extension_args(package, opt_python))
        except CommandError as e:  # the sdist's download or the interpreter's probe
            raise CommandError(f"--stack: the wheel of {package} could not be prepared: {e}",
                               log_path=e.log_path or work.logs / "extension-prepare.log") from None
        except HostpgoError as e:  # bad input stays bad input (exit 2)
            raise type(e)(f"--stack: the wheel of {package}: {e}") from None
        wplan = plan(winp)
        try:
            done.append(stages.execute(wplan, work.stamps, work.logs, console=console, live=live))
        except HostpgoError as e:
            raise stackmod.build_failed(package, wplan, work, e) from None
    return StackResult(stack, alloc, verify, tuple(done), tuple(stackmod.wheel_of(ex) for ex in done))


def planned_wheel(work: WorkArea, package: str, profile: str) -> Path:
    """The installed wheel of a stack package when it is built, else a stand-in path of the same distribution
    (for the dry run's measure line): .hostpgo/wheels/extension-NAME-VERSION-PROFILE/NAME-VERSION-<...>.whl."""
    name, _, version = package.partition("==")
    dest = work.root / "wheels" / f"extension-{name}-{version}-{profile}"
    have = sorted(dest.glob("*.whl"))
    return have[-1] if have else dest / f"{name}-{version}-NOT-BUILT-YET.whl"


def pipeline_disk_parts(*, measure: bool, image: bool, stack: bool = False,
                        bolt_wheels: bool = False) -> tuple[disk.Part, ...]:
    """The work area's parts a pipeline run fills (pure): the builds, the stack's builds and the BOLT-rewritten
    wheels when asked for, and the measurement and the image unless they are skipped."""
    return (disk.BUILDS, *((disk.STACK,) if stack else ()), *((disk.BOLT_WHEELS,) if bolt_wheels else ()),
            *((disk.MEASUREMENT,) if measure else ()), *((disk.IMAGE,) if image else ()))


def pipeline_dry_run(*, optimized: str = DEFAULT_OPTIMIZED_PROFILE, compare: Sequence[str] = DEFAULT_COMPARE_PROFILES,
                     jobs: int | None = None, user_source: Path | None = None, quick: bool = False,
                     system: Path | None = SYSTEM_PYTHON, image: bool = True,
                     image_settings: str = DEFAULT_IMAGE_SETTINGS, bolt_wheels: Sequence[str] = DEFAULT_BOLT_WHEELS,
                     stack: bool = DEFAULT_STACK, stack_wheels: Sequence[str] = stackmod.STACK_WHEELS) -> list[str]:
    """What `pipeline` would do, as text: every build's plan (which stages its stamps would skip), the stack's
    wheel builds as their commands (their prepare fetches the sdist), the measure line and the image; runs no
    build (it probes the toolchains and, for a library target, the training interpreter's version)."""
    chosen = stackmod.resolve(optimized, stack_wheels) if stack else None
    tcs = toolchain.detect()
    work = WorkArea.from_env()
    out: list[str] = []
    execs = []
    for ref in pipeline_profiles(optimized, compare, chosen):
        inp = prepare(ref, target=PIPELINE_TARGET, jobs=jobs, user_source=user_source, detected=tcs,
                      allow_missing_compiler=True)
        p = plan(inp)
        execs.append(stages.Execution(p, {}))
        out += [stages.render_plan(p, stages.would_skip(p, inp.work.stamps)), ""]
    for package in bolt_wheels:
        argv = bolt_wheel_argv(package, optimized, "<venv of the optimized build>/bin/python", quick=quick)
        out.append(f"after the builds: python -m buildsys bolt-wheel {' '.join(argv)}  (its plan is printed by "
                   "bolt-wheel --dry-run once the venv exists); a kept wheel joins the measurement and the image")
    subjects = None
    if chosen is not None:
        out += [stackmod.describe(chosen), ""]
        ainp = prepare(chosen.optimized, target=chosen.allocator, jobs=jobs, detected=tcs, allow_missing_compiler=True)
        ap = plan(ainp)
        out += [stages.render_plan(ap, stages.would_skip(ap, work.stamps)), ""]
        by = {ex.plan.summary["profile"]: ex.plan.summary for ex in execs}
        interp = by[chosen.interpreter]
        from .targets.cpython import runtime_deps_stage
        _, deps, _ = runtime_deps_stage(work, ".".join(str(interp["version"]).split(".")[:2]))
        vp = stackmod.verify_plan(chosen, python=Path(interp["prefix"]) / "bin" / "python3", deps=deps, work=work)
        out += [stages.render_plan(vp, stages.would_skip(vp, work.stamps)), ""]
        opt_python = Path(by[chosen.optimized]["prefix"]) / "bin" / "python3"
        for package in chosen.wheels:
            out.append(f"stack wheel: python -m buildsys build extension --package {package} --profile "
                       f"{chosen.optimized} --interp {opt_python}  (its plan: the same with --dry-run)")
        out.append("")
        wheels = [planned_wheel(work, w, chosen.optimized) for w in chosen.wheels]
        subjects = stack_subjects(execs, chosen, wheels, system=system)
        if subjects.unmeasured:
            out.append("built and shipped in the image, not measured (no measured venv installs their "
                       f"distribution): {', '.join(Path(w).name for w in subjects.unmeasured)}")
    name = "pipeline-<UTC time>"
    out.append("measure: " + format_command(measure_command(execs, run_name=name, quick=quick, system=system,
                                                             stack=subjects)))
    if image:
        if chosen is not None:
            img = ["python", "-m", "buildsys", "image", "--build", chosen.interpreter, "--host-settings",
                   chosen.settings, *[a for w in wheels for a in ("--wheel", str(w))]]
        else:
            img = ["python", "-m", "buildsys", "image", "--build", optimized, "--host-settings", image_settings]
        out.append("image: " + format_command(img))
    out.append(disk.describe(work.root, pipeline_disk_parts(measure=True, image=image, stack=chosen is not None,
                                                           bolt_wheels=bool(bolt_wheels))))
    return out


def pipeline(*, optimized: str = DEFAULT_OPTIMIZED_PROFILE, compare: Sequence[str] = DEFAULT_COMPARE_PROFILES,
             jobs: int | None = None, user_source: Path | None = None, console: Console | None = None,
             live: bool = True, measure: bool = True, quick: bool = False, run_name: str | None = None,
             system: Path | None = SYSTEM_PYTHON, image: bool = True,
             image_settings: str = DEFAULT_IMAGE_SETTINGS, bolt_wheels: Sequence[str] = DEFAULT_BOLT_WHEELS,
             stack: bool = DEFAULT_STACK, stack_wheels: Sequence[str] = stackmod.STACK_WHEELS) -> PipelineResult:
    """Build baseline, the comparison profiles and the optimized one; measure them side by side; then the
    optimized build's OCI image.

    `stack` (`--stack`): also the optimized profile's allocator and the `stack_wheels` built with it (build_stack),
    measured in the same run as steps (a)-(e) (stack_subjects; the report's `stack (a)-(e)` section); the image is
    then the stack's (stack_image_args) instead of the optimized build's.

    `bolt_wheels` (`--bolt-wheels mindspore`, the default): after the builds, bolt-wheel rewrites each package's
    stock wheel in a venv of the optimized build and times stock against rewritten (its decide stage); a wheel the
    decision keeps is measured as one more subject (with `stack`, step (e): (d) with it; else the optimized build
    with it) and installed in the image."""
    console = console or Console(stderr=True)
    chosen = stackmod.resolve(optimized, stack_wheels) if stack else None  # refused before any build
    refs = pipeline_profiles(optimized, compare, chosen)
    tcs = ensure_toolchain(refs, console)
    for name in ((chosen.allocator, "extension") if chosen else ()):  # the stack's targets, checked before any build
        here = targets.availability(targets.get(name), tcs)
        if not here.ok:
            raise ToolchainError(f"--stack: target {name} cannot be built here: {here.why}")
    if image:  # the image stages need root and their tools: checked before any build
        try:
            imagemod.check_host()
        except imagemod.ImageError as e:
            raise HostpgoError(f"{e} (or pass --no-image to build and measure without the image)") from None
    for package in bolt_wheels:  # refused before any build
        bolt_wheel_argv(package, optimized, "-")
    # The disk, before any build: a full disk midway fails in whatever writes next, deep in a log.
    parts = pipeline_disk_parts(measure=measure, image=image, stack=chosen is not None, bolt_wheels=bool(bolt_wheels))
    disk.check(WorkArea.from_env().root, parts)
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
    built = build_stack(chosen, out, tcs, jobs=jobs, console=console, live=live) if chosen else None

    def make_image() -> stages.Execution | None:
        if not image:
            return None
        # Again before the image: the disk is shared, and what else was written since the first check counts.
        disk.check(WorkArea.from_env().root, parts)
        if built is not None:  # the stack's image; a kept bolt-wheel rides along
            args = stack_image_args(built)
            iinp = imagemod.prepare(args["build"], settings=args["settings"], wheels=(*args["wheels"], *kept))
        else:
            iinp = imagemod.prepare(optimized, settings=image_settings, wheels=tuple(kept))
        return stages.execute(imagemod.plan(iinp), iinp.work.stamps, iinp.work.logs, console=console, live=live)

    if not measure:
        return PipelineResult(tuple(out), None, make_image(), tuple(manifests), built)
    name = run_name or "pipeline-" + time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    subjects = stack_subjects(out, built.stack, built.wheel_files, system=system, bolt_wheels=kept) if built else None
    if subjects is not None and subjects.unmeasured:
        console.print("[yellow]--stack:[/] built and shipped in the image, not measured (no measured venv installs "
                      f"their distribution, so no workload imports them): {', '.join(subjects.unmeasured)}")
    cmd = measure_command(out, run_name=name, quick=quick, system=system, wheels=kept, stack=subjects)
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
    try:
        executed = make_image()
    except HostpgoError as e:
        raise after_measurement(e, name, report) from e
    return PipelineResult(tuple(out), report, executed, tuple(manifests), built)


def after_measurement(error: HostpgoError, run_name: str, report: Path | None) -> HostpgoError:
    """A failure after the measurement finished (the image), saying how to rerun without measuring again (pure):
    the same run name keeps every measured stage of that run."""
    where = f" (report {report})" if report else ""
    failed = HostpgoError(f"{error}\nthe measurement {run_name} is complete{where}; after the fix, rerun with "
                          f"`--out {run_name}` (nox -s pipeline -- --out {run_name}) to keep it and build only what "
                          "is missing")
    failed.exit_code = error.exit_code
    return failed
