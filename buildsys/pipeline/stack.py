"""`pipeline --stack`: what the optimized stack adds to the pipeline (its allocator and extension wheels built with
the optimized profile), the subjects of steps (a)-(d) in the one measurement, and the check that the built
allocator is the one in effect. The choices are pure functions of the profiles and the host settings files.

Step (c) is the interpreter-only build (step (b), the optimized profile without its allocator) with the
hostpgo-built allocator preloaded through host settings (profiles/host/<allocator>-hostpgo.toml), not a second
CPython build linked against it: the same interpreter binary as (b), so (b) -> (c) is the allocator alone; no
CPython build (the longest stage of the pipeline) is added; the preloaded library is searched first, so its malloc
serves every library of the process, as a linked one does; and the image ships a preloaded build today (it does
not relocate a linked build's rpath). `allocator_in_effect` in each workload record then needs that very file
mapped (hostenv.observe), and the stack-verify stage asserts it before anything is measured.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from hostenv import allocators as alloc_mod
from hostenv import settings as hostsettings
from hostpgo.errors import CommandError

from ..core.paths import REPO_ROOT, WorkArea
from ..core.stages import BuildPlan, Call, Execution, Stage, StageContext, digest, would_skip
from ..errors import HostpgoError, InputError
from ..toolchain import profile as profmod
from . import sources, training

STACK_WHEELS = ("numpy==1.26.4", "msgspec==0.23.0", "msgpack==1.2.4", "hostpgo")
"""The extension wheels of the stack, rebuilt with the optimized profile: NAME==VERSION sdists known to
buildsys/targets/extension.toml, and local projects by name (its [recipe.projects]: `hostpgo` is this checkout,
whose wheel carries the runtime's Cython hot path); another package joins by adding it here (or
`pipeline --stack-wheels`)."""
EXTRA_WORKLOADS = ("decode-b1-graph",)
"""Measured with --stack besides the pipeline's workloads: graph-mode decode at batch 1 too (decode-b8-graph is
already measured), so eager and graph are both seen at both batch sizes."""
VERIFY_WORKLOADS = ("decode-b1",)
"""Run by the stack-verify stage on the (c) subject: golden digest, and the built allocator's file mapped."""
SETTINGS_SUFFIX = "-hostpgo"
"""profiles/host/<allocator><suffix>.toml preloads the hostpgo-built allocator (its `allocator.build`)."""
WHEELS_TAG = "pgo-"
"""Subject name part of step (d): `+pgo-numpy...`, the distributions whose rebuilt wheels replace the stock ones."""
BOLT_TAG = "bolt-"
"""Subject name part of step (e): `+bolt-mindspore`, the distributions whose BOLT-rewritten wheels are in its venv."""
_IGNORED_KEYS = ("name", "description", "files", "overrides")


@dataclass(frozen=True)
class Stack:
    """What --stack builds, resolved from the optimized profile and the host settings files."""

    optimized: str
    """The optimized profile: the allocator and the wheels are built with its flags and its workload PGO."""
    interpreter: str
    """The interpreter-only profile: the optimized one without its allocator (step (b), and (c)/(d)'s binary)."""
    allocator: str
    """The allocator target the optimized profile names (`optimize.allocator`: tcmalloc)."""
    allocator_build: str
    """Its build id: `<allocator>-<version>-<optimized>` (its install prefix under .hostpgo/install/)."""
    settings: str
    """Host settings that preload that build (a name under profiles/host/)."""
    wheels: tuple[str, ...] = STACK_WHEELS
    """NAME==VERSION of the extension wheels, in build order."""

    @property
    def allocator_subject(self) -> str:
        """Step (c)'s subject name: the interpreter-only build + the hostpgo-built allocator."""
        return f"{self.interpreter}+{self.settings}"


def _comparable(prof: profmod.Profile) -> dict:
    d = prof.to_dict()
    for k in _IGNORED_KEYS:
        d.pop(k, None)
    d["optimize"] = {k: v for k, v in d["optimize"].items() if k not in ("allocator", "allocator_build")}
    return d


