"""Host settings as data: allocator, MindSpore launch/threads/affinity, GC policy and interpreter start-up.

A settings file is `profiles/host/NAME.toml` (or any path)::

    description = "jemalloc preloaded, everything else default"
    extends = "default"                 # optional: another settings name or path

    [allocator]
    name = "jemalloc"                   # glibc | mimalloc | jemalloc | tcmalloc
    [allocator.tunables]                # reach the process through the allocator's own channel
    background_thread = "false"         # jemalloc: MALLOC_CONF=background_thread:false

    [mindspore]
    launch = "blocking"                 # blocking | pipelined
    dispatch_threads = 1                # mindspore.runtime.dispatch_threads_num
    op_threads = 1                      # mindspore.device_context.cpu.op_tuning.threads_num
    affinity = true                     # mindspore.runtime.set_cpu_affinity
    affinity_cpus = ["0-1"]
    affinity_modules = { main = [0], runtime = [1], pynative = [1] }

    [gc]
    thresholds = [10000, 20, 20]
    freeze_after_warmup = true

    [startup]
    precompile = true                   # setup compiles site-packages + the runtime (`precompile` subcommand)
    bytecode = "unchecked-hash"         # timestamp | checked-hash | unchecked-hash: the pycs' invalidation mode
    frozen_modules = true               # -X frozen_modules=on (an interpreter option: `exec` inserts it)
    no_debug_ranges = true              # PYTHONNODEBUGRANGES=1

Resolution order: defaults -> `extends` chain -> the file -> environment (`HOSTPGO_HOST_SET="gc.enabled=false
allocator.name=mimalloc"`, and `HOSTPGO_RUNTIME_LAUNCH_BLOCKING=0|1` for the launch mode) -> command-line `--set`.
An unknown key or a bad value is an error naming the file and the key.

Two halves reach a process differently: the allocator (LD_PRELOAD) and its tunables are environment and must be
in place before the process starts (`process_env`, or `python -m runtime.hostenv exec SETTINGS -- cmd ...`); the
MindSpore and GC settings are applied in-process by the runtime when it configures MindSpore and after a workload's
warm-up. The child learns the resolved settings from `HOSTPGO_HOST_SETTINGS` (their JSON), so what ran is exactly
what was resolved, and the workload record states it (`host_settings`).

The start-up half has three channels: `-X frozen_modules` is an interpreter option with no environment variable,
so `exec` (and the runtime's `--host-settings` re-execution) put it on the interpreter's command line
(`interpreter_args`); `no_debug_ranges` is PYTHONNODEBUGRANGES in `process_env`; the pycs are a property of the
installed environment, written once by `python -m runtime.hostenv precompile SETTINGS [PATH ...]` at setup
(the image build, or perf for a subject's venv), not at each start.
"""

from __future__ import annotations

from importlib import resources

import argparse
import gc
import importlib.util
import json
import os
import platform
import re
import shlex
import sys
import sysconfig
import time
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from runtime.errors import RuntimeErrorBase

ENV_SETTINGS = "HOSTPGO_HOST_SETTINGS"
"""Environment variable carrying the resolved settings (JSON) into the process that applies them."""
ENV_SET = "HOSTPGO_HOST_SET"
"""Environment overrides, `section.key=value` separated by spaces (values in TOML syntax, or bare strings)."""
ENV_LAUNCH_BLOCKING = "HOSTPGO_RUNTIME_LAUNCH_BLOCKING"
"""The runtime's older switch: 0 keeps MindSpore's asynchronous (pipelined) launch, 1 blocks."""

ALLOCATOR_NAMES = ("glibc", "mimalloc", "jemalloc", "tcmalloc")
LAUNCH_MODES = ("blocking", "pipelined")
AFFINITY_MODULES = ("main", "runtime", "pynative", "minddata")
BYTECODE_MODES = ("timestamp", "checked-hash", "unchecked-hash")
"""pyc invalidation modes (PEP 552), as compileall's --invalidation-mode spells them."""


class HostSettingsError(RuntimeErrorBase):
    """A host settings file, override or value cannot be used, or a setting could not be applied."""


class AllocatorNotFound(HostSettingsError):
    """The chosen allocator's shared library is not installed; the message names the package."""


# --------------------------------------------------------------------------------------------- model


@dataclass(frozen=True)
class AllocatorSettings:
    """Which malloc serves the process, and its tunables."""

    name: str = "glibc"
    """`glibc` (the C library's own malloc, nothing preloaded), `mimalloc`, `jemalloc` or `tcmalloc`."""
    library: str | None = None
    """Explicit path of the allocator's shared object; None discovers it from the distribution's packages."""
    tunables: tuple[tuple[str, str], ...] = ()
    """Allocator options as (key, value); how they reach the process depends on the allocator (see CHANNELS)."""


@dataclass(frozen=True)
class MindSporeSettings:
    """MindSpore runtime settings applied in-process before the first operator runs."""

    launch: str = "blocking"
    """`blocking` calls mindspore.runtime.launch_blocking() (synchronous kernels); `pipelined` keeps the
    asynchronous launch pipeline (frontend/backend queue threads)."""
    dispatch_threads: int | None = None
    """mindspore.runtime.dispatch_threads_num(N) (runtime actor threads); None keeps MindSpore's default (5)."""
    op_threads: int | None = None
    """mindspore.device_context.cpu.op_tuning.threads_num(N) (CPU kernel threads); None keeps the default (25)."""
    affinity: bool = False
    """Call mindspore.runtime.set_cpu_affinity(True, ...): bind MindSpore's module threads to cores."""
    affinity_cpus: tuple[str, ...] = ()
    """The process's CPU ranges for set_cpu_affinity (`["0-1"]`); empty lets MindSpore choose."""
    affinity_modules: tuple[tuple[str, tuple[int, ...]], ...] = ()
    """Module -> indices into affinity_cpus (main, runtime, pynative, minddata); empty binds `main` only."""


