"""Interpreters under test: parse `--interp` specs, find hostpgo builds by name, probe identity.

A spec may end in `@SETTINGS` (a host settings name under profiles/host/ or a path to one): the same
interpreter then runs as its own subject under those settings (allocator preload and tunables in its
environment, MindSpore/GC settings applied by the runtime), e.g. `--interp je=/usr/bin/python3.11@jemalloc`.

Before the `@`, `+wheel:PATH.whl` (repeatable) replaces a distribution of the subject's venv with that wheel:
`--interp stock=PY --interp bolt=PY+wheel:mindspore-2.10.0+bolt.1a2b3c4d-cp311-cp311-linux_x86_64.whl` makes
stock and rewritten MindSpore two subjects of one interleaved run. Such a subject gets a venv of its own (keyed
by the wheels' sha256, perf/envs.py), which installs the wheel in place of the wheelhouse's build of the same
distribution; a wheel whose distribution the venv would not install anyway is refused.

The grammar, parsed in `parse_spec` only: `[NAME=]TARGET[+wheel:WHEEL]...[@SETTINGS]`.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

from hostenv import allocators
from hostpgo.fsutil import sha256_of
from hostpgo.runner import capture

from .errors import CommandError, IncompatibleResults, SpecError
from .workspace import hostpgo_home, safe_name

MANIFEST_NAME = "hostpgo-manifest.json"
WHEEL_MARK = "+wheel:"
"""Separates a subject's interpreter from a wheel its venv installs instead of the stock one."""
WHEEL_FILE_RE = re.compile(r"^(?P<dist>[^-]+)-(?P<version>[^-]+)(-\d[^-]*)?-[^-]+-[^-]+-[^-]+\.whl$")
"""PEP 427 file name: distribution-version(-build)?-python-abi-platform.whl."""
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")

# Printed by the interpreter under test; kept to the standard library so any build answers. ALLOCATOR_STEMS
# (name -> shared-object prefixes, from the allocator table) is prepended by probe_code().
_PROBE = r"""
import json, platform, sys, sysconfig
cv = sysconfig.get_config_var
def _allocators_linked():
    # Allocators the executable itself links (a build with an allocator), not preloads.
    import os
    if os.environ.get("LD_PRELOAD"):
        return None
    try:
        with open("/proc/self/maps") as fh:
            names = {line.split()[-1].rsplit("/", 1)[-1] for line in fh}
    except OSError:
        return None
    return [name for name, stems in ALLOCATOR_STEMS.items() if any(n.startswith(tuple(stems)) for n in names)]
def _libpython_loaded():
    # Py_ENABLE_SHARED says a libpython was built, not that this executable uses it.
    try:
        with open("/proc/self/maps") as fh:
            return any("libpython" in line for line in fh)
    except OSError:
        return None
print(json.dumps({
    "version": platform.python_version(),
    "implementation": sys.implementation.name,
    "executable": sys.executable,
    "cache_tag": sys.implementation.cache_tag,
    "config_args": cv("CONFIG_ARGS") or "",
    "cc": cv("CC") or "",
    "py_enable_shared": bool(cv("Py_ENABLE_SHARED")),
    "ldlibrary": cv("LDLIBRARY") or "",
    "libdir": cv("LIBDIR") or "",
    "libpython_loaded": _libpython_loaded(),
    "allocators_linked": _allocators_linked(),
}))
"""


def probe_code() -> str:
    """The identity probe, with the allocator table's shared-object prefixes to spot a linked allocator."""
    stems = {name: sorted({so.split(".so")[0] + ".so" for so in spec.sonames})
             for name, spec in allocators.table().items() if spec.sonames}
    return f"ALLOCATOR_STEMS = {stems!r}\n" + _PROBE


