"""Toolchain detection: Bisheng, upstream clang, GCC, their companion tools, and the host's CPU tuning (the
package also holds the flag table per family, `flags`, the profile model, `profile`, and probed host `facts`)."""

from __future__ import annotations

import glob
import os
import platform
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from hostpgo.errors import CommandError
from hostpgo.runner import capture

from ..errors import ToolchainError

FAMILIES = ("bisheng", "clang", "gcc")
LLVM_VERSION = 22
LLVM_PACKAGES = (f"clang-{LLVM_VERSION}", f"lld-{LLVM_VERSION}", f"llvm-{LLVM_VERSION}", f"bolt-{LLVM_VERSION}")
# What CPython needs to build its optional modules, so baseline and optimized builds have the same set.
CPYTHON_BUILD_DEPS = ("build-essential", "pkg-config", "libbz2-dev", "libffi-dev", "liblzma-dev",
                      "libncurses-dev", "libreadline-dev", "libsqlite3-dev", "libssl-dev",
                      "zlib1g-dev", "uuid-dev", "libgdbm-dev")
# What `python -m buildsys image` runs: the Debian base (mmdebstrap), the OCI layout (umoci), docker-archive (skopeo).
IMAGE_PACKAGES = ("mmdebstrap", "umoci", "skopeo")
# What the library targets' build systems run: CMake (mimalloc), autoreconf/libtoolize (gperftools' tcmalloc).
TARGET_TOOL_PACKAGES = ("cmake", "autoconf", "automake", "libtool")
# What candidate rebuilds compile through with optimize.compiler_cache = "ccache" (same name on Debian and dnf).
CACHE_PACKAGES = ("ccache",)
# MIDR_EL1 part numbers of HiSilicon (implementer 0x48) cores and the -mcpu name for each.
KUNPENG_PARTS = {0xD01: "tsv110", 0xD02: "hip09"}
HISILICON_IMPLEMENTER = 0x48
# Companion tools per LLVM-based family: role -> base executable name.
LLVM_TOOLS = {"profdata": "llvm-profdata", "ar": "llvm-ar", "ranlib": "llvm-ranlib", "nm": "llvm-nm",
              "lld": "ld.lld", "bolt": "llvm-bolt", "merge-fdata": "merge-fdata"}
GCC_TOOLS = {"ar": "gcc-ar", "ranlib": "gcc-ranlib", "nm": "gcc-nm", "gcov-tool": "gcov-tool"}


@dataclass(frozen=True)
class Compiler:
    """One C/C++ compiler pair and the companion tools found next to it."""

    family: str
    """`bisheng`, `clang` or `gcc`."""
    cc: str
    """Absolute path of the C compiler."""
    cxx: str | None
    """Absolute path of the matching C++ compiler, if found."""
    version: str
    """Dotted version, e.g. `22.1.8`."""
    version_text: str
    """First line of `cc --version`: the toolchain identity recorded in stamps and manifests."""
    tools: dict[str, str] = field(default_factory=dict)
    """Companion tools by role (`profdata`, `ar`, `lld`, `bolt`, ...) -> absolute path."""

    @property
    def major(self) -> int:
        return int(self.version.split(".")[0])

    def identity(self) -> dict[str, object]:
        return {"family": self.family, "cc": self.cc, "cxx": self.cxx, "version": self.version,
                "version_text": self.version_text, "tools": dict(sorted(self.tools.items()))}


@dataclass(frozen=True)
class Host:
    """The machine we build on: arch, OS family, and the CPU tuning a profile's `arch = "host"` means."""

    machine: str
    """`x86_64` or `aarch64` (platform.machine())."""
    os_id: str
    """ID from /etc/os-release (debian, ubuntu, openEuler, fedora, ...)."""
    kunpeng: str | None = None
    """Kunpeng -mcpu name from the MIDR part (tsv110 for Kunpeng 920, hip09), if any."""

    @property
    def host_tuning(self) -> str:
        """The flag `arch = "host"` resolves to on this machine."""
        if self.machine == "aarch64":
            return f"-mcpu={self.kunpeng}" if self.kunpeng else "-mcpu=native"
        return "-march=native"

    @property
    def is_debian_like(self) -> bool:
        return self.os_id in ("debian", "ubuntu") or Path("/etc/debian_version").exists()


@dataclass(frozen=True)
class Toolchains:
    """Everything detected: compilers per family (newest first) and the host."""

    host: Host
    compilers: tuple[Compiler, ...]

    def find(self, family: str) -> Compiler | None:
        for c in self.compilers:
            if c.family == family:
                return c
        return None


def kunpeng_from_cpuinfo(text: str) -> str | None:
    """Kunpeng -mcpu name from /proc/cpuinfo text, via the `CPU implementer` and `CPU part` fields."""
    implementer = re.search(r"^CPU implementer\s*:\s*(0x[0-9a-fA-F]+)", text, re.M)
    part = re.search(r"^CPU part\s*:\s*(0x[0-9a-fA-F]+)", text, re.M)
    if not part:
        return None
    if implementer and int(implementer.group(1), 16) != HISILICON_IMPLEMENTER:
        return None
    return KUNPENG_PARTS.get(int(part.group(1), 16))


