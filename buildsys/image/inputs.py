"""Gathering an image's inputs: the installed build, its host settings, the runtime's requirements and the
Debian packages its libraries come from. This is where commands that only read facts run (the host settings
loader, ldd, dpkg -S); `plan` then runs none."""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hostenv import allocators as alloc_mod
from hostenv import settings as hostenv_settings
from hostpgo.runner import Runner, which

from ..core import manifest as manifest_mod
from ..core.paths import REPO_ROOT, WorkArea
from ..errors import HostpgoError
from ..targets.cpython import runtime_requirements
from ..toolchain import Host, detect_host
from .base import UNRESOLVED_PACKAGES, apt_sources, library_packages
from .model import IMAGE_TOOLS, AptSource, ImageError, ImageInputs


def image_requirements(pyproject: Path = REPO_ROOT / "pyproject.toml") -> tuple[str, ...]:
    """What the image's venv installs besides this project: its dependencies and its `runtime` extra."""
    try:
        base = tuple(tomllib.loads(pyproject.read_text())["project"].get("dependencies", ()))
    except (OSError, KeyError, tomllib.TOMLDecodeError) as e:
        raise ImageError(f"{pyproject}: cannot read [project] dependencies ({e})") from None
    return tuple(dict.fromkeys((*base, *runtime_requirements(pyproject))))


def check_host(which=which, euid: int | None = None, host: Host | None = None) -> None:
    """A Debian-like host, root and the image tools; the error names each missing command and its package."""
    host = host or detect_host()
    if (host.os_id not in ("debian", "ubuntu")) if host.os_id else not host.is_debian_like:
        raise ImageError(f"the image's base is made by mmdebstrap from the host's Debian/Ubuntu mirrors; this host "
                         f"is {host.os_id or 'unknown'}, for which no base builder is written yet")
    euid = os.geteuid() if euid is None else euid
    if euid != 0:
        raise ImageError("building an image needs root (mmdebstrap --mode=root, chroot, mounting /proc); "
                         "run `nox -s image` as root")
    missing = {cmd: pkg for cmd, pkg in IMAGE_TOOLS.items() if which(cmd) is None}
    if missing:
        raise ImageError(f"missing {', '.join(missing)}; install with: apt-get install -y "
                         f"{' '.join(sorted(set(missing.values())))}")


def resolve_settings(ref: str) -> tuple[str, dict[str, Any], tuple[Path, ...]]:
    """(name shipped in the image, resolved values, files to ship) for a host settings name or path,
    resolved and validated by hostenv's own loader (as the image's entrypoint will)."""
    try:
        settings = hostenv_settings.resolve(ref, env={})
    except HostpgoError as e:
        raise ImageError(f"--host-settings {ref}: {e}") from None
    shown = {"settings": settings.to_json()}
    files = sorted((REPO_ROOT / "profiles" / "host").glob("*.toml"))
    name = ref
    if "/" in ref or ref.endswith(".toml"):
        path = Path(ref).resolve()
        if any(f.name == path.name and f.resolve() != path for f in files):
            raise ImageError(f"--host-settings {ref}: its file name clashes with profiles/host/{path.name}; "
                             "rename the file (the image ships settings by name)")
        files = [f for f in files if f.name != path.name] + [path]
        name = path.stem
    return name, shown["settings"], tuple(files)


