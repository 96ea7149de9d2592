"""Feature -> flag mapping per compiler family, and resolution of a profile into compile/link flags."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import ToolchainError
from ..toolchain import Compiler, Host, Toolchains, install_hint
from ..toolchain.profile import Profile

# One table: feature -> family -> (compile flags, link flags). `bisheng` uses the `clang` row.
# Placeholders: {raw_pattern} per-process raw profile path (clang %m/%p), {raw_dir} gcda directory,
# {build_dir} the build tree (GCC mangles gcda names relative to it), {profdata} merged profile data.
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
            profdata: str = "{profdata}", allocator_flags: tuple[str, ...] = ()) -> ResolvedFlags:
    """Pure: the flags for `variant` (plain, instrumented, optimized) of a profile on a compiler.

    `allocator_flags` are the link flags of the allocator found on this host (hostenv.allocators);
    every variant links it, so training runs with the allocator the optimized build will use.
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
    ldflags.extend(Flag(v, f"optimize.allocator = {o.allocator!r} (linked ahead of libc)") for v in allocator_flags)
    cflags.extend(Flag(v, "flags.cflags") for v in profile.flags.cflags)
    ldflags.extend(Flag(v, "flags.ldflags") for v in profile.flags.ldflags)
    tools = {"CC": comp.cc}
    if comp.cxx:
        tools["CXX"] = comp.cxx
    if o.lto != "off" and variant != "instrumented":
        for var, role in (("AR", "ar"), ("RANLIB", "ranlib"), ("NM", "nm")):
            if role in comp.tools:
                tools[var] = comp.tools[role]
    return ResolvedFlags(cflags=tuple(cflags), ldflags=tuple(ldflags), tools=tools, notes=tuple(notes))
