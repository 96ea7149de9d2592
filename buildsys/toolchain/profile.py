"""Build profiles: TOML files in profiles/ resolved through the one layered loader (hostpgo.layered: defaults ->
extends chain -> [targets.NAME] -> HOSTPGO_SET -> --set) into one frozen Profile."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from hostenv import allocators
from hostpgo.layered import Key, Loader, schema_reference

from ..core.paths import PROFILES_DIR
from ..errors import ProfileError

ENV_VAR = "HOSTPGO_SET"
"""The environment variable whose shell words are `section.key=value` overrides (before --set)."""
ARCH_RE = re.compile(r"^(march|mcpu|mtune)=[A-Za-z0-9_.+-]+$")
SKIP_RE = re.compile(r"^[A-Za-z_.$][A-Za-z0-9_.$/]*(@(llvm<\d+|x86_64|aarch64)(,(llvm<\d+|x86_64|aarch64))*)?$")
PER_FILE_PATH_RE = re.compile(r"^[A-Za-z0-9_+-][A-Za-z0-9_.+/-]*\.(c|cc|cpp|cxx|C)$")
"""A `tuning.per_file` source path: relative to the source tree, no `..`, no shell or glob characters (the
generated compiler wrapper matches it literally as the trailing components of the compiled file's path)."""
PER_FILE_DOC = ("a table of relative source paths (e.g. \"Python/ceval.c\", a C/C++ file, no `..`) -> lists of "
                "compiler flags without whitespace or quotes")


def power_of_two_or_zero(v: int) -> bool:
    return v == 0 or (v > 0 and v & (v - 1) == 0)


def per_file_ok(v: Any) -> bool:
    """`tuning.per_file`: {relative source path: [flag, ...]} with paths and flags the wrapper can match and pass."""
    if not isinstance(v, dict):
        return False
    for path, flags in v.items():
        if not PER_FILE_PATH_RE.match(path) or ".." in path.split("/") or "//" in path:
            return False
        if not isinstance(flags, list) or not flags:
            return False
        if not all(isinstance(f, str) and f and not re.search(r"[\s'\"\\`$]", f) for f in flags):
            return False
    return True


def per_file_tuple(v: Mapping[str, Sequence[str]]) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """The model's form of `tuning.per_file`: sorted (path, flags) pairs (hashable, stable in stage keys)."""
    return tuple((path, tuple(v[path])) for path in sorted(v))


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
                         "(nothing linked) or a row of hostenv/allocators.toml",
                         allowed=allocators.names()),
        "allocator_build": Key(str, "", "link a hostpgo-built optimize.allocator instead of the distribution's: "
                               "the profile its library target was built with (`workload-pgo-lto` links "
                               ".hostpgo/install/<allocator>-<version>-workload-pgo-lto, made by `python -m buildsys "
                               "build <allocator> --profile workload-pgo-lto`) or that install prefix's path; the link "
                               "adds an rpath to its lib directory; empty links the distribution's"),
        "bolt": Key(bool, False, "BOLT post-link optimization of the built interpreter (or libpython where "
                    "shared): link with relocations, profile the [pgo] tasks, re-lay out the binary "
                    "([bolt] section)", allowed=(True, False)),
        "compiler_cache": Key(str, "off", "compile through a compiler cache: `ccache` runs every compile through "
                              "ccache (apt package ccache, in the pipeline package set) with its cache "
                              "in the work area (.hostpgo/ccache), the profile data hashed by content for "
                              "-fprofile-use builds, and paths below the work area rewritten relative (base_dir), so "
                              "candidate builds in other build directories hit; with clang ThinLTO the link also "
                              "keeps a ThinLTO cache (.hostpgo/thinlto-cache/<digest of the link flags>)",
                              allowed=("off", "ccache")),
    },
    "flags": {
        "cflags": Key(list, [], "extra compiler flags (CFLAGS_NODIST)"),
        "ldflags": Key(list, [], "extra linker flags (LDFLAGS_NODIST)"),
        "configure": Key(list, [], "extra configure arguments"),
    },
    "tuning": {
        "inline_threshold": Key(int, 0, "inliner budget (0 = the compiler's default). clang: `-mllvm "
                                "-inline-threshold=N` (cost units; clang-22's option default is 225); gcc: "
                                "`--param=max-inline-insns-auto=N --param=max-inline-insns-single=N` (insns; gcc 12 "
                                "defaults at -O3: auto 30, single 200), the same N for both, so one knob moves both "
                                "the automatic and the `inline`-declared limits. Under LTO the inliner also runs at "
                                "link time, so it reaches the link too (`-Wl,-mllvm,-inline-threshold=N` for lld, "
                                "the params for gcc -flto)",
                                check=lambda v: v >= 0, check_doc="an integer >= 0 (0 = compiler default)"),
        "align_functions": Key(int, 0, "`-falign-functions=N` (0 = default). Under gcc LTO also at link; clang "
                               "records it as each function's alignment in the IR, so ThinLTO/LTO keeps it",
                               check=power_of_two_or_zero, check_doc="0 or a power of two (1, 2, 4, ... bytes)"),
        "align_loops": Key(int, 0, "`-falign-loops=N` (0 = default). Under LTO also at link: gcc gets the flag, "
                           "clang's lld gets `-Wl,-mllvm,-align-loops=N` (clang keeps loop alignment in the "
                           "code generator's options, which the LTO link does not see)",
                           check=power_of_two_or_zero, check_doc="0 or a power of two (1, 2, 4, ... bytes)"),
        "no_plt": Key(bool, False, "`-fno-plt`: call external functions through the GOT, no PLT stubs (also at the "
                      "gcc LTO link; clang keeps it in the IR)", allowed=(True, False)),
        "split_machine_functions": Key(bool, False, "split each function's cold blocks (by the profile) into "
                                       ".text.split: clang `-fsplit-machine-functions` (compile, and the LTO link, "
                                       "where clang passes it to lld as -plugin-opt=-split-machine-functions); gcc "
                                       "`-freorder-blocks-and-partition` (already on at -O2 on x86_64, so mostly a "
                                       "no-op there). Needs optimize.pgo = \"on\"; only the optimized build gets it",
                                       allowed=(True, False)),
        "per_file": Key(dict, {}, "per-translation-unit compiler flags: source path relative to the source tree -> "
                        "flags appended to that file's compile line only (after every other flag, so an -O here "
                        "wins), e.g. `[tuning.per_file]` `\"Python/ceval.c\" = [\"-O2\"]`, or on the command line "
                        "`--set 'tuning.per_file={\"Python/ceval.c\" = [\"-O2\"]}'`. Applied by a compiler wrapper "
                        "hostpgo writes into the build directory (`.hostpgo-wrap/<compiler name>`, passed as CC/CXX), "
                        "which works for autotools, CMake and meson alike (targets whose recipe passes no build "
                        "directory refuse the key); the wrapper's text is in the configure stage's key",
                        check=per_file_ok, check_doc=PER_FILE_DOC, convert=per_file_tuple),
    },
    "bisheng": {
        "options": Key(list, [], "Bisheng-only compiler options (e.g. -mllvm ..., -fautotune*); "
                       "used only when the detected compiler is BiSheng"),
        "autotune": Key(int, 0, "iterations of BiSheng's Autotuner loop (0 = off): build with -fautotune-generate "
                        "(tuning opportunities), `llvm-autotune minimize`, then per iteration a build with "
                        "-fautotune, the [pgo] training tasks timed and `llvm-autotune feedback`, then "
                        "`llvm-autotune finalize` and the optimized build with the tuned configuration; only where "
                        "the detected compiler is BiSheng (elsewhere the plan notes it was left out)",
                        check=lambda v: v >= 0, check_doc="an integer >= 0 (0 = off)"),
    },
    "pgo": {
        "tasks": Key(list, ["cpython-pgo"], "training tasks (profiles/tasks/NAME.toml), run in order"),
        "interpreter": Key(str, "auto", "library targets (the allocators) train and verify inside a Python "
                           "interpreter with the instrumented, then the optimized, library preloaded: `optimized` "
                           "(the pipeline's optimized CPython build under .hostpgo/install), `auto` (that build "
                           "when it is installed, else /usr/bin/python3.11) or the path of an interpreter that "
                           "imports the runtime's dependencies itself (a venv with hostpgo[runtime]); CPython "
                           "trains on its own instrumented build and ignores it",
                           check=lambda v: v in ("auto", "optimized") or v.startswith("/"),
                           check_doc="auto, optimized, or an absolute path"),
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
    "bolt.stock": {
        "apply": Key(list, ["-reorder-blocks=ext-tsp", "-split-functions", "-split-all-cold"],
                     "llvm-bolt options for a library as shipped (stripped, no .rela.text): non-relocation mode "
                     "accepts only block reordering and splitting; -reorder-functions, -icf, --relocs and "
                     "-instrument are refused there and -hugify crashes. The engine adds the input, -o, -data "
                     "and --allow-stripped (when the file has no .symtab)"),
        "collector": Key(str, "auto", "how the profile is collected: callgrind (exact instruction counts, no "
                         "hardware needed), perf (perf record -j any,u: needs LBR or BRBE), auto (perf where a probe "
                         "shows branch sampling works, else callgrind)", allowed=("auto", "callgrind", "perf")),
        "steps": Key(int, 24, "engine steps of each training workload in the measured window (callgrind "
                     "instruments every instruction in it, so keep it short on a shared machine)",
                     check=lambda v: v > 0, check_doc="an integer > 0"),
        "timeout": Key(int, 7200, "seconds each collection run and each llvm-bolt run may take",
                       check=lambda v: v > 0, check_doc="an integer > 0"),
    },
}


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
    allocator_build: str
    """'' (the distribution's allocator) or the profile/prefix of a hostpgo-built one."""
    bolt: bool
    """BOLT stages after the optimized build (settings in [bolt])."""
    compiler_cache: str = "off"
    """off, or ccache: every compile through ccache (cache in the work area; ThinLTO cache at the link)."""


