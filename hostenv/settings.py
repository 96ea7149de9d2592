"""Host settings as data: the schema, the frozen model, and resolving a file through the one layered loader.

A settings file is `profiles/host/NAME.toml` (or any path)::

    description = "jemalloc preloaded, everything else default"
    extends = "default"                 # optional: another settings name or path

    [allocator]
    name = "jemalloc"                   # a row of hostenv/allocators.toml (glibc: nothing preloaded)
    [allocator.tunables]                # reach the process through the allocator's own channel
    background_thread = "false"         # jemalloc: MALLOC_CONF=background_thread:false

    [mindspore]
    launch = "blocking"                 # blocking | pipelined
    dispatch_threads = 1
    affinity = true
    affinity_cpus = ["0-1"]
    affinity_modules = { main = [0], runtime = [1], pynative = [1] }

    [gc]
    thresholds = [10000, 20, 20]
    freeze_after_warmup = true

    [startup]
    precompile = true
    bytecode = "unchecked-hash"
    frozen_modules = true
    no_debug_ranges = true

Resolution is hostpgo.layered's one precedence: defaults -> `extends` chain -> the file -> environment
(`HOSTPGO_RUNTIME_LAUNCH_BLOCKING=0|1` for the launch mode, then `HOSTPGO_HOST_SET="gc.enabled=false
allocator.name=mimalloc"`, shell words) -> command-line `--set`. An unknown key or a bad value is an error
naming where it came from: the file, `environment variable HOSTPGO_HOST_SET ('item')` or `command line --set
item`. The per-key reference (docs/host-settings.md) is generated from SCHEMA.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from hostpgo.layered import Key, Layered, Loader, Origin, schema_reference

from . import allocators
from .errors import HostSettingsError

ENV_SETTINGS = "HOSTPGO_HOST_SETTINGS"
"""Environment variable carrying the resolved settings (JSON) into the process that applies them."""
ENV_SET = "HOSTPGO_HOST_SET"
"""Environment overrides: `section.key=value` items as shell words (values in TOML syntax, or bare strings)."""
ENV_LAUNCH_BLOCKING = "HOSTPGO_RUNTIME_LAUNCH_BLOCKING"
"""The runtime's older switch: 0 keeps MindSpore's asynchronous (pipelined) launch, 1 blocks."""
ENV_PROFILES = "HOSTPGO_HOST_PROFILES"
"""Directory of named settings files (default: profiles/host/ of this source tree)."""

LAUNCH_MODES = ("blocking", "pipelined")
AFFINITY_MODULES = ("main", "runtime", "pynative", "minddata")
BYTECODE_MODES = ("timestamp", "checked-hash", "unchecked-hash")
"""pyc invalidation modes (PEP 552), as compileall's --invalidation-mode spells them."""

_TRUE, _FALSE = ("true", "on", "1"), ("false", "off", "0")


# ---------------------------------------------------------------------------------- value converters
# Each turns an accepted raw value (TOML, or a bare string from an override) into the model's value, or raises
# ValueError saying what would be accepted; hostpgo.layered prefixes where the value came from and the key.
# ruff: noqa: TRY004 (a wrong type is a bad value here: Key.convert's contract is ValueError)


def _bool(value: object) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in _TRUE + _FALSE:
        return value.lower() in _TRUE
    raise ValueError(f"has value {value!r}; allowed values: true, false")


def _opt_bool(value: object) -> bool | None:
    if value in ("default", None):
        return None
    try:
        return _bool(value)
    except ValueError:
        raise ValueError(f"has value {value!r}; allowed values: true, false, \"default\" (the interpreter's)") from None


def _opt_threads(value: object) -> int | None:
    if value in (0, "default"):
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"has value {value!r}; allowed values: a positive thread count, or 0 / \"default\" "
                         "(MindSpore's)")
    return value


def _opt_path(value: object) -> str | None:
    if value in ("", None):
        return None
    if not isinstance(value, str):
        raise ValueError(f"has value {value!r}; allowed values: a path, or \"\" (discover)")
    return value


