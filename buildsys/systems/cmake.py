"""CMake: cache entries computed from resolved flags (pure), and the configure/build/install commands.

CMake compiles with `CMAKE_<LANG>_FLAGS` followed by `CMAKE_<LANG>_FLAGS_<CONFIG>` (Release: `-O3 -DNDEBUG`,
RelWithDebInfo: `-O2 -g -DNDEBUG`). A level put in CMAKE_<LANG>_FLAGS is therefore overridden by the
configuration's own; the profile's level goes into CMAKE_<LANG>_FLAGS_<CONFIG> instead (replacing CMake's
default there, keeping -DNDEBUG), so no later -O2 can win.

A project that *sets* CMAKE_<LANG>_FLAGS_<CONFIG> itself (MindSpore: "$ENV{CXXFLAGS} -O2 ...") shadows that cache
entry, and a driver script that runs CMake itself (MindSpore's build.sh) takes no -D arguments. For those,
`toolchain_file` writes a toolchain file (CMake >= 3.21 reads it from the CMAKE_TOOLCHAIN_FILE environment
variable) that sets the compile rule CMAKE_<LANG>_COMPILE_OBJECT with the profile's flags after <FLAGS>: they end
every compile line, after whatever the project put in its flag variables and target options, so the profile's
-O level is the last one and wins. It applies only where CMAKE_SOURCE_DIR is the project's tree, so
dependencies configured by other CMake runs (and try_compile checks) keep their own flags.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

from ..core.stages import ChannelFlag
from ..toolchain.flags import ResolvedFlags

NAME = "cmake"
CHANNELS = ("cmake-cache", "env", "toolchain-file")
TOOLS = ("cmake",)
LANGS = ("C", "CXX")
CONFIGS = ("Release", "RelWithDebInfo", "MinSizeRel", "Debug")
LINKER_KINDS = ("EXE", "SHARED", "MODULE")
TOOL_ENTRIES = {"CC": "CMAKE_C_COMPILER", "CXX": "CMAKE_CXX_COMPILER", "AR": "CMAKE_AR",
                "RANLIB": "CMAKE_RANLIB", "NM": "CMAKE_NM"}


def cache_entries(rf: ResolvedFlags, *, opt: str, config: str = "Release",
                  langs: Sequence[str] = LANGS) -> dict[str, tuple[str, str]]:
    """name -> (value, why) of every cache entry; `opt` is the profile's level flag (e.g. -O3)."""
    if config not in CONFIGS:
        raise ValueError(f"unknown CMake configuration {config!r}; allowed: {', '.join(CONFIGS)}")
    level = [f for f in rf.cflags if f.value == opt]
    rest = [f for f in rf.cflags if f.value != opt]
    ndebug = "" if config == "Debug" else " -DNDEBUG"
    out: dict[str, tuple[str, str]] = {"CMAKE_BUILD_TYPE": (config, "engine: the configuration the level goes into")}
    for var, entry in TOOL_ENTRIES.items():
        if var in rf.tools:
            out[entry] = (rf.tools[var], "toolchain (detected)")
    for lang in langs:
        out[f"CMAKE_{lang}_FLAGS"] = (" ".join(f.value for f in rest), "; ".join(dict.fromkeys(f.why for f in rest)))
        out[f"CMAKE_{lang}_FLAGS_{config.upper()}"] = (
            (" ".join(f.value for f in level) + ndebug).strip(),
            "optimize.opt (CMake appends CMAKE_<LANG>_FLAGS_<CONFIG> after CMAKE_<LANG>_FLAGS, so the level "
            "goes here and replaces the configuration's own)")
    link = " ".join(f.value for f in rf.ldflags)
    for kind in LINKER_KINDS:
        out[f"CMAKE_{kind}_LINKER_FLAGS"] = (link, "; ".join(dict.fromkeys(f.why for f in rf.ldflags)))
    return out


def channel_flags(entries: Mapping[str, tuple[str, str]]) -> tuple[ChannelFlag, ...]:
    return tuple(ChannelFlag("cmake-cache", name, value, why) for name, (value, why) in entries.items())


def configure_argv(source: Path, build_dir: Path, entries: Mapping[str, tuple[str, str]], *,
                   prefix: Path | None = None, generator: str | None = None) -> list[str]:
    argv = ["cmake", "-S", str(source), "-B", str(build_dir)]
    if generator:
        argv += ["-G", generator]
    if prefix is not None:
        argv.append(f"-DCMAKE_INSTALL_PREFIX={prefix}")
    argv += [f"-D{name}={value}" for name, (value, _why) in entries.items()]
    return argv


def build_argv(build_dir: Path, jobs: int, config: str = "Release") -> list[str]:
    return ["cmake", "--build", str(build_dir), "--config", config, "--parallel", str(jobs)]


def install_argv(build_dir: Path, prefix: Path, config: str = "Release") -> list[str]:
    return ["cmake", "--install", str(build_dir), "--config", config, "--prefix", str(prefix)]


def toolchain_file(*, tools: Mapping[str, str], compile_tail: Sequence[str], link: Sequence[str], source_dir: Path,
                   langs: Sequence[str] = LANGS) -> str:
    """A toolchain file: compilers for every CMake run that reads it; for `source_dir`'s own configure also the
    compile rule with `compile_tail` after <FLAGS>, the link flags, and compile_commands.json (the audit trail of
    every compile line)."""
    lines = ["# Written by hostpgo (buildsys.systems.cmake.toolchain_file); read through CMAKE_TOOLCHAIN_FILE."]
    for var, entry in TOOL_ENTRIES.items():
        if var in tools and entry in ("CMAKE_C_COMPILER", "CMAKE_CXX_COMPILER"):
            lines.append(f'set({entry} "{tools[var]}")')
    lines.append(f'if(CMAKE_SOURCE_DIR STREQUAL "{source_dir}")')
    tail = " ".join(compile_tail)
    for lang in langs:
        lines.append(f'  set(CMAKE_{lang}_COMPILE_OBJECT "<CMAKE_{lang}_COMPILER> <DEFINES> <INCLUDES> <FLAGS> '
                     f'{tail} -o <OBJECT> -c <SOURCE>")')
    for kind in LINKER_KINDS:
        lines.append(f'  set(CMAKE_{kind}_LINKER_FLAGS_INIT "{" ".join(link)}")')
    lines.append("  set(CMAKE_EXPORT_COMPILE_COMMANDS ON)")
    lines.append("endif()")
    return "\n".join(lines) + "\n"
