"""Build profiles: TOML files in profiles/ resolved (defaults -> extends -> target -> env -> CLI) into frozen data."""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from ..errors import ProfileError
from ..core.paths import PROFILES_DIR

TARGETS = ("cpython", "mindspore", "ray", "extension")
ARCH_RE = re.compile(r"^(march|mcpu|mtune)=[A-Za-z0-9_.+-]+$")
SKIP_RE = re.compile(r"^[A-Za-z_.$][A-Za-z0-9_.$/]*(@(llvm<\d+|x86_64|aarch64)(,(llvm<\d+|x86_64|aarch64))*)?$")


@dataclass(frozen=True)
class Key:
    """One allowed key: its type, allowed values (if a closed set), default, and what it means."""

    kind: type | tuple[type, ...]
    default: Any
    doc: str
    allowed: tuple[Any, ...] | None = None
    check: Callable[[Any], bool] | None = None
    check_doc: str = ""


# The schema: section -> key -> Key. Anything not here is an error naming file and key.
SCHEMA: dict[str, dict[str, Key]] = {
    "toolchain": {
        "family": Key(str, "gcc", "compiler family", allowed=("bisheng", "clang", "gcc")),
        "fallback": Key(str, "none", "family used when `family` is not installed (e.g. clang for bisheng)",
                        allowed=("none", "clang", "gcc")),
        "min_version": Key(int, 0, "lowest acceptable major version of the compiler (0 = any)",
                           check=lambda v: v >= 0, check_doc="an integer >= 0"),
    },
    "optimize": {
        "opt": Key(str, "O3", "optimization level", allowed=("O0", "O1", "O2", "O3", "Os")),
        "lto": Key(str, "off", "link-time optimization", allowed=("off", "thin", "full")),
        "pgo": Key(str, "off", "profile-guided optimization through hostpgo's own stages",
                   allowed=("off", "on")),
        "arch": Key(str, "none", "CPU tuning: none, native, host (detected: -march=native on x86_64, "
                    "Kunpeng -mcpu on aarch64), or march=/mcpu=/mtune=NAME",
                    check=lambda v: v in ("none", "native", "host") or bool(ARCH_RE.match(v)),
                    check_doc="one of none, native, host, march=NAME, mcpu=NAME, mtune=NAME"),
        "linker": Key(str, "default", "linker", allowed=("default", "lld", "bfd", "gold")),
        "shared": Key(bool, False, "build libpython as a shared library (--enable-shared)",
                      allowed=(True, False)),
        "semantic_interposition": Key(bool, True, "allow symbol interposition; false adds "
                                      "-fno-semantic-interposition", allowed=(True, False)),
        "allocator": Key(str, "glibc", "memory allocator the interpreter is linked against, ahead of the C "
                         "library, so it serves every library in the process (MindSpore's too): glibc "
                         "(nothing linked), jemalloc, mimalloc or tcmalloc (buildsys/allocators.toml)",
                         allowed=("glibc", "jemalloc", "mimalloc", "tcmalloc")),
        "bolt": Key(bool, False, "BOLT post-link optimization of the built interpreter (or libpython where "
                    "shared): link with relocations, profile the [pgo] tasks, re-lay out the binary "
                    "([bolt] section)", allowed=(True, False)),
    },
    "flags": {
        "cflags": Key(list, [], "extra compiler flags (CFLAGS_NODIST)"),
        "ldflags": Key(list, [], "extra linker flags (LDFLAGS_NODIST)"),
        "configure": Key(list, [], "extra configure arguments"),
    },
    "bisheng": {
        "options": Key(list, [], "Bisheng-only compiler options (e.g. -mllvm ..., -fautotune*); "
                       "used only when the detected compiler is BiSheng"),
    },
    "pgo": {
        "tasks": Key(list, ["cpython-pgo"], "training tasks (profiles/tasks/NAME.toml), run in order"),
    },
    "verify": {
        "tests": Key(list, [], "extra CPython test modules run after `-m test --pgo`"),
        "timeout": Key(int, 3600, "seconds the verify stage may take", check=lambda v: v > 0,
                       check_doc="an integer > 0"),
        "workloads": Key(list, ["decode-b1", "decode-b8", "prefill", "serve-mixed", "prefix-hit"],
                         "runtime workloads whose pinned token digests the built interpreter must reproduce "
                         "before it is installed ([] skips the check)"),
    },
    "bolt": {
        "method": Key(str, "auto", "how the BOLT profile is collected: instrument (llvm-bolt -instrument; needs "
                      "no hardware counters), perf (perf record with branch stacks + perf2bolt; needs LBR "
                      "on x86 or BRBE on aarch64), auto (perf where a probe shows branch sampling works, "
                      "else instrument)", allowed=("auto", "instrument", "perf")),
        "apply": Key(list, ["-reorder-blocks=ext-tsp", "-reorder-functions=cdsort", "-split-functions",
                            "-split-all-cold", "-split-eh", "-icf=safe", "-update-debug-sections", "-dyno-stats"],
                     "llvm-bolt options for the optimizing run (the engine adds the input, -o and -data). "
                     "-icf=safe, not all: CPython compares slot function addresses, so functions whose address "
                     "is taken must not be folded. -update-debug-sections keeps DWARF true to the new layout "
                     "(debuggers, valgrind). -use-gnu-stack is not in the default: llvm-bolt 22 turns the "
                     "PT_GNU_STACK header into its new text segment, and the output then fails the "
                     "PT_GNU_STACK check"),
        "instrument": Key(list, [], "extra llvm-bolt options for the instrumenting run (the engine adds "
                          "-instrument, --instrumentation-file=<dir>/prof.fdata and "
                          "--instrumentation-file-append-pid: one profile file per process)"),
        "skip_functions": Key(list, ["_PyEval_EvalFrameDefault@llvm<21", "sre_ucs1_match/1@llvm<21",
                                     "sre_ucs2_match/1@llvm<21", "sre_ucs4_match/1@llvm<21"],
                              "functions BOLT leaves alone (-skip-funcs), each `NAME` (always) or "
                              "`NAME@COND[,COND]` with COND `llvm<N` (llvm-bolt's major version below N) or an "
                              "arch (x86_64, aarch64): the computed-goto dispatch loops broke BOLT's CFG before "
                              "LLVM 21", check=lambda v: all(SKIP_RE.match(x) for x in v),
                              check_doc="NAME or NAME@COND[,COND], COND = llvm<N | x86_64 | aarch64"),
        "timeout": Key(int, 3600, "seconds each llvm-bolt run may take", check=lambda v: v > 0,
                       check_doc="an integer > 0"),
    },
}
TOP_KEYS = {"description": str, "extends": str, "targets": dict}


