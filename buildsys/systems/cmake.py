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

import json
import re
import shlex
import shutil
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ..core.stages import Call, ChannelFlag, Cmd, Stage, StageContext, digest
from ..errors import HostpgoError
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


# ---------------------------------------------------------------------------------------------
# The steps as stages (pure: computed now, run by the executor), and the proof that the flags win.

COMPILE_COMMANDS = "compile_commands.json"
"""Written at configure time with CMAKE_EXPORT_COMPILE_COMMANDS=ON (Makefile and Ninja generators)."""
_LEVEL = re.compile(r"^-O(\d|s|z|fast|g)?$")


def check_compile_commands(path: Path, *, opt: str, required: Sequence[str], source_root: Path) -> dict[str, Any]:
    """Every compile line of a file below `source_root` carries `required` (the profile's compile flags) and its
    last optimization level is `opt`: no later -O from the project or CMake overrides the profile's. Raises
    HostpgoError naming the first offending line; returns a summary for the stage record."""
    try:
        entries = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise HostpgoError(f"{path}: cannot read the compile commands ({e}); configure with "
                           "CMAKE_EXPORT_COMPILE_COMMANDS=ON") from None
    checked = 0
    for entry in entries:
        if not str(entry.get("file", "")).startswith(str(source_root)):
            continue
        argv = entry["arguments"] if "arguments" in entry else shlex.split(entry["command"])
        levels = [a for a in argv if _LEVEL.match(a)]
        if not levels or levels[-1] != opt:
            raise HostpgoError(f"{path}: compiling {entry['file']} the last optimization level is "
                               f"{levels[-1] if levels else 'none'}, not the profile's {opt}: "
                               f"{' '.join(argv)[:600]}")
        missing = [f for f in required if f not in argv]
        if missing:
            raise HostpgoError(f"{path}: compiling {entry['file']} lacks the profile's {' '.join(missing)}: "
                               f"{' '.join(argv)[:600]}")
        checked += 1
    if not checked:
        raise HostpgoError(f"{path}: no compile line of a file below {source_root}")
    return {"compile_lines_checked": checked, "last_level": opt, "required": list(required)}


def configure_stage(name: str, title: str, *, key_inputs: Mapping[str, Any], source: Path, build_dir: Path,
                    prefix: Path, rf: ResolvedFlags, opt: str, defines: Mapping[str, str], generator: str | None,
                    config: str = "Release", langs: Sequence[str] = LANGS) -> Stage:
    """cmake -S -B in a fresh build directory: the profile's flags as cache entries (the level in
    CMAKE_<LANG>_FLAGS_<CONFIG>), the recipe's `defines`, and compile commands exported for the check."""
    entries = cache_entries(rf, opt=opt, config=config, langs=langs)
    entries["CMAKE_EXPORT_COMPILE_COMMANDS"] = ("ON", "engine: the build stage checks every compile line")
    entries.update({k: (v, "target data (build.defines)") for k, v in defines.items()})
    argv = configure_argv(source, build_dir, entries, prefix=prefix, generator=generator)
    key = digest({"stage": "configure", **key_inputs, "argv": argv, **(rf.wrapper.key_doc() if rf.wrapper else {})})
    return Stage(name, title, key,
                 (Call(f"clear and mkdir {build_dir}", lambda ctx: build_dir.mkdir(parents=True, exist_ok=True)),
                  *((rf.wrapper.write_call(),) if rf.wrapper else ()),
                  Cmd(tuple(argv), cwd=build_dir, timeout=1800)),
                 outputs=(build_dir,), flags=channel_flags(entries), notes=rf.notes)


def build_stage(name: str, title: str, *, prev_key: str, source: Path, build_dir: Path, jobs: int, opt: str,
                required: Sequence[str], config: str = "Release") -> Stage:
    """cmake --build, then the compile-line check (check_compile_commands) recorded in the stamp."""
    argv = build_argv(build_dir, jobs, config)
    key = digest({"stage": "build", "prev": prev_key, "argv": argv, "check": [opt, *required]})

    def check(ctx: StageContext) -> None:
        ctx.info.update(check_compile_commands(build_dir / COMPILE_COMMANDS, opt=opt, required=required,
                                               source_root=source))

    return Stage(name, title, key,
                 (Cmd(tuple(argv), cwd=build_dir, timeout=3600),
                  Call(f"check {build_dir / COMPILE_COMMANDS}: every compile line carries {' '.join(required)} and "
                       f"ends its -O levels with {opt}", check)))


def install_stage(name: str, *, prev_key: str, build_dir: Path, prefix: Path, staging: Path,
                  publish: Callable[[StageContext], None], publish_what: str, config: str = "Release") -> Stage:
    """cmake --install with DESTDIR (the configured prefix below `staging`), then `publish` (a rename into
    `prefix`)."""
    argv = ["cmake", "--install", str(build_dir), "--config", config]
    key = digest({"stage": "install", "prev": prev_key, "prefix": str(prefix)})
    return Stage(name, f"install into {prefix} (staged, then renamed)", key,
                 (Call(f"clear {staging}", lambda ctx: shutil.rmtree(staging, ignore_errors=True)),
                  Cmd(tuple(argv), env={"DESTDIR": str(staging)}, cwd=build_dir, timeout=1800),
                  Call(publish_what, publish)),
                 outputs=(prefix,),
                 flags=(ChannelFlag("env", "DESTDIR", str(staging), "engine: staged install, published by rename"),))


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
