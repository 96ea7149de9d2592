"""PEP 517 packages (setuptools, scikit-build-core, meson-python; Cython through any of them): each back end's
flag channel, its config settings and environment computed from resolved flags (pure), the wheel build command
from a fixed build directory, and the parser that proves from the build log that the flags reached every
compile line and won.

Channels, per back end:

    setuptools         the environment: compile flags in CPPFLAGS, link flags in LDFLAGS. setuptools >= 75.7
                       *replaces* sysconfig's CFLAGS with an environment CFLAGS (checked with 84.2.1: the
                       interpreter's -DNDEBUG and -fwrapv vanish, so C asserts come back on), while CPPFLAGS is
                       appended after sysconfig's CFLAGS on every C and C++ compile line and on the link line, in
                       old and new setuptools alike. CFLAGS is therefore never set.
    scikit-build-core  config settings `cmake.define.NAME=VALUE`: the profile's level in
                       CMAKE_<LANG>_FLAGS_RELEASE (CMake appends it after CMAKE_<LANG>_FLAGS, see
                       buildsys.systems.cmake), `cmake.build-type=Release`, `build-dir` fixed, `build.verbose`.
    meson-python       config settings `setup-args` (buildtype=plain, b_lto/b_pgo off, hostpgo's flags in
                       c_args/cpp_args/c_link_args, see buildsys.systems.meson), `build-dir` fixed,
                       `compile-args=-v` (ninja prints each command).

The wheel is built by `python -m build --wheel --no-isolation` run with an isolated build environment's
interpreter (a venv of the target interpreter, its build requirements installed from the index by pip), directly
from the source directory: setuptools builds in `<src>/build/`, the others in the fixed `build-dir`, so the
instrumented and the profile-using builds compile the same paths (GCC's .gcda names and clang's names of
static functions both depend on them).
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..core.stages import ChannelFlag
from ..toolchain.flags import ResolvedFlags
from . import cmake, meson

NAME = "pep517"
CHANNELS = ("config-setting", "env")
TOOLS = ()
BACKENDS = ("setuptools", "scikit-build-core", "meson-python")
BACKEND_MODULES = {"setuptools.build_meta": "setuptools", "setuptools.build_meta:__legacy__": "setuptools",
                   "scikit_build_core.build": "scikit-build-core", "mesonpy": "meson-python"}
"""pyproject.toml's build-system.build-backend -> the back end whose channels apply."""
BUILD_FRONTEND = "build>=1.2"
"""The front end installed into every build environment (`python -m build --no-isolation`)."""
REQUIRES_SCRIPT = ("import sys, json, build; b = build.ProjectBuilder(sys.argv[1]); "
                   "print(json.dumps(sorted(b.get_requires_for_build('wheel', json.loads(sys.argv[2])))))")
"""Run with the build environment's interpreter: the back end's dynamic requirements for a wheel (PEP 517's
get_requires_for_build_wheel, e.g. ninja or cmake when none is on PATH), printed as JSON."""


def backend_of(build_backend: str) -> str:
    """The back end named by pyproject.toml's build-system.build-backend (no pyproject: setuptools' legacy)."""
    if not build_backend:
        return "setuptools"
    try:
        return BACKEND_MODULES[build_backend]
    except KeyError:
        raise ValueError(f"build-backend {build_backend!r} is not one hostpgo knows how to pass flags through; "
                         f"known: {', '.join(BACKEND_MODULES)}") from None


def environment(rf: ResolvedFlags, backend: str = "setuptools") -> dict[str, str]:
    """The build's environment: the compilers for every back end; setuptools also takes the flags here
    (CPPFLAGS/LDFLAGS, never CFLAGS: see the module docstring)."""
    env = dict(rf.tools)
    if backend == "setuptools":
        env["CPPFLAGS"] = " ".join(f.value for f in rf.cflags)
        env["LDFLAGS"] = " ".join(f.value for f in rf.ldflags)
    return env


def config_settings(backend: str, rf: ResolvedFlags, *, opt: str,
                    build_dir: Path | None = None) -> list[tuple[str, str]]:
    """(key, value) config settings for `backend` (build's -C); `build_dir` fixes the back end's build tree."""
    if backend == "setuptools":
        return []
    if backend == "scikit-build-core":
        out = [("cmake.build-type", "Release")] + [
            (f"cmake.define.{name}", value) for name, (value, _why) in cmake.cache_entries(rf, opt=opt).items()
            if name != "CMAKE_BUILD_TYPE"]
        out.append(("build.verbose", "true"))
        return out + ([("build-dir", str(build_dir))] if build_dir else [])
    if backend == "meson-python":
        out = [("setup-args", f"-D{k}={v}") for k, (v, _why) in meson.setup_options(rf).items()]
        out.append(("compile-args", "-v"))
        return out + ([("build-dir", str(build_dir))] if build_dir else [])
    raise ValueError(f"unknown PEP 517 backend {backend!r}; known: {', '.join(BACKENDS)}")