def detect_host(cpuinfo: Path = Path("/proc/cpuinfo"), os_release: Path = Path("/etc/os-release")) -> Host:
    machine = platform.machine()
    os_id = ""
    if os_release.exists():
        m = re.search(r'^ID="?([^"\n]+)"?', os_release.read_text(), re.M)
        os_id = m.group(1) if m else ""
    kunpeng = None
    if machine == "aarch64" and cpuinfo.exists():
        kunpeng = kunpeng_from_cpuinfo(cpuinfo.read_text(errors="replace"))
    return Host(machine=machine, os_id=os_id, kunpeng=kunpeng)


def _bisheng_line(out: str) -> str:
    for line in out.splitlines():
        if "bisheng" in line.lower():
            return line.strip()
    return out.splitlines()[0]


def classify(version_output: str) -> str:
    """Family from `--version` output: BiSheng wins over clang; GCC otherwise."""
    low = version_output.lower()
    if "bisheng" in low:
        return "bisheng"
    if "clang" in low:
        return "clang"
    return "gcc"


def _clang_candidates(path_env: str) -> list[str]:
    """clang executables on PATH: clang-N newest first, then plain clang, then Bisheng install dirs."""
    found: dict[str, int] = {}
    for d in path_env.split(os.pathsep):
        for p in glob.glob(os.path.join(d, "clang-[0-9]*")):
            m = re.fullmatch(r"clang-(\d+)", os.path.basename(p))
            if m and os.access(p, os.X_OK):
                found.setdefault(os.path.realpath(p) + "|" + p, int(m.group(1)))
    ordered = [k.split("|", 1)[1] for k, _ in sorted(found.items(), key=lambda kv: -kv[1])]
    plain = shutil.which("clang", path=path_env)
    if plain:
        ordered.append(plain)
    for pattern in ("/opt/*bisheng*/bin/clang", "/opt/*BiSheng*/bin/clang", "/usr/local/*bisheng*/bin/clang",
                    "/opt/compiler/*bisheng*/bin/clang"):
        ordered.extend(sorted(glob.glob(pattern)))
    return ordered


def _gcc_candidates(path_env: str) -> list[str]:
    found: list[tuple[int, str]] = []
    for d in path_env.split(os.pathsep):
        for p in glob.glob(os.path.join(d, "gcc-[0-9]*")):
            m = re.fullmatch(r"gcc-(\d+)", os.path.basename(p))
            if m and os.access(p, os.X_OK):
                found.append((int(m.group(1)), p))
    ordered = [p for _, p in sorted(found, reverse=True)]
    plain = shutil.which("gcc", path=path_env)
    if plain:
        ordered.append(plain)
    return ordered


def _companion(cc: str, family: str, path_env: str) -> tuple[str | None, dict[str, str]]:
    """The C++ driver and the companion tools matching compiler `cc`."""
    base = os.path.basename(cc)
    ccdir = os.path.dirname(cc)
    suffix = ""
    m = re.fullmatch(r"(?:clang|gcc)(-\d+)", base)
    if m:
        suffix = m.group(1)
    real_dir = os.path.dirname(os.path.realpath(cc))

    def look(name: str) -> str | None:
        for cand in (os.path.join(ccdir, name + suffix), os.path.join(ccdir, name),
                     os.path.join(real_dir, name)):
            if os.access(cand, os.X_OK) and not os.path.isdir(cand):
                return cand
        return shutil.which(name + suffix, path=path_env) if suffix else None

    if family == "gcc":
        cxx = look("g++")
        tools = {role: p for role, name in GCC_TOOLS.items() if (p := look(name))}
    else:
        cxx = look("clang++")
        tools = {role: p for role, name in LLVM_TOOLS.items() if (p := look(name))}
    return cxx, tools


def describe_compiler(cc: str, path_env: str | None = None) -> Compiler | None:
    path_env = path_env if path_env is not None else os.environ.get("PATH", "")
    cc_path = cc if os.sep in cc else shutil.which(cc, path=path_env)
    if not cc_path:
        return None
    try:
        out = capture([cc_path, "--version"], timeout=30, check=False).stdout
    except CommandError:  # not executable, or it hung
        return None
    if not out:
        return None
    family = classify(out)
    # For BiSheng the underlying clang version is what min_version compares against.
    m = re.search(r"clang version (\d+\.\d+(?:\.\d+)?)", out) if family == "bisheng" else None
    m = m or re.search(r"(\d+\.\d+(?:\.\d+)?)", out.splitlines()[0])
    if not m:
        return None
    cxx, tools = _companion(cc_path, family, path_env)
    text = _bisheng_line(out) if family == "bisheng" else out.splitlines()[0].strip()
    return Compiler(family=family, cc=cc_path, cxx=cxx, version=m.group(1), version_text=text, tools=tools)