@dataclass(frozen=True)
class GcSettings:
    """The Python garbage collector's policy for the serving loop."""

    enabled: bool = True
    """False calls gc.disable() (reference counting still frees acyclic garbage)."""
    thresholds: tuple[int, int, int] | None = None
    """gc.set_threshold(g0, g1, g2); None keeps the interpreter's (700, 10, 10)."""
    freeze_after_warmup: bool = False
    """gc.collect() then gc.freeze() once a workload has warmed up: model weights and engine state leave the
    generations the collector scans."""


@dataclass(frozen=True)
class StartupSettings:
    """How the interpreter starts: the pycs it finds and the options it is started with. None of them changes
    what the program computes; `no_debug_ranges` changes what its tracebacks show."""

    precompile: bool = False
    """Setup compiles site-packages (purelib, platlib) and the runtime package to pycs of `bytecode` mode with
    `python -m runtime.hostenv precompile SETTINGS`; False leaves the pycs pip wrote (timestamp mode)."""
    bytecode: str = "timestamp"
    """Invalidation mode of precompiled pycs: `timestamp` (each import compares the source's mtime and size),
    `checked-hash` (each import reads and hashes the source), `unchecked-hash` (the pyc is trusted: an edited
    source is not seen until precompiled again). Each import stats the source in every mode."""
    frozen_modules: bool | None = None
    """`-X frozen_modules=on|off`: the start-up stdlib modules from the interpreter's frozen copies (on) or from
    their pycs (off). None passes nothing: installed builds default to on, a build tree to off."""
    no_debug_ranges: bool = False
    """PYTHONNODEBUGRANGES=1: code compiled by the process has no column positions. Precompiling under it writes
    pycs without them (smaller location tables to unmarshal; tracebacks lose their `^^^` markers)."""


@dataclass(frozen=True)
class HostSettings:
    """Every host lever of one process, resolved."""

    name: str = "default"
    """The settings' name (file stem, or `default`)."""
    description: str = ""
    source: str | None = None
    """The file the settings came from (None: defaults only)."""
    allocator: AllocatorSettings = field(default_factory=AllocatorSettings)
    mindspore: MindSporeSettings = field(default_factory=MindSporeSettings)
    gc: GcSettings = field(default_factory=GcSettings)
    startup: StartupSettings = field(default_factory=StartupSettings)
    overrides: tuple[str, ...] = ()
    """The environment and command-line overrides applied on top of the file, as given."""

    def to_json(self) -> dict:
        data = asdict(self)
        data["allocator"]["tunables"] = dict(self.allocator.tunables)
        data["mindspore"]["affinity_modules"] = {k: list(v) for k, v in self.mindspore.affinity_modules}
        data["mindspore"]["affinity_cpus"] = list(self.mindspore.affinity_cpus)
        data["gc"]["thresholds"] = list(self.gc.thresholds) if self.gc.thresholds else None
        data["overrides"] = list(self.overrides)
        return data

    @classmethod
    def from_json(cls, data: Mapping) -> "HostSettings":
        flat: dict[str, object] = {}
        for section in _SCHEMA:
            for key, value in (data.get(section) or {}).items():
                if value is not None:
                    flat[f"{section}.{key}"] = value
        s = _build(flat, "<json>")
        return replace(s, name=str(data.get("name", "default")), description=str(data.get("description", "")),
                       source=data.get("source"), overrides=tuple(data.get("overrides", ())))

    def summary(self) -> str:
        """One line: the levers that differ from the defaults."""
        parts = []
        default = HostSettings()
        for section in _SCHEMA:
            mine, base = getattr(self, section), getattr(default, section)
            for key in _SCHEMA[section]:
                if getattr(mine, key) != getattr(base, key):
                    parts.append(f"{section}.{key}={_show(getattr(mine, key))}")
        return " ".join(parts) or "defaults"

    def to_toml(self, header: Sequence[str] = ()) -> str:
        """The settings as a file this module loads back to the same values (differences from defaults only)."""
        lines = [f"# {h}" for h in header]
        if self.description:
            lines.append(f"description = {_toml_value(self.description)}")
        default = HostSettings()
        for section in _SCHEMA:
            mine, base = getattr(self, section), getattr(default, section)
            body, tables = [], []
            for key in _SCHEMA[section]:
                value = getattr(mine, key)
                if value == getattr(base, key) or value is None:
                    continue
                if key in ("tunables", "affinity_modules"):
                    tables.append((key, value))
                else:
                    body.append(f"{key} = {_toml_value(value)}")
            if body or tables:
                lines += ["", f"[{section}]"] + body
                for key, pairs in tables:
                    lines += ["", f"[{section}.{key}]"] + [f"{k} = {_toml_value(v)}" for k, v in pairs]
        return "\n".join(lines) + "\n"


def _show(value: object) -> str:
    if isinstance(value, tuple) and value and isinstance(value[0], tuple):
        return ",".join(f"{k}:{_show(v)}" for k, v in value)
    if isinstance(value, tuple):
        return "/".join(str(v) for v in value)
    return str(value).lower() if isinstance(value, bool) else str(value)


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, (tuple, list)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} as TOML")


# ---------------------------------------------------------------------------------- key validation


def _choice(options: tuple[str, ...]) -> Callable[[str, object], str]:
    def conv(where: str, value: object) -> str:
        if not isinstance(value, str) or value not in options:
            raise HostSettingsError(f"{where}: {value!r} is not one of {', '.join(options)}")
        return value
    return conv


def _bool(where: str, value: object) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false", "on", "off", "1", "0"):
        return value.lower() in ("true", "on", "1")
    raise HostSettingsError(f"{where}: {value!r} is not a boolean (true/false)")


