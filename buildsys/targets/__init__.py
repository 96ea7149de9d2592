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
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

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
         "bolt": dict, "needs_source": bool, "build": dict, "cli_args": dict, "recipe": dict}
_ARG_KEYS = {"help": str, "choices": list, "default": str}


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
    build: Mapping[str, Any] = field(default_factory=dict)
    """Build-system arguments the recipe passes (cmake: `generator`, `defines`; autotools: `bootstrap`,
    `configure`, `flag_vars`), so the recipe module stays code and the options stay data."""
    cli_args: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    """Extra `build` options this target declares: name -> {help, choices, default}; `[cli_args.device]` becomes
    `--device` on `python -m buildsys build` and reaches the recipe as `Request.target_args["device"]`."""
    recipe: Mapping[str, Any] = field(default_factory=dict)
    """The recipe module's own data (what it recognises a checkout by, build requirements, ...), read only by it."""

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
    for name, arg in data.get("cli_args", {}).items():
        if not isinstance(arg, dict) or set(arg) - set(_ARG_KEYS) or "help" not in arg:
            raise InputError(f"{path}: [cli_args.{name}] needs 'help' and may have {', '.join(_ARG_KEYS)}")
        for key, kind in _ARG_KEYS.items():
            if key in arg and not isinstance(arg[key], kind):
                raise InputError(f"{path}: [cli_args.{name}] key '{key}' must be {kind.__name__}")
    if data.get("system") not in SYSTEMS:
        raise InputError(f"{path}: key 'system' has value {data.get('system')!r}; allowed: {', '.join(SYSTEMS)}")
    return TargetSpec(name=path.stem, description=data.get("description", ""), system=data["system"],
                      data_file=path, tools=tuple(data.get("tools", ())), sources=data.get("sources", {}),
                      outputs=data.get("outputs", {}), verify=data.get("verify", {}), bolt=data.get("bolt", {}),
                      needs_source=data.get("needs_source", False), build=data.get("build", {}),
                      cli_args=data.get("cli_args", {}), recipe=data.get("recipe", {}))


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
    target_args: Mapping[str, str] = field(default_factory=dict)
    """Values of the extra build options the target declares (`cli_args` in its data), by name."""

    def arg(self, name: str) -> str | None:
        """A declared build option's value: as given, else its declared default (None when it has none)."""
        if name not in self.spec.cli_args:
            raise InputError(f"target '{self.spec.name}' declares no build option '--{name}'")
        return self.target_args.get(name, self.spec.cli_args[name].get("default"))


def check_target_args(spec: TargetSpec, given: Mapping[str, str]) -> None:
    """Refuse a build option the target does not declare (e.g. --device for cpython), or a value outside its
    declared choices; InputError naming the option and the targets that take it."""
    for name, value in given.items():
        if name not in spec.cli_args:
            takers = [s.name for s in every() if name in s.cli_args]
            raise InputError(f"--{name.replace('_', '-')} does not apply to target '{spec.name}' (taken by: "
                             f"{', '.join(takers) or 'no target'})")
        choices = spec.cli_args[name].get("choices")
        if choices and value not in choices:
            raise InputError(f"--{name.replace('_', '-')} {value}: target '{spec.name}' takes "
                             f"{', '.join(choices)}")


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