def _str_pairs(value: object) -> tuple[tuple[str, str], ...]:
    if not isinstance(value, Mapping):
        raise ValueError(f"has value {value!r}; expected a table of option = value")
    out = []
    for k, v in value.items():
        if isinstance(v, bool):
            v = "true" if v else "false"
        if not isinstance(v, (str, int, float)):
            raise ValueError(f"option {k!r} has value {v!r}; expected a string or a number")
        out.append((str(k), str(v)))
    return tuple(out)


def _cpu_ranges(value: object) -> tuple[str, ...]:
    if not isinstance(value, (list, tuple)):
        raise ValueError(f"has value {value!r}; expected a list like [\"0-3\", \"8-11\"]")
    for item in value:
        lo, _, hi = str(item).partition("-")
        if not isinstance(item, str) or not lo.isdigit() or (hi and (not hi.isdigit() or int(hi) < int(lo))):
            raise ValueError(f"has entry {item!r}; each entry must be a CPU range \"X-Y\" or a CPU \"X\"")
    return tuple(value)


def _module_map(value: object) -> tuple[tuple[str, tuple[int, ...]], ...]:
    if not isinstance(value, Mapping):
        raise ValueError(f"has value {value!r}; expected a table module = [cpu indices]")
    out = []
    for k, v in value.items():
        if k not in AFFINITY_MODULES:
            raise ValueError(f"names module {k!r}; allowed modules: {', '.join(AFFINITY_MODULES)}")
        if not isinstance(v, (list, tuple)) or not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0
                                                       for i in v):
            raise ValueError(f"module {k!r} has {v!r}; expected a list of non-negative CPU indices")
        out.append((k, tuple(v)))
    return tuple(out)


def _thresholds(value: object) -> tuple[int, int, int] | None:
    if value in (None, "default") or value == []:
        return None
    if not isinstance(value, (list, tuple)) or len(value) != 3 or \
            not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in value):
        raise ValueError(f"has value {value!r}; expected three non-negative integers [g0, g1, g2] or \"default\"")
    return tuple(value)  # type: ignore[return-value]


def _bool_key(default: bool, doc: str) -> Key:
    return Key(None, default, doc, convert=_bool, check_doc="true, false")


