"""Build systems: one module per system, each owning its steps (pure argument computation) and its flag
channels: how a setting reaches the compiler through that system (CHANNELS), and what it must run (TOOLS).

    autotools  configure arguments and environment, CFLAGS_NODIST/LDFLAGS_NODIST, make variables (CPython)
    cmake      cache entries, with the level in CMAKE_<LANG>_FLAGS_<CONFIG> (appended after CMAKE_<LANG>_FLAGS)
    meson      setup arguments: buildtype, b_lto, b_pgo, c_args/cpp_args/c_link_args
    pep517     config settings and the build's environment (CC, CFLAGS, LDFLAGS)
    bazel      --copt/--linkopt, or the same lines in a .user.bazelrc
"""

from __future__ import annotations

import importlib
from types import ModuleType

from ..errors import InputError

NAMES = ("autotools", "cmake", "meson", "pep517", "bazel")


def get(name: str) -> ModuleType:
    """The module of build system `name`."""
    if name not in NAMES:
        raise InputError(f"unknown build system '{name}'; known: {', '.join(NAMES)}")
    return importlib.import_module(f"{__name__}.{name}")
