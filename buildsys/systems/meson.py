"""Meson: setup arguments computed from resolved flags (pure), and the setup/compile/install commands.

hostpgo's own flag table decides every optimization flag, so meson's are switched off: `buildtype=plain`
(meson adds no -O level of its own), `b_lto=false` and `b_pgo=off` (hostpgo passes -flto and the
profile paths itself, with its own raw-profile layout and merge step); the flags travel as c_args,
cpp_args, c_link_args and cpp_link_args, which meson puts after its own.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping
from pathlib import Path

from ..core.stages import ChannelFlag
from ..toolchain.flags import ResolvedFlags

NAME = "meson"
CHANNELS = ("setup-arg", "env")
TOOLS = ("meson", "ninja")


def setup_options(rf: ResolvedFlags) -> dict[str, tuple[str, str]]:
    """option -> (value, why) of every `-Doption=value` setup argument."""
    c = [f.value for f in rf.cflags]
    link = [f.value for f in rf.ldflags]
    cwhy = "; ".join(dict.fromkeys(f.why for f in rf.cflags))
    lwhy = "; ".join(dict.fromkeys(f.why for f in rf.ldflags))
    return {
        "buildtype": ("plain", "engine: meson adds no -O level; optimize.opt is in c_args"),
        "b_lto": ("false", "engine: optimize.lto's flags are in c_args/c_link_args (hostpgo's flag table)"),
        "b_pgo": ("off", "engine: optimize.pgo's flags and profile paths are in c_args (hostpgo's PGO stages)"),
        "b_ndebug": ("true", "engine: as a release build"),
        "c_args": (_array(c), cwhy), "cpp_args": (_array(c), cwhy),
        "c_link_args": (_array(link), lwhy), "cpp_link_args": (_array(link), lwhy),
    }


def _array(values: list[str]) -> str:
    """A compiler-arguments option value (c_args, cpp_args, *_link_args): meson shell-splits these on the command
    line (split_args), so the words are shell-quoted and space-separated; commas would stay inside one argument."""
    return shlex.join(values)


def environment(rf: ResolvedFlags) -> dict[str, str]:
    """meson setup reads the compilers and archivers from the environment."""
    return dict(rf.tools)


def channel_flags(options: Mapping[str, tuple[str, str]], env: Mapping[str, str]) -> tuple[ChannelFlag, ...]:
    return (*(ChannelFlag("setup-arg", f"-D{k}", v, why) for k, (v, why) in options.items()),
            *(ChannelFlag("env", k, v, "toolchain (detected)") for k, v in sorted(env.items())))


def setup_argv(source: Path, build_dir: Path, options: Mapping[str, tuple[str, str]], *,
               prefix: Path | None = None) -> list[str]:
    argv = ["meson", "setup", str(build_dir), str(source)]
    if prefix is not None:
        argv.append(f"--prefix={prefix}")
    return argv + [f"-D{k}={v}" for k, (v, _why) in options.items()]


def compile_argv(build_dir: Path, jobs: int) -> list[str]:
    return ["meson", "compile", "-C", str(build_dir), "-j", str(jobs)]


def install_argv(build_dir: Path, destdir: Path | None = None) -> list[str]:
    return ["meson", "install", "-C", str(build_dir), *(["--destdir", str(destdir)] if destdir else [])]
