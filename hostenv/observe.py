"""What a process really runs with (/proc, gc, sys): allocator libraries, threads, start-up, and the workload
record's `host_settings` field comparing that with what the settings asked for."""

from __future__ import annotations

import gc
import importlib.util
import os
import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from . import allocators
from .errors import HostSettingsError
from .settings import HostSettings, show_value

STARTUP_PACKAGES = ("runtime", "hostenv", "hostpgo")
"""hostpgo's packages a runtime process imports at start (precompiled with the environment, checked by
observe_startup)."""
MALLOC_ENV_PREFIXES = ("MIMALLOC_", "TCMALLOC_")
MALLOC_ENV_NAMES = ("GLIBC_TUNABLES", "MALLOC_CONF")


def debug_ranges_in_effect() -> bool:
    """Whether this process compiles column positions (False under PYTHONNODEBUGRANGES or -X no_debug_ranges)."""
    code = compile("x", "<probe>", "eval")
    return any(col is not None for _, _, col, _ in code.co_positions())


def pyc_mode(path: str | os.PathLike[str]) -> str | None:
    """The invalidation mode of a pyc from its header's flags field (PEP 552); None when unreadable."""
    try:
        with open(path, "rb") as fh:
            header = fh.read(8)
    except OSError:
        return None
    if len(header) < 8 or header[:4] != importlib.util.MAGIC_NUMBER:
        return None
    flags = int.from_bytes(header[4:8], "little")
    if not flags & 0b1:
        return "timestamp"
    return "checked-hash" if flags & 0b10 else "unchecked-hash"


def mapped_allocators(maps: Path = Path("/proc/self/maps")) -> list[str]:
    """The allocator shared objects (rows of the allocator table) a process maps, sorted; [] when unreadable."""
    stems = allocators.soname_stems()
    mapped: set[str] = set()
    try:
        with open(maps) as fh:
            for line in fh:
                fields = line.split(maxsplit=5)
                path = fields[5].strip() if len(fields) == 6 else ""
                if os.path.basename(path).startswith(stems):
                    mapped.add(path)
    except OSError:
        pass
    return sorted(mapped)


def threads(task_dir: Path = Path("/proc/self/task")) -> dict[str, dict]:
    """This process's threads by name (a trailing `_N` dropped): how many, and the CPU sets they may run on."""
    out: dict[str, dict] = {}
    try:
        tids = sorted(os.listdir(task_dir), key=int)
    except OSError:
        return out
    for tid in tids:
        try:
            comm = (task_dir / tid / "comm").read_text().strip()
            cpus = sorted(os.sched_getaffinity(int(tid)))
        except OSError:
            continue
        entry = out.setdefault(re.sub(r"_\d+$", "", comm), {"count": 0, "cpus": []})
        entry["count"] += 1
        if cpus not in entry["cpus"]:
            entry["cpus"].append(cpus)
    return out


def observe(maps: Path = Path("/proc/self/maps")) -> dict:
    """What the process actually runs with: allocator libraries mapped, preload, malloc variables, threads, GC."""
    return {"allocator_libraries": mapped_allocators(maps), "ld_preload": os.environ.get("LD_PRELOAD", ""),
            "malloc_env": {k: v for k, v in os.environ.items()
                           if k in MALLOC_ENV_NAMES or k.startswith(MALLOC_ENV_PREFIXES)},
            "threads": threads(), "gc_threshold": list(gc.get_threshold()), "gc_enabled": gc.isenabled()}


def observe_startup(packages: Sequence[str] = (*STARTUP_PACKAGES, "mindspore")) -> dict:
    """What the interpreter started with: -X options, frozen stdlib, debug ranges, and the mode of the pyc beside
    each imported module of `packages` (read now; a pyc is what the import used unless rewritten since)."""
    os_spec = getattr(sys.modules.get("os"), "__spec__", None)
    modes: dict[str, int] = {}
    for name, mod in list(sys.modules.items()):
        if name.partition(".")[0] not in packages:
            continue
        cached = getattr(mod, "__cached__", None)
        if not cached:
            continue  # extension modules, namespace packages
        mode = pyc_mode(cached) or "no-pyc"
        modes[mode] = modes.get(mode, 0) + 1
    return {"xoptions": {str(k): v for k, v in sys._xoptions.items()},
            "frozen_stdlib": getattr(os_spec, "origin", None) == "frozen",
            "debug_ranges": debug_ranges_in_effect(),
            "dont_write_bytecode": bool(sys.flags.dont_write_bytecode),
            "pyc_modes": {"packages": list(packages), "modules": dict(sorted(modes.items()))}}