def interpreter_only(optimized: profmod.Profile) -> str:
    """The profile of the optimized one's `extends` chain that is it without its allocator: every key equal but
    optimize.allocator (glibc). InputError when the chain has none (then (b) -> (c) would change more than the
    allocator)."""
    want = _comparable(optimized)
    for f in optimized.files[1:]:
        cand = profmod.load(f, environ={})
        if cand.optimize.allocator == "glibc" and _comparable(cand) == want:
            return Path(f).stem
    raise InputError(f"--stack: no profile in the extends chain of {optimized.name} ({', '.join(optimized.files)}) "
                     "is it without its allocator; step (b) needs one (as workload-pgo-lto is for "
                     "workload-pgo-lto-tcmalloc)")


def resolve(optimized: str, wheels: Sequence[str] = STACK_WHEELS, *,
            host_profiles: Path | None = None) -> Stack:
    """The stack of `optimized` (reads profiles and host settings; builds nothing). InputError when the profile
    links no allocator that is a registered target, or no settings file preloads its build."""
    from .. import targets
    prof = profmod.load(optimized, environ={})
    alloc = prof.optimize.allocator
    if alloc == "glibc" or alloc not in targets.names():
        raise InputError(f"--stack: profile {prof.name} has optimize.allocator = {alloc!r}; the stack's allocator "
                         f"is built by its target, so it must be one of "
                         f"{', '.join(n for n in targets.names() if n in alloc_mod.names())} (the stack is "
                         f"the pipeline's default: pass --no-stack to build and measure the interpreter alone)")
    version = sources.pinned(alloc).version
    build = f"{alloc}-{version}-{prof.name}"
    name = f"{alloc}{SETTINGS_SUFFIX}"
    ref = str(host_profiles / f"{name}.toml") if host_profiles else name
    try:
        hs = hostsettings.resolve(ref, env={})
    except HostpgoError as e:
        raise InputError(f"--stack: host settings {name} (profiles/host/{name}.toml), which preload the "
                         f"hostpgo-built {alloc}, cannot be read: {e}") from None
    if hs.allocator.name != alloc or hs.allocator.build != build:
        raise InputError(f"--stack: profiles/host/{name}.toml preloads allocator {hs.allocator.name!r} build "
                         f"{hs.allocator.build!r}, not {build} (what --optimized {prof.name} builds); set "
                         f"allocator.build = \"{build}\" there")
    from ..targets import extension
    for w in wheels:
        if "==" not in w and w not in extension.PROJECTS:
            raise InputError(f"--stack-wheels {w!r}: give NAME==VERSION (a pinned sdist of extension.toml) or a "
                             f"local project's name ({', '.join(extension.PROJECTS) or 'none is registered'})")
    return Stack(optimized=prof.name, interpreter=interpreter_only(prof), allocator=alloc, allocator_build=build,
                 settings=name, wheels=tuple(dict.fromkeys(wheels)))


def measured_distributions(pyproject: Path = REPO_ROOT / "pyproject.toml") -> frozenset[str]:
    """Distributions the measurement's venvs install by name (the project's own wheel, its dependencies, its
    runtime and perf extras): a rebuilt wheel replaces one of these in a subject's venv (perf refuses to add one
    that is not)."""
    data = tomllib.loads(pyproject.read_text())["project"]
    reqs = [data["name"], *data.get("dependencies", ()), *data.get("optional-dependencies", {}).get("runtime", ()),
            *data.get("optional-dependencies", {}).get("perf", ())]
    return frozenset(dist_name(r) for r in reqs)


def dist_name(requirement: str) -> str:
    """PEP 503 normal form of a requirement's or a NAME==VERSION's distribution."""
    name = re.split(r"[<>=!~\[; ]", requirement.strip(), maxsplit=1)[0]
    return re.sub(r"[-_.]+", "-", name).lower()


def wheel_dist(wheel: Path | str) -> str:
    """The distribution of a wheel file name, normalized."""
    return dist_name(Path(wheel).name.split("-", 1)[0])


