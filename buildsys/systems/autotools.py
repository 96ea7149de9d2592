"""Autotools (./configure && make): the channels CPython's build uses and the commands of each step (pure).

CPython reads PGO/LTO flags from CFLAGS_NODIST/LDFLAGS_NODIST (kept out of the flags extension modules
inherit through sysconfig), so they go there rather than into CFLAGS; its NOLTO links read the *make
variable* LDFLAGS_NODIST, so link flags may travel as a make variable too.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ..core.stages import Call, ChannelFlag, Cmd, Stage, StageContext, digest
from ..toolchain.flags import ResolvedFlags

NAME = "autotools"
CHANNELS = ("configure-arg", "configure-env", "CFLAGS_NODIST", "LDFLAGS_NODIST", "CFLAGS", "CXXFLAGS", "LDFLAGS",
            "make-var", "env")
NODIST_VARS = {"cflags": ("CFLAGS_NODIST",), "ldflags": ("LDFLAGS_NODIST",)}
"""CPython's channels: the profile's flags in the *_NODIST variables (kept out of what extensions inherit)."""
USER_VARS = {"cflags": ("CFLAGS", "CXXFLAGS"), "ldflags": ("LDFLAGS",)}
"""Any other autotools project: the user variables, which automake and jemalloc put after their own flags
(automake: `$(AM_CFLAGS) $(CFLAGS)`; jemalloc: `$(CONFIGURE_CFLAGS) $(SPECIFIED_CFLAGS) $(EXTRA_CFLAGS)`), so the
profile's -O comes after the project's."""
TOOLS = ("make",)


def channel_flags(rf: ResolvedFlags, configure_args: Sequence[str], extra_env: Mapping[str, str],
                  flag_vars: Mapping[str, Sequence[str]] = NODIST_VARS,
                  target_args: Sequence[str] = ()) -> tuple[ChannelFlag, ...]:
    """Every setting of a configure+build with the channel it travels through (one entry per flag);
    `target_args` are the configure arguments that came from the target's data."""
    out = [ChannelFlag("configure-arg", a.split("=", 1)[0], a,
                       "engine: install prefix" if a.startswith("--prefix") else
                       "target data (build.configure)" if a in target_args else
                       "optimize.shared" if a.endswith("-shared") else "flags.configure")
           for a in configure_args]
    wrapped = rf.wrapper.tools if rf.wrapper else {}
    out += [ChannelFlag("configure-env", k, v, "optimize.shared (rpath, as pyenv)" if k == "LDFLAGS"
                        else "generated compiler wrapper (tuning.per_file, optimize.compiler_cache) around "
                             f"{rf.wrapper.cc if k == 'CC' else rf.wrapper.cxx}" if k in wrapped
                        else "toolchain (detected)")
            for k, v in sorted({**rf.tools, **extra_env}.items())]
    out += [ChannelFlag(var, var, f.value, f.why) for var in flag_vars["cflags"] for f in rf.cflags]
    out += [ChannelFlag(var, var, f.value, f.why) for var in flag_vars["ldflags"] for f in rf.ldflags]
    return tuple(out)


def configure_env(rf: ResolvedFlags, extra_env: Mapping[str, str],
                  flag_vars: Mapping[str, Sequence[str]] = NODIST_VARS) -> dict[str, str]:
    """configure's environment: the tool variables, extra variables, and the flag variables (`flag_vars`:
    CPython's *_NODIST by default, USER_VARS for other projects)."""
    env = {**rf.tools, **extra_env}
    for var in flag_vars["cflags"]:
        env[var] = " ".join(f.value for f in rf.cflags)
    for var in flag_vars["ldflags"]:
        env[var] = " ".join(f.value for f in rf.ldflags)
    return env


def configure(tree: Path, build_dir: Path, args: Sequence[str], env: Mapping[str, str]) -> Cmd:
    """An out-of-tree configure run."""
    return Cmd((str(tree / "configure"), *args), env=dict(env), cwd=build_dir, timeout=1800)