def prepare(build: str, *, settings: str = "default", tag: str | None = None, archive: Path | None = None,
            work: WorkArea | None = None, runner: Runner | None = None,
            host_check=check_host, sources: Sequence[AptSource] | None = None,
            scan_libraries: bool = True, wheels: Sequence[Path] = ()) -> ImageInputs:
    """The inputs of the image of installed build `build` (a profile name or a prefix path).

    `wheels` are rewritten wheels (bolt-wheel's kept ones) the venv installs instead of the stock builds.

    `scan_libraries=False` (a dry run) leaves the base's packages unresolved instead of running ldd and
    dpkg -S over the prefix and the runtime's dependencies; the plan then shows them as resolved at run time.
    """
    work = work or WorkArea.from_env()
    host_check()
    missing_wheels = [str(w) for w in wheels if not Path(w).is_file()]
    if missing_wheels:
        raise ImageError(f"wheel(s) to install in the image do not exist: {', '.join(missing_wheels)}")
    pattern = re.compile(r"cpython-\d+\.\d+\.\d+-" + re.escape(build) + "$")
    candidates = (sorted(p for p in work.install.glob("cpython-*") if pattern.match(p.name))
                  if "/" not in build else [Path(build)])
    if not candidates or not (candidates[-1] / manifest_mod.FILE_NAME).is_file():
        known = sorted(p.name for p in work.install.glob("cpython-*") if (p / manifest_mod.FILE_NAME).is_file())
        raise ImageError(f"--build {build}: no installed build with a manifest under {work.install} "
                         f"(installed: {', '.join(known) or 'none'}); build it first: "
                         f"python -m buildsys build cpython --profile {build}")
    prefix = candidates[-1].resolve()
    man = manifest_mod.read(prefix)
    opt = man.get("profile", {}).get("optimize", {})
    if opt.get("shared"):
        raise ImageError(f"--build {build}: profile {man['profile']['name']} builds a shared libpython whose "
                         f"RUNPATH is the host prefix ({prefix}/lib); the image relocates the interpreter, so it "
                         "ships static-libpython builds (optimize.shared = false), such as workload-pgo-lto")
    if "-instrumented" in prefix.name:
        raise ImageError(f"--build {build}: an instrumented build is not shipped; name the optimized profile")
    runner = runner or Runner(work.logs / "image" / f"prepare-{build}.log")
    sname, svalues, sfiles = resolve_settings(settings)
    minor = ".".join(str(man.get("version", "3.11")).split(".")[:2])
    reqs = image_requirements()
    deps = sorted(work.deps.glob(f"runtime-py{minor}-*"))
    if not deps:
        raise ImageError(f"no runtime dependencies installed under {work.deps} for Python {minor}; the image's "
                         f"library scan reads them: run `python -m buildsys build cpython --profile {build}` "
                         "(its runtime-deps stage installs them)")
    if scan_libraries:
        found, unresolved = library_packages([prefix, deps[-1]], runner)
    else:
        found, unresolved = None, {}
    notes = []
    if unresolved:
        notes.append(f"{len(unresolved)} sonames needed by shipped objects are missing on this host too "
                     f"(device plugins: {', '.join(sorted(unresolved)[:6])}...); recorded, not installed")
    if found is None:
        notes.append(f"base packages: {UNRESOLVED_PACKAGES} (a dry run runs neither); the keys of image-base "
                     "and the stages after it are provisional")
    table = alloc_mod.table()
    asked, linked = svalues.get("allocator", {}).get("name", "glibc"), opt.get("allocator", "glibc")
    if linked != "glibc" and asked != linked:
        raise ImageError(f"--host-settings {settings}: asks for allocator {asked!r}, but build {prefix.name} links "
                         f"{linked!r}, which cannot be unloaded; ship it with settings whose allocator.name is "
                         f"{linked!r} (e.g. --host-settings {linked}, profiles/host/{linked}.toml)")
    linked_pkg = str((man.get("allocator") or {}).get("package", ""))
    if linked_pkg.startswith(alloc_mod.BUILT_PACKAGE):
        raise ImageError(f"--build {build}: it links the hostpgo-built allocator {man['allocator'].get('library')} "
                         "through an absolute rpath, which the image does not relocate yet; ship a build that links "
                         "the distribution's allocator, or preload the hostpgo-built one with host settings "
                         "allocator.build")
    allocator_builds = []
    abuild = (svalues.get("allocator") or {}).get("build")
    if abuild:
        if "/" in abuild:
            raise ImageError(f"--host-settings {settings}: allocator.build = {abuild!r} is a path; name the build "
                             f"(a directory under {work.install}), so the image can ship it under its work area")
        try:
            alloc_mod.find_built(asked, abuild, install_root=work.install)
        except HostpgoError as e:
            raise ImageError(f"--host-settings {settings}: {e}") from None
        allocator_builds.append((work.install / abuild).resolve())
    wanted = {asked, linked}
    extra = sorted(table[a].packages["debian"] for a in wanted if a != "glibc" and a in table)
    verify = tuple(man.get("profile", {}).get("verify", {}).get("workloads", ())) or ("decode-b1",)
    stem = str(man.get("profile", {}).get("name", build))
    return ImageInputs(build=stem, build_id=str(man.get("build_id", prefix.name)), prefix=prefix,
                       build_manifest=man, settings_name=sname, settings=svalues, settings_files=sfiles,
                       packages=tuple(sorted(set(found) | set(extra))) if found is not None else None,
                       sources=tuple(sources) if sources is not None else apt_sources(),
                       requirements=reqs, work=work,
                       tag=tag or f"hostpgo/{stem}:{sname}", verify_workloads=verify,
                       unresolved=tuple(sorted(unresolved)), archive=archive,
                       notes=tuple(notes), allocator_builds=tuple(allocator_builds),
                       wheels=tuple(Path(w).resolve() for w in wheels))