def _opt_threads(where: str, value: object) -> int | None:
    if value in (0, "default"):
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise HostSettingsError(f"{where}: {value!r} is not a positive thread count (0 or \"default\": MindSpore's)")
    return value


def _opt_bool(where: str, value: object) -> bool | None:
    if value in ("default", None):
        return None
    try:
        return _bool(where, value)
    except HostSettingsError:
        raise HostSettingsError(f"{where}: {value!r} is not true, false or \"default\" (the interpreter's)") from None


def _opt_path(where: str, value: object) -> str | None:
    if value in ("", None):
        return None
    if not isinstance(value, str):
        raise HostSettingsError(f"{where}: {value!r} is not a path")
    return value


def _str_pairs(where: str, value: object) -> tuple[tuple[str, str], ...]:
    if not isinstance(value, Mapping):
        raise HostSettingsError(f"{where}: expected a table of option = value")
    out = []
    for k, v in value.items():
        if isinstance(v, bool):
            v = "true" if v else "false"
        if not isinstance(v, (str, int, float)):
            raise HostSettingsError(f"{where}.{k}: {v!r} is not a string or number")
        out.append((str(k), str(v)))
    return tuple(out)


def _cpu_ranges(where: str, value: object) -> tuple[str, ...]:
    if not isinstance(value, (list, tuple)):
        raise HostSettingsError(f"{where}: expected a list like [\"0-3\", \"8-11\"]")
    for item in value:
        lo, _, hi = str(item).partition("-")
        if not isinstance(item, str) or not lo.isdigit() or not (hi.isdigit() if hi else True) or \
                (hi and int(hi) < int(lo)):
            raise HostSettingsError(f"{where}: {item!r} is not a CPU range \"X-Y\"")
    return tuple(value)


def _module_map(where: str, value: object) -> tuple[tuple[str, tuple[int, ...]], ...]:
    if not isinstance(value, Mapping):
        raise HostSettingsError(f"{where}: expected a table module = [cpu indices]")
    out = []
    for k, v in value.items():
        if k not in AFFINITY_MODULES:
            raise HostSettingsError(f"{where}: unknown module {k!r} (known: {', '.join(AFFINITY_MODULES)})")
        if not isinstance(v, (list, tuple)) or not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0
                                                       for i in v):
            raise HostSettingsError(f"{where}.{k}: {v!r} is not a list of non-negative CPU indices")
        out.append((k, tuple(v)))
    return tuple(out)


def _thresholds(where: str, value: object) -> tuple[int, int, int] | None:
    if value in (None, "default") or value == []:
        return None
    if not isinstance(value, (list, tuple)) or len(value) != 3 or \
            not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in value):
        raise HostSettingsError(f"{where}: {value!r} is not three non-negative integers [g0, g1, g2]")
    return tuple(value)  # type: ignore[return-value]


_SCHEMA: dict[str, dict[str, Callable[[str, object], object]]] = {
    "allocator": {"name": _choice(ALLOCATOR_NAMES), "library": _opt_path, "tunables": _str_pairs},
    "mindspore": {"launch": _choice(LAUNCH_MODES), "dispatch_threads": _opt_threads, "op_threads": _opt_threads,
                  "affinity": _bool, "affinity_cpus": _cpu_ranges, "affinity_modules": _module_map},
    "gc": {"enabled": _bool, "thresholds": _thresholds, "freeze_after_warmup": _bool},
    "startup": {"precompile": _bool, "bytecode": _choice(BYTECODE_MODES), "frozen_modules": _opt_bool,
                "no_debug_ranges": _bool},
}
_SECTIONS = {"allocator": AllocatorSettings, "mindspore": MindSporeSettings, "gc": GcSettings,
             "startup": StartupSettings}
_TOP_KEYS = ("description", "extends")


def _flatten(data: Mapping, where: str) -> dict[str, object]:
    """A parsed settings file as `section.key` -> raw value; unknown keys are an error naming file and key."""
    flat: dict[str, object] = {}
    for key, value in data.items():
        if key in _TOP_KEYS:
            continue
        if key not in _SCHEMA:
            raise HostSettingsError(
                f"{where}: unknown key {key!r} (known: {', '.join(list(_TOP_KEYS) + list(_SCHEMA))})")
        if not isinstance(value, Mapping):
            raise HostSettingsError(f"{where}: [{key}] must be a table")
        for sub, v in value.items():
            if sub not in _SCHEMA[key]:
                raise HostSettingsError(
                    f"{where}: unknown key {key}.{sub!s} (known in [{key}]: {', '.join(_SCHEMA[key])})")
            flat[f"{key}.{sub}"] = v
    return flat


def _build(flat: Mapping[str, object], where: str, base: HostSettings | None = None) -> HostSettings:
    s = base or HostSettings()
    for section, fields in _SCHEMA.items():
        changes = {}
        for key, conv in fields.items():
            dotted = f"{section}.{key}"
            if dotted in flat:
                changes[key] = conv(f"{where}: {dotted}" if not where.startswith("<") else dotted, flat[dotted])
        if changes:
            s = replace(s, **{section: replace(getattr(s, section), **changes)})
    return s


