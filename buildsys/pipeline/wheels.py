"""Framework targets built from the user's checkout into a wheel (MindSpore, Ray): recognising the checkout, copying it
into the work area, and the PGO stages every such target shares (pure planning; the recipes supply the build step).

    source             copy the checkout (without build/, output/, .git, bazel-*) into the work area, apply
                       patches/<target>/<version>/, publish by rename
    runtime-deps       the runtime's wheels (shared with CPython's builds), when training or verify runs workloads
    build-env          a venv of the optimized interpreter with the build requirements: the wheel is built for it
    build-instrumented the recipe's build with the instrument flags -> an instrumented wheel
    train              a venv of the optimized interpreter, the instrumented wheel installed into it, the training
                       tasks run there; every process writes its own raw profile
    merge              (buildsys.pipeline.pgo) -> the profile store
    build              the recipe's build with the merged profile -> the optimized wheel
    verify             a fresh venv, the optimized wheel installed: import, the recipe's smoke checks, every
                       runtime workload's golden digest
    install            the wheel published into <work>/install/<build id>/ (with the manifest) and installed into
                       the optimized interpreter's own environment
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hostpgo import fsutil
from hostpgo.runner import format_command

from ..core import manifest
from ..core.paths import REPO_ROOT, WorkArea
from ..core.stages import BuildPlan, Call, ChannelFlag, Cmd, Stage, StageContext, digest
from ..errors import HostpgoError, InputError
from ..toolchain import Compiler, Host
from ..toolchain import flags as flagmod
from ..toolchain.profile import Profile
from . import patches as patchmod
from . import pgo as pgomod
from . import training
from .patches import Patch
from .training import TrainingTask

COPY_SKIP = ("build", "output", ".git", "bazel-*", "__pycache__", ".hostpgo", "*.egg-info", ".venv*")
"""Not copied from the checkout: earlier builds' trees and outputs, VCS data, Bazel's convenience links."""
VERSION_RE = re.compile(r"^\d+(\.\d+)+([.-]?(a|b|rc|dev|post)\d*)*$")


@dataclass(frozen=True)
class Checkout:
    """A recognised checkout of a framework: where it is, what version it states and what it was recognised by."""

    root: Path
    version: str
    recognised_by: tuple[str, ...]
    """The files (relative to root) whose presence and content identified it."""
    revision: str
    """The git commit of HEAD when the checkout has a readable .git, else ''."""
    listing: str
    """sha256 over every copied file's relative path, size and mtime: a cheap change detector for the tree."""


def require_source(target: str, source: Path | None, needs: Sequence[str], version_from: str) -> Path:
    """The --source directory; InputError (exit 2) naming --source and what the tree must contain."""
    want = f"a {target} checkout: a directory containing {', '.join(needs)} ({version_from} states the version)"
    if source is None:
        raise InputError(f"build {target} needs --source DIR, {want}; hostpgo pins no {target} archive")
    if not source.is_dir():
        raise InputError(f"--source {source}: not a directory; build {target} needs {want}")
    missing = [n for n in needs if not (source / n).exists()]
    if missing:
        raise InputError(f"--source {source}: not a {target} checkout, missing {', '.join(missing)} (it needs {want})")
    return source.resolve()


def read_version(text: str, where: str, pattern: str | None = None) -> str:
    """The version a file states: its whole stripped text, or group 1 of `pattern`; InputError when malformed."""
    if pattern is None:
        found = text.strip()
    else:
        m = re.search(pattern, text, re.M)
        found = m.group(1) if m else ""
    if not VERSION_RE.match(found):
        raise InputError(f"{where}: no version found (read {found[:40]!r}); a release checkout states one there")
    return found


def git_revision(root: Path) -> str:
    """HEAD's commit read from .git (no git process): '' when there is no readable repository."""
    git = root / ".git"
    try:
        head = (git / "HEAD").read_text().strip()
        if not head.startswith("ref: "):
            return head
        ref = head[5:]
        if (git / ref).is_file():
            return (git / ref).read_text().strip()
        for line in (git / "packed-refs").read_text().splitlines():
            if line.endswith(" " + ref):
                return line.split()[0]
    except OSError:
        pass
    return ""


def _skipped(name: str) -> bool:
    return any(Path(name).match(p) for p in COPY_SKIP)


