"""The CPython recipe: a pure planner from (profile, compiler, host, sources) to stamped stages."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from . import flags as flagmod
from . import manifest, sources
from .errors import HostpgoError
from .flags import ResolvedFlags
from .patches import Patch, apply_series
from .paths import REPO_ROOT, WorkArea
from .profile import Profile
from .stages import BuildPlan, Call, ChannelFlag, Cmd, Stage, StageContext, digest
from .toolchain import Compiler, Host
from .training import TrainingTask, tasks_digest

# Stages in order, with what each does (the pipeline prints them in this order).
STAGE_ORDER = ("source", "configure-instrumented", "build-instrumented", "install-instrumented", "train",
               "merge", "configure", "build", "verify", "install")
PGO_TEST_ARGS = ("-m", "test", "--pgo", "--timeout=1200")


@dataclass(frozen=True)
class Inputs:
    """Everything the planner needs; all of it can be made up in a unit test (no compiler required)."""

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


def channel_flags(rf: ResolvedFlags, configure_args: Sequence[str], extra_env: dict[str, str]) -> tuple[ChannelFlag, ...]:
    """Every setting of a configure+build with the channel it travels through (one entry per flag)."""
    out = [ChannelFlag("configure-arg", a.split("=", 1)[0], a,
                       "engine: install prefix" if a.startswith("--prefix") else
                       "optimize.shared" if a.endswith("-shared") else "flags.configure")
           for a in configure_args]
    out += [ChannelFlag("configure-env", k, v, "optimize.shared (rpath, as pyenv)" if k == "LDFLAGS"
                        else "toolchain (detected)")
            for k, v in sorted({**rf.tools, **extra_env}.items())]
    out += [ChannelFlag("CFLAGS_NODIST", "CFLAGS_NODIST", f.value, f.why) for f in rf.cflags]
    out += [ChannelFlag("LDFLAGS_NODIST", "LDFLAGS_NODIST", f.value, f.why) for f in rf.ldflags]
    return tuple(out)


def _publish_tree(staging_root: Path, prefix: Path):
    """Call body: move DESTDIR-staged `prefix` into place by rename (old one moved aside, then deleted)."""
    def fn(ctx: StageContext) -> None:
        staged = staging_root / prefix.relative_to(prefix.anchor)
        if not (staged / "bin").is_dir():
            raise HostpgoError(f"make install left no {staged}/bin; nothing to publish")
        py = staged / "bin" / "python"
        if not py.exists():
            py.symlink_to("python3")
        old = prefix.with_name(prefix.name + ".old")
        if old.exists():
            shutil.rmtree(old)
        if prefix.exists():
            os.replace(prefix, old)
        prefix.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staged, prefix)
        shutil.rmtree(staging_root, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
    return fn


def plan(inp: Inputs) -> BuildPlan:
    p, comp, host, work, pin = inp.profile, inp.compiler, inp.host, inp.work, inp.pin
    build_id = f"cpython-{pin.version}-{p.name}"
    pgo = p.optimize.pgo == "on"
    llvm = comp.family != "gcc"
    notes = list(inp.compiler_notes)
    stages: list[Stage] = []
    comp_id = comp.identity()
    make = ("make", f"-j{inp.jobs}")

    # 1. source: fetch + verify + unpack + patch, published by rename.
    src_key = digest({"stage": "source", "sha256": pin.sha256, "topdir": pin.topdir,
                      "patches": [(x.name, x.sha256) for x in inp.patches]})
    src_dir = work.src / f"cpython-{pin.version}-{src_key[:12]}"
    tree = src_dir / pin.topdir

    def do_source(ctx: StageContext) -> None:
        if src_dir.is_dir():  # published by rename, so complete; shared by every profile's build
            ctx.info.update({"archive": str(work.sources / pin.file), "origin": "unpacked tree present",
                             "sha256": pin.sha256})
            return
        got = sources.resolve(pin, work, ctx.runner, user_source=inp.user_source)
        ctx.info.update({"archive": str(got.path), "origin": got.origin, "sha256": pin.sha256})
        tmp = work.tmp / f"src-{src_key[:12]}-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        top = sources.unpack(got.path, tmp, pin.topdir)
        apply_series(top, inp.patches, ctx.runner)
        src_dir.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, src_dir)

    stages.append(Stage("source", f"fetch, verify, unpack and patch {pin.file}", src_key,
                        (Call(f"resolve {pin.file} (sha256 {pin.sha256[:12]}…) from --source, cache, apt-get "
                              f"source {pin.deb_source}, dnf, {pin.url}; unpack; apply "
                              f"{len(inp.patches)} patch(es) {[x.name for x in inp.patches]}; rename into "
                              f"{src_dir}", do_source),),
                        requires=(src_dir,)))

    def build_stages(variant: str, suffix: str, prefix: Path, prev_key: str,
                     profdata: str) -> tuple[str, Path, dict[str, str], dict[str, str]]:
        """Append configure+build stages for a variant; return (build key, build dir, run env, make vars)."""
        build_dir = work.build / f"{build_id}-{variant}"
        raw_dir = work.pgo / build_id / "raw"
        rf = flagmod.resolve(p, comp, host, variant, build_dir=str(build_dir),
                             raw_pattern=str(raw_dir / "cpython-%p-%m.profraw"), raw_dir=str(raw_dir),
                             profdata=profdata)
        notes.extend(n for n in rf.notes if n not in notes)
        args = [f"--prefix={prefix}", "--enable-shared" if p.optimize.shared else "--disable-shared",
                *p.flags.configure]
        env = dict(rf.tools)
        extra_env: dict[str, str] = {}
        if p.optimize.shared:
            # Like pyenv: the installed interpreter finds its libpython without LD_LIBRARY_PATH.
            extra_env["LDFLAGS"] = f"-Wl,-rpath,{prefix}/lib"
        env.update(extra_env)
        env["CFLAGS_NODIST"] = " ".join(f.value for f in rf.cflags)
        env["LDFLAGS_NODIST"] = " ".join(f.value for f in rf.ldflags)
        # Instrumented binaries also run during the build (setup.py, compileall): keep those runs'
        # profiles out of the training data.
        run_env: dict[str, str] = {}
        if variant == "instrumented":
            run_env = ({"LLVM_PROFILE_FILE": str(build_dir / ".build-profraw" / "%m-%p.profraw")} if llvm
                       else {"GCOV_PREFIX": str(build_dir / ".build-gcda")})
        cfg_key = digest({"stage": "configure", "variant": variant, "prev": prev_key, "src": src_key,
                          "compiler": comp_id, "args": args, "env": env})
        stages.append(Stage(
            f"configure{suffix}", f"configure ({variant})", cfg_key,
            (Call(f"mkdir {build_dir}", lambda ctx: build_dir.mkdir(parents=True, exist_ok=True)),
             Cmd((str(tree / "configure"), *args), env=env, cwd=build_dir, timeout=1800)),
            outputs=(build_dir,), flags=channel_flags(rf, args, extra_env), notes=rf.notes))
        # CPython links _bootstrap_python and _freeze_module with PY_LDFLAGS_NOLTO, which reads only
        # the *make variable* LDFLAGS_NODIST, not what configure recorded. Those links get LTO bitcode
        # (or instrumented) objects too, so the link flags must also travel as the make variable.
        # Needed where the objects cannot be linked without the flags: LTO bitcode, and GCC-instrumented
        # objects (they reference libgcov's __gcov_merge_*). clang-instrumented objects link without
        # the profile runtime (those two helper binaries then just write no profile).
        needs_link_flags = ((p.optimize.lto != "off" and variant != "instrumented")
                            or (variant == "instrumented" and not llvm))
        make_vars = ({"LDFLAGS_NODIST": env["LDFLAGS_NODIST"]} if needs_link_flags and env["LDFLAGS_NODIST"]
                     else {})
        make_argv = (*make, *(f"{k}={v}" for k, v in make_vars.items()))
        build_key = digest({"stage": "build", "prev": cfg_key, "make": make_argv, "env": run_env})
        stages.append(Stage(
            f"build{suffix}", f"build ({variant})", build_key,
            (Cmd(make_argv, env=run_env, cwd=build_dir, timeout=4 * 3600),),
            flags=(*(ChannelFlag("make-var", k, v, "engine: also reaches CPython's NOLTO links "
                                 "(_bootstrap_python, _freeze_module)") for k, v in make_vars.items()),
                   *(ChannelFlag("env", k, v, "engine: keep build-time runs out of the training profile")
                     for k, v in run_env.items()))))
        return build_key, build_dir, run_env, make_vars

    def install_stage(name: str, build_dir: Path, prefix: Path, prev_key: str, run_env: dict[str, str],
                      make_vars: dict[str, str]) -> str:
        staging = work.tmp / f"destdir-{build_id}-{name}"
        key = digest({"stage": "install", "prev": prev_key, "prefix": str(prefix),
                      **({"make_vars": make_vars} if make_vars else {})})

        def clear(ctx: StageContext) -> None:
            shutil.rmtree(staging, ignore_errors=True)

        stages.append(Stage(
            name, f"install into {prefix} (staged, then renamed)", key,
            (Call(f"clear {staging}", clear),
             Cmd(("make", "install", f"DESTDIR={staging}", *(f"{k}={v}" for k, v in make_vars.items())),
                 env=run_env, cwd=build_dir, timeout=3600),
             Call(f"rename {staging}{prefix} -> {prefix}; add bin/python -> python3",
                  _publish_tree(staging, prefix))),
            outputs=(prefix,), flags=(ChannelFlag("make-var", "DESTDIR", str(staging), "engine: staged install, published by rename"),)))
        return key

    prefix = work.install / build_id
    instr_prefix = work.install / f"{build_id}-instrumented"
    profdata_path = ""
    prev = src_key
    summary_tasks = []
    if pgo:
        if not inp.tasks:
            raise HostpgoError(f"profile '{p.name}' has optimize.pgo = \"on\" but pgo.tasks is empty "
                               f"({p.files[0]}); name at least one training task")
        bkey, ibuild, irun_env, imake_vars = build_stages("instrumented", "-instrumented", instr_prefix, prev, "")
        ikey = install_stage("install-instrumented", ibuild, instr_prefix, bkey, irun_env, imake_vars)
        raw_dir = work.pgo / build_id / "raw"
        tdig = tasks_digest(inp.tasks)
        train_key = digest({"stage": "train", "prev": ikey, "tasks": tdig})
        venv_dir = work.pgo / build_id / "venv"
        train_actions: list[Cmd | Call] = [
            Call(f"clear {raw_dir}", lambda ctx: (shutil.rmtree(raw_dir, ignore_errors=True),
                                                  raw_dir.mkdir(parents=True))),
        ]
        train_env = {"LLVM_PROFILE_FILE": str(raw_dir / "cpython-%p-%m.profraw")} if llvm else {}
        base_python = str(instr_prefix / "bin" / "python3")
        made_venv = False
        for t in inp.tasks:
            python = base_python
            if t.venv:
                python = str(venv_dir / "bin" / "python")
                if not made_venv:
                    train_actions.append(Cmd((base_python, "-m", "venv", "--clear", str(venv_dir)),
                                             env=train_env, timeout=1800))
                    made_venv = True
                if t.venv_install:
                    subst = dict(python=python, prefix=str(instr_prefix), repo=str(REPO_ROOT), venv=str(venv_dir))
                    train_actions.append(Cmd((python, "-m", "pip", "install",
                                              *[a.format(**subst) for a in t.venv_install]),
                                             env=train_env, timeout=3600))
            argv, tenv, cwd = t.command(python=python, prefix=str(instr_prefix), repo=str(REPO_ROOT),
                                        venv=str(venv_dir))
            train_actions.append(Cmd(tuple(argv), env={**train_env, **tenv},
                                     cwd=Path(cwd) if cwd else None, timeout=t.timeout, ok_codes=t.ok_codes))
            summary_tasks.append({"name": t.name, "version": t.version, "digest": t.digest()})
        stages.append(Stage("train", f"train on {', '.join(t.name for t in inp.tasks)}", train_key,
                            tuple(train_actions), outputs=(raw_dir,),
                            flags=tuple(ChannelFlag("env", k, v, "engine: one raw profile per process and binary")
                                        for k, v in train_env.items()),
                            notes=(f"training tasks digest {tdig[:12]}",)))
        merge_key = digest({"stage": "merge", "prev": train_key,
                            "tool": comp.tools.get("profdata") if llvm else comp.version_text})
        pdir = work.pgo / build_id
        if llvm:
            profdata = pdir / f"cpython-{merge_key[:12]}.profdata"
            profdata_path = str(profdata)
            merge_actions = (Call(f"{comp.tools.get('profdata', 'llvm-profdata')} merge {raw_dir}/*.profraw "
                                  f"-> {profdata} (via a temp file, then rename)",
                                  _merge_llvm(comp, raw_dir, profdata)),)
        else:
            profdata = pdir / f"gcda-{merge_key[:12]}"
            profdata_path = str(profdata)
            merge_actions = (Call(f"collect {raw_dir}/**/*.gcda (merged across processes by libgcov) "
                                  f"-> {profdata} (copy to a temp dir, then rename)",
                                  _merge_gcc(raw_dir, profdata)),)
        stages.append(Stage("merge", "merge the per-process profiles", merge_key, merge_actions,
                            outputs=(profdata,)))
        prev = merge_key
    variant = "optimized" if pgo else "plain"
    bkey, obuild, _, omake_vars = build_stages(variant, "", prefix, prev, profdata_path)
    verify_key = digest({"stage": "verify", "prev": bkey, "args": PGO_TEST_ARGS, "tests": p.verify.tests})
    vpython = str(obuild / "python")
    venv_ = {"LD_LIBRARY_PATH": str(obuild)} if p.optimize.shared else {}
    verify_actions = [Cmd((vpython, *PGO_TEST_ARGS, f"-j{inp.jobs}"), env=venv_, cwd=obuild,
                          timeout=p.verify.timeout)]
    if p.verify.tests:
        verify_actions.append(Cmd((vpython, "-m", "test", f"-j{inp.jobs}", *p.verify.tests), env=venv_,
                                  cwd=obuild, timeout=p.verify.timeout))
    stages.append(Stage("verify", "verify: CPython's `-m test --pgo` set must pass", verify_key,
                        tuple(verify_actions), flags=tuple(ChannelFlag("env", k, v, "optimize.shared: run the uninstalled build")
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
    return BuildPlan(build_id=build_id, stages=tuple(stages), notes=tuple(notes), summary=summary,
                     finish=lambda ex: manifest.write_for_execution(ex, inp, prefixes, summary_tasks))


def _merge_llvm(comp: Compiler, raw_dir: Path, out: Path):
    def fn(ctx: StageContext) -> None:
        raws = sorted(raw_dir.glob("*.profraw"))
        if not raws:
            raise HostpgoError(f"training left no .profraw files in {raw_dir}: the instrumented interpreter "
                               "wrote no profiles (was it built with -fprofile-instr-generate?)")
        listing = out.with_name(out.name + ".inputs")
        listing.write_text("\n".join(str(r) for r in raws) + "\n")
        tmp = out.with_name(out.name + ".tmp")
        tool = comp.tools["profdata"]
        ctx.runner.run([tool, "merge", f"--input-files={listing}", f"--output={tmp}"], timeout=1800)
        lines: list[str] = []
        ctx.runner.run([tool, "show", str(tmp)], collect=lines, timeout=600)
        os.replace(tmp, out)
        listing.unlink()
        ctx.info.update({"raw_profiles": len(raws), "profile_data": str(out),
                         "profile_data_sha256": sources.sha256_of(out),
                         "summary": [ln.strip() for ln in lines if ":" in ln][:6]})
    return fn


def _merge_gcc(raw_dir: Path, out: Path):
    def fn(ctx: StageContext) -> None:
        files = sorted(raw_dir.rglob("*.gcda"))
        if not files:
            raise HostpgoError(f"training left no .gcda files in {raw_dir}: the instrumented interpreter "
                               "wrote no profiles (was it built with -fprofile-generate?)")
        tmp = out.with_name(out.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(raw_dir, tmp)
        os.replace(tmp, out)
        h = manifest.tree_digest(out)
        ctx.info.update({"gcda_files": len(files), "profile_data": str(out), "profile_data_sha256": h})
    return fn
