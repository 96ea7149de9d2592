"""Native libraries that serve an interpreter through LD_PRELOAD (the allocators): the one planner every such
target uses, from (profile, compiler, pinned source, interpreter) to stamped stages.

    source                 pinned archive (the distribution's orig through `apt-get source`, ...), patched
    configure-instrumented, build-instrumented    the profile's flags with PGO instrumentation
    train                  the [pgo] tasks in the training interpreter with the instrumented library preloaded:
                           each process writes its own raw profile, and clang's `%m` in the file pattern keeps
                           the library's apart from an instrumented interpreter's
    merge                  llvm-profdata merge (GCC: the .gcda tree), into the profile store
    configure, build       the optimized library (-fprofile-instr-use, LTO, arch); CMake builds check every
                           compile line (buildsys.systems.cmake.check_compile_commands)
    verify                 the library's own tests (target data `verify.tests`), the library mapped into a
                           preloaded interpreter, and every `verify.workloads` golden digest with it preloaded
    install                into .hostpgo/install/<target>-<version>-<profile>/ with hostpgo-manifest.json, whose
                           `library` field names the shared object (hostenv's `allocator.build` reads it)

A recipe module is two names, `prepare` and `plan`, taken from here; what differs between targets is data
(buildsys/targets/NAME.toml: sources, `build` arguments of its build system, outputs, verify tests).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hostpgo import fsutil
from hostpgo.runner import Runner, format_command

from ..core import manifest
from ..core.paths import REPO_ROOT, WorkArea
from ..core.stages import BuildPlan, Call, ChannelFlag, Cmd, Stage, StageContext, digest
from ..errors import HostpgoError, InputError
from ..systems import autotools, cmake
from ..toolchain import Compiler, Host
from ..toolchain import flags as flagmod
from ..toolchain.profile import Profile
from . import patches, sources, training
from . import pgo as pgomod
from .patches import Patch
from .training import TrainingTask

if TYPE_CHECKING:
    from ..targets import Request, TargetSpec

SYSTEM_PYTHON = Path("/usr/bin/python3.11")
"""pgo.interpreter = auto without an optimized hostpgo build: the distribution's interpreter."""
INTERPRETER_PROBE = ("-c", "import sys; print('%d.%d.%d' % sys.version_info[:3])")


@dataclass(frozen=True)
class Interpreter:
    """The Python interpreter a library is preloaded into for training and verify."""

    python: Path
    version: str
    """Its version (major.minor.micro), probed when the inputs were prepared."""
    chosen: str
    """How it was chosen (the pgo.interpreter setting and what it resolved to)."""
    pythonpath: tuple[Path, ...] = (REPO_ROOT,)
    """PYTHONPATH of its runs: this checkout (the runtime), and the runtime's dependencies for a hostpgo build
    (installed by its runtime-deps stage); an interpreter of a venv brings its own site-packages."""

    def to_json(self) -> dict[str, Any]:
        return {"python": str(self.python), "version": self.version, "chosen": self.chosen,
                "pythonpath": [str(p) for p in self.pythonpath]}