def parse_override(text: str, where: str) -> tuple[str, object]:
    """`section.key=value` (value in TOML syntax, else a bare string) -> (dotted key, value)."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or "." not in key:
        raise HostSettingsError(f"{where}: {text!r} is not section.key=value")
    section, _, sub = key.partition(".")
    if section not in _SCHEMA or sub not in _SCHEMA[section]:
        known = ", ".join(f"{s}.{k}" for s in _SCHEMA for k in _SCHEMA[s])
        raise HostSettingsError(f"{where}: unknown key {key!r} (known: {known})")
    raw = raw.strip()
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return key, value


# ------------------------------------------------------------------------------------------ loading


def repo_root() -> Path:
    return Path(__file__).resolve().parent.parent


def settings_dir() -> Path:
    """Where named settings live: $HOSTPGO_HOST_PROFILES, else profiles/host/ of this source tree."""
    return Path(os.environ.get("HOSTPGO_HOST_PROFILES", repo_root() / "profiles" / "host"))


def find_file(ref: str | os.PathLike[str], relative_to: Path | None = None) -> Path:
    """A settings name (`jemalloc`) or path -> the file; raises naming where it looked."""
    text = os.fspath(ref)
    if "/" in text or text.endswith(".toml"):
        path = Path(text).expanduser()
        if not path.is_absolute() and relative_to is not None and not path.exists():
            path = relative_to / path
        if not path.is_file():
            raise HostSettingsError(f"host settings file {text!r} does not exist")
        return path
    path = settings_dir() / f"{text}.toml"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in settings_dir().glob("*.toml"))) or "none"
        raise HostSettingsError(f"no host settings named {text!r} in {settings_dir()} (known: {known})")
    return path


def _load_file(path: Path, seen: tuple[Path, ...] = ()) -> tuple[dict[str, object], str]:
    """The flat values of one file after its `extends` chain (base first), and its description."""
    path = path.resolve()
    if path in seen:
        chain = " -> ".join(str(p) for p in seen + (path,))
        raise HostSettingsError(f"{path}: `extends` loops ({chain})")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise HostSettingsError(f"{path}: cannot read host settings: {exc}") from exc
    flat: dict[str, object] = {}
    description = data.get("description", "")
    if not isinstance(description, str):
        raise HostSettingsError(f"{path}: description must be a string")
    extends = data.get("extends")
    if extends is not None:
        if not isinstance(extends, str):
            raise HostSettingsError(f"{path}: extends must be a settings name or path")
        flat, base_desc = _load_file(find_file(extends, path.parent), seen + (path,))
        description = description or base_desc
    mine = _flatten(data, str(path))
    _build(mine, str(path))  # validate against this file's name before merging
    flat.update(mine)
    return flat, description


def resolve(ref: str | os.PathLike[str] | None = None, sets: Sequence[str] = (),
            env: Mapping[str, str] | None = None) -> HostSettings:
    """defaults -> file (after `extends`) -> environment (HOSTPGO_HOST_SET, HOSTPGO_RUNTIME_LAUNCH_BLOCKING) -> sets."""
    env = os.environ if env is None else env
    flat: dict[str, object] = {}
    name, description, source = "default", "", None
    if ref is not None:
        path = find_file(ref)
        flat, description = _load_file(path)
        name, source = path.stem, str(path)
    overrides: list[str] = []
    blocking = env.get(ENV_LAUNCH_BLOCKING)
    if blocking is not None and blocking.strip() != "":
        flat["mindspore.launch"] = "pipelined" if blocking.strip() == "0" else "blocking"
        overrides.append(f"{ENV_LAUNCH_BLOCKING}={blocking}")
    for item in shlex.split(env.get(ENV_SET, "")):
        k, v = parse_override(item, ENV_SET)
        flat[k] = v
        overrides.append(f"{ENV_SET}: {item}")
    for item in sets:
        k, v = parse_override(item, "--set")
        flat[k] = v
        overrides.append(f"--set {item}")
    s = _build(flat, source or "host settings")
    return replace(s, name=name, description=description, source=source, overrides=tuple(overrides))


def active(env: Mapping[str, str] | None = None) -> HostSettings:
    """The settings this process runs with: HOSTPGO_HOST_SETTINGS if a launcher set it, else defaults + env."""
    env = os.environ if env is None else env
    text = env.get(ENV_SETTINGS, "").strip()
    if not text:
        return resolve(None, env=env)
    if text.startswith("{"):
        try:
            return HostSettings.from_json(json.loads(text))
        except ValueError as exc:
            raise HostSettingsError(f"{ENV_SETTINGS}: not valid JSON: {exc}") from exc
    return resolve(text, env=env)


# ------------------------------------------------------------------------------ allocator libraries


@dataclass(frozen=True)
class AllocatorLibrary:
    """Where one allocator comes from and how its tunables reach the process."""

    name: str
    sonames: tuple[str, ...]
    """Shared-object names to look for, preferred first."""
    packages: Mapping[str, str]
    """Distribution family -> the package that ships it."""
    channel: str
    """How tunables reach it: `GLIBC_TUNABLES` (glibc.malloc.KEY=V joined by ':'), `MALLOC_CONF` (KEY:V joined
    by ','), or `env:PREFIX` (one variable PREFIX+KEY per tunable, KEY upper-cased)."""


def _allocator_table() -> dict[str, AllocatorLibrary]:
    """The allocator table shared with the build engine (buildsys/allocators.toml): one source of truth
    for what the interpreter is linked against and what gets preloaded."""
    with resources.files("buildsys").joinpath("allocators.toml").open("rb") as f:
        data = tomllib.load(f)
    return {name: AllocatorLibrary(name, tuple(row["sonames"]), dict(row["packages"]), row["tunables"])
            for name, row in data.items()}


ALLOCATORS: dict[str, AllocatorLibrary] = _allocator_table()
_INSTALL = {"debian": "apt-get install {pkg}", "openeuler": "dnf install {pkg}"}
_FAMILY = {"debian": "debian", "ubuntu": "debian", "openeuler": "openeuler"}


def distro_family(os_release: Path = Path("/etc/os-release")) -> str:
    """`debian`, `openeuler`, or the os-release ID when neither (ID_LIKE is consulted too)."""
    fields: dict[str, str] = {}
    try:
        for line in os_release.read_text().splitlines():
            k, sep, v = line.partition("=")
            if sep:
                fields[k.strip()] = v.strip().strip('"')
    except OSError:
        return "unknown"
    for ident in [fields.get("ID", "")] + fields.get("ID_LIKE", "").split():
        if ident.lower() in _FAMILY:
            return _FAMILY[ident.lower()]
    return fields.get("ID", "unknown").lower() or "unknown"


def library_dirs(family: str, machine: str | None = None) -> tuple[Path, ...]:
    """The directories a distribution family installs shared libraries into, most specific first."""
    machine = machine or platform.machine()
    multiarch = f"{machine}-linux-gnu"
    dirs = [f"/usr/lib/{multiarch}", f"/lib/{multiarch}"] if family == "debian" else []
    dirs += ["/usr/lib64", "/lib64", "/usr/local/lib", "/usr/lib", "/lib"]
    if family != "debian":
        dirs += [f"/usr/lib/{multiarch}"]
    return tuple(Path(d) for d in dirs)


def find_allocator(name: str, *, family: str | None = None, dirs: Sequence[Path] | None = None) -> Path | None:
    """The shared object of allocator `name` (None for glibc); raises AllocatorNotFound naming the package."""
    if name not in ALLOCATORS:
        raise HostSettingsError(f"unknown allocator {name!r} (known: {', '.join(ALLOCATOR_NAMES)})")
    lib = ALLOCATORS[name]
    if not lib.sonames:
        return None
    family = family or distro_family()
    dirs = tuple(dirs) if dirs is not None else library_dirs(family)
    for soname in lib.sonames:
        for d in dirs:
            cand = d / soname
            if cand.exists():
                return cand
    pkg = lib.packages.get(family)
    if pkg:
        how = f"install the {family} package {pkg} ({_INSTALL.get(family, '{pkg}').format(pkg=pkg)})"
    else:
        known = ", ".join(f"{f}: {p}" for f, p in lib.packages.items())
        how = (f"no package is recorded for {family!r} (recorded: {known}); install {name} and set "
               "allocator.library to its path")
    raise AllocatorNotFound(
        f"allocator {name!r}: none of {', '.join(lib.sonames)} found in {', '.join(map(str, dirs))}; {how}")


def tunables_env(name: str, tunables: Sequence[tuple[str, str]], base: Mapping[str, str]) -> dict[str, str]:
    """The environment variables that carry an allocator's tunables (merged with what `base` already has)."""
    if not tunables:
        return {}
    channel = ALLOCATORS[name].channel
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


