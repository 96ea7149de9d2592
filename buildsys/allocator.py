"""The allocator a built interpreter links against (optimize.allocator): the table, discovery, link flags."""

from __future__ import annotations

import shutil
import subprocess
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

from .errors import ProfileError, ToolchainError
from .toolchain import Host

TABLE = Path(__file__).with_name("allocators.toml")
FAMILIES = {"debian": "debian", "ubuntu": "debian", "openeuler": "openeuler", "openEuler": "openeuler"}
INSTALL = {"debian": "apt-get install -y {pkg}", "openeuler": "dnf install -y {pkg}"}


@dataclass(frozen=True)
class AllocatorSpec:
    """One row of buildsys/allocators.toml."""

    name: str
    sonames: tuple[str, ...]
    """Shared objects to look for, preferred first; empty for the C library's malloc."""
    tunables: str
    """How tunables reach it: GLIBC_TUNABLES, MALLOC_CONF or env:PREFIX."""
    packages: Mapping[str, str]
    """Distribution family -> package."""


@dataclass(frozen=True)
class Allocator:
    """The allocator chosen for a build, as found on this host (what the plan and manifest record)."""

    name: str
    library: Path | None
    """The shared object linked in (None: glibc, nothing linked)."""
    package: str = ""
    package_version: str = ""

    @property
    def soname(self) -> str:
        return self.library.name if self.library else ""

    def to_json(self) -> dict[str, str]:
        return {"name": self.name, "library": str(self.library or ""), "package": self.package,
                "package_version": self.package_version}


def table(path: Path = TABLE) -> dict[str, AllocatorSpec]:
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise ProfileError(f"{path}: cannot read the allocator table: {e}") from None
    out = {}
    for name, row in data.items():
        if set(row) != {"sonames", "tunables", "packages"}:
            raise ProfileError(f"{path}: [{name}] must have exactly the keys sonames, tunables, packages")
        out[name] = AllocatorSpec(name, tuple(row["sonames"]), row["tunables"], dict(row["packages"]))
    return out


def names() -> tuple[str, ...]:
    return tuple(table())


def family(host: Host) -> str:
    return FAMILIES.get(host.os_id, "debian" if host.is_debian_like else host.os_id or "unknown")


def library_dirs(host: Host) -> tuple[Path, ...]:
    multiarch = f"/usr/lib/{host.machine}-linux-gnu"
    return tuple(Path(d) for d in (multiarch, f"/lib/{host.machine}-linux-gnu", "/usr/lib64", "/lib64",
                                   "/usr/local/lib", "/usr/lib", "/lib"))


def install_hint(spec: AllocatorSpec, host: Host) -> str:
    fam = family(host)
    pkg = spec.packages.get(fam)
    if pkg is None:
        known = ", ".join(f"{f}: {p}" for f, p in spec.packages.items())
        return f"install {spec.name} from your distribution (packaged as {known})"
    return INSTALL.get(fam, "install package {pkg}").format(pkg=pkg)


def find(name: str, host: Host, *, dirs: Sequence[Path] | None = None, query_version: bool = True) -> Allocator:
    """Locate allocator `name` on this host; raises naming the package to install when it is missing."""
    specs = table()
    if name not in specs:
        raise ProfileError(f"optimize.allocator = {name!r}: unknown allocator; known: {', '.join(specs)}")
    spec = specs[name]
    if not spec.sonames:
        return Allocator(name, None)
    for soname in spec.sonames:
        for d in dirs if dirs is not None else library_dirs(host):
            cand = d / soname
            if cand.exists():
                pkg = spec.packages.get(family(host), "")
                return Allocator(name, cand, pkg, package_version(pkg, host) if query_version else "")
    raise ToolchainError(f"optimize.allocator = {name!r}: none of {', '.join(spec.sonames)} found in "
                         f"{', '.join(str(d) for d in (dirs or library_dirs(host)))}. Install it: "
                         f"{install_hint(spec, host)}")


def package_version(pkg: str, host: Host) -> str:
    """The installed version of a distribution package ('' where it cannot be asked)."""
    if not pkg:
        return ""
    if family(host) == "debian" and shutil.which("dpkg-query"):
        cmd = ["dpkg-query", "-W", "-f", "${Version}", pkg]
    elif shutil.which("rpm"):
        cmd = ["rpm", "-q", "--qf", "%{VERSION}-%{RELEASE}", pkg]
    else:
        return ""
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    return done.stdout.strip() if done.returncode == 0 else ""


def link_flags(alloc: Allocator) -> tuple[str, ...]:
    """Linker flags that make the interpreter depend on the allocator ahead of the C library.

    The shared object is named by path (no -dev package needed) between --no-as-needed guards, so
    it lands in DT_NEEDED before libc and its malloc serves every library the process loads.
    """
    if alloc.library is None:
        return ()
    return ("-Wl,--push-state,--no-as-needed", str(alloc.library), "-Wl,--pop-state")


def mapped_check(alloc: Allocator) -> tuple[str, ...]:
    """`python -c` code that fails unless the allocator is mapped into the running interpreter."""
    if alloc.library is None:
        return ()
    code = (f"import sys; maps = open('/proc/self/maps').read(); "
            f"sys.exit(0 if {alloc.soname!r} in maps else "
            f"'{alloc.soname} is not loaded: the interpreter was not linked against it')")
    return ("-c", code)