def choose_interpreter(setting: str, work: WorkArea, runner: Runner | None = None) -> Interpreter:
    """pgo.interpreter resolved on this machine (prepare time: probes the interpreter's version once)."""
    from .. import engine  # the pipeline's optimized profile; imported here, engine imports the registry
    chosen = f"pgo.interpreter = {setting!r}"
    pythonpath: tuple[Path, ...] = (REPO_ROOT,)
    if setting in ("auto", "optimized"):
        cp = sources.pinned("cpython")
        build = work.install / f"cpython-{cp.version}-{engine.DEFAULT_OPTIMIZED_PROFILE}"
        python = build / "bin" / "python3"
        minor = ".".join(cp.version.split(".")[:2])
        deps = sorted(work.deps.glob(f"runtime-py{minor}-*"))
        if python.exists() and deps:
            chosen += f": the pipeline's optimized build {build.name}"
            linked = manifest.read(build).get("allocator", {}).get("name", "glibc")
            if linked != "glibc":
                chosen += (f" (it links {linked}; the preloaded library is searched first, so its malloc serves "
                           "the process)")
            pythonpath = (deps[-1], REPO_ROOT)
        elif setting == "optimized":
            raise InputError(f"pgo.interpreter = 'optimized': no optimized CPython build with its runtime "
                             f"dependencies under {work.root} ({python} and {work.deps}/runtime-py{minor}-*); build "
                             f"it first (python -m buildsys build cpython --profile {engine.DEFAULT_OPTIMIZED_PROFILE})"
                             ", or name an interpreter: --set pgo.interpreter=/path/to/venv/bin/python")
        else:
            python = SYSTEM_PYTHON
            chosen += f": no optimized hostpgo build installed ({build.name}), so {SYSTEM_PYTHON}"
    else:
        python = Path(setting)
        chosen += ": as given"
    if not python.exists():
        raise InputError(f"{chosen}: {python} does not exist; name an interpreter that imports the runtime's "
                         "dependencies: --set pgo.interpreter=/path/to/venv/bin/python")
    done = (runner or Runner(None)).capture([str(python), *INTERPRETER_PROBE], timeout=120)
    return Interpreter(python, done.stdout.strip(), chosen, pythonpath)


@dataclass(frozen=True)
class Inputs:
    """Everything the planner needs; all of it can be made up in a unit test (no compiler, no probe)."""

    spec: TargetSpec
    profile: Profile
    compiler: Compiler
    host: Host
    work: WorkArea
    pin: sources.PinnedSource
    patches: tuple[Patch, ...]
    tasks: tuple[TrainingTask, ...]
    interpreter: Interpreter
    jobs: int
    user_source: Path | None = None
    compiler_notes: tuple[str, ...] = ()
    profile_data: Path | None = None
    """Reuse merged profile data instead of training."""

    @property
    def TARGET(self) -> str:  # noqa: N802 (the name buildsys.engine.plan looks the recipe up by)
        return self.spec.name

    @property
    def build_id(self) -> str:
        return f"{self.spec.name}-{self.pin.version}-{self.profile.name}"

    @property
    def prefix(self) -> Path:
        return self.work.install / self.build_id

    def record(self) -> manifest.BuildRecord:
        """What the manifest says about the inputs of this build (`library`: the installed shared object)."""
        return manifest.BuildRecord(
            target=self.spec.name, version=self.pin.version, profile=self.profile.to_dict(),
            toolchain={**self.compiler.identity(), "host": {"machine": self.host.machine, "os": self.host.os_id,
                                                            "kunpeng": self.host.kunpeng}},
            source={"file": self.pin.file, "sha256": self.pin.sha256, "url": self.pin.url,
                    "deb_source": self.pin.deb_source},
            patches=[{"name": p.name, "sha256": p.sha256} for p in self.patches],
            extra={"library": str(self.prefix / self.spec.outputs["library"]),
                   "allocator": self.spec.outputs.get("allocator", self.spec.name),
                   "interpreter": self.interpreter.to_json()})


def prepare(req: Request) -> Inputs:
    """A library target's inputs: pinned source, patches, training tasks and the training interpreter;
    --source and --profile-data are checked here, so a dry run refuses what the real run would."""
    prof = req.profile
    pin = sources.pinned(req.spec.name)
    if req.user_source is not None:
        sources.check_user_source(pin, req.user_source)
    if req.profile_data is not None:
        pgomod.check_profile_data(req.profile_data, req.compiler, flag="--profile-data")
    needs_python = prof.optimize.pgo == "on" or bool(prof.verify.workloads)
    interp = (choose_interpreter(prof.pgo.interpreter, req.work) if needs_python
              else Interpreter(Path(""), "", "not needed (no PGO, no verify workloads)"))
    return Inputs(spec=req.spec, profile=prof, compiler=req.compiler, host=req.toolchains.host, work=req.work,
                  pin=pin, patches=patches.series(req.spec.name, pin.version),
                  tasks=training.resolve(prof.pgo.tasks) if prof.optimize.pgo == "on" else (),
                  interpreter=interp, jobs=req.jobs, user_source=req.user_source,
                  compiler_notes=req.compiler_notes, profile_data=req.profile_data)


