"""Memory allocators: the one table (hostenv/allocators.toml), discovery on a machine, install hints, link flags.

Both halves of hostpgo use this module: the build engine links the allocator a profile names
(`optimize.allocator`) into the interpreter, and host settings preload it (`allocator.name`) into an
interpreter hostpgo did not build. Every list of allocator names is `names()`, read from the table.

A machine is anything with `machine` (`x86_64`, `aarch64`) and `os_id` (the os-release ID), and optionally
`os_like` (ID_LIKE): the build engine's `Host` is one, `Platform.this()` reads this machine.
"""

from __future__ import annotations

import functools
import json
import platform
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Protocol

from hostpgo import runner
from hostpgo.fsutil import work_root

from .errors import AllocatorNotFound, HostSettingsError

FAMILIES = {"debian": "debian", "ubuntu": "debian", "openeuler": "openeuler"}
"""os-release ID (or an ID_LIKE word), lower-cased -> the distribution family the table records packages for."""
INSTALL = {"debian": "apt-get install -y {pkg}", "openeuler": "dnf install -y {pkg}"}
"""Family -> the command that installs a package."""
ROW_KEYS = {"sonames", "tunables", "packages"}
CHANNELS = ("GLIBC_TUNABLES", "MALLOC_CONF")
"""The tunables channels besides `env:PREFIX`."""


class MachineFacts(Protocol):
    """What allocator discovery needs to know about a machine."""

    machine: str
    os_id: str


@dataclass(frozen=True)
class Platform:
    """A machine as allocator discovery sees it."""

    machine: str
    """`x86_64` or `aarch64` (platform.machine())."""
    os_id: str
    """ID from /etc/os-release (debian, ubuntu, openEuler, ...); `unknown` when unreadable."""
    os_like: tuple[str, ...] = ()
    """ID_LIKE from /etc/os-release (ubuntu: `debian`)."""

    @classmethod
    def this(cls, os_release: Path = Path("/etc/os-release")) -> Platform:
        """This machine, from platform.machine() and the os-release file."""
        fields: dict[str, str] = {}
        try:
            for line in os_release.read_text().splitlines():
                k, sep, v = line.partition("=")
                if sep:
                    fields[k.strip()] = v.strip().strip('"')
        except OSError:
            pass
        return cls(platform.machine(), fields.get("ID", "") or "unknown", tuple(fields.get("ID_LIKE", "").split()))


@dataclass(frozen=True)
class AllocatorSpec:
    """One row of the allocator table."""

    name: str
    sonames: tuple[str, ...]
    """Shared objects to look for, preferred first; empty for the C library's own malloc."""
    tunables: str
    """How tunables reach it: `GLIBC_TUNABLES` (glibc.malloc.KEY=V joined by ':'), `MALLOC_CONF` (KEY:V joined by
    ','), or `env:PREFIX` (one variable PREFIX+KEY per tunable, KEY upper-cased)."""
    packages: Mapping[str, str]
    """Distribution family -> the package that ships the shared object."""


@dataclass(frozen=True)
class Allocator:
    """An allocator as found on a machine (what a build plan and its manifest record)."""

    name: str
    library: Path | None
    """The shared object (None: glibc, nothing to link or preload)."""
    package: str = ""
    """The distribution package that ships it ('' when none is recorded for the family)."""
    package_version: str = ""
    """Its installed version ('' when not asked or not known)."""

    @property
    def soname(self) -> str:
        return self.library.name if self.library else ""

    def to_json(self) -> dict[str, str]:
        return {"name": self.name, "library": str(self.library or ""), "package": self.package,
                "package_version": self.package_version}


def _read_table(text: str, where: str) -> dict[str, AllocatorSpec]:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise HostSettingsError(f"{where}: cannot read the allocator table: {exc}") from None
    out = {}
    for name, row in data.items():
        if not isinstance(row, dict) or set(row) != ROW_KEYS:
            raise HostSettingsError(f"{where}: [{name}] must have exactly the keys {', '.join(sorted(ROW_KEYS))}")
        channel = row["tunables"]
        if channel not in CHANNELS and not str(channel).startswith("env:"):
            raise HostSettingsError(f"{where}: [{name}] tunables = {channel!r}: not one of "
                                    f"{', '.join(CHANNELS)}, env:PREFIX")
        out[name] = AllocatorSpec(name, tuple(row["sonames"]), channel, dict(row["packages"]))
    return out


@functools.cache
def _packaged_table() -> dict[str, AllocatorSpec]:
    text = resources.files(__package__).joinpath("allocators.toml").read_text(encoding="utf-8")
    return _read_table(text, "hostenv/allocators.toml")