@dataclass(frozen=True)
class ExtraFlags:
    cflags: tuple[str, ...]
    """Extra compiler flags, appended to CFLAGS_NODIST."""
    ldflags: tuple[str, ...]
    """Extra linker flags, appended to LDFLAGS_NODIST."""
    configure: tuple[str, ...]
    """Extra configure arguments."""


@dataclass(frozen=True)
class Tuning:
    """[tuning]: code-generation knobs the autotune search varies (each 0/false/empty = the compiler's default)."""

    inline_threshold: int = 0
    """Inliner budget (clang -inline-threshold, gcc max-inline-insns-auto/-single); 0 = default."""
    align_functions: int = 0
    """-falign-functions=N; 0 = default."""
    align_loops: int = 0
    """-falign-loops=N; 0 = default."""
    no_plt: bool = False
    """-fno-plt."""
    split_machine_functions: bool = False
    """Profile-driven hot/cold splitting (clang -fsplit-machine-functions; gcc -freorder-blocks-and-partition)."""
    per_file: tuple[tuple[str, tuple[str, ...]], ...] = ()
    """(source path relative to the tree, extra compile flags) pairs, sorted by path."""

    @property
    def used(self) -> bool:
        """Any key away from its default."""
        return self != Tuning()


@dataclass(frozen=True)
class Bisheng:
    options: tuple[str, ...]
    """Bisheng-only options, dropped (with a note in the plan) on any other compiler."""
    autotune: int = 0
    """Iterations of BiSheng's Autotuner loop (0 = off); planned only on a BiSheng compiler."""