# ---------------------------------------------------------------------------------------------
# The build system's steps for one variant (the target data's `build` table says how).

def _subst(argv, **values: object) -> tuple[str, ...]:
    return tuple(str(a).format(**values) for a in argv)


def _variant_stages(inp: Inputs, *, variant: str, suffix: str, tree: Path, build_dir: Path, prefix: Path,
                    rf: flagmod.ResolvedFlags, prev_key: str, src_key: str) -> list[Stage]:
    """configure + build of one variant through the target's build system."""
    spec, p = inp.spec, inp.profile
    opt = f"-{p.optimize.opt}"
    key_inputs = {"variant": variant, "prev": prev_key, "src": src_key, "compiler": inp.compiler.identity()}
    if spec.system == "cmake":
        defines = {str(k): str(v) for k, v in spec.build.get("defines", {}).items()}
        cfg = cmake.configure_stage(f"configure{suffix}", f"cmake configure ({variant})", key_inputs=key_inputs,
                                    source=tree, build_dir=build_dir, prefix=prefix, rf=rf, opt=opt,
                                    defines=defines, generator=spec.build.get("generator"))
        required = [f.value for f in rf.cflags if f.value != opt]
        bld = cmake.build_stage(f"build{suffix}", f"cmake build ({variant})", prev_key=cfg.key, source=tree,
                                build_dir=build_dir, jobs=inp.jobs, opt=opt, required=required)
        return [cfg, bld]
    if spec.system == "autotools":
        args = [f"--prefix={prefix}", *spec.build.get("configure", ()), *p.flags.configure]
        cfg = autotools.configure_stage(f"configure{suffix}", f"configure ({variant})", key_inputs=key_inputs,
                                        tree=tree, build_dir=build_dir, args=args, rf=rf, extra_env={},
                                        flag_vars=autotools.USER_VARS, bootstrap=tuple(spec.build.get("bootstrap", ())),
                                        target_args=tuple(spec.build.get("configure", ())))
        bld = autotools.build_stage(f"build{suffix}", f"build ({variant})", prev_key=cfg.key, build_dir=build_dir,
                                    jobs=inp.jobs, make_vars={}, make_vars_why="", run_env={}, run_env_why="")
        return [cfg, bld]
    raise InputError(f"{spec.data_file}: system {spec.system!r} has no library steps here (cmake, autotools)")


def _install_stage(inp: Inputs, *, prev_key: str, build_dir: Path) -> Stage:
    prefix = inp.prefix
    staging = inp.work.tmp / f"destdir-{inp.build_id}"
    library = inp.spec.outputs["library"]

    def publish(ctx: StageContext) -> None:
        staged = staging / prefix.relative_to(prefix.anchor)
        if not (staged / library).exists():
            raise HostpgoError(f"the install left no {staged / library}; nothing to publish")
        fsutil.move_into_place(staged, prefix)
        shutil.rmtree(staging, ignore_errors=True)
    what = f"rename {staging}{prefix} -> {prefix} (must hold {library})"
    if inp.spec.system == "cmake":
        return cmake.install_stage("install", prev_key=prev_key, build_dir=build_dir, prefix=prefix, staging=staging,
                                   publish=publish, publish_what=what)
    return autotools.install_stage("install", prev_key=prev_key, build_dir=build_dir, prefix=prefix, staging=staging,
                                   run_env={}, make_vars={}, publish=publish, publish_what=what)


def mapped_code(library: Path) -> str:
    """`python -c` code that fails unless `library` (by real path) is mapped into the running interpreter."""
    return (f"import os, sys; want = os.path.realpath({str(library)!r}); "
            "maps = {ln.split()[-1] for ln in open('/proc/self/maps') if '/' in ln}; "
            "sys.exit(0 if want in maps else want + ' is not mapped: LD_PRELOAD did not take effect')")


# ---------------------------------------------------------------------------------------------
# The plan.

