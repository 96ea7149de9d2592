"""Precompiling an environment's pycs for `startup.precompile`: in parallel worker processes, with the settings'
invalidation mode and debug-range choice (`python -m hostenv precompile SETTINGS [PATH ...]`)."""

from __future__ import annotations

import concurrent.futures
import importlib.util
import multiprocessing
import os
import sys
import sysconfig
import time
from collections.abc import Sequence
from pathlib import Path

from .errors import PrecompileError
from .observe import STARTUP_PACKAGES, debug_ranges_in_effect
from .settings import HostSettings


def site_packages() -> list[Path]:
    """This interpreter's purelib and platlib directories (existing ones, once each)."""
    paths = sysconfig.get_paths()
    out: list[Path] = []
    for key in ("purelib", "platlib"):
        p = Path(paths[key]).resolve()
        if p.is_dir() and p not in out:
            out.append(p)
    return out


def package_dirs(name: str) -> list[Path]:
    """Where top-level package `name`'s modules would be imported from (found without importing it): every
    search location of the package, e.g. both the checkout and site-packages' compiled part under an
    editable install; empty when it is not found."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return []
    return [Path(p).resolve() for p in spec.submodule_search_locations]


def default_paths() -> list[Path]:
    """This interpreter's site-packages and hostpgo's start-up packages that live elsewhere (a source checkout:
    `python -m` from a directory holding runtime/ imports that one, so run it from elsewhere)."""
    out = site_packages()
    for name in STARTUP_PACKAGES:
        for where in package_dirs(name):
            if not any(where.is_relative_to(p) for p in out):
                out.append(where)
    return out


def source_files(paths: Sequence[Path]) -> list[Path]:
    """Every .py file under `paths` (a file is itself), sorted, skipping __pycache__ directories."""
    files: list[Path] = []
    for root in paths:
        if root.is_file():
            files.append(root)
            continue
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = sorted(d for d in dirnames if d != "__pycache__")
            files.extend(Path(dirpath) / f for f in sorted(filenames) if f.endswith(".py"))
    return files


def _compile_one(job: tuple[str, str]) -> tuple[str, str | None, str | None, bool]:
    """One file compiled in a worker: (source, None | "invalid" | "io", error text, debug ranges in effect)."""
    import py_compile

    source, mode = job
    kind = error = None
    try:
        py_compile.compile(source, doraise=True,
                           invalidation_mode=py_compile.PycInvalidationMode[mode.upper().replace("-", "_")])
    except py_compile.PyCompileError as exc:
        first = (str(exc.exc_value).splitlines() or [""])[0]
        kind, error = "invalid", f"{exc.exc_type_name}: {first}"
    except OSError as exc:
        kind, error = "io", f"{type(exc).__name__}: {exc}"
    return source, kind, error, debug_ranges_in_effect()


def precompile(settings: HostSettings, paths: Sequence[str | os.PathLike[str]] = (), *,
               workers: int | None = None) -> dict:
    """Compile every .py under `paths` (default: `default_paths()`) to pycs of `startup.bytecode` mode, in
    `workers` fresh processes that run with or without PYTHONNODEBUGRANGES as the settings say (the pycs keep
    what the compiling process had). Every file is compiled again (a pyc does not record debug ranges, so an
    existing one cannot be trusted to match). A file that is not valid Python is listed, not fatal (pip treats
    it the same way: it cannot be imported either way). Returns the summary; raises PrecompileError."""
    st = settings.startup
    started = time.monotonic()
    roots = [Path(p).resolve() for p in paths] if paths else default_paths()
    for root in roots:
        if not root.exists():
            raise PrecompileError(f"precompile: {root} does not exist")
    files = source_files(roots)
    if not files:
        raise PrecompileError(f"precompile: no .py files under {', '.join(map(str, roots))}")
    workers = max(1, workers or os.cpu_count() or 1)
    saved = os.environ.get("PYTHONNODEBUGRANGES")
    # Spawned workers read PYTHONNODEBUGRANGES at their start; forked ones would keep this process's setting.
    if st.no_debug_ranges:
        os.environ["PYTHONNODEBUGRANGES"] = "1"
    else:
        os.environ.pop("PYTHONNODEBUGRANGES", None)
    invalid: list[dict] = []
    ranges: set[bool] = set()
    try:
        with concurrent.futures.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            for source, kind, error, in_effect in pool.map(_compile_one, [(str(f), st.bytecode) for f in files],
                                                           chunksize=64):
                ranges.add(in_effect)
                if kind == "io":
                    raise PrecompileError(f"precompile: cannot compile {source}: {error}")
                if kind == "invalid":
                    invalid.append({"file": source, "error": error})
    finally:
        if saved is None:
            os.environ.pop("PYTHONNODEBUGRANGES", None)
        else:
            os.environ["PYTHONNODEBUGRANGES"] = saved
    if ranges != {not st.no_debug_ranges}:
        raise PrecompileError(f"precompile: the workers compiled with debug ranges {sorted(ranges)}, not "
                              f"{not st.no_debug_ranges} as startup.no_debug_ranges asks (-X no_debug_ranges given?)")
    site = site_packages()
    warnings = []
    if st.bytecode == "unchecked-hash":
        outside = [str(r) for r in roots if not any(r.is_relative_to(p) for p in site)]
        if outside:
            warnings.append(f"unchecked-hash pycs under {', '.join(outside)}: an edited source there is not seen "
                            "until precompiled again (or its __pycache__ removed)")
    return {"settings": settings.name, "python": sys.executable, "cache_tag": sys.implementation.cache_tag,
            "mode": st.bytecode, "no_debug_ranges": st.no_debug_ranges, "paths": [str(r) for r in roots],
            "files": len(files), "compiled": len(files) - len(invalid), "not_python": invalid,
            "workers": workers, "seconds": round(time.monotonic() - started, 2), "warnings": warnings}