SCHEMA: dict[str, dict[str, Key]] = {
    "allocator": {
        "name": Key(str, "glibc", "which malloc serves the process: `glibc` (the C library's own, nothing "
                    "preloaded) or a row of hostenv/allocators.toml, preloaded with LD_PRELOAD",
                    allowed=allocators.names()),
        "library": Key(None, "", "explicit path of the allocator's shared object; empty discovers it in the "
                       "distribution's library directories", convert=_opt_path, check_doc="a path, or \"\""),
        "build": Key(None, "", "a hostpgo-built allocator instead of the distribution's: the name of its install "
                     "prefix under $HOSTPGO_HOME/install (`mimalloc-2.0.9-workload-pgo-lto`, made by `python -m "
                     "buildsys build mimalloc --profile workload-pgo-lto`) or that prefix's path; the shared object "
                     "its manifest names is preloaded (its manifest must be a build of `name`; `library`, when set, "
                     "wins)", convert=_opt_path, check_doc="a build name or path, or \"\""),
        "tunables": Key(None, {}, "allocator options (`[allocator.tunables]`, option = value); they reach the "
                        "process through the allocator's channel: GLIBC_TUNABLES (glibc.malloc.KEY=V), "
                        "MALLOC_CONF (jemalloc KEY:V) or one variable per option (MIMALLOC_KEY, TCMALLOC_KEY)",
                        convert=_str_pairs, check_doc="a table of option = string or number"),
    },
    "mindspore": {
        "launch": Key(str, "blocking", "`blocking` calls mindspore.runtime.launch_blocking() (synchronous "
                      "kernels); `pipelined` keeps MindSpore's asynchronous launch pipeline", allowed=LAUNCH_MODES),
        "dispatch_threads": Key(None, 0, "mindspore.runtime.dispatch_threads_num(N) (runtime actor threads); "
                                "0 keeps MindSpore's default (5)", convert=_opt_threads,
                                check_doc="a positive integer, or 0 / \"default\""),
        "op_threads": Key(None, 0, "mindspore.device_context.cpu.op_tuning.threads_num(N) (CPU kernel threads); "
                          "0 keeps MindSpore's default (25)", convert=_opt_threads,
                          check_doc="a positive integer, or 0 / \"default\""),
        "affinity": _bool_key(False, "call mindspore.runtime.set_cpu_affinity(True, ...): bind MindSpore's "
                              "module threads to cores (needs the cgroup v1 cpuset file)"),
        "affinity_cpus": Key(None, [], "the process's CPU ranges for set_cpu_affinity (`[\"0-1\"]`); empty lets "
                             "MindSpore choose", convert=_cpu_ranges, check_doc="a list of \"X-Y\" ranges"),
        "affinity_modules": Key(None, {}, "module -> indices into affinity_cpus (`{ main = [0], runtime = [1] }`; "
                                f"modules: {', '.join(AFFINITY_MODULES)}); empty binds `main` only",
                                convert=_module_map, check_doc="a table module = [indices]"),
    },
    "gc": {
        "enabled": _bool_key(True, "false calls gc.disable() (reference counting still frees acyclic garbage)"),
        "thresholds": Key(None, "default", "gc.set_threshold(g0, g1, g2); \"default\" keeps the interpreter's "
                          "(700, 10, 10)", convert=_thresholds, check_doc="[g0, g1, g2], or \"default\""),
        "freeze_after_warmup": _bool_key(False, "gc.collect() then gc.freeze() once a workload has warmed up: "
                                         "model weights and engine state leave the generations the collector "
                                         "scans"),
    },
    "startup": {
        "precompile": _bool_key(False, "setup compiles site-packages and the runtime, hostenv and hostpgo "
                                "packages to pycs of `bytecode` mode (`python -m hostenv precompile SETTINGS`); "
                                "false leaves the pycs pip wrote (timestamp mode)"),
        "bytecode": Key(str, "timestamp", "invalidation mode of precompiled pycs: `timestamp` (each import "
                        "compares the source's mtime and size), `checked-hash` (each import hashes the source), "
                        "`unchecked-hash` (the pyc is trusted: an edited source is not seen until precompiled "
                        "again)", allowed=BYTECODE_MODES),
        "frozen_modules": Key(None, "default", "`-X frozen_modules=on|off`: the start-up stdlib modules from the "
                              "interpreter's frozen copies (true) or from their pycs (false); \"default\" passes "
                              "nothing (installed builds: on, a build tree: off). An interpreter option: `exec` "
                              "puts it on the command line", convert=_opt_bool,
                              check_doc="true, false, \"default\""),
        "no_debug_ranges": _bool_key(False, "PYTHONNODEBUGRANGES=1: code compiled by the process has no column "
                                     "positions; precompiling under it writes pycs without them (tracebacks "
                                     "lose their `^^^` markers)"),
    },
}
"""section -> key -> Key: what a host settings file may hold. docs/host-settings.md is generated from it."""


# --------------------------------------------------------------------------------------------- model


@dataclass(frozen=True)
class AllocatorSettings:
    """Which malloc serves the process, and its tunables (SCHEMA["allocator"] documents each key)."""

    name: str = "glibc"
    """`glibc` or a row of hostenv/allocators.toml."""
    library: str | None = None
    """Explicit shared object; None discovers it."""
    build: str | None = None
    """A hostpgo-built allocator (install prefix name or path); None: the distribution's."""
    tunables: tuple[tuple[str, str], ...] = ()
    """Allocator options as (key, value), in file order."""