def plan(inp: Inputs) -> BuildPlan:
    spec, p, comp, host, work, pin = inp.spec, inp.profile, inp.compiler, inp.host, inp.work, inp.pin
    build_id, prefix = inp.build_id, inp.prefix
    pgo = p.optimize.pgo == "on"
    where = pgomod.paths(work, build_id, spec.name)
    notes = list(inp.compiler_notes)
    if p.optimize.allocator != "glibc":
        notes.append(f"optimize.allocator = {p.optimize.allocator!r} does not apply to a library target "
                     f"({spec.name} is an allocator itself); nothing linked")
    if p.optimize.bolt:
        notes.append("optimize.bolt: not planned for library targets yet; left out")
    stages: list[Stage] = []
    source = sources.plan_stage(pin, inp.patches, work, user_source=inp.user_source)
    stages.append(source.stage)
    tree, src_key = source.tree, source.key
    built = spec.outputs["build_library"]
    interp = inp.interpreter
    run_env = {"HOSTPGO_HOME": str(work.root), "PYTHONPATH": ":".join(str(d) for d in interp.pythonpath)}
    if interp.version:  # an interpreter runs (PGO training or verify workloads)
        notes.append(f"interpreter {interp.python} (Python {interp.version}): {interp.chosen}")

    def variant_flags(variant: str, build_dir: Path, profdata: str) -> flagmod.ResolvedFlags:
        rf = flagmod.resolve(p, comp, host, variant, build_dir=str(build_dir), raw_pattern=where.raw_pattern,
                             raw_dir=str(where.raw_dir), profdata=profdata, work=work)
        notes.extend(n for n in rf.notes if n not in notes)
        return rf

    summary_tasks: list[dict] = []
    profdata = ""
    prev = src_key
    if pgo and inp.profile_data is not None:
        pp = pgomod.reuse_plan(data=inp.profile_data, comp=comp, prev_key=prev)
    elif pgo:
        ibuild = work.build / f"{build_id}-instrumented"

        def instrument(prev_key: str) -> tuple[list[Stage], str]:
            made = _variant_stages(inp, variant="instrumented", suffix="-instrumented", tree=tree, build_dir=ibuild,
                                   prefix=prefix, rf=variant_flags("instrumented", ibuild, ""), prev_key=prev_key,
                                   src_key=src_key)
            return made, made[-1].key

        def train(env: dict[str, str]) -> list[Cmd | Call]:
            lib = ibuild / built
            wenv = {**env, **run_env, "LD_PRELOAD": str(lib)}
            return task_actions(inp.tasks, python=str(interp.python), env=wenv, where=f"training of {build_id}",
                                extra_dir=where.venv_dir)

        pp = pgomod.plan(build_id=build_id, profile_name=p.name, comp=comp, work=work, where=where, prev_key=prev,
                         tasks=inp.tasks, instrument=instrument, train=train,
                         train_key={"interpreter": interp.to_json(), "run_env": run_env}, source_sha256=pin.sha256)
    else:
        pp = None
    if pp is not None:
        stages.extend(pp.stages)
        summary_tasks, profdata, prev = list(pp.training), pp.profile_data, pp.key
    variant = "optimized" if pgo else "plain"
    obuild = work.build / f"{build_id}-{variant}"
    stages.extend(_variant_stages(inp, variant=variant, suffix="", tree=tree, build_dir=obuild, prefix=prefix,
                                  rf=variant_flags(variant, obuild, profdata), prev_key=prev, src_key=src_key))
    bkey = stages[-1].key

    # verify: the library's own tests, then the optimized library preloaded into the interpreter.
    lib = obuild / built
    vals = {"build": obuild, "source": tree, "jobs": inp.jobs}
    actions: list[Cmd | Call] = [Cmd(_subst(argv, **vals), cwd=obuild, timeout=900)
                                 for argv in spec.verify.get("tests", ())]
    venv_ = {**run_env, "LD_PRELOAD": str(lib)}
    if p.verify.workloads:
        actions.append(Cmd((str(interp.python), "-c", mapped_code(lib)), env=venv_, cwd=REPO_ROOT, timeout=120))
    for name in p.verify.workloads:
        argv = [str(interp.python), "-m", "runtime", "workload", name, "--json", "--check-golden"]
        actions.append(Call(f"{format_command(argv, venv_, REPO_ROOT)} (must match the pinned digest)",
                            training.run_workload(argv, venv_, str(REPO_ROOT), p.verify.timeout,
                                                  f"verify of {build_id}")))
    vkey = digest({"stage": "verify", "prev": bkey, "tests": [list(a) for a in spec.verify.get("tests", ())],
                   "workloads": list(p.verify.workloads), "interpreter": interp.to_json(),
                   "runtime": training.runtime_digest() if p.verify.workloads else ""})
    stages.append(Stage("verify", f"verify: {spec.name}'s own tests, then every verify workload's golden digest "
                        f"with {built} preloaded", vkey, tuple(actions),
                        flags=(ChannelFlag("env", "LD_PRELOAD", str(lib), "engine: the optimized library serves "
                                           "the interpreter"),)))
    stages.append(_install_stage(inp, prev_key=vkey, build_dir=obuild))

    summary = {"target": spec.name, "version": pin.version, "profile": p.name, "profile_files": list(p.files),
               "compiler": comp.version_text, "cc": comp.cc, "host": f"{host.machine} ({host.os_id})",
               "source": f"{pin.file} sha256={pin.sha256}", "patches": [x.name for x in inp.patches] or "none",
               "training_tasks": summary_tasks or "none (no PGO)",
               "interpreter": str(interp.python) if interp.version else "none",
               "prefix": str(prefix), "library": str(prefix / spec.outputs["library"]),
               "result": str(prefix / spec.outputs["library"]), "jobs": inp.jobs}

    def finish(ex) -> None:
        manifest.write_for_execution(ex, inp, [prefix], summary_tasks)

    return BuildPlan(build_id=build_id, stages=tuple(stages), notes=tuple(notes), summary=summary, finish=finish)


