"""Pinned, verified sources: the [sources] tables of each target's data (targets/NAME.toml), the order in which an
archive is found, and the `source` stage (fetch, verify, unpack, patch, publish) every target plans with."""

from __future__ import annotations

import os
import re
import shutil
import tarfile
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from hostpgo import fsutil
from hostpgo.fsutil import move_into_place

from ..core.paths import WorkArea
from ..core.stages import Call, Stage, StageContext, digest
from ..errors import HostpgoError, InputError, SourceError
from .patches import Patch, apply_series

ORDER = ("user", "cache", "apt", "dnf", "url")


@dataclass(frozen=True)
class PinnedSource:
    """One pinned release archive."""

    target: str
    version: str
    file: str
    """Upstream archive name; the cache keeps it under this name."""
    sha256: str
    url: str
    topdir: str
    """Directory the archive unpacks into."""
    deb_source: str | None = None
    deb_file: str | None = None
    rpm_source: str | None = None

    @property
    def names(self) -> tuple[str, ...]:
        """File names this archive may carry (upstream name, Debian orig name)."""
        return tuple(n for n in (self.file, self.deb_file) if n)


@dataclass(frozen=True)
class ResolvedSource:
    pinned: PinnedSource
    path: Path
    """The verified archive in the cache."""
    origin: str
    """How it was obtained: user, cache, apt, dnf or url."""


PIN_KEYS = ("file", "sha256", "url", "topdir", "deb_source", "deb_file", "rpm_source")


def load_table(target: str) -> dict[str, PinnedSource]:
    """version -> pinned archive, from the `[sources."VERSION"]` tables of the target's data file."""
    from ..targets import get
    spec = get(target)
    table = {}
    for version, entry in spec.sources.items():
        unknown = set(entry) - set(PIN_KEYS)
        if unknown:
            raise SourceError(f"{spec.data_file}: unknown key 'sources.{version}.{sorted(unknown)[0]}'; "
                              f"allowed: {', '.join(PIN_KEYS)}")
        table[version] = PinnedSource(target=target, version=version, **entry)
    return table


def pinned(target: str, version: str | None = None) -> PinnedSource:
    """The pinned archive of `target` at `version` (default: the newest pinned)."""
    table = load_table(target)
    if version is None:
        if not table:
            raise SourceError(f"no pinned source for target '{target}' (buildsys/targets/{target}.toml [sources])")
        version = max(table, key=lambda v: tuple(map(int, v.split("."))))
    try:
        return table[version]
    except KeyError:
        raise SourceError(f"no pinned source for {target} {version} (buildsys/targets/{target}.toml); pinned: "
                          f"{', '.join(table) or 'none'}") from None


sha256_of = fsutil.sha256_of


def _admit(candidate: Path, pin: PinnedSource, cache: Path, *, keep_candidate: bool) -> Path:
    """Verify `candidate` and publish it into the cache; a mismatching file is not kept."""
    cache.mkdir(parents=True, exist_ok=True)
    dest = cache / pin.file
    tmp = cache / f".{pin.file}.{os.getpid()}.part"
    if keep_candidate:
        shutil.copyfile(candidate, tmp)
    else:
        shutil.move(str(candidate), tmp)
    digest = sha256_of(tmp)
    if digest != pin.sha256:
        tmp.unlink()
        raise SourceError(f"checksum mismatch for {candidate}: sha256 {digest}, pinned {pin.sha256} "
                          f"({pin.target} {pin.version} in buildsys/targets/{pin.target}.toml); "
                          "the bad copy was deleted"
                          + ("" if keep_candidate else " (it was a download)"))
    return move_into_place(tmp, dest)


def from_user(pin: PinnedSource, source: Path) -> Path:
    """The archive the user pointed at: the file itself, or a known name inside a directory."""
    if source.is_dir():
        for name in pin.names:
            if (source / name).is_file():
                return source / name
        raise SourceError(f"--source {source}: directory holds none of {', '.join(pin.names)}")
    if not source.is_file():
        raise SourceError(f"--source {source}: no such file or directory")
    return source


def check_user_source(pin: PinnedSource, source: Path) -> Path:
    """--source checked when the inputs are prepared (so a dry run refuses it too): it must exist and its
    archive must have the pinned sha256. InputError naming the flag and the file."""
    try:
        path = from_user(pin, source)
    except SourceError as e:
        raise InputError(str(e)) from None
    got = sha256_of(path)
    if got != pin.sha256:
        raise InputError(f"--source {path}: sha256 {got}, pinned {pin.sha256} ({pin.target} {pin.version} in "
                         f"buildsys/targets/{pin.target}.toml); not the pinned archive")
    return path


