"""PEP 517 packages (setuptools, scikit-build-core, meson-python): the build's environment and its config
settings computed from resolved flags (pure), and the wheel build command.

setuptools compiles with the interpreter's sysconfig flags followed by CFLAGS/LDFLAGS from the
environment, so ours come last and win. scikit-build-core takes CMake cache entries as
`cmake.define.NAME=VALUE` settings (the level in CMAKE_<LANG>_FLAGS_RELEASE, as buildsys.systems.cmake
computes), meson-python takes `setup-args`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

from ..core.stages import ChannelFlag
from ..toolchain.flags import ResolvedFlags
from . import cmake, meson

NAME = "pep517"
CHANNELS = ("config-setting", "env")
TOOLS = ()
BACKENDS = ("setuptools", "scikit-build-core", "meson-python")


def environment(rf: ResolvedFlags) -> dict[str, str]:
    """The build's environment: compilers and the flags every backend's compiler runs see."""
    c = " ".join(f.value for f in rf.cflags)
    return {**rf.tools, "CFLAGS": c, "CXXFLAGS": c, "LDFLAGS": " ".join(f.value for f in rf.ldflags)}


def config_settings(backend: str, rf: ResolvedFlags, *, opt: str) -> list[tuple[str, str]]:
    """(key, value) config settings for `backend` (pip's --config-settings, build's -C)."""
    if backend == "setuptools":
        return []
    if backend == "scikit-build-core":
        return [("cmake.build-type", "Release")] + [
            (f"cmake.define.{name}", value) for name, (value, _why) in cmake.cache_entries(rf, opt=opt).items()
            if name != "CMAKE_BUILD_TYPE"]
    if backend == "meson-python":
        return [("setup-args", f"-D{k}={v}") for k, (v, _why) in meson.setup_options(rf).items()]
    raise ValueError(f"unknown PEP 517 backend {backend!r}; known: {', '.join(BACKENDS)}")


def channel_flags(settings: list[tuple[str, str]], env: Mapping[str, str]) -> tuple[ChannelFlag, ...]:
    return (*(ChannelFlag("config-setting", k, v, "the backend's own channel") for k, v in settings),
            *(ChannelFlag("env", k, v, "read by the backend's compiler runs") for k, v in sorted(env.items())))


def wheel_argv(python: str, source: Path, outdir: Path, settings: list[tuple[str, str]]) -> list[str]:
    """Build one wheel from a fixed source directory with the given interpreter (no dependencies)."""
    return [python, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--wheel-dir", str(outdir),
            *(f"--config-settings={k}={v}" for k, v in settings), str(source)]