def task_actions(tasks, *, python: str, env: dict[str, str], where: str,
                 extra_dir: Path | None = None) -> list[Cmd | Call]:
    """Training tasks run directly in `python` (no venv: the library is what is trained, and the interpreter
    brings its packages); `env` carries LD_PRELOAD and the raw-profile pattern into every task process.

    A task's `venv_install` (ray for ray-decode) goes into `extra_dir/<task>` by `pip install --target` and is put
    after the interpreter's PYTHONPATH entries, so a hostpgo build's runtime dependencies (on PYTHONPATH) win over
    its copies of them; a venv interpreter's own site-packages comes after every PYTHONPATH entry, so there the
    directory's copies of ray's dependencies (pip --target installs them all) shadow the venv's."""
    actions: list[Cmd | Call] = []
    for t in tasks:
        tenv_extra: dict[str, str] = {}
        if t.venv_install:
            if extra_dir is None:
                raise InputError(f"{where}: task {t.name} installs {' '.join(t.venv_install)} but no directory "
                                 "was given for it")
            target = extra_dir / f"{t.name}-{digest(list(t.venv_install))[:12]}"
            subst = dict(python=python, prefix="", repo=str(REPO_ROOT), venv=str(target))
            actions.append(Cmd((python, "-m", "pip", "install", "--disable-pip-version-check", "--upgrade",
                                "--target", str(target), *[a.format(**subst) for a in t.venv_install]),
                               env={k: v for k, v in env.items() if k != "LD_PRELOAD"}, timeout=3600))
            tenv_extra["PYTHONPATH"] = ":".join(x for x in (env.get("PYTHONPATH", ""), str(target)) if x)
        for argv, tenv, cwd in t.commands(python=python, prefix="", repo=str(REPO_ROOT)):
            full = {**env, **tenv, **tenv_extra}
            if t.kind == "workloads":
                actions.append(Call(f"{format_command(argv, full, Path(cwd))} (record kept)",
                                    training.run_workload(argv, full, cwd, t.timeout, f"{where}, task {t.name}")))
            else:
                actions.append(Cmd(tuple(argv), env=full, cwd=Path(cwd) if cwd else None, timeout=t.timeout,
                                   ok_codes=t.ok_codes))
    return actions
