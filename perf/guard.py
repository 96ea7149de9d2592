"""Generic guard: a pyperformance subset on each interpreter, interleaved benchmark by benchmark.

pyperformance is installed once in its own tool venv (made from the first interpreter) and
builds its own per-interpreter benchmark venvs; results are pyperf suites like the latency ones.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path

from hostpgo import runner

from . import extra
from .errors import SpecError
from .workspace import perf_area, safe_name

PYPERFORMANCE = "pyperformance==1.14.0"

# Pure-Python benchmarks without third-party requirements, spread over the interpreter's hot paths:
# calls and attribute access, float and int arithmetic, generators, regex and json.
DEFAULT_SUBSET = ("chaos", "deltablue", "fannkuch", "float", "go", "hexiom", "json_dumps",
                  "nbody", "nqueens", "raytrace", "richards", "spectral_norm")


def parse_subset(text: str | None) -> tuple[str, ...]:
    if text is None:
        return DEFAULT_SUBSET
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    if not names:
        raise SpecError("--guard-benchmarks: empty list")
    return names


def tool_python(builder: Path, log: Path | None) -> Path:
    """The pyperformance tool venv's python, created and installed on first use."""
    root = perf_area() / "tools" / "pyperformance"
    py = root / "bin" / "python"
    marker = root / ".installed"
    if not marker.is_file() or marker.read_text() != PYPERFORMANCE:
        if not py.exists():
            runner.capture([builder, "-m", "venv", root], log=log, timeout=600)
        runner.capture([py, "-m", "pip", "install", PYPERFORMANCE], log=log, timeout=1800)
        marker.write_text(PYPERFORMANCE)
    return py


def run_guard(subjects: list[tuple[str, Path, Mapping[str, str | int | float]]], benchmarks: tuple[str, ...],
              out_dir: Path, *, fast: bool, log: Path | None = None,
              progress: Callable[[str], None] | None = None) -> dict:
    """Run each benchmark on every interpreter (order alternating per benchmark); one suite per interpreter."""
    tool = tool_python(subjects[0][1], log)
    # pyperformance keeps its per-interpreter benchmark venvs under the working directory: a
    # fixed one lets later runs reuse them.
    work = perf_area() / "pyperformance-work"
    work.mkdir(parents=True, exist_ok=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    files: dict[str, str] = {}
    dests = {name: out_dir / f"{safe_name(name)}.json" for name, _, _ in subjects}
    for dest in dests.values():
        dest.unlink(missing_ok=True)
    for k, bench in enumerate(benchmarks):
        order = subjects if k % 2 == 0 else list(reversed(subjects))
        for name, python, _ in order:
            cmd = [tool, "-m", "pyperformance", "run", "--python", python, "-b", bench,
                   "--append", dests[name]]
            if fast:
                cmd.append("--fast")
            runner.capture(cmd, cwd=work, log=log, timeout=3600)
            if progress:
                progress(f"pyperformance {bench} on {name} done")
    for name, _, stamp in subjects:
        suite = extra.pyperf().BenchmarkSuite.load(str(dests[name]))
        for b in suite.get_benchmarks():
            b.update_metadata(dict(stamp))
        dests[name].unlink()
        suite.dump(str(dests[name]))
        files[name] = os.path.relpath(dests[name], out_dir.parent)
    return {"benchmarks": list(benchmarks), "mode": "--fast" if fast else "default",
            "tool": PYPERFORMANCE, "files": files}