@dataclass(frozen=True)
class Pgo:
    tasks: tuple[str, ...]
    """Training task names, resolved in buildsys.pipeline.training."""
    interpreter: str = "auto"
    """Library targets: the interpreter the library is preloaded into for training and verify."""


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
class BoltStock:
    """[bolt.stock]: BOLT of a wheel's libraries as shipped (bolt-wheel, buildsys/pipeline/wheelbolt.py)."""

    apply: tuple[str, ...]
    """llvm-bolt options of the rewriting run (non-relocation mode)."""
    collector: str
    """auto, callgrind or perf."""
    steps: int
    """Measured engine steps per training workload."""
    timeout: int
    """Seconds per collection run and per llvm-bolt run."""


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
    bolt_stock: BoltStock
    tuning: Tuning = field(default=Tuning())
    overrides: tuple[str, ...] = field(default=())
    """Overrides applied from the environment (HOSTPGO_SET) and the command line (--set)."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def available(profiles_dir: Path = PROFILES_DIR) -> list[str]:
    return sorted(p.stem for p in profiles_dir.glob("*.toml"))


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


def _finder(profiles_dir: Path):
    """`find` for the loader: a name or path from the command line, or an `extends` value of a file."""
    def find(ref: str, relative_to: Path | None) -> Path:
        if relative_to is None:
            return profile_path(ref, profiles_dir)
        if ref.endswith(".toml") or "/" in ref:
            path = (relative_to / ref).resolve()
            if not path.is_file():
                raise ProfileError(f"names {ref!r}, which does not exist at {path}")
            return path
        for cand in (profiles_dir / f"{ref}.toml", relative_to / f"{ref}.toml"):
            if cand.is_file():
                return cand
        raise ProfileError(f"unknown profile {ref!r}; known: {', '.join(available(profiles_dir))}")
    return find


def loader(profiles_dir: Path = PROFILES_DIR, target_names: Sequence[str] | None = None) -> Loader:
    """The layered loader of build profiles; `[targets.NAME]` scopes take the registry's target names."""
    if target_names is None:
        from ..targets import names
        target_names = names()
    return Loader(SCHEMA, what="build profile", find=_finder(profiles_dir), error=ProfileError,
                  scopes={"targets": tuple(target_names)})


