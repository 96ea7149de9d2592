"""Feature -> flag mapping per compiler family, and resolution of a profile into compile/link flags."""

from __future__ import annotations

from dataclasses import dataclass, field

from hostpgo.runner import which

from ..core.paths import WorkArea
from ..core.stages import digest
from ..errors import ProfileError, ToolchainError
from ..toolchain import Compiler, Host, Toolchains, install_hint
from ..toolchain.profile import Profile
from .wrapper import WRAP_DIR, CompilerWrapper, ccache_env

# One table: feature -> family -> (compile flags, link flags). `bisheng` uses the `clang` row.
# Placeholders: {raw_pattern} per-process raw profile path (clang %m/%p), {raw_dir} gcda directory,
# {build_dir} the build tree (GCC mangles gcda names relative to it), {profdata} merged profile data,
# {n} a [tuning] key's number, {thinlto_cache} the ThinLTO cache directory.
# A `*-lto-link` row is what the same feature needs on the link line when LTO is on: the LTO link runs the
# inliner and the code generator again, and reads only what the IR or the link line carries (clang keeps
# function alignment and -fno-plt in the IR, loop alignment and the inliner's threshold it does not; GCC
# gets its codegen options at the LTO link as at compile time).
FEATURE_FLAGS: dict[str, dict[str, tuple[tuple[str, ...], tuple[str, ...]]]] = {
    "pgo-generate": {
        "clang": (("-fprofile-instr-generate={raw_pattern}",), ("-fprofile-instr-generate={raw_pattern}",)),
        "gcc": (("-fprofile-generate={raw_dir}", "-fprofile-update=atomic", "-fprofile-prefix-path={build_dir}"),
                ("-fprofile-generate={raw_dir}", "-fprofile-update=atomic")),
    },
    "pgo-use": {
        "clang": (("-fprofile-instr-use={profdata}",), ()),
        "gcc": (("-fprofile-use={profdata}", "-fprofile-partial-training", "-fprofile-prefix-path={build_dir}"),
                ("-fprofile-use={profdata}", "-fprofile-partial-training")),
    },
    "lto-thin": {"clang": (("-flto=thin",), ("-flto=thin",)),
                 "gcc": (("-flto=auto",), ("-flto=auto",))},
    "lto-full": {"clang": (("-flto",), ("-flto",)),
                 "gcc": (("-flto=auto",), ("-flto=auto",))},
    "linker-lld": {"clang": ((), ("-fuse-ld=lld",)), "gcc": ((), ("-fuse-ld=lld",))},
    "linker-bfd": {"clang": ((), ("-fuse-ld=bfd",)), "gcc": ((), ("-fuse-ld=bfd",))},
    "linker-gold": {"clang": ((), ("-fuse-ld=gold",)), "gcc": ((), ("-fuse-ld=gold",))},
    "no-semantic-interposition": {"clang": (("-fno-semantic-interposition",), ("-fno-semantic-interposition",)),
                                  "gcc": (("-fno-semantic-interposition",), ("-fno-semantic-interposition",))},
    # [tuning]
    "inline-threshold": {"clang": (("-mllvm", "-inline-threshold={n}"), ()),
                         "gcc": (("--param=max-inline-insns-auto={n}", "--param=max-inline-insns-single={n}"), ())},
    "inline-threshold-lto-link": {"clang": ((), ("-Wl,-mllvm,-inline-threshold={n}",)),
                                  "gcc": ((), ("--param=max-inline-insns-auto={n}",
                                               "--param=max-inline-insns-single={n}"))},
    "align-functions": {"clang": (("-falign-functions={n}",), ()), "gcc": (("-falign-functions={n}",), ())},
    "align-functions-lto-link": {"clang": ((), ()), "gcc": ((), ("-falign-functions={n}",))},
    "align-loops": {"clang": (("-falign-loops={n}",), ()), "gcc": (("-falign-loops={n}",), ())},
    "align-loops-lto-link": {"clang": ((), ("-Wl,-mllvm,-align-loops={n}",)), "gcc": ((), ("-falign-loops={n}",))},
    "no-plt": {"clang": (("-fno-plt",), ()), "gcc": (("-fno-plt",), ())},
    "no-plt-lto-link": {"clang": ((), ()), "gcc": ((), ("-fno-plt",))},
    "split-machine-functions": {"clang": (("-fsplit-machine-functions",), ()),
                                "gcc": (("-freorder-blocks-and-partition",), ())},
    # clang's driver turns -fsplit-machine-functions on an LTO link into -plugin-opt=-split-machine-functions for
    # lld (seen with `clang-22 -### -flto=thin -fuse-ld=lld -fsplit-machine-functions`); ld.lld-22's -mllvm also
    # takes -enable-split-machine-functions, but the driver's own spelling follows the driver.
    "split-machine-functions-lto-link": {"clang": ((), ("-fsplit-machine-functions",)),
                                         "gcc": ((), ("-freorder-blocks-and-partition",))},
    # Profile data reused from a training with other flags (--profile-data): functions whose shape changed lose
    # their profile with a warning; these keep the warning from becoming an error (clang's are warnings unless
    # -Werror; GCC's coverage-mismatch is an error by default, verified with gcc-12 on a two-function fixture).
    "profile-reuse": {"clang": (("-Wno-error=profile-instr-out-of-date", "-Wno-error=profile-instr-unprofiled",
                                 "-Wno-error=profile-instr-missing"), ()),
                      "gcc": (("-Wno-error=coverage-mismatch",), ("-Wno-error=coverage-mismatch",))},
    "thinlto-cache": {"clang": ((), ("-Wl,--thinlto-cache-dir={thinlto_cache}",)), "gcc": ((), ())},
}
KUNPENG_CPUS = ("tsv110", "hip09")
X86_PREFIXES = ("x86-64", "haswell", "skylake", "icelake", "znver", "sapphirerapids", "alderlake", "native")
VARIANTS = ("plain", "instrumented", "optimized")


