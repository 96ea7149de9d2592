"""The run record (`run.json`): versioned JSON that names every result file of one measurement run."""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
from pathlib import Path
from typing import TYPE_CHECKING

from hostpgo import fsutil

from . import SCHEMA, extra
from .errors import ResultsError

if TYPE_CHECKING:
    import pyperf

RUN_FILE = "run.json"


def host_info() -> dict:
    """What the machine was, and how busy, when the run started."""
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = os.getloadavg() if hasattr(os, "getloadavg") else (0.0, 0.0, 0.0)
    return {"hostname": platform.node(), "machine": platform.machine(), "kernel": platform.release(),
            "cpu": cpu, "cpus": os.cpu_count(), "loadavg_at_start": [round(x, 2) for x in load]}


def new_record(run_dir: Path, interpreters: list[dict], targets: list[str], argv: list[str]) -> dict:
    return {
        "schema": SCHEMA,
        "run": run_dir.name,
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "command": argv,
        "host": host_info(),
        "baseline": interpreters[0]["name"],
        "interpreters": interpreters,
        "targets": targets,
    }


def save(run_dir: Path, record: dict) -> Path:
    """Write run.json atomically (a reader never sees half a file)."""
    return fsutil.write_text(run_dir / RUN_FILE, json.dumps(record, indent=1, sort_keys=False) + "\n")


def load(run_dir: Path) -> dict:
    """Load and check a run record; raise ResultsError naming the file."""
    path = Path(run_dir) / RUN_FILE
    if not path.is_file():
        raise ResultsError(f"{path}: no run record here (is {run_dir} a `perf bench` output directory?)")
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise ResultsError(f"{path}: not valid JSON: {exc}") from exc
    if not isinstance(record, dict) or record.get("schema") != SCHEMA:
        found = record.get("schema") if isinstance(record, dict) else type(record).__name__
        raise ResultsError(f"{path}: schema {found!r}, expected {SCHEMA!r}")
    for key in ("baseline", "interpreters"):
        if key not in record:
            raise ResultsError(f"{path}: missing {key!r}")
    return record


def load_suites(run_dir: Path, files: dict[str, str]) -> dict[str, pyperf.BenchmarkSuite]:
    """pyperf suites by interpreter name from paths relative to the run directory."""
    pyperf = extra.pyperf()
    suites = {}
    for name, rel in files.items():
        path = Path(run_dir) / rel
        if not path.is_file():
            raise ResultsError(f"{path}: result file named in run.json is missing")
        try:
            suites[name] = pyperf.BenchmarkSuite.load(str(path))
        except Exception as exc:  # pyperf raises plain exceptions on malformed files
            raise ResultsError(f"{path}: not a pyperf result: {exc}") from exc
    return suites