@dataclass(frozen=True)
class ToolchainSpec:
    family: str
    """Compiler family the profile asks for."""
    fallback: str
    """Family used when `family` is not installed ("none" = fail)."""
    min_version: int
    """Lowest acceptable major version (0 = any)."""


@dataclass(frozen=True)
class Optimize:
    opt: str
    """Optimization level without the dash (O2, O3, Os)."""
    lto: str
    """off, thin or full."""
    pgo: str
    """off or on (hostpgo's own instrument -> train -> merge -> use stages)."""
    arch: str
    """none, native, host, or march=/mcpu=/mtune=NAME."""
    linker: str
    """default, lld, bfd or gold."""
    shared: bool
    """--enable-shared (libpython.so) instead of a static libpython."""
    semantic_interposition: bool
    """False adds -fno-semantic-interposition."""
    allocator: str
    """glibc (nothing linked) or the allocator linked into the interpreter ahead of libc."""
    bolt: bool
    """BOLT stages after the optimized build (settings in [bolt])."""


@dataclass(frozen=True)
class ExtraFlags:
    cflags: tuple[str, ...]
    """Extra compiler flags, appended to CFLAGS_NODIST."""
    ldflags: tuple[str, ...]
    """Extra linker flags, appended to LDFLAGS_NODIST."""
    configure: tuple[str, ...]
    """Extra configure arguments."""


@dataclass(frozen=True)
class Bisheng:
    options: tuple[str, ...]
    """Bisheng-only options, dropped (with a note in the plan) on any other compiler."""


@dataclass(frozen=True)
class Pgo:
    tasks: tuple[str, ...]
    """Training task names, resolved in buildsys.pipeline.training."""


@dataclass(frozen=True)
class Verify:
    tests: tuple[str, ...]
    """Extra test modules run after the `-m test --pgo` set."""
    timeout: int
    """Seconds allowed for the verify stage."""
    workloads: tuple[str, ...] = ()
    """Runtime workloads whose golden token digests the built interpreter must reproduce."""


@dataclass(frozen=True)
class Bolt:
    method: str
    """auto, instrument or perf: how the profile BOLT uses is collected."""
    apply: tuple[str, ...]
    """llvm-bolt options of the optimizing run."""
    instrument: tuple[str, ...]
    """Extra llvm-bolt options of the instrumenting run."""
    skip_functions: tuple[str, ...]
    """Functions BOLT must not touch, with the LLVM version/arch they apply to (parsed in buildsys.pipeline.bolt)."""
    timeout: int
    """Seconds each llvm-bolt run may take."""