@dataclass(frozen=True)
class InterpreterSpec:
    """One `--interp` value, parsed but not yet checked against the file system."""

    name: str | None
    """Name given with NAME=PATH, or None when it is to be derived."""
    target: str
    """A path (contains '/') or a hostpgo build name / command on PATH."""
    raw: str
    """The text as given, for error messages."""
    host: str | None = None
    """Host settings after `@` (a name under profiles/host/ or a path), or None."""
    wheels: tuple[str, ...] = ()
    """Wheel paths after `+wheel:`, as given (checked by `resolve`)."""


def normalize_dist(name: str) -> str:
    """PEP 503 normal form of a distribution name (`MindSpore_GS` -> `mindspore-gs`)."""
    return re.sub(r"[-_.]+", "-", name).lower()


@dataclass(frozen=True)
class ReplacedWheel:
    """A wheel a subject's venv installs in place of the wheelhouse's build of the same distribution."""

    path: str
    """Absolute path of the wheel file."""
    file_name: str
    """Its base name (PEP 427)."""
    distribution: str
    """The distribution it holds, in PEP 503 normal form (`mindspore`)."""
    version: str
    """Its version as the file name gives it (`2.10.0+bolt.1a2b3c4d`)."""
    sha256: str
    """Digest of the wheel file: keys the subject's venv and is stamped into its results."""

    @property
    def public_version(self) -> str:
        """The version without its local label (`2.10.0`): what the stock wheel it replaces must have."""
        return self.version.split("+", 1)[0]


def wheel_identity(path: Path, flag: str) -> ReplacedWheel:
    """Read a wheel's distribution and version from its file name and digest it; SpecError names `flag`."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise SpecError(f"{flag}: {path} is not a file")
    m = WHEEL_FILE_RE.match(path.name)
    if not m:
        raise SpecError(f"{flag}: {path.name} is not a wheel file name (DIST-VERSION-PY-ABI-PLATFORM.whl)")
    return ReplacedWheel(path=str(path.resolve()), file_name=path.name, distribution=normalize_dist(m["dist"]),
                         version=m["version"],
                         sha256=sha256_of(path))


def wheels_digest(wheels: tuple[ReplacedWheel, ...]) -> str:
    """One digest over a subject's replaced wheels (distribution and file sha256), or `` for none."""
    if not wheels:
        return ""
    return hashlib.sha256("".join(f"{w.distribution}:{w.sha256}\n" for w in sorted(
        wheels, key=lambda w: w.distribution)).encode()).hexdigest()


@dataclass(frozen=True)
class Interpreter:
    """An interpreter under test, resolved and probed."""

    name: str
    """Short name used in tables and file names."""
    python: str
    """Absolute path of the interpreter executable (not of its venv)."""
    version: str
    implementation: str
    cache_tag: str
    exe_sha256: str
    """Digest of the executable file: identifies builds without a manifest."""
    config_args: str = ""
    cc: str = ""
    py_enable_shared: bool = False
    ldlibrary: str = ""
    libdir: str = ""
    libpython_loaded: bool | None = None
    """Whether the running interpreter maps a libpython shared object (None where unknown)."""
    manifest: str | None = None
    """Path of the build's hostpgo-manifest.json, when it is a hostpgo build."""
    manifest_digest: str = "none"
    """sha256 of that manifest (or `none`); stamped into every result."""
    build_id: str = "none"
    """The manifest's `build_id` (buildsys writes one per build), or `none`."""
    origin: str = "path"
    """`path` (given as a path or NAME=PATH), `hostpgo-build`, or `command` (found on PATH)."""
    notes: tuple[str, ...] = field(default_factory=tuple)
    host_settings: dict | None = None
    """Resolved host settings this subject runs under (hostenv JSON), or None for none given."""
    host_env: tuple[tuple[str, str], ...] = ()
    """Environment the host settings add to every process of this subject (preload, tunables, settings)."""
    allocators_linked: tuple[str, ...] = ()
    """Allocators the executable links itself (so they are not preloaded again)."""
    wheels: tuple[ReplacedWheel, ...] = ()
    """Wheels this subject's venv installs instead of the wheelhouse's (`+wheel:`); empty for the stock venv."""

    def to_json(self) -> dict:
        data = asdict(self)
        data["notes"] = list(self.notes)
        data["host_env"] = dict(self.host_env)
        data["allocators_linked"] = list(self.allocators_linked)
        data["wheels"] = [asdict(w) for w in self.wheels]
        return data

    @classmethod
    def from_json(cls, data: dict) -> Interpreter:
        data = dict(data)
        data["notes"] = tuple(data.get("notes", ()))
        data["host_env"] = tuple((data.get("host_env") or {}).items())
        data["allocators_linked"] = tuple(data.get("allocators_linked") or ())
        data["wheels"] = tuple(ReplacedWheel(**w) for w in data.get("wheels") or ())
        return cls(**data)

    @property
    def wheels_digest(self) -> str:
        """Digest of the replaced wheels (`` when the subject installs the wheelhouse as it is)."""
        return wheels_digest(self.wheels)

    @property
    def host_name(self) -> str:
        """The host settings' name, or `-` when the subject runs without any."""
        return self.host_settings.get("name", "?") if self.host_settings else "-"


