"""Free disk space before the pipeline writes: what a whole default run left in a fresh work area, part by part,
against what the work area already holds and what its file system has free.

A run that fills the disk midway fails in whatever writes next (pip installing a measurement venv, say) with an
OSError deep in a log; this check names the shortfall before the first build instead. The sizes are measured, not
derived: `du` of each part of a fresh checkout's work area after its whole `nox -s pipeline` run (the figures and
the run are in the Part docstrings). A part the work area already holds counts as present up to its measured size,
so a rerun that only measures again asks only for what it would add.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from hostpgo.errors import HostpgoError

GB = 1_000_000_000


@dataclass(frozen=True)
class Part:
    """One part of the work area the pipeline fills, with what a whole default run left in it."""

    name: str
    """What the part is, as the error names it."""
    dirs: tuple[str, ...]
    """Its directories under the work area."""
    size: int
    """Bytes it held after a whole default pipeline run in a fresh checkout (du, allocated blocks)."""


BUILDS = Part("the builds", ("sources", "apt", "src", "build", "pgo", "profiles", "install", "deps", "logs",
                             "stamps", "ray", "runtime"), 8_100_000_000)
"""The four CPython builds with their sources, build trees, training files and runtime deps: 8.1 GB in the work
area of a fresh clone after its whole `nox -s pipeline` (2026-12-01, 26.6 GB in all): build 1.83, install 2.46,
deps 2.92, pgo 0.71, src 0.11 GB, the rest under 0.1 GB."""
MEASUREMENT = Part("the measurement", ("perf", "results"), 18_500_000_000)
"""perf/'s wheelhouse (0.85 GB) and one venv per measured interpreter and wheel set (six with the stack: baseline,
Debian's, workload-pgo-lto (also step (c)), the optimized build, steps (d) and (e); 2.9 GB each, MindSpore's wheel
unpacked), plus the run directory (0.16 GB): run pipeline-stack-20261201b (2026-12-01). Without the stack it is
less (16.4 GB for five venvs, run pipeline-20261201T123353Z); the check asks for the default's."""
STACK = Part("the stack's builds", ("wheels",), 1_200_000_000)
"""The PGO tcmalloc build (0.31 GB with its training data) and the four extension wheels' build trees, build
environments, verify venvs and training data (numpy 0.55 GB, the others 0.06-0.13 GB each): 1.17 GB after run
pipeline-stack-20261201b; most of it sits under build/ and pgo/, so only wheels/ counts as already there."""
BOLT_WHEELS = Part("the BOLT-rewritten wheels", ("wheelbolt",), 9_900_000_000)
"""bolt-wheel of MindSpore in the pipeline: the optimized build's venv (2.9 GB), the collection, profiles and the
rewritten wheel (1.1 GB), and the decision's two perf venvs, stock and rewritten (5.8 GB, under perf/venvs):
9.9 GB after run pipeline-stack-20261201b."""
IMAGE = Part("the image", ("images",), 2_200_000_000)
"""The base tarball (0.19 GB), the image's wheels (0.83 GB) and the OCI layout (1.0 GB): 2.1 GB in the same work
area."""


def tree_size(path: Path) -> int:
    """Allocated bytes below `path` (0 when it does not exist); symlinks not followed, hard links counted once."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for root, dirs, files in os.walk(path):
        for name in (*dirs, *files):
            try:
                st = os.lstat(os.path.join(root, name))
            except OSError:
                continue
            if (st.st_dev, st.st_ino) in seen:
                continue
            seen.add((st.st_dev, st.st_ino))
            total += st.st_blocks * 512
    return total


def needed(root: Path, parts: Iterable[Part]) -> list[tuple[Part, int]]:
    """Per part, the bytes it may still add: its measured size less what the work area already holds there."""
    return [(p, max(0, p.size - sum(tree_size(root / d) for d in p.dirs))) for p in parts]


def free_bytes(path: Path) -> int:
    """Free bytes for an unprivileged writer on the file system that holds `path` (or its nearest parent)."""
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return shutil.disk_usage(probe).free


def describe(root: Path, parts: Sequence[Part], *, free: int | None = None) -> str:
    """One line for a dry run: what the run may still write, per part, and what is free (reads sizes only)."""
    want = needed(root, parts)
    have = free_bytes(root) if free is None else free
    detail = ", ".join(f"{p.name} {n / GB:.1f} GB" for p, n in want)
    total = sum(n for _, n in want)
    verdict = "enough" if have >= total else "NOT enough: the run would stop before its first build"
    return f"disk: may still write {total / GB:.1f} GB under {root} ({detail}); {have / GB:.1f} GB free: {verdict}"


def check(root: Path, parts: Sequence[Part], *, free: int | None = None) -> None:
    """HostpgoError naming the shortfall when the work area's file system has less free than the parts may add."""
    want = needed(root, parts)
    total = sum(n for _, n in want)
    have = free_bytes(root) if free is None else free
    if have >= total:
        return
    detail = ", ".join(f"{p.name} {n / GB:.1f} GB" for p, n in want if n)
    raise HostpgoError(
        f"not enough free disk for this run: it may still write {total / GB:.1f} GB under {root} ({detail}; "
        f"measured sizes of a whole default run, less what is there), and the file system has {have / GB:.1f} GB "
        "free. Free space there, or move the work area to a larger disk with HOSTPGO_HOME=DIR; a run stopped "
        "by a full disk resumes from its stamps once there is room")