@dataclass(frozen=True)
class Subjects:
    """Step (c) and (d)'s `--interp` specs and every step's subject, for `python -m perf bench` (pure data)."""

    interps: tuple[str, ...]
    """Appended after the pipeline's own subjects: (c), then (d) when any wheel is measured."""
    steps: tuple[tuple[str, str], ...]
    """(step, subject name), in order; a step's first subject is its own, a further one a reference."""
    unmeasured: tuple[str, ...] = ()
    """Wheels built (and shipped in the image) but not measured: no measured venv installs their distribution,
    so no workload imports them."""

    def argv(self) -> list[str]:
        return [a for step, name in self.steps for a in ("--stack-step", f"{step}={name}")]


def subjects(stack: Stack, *, interpreter_prefix: str, baseline: str, system: str | None,
             linked_reference: str | None, wheels: Sequence[Path | str],
             measured: frozenset[str] | None = None, bolt_wheels: Sequence[Path | str] = ()) -> Subjects:
    """The stack's subjects (pure): (a) Debian's interpreter with the stock wheels (`system`, when measured) and
    the baseline build; (b) the interpreter-only build; (c) it with the hostpgo-built allocator preloaded, beside
    `linked_reference` (the optimized build linking the distribution's allocator); (d) (c) with the rebuilt
    wheels in its venv; (e) with `bolt_wheels` (the BOLT-rewritten framework wheels bolt-wheel kept), the step
    before with them too: the stack with and without them, in the same run. A wheel whose distribution the venvs
    do not install is listed in `unmeasured`."""
    measured = measured_distributions() if measured is None else measured
    python = f"{interpreter_prefix}/bin/python3"
    c = stack.allocator_subject
    interps = [f"{c}={python}@{stack.settings}"]
    inside = [Path(w) for w in wheels if wheel_dist(w) in measured]
    left = tuple(str(w) for w in wheels if wheel_dist(w) not in measured)
    steps = [*([("a", system)] if system else []), ("a", baseline), ("b", stack.interpreter), ("c", c),
             *([("c", linked_reference)] if linked_reference else [])]
    last, last_wheels = c, []
    if inside:
        d = f"{c}+{WHEELS_TAG}{'-'.join(wheel_dist(w) for w in inside)}"
        interps.append(f"{d}={python}" + "".join(f"+wheel:{w}" for w in inside) + f"@{stack.settings}")
        steps.append(("d", d))
        last, last_wheels = d, inside
    bolt = [Path(w) for w in bolt_wheels if wheel_dist(w) in measured]
    left += tuple(str(w) for w in bolt_wheels if wheel_dist(w) not in measured)
    if bolt:
        e = f"{last}+{BOLT_TAG}{'-'.join(wheel_dist(w) for w in bolt)}"
        interps.append(f"{e}={python}" + "".join(f"+wheel:{w}" for w in (*last_wheels, *bolt)) + f"@{stack.settings}")
        steps.append(("e", e))
    return Subjects(tuple(interps), tuple(steps), left)


# ------------------------------------------------------------------------------------------ building the wheels


def extension_args(package: str, interp: Path | str) -> dict[str, str]:
    """The extension target's options for one stack wheel (its [cli_args]): the package, the interpreter."""
    return {"package": package, "interp": str(interp)}


def wheel_of(ex: Execution) -> Path:
    """The installed wheel of an extension build (its install stage's record, kept in the stamp)."""
    info = ex.results.get("install")
    wheel = (info.info if info else {}).get("wheel")
    if not wheel or not Path(wheel).is_file():
        raise HostpgoError(f"{ex.plan.build_id}: its install stage names no wheel that exists ({wheel})")
    return Path(wheel)


def build_failed(package: str, plan: BuildPlan, work: WorkArea, error: HostpgoError) -> CommandError:
    """The error of a stack wheel whose build or verify failed: the package, the stage and its log."""
    failed = next((name for name, ok in would_skip(plan, work.stamps).items() if not ok), "?")
    log = work.logs / plan.build_id / f"{failed}.log"
    return CommandError(f"--stack: the wheel of {package} failed in stage '{failed}' of {plan.build_id}; the "
                        f"stages before it are stamped, so a rerun resumes there:\n{error}", log_path=log,
                        returncode=getattr(error, "returncode", None))