def parse_spec(text: str) -> InterpreterSpec:
    """Parse one `--interp` value: `NAME=PATH`, a path, or a hostpgo build name; each may be followed by
    `+wheel:WHEEL` (repeatable) and end in `@SETTINGS`."""
    raw = text
    text = text.strip()
    if not text:
        raise SpecError("--interp: empty value; give NAME=PATH, a path, or a hostpgo build name")
    host = None
    if "@" in text:
        text, _, host = text.rpartition("@")
        host = host.strip()
        if not host:
            raise SpecError(f"--interp {raw!r}: the host settings after '@' are empty")
        spec = parse_spec(text)
        return InterpreterSpec(name=spec.name, target=spec.target, raw=raw, host=host, wheels=spec.wheels)
    if WHEEL_MARK in text:
        text, *wheels = text.split(WHEEL_MARK)
        wheels = [w.strip() for w in wheels]
        for w in wheels:
            if not w:
                raise SpecError(f"--interp {raw!r}: the wheel path after '{WHEEL_MARK}' is empty")
            if not w.endswith(".whl"):
                raise SpecError(f"--interp {raw!r}: '{WHEEL_MARK}{w}' does not name a .whl file")
        if len({Path(w).name for w in wheels}) != len(wheels):
            raise SpecError(f"--interp {raw!r}: the same wheel is given twice")
        spec = parse_spec(text)
        return InterpreterSpec(name=spec.name, target=spec.target, raw=raw, wheels=tuple(wheels))
    if "=" in text:
        name, _, target = text.partition("=")
        name, target = name.strip(), target.strip()
        if not name:
            raise SpecError(f"--interp {raw!r}: the name before '=' is empty")
        if not target:
            raise SpecError(f"--interp {raw!r}: the path after '=' is empty")
        if not _NAME.match(name):
            raise SpecError(
                f"--interp {raw!r}: name {name!r} may hold letters, digits, '.', '_', '+' and '-' only"
            )
        return InterpreterSpec(name=name, target=target, raw=raw)
    return InterpreterSpec(name=None, target=text, raw=raw)