def table(path: Path | None = None) -> dict[str, AllocatorSpec]:
    """The allocator table (the packaged hostenv/allocators.toml, or `path`), name -> row, in file order."""
    if path is None:
        return dict(_packaged_table())
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise HostSettingsError(f"{path}: cannot read the allocator table: {exc.strerror}") from None
    return _read_table(text, str(path))


def names() -> tuple[str, ...]:
    """Every allocator name, in table order (`glibc` first)."""
    return tuple(_packaged_table())


def family(host: MachineFacts) -> str:
    """The distribution family of a machine (`debian`, `openeuler`), else its lower-cased os-release ID."""
    for ident in (host.os_id, *getattr(host, "os_like", ())):
        if ident.lower() in FAMILIES:
            return FAMILIES[ident.lower()]
    return host.os_id.lower() or "unknown"


def library_dirs(host: MachineFacts) -> tuple[Path, ...]:
    """The directories a machine's distribution installs shared libraries into, in search order."""
    multiarch = [f"/usr/lib/{host.machine}-linux-gnu", f"/lib/{host.machine}-linux-gnu"]
    common = ["/usr/lib64", "/lib64", "/usr/local/lib", "/usr/lib", "/lib"]
    dirs = multiarch + common if family(host) == "debian" else common + multiarch
    return tuple(Path(d) for d in dirs)


def install_hint(spec: AllocatorSpec, host: MachineFacts) -> str:
    """How to install an allocator on a machine: the package and its command, or what is recorded."""
    fam = family(host)
    pkg = spec.packages.get(fam)
    if pkg is None:
        known = ", ".join(f"{f}: {p}" for f, p in spec.packages.items()) or "none"
        return (f"no {fam} package is recorded for {spec.name} (recorded: {known}); install {spec.name} "
                "and give its shared object's path (host settings: allocator.library)")
    return f"install the {fam} package {pkg} ({INSTALL.get(fam, 'install package {pkg}').format(pkg=pkg)})"


def find(name: str, host: MachineFacts | None = None, *, dirs: Sequence[Path] | None = None,
         query_version: bool = True, key: str = "allocator.name") -> Allocator:
    """Allocator `name` on `host` (default: this machine): each soname in preference order, searched through
    `dirs` (default: `library_dirs(host)`). Raises AllocatorNotFound naming the package to install; `key` is
    the setting that asked for it, for the message."""
    specs = _packaged_table()
    if name not in specs:
        raise HostSettingsError(f"{key} = {name!r}: unknown allocator; known: {', '.join(specs)}")
    spec = specs[name]
    if not spec.sonames:
        return Allocator(name, None)
    host = host or Platform.this()
    search = tuple(dirs) if dirs is not None else library_dirs(host)
    for soname in spec.sonames:
        for d in search:
            cand = Path(d) / soname
            if cand.exists():
                pkg = spec.packages.get(family(host), "")
                return Allocator(name, cand, pkg, package_version(pkg, host) if query_version else "")
    raise AllocatorNotFound(f"{key} = {name!r}: none of {', '.join(spec.sonames)} found in "
                            f"{', '.join(map(str, search))}; {install_hint(spec, host)}")


def package_version(pkg: str, host: MachineFacts) -> str:
    """The installed version of a distribution package ('' where it cannot be asked)."""
    if not pkg:
        return ""
    if family(host) == "debian" and runner.which("dpkg-query"):
        argv = ["dpkg-query", "-W", "-f", "${Version}", pkg]
    elif runner.which("rpm"):
        argv = ["rpm", "-q", "--qf", "%{VERSION}-%{RELEASE}", pkg]
    else:
        return ""
    done = runner.capture(argv, check=False, timeout=60)
    return done.stdout.strip() if done.returncode == 0 else ""


def tunables_env(name: str, tunables: Sequence[tuple[str, str]], base: Mapping[str, str]) -> dict[str, str]:
    """The environment variables that carry an allocator's tunables (merged with what `base` already has)."""
    if not tunables:
        return {}
    channel = _packaged_table()[name].tunables
    if channel == "GLIBC_TUNABLES":
        items = [f"{k if k.startswith('glibc.') else 'glibc.malloc.' + k}={v}" for k, v in tunables]
        have = base.get("GLIBC_TUNABLES", "")
        return {"GLIBC_TUNABLES": ":".join(([have] if have else []) + items)}
    if channel == "MALLOC_CONF":
        items = [f"{k}:{v}" for k, v in tunables]
        have = base.get("MALLOC_CONF", "")
        return {"MALLOC_CONF": ",".join(([have] if have else []) + items)}
    prefix = channel.split(":", 1)[1]
    return {(k.upper() if k.upper().startswith(prefix) else prefix + k.upper()): v for k, v in tunables}


