"""Atomic file writes and directory publication (a reader sees the old content or the new, never half), and where
the work area is."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any


def _temp_beside(path: Path, suffix: str = ".tmp") -> Path:
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    return Path(name)


def write_bytes(path: Path, data: bytes, *, mode: int | None = None) -> Path:
    """Write `data` to a temporary file beside `path`, then rename it over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_beside(path)
    try:
        tmp.write_bytes(data)
        os.chmod(tmp, 0o644 if mode is None else mode)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def write_text(path: Path, text: str, *, mode: int | None = None) -> Path:
    """Atomic `Path.write_text` (UTF-8)."""
    return write_bytes(path, text.encode("utf-8"), mode=mode)


def write_json(path: Path, obj: Any, *, indent: int | None = 2, sort_keys: bool = False) -> Path:
    """Atomic JSON file with a trailing newline; values JSON cannot hold are written with str()."""
    return write_text(path, json.dumps(obj, indent=indent, sort_keys=sort_keys, default=str) + "\n")


def move_into_place(tmp: Path, dest: Path) -> Path:
    """Rename a finished file or directory made beside `dest` onto it (a file is replaced atomically;
    an existing directory is moved aside first and removed after)."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    if Path(tmp).is_dir() and dest.exists() and not dest.is_symlink():
        old = dest.with_name(dest.name + f".old-{os.getpid()}")
        os.replace(dest, old)
        os.replace(tmp, dest)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, dest)
    return dest


def scratch_dir(dest: Path, tag: str = "tmp") -> Path:
    """A fresh empty directory beside `dest` (same file system, so `move_into_place` is a rename)."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{dest.name}.{tag}.", dir=dest.parent))


def sha256_of(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks (archives and wheels are not read into memory whole)."""
    h = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


WORK_ENV = "HOSTPGO_HOME"
"""The environment variable that moves the work area."""


def work_root(environ: Mapping[str, str] | None = None) -> Path:
    """The work area's root: $HOSTPGO_HOME, else `.hostpgo` in the current directory (resolved). The one rule,
    read by buildsys (WorkArea) and hostenv (hostpgo-built allocators under its install directory)."""
    env = os.environ if environ is None else environ
    home = env.get(WORK_ENV)
    return (Path(home) if home else Path.cwd() / ".hostpgo").resolve()
