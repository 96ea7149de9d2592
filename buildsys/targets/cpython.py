"""The CPython recipe: a pure planner from (profile, compiler, host, sources) to stamped stages."""

from __future__ import annotations

import dataclasses
import os
import shutil
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from hostenv import allocators as alloc_mod
from hostpgo import fsutil
from hostpgo.runner import format_command

from .. import targets as targets_registry
from ..core import manifest
from ..core.paths import REPO_ROOT, WorkArea
from ..core.stages import BuildPlan, Call, ChannelFlag, Cmd, Stage, StageContext, digest
from ..errors import HostpgoError
from ..pipeline import autotune, patches, sources, training
from ..pipeline import bolt as boltmod
from ..pipeline import pgo as pgomod
from ..pipeline.patches import Patch
from ..pipeline.training import TrainingTask, runtime_digest, tasks_digest
from ..systems import autotools
from ..toolchain import Compiler, Host
from ..toolchain import flags as flagmod
from ..toolchain.profile import Profile
from . import Request

# Stages in order, with what each does (the pipeline prints them in this order).
STAGE_ORDER = ("source", "runtime-deps", "configure-instrumented", "build-instrumented", "install-instrumented",
               "train", "merge", "configure", "build", "verify", "install")
BOLT_STAGE_ORDER = (*STAGE_ORDER[:STAGE_ORDER.index("verify")], *boltmod.STAGES,
                    *STAGE_ORDER[STAGE_ORDER.index("verify"):])
"""The order with optimize.bolt = true (instrumentation collection)."""
SPEC = targets_registry.get("cpython")
"""This target's data (buildsys/targets/cpython.toml)."""
PGO_TEST_ARGS = tuple(SPEC.verify["test_args"])
"""What verify runs first: CPython's own `-m test --pgo` set (from the target data)."""


def runtime_requirements(pyproject: Path = REPO_ROOT / "pyproject.toml") -> tuple[str, ...]:
    """The runtime's dependencies: the `runtime` extra of this project's pyproject.toml."""
    try:
        data = tomllib.loads(pyproject.read_text())
        return tuple(data["project"]["optional-dependencies"]["runtime"])
    except (OSError, KeyError, tomllib.TOMLDecodeError) as e:
        raise HostpgoError(f"{pyproject}: cannot read [project.optional-dependencies] runtime ({e}); the "
                           "runtime's dependencies are installed from that list") from None


def runtime_deps_stage(work: WorkArea, minor: str) -> tuple[Stage, Path, str]:
    """The `runtime-deps` stage: the runtime's third-party wheels for Python `minor`, installed once per requirement
    set into the work area and shared by every build (CPython's and the framework targets'); returns (stage,
    directory, key). Training venvs see the directory through a .pth file, verify stages through PYTHONPATH."""
    reqs = runtime_requirements()
    deps_key = digest({"stage": "runtime-deps", "requirements": reqs, "python": minor})
    deps_dir = work.deps / f"runtime-py{minor}-{deps_key[:12]}"
    pip = (sys.executable, "-m", "pip", "install", "--target", "{tmp}", "--only-binary=:all:",
           "--python-version", minor, "--implementation", "cp", *reqs)

    def do_deps(ctx: StageContext) -> None:
        if deps_dir.is_dir():  # published by rename, so complete
            ctx.info.update({"dir": str(deps_dir), "origin": "present"})
            return
        tmp = work.tmp / f"deps-{deps_key[:12]}-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        ctx.runner.run([a.format(tmp=tmp) for a in pip], timeout=3600)
        fsutil.move_into_place(tmp, deps_dir)
        ctx.info.update({"dir": str(deps_dir), "origin": "pip", "requirements": list(reqs)})

    stage = Stage("runtime-deps", f"install the runtime's dependencies for Python {minor}", deps_key,
                  (Call(f"{' '.join(pip).format(tmp='<tmp>')}; rename into {deps_dir} (skipped when present)",
                        do_deps),),
                  requires=(deps_dir,), independent=True,
                  notes=("wheels only (--only-binary=:all:), so the same files serve every "
                         f"CPython {minor} build",))
    return stage, deps_dir, deps_key


