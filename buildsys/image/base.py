"""The base rootfs: the host's apt sources, the mmdebstrap command, and the Debian packages that provide the
shared libraries the interpreter and the runtime's wheels load (found with ldd, mapped with `dpkg -S`)."""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path

from hostpgo.runner import Runner

from .model import AptSource, ImageError

BASE_VARIANT = "minbase"
UNRESOLVED_PACKAGES = "<to be resolved at run time: ldd of the prefix and runtime deps, dpkg -S of each library>"
"""What a dry run shows in place of the package list (it runs no ldd/dpkg)."""


def apt_sources(etc: Path = Path("/etc/apt")) -> tuple[AptSource, ...]:
    """The host's binary package sources (deb822 `.sources` and one-line `.list`), in file order."""
    found: list[AptSource] = []
    files = ([etc / "sources.list"] if (etc / "sources.list").is_file() else []) + \
        sorted((etc / "sources.list.d").glob("*.list")) + sorted((etc / "sources.list.d").glob("*.sources"))
    for f in files:
        text = f.read_text(errors="replace")
        if f.suffix == ".sources":
            for block in re.split(r"\n\s*\n", text):
                fields: dict[str, str] = {}
                for ln in block.splitlines():
                    if ln.strip().startswith("#") or ":" not in ln:
                        continue
                    k, v = ln.split(":", 1)
                    fields[k.strip().lower()] = v.strip()
                if "deb" not in fields.get("types", "").split() or fields.get("enabled", "yes") == "no":
                    continue
                for uri in fields.get("uris", "").split():
                    for suite in fields.get("suites", "").split():
                        found.append(AptSource(uri, suite, tuple(fields.get("components", "main").split())))
        else:
            for ln in text.splitlines():
                parts = re.sub(r"\[[^]]*\]", "", ln).split()
                if len(parts) >= 3 and parts[0] == "deb":
                    found.append(AptSource(parts[1], parts[2], tuple(parts[3:]) or ("main",)))
    return tuple(found)


def base_suite(sources: Sequence[AptSource]) -> str:
    """The release the base is made of: the first source's suite without -updates/-security."""
    if not sources:
        raise ImageError("no `deb` entries in /etc/apt/sources.list or /etc/apt/sources.list.d/; the image's "
                         "base is made from the host's own Debian mirrors")
    return re.sub(r"-(updates|security|backports)$", "", sources[0].suite)


def include_option(packages: Sequence[str] | None) -> str:
    """mmdebstrap's `--include=`: the packages, or libc-bin (always in minbase) when there are none."""
    if packages is None:
        return f"--include={UNRESOLVED_PACKAGES}"
    return f"--include={','.join(packages) if packages else 'libc-bin'}"


def base_command(suite: str, packages: Sequence[str] | None, dest: Path, source_lines: Sequence[str]) -> list[str]:
    """The mmdebstrap command that makes the base tarball (run with SOURCE_DATE_EPOCH set); the plan shows
    exactly this list."""
    return ["mmdebstrap", "--mode=root", f"--variant={BASE_VARIANT}", "--format=tar", include_option(packages),
            suite, str(dest), *source_lines]


# ------------------------------------------------------------------------------ the library scan


def parse_ldd(text: str) -> tuple[dict[str, str], list[str]]:
    """`ldd` output -> ({soname: resolved path}, [sonames not found])."""
    found: dict[str, str] = {}
    missing: list[str] = []
    for ln in text.splitlines():
        ln = ln.strip()
        if "=>" in ln:
            name, rest = (s.strip() for s in ln.split("=>", 1))
            if rest.startswith("not found"):
                missing.append(name)
            else:
                path = rest.split(" (")[0].strip()
                if path:
                    found[name] = path
        elif ln.startswith("/"):
            found[os.path.basename(ln.split(" (")[0])] = ln.split(" (")[0]
    return found, missing


def is_elf(path: Path) -> bool:
    try:
        with path.open("rb") as fh:
            return fh.read(4) == b"\x7fELF"
    except OSError:
        return False


def elf_files(roots: Sequence[Path]) -> list[Path]:
    """Regular ELF files under the roots (symlinks skipped: their targets are scanned)."""
    out = []
    for root in roots:
        for dirpath, _dirs, files in os.walk(root):
            for f in files:
                p = Path(dirpath) / f
                if not p.is_symlink() and (f.endswith(".so") or ".so." in f or os.access(p, os.X_OK)) and is_elf(p):
                    out.append(p)
    return sorted(out)


def owning_package(path: str, runner: Runner) -> str | None:
    """The Debian package that installed `path` (trying the merged-/usr twin too), or None."""
    candidates = [path, os.path.realpath(path)]
    for p in list(candidates):
        if p.startswith("/usr/lib/"):
            candidates.append(p[len("/usr"):])
        elif p.startswith("/lib"):
            candidates.append("/usr" + p)
    for p in dict.fromkeys(candidates):
        done = runner.capture(["dpkg", "-S", p], check=False, timeout=120)
        if done.returncode == 0 and done.stdout.strip():
            return done.stdout.split(":", 1)[0].split(",")[0].strip()
    return None


def library_packages(roots: Sequence[Path], runner: Runner) -> tuple[tuple[str, ...], dict[str, list[str]]]:
    """Debian packages owning the libraries the ELF files under `roots` load from outside the roots.

    Returns (sorted packages, {soname ldd cannot find here: [files needing it]}).
    Libraries missing on this host too (MindSpore's Ascend/GPU plugins need CANN, MPI) are recorded, not
    installed: the image is then no less complete than the host that verified the build. A library found
    outside the roots that no package owns is an error naming it: the image could not provide it.
    """
    inside = tuple(str(r.resolve()) + os.sep for r in roots)
    libs: dict[str, str] = {}
    unresolved: dict[str, list[str]] = {}
    for f in elf_files(roots):
        done = runner.capture(["ldd", str(f)], check=False, timeout=120)
        if done.returncode != 0:  # "not a dynamic executable": static objects need nothing
            continue
        found, missing = parse_ldd(done.stdout)
        for name in missing:
            unresolved.setdefault(name, []).append(str(f))
        for path in found.values():
            if not os.path.realpath(path).startswith(inside):
                libs.setdefault(path, "")
    problems = []
    for path in list(libs):
        pkg = owning_package(path, runner)
        if pkg is None:
            problems.append(f"{path} is loaded but no Debian package owns it (install it from a package, "
                            "or it cannot be put in the image)")
        else:
            libs[path] = pkg
    if problems:
        raise ImageError("the image would miss shared libraries:\n  " + "\n  ".join(problems[:20]))
    return tuple(sorted(set(libs.values()))), unresolved