def load(name_or_path: str, *, target: str = "cpython", overrides: Sequence[str] = (),
         environ: Mapping[str, str] | None = None, profiles_dir: Path = PROFILES_DIR,
         target_names: Sequence[str] | None = None) -> Profile:
    """Resolve a profile: defaults -> extends chain -> [targets.TARGET] -> HOSTPGO_SET -> --set."""
    ld = loader(profiles_dir, target_names)
    if target not in ld.scopes["targets"]:
        raise ProfileError(f"unknown target '{target}'; targets: {', '.join(ld.scopes['targets'])}")
    got = ld.resolve(name_or_path, environ=os.environ if environ is None else environ, env_var=ENV_VAR,
                     sets=overrides, set_flag="--set", scope=("targets", target))
    v = got.values
    f = v["flags"]
    prof = Profile(
        name=got.files[0].stem, target=target, description=got.description,
        files=tuple(str(p) for p in got.files),
        toolchain=ToolchainSpec(**v["toolchain"]),
        optimize=Optimize(**v["optimize"]),
        flags=ExtraFlags(cflags=tuple(f["cflags"]), ldflags=tuple(f["ldflags"]), configure=tuple(f["configure"])),
        bisheng=Bisheng(options=tuple(v["bisheng"]["options"]), autotune=v["bisheng"]["autotune"]),
        pgo=Pgo(tasks=tuple(v["pgo"]["tasks"]), interpreter=v["pgo"]["interpreter"]),
        verify=Verify(tests=tuple(v["verify"]["tests"]), timeout=v["verify"]["timeout"],
                      workloads=tuple(v["verify"]["workloads"])),
        bolt=Bolt(method=v["bolt"]["method"], apply=tuple(v["bolt"]["apply"]),
                  instrument=tuple(v["bolt"]["instrument"]),
                  skip_functions=tuple(v["bolt"]["skip_functions"]), timeout=v["bolt"]["timeout"]),
        bolt_stock=BoltStock(**{**v["bolt.stock"], "apply": tuple(v["bolt.stock"]["apply"])}),
        tuning=Tuning(**v["tuning"]),
        overrides=tuple(o.tag for o in got.overrides),
    )
    check_combinations(prof, got.origins)
    return prof


def check_combinations(prof: Profile, origins: Mapping[str, Any]) -> None:
    """Keys that are valid alone but not together: ProfileError naming the key, where it was set, and the fix."""
    if prof.tuning.split_machine_functions and prof.optimize.pgo != "on":
        where = origins.get("tuning.split_machine_functions", "the profile")
        raise ProfileError(f"{where}: key 'tuning.split_machine_functions' = true needs profile data, and "
                           f"profile '{prof.name}' has optimize.pgo = \"off\"; set optimize.pgo = \"on\" (or extend "
                           "a PGO profile such as workload-pgo-lto), or drop tuning.split_machine_functions")


DOCS_TITLE = "Build profiles"
DOCS_INTRO = """\
Generated from the schema in `buildsys/toolchain/profile.py` by `python -m buildsys docs --write`; do not
edit by hand (`python -m buildsys docs --check` and a unit test fail when this page is stale).

A build profile is a TOML file in `profiles/` (or any path). It is resolved once, in this order, each
layer overriding the one before: the defaults below -> the `extends` chain (base first) -> the file
itself -> its `[targets.NAME]` tables for the target being built (NAME from `python -m buildsys targets`)
-> the `HOSTPGO_SET` environment variable (shell words, each `section.key=value`) -> each
`--set section.key=value` on the command line. Unknown sections and keys are errors naming the file,
the variable or the flag they came from. `python -m buildsys show-profile NAME` prints the result with
the channel every flag travels through.

Top-level keys: `description` (text), `extends` (a profile name from `profiles/`, or a path relative to
the file), `targets` (per-target tables, e.g. `[targets.cpython.optimize]`).

Merged PGO profile data goes to the profile store, `.hostpgo/profiles/<build id>-<key>.profdata` (a
`.gcda` tree for GCC) with a JSON sidecar; raw per-process profiles and training venvs are kept in
`.hostpgo/pgo/<build id>/`. `build --profile-data FILE` reuses stored data instead of training."""


def reference() -> str:
    """docs/profiles.md: the profile schema as Markdown."""
    return schema_reference(SCHEMA, title=DOCS_TITLE, intro=DOCS_INTRO) + "\n"
