"""Patches from patches/<target>/<version>/NNNN-<what>.patch, applied in order; a failure names patch and hunk."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

from ..core.paths import PATCHES_DIR
from ..errors import PatchError

PATCH_NAME = re.compile(r"^\d{4}-[A-Za-z0-9._-]+\.patch$")


@dataclass(frozen=True)
class Patch:
    path: Path
    sha256: str

    @property
    def name(self) -> str:
        return self.path.name


def series(target: str, version: str, patches_dir: Path = PATCHES_DIR) -> tuple[Patch, ...]:
    """The ordered patch series for a target version (empty if the directory has none)."""
    d = patches_dir / target / version
    if not d.is_dir():
        return ()
    out = []
    for p in sorted(d.iterdir()):
        if p.name.startswith(".") or p.name in ("README", "README.md", "series"):
            continue
        if not PATCH_NAME.match(p.name):
            raise PatchError(f"{p}: patch files must be named NNNN-<what>.patch (e.g. 0001-fix-foo.patch)")
        out.append(Patch(p, hashlib.sha256(p.read_bytes()).hexdigest()))
    return tuple(out)


def failed_hunks(output: str) -> list[str]:
    """`file: Hunk #N FAILED at L` lines from GNU patch output (plus files it could not find)."""
    current = "?"
    failures = []
    for line in output.splitlines():
        m = re.match(r"^(?:patching|checking) file (.+)$", line)
        if m:
            current = m.group(1).strip().strip("'")
            continue
        m = re.match(r"^Hunk #(\d+) FAILED at (\d+)", line)
        if m:
            failures.append(f"{current}: hunk #{m.group(1)} FAILED at line {m.group(2)}")
            continue
        if "can't find file to patch" in line or "No file to patch" in line:
            failures.append(f"{current}: file to patch not found")
        if "Reversed (or previously applied) patch detected" in line:
            failures.append(f"{current}: already applied (reversed patch detected)")
    return failures


def apply_series(tree: Path, patches: tuple[Patch, ...], runner) -> None:
    """Apply each patch with `patch -p1` in order; raise PatchError naming the patch and its failed hunks."""
    for patch in patches:
        lines: list[str] = []
        rc = runner.run(["patch", "-p1", "--forward", "--batch", "--no-backup-if-mismatch",
                         "-i", str(patch.path)], cwd=tree, ok_codes=(0, 1, 2), collect=lines, timeout=300)
        if rc != 0:
            hunks = failed_hunks("\n".join(lines)) or ["(patch gave no hunk detail; see the log)"]
            raise PatchError(f"patch {patch.path} did not apply to {tree.name}:\n  " + "\n  ".join(hunks)
                             + f"\n  log: {runner.log_path}\n  Fix or regenerate the patch against "
                             f"{tree.name}, or remove it from {patch.path.parent}")
