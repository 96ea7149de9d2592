"""Reproducible image layers: what one step changed in a rootfs, written as a sorted tar with clamped mtimes
and numeric owners, gzip-compressed with no timestamp, so the same tree always gives the same digests.

A step's layer is found by comparing `snapshot`s of the rootfs taken before and after it (lstat of every
path: type, mode, owner, size, link target, and a regular file's mtime), the way an overlay file system
would see the step's writes: new and changed paths and the directories above them go in, removed ones
become OCI whiteouts (`.wh.NAME`). The comparison uses the real mtimes; only the tar carries clamped ones.

Each entry of the tar is normalized:
- entries sorted by path components (a directory's contents follow it);
- mtime clamped to the epoch (`min(mtime, SOURCE_DATE_EPOCH)`); uid/gid kept as numbers (the base has
  files of group shadow, mail...), user and group names empty;
- hard links inside one layer written once, then as links to the first path in sorted order;
- timestamp-mode pycs (PEP 552 flags 0) whose header holds their source's real mtime get the clamped
  mtime instead, so they stay valid when the image is unpacked (the source's mtime is clamped too);
- gzip header with mtime 0 and no file name, a fixed compression level.
Sockets are skipped and extended attributes are not carried (the base was extracted without them).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import stat
import tarfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from hostpgo.fsutil import move_into_place

from .model import ImageError

WHITEOUT_PREFIX = ".wh."
GZIP_LEVEL = 6
"""zlib level of every layer: fixed, since another level gives other bytes and another digest."""

Signature = tuple
"""A path's lstat signature: (type, mode, uid, gid, size, mtime_ns, rdev, link target)."""


@dataclass(frozen=True)
class LayerBlob:
    """One finished layer in an OCI layout."""

    name: str
    """`base`, `python`, `venv` or `runtime`."""
    comment: str
    """The config history entry's comment: what the step added."""
    digest: str
    """`sha256:...` of the compressed blob (the manifest's layer digest)."""
    diff_id: str
    """`sha256:...` of the uncompressed tar (the config's rootfs.diff_ids)."""
    size: int
    """Compressed size in bytes."""
    entries: int
    """Tar entries written (whiteouts included)."""

    def record(self) -> dict[str, object]:
        return {"name": self.name, "digest": self.digest, "diff_id": self.diff_id, "size": self.size,
                "entries": self.entries, "comment": self.comment}


def _sort_key(path: str) -> tuple[str, ...]:
    return tuple(path.split("/"))


def snapshot(root: Path) -> dict[str, Signature]:
    """{path relative to root: lstat signature} of everything under `root` (not following symlinks).

    Refuses a mount point inside the tree: /proc or /dev still mounted would put the host's files in a layer.
    """
    root = Path(root)
    out: dict[str, Signature] = {}

    def walk(d: Path, rel: str) -> None:
        with os.scandir(d) as it:
            entries = sorted(it, key=lambda e: e.name)
        for e in entries:
            r = f"{rel}/{e.name}" if rel else e.name
            st = e.stat(follow_symlinks=False)
            kind = stat.S_IFMT(st.st_mode)
            link = os.readlink(e.path) if kind == stat.S_IFLNK else ""
            # A directory's or symlink's mtime says only that something touched it, and with the kernel's
            # coarse clock two steps may leave the same value: compared, it would make layers depend on timing.
            mtime = st.st_mtime_ns if kind == stat.S_IFREG else None
            out[r] = (kind, stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid,
                      st.st_size if kind == stat.S_IFREG else 0, mtime, st.st_rdev, link)
            if kind == stat.S_IFDIR:
                if os.path.ismount(e.path):
                    raise ImageError(f"{e.path} is a mount point; unmount it before the layer is taken")
                walk(Path(e.path), r)

    walk(root, "")
    return out


def changes(before: Mapping[str, Signature], after: Mapping[str, Signature]) -> tuple[list[str], list[str]]:
    """(new or changed paths, removed paths) between two snapshots.

    Every directory above a changed or removed path is listed too (as docker's diffs do), so which
    directories a layer carries follows from the paths alone; a removed directory's contents are not listed
    again (its one whiteout hides them).
    """
    picked = {p for p, sig in after.items() if before.get(p) != sig}
    gone = sorted((p for p in before if p not in after), key=_sort_key)
    removed: list[str] = []
    for p in gone:
        if removed and p.startswith(removed[-1] + "/"):
            continue
        removed.append(p)
    for p in [*picked, *removed]:
        parts = p.split("/")
        picked.update("/".join(parts[:i]) for i in range(1, len(parts)))
    return sorted(picked, key=_sort_key), removed


def whiteout_name(path: str) -> str:
    head, _, base = path.rpartition("/")
    return f"{head}/{WHITEOUT_PREFIX}{base}" if head else f"{WHITEOUT_PREFIX}{base}"


def resolve_inside(root: Path, path: Path, hops: int = 40) -> Path | None:
    """`path` with its symlinks followed the way they resolve inside `root` (absolute targets from `root`),
    or None when a link dangles or loops."""
    for _ in range(hops):
        try:
            if not path.is_symlink():
                return path if path.exists() else None
            target = os.readlink(path)
        except OSError:
            return None
        path = root / target.lstrip("/") if target.startswith("/") else path.parent / target
    return None