@dataclass(frozen=True)
class MindSporeSettings:
    """MindSpore runtime settings applied in-process before the first operator runs."""

    launch: str = "blocking"
    """`blocking` or `pipelined`."""
    dispatch_threads: int | None = None
    """Runtime actor threads; None keeps MindSpore's default."""
    op_threads: int | None = None
    """CPU kernel threads; None keeps MindSpore's default."""
    affinity: bool = False
    """Whether set_cpu_affinity binds module threads to cores."""
    affinity_cpus: tuple[str, ...] = ()
    """CPU ranges for set_cpu_affinity; empty lets MindSpore choose."""
    affinity_modules: tuple[tuple[str, tuple[int, ...]], ...] = ()
    """Module -> indices into affinity_cpus."""


@dataclass(frozen=True)
class GcSettings:
    """The Python garbage collector's policy for the serving loop."""

    enabled: bool = True
    """False calls gc.disable()."""
    thresholds: tuple[int, int, int] | None = None
    """gc.set_threshold arguments; None keeps the interpreter's."""
    freeze_after_warmup: bool = False
    """gc.collect() and gc.freeze() after a workload's warm-up."""


@dataclass(frozen=True)
class StartupSettings:
    """How the interpreter starts: the pycs it finds and the options it is started with."""

    precompile: bool = False
    """Whether setup precompiles the environment's pycs."""
    bytecode: str = "timestamp"
    """Invalidation mode of precompiled pycs."""
    frozen_modules: bool | None = None
    """`-X frozen_modules`; None passes nothing."""
    no_debug_ranges: bool = False
    """PYTHONNODEBUGRANGES=1."""


SECTIONS = {"allocator": AllocatorSettings, "mindspore": MindSporeSettings, "gc": GcSettings,
            "startup": StartupSettings}
"""Schema section -> its model class (same keys as SCHEMA)."""


@dataclass(frozen=True)
class HostSettings:
    """Every host lever of one process, resolved."""

    name: str = "default"
    """The settings' name (file stem, or `default`)."""
    description: str = ""
    """The file's (or its nearest base's) description."""
    source: str | None = None
    """The file the settings came from (None: defaults only)."""
    allocator: AllocatorSettings = field(default_factory=AllocatorSettings)
    mindspore: MindSporeSettings = field(default_factory=MindSporeSettings)
    gc: GcSettings = field(default_factory=GcSettings)
    startup: StartupSettings = field(default_factory=StartupSettings)
    overrides: tuple[str, ...] = ()
    """The environment and command-line overrides applied on top of the file, in order, as given."""

    def to_json(self) -> dict:
        data = asdict(self)
        data["allocator"]["tunables"] = dict(self.allocator.tunables)
        data["mindspore"]["affinity_modules"] = {k: list(v) for k, v in self.mindspore.affinity_modules}
        data["mindspore"]["affinity_cpus"] = list(self.mindspore.affinity_cpus)
        data["gc"]["thresholds"] = list(self.gc.thresholds) if self.gc.thresholds else None
        data["overrides"] = list(self.overrides)
        return data

    @classmethod
    def from_json(cls, data: Mapping, where: str = "host settings JSON") -> HostSettings:
        """The settings `to_json` wrote; every value is checked against SCHEMA again (errors name `where`)."""
        values: dict[str, dict[str, Any]] = {}
        for section in SCHEMA:
            body = data.get(section) or {}
            if not isinstance(body, Mapping):
                raise HostSettingsError(f"{where}: '{section}' must be a table")
            values[section] = {key: LOADER.check(where, section, key, value)
                               for key, value in body.items() if value is not None}
        return cls(name=str(data.get("name", "default")), description=str(data.get("description", "")),
                   source=data.get("source"), overrides=tuple(data.get("overrides", ())),
                   **{s: SECTIONS[s](**values[s]) for s in SCHEMA})

    def summary(self) -> str:
        """One line: the levers that differ from the defaults."""
        parts = []
        default = HostSettings()
        for section, keys in SCHEMA.items():
            mine, base = getattr(self, section), getattr(default, section)
            for key in keys:
                if getattr(mine, key) != getattr(base, key):
                    parts.append(f"{section}.{key}={show_value(getattr(mine, key))}")
        return " ".join(parts) or "defaults"

    def to_toml(self, header: Sequence[str] = ()) -> str:
        """The settings as a file that resolves back to the same values (differences from defaults only)."""
        lines = [f"# {h}" for h in header]
        if self.description:
            lines.append(f"description = {_toml_value(self.description)}")
        default = HostSettings()
        for section, keys in SCHEMA.items():
            mine, base = getattr(self, section), getattr(default, section)
            body, tables = [], []
            for key in keys:
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