def soname_stems() -> tuple[str, ...]:
    """`libjemalloc.so`-style prefixes of every allocator's shared objects (to spot them in /proc/self/maps)."""
    return tuple(dict.fromkeys(s.split(".so")[0] + ".so" for spec in _packaged_table().values()
                               for s in spec.sonames))


def link_flags(alloc: Allocator) -> tuple[str, ...]:
    """Linker flags that make an interpreter depend on the allocator ahead of the C library.

    The shared object is named by path (no -dev package needed) between --no-as-needed guards, so
    it lands in DT_NEEDED before libc and its malloc serves every library the process loads.
    """
    if alloc.library is None:
        return ()
    flags = ("-Wl,--push-state,--no-as-needed", str(alloc.library), "-Wl,--pop-state")
    if alloc.package.startswith(BUILT_PACKAGE):
        # Built by hostpgo: DT_NEEDED records the soname only, so the loader must be told where the build is,
        # or it would find the distribution's copy of the same soname.
        flags += (f"-Wl,-rpath,{alloc.library.parent}",)
    return flags


def mapped_check(alloc: Allocator) -> tuple[str, ...]:
    """`python -c` code that fails unless the allocator is mapped into the running interpreter."""
    if alloc.library is None:
        return ()
    if alloc.package.startswith(BUILT_PACKAGE):  # the distribution's copy has the same soname: check the path
        want = str(alloc.library.resolve())
        code = (f"import sys; maps = open('/proc/self/maps').read(); "
                f"sys.exit(0 if {want!r} in maps else '{want} is not loaded: the interpreter did not find the "
                "hostpgo-built allocator')")
        return ("-c", code)
    code = (f"import sys; maps = open('/proc/self/maps').read(); "
            f"sys.exit(0 if {alloc.soname!r} in maps else "
            f"'{alloc.soname} is not loaded: the interpreter was not linked against it')")
    return ("-c", code)


BUILT_PACKAGE = "hostpgo:"
"""Allocator.package of a hostpgo-built allocator: `hostpgo:<build id>`."""
BUILD_MANIFEST = "hostpgo-manifest.json"
"""The manifest every hostpgo install prefix carries; a library target's names its shared object (`library`)."""


def find_built(name: str, build: str, *, install_root: Path | None = None, key: str = "allocator.build") -> Allocator:
    """A hostpgo-built allocator: `build` is the name of its install prefix under the work area's install
    directory (`mimalloc-2.0.9-workload-pgo-lto`, as `python -m buildsys build mimalloc` made it) or the prefix's
    path. Its manifest must be a build of allocator `name` and name a shared object that exists. Raises
    AllocatorNotFound saying how to build it."""
    if install_root is None:
        install_root = work_root() / "install"
    prefix = Path(build) if "/" in build else Path(install_root) / build
    manifest = prefix / BUILD_MANIFEST
    target = build.split("-", 1)[0] if "/" not in build else name
    try:
        doc = json.loads(manifest.read_text())
    except OSError:
        raise AllocatorNotFound(f"{key} = {build!r}: no {manifest}; build it first: python -m buildsys build "
                                f"{target} --profile PROFILE (installs {install_root}/{target}-VERSION-PROFILE)"
                                ) from None
    except ValueError as exc:
        raise HostSettingsError(f"{key} = {build!r}: {manifest} is not valid JSON ({exc})") from None
    made = doc.get("allocator")
    if made != name:
        raise HostSettingsError(f"{key} = {build!r}: {manifest} is a build of {made or doc.get('target')!r}, not "
                                f"of allocator {name!r}")
    library = Path(str(doc.get("library", "")))
    recorded = Path(str(doc.get("prefix", prefix)))
    if library.is_relative_to(recorded):  # the prefix may have moved (an image ships it elsewhere)
        library = prefix / library.relative_to(recorded)
    if not library.is_file():
        raise AllocatorNotFound(f"{key} = {build!r}: the library its manifest names, {library}, does not exist")
    return Allocator(name, library, f"{BUILT_PACKAGE}{doc.get('build_id', prefix.name)}", str(doc.get("version", "")))


def find_built_for_profile(name: str, ref: str, install_root: Path, *, key: str = "optimize.allocator_build"
                           ) -> Allocator:
    """optimize.allocator_build: `ref` is a profile name (the newest installed `<name>-<version>-<ref>` under
    `install_root`) or an install prefix's path."""
    if "/" in ref:
        return find_built(name, ref, install_root=install_root, key=key)
    builds = sorted(p.name for p in Path(install_root).glob(f"{name}-*-{ref}")
                    if (p / BUILD_MANIFEST).is_file() and p.name.split("-")[1][:1].isdigit())
    return find_built(name, builds[-1] if builds else f"{name}-VERSION-{ref}", install_root=install_root, key=key)