@dataclass(frozen=True)
class Inputs:
    """Everything the planner needs; all of it can be made up in a unit test (no compiler required)."""

    TARGET: ClassVar[str] = "cpython"

    profile: Profile
    compiler: Compiler
    host: Host
    work: WorkArea
    pin: sources.PinnedSource
    patches: tuple[Patch, ...]
    tasks: tuple[TrainingTask, ...]
    jobs: int
    user_source: Path | None = None
    compiler_notes: tuple[str, ...] = ()
    profile_data: Path | None = None
    """Reuse merged profile data (a .profdata file, or a GCC .gcda tree) instead of training."""
    allocator: alloc_mod.Allocator | None = None
    """The allocator found on this host for optimize.allocator (None: glibc, nothing linked)."""
    bolt_sampling: boltmod.Sampling | None = None
    """Whether perf can sample branch stacks here (BOLT profiles only; probed once by buildsys.toolchain.facts
    when the inputs are prepared; planning never probes)."""

    def record(self) -> manifest.BuildRecord:
        """What the manifest says about the inputs of this build."""
        return manifest.BuildRecord(
            target=self.TARGET, version=self.pin.version, profile=self.profile.to_dict(),
            toolchain={**self.compiler.identity(), "host": {"machine": self.host.machine, "os": self.host.os_id,
                                                            "kunpeng": self.host.kunpeng}},
            source={"file": self.pin.file, "sha256": self.pin.sha256, "url": self.pin.url},
            patches=[{"name": p.name, "sha256": p.sha256} for p in self.patches],
            extra={"allocator": self.allocator.to_json() if self.allocator else {"name": "glibc", "library": ""}})


def prepare(req: Request) -> Inputs:
    """CPython's inputs: the pinned source, patches, training tasks and allocator; --source and --profile-data
    are checked here, so a dry run refuses what the real run would."""
    prof, tcs = req.profile, req.toolchains
    notes = req.compiler_notes
    alloc = None
    if prof.optimize.allocator != "glibc" and prof.optimize.allocator_build:
        try:
            alloc = alloc_mod.find_built_for_profile(prof.optimize.allocator, prof.optimize.allocator_build,
                                                     req.work.install)
        except alloc_mod.AllocatorNotFound as e:
            if not req.allow_missing:
                raise
            spec = alloc_mod.table()[prof.optimize.allocator]
            alloc = alloc_mod.Allocator(spec.name, req.work.install / f"{spec.name}-VERSION-"
                                        f"{prof.optimize.allocator_build}" / "lib" / spec.sonames[0],
                                        f"{alloc_mod.BUILT_PACKAGE}{prof.optimize.allocator_build}")
            notes = (*notes, f"hostpgo-built allocator not installed, planned as {alloc.library}: {e}")
    elif prof.optimize.allocator != "glibc":
        try:
            alloc = alloc_mod.find(prof.optimize.allocator, tcs.host, key="optimize.allocator")
        except alloc_mod.AllocatorNotFound as e:
            if not req.allow_missing:
                raise
            spec = alloc_mod.table()[prof.optimize.allocator]
            alloc = alloc_mod.Allocator(spec.name, alloc_mod.library_dirs(tcs.host)[0] / spec.sonames[0])
            notes = (*notes, f"allocator not installed, planned as {alloc.library}: {e}")
    pin = sources.pinned(req.spec.name)
    if req.user_source is not None:
        sources.check_user_source(pin, req.user_source)
    if req.profile_data is not None:
        if prof.optimize.pgo == "on":
            pgomod.require_reusable(prof, req.profile_data, req.compiler)
        pgomod.check_profile_data(req.profile_data, req.compiler, flag="--profile-data")
    return Inputs(
        profile=prof, compiler=req.compiler, host=tcs.host, work=req.work, pin=pin,
        patches=patches.series(req.spec.name, pin.version),
        tasks=training.resolve(prof.pgo.tasks) if prof.optimize.pgo == "on" else (),
        jobs=req.jobs, user_source=req.user_source, compiler_notes=notes, profile_data=req.profile_data,
        allocator=alloc, bolt_sampling=req.facts.branch_sampling if req.facts is not None else None)


