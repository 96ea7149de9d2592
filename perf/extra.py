"""The `perf` extra (pyperf, matplotlib), imported where first used so `python -m perf --help` works without it.

A command that needs it calls `require()` before doing any work; a missing package is a SpecError (exit 2) that
says how to install it, not a ModuleNotFoundError traceback.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from .errors import SpecError

INSTALL = "pip install -e '.[perf]'"
PACKAGES = ("pyperf", "matplotlib")


def _load(module: str) -> ModuleType:
    package = module.split(".")[0]
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name is None or exc.name.split(".")[0] != package:
            raise  # the package is there but something it imports is not: not ours to explain
        raise SpecError(f"{package} is not installed: {INSTALL}") from None


def pyperf() -> ModuleType:
    return _load("pyperf")


def pyperf_utils() -> ModuleType:
    """pyperf's t-test helpers (`is_significant`, `tdist95conf_level`)."""
    return _load("pyperf._utils")


def pyplot() -> ModuleType:
    """matplotlib.pyplot on the Agg backend (files only, no display)."""
    _load("matplotlib").use("Agg")
    return _load("matplotlib.pyplot")


def require() -> None:
    """Raise SpecError naming every missing package of the extra, before a command that needs them starts."""
    missing = []
    for package in PACKAGES:
        try:
            _load(package)
        except SpecError:
            missing.append(package)
    if missing:
        raise SpecError(f"{' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} not installed: {INSTALL}")