# ------------------------------------------------------------------------------------------ the allocator check


def verify_plan(stack: Stack, *, python: Path, deps: Path | None, work: WorkArea,
                workloads: Sequence[str] = VERIFY_WORKLOADS) -> BuildPlan:
    """stack-verify (pure plan): the interpreter-only build runs each workload under the stack's host settings;
    each must reproduce its golden digest, and its record must show the hostpgo-built allocator's file mapped
    (and no other allocator)."""
    env = {"HOSTPGO_HOME": str(work.root),
           "PYTHONPATH": ":".join(str(p) for p in (deps, REPO_ROOT) if p is not None)}
    library = work.install / stack.allocator_build
    actions = []
    for name in workloads:
        argv = [str(python), "-m", "runtime", "workload", name, "--json", "--check-golden",
                "--host-settings", stack.settings]
        actions.append(Call(f"{' '.join(argv)} (golden digest; {stack.allocator_build}'s library mapped)",
                            _check_workload(argv, env, stack, work.install)))
    key = digest({"stage": "stack-verify", "python": str(python), "settings": stack.settings,
                  "build": stack.allocator_build, "workloads": list(workloads), "env": env,
                  "manifest": _file_digest(library / alloc_mod.BUILD_MANIFEST),
                  "runtime": training.runtime_digest()})
    st = Stage("stack-verify", f"{stack.allocator_subject}: golden digests with {stack.allocator_build} in effect",
               key, tuple(actions))
    return BuildPlan(f"stack-verify-{stack.allocator_subject}", (st,), (),
                     {"prefix": str(library), "settings": stack.settings, "python": str(python),
                      "result": f"{stack.allocator_subject} verified"})


def _file_digest(path: Path) -> str:
    try:
        return digest({"bytes": path.read_bytes().hex()})
    except OSError:
        return "missing"


def check_record(rec: Mapping, stack: Stack, install_root: Path) -> str:
    """Why a workload record does not show the stack's allocator in effect ('' when it does), pure but for
    reading the build's manifest: the golden digest, then the hostpgo-built library by real path."""
    if rec.get("golden_match") is not True:
        return f"token digest {rec.get('token_digest')} is not the pinned {rec.get('golden_digest')}"
    hs = rec.get("host_settings") or {}
    mapped = (hs.get("observed") or {}).get("allocator_libraries") or []
    want = os.path.realpath(alloc_mod.find_built(stack.allocator, stack.allocator_build,
                                                 install_root=install_root).library)
    real = [os.path.realpath(p) for p in mapped]
    if real != [want]:
        return f"the process maps {real or 'no allocator library'}, not only {want}"
    if hs.get("allocator_in_effect") is not True:
        return f"its record says allocator_in_effect = {hs.get('allocator_in_effect')} ({hs.get('warnings')})"
    return ""


def _check_workload(argv: list[str], env: dict[str, str], stack: Stack, install_root: Path):
    def fn(ctx: StageContext) -> None:
        lines: list[str] = []
        ctx.runner.run(argv, env=env, cwd=REPO_ROOT, timeout=1800, ok_codes=(0, 1), nice=True, collect=lines)
        rec = training.last_json(lines) or {}
        why = check_record(rec, stack, install_root) if rec else "no workload record printed"
        name = argv[argv.index("workload") + 1]
        ctx.info.setdefault("workloads", []).append(
            {"name": name, "golden_match": rec.get("golden_match"),
             "allocator_libraries": ((rec.get("host_settings") or {}).get("observed") or {}).get(
                 "allocator_libraries"), "ok": not why})
        if why:
            raise HostpgoError(f"stack-verify: {name} under {stack.settings}: {why} (log: {ctx.runner.log_path})")
    return fn


def describe(stack: Stack) -> str:
    """One line of what --stack adds, for the dry run and the log."""
    return (f"--stack: {stack.allocator} built with {stack.optimized} ({stack.allocator_build}), preloaded into "
            f"{stack.interpreter} by host settings {stack.settings}; wheels {', '.join(stack.wheels)} built with "
            f"{stack.optimized}")

