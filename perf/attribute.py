"""Host-time attribution: share of CPU time per shared object, grouped by library, and hottest functions.

`perf record -e cpu-clock` (a software event, so it works without hardware counters) samples
the counter target; recording starts disabled and the target enables it over a control FIFO
only around the measured units, so imports and set-up do not dilute the shares.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Mapping
from pathlib import Path

from hostenv import allocators
from hostpgo import runner

from .errors import ResultsError

# Library groups, first match wins: (group, regular expression on the DSO's base name).
GROUPS: tuple[tuple[str, str], ...] = (
    ("CPython", r"^(python\d(\.\d+)?[a-z]*|libpython.*)$"),
    ("MindSpore", r"mindspore|_c_expression|_ms_|libdnnl|libakg"),
    ("Ray", r"_raylet|libray|libcore_worker"),
    # A preloaded or linked malloc, by the allocator table's shared-object names (glibc's stays in libc).
    ("allocator", "^(" + "|".join(re.escape(s) for s in allocators.soname_stems()) + ")"),
    ("libc", r"^(libc\.so|libc-|ld-linux|libm\.so|libpthread|\[vdso\])"),
    ("C++ runtime", r"^(libstdc\+\+|libgcc_s|libgomp)"),
    ("numpy", r"_multiarray|_umath|libopenblas|libscipy_openblas"),
    ("kernel", r"^\[kernel"),
    ("extension modules", r"\.cpython-\d+.*\.so|\.abi3\.so"),
)

_DSO_LINE = re.compile(r"^\s*([\d.]+)%\s+(\S.*?)\s*$")
_SYM_LINE = re.compile(r"^\s*([\d.]+)%\s+(\S+)\s+\[(.)\]\s+(.+?)\s*$")
_HEX = re.compile(r"^0x[0-9a-f]+$")


def group_of(dso: str) -> str:
    base = os.path.basename(dso)
    for group, pattern in GROUPS:
        if re.search(pattern, base):
            return group
    return "other"


def parse_dso_report(text: str) -> dict[str, float]:
    """`perf report --sort dso --stdio -q` -> DSO -> percent."""
    shares: dict[str, float] = {}
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        m = _DSO_LINE.match(line)
        if m:
            shares[m.group(2)] = shares.get(m.group(2), 0.0) + float(m.group(1))
    return shares


def parse_sym_report(text: str) -> list[dict]:
    """`perf report --sort dso,sym --stdio -q` -> rows of percent, dso, symbol (hex where unresolved)."""
    rows = []
    for line in text.splitlines():
        m = _SYM_LINE.match(line)
        if m:
            sym = m.group(4)
            rows.append({"percent": float(m.group(1)), "dso": m.group(2), "kind": m.group(3),
                         "symbol": sym, "resolved": not _HEX.match(sym)})
    return rows


def group_shares(shares: Mapping[str, float]) -> dict[str, float]:
    out: dict[str, float] = {}
    for dso, pct in shares.items():
        g = group_of(dso)
        out[g] = out.get(g, 0.0) + pct
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


def summarise_symbols(rows: list[dict], top: int) -> tuple[list[dict], dict[str, float]]:
    """Hottest resolved functions, and per-DSO share of samples that had no symbol (stripped builds)."""
    unresolved: dict[str, float] = {}
    resolved = []
    for row in rows:
        if row["resolved"]:
            resolved.append(row)
        else:
            unresolved[row["dso"]] = unresolved.get(row["dso"], 0.0) + row["percent"]
    resolved.sort(key=lambda r: -r["percent"])
    return resolved[:top], unresolved


def record(python: Path, target_name: str, units: int, work: Path, *, provider: str | None = None,
           env: Mapping[str, str] | None = None, log: Path | None = None, frequency: int = 999,
           top: int = 15, timeout: float = 3600) -> dict:
    """Sample one counter-target run and return DSO shares, group shares and hottest functions."""
    runner.require("perf", "for `perf record` host-time attribution")
    work.mkdir(parents=True, exist_ok=True)
    data = work / f"{target_name}.perf.data"
    with tempfile.TemporaryDirectory(prefix="hostpgo-perfctl-") as tmp:
        ctl, ack = Path(tmp) / "ctl", Path(tmp) / "ack"
        os.mkfifo(ctl)
        os.mkfifo(ack)
        argv = [str(python), "-m", "perf.benchmarks.count", "--target", target_name, "--units", str(units)]
        if provider:
            argv += ["--provider", provider]
        env_delta = dict(env or {})
        env_delta["HOSTPGO_PERF_CTL"] = f"{ctl},{ack}"
        runner.capture(["perf", "record", "-e", "cpu-clock", "-F", str(frequency), "-D", "-1",
                   f"--control=fifo:{ctl},{ack}", "-o", str(data), "--", *argv],
                  cwd=work, env=env_delta, log=log, timeout=timeout)
    return analyse(data, target_name, units, frequency=frequency, top=top)


def analyse(data: Path, target_name: str, units: int, *, frequency: int = 999, top: int = 15) -> dict:
    """DSO shares, group shares and hottest functions of one `perf record` file (re-readable later)."""
    dso_text = runner.capture(["perf", "report", "-i", str(data), "--sort", "dso", "--stdio", "-q"],
                         log=None, timeout=600).stdout
    sym_text = runner.capture(["perf", "report", "-i", str(data), "--sort", "dso,sym", "--stdio", "-q",
                          "--percent-limit", "0.2"], log=None, timeout=600).stdout
    shares = parse_dso_report(dso_text)
    if not shares:
        raise ResultsError(f"{data}: perf report found no samples for {target_name}")
    hottest, unresolved = summarise_symbols(parse_sym_report(sym_text), top)
    return {"method": "perf record -e cpu-clock (software clock sampling)", "frequency": frequency,
            "units": units, "dso": dict(sorted(shares.items(), key=lambda kv: -kv[1])),
            "groups": group_shares(shares), "hottest": hottest, "unresolved": unresolved}