def process_env(settings: HostSettings, base: Mapping[str, str] | None = None, *,
                linked: Sequence[str] = (), find: Callable[[str], Path | None] = find_allocator) -> dict[str, str]:
    """The environment delta that starts a process under `settings` (pure but for library discovery).

    `linked` names allocators the interpreter already links (a hostpgo build with `allocator` set): those are
    not preloaded again. Asking for glibc from an interpreter that links another allocator is an error.
    """
    base = os.environ if base is None else base
    delta: dict[str, str] = {}
    name = settings.allocator.name
    if name == "glibc" and linked:
        raise HostSettingsError(
            f"allocator 'glibc' asked for, but the interpreter links {', '.join(linked)}; it cannot be unloaded")
    if name != "glibc" and name not in linked:
        lib = Path(settings.allocator.library) if settings.allocator.library else find(name)
        if lib is None or not lib.exists():
            raise AllocatorNotFound(f"allocator {name!r}: library {lib} does not exist")
        have = base.get("LD_PRELOAD", "")
        delta["LD_PRELOAD"] = " ".join([str(lib)] + ([have] if have else []))
    delta.update(tunables_env(name, settings.allocator.tunables, base))
    if settings.startup.no_debug_ranges:
        delta["PYTHONNODEBUGRANGES"] = "1"
    delta[ENV_SETTINGS] = json.dumps(settings.to_json(), separators=(",", ":"))
    return delta


# ------------------------------------------------------------------------------------- start-up

_PYTHON_NAME = re.compile(r"^(python|pypy)(\d+(\.\d+)?)?$")


def interpreter_args(settings: HostSettings) -> list[str]:
    """Options the interpreter itself must be started with (no environment variable carries them)."""
    frozen = settings.startup.frozen_modules
    return [] if frozen is None else ["-X", f"frozen_modules={'on' if frozen else 'off'}"]


def is_python_command(program: str) -> bool:
    """Whether a command's program is a Python interpreter (python, python3, python3.11, pypy3, a venv's python)."""
    return bool(_PYTHON_NAME.match(os.path.basename(program)))


def with_interpreter_args(settings: HostSettings, cmd: Sequence[str]) -> list[str]:
    """`cmd` with the settings' interpreter options inserted after the interpreter; raises when they are needed
    and the command does not start a Python interpreter."""
    extra = interpreter_args(settings)
    cmd = list(cmd)
    if not extra:
        return cmd
    if not cmd or not is_python_command(cmd[0]):
        program = cmd[0] if cmd else "(nothing)"
        raise HostSettingsError(
            f"startup.frozen_modules needs `{' '.join(extra)}` on the interpreter's command line (no environment "
            f"variable carries it), but {program!r} is not a Python interpreter (python, python3, python3.11, ...); "
            "give the interpreter as the command, e.g. `exec SETTINGS -- python3 -m runtime ...`")
    return [cmd[0], *extra, *cmd[1:]]


def debug_ranges_in_effect() -> bool:
    """Whether this process compiles column positions (False under PYTHONNODEBUGRANGES or -X no_debug_ranges)."""
    code = compile("x", "<probe>", "eval")
    return any(col is not None for _, _, col, _ in code.co_positions())