def _publish_tree(staging_root: Path, prefix: Path):
    """Call body: move DESTDIR-staged `prefix` into place by rename (old one moved aside, then deleted)."""
    def fn(ctx: StageContext) -> None:
        staged = staging_root / prefix.relative_to(prefix.anchor)
        if not (staged / "bin").is_dir():
            raise HostpgoError(f"make install left no {staged}/bin; nothing to publish")
        py = staged / "bin" / "python"
        if not py.exists():
            py.symlink_to("python3")
        fsutil.move_into_place(staged, prefix)
        shutil.rmtree(staging_root, ignore_errors=True)
    return fn


def plan(inp: Inputs) -> BuildPlan:
    p, comp, host, work, pin = inp.profile, inp.compiler, inp.host, inp.work, inp.pin
    build_id = f"cpython-{pin.version}-{p.name}"
    pgo = p.optimize.pgo == "on"
    llvm = pgomod.is_llvm(comp)
    minor = ".".join(pin.version.split(".")[:2])
    where = pgomod.paths(work, build_id, "cpython")
    notes = list(inp.compiler_notes)
    stages: list[Stage] = []
    comp_id = comp.identity()

    # 1. source: fetch + verify + unpack + patch, published by rename (shared by every profile's build).
    source = sources.plan_stage(pin, inp.patches, work, user_source=inp.user_source)
    stages.append(source.stage)
    src_key, tree = source.key, source.tree

    def build_stages(variant: str, suffix: str, prefix: Path, prev_key: str, profdata: str,
                     extra_cflags: tuple[str, ...] = (), extra_run_env: dict[str, str] | None = None,
                     dir_tag: str = "") -> tuple[str, Path, dict[str, str], dict[str, str]]:
        """Append configure+build stages for a variant; return (build key, build dir, run env, make vars).
        `extra_cflags`/`extra_run_env`: the BiSheng Autotuner's flags and data directory (bisheng.autotune)."""
        build_dir = work.build / f"{build_id}-{variant}{dir_tag}"
        rf = flagmod.resolve(p, comp, host, variant, build_dir=str(build_dir),
                             raw_pattern=where.raw_pattern, raw_dir=str(where.raw_dir),
                             profdata=profdata, work=work, profile_reused=inp.profile_data is not None,
                             allocator_flags=alloc_mod.link_flags(inp.allocator) if inp.allocator else ())
        # --- BOLT (optimize.bolt only): the optimized build keeps its relocations for BOLT.
        if p.optimize.bolt and variant != "instrumented":
            bc, bl = boltmod.build_flags("gcc" if comp.family == "gcc" else "clang")
            rf = dataclasses.replace(rf, cflags=(*rf.cflags, *bc), ldflags=(*rf.ldflags, *bl))
        # --- end BOLT
        if extra_cflags:
            rf = dataclasses.replace(rf, cflags=(*rf.cflags, *(flagmod.Flag(v, "bisheng.autotune (BiSheng "
                                                                            "Autotuner)") for v in extra_cflags)))
        notes.extend(n for n in rf.notes if n not in notes)
        args = [f"--prefix={prefix}", "--enable-shared" if p.optimize.shared else "--disable-shared",
                *p.flags.configure]
        extra_env: dict[str, str] = {}
        if p.optimize.shared:
            # Like pyenv: the installed interpreter finds its libpython without LD_LIBRARY_PATH.
            extra_env["LDFLAGS"] = f"-Wl,-rpath,{prefix}/lib"
        # Instrumented binaries also run during the build (setup.py, compileall): keep those runs'
        # profiles out of the training data.
        run_env = pgomod.build_time_env(comp, build_dir) if variant == "instrumented" else {}
        run_env = {**run_env, **(extra_run_env or {})}
        cfg = autotools.configure_stage(
            f"configure{suffix}", f"configure ({variant})", tree=tree, build_dir=build_dir, args=args, rf=rf,
            extra_env=extra_env, key_inputs={"variant": variant, "prev": prev_key, "src": src_key, "compiler": comp_id})
        stages.append(cfg)
        # CPython links _bootstrap_python and _freeze_module with PY_LDFLAGS_NOLTO, which reads only
        # the *make variable* LDFLAGS_NODIST, not what configure recorded. Those links get LTO bitcode
        # (or instrumented) objects too, so the link flags must also travel as the make variable.
        # Needed where the objects cannot be linked without the flags: LTO bitcode, and GCC-instrumented
        # objects (they reference libgcov's __gcov_merge_*). clang-instrumented objects link without
        # the profile runtime (those two helper binaries then just write no profile).
        needs_link_flags = ((p.optimize.lto != "off" and variant != "instrumented")
                            or (variant == "instrumented" and not llvm))
        link = " ".join(f.value for f in rf.ldflags)
        make_vars = {"LDFLAGS_NODIST": link} if needs_link_flags and link else {}
        build = autotools.build_stage(
            f"build{suffix}", f"build ({variant})", prev_key=cfg.key, build_dir=build_dir, jobs=inp.jobs,
            make_vars=make_vars, make_vars_why="engine: also reaches CPython's NOLTO links (_bootstrap_python, "
            "_freeze_module)", run_env=run_env, run_env_why="engine: keep build-time runs out of the training profile")
        stages.append(build)
        return build.key, build_dir, run_env, make_vars

    def install_stage(name: str, build_dir: Path, prefix: Path, prev_key: str, run_env: dict[str, str],
                      make_vars: dict[str, str]) -> str:
        staging = work.tmp / f"destdir-{build_id}-{name}"
        stage = autotools.install_stage(
            name, prev_key=prev_key, build_dir=build_dir, prefix=prefix, staging=staging, run_env=run_env,
            make_vars=make_vars, publish=_publish_tree(staging, prefix),
            publish_what=f"rename {staging}{prefix} -> {prefix}; add bin/python -> python3")
        stages.append(stage)
        return stage.key

    prefix = work.install / build_id
    instr_prefix = work.install / f"{build_id}-instrumented"
    profdata_path = ""
    prev = src_key
    summary_tasks: list[dict] = []
    reuse = inp.profile_data
    if reuse is not None and not pgo:
        raise HostpgoError(f"--profile-data {reuse}: profile '{p.name}' has optimize.pgo = \"off\" "
                           f"({p.files[0]}); profile data only applies to a PGO profile")
    wants_runtime = any(t.kind == "workloads" for t in inp.tasks) and reuse is None
    runtime_env = {"HOSTPGO_HOME": str(work.root)}

    # 2. runtime-deps: the runtime's third-party dependencies, installed once per requirement set and
    # Python minor version into the work area and shared by every build (training venvs see them
    # through a .pth file, the verify stage through PYTHONPATH).
    deps_dir, deps_key = None, ""
    # BOLT trains on the profile's [pgo] tasks (resolved here too when the profile has no PGO).
    bolt_tasks = (inp.tasks or training.resolve(p.pgo.tasks)) if p.optimize.bolt else ()
    bolt_wants_runtime = any(t.kind == "workloads" for t in bolt_tasks)
    if wants_runtime or p.verify.workloads or bolt_wants_runtime:
        deps_stage, deps_dir, deps_key = runtime_deps_stage(work, minor)
        stages.append(deps_stage)
    runtime_path = f"{deps_dir}{os.pathsep}{REPO_ROOT}" if deps_dir else ""

    pgo_plan = None
    if pgo and reuse is not None:
        # Reuse: no instrumented build and no training; the given data is checked and recorded.
        if reuse.exists():  # missing data: reuse_plan's own message
            pgomod.require_reusable(p, reuse, comp)
        pgo_plan = pgomod.reuse_plan(data=reuse, comp=comp, prev_key=prev)
    elif pgo:
        def instrument(prev_key: str) -> tuple[list[Stage], str]:
            before = len(stages)
            bkey, ibuild, irun_env, imake_vars = build_stages("instrumented", "-instrumented", instr_prefix,
                                                              prev_key, "")
            ikey = install_stage("install-instrumented", ibuild, instr_prefix, bkey, irun_env, imake_vars)
            made = stages[before:]
            del stages[before:]
            return made, ikey

        def train(env: dict[str, str]) -> list[Cmd | Call]:
            pth = (where.venv_dir / "lib" / f"python{minor}" / "site-packages" / "hostpgo-runtime.pth"
                   if wants_runtime else None)
            return training.task_actions(inp.tasks, base_python=str(instr_prefix / "bin" / "python3"),
                                prefix=str(instr_prefix), venv_dir=where.venv_dir, env=env,
                                runtime_env=runtime_env, pth=pth, pth_dirs=(deps_dir, REPO_ROOT))

        pgo_plan = pgomod.plan(build_id=build_id, profile_name=p.name, comp=comp, work=work, where=where,
                               prev_key=prev, tasks=inp.tasks, instrument=instrument, train=train,
                               train_key={"deps": deps_key if wants_runtime else ""}, source_sha256=pin.sha256)
    if pgo_plan is not None:
        stages.extend(pgo_plan.stages)
        summary_tasks = list(pgo_plan.training)
        profdata_path = pgo_plan.profile_data
        prev = pgo_plan.key
    variant = "optimized" if pgo else "plain"
    # --- BiSheng Autotuner (bisheng.autotune > 0 on a BiSheng compiler only; elsewhere a note).
    tune_flags: tuple[str, ...] = ()
    tune_env: dict[str, str] = {}
    run_loop, tune_note = autotune.wanted(p, comp)
    if tune_note:
        notes.append(tune_note)
    if run_loop:
        tune_tasks = inp.tasks or training.resolve(p.pgo.tasks)

        def tune_build(tag: str, prev_key: str, extra: tuple[str, ...],
                       env: dict[str, str]) -> tuple[list[Stage], str, Path, tuple[str, ...]]:
            before = len(stages)
            key, bdir, _, make_vars = build_stages(variant, tag, work.install / f"{build_id}{tag}", prev_key,
                                                   profdata_path, extra_cflags=extra, extra_run_env=env, dir_tag=tag)
            made = stages[before:]
            del stages[before:]
            return made, key, bdir, autotools.make_argv(inp.jobs, make_vars)

        def tune_train(python: str) -> list[Cmd | Call]:
            venv_dir = work.pgo / build_id / "autotune-venv"
            pth = (venv_dir / "lib" / f"python{minor}" / "site-packages" / "hostpgo-runtime.pth"
                   if deps_dir is not None else None)
            return training.task_actions(tune_tasks, base_python=python, prefix=str(Path(python).parent),
                                         venv_dir=venv_dir, env={}, runtime_env=runtime_env, pth=pth,
                                         pth_dirs=(deps_dir, REPO_ROOT))

        tune_plan = autotune.plan(profile=p, comp=comp, data_dir=work.pgo / build_id / "autotune", prev_key=prev,
                                  build=tune_build, train=tune_train)
        stages.extend(tune_plan.stages)
        notes.extend(tune_plan.notes)
        prev, tune_flags, tune_env = tune_plan.key, tune_plan.cflags, tune_plan.env
    # --- end BiSheng Autotuner
    bkey, obuild, _, omake_vars = build_stages(variant, "", prefix, prev, profdata_path,
                                               extra_cflags=tune_flags, extra_run_env=tune_env)
    vpython = str(obuild / "python")
    venv_ = {"LD_LIBRARY_PATH": str(obuild)} if p.optimize.shared else {}
    # --- BOLT (optimize.bolt only): instrument -> train -> merge -> apply on the optimized build; the
    # verify stage below then checks the BOLTed binary and falls back to the PGO one (bolt.py).
    bolt_plan = None
    if p.optimize.bolt:
        if inp.bolt_sampling is None:
            raise HostpgoError(f"profile '{p.name}' sets optimize.bolt = true and the inputs carry no probed host "
                               "facts (branch sampling); prepare them with buildsys.engine.prepare, which probes "
                               "once and caches the result (planning never probes)")

        def bolt_train(python: str, venv_dir: Path, env: dict[str, str], wrap) -> list[Cmd | Call]:
            pth = (venv_dir / "lib" / f"python{minor}" / "site-packages" / "hostpgo-runtime.pth"
                   if bolt_wants_runtime else None)
            return training.task_actions(bolt_tasks, base_python=python, prefix=str(obuild), venv_dir=venv_dir, env=env,
                                runtime_env=runtime_env, pth=pth, pth_dirs=(deps_dir, REPO_ROOT), wrap=wrap)

        bolt_plan = boltmod.plan(
            profile=p, comp=comp, host=host, build_dir=obuild, version=pin.version,
            tgt=boltmod.target(obuild, p.optimize.shared, pin.version, SPEC.bolt),
            work_dir=work.pgo / build_id / "bolt", prev_key=bkey, train=bolt_train,
            train_key={"tasks": tasks_digest(bolt_tasks), "deps": deps_key if bolt_wants_runtime else ""},
            sampling=inp.bolt_sampling)
        stages.extend(bolt_plan.stages)
        notes.extend(bolt_plan.notes)
    # --- end BOLT
    verify_key = digest({"stage": "verify", "prev": bolt_plan.key if bolt_plan else bkey, "args": PGO_TEST_ARGS,
                         "tests": p.verify.tests,
                         "workloads": list(p.verify.workloads), "deps": deps_key,
                         "runtime": runtime_digest() if p.verify.workloads else ""})
    verify_actions: list[Cmd | Call] = [Cmd((vpython, *PGO_TEST_ARGS, f"-j{inp.jobs}"), env=venv_, cwd=obuild,
                                            timeout=p.verify.timeout)]
    if p.verify.tests:
        verify_actions.append(Cmd((vpython, "-m", "test", f"-j{inp.jobs}", *p.verify.tests), env=venv_,
                                  cwd=obuild, timeout=p.verify.timeout))
    if inp.allocator is not None and inp.allocator.library is not None:
        # The allocator must really be in the process, not just named at link time.
        verify_actions.append(Cmd((vpython, *alloc_mod.mapped_check(inp.allocator)), env=venv_, cwd=obuild,
                                  timeout=120))
    wenv = {**venv_, **runtime_env, "PYTHONPATH": runtime_path}
    for name in p.verify.workloads:
        argv = [vpython, "-m", "runtime", "workload", name, "--json", "--check-golden"]
        verify_actions.append(Call(f"{format_command(argv, wenv, REPO_ROOT)} (must match the pinned digest)",
                                   training.run_workload(argv, wenv, str(REPO_ROOT), p.verify.timeout,
                                                 f"verify of {build_id}")))
    if bolt_plan is not None:
        verify_actions = list(boltmod.verify_keeping_pgo(verify_actions, bolt_plan.target))
    stages.append(Stage("verify", "verify: CPython's `-m test --pgo` set must pass and every runtime workload "
                        "must reproduce its golden tokens", verify_key,
                        tuple(verify_actions),
                        flags=tuple(ChannelFlag("env", k, v, "optimize.shared: run the uninstalled build")
                                    for k, v in venv_.items())))
    install_stage("install", obuild, prefix, verify_key, {}, omake_vars)

    summary = {
        "target": "cpython", "version": pin.version, "profile": p.name, "profile_files": list(p.files),
        "compiler": comp.version_text, "cc": comp.cc, "host": f"{host.machine} ({host.os_id})",
        "source": f"{pin.file} sha256={pin.sha256}",
        "patches": [x.name for x in inp.patches] or "none",
        "training_tasks": summary_tasks or "none (no PGO)",
        "prefix": str(prefix), "instrumented_prefix": str(instr_prefix) if pgo else "none",
        "jobs": inp.jobs,
    }
    prefixes = [prefix] + ([instr_prefix] if pgo else [])

    def finish(ex) -> None:
        manifest.write_for_execution(ex, inp, prefixes, summary_tasks)
        if bolt_plan is not None and prefix.is_dir():  # the manifest's `bolt` record: applied, or why not
            doc = manifest.read(prefix)
            doc["bolt"] = boltmod.outcome(ex.results, bolt_plan.summary)
            manifest.write(prefix, doc)

    if bolt_plan is not None:
        summary["bolt"] = bolt_plan.summary
    return BuildPlan(build_id=build_id, stages=tuple(stages), notes=tuple(notes), summary=summary,
                     finish=finish)