def channel_flags(settings: list[tuple[str, str]], env: Mapping[str, str],
                  backend: str = "") -> tuple[ChannelFlag, ...]:
    def why(k: str) -> str:
        if k == "CPPFLAGS":
            return "profile flags (setuptools appends CPPFLAGS after sysconfig's CFLAGS; CFLAGS would replace them)"
        if k == "LDFLAGS":
            return "profile link flags (setuptools appends them to LDSHARED)"
        if k in ("LLVM_PROFILE_FILE", "GCOV_PREFIX"):
            return "engine: keep the build's own runs out of the training profile"
        return "toolchain (detected)"
    return (*(ChannelFlag("config-setting", k, v, f"{backend or 'the back end'}'s own channel") for k, v in settings),
            *(ChannelFlag("env", k, v, why(k)) for k, v in sorted(env.items())))


def wheel_argv(python: str, source: Path, outdir: Path, settings: list[tuple[str, str]]) -> list[str]:
    """Build one wheel from a fixed source directory with the build environment's interpreter (its requirements
    are already installed: no isolation, no temporary copy)."""
    return [python, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(outdir),
            *(f"-C{k}={v}" for k, v in settings), str(source)]


def requires_argv(python: str, source: Path, settings: list[tuple[str, str]]) -> list[str]:
    """The command printing the back end's dynamic wheel requirements as JSON."""
    import json
    merged: dict[str, object] = {}
    for k, v in settings:
        prev = merged.get(k)
        merged[k] = v if prev is None else ([*prev, v] if isinstance(prev, list) else [prev, v])
    return [python, "-c", REQUIRES_SCRIPT, str(source), json.dumps(merged)]


# ---------------------------------------------------------------------------------------------
# Proof from the build log: every compile line carries the profile's flags, and they win.

SOURCE_RE = re.compile(r"\.(c|cc|cpp|cxx|C)$")


@dataclass(frozen=True)
class CompileCheck:
    """What the build log's compile lines show."""

    lines: int
    """Compile commands found (`-c` with a C/C++ source)."""
    failures: tuple[str, ...]
    """One entry per violated rule: which line (source file) and what was wrong."""
    example: str
    """The first compile line, as logged (shortened)."""

    @property
    def ok(self) -> bool:
        return self.lines > 0 and not self.failures

    def to_json(self) -> dict:
        return {"compile_lines": self.lines, "ok": self.ok, "failures": list(self.failures[:20]),
                "failure_count": len(self.failures), "example": self.example}


def compile_lines(log_lines: Iterable[str], compilers: Sequence[str]) -> list[list[str]]:
    """The compile commands in a build log: lines whose words include a compiler named in `compilers` (by
    basename), `-c` and a C/C++ source file. ninja's `[3/50] cmd` prefix and a leading `+ ` are dropped."""
    names = {Path(c).name for c in compilers if c}
    out = []
    for raw in log_lines:
        line = re.sub(r"^\s*(\[\d+/\d+\]\s*|\+\s+)", "", raw.strip())
        if " -c " not in f" {line} ":
            continue
        try:
            words = shlex.split(line)
        except ValueError:
            words = line.split()
        at = next((i for i, w in enumerate(words) if Path(w).name in names), None)
        if at is None:
            continue
        words = words[at:]
        if "-c" in words and any(SOURCE_RE.search(w) for w in words[1:]):
            out.append(words)
    return out


def check_compile_lines(commands: Sequence[Sequence[str]], *, opt: str, required: Sequence[str] = (),
                        required_prefixes: Sequence[str] = ()) -> CompileCheck:
    """Each compile command must end up at `opt` (the last -O word is the profile's: none comes later), carry
    every `required` word (e.g. -DNDEBUG, -fwrapv) and a word starting with each of `required_prefixes` (e.g.
    -fprofile-instr-use=), and must not undo -DNDEBUG with a later -UNDEBUG."""
    fails: list[str] = []
    for words in commands:
        src = next((w for w in reversed(words) if SOURCE_RE.search(w)), "?")
        levels = [w for w in words if re.fullmatch(r"-O(\d|s|z|fast|g)?", w)]
        if not levels or levels[-1] != opt:
            fails.append(f"{src}: last optimization level {levels[-1] if levels else 'none'}, want {opt} "
                         f"(levels in order: {' '.join(levels)})")
        for req in required:
            if req not in words:
                fails.append(f"{src}: {req} missing")
        if "-DNDEBUG" in required and "-UNDEBUG" in words and words.index("-UNDEBUG") > words.index("-DNDEBUG"):
            fails.append(f"{src}: -UNDEBUG after -DNDEBUG")
        for pre in required_prefixes:
            if not any(w.startswith(pre) for w in words):
                fails.append(f"{src}: no {pre}...")
    example = " ".join(commands[0])[:400] if commands else ""
    return CompileCheck(len(commands), tuple(fails), example)
