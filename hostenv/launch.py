"""Starting a process under host settings: its environment delta and its interpreter options (plan, then exec)."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from . import allocators
from .errors import AllocatorNotFound, HostSettingsError
from .settings import ENV_SETTINGS, HostSettings

_PYTHON_NAME = re.compile(r"^(python|pypy)(\d+(\.\d+)?)?$")


def discover(name: str) -> Path | None:
    """The shared object of allocator `name` on this machine (None for glibc); AllocatorNotFound naming the package."""
    return allocators.find(name, query_version=False).library


def process_env(settings: HostSettings, base: Mapping[str, str] | None = None, *,
                linked: Sequence[str] = (), find: Callable[[str], Path | None] = discover) -> dict[str, str]:
    """The environment delta that starts a process under `settings` (pure but for library discovery).

    `linked` names allocators the interpreter already links (a hostpgo build with `optimize.allocator`): those
    are not preloaded again. Asking for glibc from an interpreter that links another allocator is an error.
    """
    base = os.environ if base is None else base
    delta: dict[str, str] = {}
    name = settings.allocator.name
    if name == "glibc" and linked:
        raise HostSettingsError(
            f"allocator 'glibc' asked for, but the interpreter links {', '.join(linked)}; it cannot be unloaded")
    if name != "glibc" and name not in linked:
        if settings.allocator.library:
            lib: Path | None = Path(settings.allocator.library)
        elif settings.allocator.build:
            lib = allocators.find_built(name, settings.allocator.build).library
        else:
            lib = find(name)
        if lib is None or not lib.exists():
            raise AllocatorNotFound(f"allocator {name!r}: library {lib} does not exist")
        have = base.get("LD_PRELOAD", "")
        delta["LD_PRELOAD"] = " ".join([str(lib)] + ([have] if have else []))
    delta.update(allocators.tunables_env(name, settings.allocator.tunables, base))
    if settings.startup.no_debug_ranges:
        delta["PYTHONNODEBUGRANGES"] = "1"
    delta[ENV_SETTINGS] = json.dumps(settings.to_json(), separators=(",", ":"))
    return delta


def interpreter_args(settings: HostSettings) -> list[str]:
    """Options the interpreter itself must be started with (no environment variable carries them)."""
    frozen = settings.startup.frozen_modules
    return [] if frozen is None else ["-X", f"frozen_modules={'on' if frozen else 'off'}"]


def is_python_command(program: str) -> bool:
    """Whether a command's program is a Python interpreter (python, python3, python3.11, pypy3, a venv's python)."""
    return bool(_PYTHON_NAME.match(os.path.basename(program)))


def with_interpreter_args(settings: HostSettings, cmd: Sequence[str]) -> list[str]:
    """`cmd` with the settings' interpreter options inserted after the interpreter; raises when they are needed
    and the command does not start a Python interpreter."""
    extra = interpreter_args(settings)
    cmd = list(cmd)
    if not extra:
        return cmd
    if not cmd or not is_python_command(cmd[0]):
        program = cmd[0] if cmd else "(nothing)"
        raise HostSettingsError(
            f"startup.frozen_modules needs `{' '.join(extra)}` on the interpreter's command line (no environment "
            f"variable carries it), but {program!r} is not a Python interpreter (python, python3, python3.11, ...); "
            "give the interpreter as the command, e.g. `exec SETTINGS -- python3 -m runtime ...`")
    return [cmd[0], *extra, *cmd[1:]]


def exec_argv(settings: HostSettings, cmd: Sequence[str], base: Mapping[str, str] | None = None
              ) -> tuple[list[str], dict[str, str]]:
    """The plan of `python -m hostenv exec`: the command (with interpreter options) and its environment delta."""
    return with_interpreter_args(settings, cmd), process_env(settings, base)
