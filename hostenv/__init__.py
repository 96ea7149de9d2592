"""Host settings, the one owner of everything hostpgo sets around a process rather than compiles into it.

Modules: `settings` (schema, model, resolving through hostpgo.layered), `allocators` (the allocator table,
discovery, install hints, link flags), `launch` (the environment delta and interpreter options a process is
started with), `precompile` (an environment's pycs), `observe` (what a process really runs with), `cli`
(`python -m hostenv`). It imports only the standard library and hostpgo/; the runtime applies the in-process
half (runtime/host_apply.py) and the build engine reads allocator facts from here.

The names most callers need are re-exported here.
"""

from .errors import AllocatorNotFound, HostSettingsError, PrecompileError
from .launch import (
    interpreter_args,
    is_python_command,
    process_env,
    with_interpreter_args,
)
from .settings import (
    ENV_LAUNCH_BLOCKING,
    ENV_SET,
    ENV_SETTINGS,
    HostSettings,
    StartupSettings,
    active,
    resolve,
)

__all__ = [
    "ENV_LAUNCH_BLOCKING", "ENV_SET", "ENV_SETTINGS", "AllocatorNotFound", "HostSettings", "HostSettingsError",
    "PrecompileError", "StartupSettings", "active", "interpreter_args", "is_python_command", "process_env",
    "resolve", "with_interpreter_args",
]