def _pyc_with_clamped_source_mtime(data: bytes, root: Path, source: Path, epoch: int) -> bytes:
    """A timestamp-mode pyc rewritten to record its source's clamped mtime (unchanged otherwise). The source
    is stat'ed as the import will stat it in the image: symlinks followed inside `root` (Debian's
    sitecustomize.py links to /etc)."""
    if len(data) < 16 or int.from_bytes(data[4:8], "little") != 0:
        return data  # hash-based pycs do not record an mtime
    real = resolve_inside(root, source)
    if real is None:
        return data
    try:
        src_mtime = int(os.lstat(real).st_mtime)
    except OSError:
        return data
    if int.from_bytes(data[8:12], "little") != src_mtime & 0xFFFFFFFF:
        return data  # already stale on the build host: leave it as it is
    return data[:8] + (min(src_mtime, epoch) & 0xFFFFFFFF).to_bytes(4, "little") + data[12:]


def _pyc_source(root: Path, rel: str) -> Path | None:
    parts = rel.split("/")
    if len(parts) < 2 or parts[-2] != "__pycache__" or not parts[-1].endswith(".pyc"):
        return None
    return root.joinpath(*parts[:-2], parts[-1].split(".", 1)[0] + ".py")


class _Hashing(io.RawIOBase):
    """A write-only stream that hashes what passes through to `inner`."""

    def __init__(self, inner: BinaryIO) -> None:
        self.inner, self.sha, self.size = inner, hashlib.sha256(), 0

    def writable(self) -> bool:
        return True

    def write(self, b) -> int:  # type: ignore[override]
        b = bytes(b)
        self.sha.update(b)
        self.size += len(b)
        self.inner.write(b)
        return len(b)


def _tarinfo(root: Path, rel: str, epoch: int,
             first_link: dict[tuple[int, int], str]) -> tuple[tarfile.TarInfo, bytes | Path | None] | None:
    full = root / rel
    st = os.lstat(full)
    ti = tarfile.TarInfo(rel)
    ti.mode, ti.uid, ti.gid = stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid
    ti.uname = ti.gname = ""
    ti.mtime = min(int(st.st_mtime), epoch)
    data: bytes | Path | None = None
    if stat.S_ISREG(st.st_mode):
        ident = (st.st_dev, st.st_ino)
        if st.st_nlink > 1 and ident in first_link:
            ti.type, ti.linkname = tarfile.LNKTYPE, first_link[ident]
        else:
            if st.st_nlink > 1:
                first_link[ident] = rel
            ti.type, ti.size = tarfile.REGTYPE, st.st_size
            source = _pyc_source(root, rel)
            data = full
            if source is not None:
                data = _pyc_with_clamped_source_mtime(full.read_bytes(), root, source, epoch)
                ti.size = len(data)
    elif stat.S_ISDIR(st.st_mode):
        ti.type = tarfile.DIRTYPE
    elif stat.S_ISLNK(st.st_mode):
        ti.type, ti.linkname = tarfile.SYMTYPE, os.readlink(full)
    elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
        ti.type = tarfile.CHRTYPE if stat.S_ISCHR(st.st_mode) else tarfile.BLKTYPE
        ti.devmajor, ti.devminor = os.major(st.st_rdev), os.minor(st.st_rdev)
    elif stat.S_ISFIFO(st.st_mode):
        ti.type = tarfile.FIFOTYPE
    else:
        return None  # a socket: nothing to carry
    return ti, data


def write_layer(root: Path, paths: Sequence[str], removed: Sequence[str], dest_dir: Path, epoch: int,
                *, name: str, comment: str) -> LayerBlob:
    """Write the layer holding `paths` (relative to `root`) and whiteouts for `removed` as a gzip blob named
    by its digest in `dest_dir` (an OCI layout's blobs/sha256)."""
    dest_dir.mkdir(parents=True, exist_ok=True)
    tmp = dest_dir / f".layer-{name}.{os.getpid()}.tmp"
    whiteouts = {whiteout_name(p): p for p in removed}
    order = sorted([*paths, *whiteouts], key=_sort_key)
    first_link: dict[tuple[int, int], str] = {}
    count = 0
    try:
        with tmp.open("wb") as raw:
            compressed = _Hashing(raw)
            with gzip.GzipFile(filename="", mode="wb", fileobj=compressed, compresslevel=GZIP_LEVEL, mtime=0) as gz:
                plain = _Hashing(gz)  # type: ignore[arg-type]
                with tarfile.open(fileobj=plain, mode="w|", format=tarfile.PAX_FORMAT) as tar:  # type: ignore[arg-type]
                    for rel in order:
                        if rel in whiteouts:
                            ti = tarfile.TarInfo(rel)
                            ti.mode, ti.mtime, ti.uname, ti.gname = 0o644, epoch, "", ""
                            tar.addfile(ti, io.BytesIO(b""))
                            count += 1
                            continue
                        made = _tarinfo(root, rel, epoch, first_link)
                        if made is None:
                            continue
                        ti, data = made
                        if isinstance(data, Path):
                            with data.open("rb") as fh:
                                tar.addfile(ti, fh)
                        else:
                            tar.addfile(ti, io.BytesIO(data) if data is not None else None)
                        count += 1
        digest = "sha256:" + compressed.sha.hexdigest()
        blob = dest_dir / digest.split(":", 1)[1]
        move_into_place(tmp, blob)
    finally:
        tmp.unlink(missing_ok=True)
    return LayerBlob(name=name, comment=comment, digest=digest, diff_id="sha256:" + plain.sha.hexdigest(),
                     size=compressed.size, entries=count)


def commit_layer(root: Path, before: Mapping[str, Signature], dest_dir: Path, epoch: int, *, name: str,
                 comment: str) -> tuple[LayerBlob, dict[str, Signature]]:
    """The layer of everything that changed under `root` since `before`, and the snapshot to diff the next
    step against."""
    after = snapshot(root)
    changed, removed = changes(before, after)
    return write_layer(root, changed, removed, dest_dir, epoch, name=name, comment=comment), after