def apt_private_sources(system_files: Sequence[Path]) -> str:
    """deb822 text with `Types: deb-src` for every `deb` entry of the machine's own apt sources."""
    stanzas: list[str] = []
    for path in system_files:
        if not path.is_file():
            continue
        text = path.read_text(errors="replace")
        if path.suffix == ".sources":
            for block in re.split(r"\n\s*\n", text):
                lines = [ln for ln in block.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
                fields = {ln.split(":", 1)[0].strip().lower(): ln for ln in lines if ":" in ln}
                if "types" not in fields or "deb" not in fields["types"].split(":", 1)[1].split():
                    continue
                if "enabled" in fields and fields["enabled"].split(":", 1)[1].strip().lower() == "no":
                    continue
                out = ["Types: deb-src" if ln.split(":", 1)[0].strip().lower() == "types" else ln
                       for ln in lines]
                stanzas.append("\n".join(out))
        else:
            for ln in text.splitlines():
                m = re.match(r"^\s*deb\s+(.*)$", ln)
                if not m:
                    continue
                rest = m.group(1).strip()
                opts = ""
                if rest.startswith("["):
                    opts, rest = rest[1:].split("]", 1)
                parts = rest.split()
                if len(parts) < 2:
                    continue
                uri, suite, comps = parts[0], parts[1], parts[2:]
                stanza = ["Types: deb-src", f"URIs: {uri}", f"Suites: {suite}"]
                if comps:
                    stanza.append(f"Components: {' '.join(comps)}")
                m2 = re.search(r"signed-by=(\S+)", opts)
                if m2:
                    stanza.append(f"Signed-By: {m2.group(1)}")
                stanzas.append("\n".join(stanza))
    return "\n\n".join(stanzas) + ("\n" if stanzas else "")


def apt_options(work: WorkArea) -> list[str]:
    """apt-get options pointing every list, state and cache path into the work area."""
    root = work.apt
    return ["-o", f"Dir::Etc::SourceList={root / 'sources.list'}",
            "-o", f"Dir::Etc::SourceParts={root / 'sources.list.d'}",
            "-o", f"Dir::State={root / 'state'}",
            "-o", f"Dir::State::Lists={root / 'state' / 'lists'}",
            "-o", f"Dir::Cache={root / 'cache'}",
            "-o", "APT::Sandbox::User=root",
            "-o", "Debug::NoLocking=1"]


def from_apt(pin: PinnedSource, work: WorkArea, runner,
             system_files: Sequence[Path] = (Path("/etc/apt/sources.list"),
                                                 *sorted(Path("/etc/apt/sources.list.d").glob("*.sources")),
                                                 *sorted(Path("/etc/apt/sources.list.d").glob("*.list")))) -> Path:
    """`apt-get source --download-only` through a private sources list and state dir (system apt untouched)."""
    if not pin.deb_source or not shutil.which("apt-get"):
        raise SourceError("apt-get source: not a Debian-like system or no Debian source package pinned")
    text = apt_private_sources(system_files)
    if not text:
        raise SourceError("apt-get source: no `deb` entries in the machine's apt sources to derive deb-src from")
    root = work.apt
    for d in ("sources.list.d", "state/lists/partial", "cache/archives/partial", "download"):
        (root / d).mkdir(parents=True, exist_ok=True)
    fsutil.write_text(root / "sources.list", "")
    fsutil.write_text(root / "sources.list.d" / "hostpgo-deb-src.sources", text)
    opts = apt_options(work)
    runner.run(["apt-get", *opts, "update"], timeout=900)
    download = root / "download"
    # Exit code 100 with the orig archive present happens when a mirror lacks the newest .dsc or
    # debian.tar.xz: we only need the upstream archive, and its sha256 is checked next.
    rc = runner.run(["apt-get", *opts, "source", "--download-only", pin.deb_source], cwd=download,
                    timeout=1800, ok_codes=(0, 100))
    got = download / (pin.deb_file or pin.file)
    if not got.is_file():
        raise SourceError(f"apt-get source {pin.deb_source} (exit code {rc}) did not produce {got.name} "
                          f"in {download}; see {runner.log_path}")
    return got


def from_dnf(pin: PinnedSource, work: WorkArea, runner) -> Path:
    """`dnf download --source` (openEuler/Fedora), then the archive out of the SRPM."""
    if not pin.rpm_source or not shutil.which("dnf"):
        raise SourceError("dnf download --source: dnf not present or no RPM source package pinned")
    dest = work.tmp / "dnf"
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    runner.run(["dnf", "download", "--source", f"--destdir={dest}", pin.rpm_source], timeout=1800)
    srpms = sorted(dest.glob("*.src.rpm"))
    if not srpms:
        raise SourceError(f"dnf download --source {pin.rpm_source} produced no .src.rpm in {dest}")
    runner.run(["sh", "-c", f"rpm2cpio {srpms[0]} | cpio -idm --quiet"], cwd=dest, timeout=600)
    for name in pin.names:
        if (dest / name).is_file():
            return dest / name
    raise SourceError(f"{srpms[0].name} does not carry {' or '.join(pin.names)} (the pinned archive)")


def from_url(pin: PinnedSource, work: WorkArea, runner) -> Path:
    work.tmp.mkdir(parents=True, exist_ok=True)
    dest = work.tmp / f"{pin.file}.download"
    try:
        with urllib.request.urlopen(pin.url, timeout=60) as resp, dest.open("wb") as out:
            shutil.copyfileobj(resp, out)
    except OSError as e:
        dest.unlink(missing_ok=True)
        raise SourceError(f"download of {pin.url} failed: {e}") from None
    return dest


def resolve(pin: PinnedSource, work: WorkArea, runner, *, user_source: Path | None = None,
            methods: dict[str, Callable[..., Path]] | None = None) -> ResolvedSource:
    """Find the pinned archive: --source, then the cache, apt-get source, dnf, the release URL."""
    fetchers = {"apt": from_apt, "dnf": from_dnf, "url": from_url}
    fetchers.update(methods or {})
    cache = work.sources
    if user_source is not None:
        found = from_user(pin, Path(user_source))
        return ResolvedSource(pin, _admit(found, pin, cache, keep_candidate=True), "user")
    cached = cache / pin.file
    failures: list[str] = []
    if cached.is_file():
        if sha256_of(cached) == pin.sha256:
            return ResolvedSource(pin, cached, "cache")
        cached.unlink()
        failures.append(f"cache: {cached} had the wrong sha256 and was deleted")
    for origin in ("apt", "dnf", "url"):
        try:
            got = fetchers[origin](pin, work, runner)
            return ResolvedSource(pin, _admit(got, pin, cache, keep_candidate=False), origin)
        except HostpgoError as e:
            failures.append(f"{origin}: {str(e).splitlines()[0]}")
    raise SourceError(f"could not obtain {pin.file} ({pin.target} {pin.version}):\n  " + "\n  ".join(failures)
                      + f"\nDownload it yourself and pass --source PATH (sha256 {pin.sha256})")


@dataclass(frozen=True)
class SourceStage:
    """The `source` stage of a build and what it publishes."""

    stage: Stage
    key: str
    tree: Path
    """The unpacked, patched top directory (what configure runs in)."""


def plan_stage(pin: PinnedSource, patch_series: Sequence[Patch], work: WorkArea, *,
               user_source: Path | None = None) -> SourceStage:
    """fetch + verify + unpack + patch, published by rename into work/src (pure: runs nothing now). The tree is
    shared by every profile's build of the same archive and patch set."""
    key = digest({"stage": "source", "sha256": pin.sha256, "topdir": pin.topdir,
                  "patches": [(x.name, x.sha256) for x in patch_series]})
    src_dir = work.src / f"{pin.target}-{pin.version}-{key[:12]}"

    def run(ctx: StageContext) -> None:
        if src_dir.is_dir():  # published by rename, so complete
            ctx.info.update({"archive": str(work.sources / pin.file), "origin": "unpacked tree present",
                             "sha256": pin.sha256})
            return
        got = resolve(pin, work, ctx.runner, user_source=user_source)
        ctx.info.update({"archive": str(got.path), "origin": got.origin, "sha256": pin.sha256})
        tmp = fsutil.scratch_dir(src_dir, "unpack")
        top = unpack(got.path, tmp, pin.topdir)
        apply_series(top, tuple(patch_series), ctx.runner)
        fsutil.move_into_place(tmp, src_dir)

    what = (f"resolve {pin.file} (sha256 {pin.sha256[:12]}…) from --source, cache, apt-get source {pin.deb_source}, "
            f"dnf, {pin.url}; unpack; apply {len(patch_series)} patch(es) {[x.name for x in patch_series]}; "
            f"rename into {src_dir}")
    stage = Stage("source", f"fetch, verify, unpack and patch {pin.file}", key, (Call(what, run),),
                  requires=(src_dir,))
    return SourceStage(stage, key, src_dir / pin.topdir)


def unpack(archive: Path, dest_parent: Path, topdir: str) -> Path:
    """Extract `archive` below `dest_parent`; returns the top directory. Refuses paths that escape."""
    with tarfile.open(archive) as tar:
        for member in tar.getmembers():
            name = Path(member.name)
            if name.is_absolute() or ".." in name.parts or (name.parts and name.parts[0] != topdir):
                raise SourceError(f"{archive}: member {member.name!r} is outside {topdir}/; refusing to unpack")
        tar.extractall(dest_parent, filter="data") if hasattr(tarfile, "data_filter") else tar.extractall(dest_parent)
    return dest_parent / topdir
