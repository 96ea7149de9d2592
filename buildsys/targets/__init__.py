"""The target registry: one module per target (buildsys/targets/NAME.py) plus its data (NAME.toml).

The data says what a target is (description, build system, the tools it needs, pinned sources, outputs,
what verify runs, which binary BOLT may touch); the module plans it. The CLI, the engine, the manifest
and the pipeline look targets up here, so adding one is adding `NAME.py` and `NAME.toml` in this
directory. A module provides:

    prepare(request: Request) -> inputs   (the target's own facts; --source and --profile-data validated)
    plan(inputs) -> BuildPlan             (pure: runs nothing)

buildsys.engine makes the Request (profile resolved for the target, compiler selected, probed host facts)
and calls them; `python -m buildsys build NAME` and `targets` list what is registered here.
"""

from __future__ import annotations

import importlib
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, Mapping

from hostpgo.runner import which

from ..errors import InputError
from ..systems import get as system

if TYPE_CHECKING:
    from ..core.paths import WorkArea
    from ..toolchain import Compiler, Toolchains
    from ..toolchain.facts import HostFacts
    from ..toolchain.profile import Profile

TARGETS_DIR = Path(__file__).resolve().parent
SYSTEMS = ("autotools", "cmake", "meson", "pep517", "bazel")
_KEYS = {"description": str, "system": str, "tools": list, "sources": dict, "outputs": dict, "verify": dict,
         "bolt": dict, "needs_source": bool}


@dataclass(frozen=True)
class TargetSpec:
    """One target's declarative data (buildsys/targets/NAME.toml)."""

    name: str
    """The target's name: its module and data file stem, `[targets.NAME]` in profiles, `build NAME`."""
    description: str
    system: str
    """The build system module under buildsys/systems/ that owns its steps and flag channels."""
    data_file: Path
    tools: tuple[str, ...] = ()
    """Executables a build needs besides the compiler."""
    sources: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    """version -> pinned archive (file, sha256, url, topdir, ...), read by buildsys.pipeline.sources."""
    outputs: Mapping[str, Any] = field(default_factory=dict)
    """What a build publishes below its install prefix."""
    verify: Mapping[str, Any] = field(default_factory=dict)
    """What the verify stage runs."""
    bolt: Mapping[str, str] = field(default_factory=dict)
    """The binary BOLT may rewrite below the build directory (`static`, `shared`)."""
    needs_source: bool = False
    """True when there is no pinned archive and the user must point at a tree (`--source DIR`)."""

    def module(self) -> ModuleType:
        """The recipe module (imported on first use, so reading the registry imports no recipe)."""
        return importlib.import_module(f"{__name__}.{self.name}")


def names(targets_dir: Path = TARGETS_DIR) -> tuple[str, ...]:
    """Every registered target: a NAME.toml with a NAME.py beside it."""
    return tuple(sorted(p.stem for p in targets_dir.glob("*.toml") if p.with_suffix(".py").is_file()))


def _read(path: Path) -> TargetSpec:
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise InputError(f"{path}: cannot read target data: {exc}") from None
    for key, value in data.items():
        if key not in _KEYS:
            raise InputError(f"{path}: unknown key '{key}'; allowed: {', '.join(_KEYS)}")
        if not isinstance(value, _KEYS[key]):
            raise InputError(f"{path}: key '{key}' must be {_KEYS[key].__name__}")
    if data.get("system") not in SYSTEMS:
        raise InputError(f"{path}: key 'system' has value {data.get('system')!r}; allowed: {', '.join(SYSTEMS)}")
    return TargetSpec(name=path.stem, description=data.get("description", ""), system=data["system"],
                      data_file=path, tools=tuple(data.get("tools", ())), sources=data.get("sources", {}),
                      outputs=data.get("outputs", {}), verify=data.get("verify", {}), bolt=data.get("bolt", {}),
                      needs_source=data.get("needs_source", False))


def get(name: str, targets_dir: Path = TARGETS_DIR) -> TargetSpec:
    """The registered target `name`; InputError listing the known ones."""
    if name not in names(targets_dir):
        raise InputError(f"unknown target '{name}'; targets: {', '.join(names(targets_dir)) or '(none)'} "
                         f"(a target is {targets_dir}/NAME.py plus NAME.toml)")
    return _read(targets_dir / f"{name}.toml")


def every(targets_dir: Path = TARGETS_DIR) -> tuple[TargetSpec, ...]:
    return tuple(get(n, targets_dir) for n in names(targets_dir))


@dataclass(frozen=True)
class Request:
    """What the engine hands a target's `prepare`: the generic facts, gathered once."""

    spec: TargetSpec
    profile: Profile
    """The resolved profile (its [targets.NAME] tables applied)."""
    compiler: Compiler
    """The selected compiler (a stand-in when planning without one)."""
    compiler_notes: tuple[str, ...]
    toolchains: Toolchains
    """Everything detected: host, compilers."""
    work: WorkArea
    jobs: int
    facts: HostFacts | None = None
    """Probed host facts, gathered only when the profile needs them (BOLT: branch sampling)."""
    user_source: Path | None = None
    """--source: the pinned archive, or a directory holding it."""
    profile_data: Path | None = None
    """--profile-data: merged profile data to reuse instead of training."""
    allow_missing: bool = False
    """Planning only (show-profile, pipeline --dry-run): a missing tool becomes a note, not an error."""
    options: Mapping[str, Any] = field(default_factory=dict)
    """The target's own command-line options (see cli_arguments), by argparse destination."""


def cli_arguments(parser: Any, targets_dir: Path = TARGETS_DIR) -> None:
    """The door for a target's own `build` options: a recipe module with `add_arguments(group)` and `OPTIONS`
    (the destinations it adds) gets an argument group on the `build` parser; cli_options hands the values to
    its `prepare` as Request.options. The CLI itself names no target."""
    for name in names(targets_dir):
        mod = get(name, targets_dir).module()
        if hasattr(mod, "add_arguments"):
            mod.add_arguments(parser.add_argument_group(f"target {name}"))


def cli_options(target: str, args: Any, targets_dir: Path = TARGETS_DIR) -> dict[str, Any]:
    """The parsed values of `target`'s own options; InputError when another target's option was given."""
    own: dict[str, Any] = {}
    for name in names(targets_dir):
        mod = get(name, targets_dir).module()
        for dest in getattr(mod, "OPTIONS", ()):
            value = getattr(args, dest, None)
            if name == target:
                own[dest] = value
            elif value is not None and dest not in getattr(get(target, targets_dir).module(), "OPTIONS", ()):
                raise InputError(f"--{dest.replace('_', '-')} belongs to target '{name}', not '{target}'")
    return own


@dataclass(frozen=True)
class Availability:
    """Whether a target can be built on this machine, and why not."""

    ok: bool
    why: str


def availability(spec: TargetSpec, toolchains: Toolchains) -> Availability:
    """Buildable here: a compiler, the target's tools and its build system's tools are present (no probe runs)."""
    missing = [t for t in (*spec.tools, *system(spec.system).TOOLS) if which(t) is None]
    problems = []
    if not toolchains.compilers:
        problems.append("no C compiler found (python -m buildsys toolchain)")
    if missing:
        problems.append(f"not on PATH: {', '.join(missing)}")
    if spec.needs_source:
        problems.append("needs --source DIR (no pinned archive)")
    if problems:
        return Availability(False, "; ".join(problems))
    return Availability(True, f"{len(toolchains.compilers)} compiler(s); tools present")