def listing_digest(root: Path) -> str:
    h = hashlib.sha256()
    for dirpath, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not _skipped(d))
        for name in sorted(files):
            p = Path(dirpath) / name
            st = p.lstat()
            h.update(f"{p.relative_to(root)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def checkout(root: Path, version: str, recognised_by: Sequence[str]) -> Checkout:
    return Checkout(root, version, tuple(recognised_by), git_revision(root), listing_digest(root))


def source_stage(target: str, co: Checkout, series: Sequence[Patch], work: WorkArea) -> tuple[Stage, Path]:
    """Copy the checkout into the work area and apply the patch series there (the user's tree is never written)."""
    key = digest({"stage": "source", "target": target, "version": co.version, "listing": co.listing,
                  "revision": co.revision, "patches": [(p.name, p.sha256) for p in series]})
    tree = work.src / f"{target}-{co.version}-{key[:12]}"

    def run(ctx: StageContext) -> None:
        tmp = fsutil.scratch_dir(tree)
        shutil.rmtree(tmp)
        shutil.copytree(co.root, tmp, symlinks=True, ignore=lambda d, names: [n for n in names if _skipped(n)])
        patchmod.apply_series(tmp, tuple(series), ctx.runner)
        fsutil.move_into_place(tmp, tree)
        ctx.info.update({"origin": f"copied from {co.root}", "tree": str(tree), "revision": co.revision})

    what = f"copy {co.root} -> {tree} (skipping {', '.join(COPY_SKIP)})"
    if series:
        what += f"; patch -p1 with {', '.join(p.name for p in series)}"
    return Stage("source", f"{target} {co.version} from {co.root}", key, (Call(what, run),), outputs=(tree,)), tree


@dataclass(frozen=True)
class Inputs:
    """A framework build's inputs (everything can be made up in a unit test)."""

    target: str
    profile: Profile
    compiler: Compiler
    host: Host
    work: WorkArea
    checkout: Checkout
    patches: tuple[Patch, ...]
    tasks: tuple[TrainingTask, ...]
    """What the instrumented wheel is trained on (the target data's `recipe.training`, first one registered)."""
    python: Path
    """The optimized interpreter: the wheel is built for it, trained and verified in venvs of it, installed into it."""
    python_origin: str
    """How it was chosen (the same profile's CPython build, or --python)."""
    jobs: int
    options: Mapping[str, str] = field(default_factory=dict)
    """The target's own settings (device, ...), recorded in the manifest."""
    environ: Mapping[str, str] = field(default_factory=dict)
    """Environment the build step passes through (dependency mirrors, caches), captured when prepared."""
    build_requires: tuple[str, ...] = ()
    """pip requirements of the build venv (the build runs without build isolation, offline)."""
    compiler_notes: tuple[str, ...] = ()
    profile_data: Path | None = None

    @property
    def TARGET(self) -> str:  # noqa: N802 - the attribute every target's inputs carry (buildsys.engine.plan)
        return self.target

    @property
    def build_id(self) -> str:
        return f"{self.target}-{self.checkout.version}-{self.profile.name}"

    def record(self) -> manifest.BuildRecord:
        return manifest.BuildRecord(
            target=self.target, version=self.checkout.version, profile=self.profile.to_dict(),
            toolchain={**self.compiler.identity(), "host": {"machine": self.host.machine, "os": self.host.os_id,
                                                            "kunpeng": self.host.kunpeng}},
            source={"file": "", "tree": str(self.checkout.root), "revision": self.checkout.revision,
                    "listing_sha256": self.checkout.listing, "sha256": self.checkout.listing, "url": "",
                    "recognised_by": list(self.checkout.recognised_by)},
            patches=[{"name": p.name, "sha256": p.sha256} for p in self.patches],
            extra={"python": {"path": str(self.python), "origin": self.python_origin},
                   "options": dict(self.options)})


def optimized_python(work: WorkArea, profile: Profile, given: str | None, *,
                     flag: str = "--python") -> tuple[Path, str]:
    """The interpreter a framework wheel is built for: `given` (--python), else the installed CPython build of the
    same profile; InputError naming both when neither exists."""
    if given:
        p = Path(given)
        if not (p.is_file() and os.access(p, os.X_OK)):
            raise InputError(f"{flag} {given}: not an executable file")
        return p.absolute(), f"{flag}"
    from ..targets import get as target
    cpython = next(iter(target("cpython").sources))  # the pinned CPython release its builds are named by
    prefix = work.install / f"cpython-{cpython}-{profile.name}"
    py = prefix / "bin" / "python3"
    if not py.is_file():
        raise InputError(f"no optimized interpreter for profile '{profile.name}': {py} does not exist. Build it "
                         f"first (python -m buildsys build cpython --profile {profile.name}) or name one with "
                         f"{flag} PATH")
    return py, f"hostpgo build {prefix.name}"


def training_tasks(names: Sequence[str], target: str) -> tuple[TrainingTask, ...]:
    """The first registered task of `names` (a preference list: a newer task first, its stand-in after)."""
    reg = training.registry()
    for n in names:
        if n in reg:
            return (reg[n],)
    raise InputError(f"target {target}: none of its training tasks is registered ({', '.join(names)}; "
                     "profiles/tasks/NAME.toml)")


# ---------------------------------------------------------------------------------------------
# The plan.

BuildStep = Callable[[str, str, flagmod.ResolvedFlags, Path, Path, dict[str, str]], Stage]
"""(stage name, variant, resolved flags, source tree, wheel dir, environment) -> the stage that builds one wheel."""


@dataclass(frozen=True)
class Recipe:
    """What a framework recipe adds to the shared stages."""

    build: BuildStep
    import_name: str
    """The module `import` must load from the installed wheel."""
    smoke: Callable[[str, Path, dict[str, str]], list[Cmd | Call]] = lambda python, tree, env: []
    """(venv python, source tree, env) -> the framework's own checks run in verify."""
    notes: tuple[str, ...] = ()
    summary: Mapping[str, Any] = field(default_factory=dict)


def _venv(base: str, venv_dir: Path) -> Cmd:
    return Cmd((base, "-m", "venv", "--clear", str(venv_dir)), timeout=1800)


def install_wheel(python: str, wheel_dir: Path, *, what: str,
                  extra: Sequence[str] = ("--no-deps", "--force-reinstall")):
    """Call body: pip-install the one wheel in `wheel_dir` with `python` (offline: no dependencies resolved)."""
    def fn(ctx: StageContext) -> None:
        wheels = sorted(wheel_dir.glob("*.whl"))
        if len(wheels) != 1:
            raise HostpgoError(f"{what}: expected one wheel in {wheel_dir}, found {len(wheels)}")
        ctx.runner.run([python, "-m", "pip", "install", "--no-index", *extra, str(wheels[0])], timeout=1800)
        ctx.info.setdefault("wheels", []).append(wheels[0].name)
    return fn


def plan(inp: Inputs, recipe: Recipe, *, verify_workloads: Sequence[str] | None = None) -> BuildPlan:
    """The framework build's stages (pure). `verify_workloads`: the runtime workloads whose golden digests verify
    checks (default: the profile's verify.workloads)."""
    p, comp, work = inp.profile, inp.compiler, inp.work
    build_id = inp.build_id
    pgo = p.optimize.pgo == "on"
    golden = tuple(p.verify.workloads if verify_workloads is None else verify_workloads)
    where = pgomod.paths(work, build_id, inp.target)
    notes = [*inp.compiler_notes, *recipe.notes]
    stages: list[Stage] = []
    minor = "3.11"  # the runtime's wheels and the venvs' site-packages: the interpreters hostpgo builds
    python = str(inp.python)

    src, tree = source_stage(inp.target, inp.checkout, inp.patches, work)
    stages.append(src)
    wants_runtime = pgo and inp.profile_data is None and any(t.kind == "workloads" for t in inp.tasks)
    deps_dir, deps_key = None, ""
    if wants_runtime or golden:
        from ..targets.cpython import runtime_deps_stage
        deps_stage, deps_dir, deps_key = runtime_deps_stage(work, minor)
        stages.append(deps_stage)
    pth_dirs = (deps_dir, REPO_ROOT) if deps_dir else (REPO_ROOT,)

    build_venv = work.build / f"{build_id}-venv"
    env_key = digest({"stage": "build-env", "python": python, "requires": list(inp.build_requires), "src": src.key})
    env_actions: list[Cmd | Call] = [_venv(python, build_venv)]
    if inp.build_requires:
        env_actions.append(Cmd((str(build_venv / "bin" / "python"), "-m", "pip", "install", *inp.build_requires),
                               timeout=1800))
    stages.append(Stage("build-env", f"build venv of {python} with {', '.join(inp.build_requires) or 'pip only'}",
                        env_key, tuple(env_actions), outputs=(build_venv,)))
    build_env = {"PATH": f"{build_venv / 'bin'}{os.pathsep}{os.environ.get('PATH', '/usr/bin:/bin')}",
                 "VIRTUAL_ENV": str(build_venv), **inp.environ}

    def wheel_build(name: str, variant: str, prev_key: str, profdata: str) -> Stage:
        wheel_dir = work.build / f"{build_id}-{variant}-wheel"
        rf = flagmod.resolve(p, comp, inp.host, variant, build_dir=str(tree), raw_pattern=where.raw_pattern,
                             raw_dir=str(where.raw_dir), profdata=profdata)
        notes.extend(n for n in rf.notes if n not in notes)
        run_env = dict(build_env)
        if variant == "instrumented":
            run_env.update(pgomod.build_time_env(comp, tree))
        st = recipe.build(name, variant, rf, tree, wheel_dir, run_env)
        key = digest({"stage": name, "prev": prev_key, "env_key": env_key, "inner": st.key,
                      "compiler": comp.identity()})
        return dataclasses.replace(st, key=key, outputs=(*st.outputs, wheel_dir))

    reuse = inp.profile_data
    if reuse is not None and not pgo:
        raise InputError(f"--profile-data {reuse}: profile '{p.name}' has optimize.pgo = \"off\"; profile data "
                         "only applies to a PGO profile")
    profdata, prev = "", env_key
    summary_tasks: list[dict] = []
    if pgo and reuse is not None:
        pp = pgomod.reuse_plan(data=reuse, comp=comp, prev_key=prev)
    elif pgo:
        instr_wheels = work.build / f"{build_id}-instrumented-wheel"

        def instrument(prev_key: str) -> tuple[list[Stage], str]:
            st = wheel_build("build-instrumented", "instrumented", prev_key, "")
            return [st], st.key

        def train(env: dict[str, str]) -> list[Cmd | Call]:
            venv_py = str(where.venv_dir / "bin" / "python")
            pth = where.venv_dir / "lib" / f"python{minor}" / "site-packages" / "hostpgo-runtime.pth"
            text = "".join(f"{d}\n" for d in pth_dirs)
            acts: list[Cmd | Call] = [
                _venv(python, where.venv_dir),
                Call(f"write {pth}: {' and '.join(str(d) for d in pth_dirs)}",
                     lambda ctx: fsutil.write_text(pth, text)),
                Call(f"{venv_py} -m pip install --no-index --no-deps --force-reinstall {instr_wheels}/*.whl",
                     install_wheel(venv_py, instr_wheels, what="train"))]
            # The venv is made here, with the wheel in it, so every task runs with its python (venv = False).
            in_venv = [dataclasses.replace(t, venv=False) for t in inp.tasks]
            return acts + training.task_actions(in_venv, base_python=venv_py, prefix=str(where.venv_dir),
                                                venv_dir=where.venv_dir, env=env,
                                                runtime_env={"HOSTPGO_HOME": str(work.root)}, pth=None, pth_dirs=())

        pp = pgomod.plan(build_id=build_id, profile_name=p.name, comp=comp, work=work, where=where, prev_key=prev,
                         tasks=inp.tasks, instrument=instrument, train=train,
                         train_key={"deps": deps_key if wants_runtime else ""}, source_sha256=inp.checkout.listing)
    else:
        pp = None
    if pp is not None:
        stages.extend(pp.stages)
        summary_tasks = list(pp.training)
        profdata, prev = pp.profile_data, pp.key
    variant = "optimized" if pgo else "plain"
    final = wheel_build("build", variant, prev, profdata)
    stages.append(final)
    wheel_dir = work.build / f"{build_id}-{variant}-wheel"

    vvenv = work.pgo / build_id / "verify-venv"
    vpy = str(vvenv / "bin" / "python")
    vpth = vvenv / "lib" / f"python{minor}" / "site-packages" / "hostpgo-runtime.pth"
    vtext = "".join(f"{d}\n" for d in pth_dirs)
    wenv = {"HOSTPGO_HOME": str(work.root)}
    verify: list[Cmd | Call] = [
        _venv(python, vvenv),
        Call(f"write {vpth}", lambda ctx: fsutil.write_text(vpth, vtext)),
        Call(f"{vpy} -m pip install --no-index --no-deps {wheel_dir}/*.whl",
             install_wheel(vpy, wheel_dir, what="verify")),
        Cmd((vpy, "-c", f"import {recipe.import_name}, sys; print({recipe.import_name}.__file__); "
             f"sys.exit(0 if {recipe.import_name}.__file__.startswith({str(vvenv)!r}) else 3)"),
            cwd=vvenv, timeout=600),
        *recipe.smoke(vpy, tree, wenv)]
    for name in golden:
        argv = [vpy, "-m", "runtime", "workload", name, "--json", "--check-golden"]
        verify.append(Call(f"{format_command(argv, wenv, REPO_ROOT)} (must match the pinned digest)",
                           training.run_workload(argv, wenv, str(REPO_ROOT), p.verify.timeout,
                                                 f"verify of {build_id}")))
    vkey = digest({"stage": "verify", "prev": final.key, "workloads": list(golden), "deps": deps_key,
                   "import": recipe.import_name,
                   "smoke": [a.describe() for a in recipe.smoke(vpy, tree, wenv)],
                   "runtime": training.runtime_digest() if golden else ""})
    stages.append(Stage("verify", f"verify: import {recipe.import_name} from the installed wheel, the framework's "
                        "own checks, every runtime workload's golden digest", vkey, tuple(verify),
                        outputs=(vvenv,)))

    prefix = work.install / build_id
    ikey = digest({"stage": "install", "prev": vkey, "prefix": str(prefix), "python": python})

    def publish(ctx: StageContext) -> None:
        wheels = sorted(wheel_dir.glob("*.whl"))
        tmp = fsutil.scratch_dir(prefix)
        for w in wheels:
            shutil.copy2(w, tmp / w.name)
        fsutil.move_into_place(tmp, prefix)
        ctx.info["wheel"] = [w.name for w in wheels]

    stages.append(Stage("install", f"publish the wheel into {prefix} and install it into {python}'s environment",
                        ikey, (Call(f"copy {wheel_dir}/*.whl -> {prefix} (by rename)", publish),
                               Call(f"{python} -m pip install --no-index --no-deps --force-reinstall {prefix}/*.whl",
                                    install_wheel(python, prefix, what="install"))),
                        outputs=(prefix,),
                        notes=("the image does not take framework wheels yet (buildsys/image installs the runtime's "
                               "pinned requirements); install the wheel into the image's venv by hand until it has "
                               "that door",)))
    summary = {"target": inp.target, "version": inp.checkout.version, "profile": p.name,
               "source": f"{inp.checkout.root} (revision {inp.checkout.revision or 'unknown'}, recognised by "
                         f"{', '.join(inp.checkout.recognised_by)})",
               "python": f"{python} ({inp.python_origin})", "compiler": comp.version_text,
               "options": dict(inp.options), "patches": [x.name for x in inp.patches] or "none",
               "training_tasks": summary_tasks or "none (no PGO)", "prefix": str(prefix),
               "result": f"{prefix}/*.whl", "jobs": inp.jobs, **recipe.summary}

    def finish(ex) -> None:
        manifest.write_for_execution(ex, inp, [prefix], summary_tasks)

    return BuildPlan(build_id=build_id, stages=tuple(stages), notes=tuple(notes), summary=summary, finish=finish)


def flag_channels(rf: flagmod.ResolvedFlags, channel: str, name: str) -> tuple[ChannelFlag, ...]:
    """Resolved flags as ChannelFlags of one channel (compile flags, then link flags)."""
    return (*(ChannelFlag(channel, name, f.value, f.why) for f in rf.cflags),
            *(ChannelFlag(channel, name + " (link)", f.value, f.why) for f in rf.ldflags))


def last_level(argv: Sequence[str]) -> str | None:
    """The optimization level a compiler applies: its last -O flag."""
    levels = [a for a in argv if re.fullmatch(r"-O[0-3sgz]?|-Ofast", a)]
    return levels[-1] if levels else None
