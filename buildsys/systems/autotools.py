"""Autotools (./configure && make): the channels CPython's build uses and the commands of each step (pure).

CPython reads PGO/LTO flags from CFLAGS_NODIST/LDFLAGS_NODIST (kept out of the flags extension modules
inherit through sysconfig), so they go there rather than into CFLAGS; its NOLTO links read the *make
variable* LDFLAGS_NODIST, so link flags may travel as a make variable too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

from ..core.stages import ChannelFlag, Cmd
from ..toolchain.flags import ResolvedFlags

NAME = "autotools"
CHANNELS = ("configure-arg", "configure-env", "CFLAGS_NODIST", "LDFLAGS_NODIST", "make-var", "env")
TOOLS = ("make",)


def channel_flags(rf: ResolvedFlags, configure_args: Sequence[str], extra_env: Mapping[str, str]) -> tuple[ChannelFlag, ...]:
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


def configure_env(rf: ResolvedFlags, extra_env: Mapping[str, str]) -> dict[str, str]:
    """configure's environment: the tool variables, extra variables, and the *_NODIST flag variables."""
    env = {**rf.tools, **extra_env}
    env["CFLAGS_NODIST"] = " ".join(f.value for f in rf.cflags)
    env["LDFLAGS_NODIST"] = " ".join(f.value for f in rf.ldflags)
    return env


def configure(tree: Path, build_dir: Path, args: Sequence[str], env: Mapping[str, str]) -> Cmd:
    """An out-of-tree configure run."""
    return Cmd((str(tree / "configure"), *args), env=dict(env), cwd=build_dir, timeout=1800)


def make_argv(jobs: int, make_vars: Mapping[str, str]) -> tuple[str, ...]:
    return ("make", f"-j{jobs}", *(f"{k}={v}" for k, v in make_vars.items()))


def install_argv(destdir: Path, make_vars: Mapping[str, str]) -> tuple[str, ...]:
    """A staged install (DESTDIR), published by rename afterwards."""
    return ("make", "install", f"DESTDIR={destdir}", *(f"{k}={v}" for k, v in make_vars.items()))