def pyc_mode(path: str | os.PathLike[str]) -> str | None:
    """The invalidation mode of a pyc from its header's flags field (PEP 552); None when unreadable."""
    try:
        with open(path, "rb") as fh:
            header = fh.read(8)
    except OSError:
        return None
    if len(header) < 8 or header[:4] != importlib.util.MAGIC_NUMBER:
        return None
    flags = int.from_bytes(header[4:8], "little")
    if not flags & 0b1:
        return "timestamp"
    return "checked-hash" if flags & 0b10 else "unchecked-hash"


def observe_startup(packages: Sequence[str] = ("runtime", "mindspore")) -> dict:
    """What the interpreter started with: -X options, frozen stdlib, debug ranges, and the mode of the pyc beside
    each imported module of `packages` (read now; a pyc is what the import used unless rewritten since)."""
    os_spec = getattr(sys.modules.get("os"), "__spec__", None)
    modes: dict[str, int] = {}
    for name, mod in list(sys.modules.items()):
        if name.partition(".")[0] not in packages:
            continue
        cached = getattr(mod, "__cached__", None)
        if not cached:
            continue  # extension modules, namespace packages
        mode = pyc_mode(cached) or "no-pyc"
        modes[mode] = modes.get(mode, 0) + 1
    return {"xoptions": {str(k): v for k, v in sys._xoptions.items()},
            "frozen_stdlib": getattr(os_spec, "origin", None) == "frozen",
            "debug_ranges": debug_ranges_in_effect(),
            "dont_write_bytecode": bool(sys.flags.dont_write_bytecode),
            "pyc_modes": {"packages": list(packages), "modules": dict(sorted(modes.items()))}}


def startup_warnings(settings: HostSettings, seen: Mapping) -> list[str]:
    """Where the observed start-up differs from what the settings ask for."""
    st = settings.startup
    out = []
    if st.frozen_modules is not None and seen["frozen_stdlib"] != st.frozen_modules:
        out.append(f"startup.frozen_modules = {_show(st.frozen_modules)}, but the stdlib was "
                   f"{'' if seen['frozen_stdlib'] else 'not '}loaded frozen (start the interpreter through "
                   "`python -m runtime.hostenv exec` or `--host-settings`, which add -X frozen_modules)")
    if st.no_debug_ranges and seen["debug_ranges"]:
        out.append("startup.no_debug_ranges = true, but this process compiles column positions "
                   "(PYTHONNODEBUGRANGES is not set)")
    modes = seen["pyc_modes"]["modules"]
    other = {m: n for m, n in modes.items() if m != st.bytecode}
    if st.precompile and other:
        out.append(f"startup.precompile asked for {st.bytecode} pycs, but {sum(other.values())} of "
                   f"{sum(modes.values())} imported {'/'.join(seen['pyc_modes']['packages'])} modules have "
                   f"{other}; run `python -m runtime.hostenv precompile SETTINGS` in this environment")
    return out


def _site_packages() -> list[Path]:
    paths = sysconfig.get_paths()
    out: list[Path] = []
    for key in ("purelib", "platlib"):
        p = Path(paths[key]).resolve()
        if p.is_dir() and p not in out:
            out.append(p)
    return out


def default_precompile_paths() -> list[Path]:
    """This interpreter's site-packages (purelib, platlib) and the runtime package when it lives elsewhere (a
    source checkout: `python -m` from a directory holding runtime/ imports that one, so run it elsewhere)."""
    out = _site_packages()
    mine = Path(__file__).resolve().parent
    if not any(mine.is_relative_to(p) for p in out):
        out.append(mine)
    return out


def _source_files(paths: Sequence[Path]) -> list[Path]:
    files: list[Path] = []
    for root in paths:
        if root.is_file():
            files.append(root)
            continue
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = sorted(d for d in dirnames if d != "__pycache__")
            files.extend(Path(dirpath) / f for f in sorted(filenames) if f.endswith(".py"))
    return files


def _compile_one(job: tuple[str, str]) -> tuple[str, str | None, str | None, bool]:
    """One file compiled in a worker: (source, None | "invalid" | "io", error text, debug ranges in effect)."""
    import py_compile

    source, mode = job
    kind = error = None
    try:
        py_compile.compile(source, doraise=True,
                           invalidation_mode=py_compile.PycInvalidationMode[mode.upper().replace("-", "_")])
    except py_compile.PyCompileError as exc:
        first = (str(exc.exc_value).splitlines() or [""])[0]
        kind, error = "invalid", f"{exc.exc_type_name}: {first}"
    except OSError as exc:
        kind, error = "io", f"{type(exc).__name__}: {exc}"
    return source, kind, error, debug_ranges_in_effect()


class PrecompileError(HostSettingsError):
    """Precompiling could not be done (a path is missing, a pyc cannot be written)."""