def find_builds(home: Path | None = None) -> dict[str, Path]:
    """hostpgo builds under the work area: build name -> manifest path.

    A build's names: its directory's name, the manifest's `name` and `build_id` fields, and the
    profile name of an optimized install prefix (`baseline`, `pgo-lto`).
    """
    home = home or hostpgo_home()
    found: dict[str, Path] = {}
    if not home.is_dir():
        return found
    # Install prefixes (`install/<target>-<version>-<profile>`, as buildsys lays them out) win over
    # manifests of build trees elsewhere in the work area.
    ordered = sorted(home.glob(f"install/*/{MANIFEST_NAME}")) + sorted(home.glob(f"**/{MANIFEST_NAME}"))
    for manifest in ordered:
        if manifest.relative_to(home).parts[0] in ("results", "perf"):
            continue
        names = {manifest.parent.name}
        try:
            data = json.loads(manifest.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(data, dict):
            names.update(data[k] for k in ("name", "build_id") if isinstance(data.get(k), str))
            # The bare profile name (`pgo-lto`) names the optimized install `<target>-<ver>-pgo-lto`;
            # the instrumented prefix of the same profile (`...-pgo-lto-instrumented`) does not match.
            profile = data.get("profile")
            profile_name = profile.get("name") if isinstance(profile, dict) else None
            if isinstance(profile_name, str) and manifest.parent.name.endswith(f"-{profile_name}"):
                names.add(profile_name)
        for name in names:
            found.setdefault(name, manifest)
    return found


def python_in_prefix(prefix: Path, manifest: dict) -> Path | None:
    """The interpreter of an install prefix: a manifest field if present, else bin/python3[.X]."""
    for key in ("python", "interpreter", "executable"):
        value = manifest.get(key)
        if isinstance(value, str) and value:
            path = Path(value)
            return path if path.is_absolute() else prefix / path
    candidates = [prefix / "bin" / "python3"] + sorted((prefix / "bin").glob("python3.*[0-9]"))
    for cand in candidates:
        if cand.is_file() and os.access(cand, os.X_OK):
            return cand
    return None


def assert_unchanged(interp: Interpreter, during: str) -> None:
    """Raise when the interpreter's executable is no longer the one measured at the start (rebuilt or reinstalled
    in the meantime): results from before and after would mix two binaries under one name."""
    exe = Path(os.path.realpath(interp.python))
    now = sha256_of(exe) if exe.is_file() else "missing"
    if now != interp.exe_sha256:
        raise IncompatibleResults(
            f"interpreter {interp.name}: its executable {exe} changed during {during} (sha256 "
            f"{interp.exe_sha256[:12]} at the start, {now[:12]} now: rebuilt or reinstalled meanwhile?); what was "
            "measured since would mix two binaries, so nothing of it is kept: rerun when no build is installing it")


def probe(python: Path) -> dict:
    """Ask an interpreter for its version and build configuration."""
    proc = capture([str(python), "-I", "-c", probe_code()], timeout=60, check=False)
    if proc.returncode != 0:
        raise CommandError(f"interpreter {python} failed its probe", argv=[str(python)],
                           returncode=proc.returncode, log_tail=proc.stderr[-2000:])
    return json.loads(proc.stdout)


def _derived_name(python: Path, info: dict) -> str:
    stem = python.name
    return safe_name(f"{stem}-{info['version']}")


def resolve(spec: InterpreterSpec, home: Path | None = None) -> Interpreter:
    """Turn a spec into a probed Interpreter, raising SpecError that names the `--interp` value."""
    manifest_path: Path | None = None
    origin = "path"
    notes: list[str] = []
    target = spec.target
    if "/" in target or target.startswith("~"):
        python = Path(target).expanduser()
        if not python.exists():
            raise SpecError(f"--interp {spec.raw!r}: {python} does not exist")
        if python.is_dir():
            # A prefix directory: accept it when it holds a manifest or a bin/python3.
            manifest_path = python / MANIFEST_NAME if (python / MANIFEST_NAME).is_file() else None
            data = _read_manifest(manifest_path, spec) if manifest_path else {}
            found = python_in_prefix(python, data)
            if found is None:
                raise SpecError(f"--interp {spec.raw!r}: {python} is a directory without bin/python3")
            python = found
            origin = "hostpgo-build" if manifest_path else "path"
    else:
        builds = find_builds(home)
        if target in builds:
            manifest_path = builds[target]
            data = _read_manifest(manifest_path, spec)
            found = python_in_prefix(manifest_path.parent, data)
            if found is None:
                raise SpecError(
                    f"--interp {spec.raw!r}: build {target!r} ({manifest_path}) has no bin/python3"
                )
            python = found
            origin = "hostpgo-build"
        else:
            from shutil import which

            on_path = which(target)
            if on_path is None:
                known = ", ".join(sorted(builds)) or "none"
                raise SpecError(
                    f"--interp {spec.raw!r}: not a path, not a hostpgo build under "
                    f"{home or hostpgo_home()} (builds found: {known}), and not a command on PATH"
                )
            python = Path(on_path)
            origin = "command"
            notes.append(f"{target!r} found on PATH as {on_path}")
    if not os.access(python, os.X_OK):
        raise SpecError(f"--interp {spec.raw!r}: {python} is not executable")
    python = Path(os.path.abspath(python))
    info = probe(python)
    linked = tuple(info.get("allocators_linked") or ())
    host_settings, host_env = _host(spec, linked)
    if manifest_path is None:
        # An interpreter given by path may still live in a hostpgo prefix.
        cand = python.parent.parent / MANIFEST_NAME
        if cand.is_file():
            manifest_path = cand
            origin = "hostpgo-build"
    digest = sha256_of(manifest_path) if manifest_path else "none"
    build_id = "none"
    if manifest_path:
        value = _read_manifest(manifest_path, spec).get("build_id")
        build_id = value if isinstance(value, str) and value else "none"
    wheels = tuple(wheel_identity(Path(w), f"--interp {spec.raw!r}: {WHEEL_MARK}{w}") for w in spec.wheels)
    dists = [w.distribution for w in wheels]
    if len(set(dists)) != len(dists):
        raise SpecError(f"--interp {spec.raw!r}: two wheels of one distribution ({', '.join(dists)})")
    name = spec.name or (target if origin == "hostpgo-build" and "/" not in target else _derived_name(python, info))
    if wheels and not spec.name:
        name = safe_name(name + "".join(f"+{w.distribution}-{w.version.replace('+', '-')}" for w in wheels))
    if host_settings and not spec.name:
        name = safe_name(f"{name}+{host_settings['name']}")
    return Interpreter(
        name=name,
        python=str(python),
        version=info["version"],
        implementation=info["implementation"],
        cache_tag=info["cache_tag"] or "",
        exe_sha256=sha256_of(Path(os.path.realpath(python))),
        config_args=info["config_args"],
        cc=info["cc"],
        py_enable_shared=info["py_enable_shared"],
        ldlibrary=info["ldlibrary"],
        libdir=info["libdir"],
        libpython_loaded=info.get("libpython_loaded"),
        manifest=str(manifest_path) if manifest_path else None,
        manifest_digest=digest,
        build_id=build_id,
        origin=origin,
        notes=tuple(notes),
        host_settings=host_settings,
        host_env=tuple(host_env.items()),
        allocators_linked=linked,
        wheels=wheels,
    )


def _host(spec: InterpreterSpec, linked: tuple[str, ...]) -> tuple[dict | None, dict[str, str]]:
    """Resolve a spec's `@SETTINGS` into (settings JSON, environment delta), raising SpecError naming it."""
    if spec.host is None:
        return None, {}
    import hostenv

    try:
        settings = hostenv.resolve(spec.host)
        delta = hostenv.process_env(settings, {}, linked=linked)
    except hostenv.HostSettingsError as exc:
        raise SpecError(f"--interp {spec.raw!r}: {exc}") from exc
    return settings.to_json(), delta


def _read_manifest(path: Path, spec: InterpreterSpec) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise SpecError(f"--interp {spec.raw!r}: cannot read manifest {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise SpecError(f"--interp {spec.raw!r}: manifest {path} is not a JSON object")
    return data


def resolve_all(texts: list[str], home: Path | None = None) -> list[Interpreter]:
    """Resolve every `--interp`; names must be unique (the first is the baseline)."""
    if len(texts) < 1:
        raise SpecError("--interp: give at least one interpreter (the first is the baseline)")
    interps = [resolve(parse_spec(t), home) for t in texts]
    seen: dict[str, str] = {}
    for interp, text in zip(interps, texts):
        if interp.name in seen:
            raise SpecError(
                f"--interp {text!r}: name {interp.name!r} is already used by --interp {seen[interp.name]!r};"
                " give distinct names with NAME=PATH"
            )
        seen[interp.name] = text
    return interps