def startup_warnings(settings: HostSettings, seen: Mapping) -> list[str]:
    """Where the observed start-up (`observe_startup`) differs from what the settings ask for."""
    st = settings.startup
    out = []
    if st.frozen_modules is not None and seen["frozen_stdlib"] != st.frozen_modules:
        out.append(f"startup.frozen_modules = {show_value(st.frozen_modules)}, but the stdlib was "
                   f"{'' if seen['frozen_stdlib'] else 'not '}loaded frozen (start the interpreter through "
                   "`python -m hostenv exec` or `--host-settings`, which add -X frozen_modules)")
    if st.no_debug_ranges and seen["debug_ranges"]:
        out.append("startup.no_debug_ranges = true, but this process compiles column positions "
                   "(PYTHONNODEBUGRANGES is not set)")
    modes = seen["pyc_modes"]["modules"]
    other = {m: n for m, n in modes.items() if m != st.bytecode}
    if st.precompile and other:
        out.append(f"startup.precompile asked for {st.bytecode} pycs, but {sum(other.values())} of "
                   f"{sum(modes.values())} imported {'/'.join(seen['pyc_modes']['packages'])} modules have "
                   f"{other}; run `python -m hostenv precompile SETTINGS` in this environment")
    return out


def allocator_in_effect(name: str, mapped: Sequence[str]) -> bool:
    """Whether the mapped allocator libraries are what allocator `name` asks for (glibc: none of them)."""
    loaded = [os.path.basename(p) for p in mapped]
    if name == "glibc":
        return not loaded
    stems = [s.split(".so")[0] for s in allocators.table()[name].sonames]
    return any(b.startswith(tuple(stems)) for b in loaded)


def asked_library(settings: HostSettings, install_root: Path | None = None) -> str | None:
    """The real path of the one shared object the settings name (`allocator.library`, or the library of the
    hostpgo build `allocator.build`), or None when any build of the allocator will do (the distribution's,
    discovered). A build that cannot be found gives its expected name, so the check below fails naming it."""
    a = settings.allocator
    if a.name == "glibc":
        return None
    if a.library:
        return os.path.realpath(a.library)
    if a.build:
        try:
            return os.path.realpath(allocators.find_built(a.name, a.build, install_root=install_root).library)
        except HostSettingsError:  # AllocatorNotFound too
            return f"{a.build} (hostpgo build of {a.name}, not found)"
    return None


def record(settings: HostSettings, applied: Sequence[Mapping] = (), *, observed: Mapping | None = None,
           startup: Mapping | None = None, install_root: Path | None = None) -> dict:
    """The `host_settings` field of a workload record: what was asked, what was called (`applied`, from the
    runtime's host_apply), what is observed (`observe()` and `observe_startup()` unless given), and warnings.

    `allocator_in_effect` needs the asked allocator mapped; when the settings name one shared object (a
    hostpgo build, `allocator.build`, or `allocator.library`), that very file (by real path): the distribution's
    build of the same allocator does not count for a hostpgo-built one (`allocator_library` says which it was)."""
    observed = dict(observe() if observed is None else observed)
    startup = dict(observe_startup() if startup is None else startup)
    want = settings.allocator.name
    mapped = observed["allocator_libraries"]
    ok = allocator_in_effect(want, mapped)
    library = asked_library(settings, install_root)
    warnings = []
    if not ok:
        loaded = [os.path.basename(p) for p in mapped]
        warnings.append(f"allocator {want!r} asked for, but the process maps {loaded or 'no allocator library'}")
    elif library is not None and library not in {os.path.realpath(p) for p in mapped}:
        ok = False
        warnings.append(f"allocator {want!r} from {library} asked for, but the process maps {list(mapped)}")
    if settings.mindspore.affinity:
        everywhere = sorted(os.sched_getaffinity(0))
        bound = [n for n, t in observed["threads"].items() if any(c != everywhere for c in t["cpus"])]
        if not bound:
            warnings.append("mindspore.runtime.set_cpu_affinity was called but no live thread's CPU set is narrower "
                            f"than the process's {everywhere} (MindSpore 2.10 binds only the threads it names, "
                            "and in blocking launch those may not exist)")
    warnings += startup_warnings(settings, startup)
    return {"name": settings.name, "source": settings.source, "summary": settings.summary(),
            "settings": settings.to_json(), "applied": [dict(a) for a in applied],
            "observed": observed, "startup": startup, "allocator_in_effect": ok,
            **({"allocator_library": library} if library is not None else {}), "warnings": warnings}