def detect(environ: dict[str, str] | None = None) -> Toolchains:
    """Find every usable compiler: CC (if set) first, then clang-N newest first, Bisheng dirs, then GCC."""
    env = os.environ if environ is None else environ
    path_env = env.get("PATH", "")
    seen: set[str] = set()
    compilers: list[Compiler] = []
    candidates = []
    if env.get("CC"):
        candidates.append(env["CC"].split()[0])
    candidates += _clang_candidates(path_env) + _gcc_candidates(path_env)
    for cand in candidates:
        real = os.path.realpath(shutil.which(cand, path=path_env) or cand)
        if real in seen:
            continue
        seen.add(real)
        comp = describe_compiler(cand, path_env)
        if comp is not None:
            compilers.append(comp)
    return Toolchains(host=detect_host(), compilers=tuple(compilers))


PURPOSES = ("pipeline", "tests", "measure")
"""What a machine is set up for: `pipeline` builds CPython and images; `tests` runs the test suite; `measure`
is what the pipeline's measurement runs (cachegrind counters, perf attribution)."""
MEASURE_PACKAGES = {"debian": ("valgrind", "linux-perf"), "dnf": ("valgrind", "perf")}
TEST_TOOL_PACKAGES = ("build-essential", "valgrind", "linux-perf", "umoci", "cmake", "bazel-bootstrap", "ccache")
"""Beside LLVM, what the tests run for real: gcc fixtures, cachegrind counters, perf's probe and
attribution, umoci unpacking the image fixtures, CMake and Bazel 4 building the MindSpore and Ray fixture trees
(the allocator packages come from hostenv's table; ccache for the compiler-wrapper fixture)."""


def wanted_packages(host: Host, purpose: str = "pipeline") -> tuple[str, ...]:
    """The distribution packages a purpose needs on this host (Debian/Ubuntu names, or dnf names)."""
    if purpose not in PURPOSES:
        raise ToolchainError(f"--for {purpose!r}: choose one of {', '.join(PURPOSES)}")
    from hostenv import allocators

    fam = allocators.family(host)
    alloc = tuple(dict.fromkeys(p for spec in allocators.table().values() if (p := spec.packages.get(fam))))
    if purpose == "measure":
        return MEASURE_PACKAGES["debian" if host.is_debian_like else "dnf"]
    if host.is_debian_like:
        if purpose == "tests":
            return (*LLVM_PACKAGES, *TEST_TOOL_PACKAGES, *alloc)
        return (*LLVM_PACKAGES, *CPYTHON_BUILD_DEPS, *TARGET_TOOL_PACKAGES, *CACHE_PACKAGES, *IMAGE_PACKAGES)
    base = ("clang", "lld", "llvm", "llvm-bolt", "gcc", "make")
    if purpose == "tests":
        return (*base, "valgrind", "perf", *alloc)
    return (*base, "bzip2-devel", "libffi-devel", "xz-devel", "ncurses-devel", "readline-devel",
            "sqlite-devel", "openssl-devel", "zlib-devel", "libuuid-devel", "gdbm-devel", *CACHE_PACKAGES)


def missing_packages(host: Host, purpose: str = "pipeline") -> list[str]:
    """On Debian/Ubuntu: which of `wanted_packages(host, purpose)` dpkg does not list as installed."""
    if not host.is_debian_like or not shutil.which("dpkg-query"):
        return []
    wanted = list(wanted_packages(host, purpose))
    done = capture(["dpkg-query", "-W", "-f=${Package} ${db:Status-Abbrev}\n", *wanted], timeout=60, check=False)
    installed = {ln.split()[0].split(":")[0] for ln in done.stdout.splitlines()
                 if len(ln.split()) > 1 and ln.split()[1].startswith("ii")}
    return [p for p in wanted if p not in installed]


def install_command(host: Host, purpose: str = "pipeline") -> list[str]:
    """The exact package-manager command that installs what `purpose` needs on this host."""
    manager = ["apt-get", "install", "-y"] if host.is_debian_like else ["dnf", "install", "-y"]
    return [*manager, *wanted_packages(host, purpose)]


def install_hint(host: Host, purpose: str = "pipeline") -> str:
    return " ".join(install_command(host, purpose))


def install(host: Host, runner, purpose: str = "pipeline") -> None:
    """Install what `purpose` needs with the system package manager (root only); nothing when all is there."""
    if host.is_debian_like and shutil.which("dpkg-query") and not missing_packages(host, purpose):
        return
    if os.geteuid() != 0:
        raise ToolchainError(f"installing toolchains needs root; run as root: {install_hint(host, purpose)}")
    if host.is_debian_like:
        env = {"DEBIAN_FRONTEND": "noninteractive"}
        runner.run(["apt-get", "update"], env=env, timeout=900)
        runner.run(install_command(host, purpose), env=env, timeout=3600)
    elif shutil.which("dnf"):
        runner.run(install_command(host, purpose), timeout=3600)
    else:
        raise ToolchainError(f"don't know how to install a toolchain on OS '{host.os_id}'; "
                             "install clang/lld/llvm (22 preferred) and gcc yourself")