@dataclass(frozen=True)
class Profile:
    """A fully resolved profile for one target: what every stage reads its settings from."""

    name: str
    """Profile name (file stem)."""
    target: str
    """Target the per-target overrides were applied for."""
    description: str
    files: tuple[str, ...]
    """Files read, most derived first (the profile, then its `extends` chain)."""
    toolchain: ToolchainSpec
    optimize: Optimize
    flags: ExtraFlags
    bisheng: Bisheng
    pgo: Pgo
    verify: Verify
    bolt: Bolt
    overrides: tuple[str, ...] = field(default=())
    """Overrides applied from the environment (HOSTPGO_SET) and the command line (--set)."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def profile_path(name_or_path: str, profiles_dir: Path = PROFILES_DIR) -> Path:
    """A profile name from profiles/ or a path to a TOML file."""
    p = Path(name_or_path)
    if p.suffix == ".toml" or os.sep in name_or_path:
        if not p.is_file():
            raise ProfileError(f"profile file not found: {p}")
        return p.resolve()
    cand = profiles_dir / f"{name_or_path}.toml"
    if not cand.is_file():
        known = ", ".join(available(profiles_dir)) or "(none)"
        raise ProfileError(f"unknown profile '{name_or_path}': no {cand}; known profiles: {known}; "
                           "or pass a path to a .toml file")
    return cand


def available(profiles_dir: Path = PROFILES_DIR) -> list[str]:
    return sorted(p.stem for p in profiles_dir.glob("*.toml"))


def _read(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except tomllib.TOMLDecodeError as e:
        raise ProfileError(f"{path}: not valid TOML: {e}") from None


def _check_value(where: str, dotted: str, key: Key, value: Any) -> Any:
    kind = key.kind
    if kind is list:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ProfileError(f"{where}: key '{dotted}' must be a list of strings, got {value!r}")
        if key.check is not None and not key.check(value):
            raise ProfileError(f"{where}: key '{dotted}' has value {value!r}; each entry must be {key.check_doc}")
        return value
    if kind is int and isinstance(value, bool) or not isinstance(value, kind):
        raise ProfileError(f"{where}: key '{dotted}' must be {kind.__name__}, got {value!r}"
                           + (f"; allowed values: {_fmt_allowed(key.allowed)}" if key.allowed else ""))
    if key.allowed is not None and value not in key.allowed:
        raise ProfileError(f"{where}: key '{dotted}' has value {_fmt(value)}; allowed values: "
                           f"{_fmt_allowed(key.allowed)}")
    if key.check is not None and not key.check(value):
        raise ProfileError(f"{where}: key '{dotted}' has value {_fmt(value)}; allowed values: {key.check_doc}")
    return value


def _fmt(v: Any) -> str:
    return "true" if v is True else "false" if v is False else repr(v) if isinstance(v, str) else str(v)


def _fmt_allowed(allowed: Sequence[Any] | None) -> str:
    return ", ".join(_fmt(a) for a in allowed or ())


def validate_tables(where: str, data: Mapping[str, Any], *, top: bool = True) -> None:
    """Reject unknown sections/keys and bad values, naming `where` (the file), the key and what is allowed."""
    for sect, body in data.items():
        if top and sect in TOP_KEYS:
            if not isinstance(body, TOP_KEYS[sect]):
                raise ProfileError(f"{where}: key '{sect}' must be a {TOP_KEYS[sect].__name__}")
            continue
        if sect not in SCHEMA:
            allowed = sorted(SCHEMA) + (sorted(TOP_KEYS) if top else [])
            raise ProfileError(f"{where}: unknown key '{sect}'; allowed: {', '.join(allowed)}")
        if not isinstance(body, dict):
            raise ProfileError(f"{where}: '{sect}' must be a table ([{sect}])")
        for key, value in body.items():
            if key not in SCHEMA[sect]:
                raise ProfileError(f"{where}: unknown key '{sect}.{key}'; allowed keys in [{sect}]: "
                                   f"{', '.join(SCHEMA[sect])}")
            _check_value(where, f"{sect}.{key}", SCHEMA[sect][key], value)


def _merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in base.items()}
    for sect, body in over.items():
        if isinstance(body, dict):
            out.setdefault(sect, {})
            out[sect] = {**out[sect], **body}
        else:
            out[sect] = body
    return out


def _chain(path: Path, profiles_dir: Path, seen: tuple[Path, ...] = ()) -> list[tuple[Path, dict[str, Any]]]:
    """The file and its `extends` ancestors, base first."""
    if path in seen:
        cycle = " -> ".join(str(p) for p in (*seen, path))
        raise ProfileError(f"{path}: 'extends' forms a cycle: {cycle}")
    data = _read(path)
    validate_tables(str(path), data)
    for tgt, body in data.get("targets", {}).items():
        if tgt not in TARGETS:
            raise ProfileError(f"{path}: unknown key 'targets.{tgt}'; allowed targets: {', '.join(TARGETS)}")
        if not isinstance(body, dict):
            raise ProfileError(f"{path}: 'targets.{tgt}' must be a table")
        validate_tables(f"{path} [targets.{tgt}]", body, top=False)
    parent = data.get("extends")
    if parent is None:
        return [(path, data)]
    if parent.endswith(".toml") or "/" in parent:
        parent_path = (path.parent / parent).resolve()
        if not parent_path.is_file():
            raise ProfileError(f"{path}: key 'extends' names {parent!r}, which does not exist at {parent_path}")
    else:
        parent_path = profiles_dir / f"{parent}.toml"
        if not parent_path.is_file():
            parent_path = path.parent / f"{parent}.toml"
        if not parent_path.is_file():
            raise ProfileError(f"{path}: key 'extends' names unknown profile {parent!r}; known: "
                               f"{', '.join(available(profiles_dir))}")
    return _chain(parent_path.resolve(), profiles_dir, (*seen, path)) + [(path, data)]


def parse_override(text: str, where: str) -> tuple[str, str, Any]:
    """`section.key=value` (value as a TOML value, else a plain string) -> (section, key, value)."""
    if "=" not in text or "." not in text.split("=", 1)[0]:
        raise ProfileError(f"{where}: override {text!r} must look like section.key=value "
                           "(e.g. optimize.lto=thin)")
    dotted, raw = text.split("=", 1)
    sect, key = dotted.strip().split(".", 1)
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    validate_tables(where, {sect: {key: value}}, top=False)
    return sect, key, value


def defaults() -> dict[str, dict[str, Any]]:
    return {sect: {k: (list(key.default) if isinstance(key.default, list) else key.default)
                   for k, key in keys.items()} for sect, keys in SCHEMA.items()}


def load(name_or_path: str, *, target: str = "cpython", overrides: Sequence[str] = (),
         environ: Mapping[str, str] | None = None, profiles_dir: Path = PROFILES_DIR) -> Profile:
    """Resolve a profile: defaults -> extends chain -> [targets.TARGET] -> HOSTPGO_SET -> --set."""
    if target not in TARGETS:
        raise ProfileError(f"unknown target '{target}'; allowed: {', '.join(TARGETS)}")
    path = profile_path(name_or_path, profiles_dir)
    chain = _chain(path, profiles_dir)
    merged: dict[str, Any] = defaults()
    description = ""
    for _p, data in chain:
        merged = _merge(merged, {k: v for k, v in data.items() if k in SCHEMA})
        description = data.get("description", description)
    for _p, data in chain:
        merged = _merge(merged, data.get("targets", {}).get(target, {}))
    env = os.environ if environ is None else environ
    applied: list[str] = []
    for text in env.get("HOSTPGO_SET", "").split():
        sect, key, value = parse_override(text, "environment variable HOSTPGO_SET")
        merged[sect][key] = value
        applied.append(f"env:{text}")
    for text in overrides:
        sect, key, value = parse_override(text, "command line --set")
        merged[sect][key] = value
        applied.append(f"cli:{text}")
    o = merged["optimize"]
    f = merged["flags"]
    return Profile(
        name=path.stem, target=target, description=description,
        files=tuple(str(p) for p, _ in reversed(chain)),
        toolchain=ToolchainSpec(**merged["toolchain"]),
        optimize=Optimize(**o),
        flags=ExtraFlags(cflags=tuple(f["cflags"]), ldflags=tuple(f["ldflags"]),
                         configure=tuple(f["configure"])),
        bisheng=Bisheng(options=tuple(merged["bisheng"]["options"])),
        pgo=Pgo(tasks=tuple(merged["pgo"]["tasks"])),
        verify=Verify(tests=tuple(merged["verify"]["tests"]), timeout=merged["verify"]["timeout"],
                      workloads=tuple(merged["verify"]["workloads"])),
        bolt=Bolt(method=merged["bolt"]["method"], apply=tuple(merged["bolt"]["apply"]),
                  instrument=tuple(merged["bolt"]["instrument"]),
                  skip_functions=tuple(merged["bolt"]["skip_functions"]), timeout=merged["bolt"]["timeout"]),
        overrides=tuple(applied),
    )