def precompile(settings: HostSettings, paths: Sequence[str | os.PathLike[str]] = (), *,
               workers: int | None = None) -> dict:
    """Compile every .py under `paths` (default: `default_precompile_paths()`) to pycs of `startup.bytecode` mode,
    in `workers` fresh processes that run with or without PYTHONNODEBUGRANGES as the settings say (the pycs keep
    what the compiling process had). Every file is compiled again (a pyc does not record debug ranges, so an
    existing one cannot be trusted to match). A file that is not valid Python is listed, not fatal (pip treats
    it the same way: it cannot be imported either way). Returns the summary; raises PrecompileError."""
    import concurrent.futures
    import multiprocessing

    st = settings.startup
    started = time.monotonic()
    roots = [Path(p).resolve() for p in paths] if paths else default_precompile_paths()
    for root in roots:
        if not root.exists():
            raise PrecompileError(f"precompile: {root} does not exist")
    files = _source_files(roots)
    if not files:
        raise PrecompileError(f"precompile: no .py files under {', '.join(map(str, roots))}")
    workers = max(1, workers or os.cpu_count() or 1)
    saved = os.environ.get("PYTHONNODEBUGRANGES")
    # Spawned workers read PYTHONNODEBUGRANGES at their start; forked ones would keep this process's setting.
    if st.no_debug_ranges:
        os.environ["PYTHONNODEBUGRANGES"] = "1"
    else:
        os.environ.pop("PYTHONNODEBUGRANGES", None)
    invalid: list[dict] = []
    ranges: set[bool] = set()
    try:
        with concurrent.futures.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            for source, kind, error, in_effect in pool.map(_compile_one, [(str(f), st.bytecode) for f in files],
                                                           chunksize=64):
                ranges.add(in_effect)
                if kind == "io":
                    raise PrecompileError(f"precompile: cannot compile {source}: {error}")
                if kind == "invalid":
                    invalid.append({"file": source, "error": error})
    finally:
        if saved is None:
            os.environ.pop("PYTHONNODEBUGRANGES", None)
        else:
            os.environ["PYTHONNODEBUGRANGES"] = saved
    if ranges != {not st.no_debug_ranges}:
        raise PrecompileError(f"precompile: the workers compiled with debug ranges {sorted(ranges)}, not "
                              f"{not st.no_debug_ranges} as startup.no_debug_ranges asks (-X no_debug_ranges given?)")
    site = _site_packages()
    warnings = []
    if st.bytecode == "unchecked-hash":
        outside = [str(r) for r in roots if not any(r.is_relative_to(p) for p in site)]
        if outside:
            warnings.append(f"unchecked-hash pycs under {', '.join(outside)}: an edited source there is not seen "
                            "until precompiled again (or its __pycache__ removed)")
    return {"settings": settings.name, "python": sys.executable, "cache_tag": sys.implementation.cache_tag,
            "mode": st.bytecode, "no_debug_ranges": st.no_debug_ranges, "paths": [str(r) for r in roots],
            "files": len(files), "compiled": len(files) - len(invalid), "not_python": invalid,
            "workers": workers, "seconds": round(time.monotonic() - started, 2), "warnings": warnings}


# ----------------------------------------------------------------------------- applying in-process

_applied: list[dict] = []
_warmup: dict = {}


def _call(api: str, fn: Callable[[], object]) -> dict:
    try:
        fn()
    except Exception as exc:  # MindSpore raises RuntimeError/ValueError/TypeError; all are reported
        raise HostSettingsError(f"{api} failed on this device: {type(exc).__name__}: {exc}") from exc
    return {"api": api, "status": "applied"}


def apply_mindspore(settings: HostSettings, ms) -> list[dict]:
    """Apply the MindSpore half before any operator runs; returns what was called. A failing API raises."""
    m = settings.mindspore
    done: list[dict] = []
    if m.dispatch_threads is not None:
        done.append(_call(f"mindspore.runtime.dispatch_threads_num({m.dispatch_threads})",
                          lambda: ms.runtime.dispatch_threads_num(m.dispatch_threads)))
    if m.op_threads is not None:
        done.append(_call(f"mindspore.device_context.cpu.op_tuning.threads_num({m.op_threads})",
                          lambda: ms.device_context.cpu.op_tuning.threads_num(m.op_threads)))
    if m.affinity:
        cpus = list(m.affinity_cpus) or None
        modules = {k: list(v) for k, v in m.affinity_modules} or None
        api = f"mindspore.runtime.set_cpu_affinity(True, {cpus}, {modules})"
        if not Path("/sys/fs/cgroup/cpuset/cpuset.cpus").is_file():
            # MindSpore only logs a warning and binds nothing when it cannot read the v1 cpuset file.
            raise HostSettingsError(f"{api}: /sys/fs/cgroup/cpuset/cpuset.cpus is missing here, so MindSpore "
                                    "2.10 would bind nothing (it only logs a warning); leave mindspore.affinity off")
        done.append(_call(api, lambda: ms.runtime.set_cpu_affinity(True, cpus, modules)))
    if m.launch == "blocking":
        done.append(_call("mindspore.runtime.launch_blocking()", ms.runtime.launch_blocking))
    else:
        done.append({"api": "mindspore.runtime.launch_blocking()", "status": "not called (launch = pipelined)"})
    _applied.extend(done)
    return done


def apply_gc(settings: HostSettings) -> list[dict]:
    """Apply the GC thresholds and enable/disable (at configure time; freezing waits for the warm-up)."""
    g = settings.gc
    done = []
    if g.thresholds is not None:
        gc.set_threshold(*g.thresholds)
        done.append({"api": f"gc.set_threshold{tuple(g.thresholds)}", "status": "applied"})
    if not g.enabled:
        gc.disable()
        done.append({"api": "gc.disable()", "status": "applied"})
    _applied.extend(done)
    return done


def after_warmup(settings: HostSettings) -> dict:
    """Called by a workload once warmed up: gc.freeze() when the settings ask for it."""
    if settings.gc.freeze_after_warmup:
        gc.collect()
        gc.freeze()
        _warmup.update({"api": "gc.collect(); gc.freeze()", "status": "applied",
                        "frozen_objects": gc.get_freeze_count()})
    return dict(_warmup)