def show_value(value: object) -> str:
    """A model value in one short word (summaries and warnings)."""
    if isinstance(value, tuple) and value and isinstance(value[0], tuple):
        return ",".join(f"{k}:{show_value(v)}" for k, v in value)
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


# ------------------------------------------------------------------------------------------ loading


def repo_root() -> Path:
    return Path(__file__).resolve().parent.parent


def settings_dir() -> Path:
    """Where named settings live: $HOSTPGO_HOST_PROFILES, else profiles/host/ of this source tree."""
    return Path(os.environ.get(ENV_PROFILES, repo_root() / "profiles" / "host"))


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


LOADER = Loader(SCHEMA, what="host settings", find=find_file, error=HostSettingsError)
"""The host-settings loader (hostpgo.layered): also parses perf tune-host's search-space items."""


def launch_blocking_layer(env: Mapping[str, str]) -> list[tuple[Origin, str, str, Any]]:
    """HOSTPGO_RUNTIME_LAUNCH_BLOCKING as a loader env layer: 0 -> pipelined, 1 -> blocking, unset/empty -> none."""
    raw = env.get(ENV_LAUNCH_BLOCKING, "").strip()
    if not raw:
        return []
    origin = Origin("env", ENV_LAUNCH_BLOCKING, raw)
    if raw.lower() in _FALSE:
        return [(origin, "mindspore", "launch", "pipelined")]
    if raw.lower() in _TRUE:
        return [(origin, "mindspore", "launch", "blocking")]
    raise HostSettingsError(f"{origin}: must be 0 (pipelined launch) or 1 (blocking launch)")


def _override_text(origin: Origin) -> str:
    if origin.where == ENV_LAUNCH_BLOCKING:
        return f"{ENV_LAUNCH_BLOCKING}={origin.item}"
    if origin.kind == "env":
        return f"{origin.where}: {origin.item}"
    return f"{origin.where} {origin.item}"


def resolve_layered(ref: str | os.PathLike[str] | None = None, sets: Sequence[str] = (),
                    env: Mapping[str, str] | None = None, *, set_flag: str = "--set") -> Layered:
    """The loader's result for `ref`: values per section and where each came from (see `resolve`)."""
    env = os.environ if env is None else env
    return LOADER.resolve(None if ref is None else os.fspath(ref), environ=env, env_var=ENV_SET, sets=sets,
                          set_flag=set_flag, env_layers=launch_blocking_layer(env))


def from_layered(layered: Layered) -> HostSettings:
    """The model of a loader result."""
    source = layered.files[0] if layered.files else None
    return HostSettings(name=source.stem if source else "default", description=layered.description,
                        source=str(source) if source else None,
                        overrides=tuple(_override_text(o) for o in layered.overrides),
                        **{s: SECTIONS[s](**layered.values[s]) for s in SCHEMA})


def resolve(ref: str | os.PathLike[str] | None = None, sets: Sequence[str] = (),
            env: Mapping[str, str] | None = None, *, set_flag: str = "--set") -> HostSettings:
    """defaults -> `ref` (after its `extends` chain) -> HOSTPGO_RUNTIME_LAUNCH_BLOCKING -> HOSTPGO_HOST_SET -> `sets`.

    `env` defaults to os.environ; pass `{}` to ignore the environment. `set_flag` is the command-line flag that
    gave `sets` (errors and `overrides` name it).
    """
    return from_layered(resolve_layered(ref, sets, env, set_flag=set_flag))