@dataclass(frozen=True)
class Flag:
    value: str
    why: str


@dataclass(frozen=True)
class ResolvedFlags:
    """Compile and link flags for one build variant, the tool variables, and notes on what was left out."""

    cflags: tuple[Flag, ...]
    ldflags: tuple[Flag, ...]
    tools: dict[str, str] = field(default_factory=dict)
    """Tool variables for configure's environment: CC, CXX, AR, RANLIB, NM."""
    notes: tuple[str, ...] = ()
    wrapper: CompilerWrapper | None = None
    """The generated compiler wrapper CC/CXX point at (tuning.per_file, optimize.compiler_cache), which the
    configure stage writes and hashes into its key; None when the real compilers are used directly."""


def row(feature: str, family: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    return FEATURE_FLAGS[feature]["gcc" if family == "gcc" else "clang"]


def select_compiler(profile: Profile, toolchains: Toolchains) -> tuple[Compiler, tuple[str, ...]]:
    """The compiler a profile builds with, and notes (e.g. Bisheng absent -> clang fallback)."""
    spec = profile.toolchain
    notes: list[str] = []
    hint = install_hint(toolchains.host)
    comp = toolchains.find(spec.family)
    if comp is not None and comp.major < spec.min_version:
        notes.append(f"{comp.cc} is {spec.family} {comp.version}, older than toolchain.min_version="
                     f"{spec.min_version}; not used")
        comp = None
    if comp is None and spec.fallback != "none":
        comp = toolchains.find(spec.fallback)
        if comp is not None:
            notes.append(f"no {spec.family} compiler found; using fallback family {spec.fallback} "
                         f"({comp.version_text})")
    if comp is None:
        want = spec.family + (f" >= {spec.min_version}" if spec.min_version else "")
        raise ToolchainError(f"profile '{profile.name}' needs a {want} compiler and none was found "
                             f"(profile file {profile.files[0]}, key toolchain.family). "
                             f"Install one: {hint} (or `python -m buildsys toolchain --install` as root)")
    family = "gcc" if comp.family == "gcc" else "clang"
    needed = []
    if profile.optimize.pgo == "on" and family == "clang":
        needed.append(("profdata", "llvm-profdata"))
    if profile.optimize.lto != "off":
        needed.append(("ar", "llvm-ar" if family == "clang" else "gcc-ar"))
    for role, tool in needed:
        if role not in comp.tools:
            raise ToolchainError(f"profile '{profile.name}' needs {tool} for {comp.cc} and it was not found. "
                                 f"Install it: {hint}")
    if profile.optimize.linker == "lld" and "lld" not in comp.tools and family == "clang":
        raise ToolchainError(f"profile '{profile.name}' sets optimize.linker = \"lld\" but ld.lld was not "
                             f"found next to {comp.cc}. Install it: {hint}")
    if profile.optimize.compiler_cache == "ccache" and which("ccache") is None:
        raise ToolchainError(f"profile '{profile.name}' sets optimize.compiler_cache = \"ccache\" and ccache is "
                             f"not on PATH. Install it: {install_hint(toolchains.host)} (or set "
                             "optimize.compiler_cache = \"off\")")
    if family == "gcc" and profile.optimize.linker == "lld" and profile.optimize.lto != "off":
        raise ToolchainError(f"profile '{profile.name}': optimize.linker = \"lld\" cannot link GCC LTO "
                             f"objects (lld has no GCC LTO plugin); allowed with GCC LTO: default, bfd, gold")
    return comp, tuple(notes)


def arch_flags(arch: str, host: Host) -> tuple[tuple[str, ...], str | None]:
    """Flags for optimize.arch on this host, or a note saying why they were left out."""
    if arch == "none":
        return (), None
    if arch == "host":
        return (host.host_tuning,), None
    if arch == "native":
        return ("-mcpu=native" if host.machine == "aarch64" else "-march=native",), None
    kind, name = arch.split("=", 1)
    if host.machine == "x86_64" and (kind == "mcpu" or name in KUNPENG_CPUS):
        return (), (f"left out -{arch}: it tunes for aarch64 ({'Kunpeng ' if name in KUNPENG_CPUS else ''}"
                    f"{name}) and this host is x86_64; build on the aarch64 target to use it")
    if host.machine == "aarch64" and name.startswith(X86_PREFIXES) and name != "native":
        return (), f"left out -{arch}: it is an x86_64 CPU and this host is aarch64"
    return (f"-{arch}",), None


def resolve(profile: Profile, comp: Compiler, host: Host, variant: str, *, build_dir: str = "{build_dir}",
            raw_pattern: str = "{raw_pattern}", raw_dir: str = "{raw_dir}",
            profdata: str = "{profdata}", allocator_flags: tuple[str, ...] = (), work: WorkArea | None = None,
            profile_reused: bool = False) -> ResolvedFlags:
    """Pure: the flags for `variant` (plain, instrumented, optimized) of a profile on a compiler.

    `allocator_flags` are the link flags of the allocator found on this host (hostenv.allocators);
    every variant links it, so training runs with the allocator the optimized build will use.
    `work` is the work area (the compiler cache's directories; recipes that pass it and a real `build_dir`
    can take tuning.per_file and optimize.compiler_cache, which need the generated compiler wrapper).
    `profile_reused`: the optimized build reads --profile-data trained with other flags (mismatch tolerated).
    """
    if variant not in VARIANTS:
        raise ValueError(f"unknown build variant {variant!r}; allowed: {', '.join(VARIANTS)}")
    o = profile.optimize
    fam = "gcc" if comp.family == "gcc" else "clang"
    subst = {"build_dir": build_dir, "raw_pattern": raw_pattern, "raw_dir": raw_dir, "profdata": profdata}
    cflags: list[Flag] = [Flag(f"-{o.opt}", "optimize.opt (after the build's own level: CPython's OPT, a "
                                                                 "library's configure defaults, so it wins)")]
    ldflags: list[Flag] = []
    notes: list[str] = []

    def add(feature: str, why: str) -> None:
        c, ld = row(feature, fam)
        cflags.extend(Flag(v.format(**subst), why) for v in c)
        ldflags.extend(Flag(v.format(**subst), why) for v in ld)

    flags, note = arch_flags(o.arch, host)
    cflags.extend(Flag(f, "optimize.arch") for f in flags)
    ldflags.extend(Flag(f, "optimize.arch (LTO code generation happens at link)") for f in flags
                   if o.lto != "off")
    if note:
        notes.append(note)
    if not o.semantic_interposition:
        add("no-semantic-interposition", "optimize.semantic_interposition = false")
    if o.linker != "default":
        add(f"linker-{o.linker}", "optimize.linker")
    if o.lto != "off":
        if variant == "instrumented":
            notes.append("instrumented build: LTO left out (faster to build; profiles are matched per "
                         "function before link-time optimization)")
        else:
            if fam == "gcc" and o.lto == "thin":
                notes.append("GCC has no ThinLTO; optimize.lto = \"thin\" maps to -flto=auto (WHOPR partitions)")
            add(f"lto-{o.lto}", f"optimize.lto = {o.lto!r}")
            if fam == "clang":
                ldflags.append(Flag(f"-{o.opt}", "optimize.opt at link: sets the LTO back end's level "
                                    "(lld's default is --lto-O2)"))
    if o.pgo == "on":
        if variant == "instrumented":
            add("pgo-generate", "optimize.pgo = 'on' (instrument)")
        elif variant == "optimized":
            add("pgo-use", "optimize.pgo = 'on' (use merged profile)")
    if profile.bisheng.options:
        if comp.family == "bisheng":
            cflags.extend(Flag(v, "bisheng.options") for v in profile.bisheng.options)
        else:
            notes.append(f"left out bisheng.options {list(profile.bisheng.options)}: they are BiSheng-only and "
                         f"the detected compiler is {comp.family} ({comp.version_text})")
    lto_link = o.lto != "off" and variant != "instrumented"
    tuning_flags(profile, fam, variant, lto_link, cflags, ldflags, notes)
    if profile_reused and variant == "optimized" and o.pgo == "on":
        add("profile-reuse", "--profile-data reused from a training with other flags: mismatched functions "
            "lose their profile with a warning, not an error")
    ldflags.extend(Flag(v, f"optimize.allocator = {o.allocator!r} (linked ahead of libc)") for v in allocator_flags)
    cflags.extend(Flag(v, "flags.cflags") for v in profile.flags.cflags)
    ldflags.extend(Flag(v, "flags.ldflags") for v in profile.flags.ldflags)
    tools = {"CC": comp.cc}
    if comp.cxx:
        tools["CXX"] = comp.cxx
    if lto_link:
        for var, role in (("AR", "ar"), ("RANLIB", "ranlib"), ("NM", "nm")):
            if role in comp.tools:
                tools[var] = comp.tools[role]
    wrapper = None
    cache = o.compiler_cache == "ccache"
    if cache or profile.tuning.per_file:
        if work is None or "{" in build_dir:
            raise ProfileError(f"profile '{profile.name}': tuning.per_file and optimize.compiler_cache need the "
                               f"generated compiler wrapper, and target '{profile.target}''s recipe does not give "
                               "the flag table its build directory and work area; drop those keys for this target "
                               "(cpython and the allocator targets take them)")
        wrap_dir = f"{build_dir}/{WRAP_DIR}"
        uses_profile = cache and variant == "optimized" and o.pgo == "on"
        wrapper = CompilerWrapper(
            directory=wrap_dir, cc=comp.cc, cxx=comp.cxx, per_file=profile.tuning.per_file,
            launcher=("ccache",) if cache else (),
            env=ccache_env(cache_dir=str(work.ccache), base_dir=str(work.root),
                           extra_files=f"{wrap_dir}/profile-data.sha256" if uses_profile else "") if cache else (),
            profile_data=profdata if uses_profile else "")
        tools.update(wrapper.tools)
        if cache and fam == "clang" and o.lto == "thin" and variant != "instrumented":
            # One ThinLTO cache per set of link flags: lld's cache key covers the modules and the LTO
            # configuration; keying the directory by the flags too keeps -mllvm options from ever sharing.
            cache_dir = work.thinlto_cache / digest([f.value for f in ldflags])[:16]
            ldflags.append(Flag(f"-Wl,--thinlto-cache-dir={cache_dir}", "optimize.compiler_cache = 'ccache' "
                                "(ThinLTO backend objects cached, directory keyed by the link flags)"))
        if cache and fam == "gcc" and o.pgo == "on" and variant != "plain":
            notes.append("optimize.compiler_cache with GCC PGO: ccache 4.7 (Debian 12) runs these compiles "
                         "uncached, as it does not know -fprofile-update, -fprofile-prefix-path or "
                         "-fprofile-partial-training (its debug log: 'Unknown profiling option'); clang's PGO "
                         "compiles and GCC's plain ones are cached")
        if cache and o.lto == "full" and variant != "instrumented":
            notes.append("optimize.compiler_cache: full LTO has no link-time cache (every candidate's link "
                         "re-optimizes the whole program); ThinLTO's link keeps one")
    return ResolvedFlags(cflags=tuple(cflags), ldflags=tuple(ldflags), tools=tools, notes=tuple(notes),
                         wrapper=wrapper)


def tuning_flags(profile: Profile, fam: str, variant: str, lto_link: bool, cflags: list[Flag], ldflags: list[Flag],
                 notes: list[str]) -> None:
    """[tuning]'s flags, appended in place: every variant compiles with them (so a candidate trained on its own
    has profiles that match its optimized build: GCC checks each function's CFG); the *-lto-link rows join the
    link only when it runs LTO; split_machine_functions only in the optimized build (it needs the profile)."""
    t = profile.tuning

    def add(feature: str, n: int, why: str) -> None:
        c, ld = row(feature, fam)
        cflags.extend(Flag(v.format(n=n), why) for v in c)
        if lto_link:
            _, ld2 = row(f"{feature}-lto-link", fam)
            ldflags.extend(Flag(v.format(n=n), f"{why} (LTO link)") for v in ld2)

    if t.inline_threshold:
        add("inline-threshold", t.inline_threshold, f"tuning.inline_threshold = {t.inline_threshold}")
    if t.align_functions:
        add("align-functions", t.align_functions, f"tuning.align_functions = {t.align_functions}")
    if t.align_loops:
        add("align-loops", t.align_loops, f"tuning.align_loops = {t.align_loops}")
    if t.no_plt:
        add("no-plt", 0, "tuning.no_plt = true")
    if t.split_machine_functions:
        if variant == "optimized":
            add("split-machine-functions", 0, "tuning.split_machine_functions = true (profile-driven)")
            if fam == "gcc":
                notes.append("tuning.split_machine_functions on gcc is -freorder-blocks-and-partition, which gcc "
                             "already enables at -O2 on x86_64: the candidate may equal its base there")
        elif variant == "instrumented":
            notes.append("instrumented build: tuning.split_machine_functions left out (it splits by the profile "
                         "this build collects)")