def make_argv(jobs: int, make_vars: Mapping[str, str]) -> tuple[str, ...]:
    return ("make", f"-j{jobs}", *(f"{k}={v}" for k, v in make_vars.items()))


def install_argv(destdir: Path, make_vars: Mapping[str, str]) -> tuple[str, ...]:
    """A staged install (DESTDIR), published by rename afterwards."""
    return ("make", "install", f"DESTDIR={destdir}", *(f"{k}={v}" for k, v in make_vars.items()))


# ---------------------------------------------------------------------------------------------
# The steps as stages (pure: computed now, run by the executor).

def configure_stage(name: str, title: str, *, key_inputs: Mapping[str, Any], tree: Path, build_dir: Path,
                    args: Sequence[str], rf: ResolvedFlags, extra_env: Mapping[str, str],
                    flag_vars: Mapping[str, Sequence[str]] = NODIST_VARS,
                    bootstrap: Sequence[str] = (), target_args: Sequence[str] = ()) -> Stage:
    """mkdir + configure in a fresh build directory; the key covers `key_inputs`, the arguments and the env.
    `bootstrap` (e.g. `autoreconf -fi`) runs first in the source tree when it has no configure script (a tree
    from a git tag, as gperftools' Debian orig is)."""
    env = configure_env(rf, extra_env, flag_vars)
    key_doc = {"stage": "configure", **key_inputs, "args": list(args), "env": env,
               **(rf.wrapper.key_doc() if rf.wrapper else {})}
    if bootstrap:
        key_doc["bootstrap"] = list(bootstrap)
    key = digest(key_doc)
    pre: tuple[Cmd | Call, ...] = ()
    if bootstrap:
        def boot(ctx: StageContext) -> None:
            if not (tree / "configure").is_file():
                ctx.runner.run(list(bootstrap), cwd=tree, timeout=1800)
        pre = (Call(f"unless {tree}/configure exists: {' '.join(bootstrap)} (in {tree})", boot),)
    return Stage(name, title, key,
                 (*pre, Call(f"mkdir {build_dir}", lambda ctx: build_dir.mkdir(parents=True, exist_ok=True)),
                  *((rf.wrapper.write_call(),) if rf.wrapper else ()),
                  configure(tree, build_dir, args, env)),
                 outputs=(build_dir,), flags=channel_flags(rf, args, extra_env, flag_vars, target_args),
                 notes=rf.notes)


def build_stage(name: str, title: str, *, prev_key: str, build_dir: Path, jobs: int,
                make_vars: Mapping[str, str], make_vars_why: str, run_env: Mapping[str, str],
                run_env_why: str) -> Stage:
    """make -jN (with make variables) in the configured build directory."""
    argv = make_argv(jobs, make_vars)
    key = digest({"stage": "build", "prev": prev_key, "make": argv, "env": dict(run_env)})
    return Stage(name, title, key, (Cmd(argv, env=dict(run_env), cwd=build_dir, timeout=4 * 3600),),
                 flags=(*(ChannelFlag("make-var", k, v, make_vars_why) for k, v in make_vars.items()),
                        *(ChannelFlag("env", k, v, run_env_why) for k, v in run_env.items())))


def install_stage(name: str, *, prev_key: str, build_dir: Path, prefix: Path, staging: Path,
                  run_env: Mapping[str, str], make_vars: Mapping[str, str],
                  publish: Callable[[StageContext], None], publish_what: str) -> Stage:
    """make install into a DESTDIR, then `publish` (a rename into `prefix`)."""
    key = digest({"stage": "install", "prev": prev_key, "prefix": str(prefix),
                  **({"make_vars": dict(make_vars)} if make_vars else {})})
    return Stage(name, f"install into {prefix} (staged, then renamed)", key,
                 (Call(f"clear {staging}", lambda ctx: shutil.rmtree(staging, ignore_errors=True)),
                  Cmd(install_argv(staging, make_vars), env=dict(run_env), cwd=build_dir, timeout=3600),
                  Call(publish_what, publish)),
                 outputs=(prefix,),
                 flags=(ChannelFlag("make-var", "DESTDIR", str(staging),
                                    "engine: staged install, published by rename"),))
