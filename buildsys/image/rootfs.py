"""Working on an image's rootfs on the host: extracting the base, copying the prefix, chroot commands with
/proc and /dev mounted, and clearing scratch directories that dead runs left behind."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

from hostpgo.runner import Runner

from .model import EXCLUDE_FROM_PREFIX, ImageError


def extract_base(base_tar: Path, rootfs: Path, runner: Runner) -> None:
    """Unpack the base tarball into `rootfs` as it is: permissions and numeric owners kept."""
    rootfs.mkdir(parents=True, exist_ok=True)
    runner.run(["tar", "-xpf", str(base_tar), "-C", str(rootfs), "--numeric-owner"], timeout=1800)


def copy_prefix(prefix: Path, dest: Path, minor: str) -> None:
    """The installed prefix at `dest`, without CPython's test suite (symlinks and mtimes kept)."""
    skip = {str(prefix / e.format(minor=minor)) for e in EXCLUDE_FROM_PREFIX}

    def ignore(d: str, names: list[str]) -> list[str]:
        return [n for n in names if os.path.join(d, n) in skip]
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(prefix, dest, symlinks=True, ignore=ignore)


def unmount(target: Path, runner: Runner) -> bool:
    """Unmount `target` (lazily when a plain unmount fails); True when it is no longer a mount point."""
    if runner.capture(["umount", str(target)], check=False, timeout=60).returncode != 0:
        runner.capture(["umount", "-l", str(target)], check=False, timeout=60)
    return not os.path.ismount(target)


@contextlib.contextmanager
def mounted(rootfs: Path, runner: Runner) -> Iterator[None]:
    """/proc and /dev inside `rootfs` for the duration (MindSpore reads /proc; pip and Python need /dev)."""
    done: list[Path] = []
    try:
        for what, args in (("proc", ["-t", "proc", "proc"]), ("dev", ["--bind", "/dev"])):
            target = rootfs / what
            target.mkdir(exist_ok=True)
            runner.run(["mount", *args, str(target)], timeout=60)
            done.append(target)
        yield
    finally:
        for target in reversed(done):
            unmount(target, runner)


def chroot_argv(rootfs: Path, env: Mapping[str, str], argv: Sequence[str]) -> list[str]:
    """A command run inside `rootfs` with exactly `env` (nothing leaks in from the host's environment)."""
    return ["chroot", str(rootfs), "/usr/bin/env", "-i", *(f"{k}={v}" for k, v in env.items()), *argv]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale(images: Path, slug: str, runner: Runner | None = None, alive: Callable[[int], bool] = _alive,
                 pattern: str = ".{slug}-*.tmp", rootfs: str = "rootfs") -> list[Path]:
    """Scratch directories of this image left by runs that died (their pid is gone); a live run's are kept.

    A dead run may have died with /proc or /dev still mounted inside its rootfs: those are unmounted first,
    so removing the directory can never reach into the host's /dev.
    """
    runner = runner or Runner(None)
    removed = []
    for d in sorted(images.glob(pattern.format(slug=slug))):
        m = re.search(r"\.(\d+)(\.tmp)?$", d.name)
        if not m or alive(int(m.group(1))):
            continue
        for sub in (f"{rootfs}/proc", f"{rootfs}/dev"):
            if os.path.ismount(d / sub) and not unmount(d / sub, runner):
                raise ImageError(f"{d / sub} is still mounted; unmount it before building this image again")
        shutil.rmtree(d, ignore_errors=True)
        removed.append(d)
    return removed