def observe() -> dict:
    """What the process actually runs with: allocator libraries mapped, preload, threads and their CPUs."""
    mapped: set[str] = set()
    stems = tuple(s.split(".so")[0] + ".so" for a in ALLOCATORS.values() for s in a.sonames)
    try:
        with open("/proc/self/maps") as fh:
            for line in fh:
                fields = line.split(maxsplit=5)
                path = fields[5].strip() if len(fields) == 6 else ""
                if os.path.basename(path).startswith(stems):
                    mapped.add(path)
    except OSError:
        pass
    threads: dict[str, dict] = {}
    try:
        for tid in sorted(os.listdir("/proc/self/task"), key=int):
            try:
                comm = Path(f"/proc/self/task/{tid}/comm").read_text().strip()
                cpus = sorted(os.sched_getaffinity(int(tid)))
            except OSError:
                continue
            name = re.sub(r"_\d+$", "", comm)
            entry = threads.setdefault(name, {"count": 0, "cpus": []})
            entry["count"] += 1
            if cpus not in entry["cpus"]:
                entry["cpus"].append(cpus)
    except OSError:
        pass
    return {"allocator_libraries": sorted(mapped), "ld_preload": os.environ.get("LD_PRELOAD", ""),
            "malloc_env": {k: v for k, v in os.environ.items()
                           if k in ("GLIBC_TUNABLES", "MALLOC_CONF") or k.startswith(("MIMALLOC_", "TCMALLOC_"))},
            "threads": threads, "gc_threshold": list(gc.get_threshold()), "gc_enabled": gc.isenabled()}


def record(settings: HostSettings) -> dict:
    """The `host_settings` field of a workload record: what was asked, what was called, what is observed."""
    observed = observe()
    want = settings.allocator.name
    loaded = [os.path.basename(p) for p in observed["allocator_libraries"]]
    if want == "glibc":
        allocator_ok = not loaded
    else:
        allocator_ok = any(b.startswith(s.split(".so")[0]) for b in loaded for s in ALLOCATORS[want].sonames)
    warnings = []
    if not allocator_ok:
        warnings.append(f"allocator {want!r} asked for, but the process maps {loaded or 'no allocator library'}")
    if settings.mindspore.affinity:
        everywhere = sorted(os.sched_getaffinity(0))
        bound = [n for n, t in observed["threads"].items() if any(c != everywhere for c in t["cpus"])]
        if not bound:
            warnings.append("mindspore.runtime.set_cpu_affinity was called but no live thread's CPU set is narrower "
                            f"than the process's {everywhere} (MindSpore 2.10 binds only the threads it names, "
                            "and in blocking launch those may not exist)")
    startup = observe_startup()
    warnings += startup_warnings(settings, startup)
    return {"name": settings.name, "source": settings.source, "summary": settings.summary(),
            "settings": settings.to_json(), "applied": list(_applied) + ([_warmup] if _warmup else []),
            "observed": observed, "startup": startup, "allocator_in_effect": allocator_ok, "warnings": warnings}


# -------------------------------------------------------------------------------------- launcher


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m runtime.hostenv",
                                 description="Resolve host settings; print them, or run a command under them.")
    sub = ap.add_subparsers(dest="command", required=True)
    for cmd, text in (("show", "print the effective settings (JSON) and the environment delta"),
                      ("env", "print the environment delta as shell `export` lines"),
                      ("exec", "run CMD ... with the environment delta (allocator preload, tunables, settings) "
                               "and, when CMD is a Python interpreter, the settings' interpreter options "
                               "(-X frozen_modules)"),
                      ("precompile", "compile PATHs (default: this interpreter's site-packages and the runtime "
                                     "package) to pycs of startup.bytecode mode when startup.precompile is true; "
                                     "prints a JSON summary")):
        p = sub.add_parser(cmd, help=text)
        p.add_argument("settings", help="a name under profiles/host/ (e.g. jemalloc), a path, or `default`")
        p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                       help="override one key (after the file and HOSTPGO_HOST_SET); repeat")
        if cmd == "exec":
            p.add_argument("cmd", nargs=argparse.REMAINDER, help="-- then the command")
        if cmd == "precompile":
            p.add_argument("paths", nargs="*", metavar="PATH", help="directories or files to compile")
            p.add_argument("--workers", type=int, default=None, help="compiling processes (default: one per CPU)")
    args = ap.parse_args(argv)
    try:
        ref = None if args.settings == "default" and not (settings_dir() / "default.toml").is_file() \
            else args.settings
        settings = resolve(ref, args.set)
        delta = process_env(settings)
    except HostSettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.command == "show":
        print(json.dumps({"settings": settings.to_json(), "summary": settings.summary(), "env": delta}, indent=1))
        return 0
    if args.command == "env":
        for k, v in delta.items():
            print(f"export {k}={shlex.quote(v)}")
        if interpreter_args(settings):
            print(f"# and start the interpreter with: {' '.join(interpreter_args(settings))}")
        return 0
    if args.command == "precompile":
        if not settings.startup.precompile:
            print(f"precompile: {settings.name}: startup.precompile is false; nothing compiled", file=sys.stderr)
            print(json.dumps({"settings": settings.name, "precompile": False, "files": 0}))
            return 0
        try:
            summary = precompile(settings, args.paths, workers=args.workers)
        except HostSettingsError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        for w in summary["warnings"]:
            print(f"warning: {w}", file=sys.stderr)
        print(json.dumps({**summary, "precompile": True}, indent=1))
        return 0
    cmd = list(args.cmd)
    if cmd and cmd[0] == "--":
        cmd = cmd[1:]
    if not cmd:
        print("error: exec: give the command after --", file=sys.stderr)
        return 2
    try:
        cmd = with_interpreter_args(settings, cmd)
    except HostSettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print("RUN: " + shlex.join(cmd) + "  [env: " +
          " ".join(f"{k}={shlex.quote(v)}" for k, v in delta.items() if k != ENV_SETTINGS) +
          f" {ENV_SETTINGS}=<{settings.name}>]", file=sys.stderr)
    env = dict(os.environ)
    env.update(delta)
    try:
        os.execvpe(cmd[0], cmd, env)
    except OSError as exc:
        print(f"error: cannot execute {cmd[0]!r}: {exc.strerror}", file=sys.stderr)
        return 127
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main())