def active(env: Mapping[str, str] | None = None) -> HostSettings:
    """The settings this process runs with: HOSTPGO_HOST_SETTINGS if a launcher set it, else defaults + env."""
    env = os.environ if env is None else env
    text = env.get(ENV_SETTINGS, "").strip()
    if not text:
        return resolve(None, env=env)
    if text.startswith("{"):
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise HostSettingsError(f"environment variable {ENV_SETTINGS}: not valid JSON: {exc}") from None
        return HostSettings.from_json(data, f"environment variable {ENV_SETTINGS}")
    return resolve(text, env=env)


REFERENCE_INTRO = """\
Host settings are the levers of one process that hostpgo does not compile in: which malloc serves it, how
MindSpore launches kernels and how many threads it runs, the garbage collector's policy, and how the
interpreter starts. They are files in `profiles/host/NAME.toml` (or any path), resolved by `hostenv`, the
package that owns them.

## Resolving

One precedence, the same as build profiles (`hostpgo.layered`): the defaults below -> the `extends` chain
(another settings name or path, base first) -> the file -> the environment -> the command line:

- `HOSTPGO_RUNTIME_LAUNCH_BLOCKING=0|1`: the runtime's older switch for `mindspore.launch` (0: pipelined);
- `HOSTPGO_HOST_SET="gc.enabled=false allocator.name=mimalloc"`: `section.key=value` items as shell words
  (a value in TOML syntax, else a bare string; quote a value with spaces);
- `--set section.key=value` (repeatable) on `python -m hostenv` and `--host-set` on `python -m runtime`.

Top-level keys are `description`, `extends` and the sections below. An unknown key or a bad value is an error
(exit 2) that names where the value came from: the file, `environment variable HOSTPGO_HOST_SET ('item')`,
or `command line --set item`. `HOSTPGO_HOST_PROFILES` replaces the directory named settings are looked up in.

## What reaches the process, and how

- **launch** (`python -m hostenv exec SETTINGS -- CMD ...`, or `python -m runtime ... --host-settings
  SETTINGS`): the allocator preload (`LD_PRELOAD`) and its tunables' variables, `PYTHONNODEBUGRANGES`, and
  `HOSTPGO_HOST_SETTINGS` (the resolved settings as JSON) are set before the process starts; when CMD is a
  Python interpreter, `-X frozen_modules=on|off` is put on its command line (no variable carries it). An
  interpreter that links an allocator itself (a hostpgo build with `optimize.allocator`) gets no preload;
  asking it for `glibc` is an error. `python -m hostenv show SETTINGS` prints the settings, where each value
  came from and the environment delta; `env` prints the delta as `export` lines.
- **in-process**: the runtime reads `HOSTPGO_HOST_SETTINGS` and applies the `[mindspore]` and `[gc]` half
  (runtime/host_apply.py) before its first operator; `gc.freeze_after_warmup` after a workload's warm-up.
  A MindSpore API that fails is an error naming the call, not a silent skip.
- **precompile** (`python -m hostenv precompile SETTINGS [PATH ...]`): when `startup.precompile` is true,
  compiles the interpreter's site-packages and the runtime, hostenv and hostpgo packages (or the PATHs) to
  pycs of `startup.bytecode` mode, with or without debug ranges as `startup.no_debug_ranges` says. Run once at setup
  (the image build does; perf does for a subject's venv), not at each start.
- **observe**: each workload record's `host_settings` says what was asked, what was called, and what the
  process really runs with (allocator libraries mapped, threads and their CPUs, GC state, frozen stdlib,
  debug ranges, the pyc modes of imported modules), with a warning wherever they differ.

The allocators are the rows of `hostenv/allocators.toml` (shared objects, tunables channel, Debian and
openEuler packages); a missing one is an error naming the package to install.
"""


def reference() -> str:
    """docs/host-settings.md: the hand-written intro and the reference generated from SCHEMA."""
    return schema_reference(SCHEMA, title="Host settings reference", intro=REFERENCE_INTRO)
