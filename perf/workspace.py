"""Where perf/ keeps its files: venvs, wheelhouses and results under the hostpgo work area."""

from __future__ import annotations

import datetime as _dt
import os
import re
from pathlib import Path

from .errors import SpecError

_RUN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def hostpgo_home() -> Path:
    """The work area: $HOSTPGO_HOME, else `.hostpgo` in the current directory."""
    return Path(os.environ.get("HOSTPGO_HOME", ".hostpgo")).resolve()


def perf_area() -> Path:
    """perf/'s own part of the work area (venvs, wheelhouses, tool environments)."""
    return hostpgo_home() / "perf"


def results_root() -> Path:
    return hostpgo_home() / "results"


def new_run_dir(out: str | None) -> Path:
    """The run directory for `--out`: a path with a slash is used as is, a bare name goes under results/.

    With no name, a UTC timestamp names the run.
    """
    if out is None:
        out = _dt.datetime.now(_dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    if "/" in out or out.startswith("."):
        return Path(out).resolve()
    if not _RUN_NAME.match(out):
        raise SpecError(f"--out {out!r}: a run name may hold letters, digits, '.', '_' and '-' only")
    return results_root() / out


def safe_name(text: str) -> str:
    """A file-name-safe form of an interpreter or benchmark name."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "unnamed"
