"""BOLT post-link optimization: pure planning of its stages, ELF facts from readelf, and the bolt-check verdict.

The stages, after the optimized `build` (only for a profile with `optimize.bolt = true`):

    bolt-instrument  keep the PGO binary as <target>.prebolt; llvm-bolt -instrument it
    bolt-train       the profile's [pgo] tasks on the instrumented binary (one .fdata per process)
    bolt-merge       merge-fdata
    bolt-apply       llvm-bolt with the [bolt] apply options; PT_GNU_STACK check; swap it in as <target>

With `perf` collection (branch stacks: LBR, BRBE) there is no instrumented binary: bolt-train runs the
tasks under `perf record -j any,u` and bolt-merge converts each recording with perf2bolt first.

A failure in any of them does not stop the build: the stage records why, puts the PGO binary back
and the later BOLT stages do nothing. The verify stage then checks the BOLTed binary; if a check
fails there, it restores the PGO binary and checks that one instead. Either way the install is
the binary that passed, and the manifest's `bolt` record says which one it is and why.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from hostpgo import fsutil
from hostpgo.runner import capture, format_command

from ..core.stages import Call, Cmd, Stage, StageContext, StageResult, digest
from ..errors import HostpgoError, InputError
from ..toolchain import Compiler, Host
from ..toolchain.facts import Probe
from ..toolchain.flags import Flag
from ..toolchain.profile import Profile

STAGES = ("bolt-instrument", "bolt-train", "bolt-merge", "bolt-apply")
PREBOLT_SUFFIX = ".prebolt"
BOLT_NOTE = ".note.bolt_info"
"""The section llvm-bolt adds to every file it writes (it refuses such a file as input)."""
# readelf's Machine text -> the arch name used in skip rules and Host.machine.
MACHINES = {"Advanced Micro Devices X86-64": "x86_64", "AArch64": "aarch64", "RISC-V": "riscv64"}
PERF_RECORD = ("perf", "record", "-q", "-e", "cycles:u", "-j", "any,u", "-o", "{out}", "--")
SKIP_COND_RE = re.compile(r"^llvm<(\d+)$")


# ---------------------------------------------------------------------------------------------
# Skip rules: `NAME` or `NAME@COND[,COND]` from [bolt] skip_functions.

@dataclass(frozen=True)
class SkipRule:
    function: str
    below_llvm: int | None = None
    """Skipped only when llvm-bolt's major version is below this."""
    arch: str | None = None
    """Skipped only on this machine (x86_64, aarch64)."""

    def applies(self, llvm_major: int, machine: str) -> bool:
        if self.below_llvm is not None and llvm_major >= self.below_llvm:
            return False
        return self.arch is None or self.arch == machine


def parse_skip(text: str) -> SkipRule:
    """One skip_functions entry; the profile schema has already checked its shape."""
    name, _, conds = text.partition("@")
    below, arch = None, None
    for cond in filter(None, conds.split(",")):
        m = SKIP_COND_RE.match(cond)
        if m:
            below = int(m.group(1))
        else:
            arch = cond
    return SkipRule(name, below, arch)


def skipped_functions(rules: Sequence[str], llvm_major: int, machine: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(functions to pass to -skip-funcs, notes on the rules that did not apply here)."""
    skip, notes = [], []
    for text in rules:
        rule = parse_skip(text)
        if rule.applies(llvm_major, machine):
            skip.append(rule.function)
        else:
            why = (f"llvm-bolt {llvm_major} >= {rule.below_llvm}" if rule.below_llvm is not None
                   and llvm_major >= rule.below_llvm else f"this host is {machine}, the rule is for {rule.arch}")
            notes.append(f"BOLT optimizes {rule.function} ({text}: {why})")
    return tuple(skip), tuple(notes)


# ---------------------------------------------------------------------------------------------
# How the profile is collected.

Sampling = Probe
"""Whether `perf record` can sample branch stacks here (LBR on x86, BRBE on aarch64): probed once by
buildsys.toolchain.facts and passed in; planning never probes."""


def choose_method(requested: str, sampling: Sampling) -> tuple[str, str]:
    """(instrument | perf, why) for [bolt] method = auto | instrument | perf."""
    if requested == "instrument":
        return "instrument", "bolt.method = \"instrument\""
    if requested == "perf":
        if not sampling.available:
            raise InputError(f"bolt.method = \"perf\" needs branch-stack sampling (LBR on x86, BRBE on aarch64) "
                               f"and this machine has none: {sampling.detail}; use method = \"instrument\" or "
                               "\"auto\"")
        return "perf", f"bolt.method = \"perf\"; {sampling.detail}"
    if sampling.available:
        return "perf", f"branch stacks can be sampled here ({sampling.detail}): perf record + perf2bolt"
    return "instrument", f"instrumentation: no LBR/BRBE here ({sampling.detail})"


# ---------------------------------------------------------------------------------------------
# What the build needs so BOLT can rewrite the result.

def build_flags(family: str) -> tuple[tuple[Flag, ...], tuple[Flag, ...]]:
    """(compile flags, link flags) a BOLT-bound optimized build adds."""
    cflags = ((Flag("-fno-reorder-blocks-and-partition", "optimize.bolt: GCC's own hot/cold splitting "
                    "(.text.unlikely parts) confuses BOLT's function boundaries; BOLT splits instead"),)
              if family == "gcc" else ())
    ldflags = (Flag("-Wl,--emit-relocs", "optimize.bolt: keep static relocations in the output, so BOLT can "
                    "move functions (relocation mode: function reordering, splitting)"),)
    return cflags, ldflags


def layout_notes(comp: Compiler, host: Host, method: str) -> tuple[str, ...]:
    """The frame-pointer and PIE choices, made explicit."""
    notes = [
        "BOLT: frame pointers are left as optimize.opt makes them (-fomit-frame-pointer at -O2/-O3): "
        + ("instrumentation does not unwind stacks" if method == "instrument" else
           "perf2bolt uses branch stacks, not call-stack unwinding"),
        "BOLT: PIE is left at the compiler's default "
        f"({'PIE on Debian/Ubuntu clang and GCC' if host.is_debian_like else 'distribution default'}); "
        "llvm-bolt rewrites PIE and non-PIE executables alike in relocation mode",
    ]
    if host.machine == "aarch64":
        notes.append("BOLT on aarch64: -split-functions moves cold code far away; binaries < 128 MiB may add "
                     "--compact-code-model (llvm-bolt >= 20); pac-ret CFI is rewritten "
                     "(--update-branch-protection, on by default); perf collection needs BRBE (SPE is not planned)")
    return tuple(notes)


@dataclass(frozen=True)
class Target:
    """The ELF file BOLT rewrites in a build directory."""

    path: Path
    kind: str
    """`interpreter` (static libpython linked in) or `libpython` (--enable-shared)."""
    why: str

    @property
    def prebolt(self) -> Path:
        return self.path.with_name(self.path.name + PREBOLT_SUFFIX)


DEFAULT_BINARIES = {"static": "python", "shared": "libpython{minor}.so.1.0"}
"""CPython's: the file BOLT rewrites below the build directory, by optimize.shared (a target's [bolt] data)."""


def target(build_dir: Path, shared: bool, version: str, binaries: Mapping[str, str] | None = None) -> Target:
    """The file BOLT rewrites: `binaries["shared"]` with optimize.shared, else `binaries["static"]` ({minor}:
    the version's major.minor)."""
    names = {**DEFAULT_BINARIES, **(binaries or {})}
    minor = ".".join(version.split(".")[:2])
    if shared:
        return Target(build_dir / names["shared"].format(minor=minor), "libpython",
                      "optimize.shared = true: the interpreter's code is in libpython, so libpython is what BOLT "
                      "rewrites (the python executable is a small stub)")
    return Target(build_dir / names["static"].format(minor=minor), "interpreter",
                  "static libpython: the whole interpreter is in the python executable")


# ---------------------------------------------------------------------------------------------
# ELF facts, through readelf.

@dataclass(frozen=True)
class Section:
    name: str
    type: str
    size: int


@dataclass(frozen=True)
class Segment:
    type: str
    flags: str
    """R, W, E letters (spaces removed)."""


@dataclass(frozen=True)
class ElfFacts:
    path: str
    elf_class: str
    """ELF32 or ELF64."""
    machine: str
    """readelf's Machine text."""
    type: str
    """EXEC, DYN, REL, CORE."""
    sections: tuple[Section, ...] = ()
    segments: tuple[Segment, ...] = ()

    def section(self, name: str) -> Section | None:
        return next((s for s in self.sections if s.name == name), None)

    @property
    def arch(self) -> str | None:
        return MACHINES.get(self.machine)

    @property
    def has_interp(self) -> bool:
        return any(s.type == "INTERP" for s in self.segments)

    @property
    def kind(self) -> str:
        if self.type == "EXEC":
            return "executable (non-PIE)"
        if self.type == "DYN":
            return "PIE executable" if self.has_interp else "shared library"
        return {"REL": "relocatable object", "CORE": "core file"}.get(self.type, self.type)

    @property
    def symbols(self) -> bool:
        """A static symbol table (.symtab): BOLT needs it to know where functions start."""
        sym = self.section(".symtab")
        return sym is not None and sym.size > 0

    @property
    def code_relocations(self) -> tuple[str, ...]:
        """Static relocation sections for code (.rela.text*): what --emit-relocs leaves in a linked file."""
        return tuple(s.name for s in self.sections if s.type in ("RELA", "REL")
                     and re.match(r"^\.rel(a)?\.text", s.name))

    @property
    def bolted(self) -> bool:
        return self.section(BOLT_NOTE) is not None

    @property
    def gnu_stack(self) -> str | None:
        """The PT_GNU_STACK flags, or None when the header is missing."""
        return next((s.flags for s in self.segments if s.type == "GNU_STACK"), None)


_SECTION_RE = re.compile(r"^\s*\[\s*\d+\]\s+(\S+)\s+(\S+)\s+[0-9a-fA-F]+\s+[0-9a-fA-F]+\s+([0-9a-fA-F]+)\s")
_SEGMENT_RE = re.compile(r"^\s*([A-Z_]+|LOOS\+0x[0-9a-f]+)\s+0x[0-9a-f]+\s+0x[0-9a-f]+\s+0x[0-9a-f]+\s+"
                         r"0x[0-9a-f]+\s+0x[0-9a-f]+\s+([RWE ]+?)\s+(?:0x[0-9a-f]+|\d+)\s*$")  # lld: GNU_STACK align 0


def readelf_tool() -> str:
    """GNU readelf, else an llvm-readelf (their -hlSW output is the same GNU style)."""
    for name in ("readelf", "llvm-readelf", "llvm-readelf-22"):
        if shutil.which(name):
            return name
    raise HostpgoError("no readelf found (apt-get install binutils, or llvm)")


def parse_readelf(text: str, path: str) -> ElfFacts:
    """ElfFacts from `readelf -hlSW` output (pure)."""
    head = {}
    for line in text.splitlines():
        m = re.match(r"^\s+(Class|Machine|Type):\s+(.*\S)", line)
        if m and m.group(1) not in head:
            head[m.group(1)] = m.group(2)
    if "Class" not in head:
        raise InputError(f"{path}: readelf printed no ELF header; not an ELF file?")
    sections = tuple(Section(m.group(1), m.group(2), int(m.group(3), 16))
                     for m in map(_SECTION_RE.match, text.splitlines()) if m)
    segments = tuple(Segment(m.group(1), m.group(2).replace(" ", ""))
                     for m in map(_SEGMENT_RE.match, text.splitlines()) if m)
    return ElfFacts(path=path, elf_class=head["Class"], machine=head.get("Machine", "?"),
                    type=head.get("Type", "?").split()[0], sections=sections, segments=segments)


def check_input(path: Path) -> None:
    """A clear error naming the file for a missing or non-ELF input (before readelf gets it)."""
    if not path.exists():
        raise InputError(f"{path}: no such file")
    if not path.is_file():
        raise InputError(f"{path}: not a regular file")
    with path.open("rb") as f:
        magic = f.read(4)
    if magic != b"\x7fELF":
        raise InputError(f"{path}: not an ELF file (starts with {magic!r}, not b'\\x7fELF')")


def read_elf(path: Path, run: Callable[[list[str]], str] | None = None) -> ElfFacts:
    """ElfFacts of `path`; `run` returns a command's stdout (a stage's runner.capture; default: the runner,
    unlogged)."""
    check_input(path)
    argv = [readelf_tool(), "-hlSW", str(path)]
    text = run(argv) if run is not None else capture(argv, timeout=120).stdout
    return parse_readelf(text, str(path))


def check_gnu_stack(facts: ElfFacts) -> None:
    """BOLT output must keep a non-executable stack: PT_GNU_STACK present and without E."""
    flags = facts.gnu_stack
    if flags is None:
        raise HostpgoError(f"{facts.path}: no PT_GNU_STACK program header (the loader would assume an executable "
                           "stack); with -use-gnu-stack llvm-bolt reuses that header for its new segment, so leave "
                           "that option out")
    if "E" in flags:
        raise HostpgoError(f"{facts.path}: PT_GNU_STACK is {flags} (executable stack)")


@dataclass(frozen=True)
class Verdict:
    ok: bool
    facts: ElfFacts
    reasons: tuple[str, ...]
    """What rules it out (empty when ok)."""
    needs: tuple[str, ...]
    """What would be needed instead."""
    notes: tuple[str, ...] = ()
    route: str = "relocation"
    """relocation (the full option set), non-relocation (stripped or without .rela.text: block reordering and
    splitting in place, `python -m buildsys bolt-wheel`) or none (llvm-bolt cannot take the file)."""


NON_RELOCATION_ROUTE = ("non-relocation route for a library as shipped: `python -m buildsys bolt-wheel` "
                        "runs llvm-bolt --allow-stripped with [bolt.stock] apply = -reorder-blocks=ext-tsp "
                        "-split-functions -split-all-cold (functions from .eh_frame; -reorder-functions, -icf, "
                        "--relocs, -instrument refused there), on a profile of exact counts (callgrind) or of "
                        "branch stacks (LBR/BRBE), never timer samples")


def assess(facts: ElfFacts) -> Verdict:
    """Can llvm-bolt rewrite this file with the full option set (relocation mode)?"""
    reasons, needs, notes = [], [], []
    if facts.arch is None:
        reasons.append(f"machine {facts.machine}: llvm-bolt handles x86-64, AArch64 and RISC-V only")
    if facts.elf_class != "ELF64":
        reasons.append(f"{facts.elf_class}: llvm-bolt rewrites 64-bit ELF only")
    if facts.type not in ("EXEC", "DYN"):
        reasons.append(f"a {facts.kind}: BOLT rewrites linked executables and shared libraries")
        needs.append("link it first, then run bolt-check on the linked file")
    if facts.bolted:
        reasons.append(f"already processed by BOLT ({BOLT_NOTE} present): llvm-bolt refuses to re-optimize")
        needs.append("run BOLT on the file from before its BOLT run (hostpgo keeps it as *.prebolt)")
    if facts.section(".text") is None and facts.type in ("EXEC", "DYN"):
        reasons.append("no .text section")
    if not facts.symbols:
        reasons.append("stripped: no .symtab (llvm-bolt stops on stripped input unless --allow-stripped)")
        needs.append("the unstripped file (wheels are often stripped: rebuild from source without `strip`, or "
                     "use the debug build's file)")
    relocs = facts.code_relocations
    if not relocs and facts.type in ("EXEC", "DYN"):
        reasons.append("no static relocations for code (no .rela.text): only non-relocation mode is possible "
                       "(blocks re-laid out inside each function in place; no function reordering, no splitting "
                       "into a new segment)")
        needs.append("relink from source with -Wl,--emit-relocs (-Wl,-q); with GCC also compile with "
                     "-fno-reorder-blocks-and-partition")
    else:
        notes.append(f"code relocations present: {', '.join(relocs[:4])}{' ...' if len(relocs) > 4 else ''}")
    if facts.type in ("EXEC", "DYN"):
        notes.append(f"{facts.kind}, {facts.elf_class} {facts.machine}")
    blocking = (facts.arch is None or facts.elf_class != "ELF64" or facts.type not in ("EXEC", "DYN")
                or facts.bolted or facts.section(".text") is None)
    route = "none" if blocking else "relocation" if not reasons else "non-relocation"
    if route == "non-relocation":
        notes.append(NON_RELOCATION_ROUTE)
    return Verdict(not reasons, facts, tuple(reasons), tuple(dict.fromkeys(needs)), tuple(notes), route)


# ---------------------------------------------------------------------------------------------
# Stage bodies: the swap, the guard that turns a BOLT failure into "keep the PGO build".

def _copy(src: Path, dst: Path) -> None:
    """Copy by temp file + rename: `dst` is either the old file or the whole new one."""
    tmp = dst.with_name(dst.name + f".{os.getpid()}.tmp")
    shutil.copy2(src, tmp)
    fsutil.move_into_place(tmp, dst)


def _capture(ctx: StageContext) -> Callable[[list[str]], str]:
    return lambda argv: ctx.runner.capture(argv, timeout=120).stdout


def keep_pgo_binary(tgt: Target) -> Callable[[StageContext], None]:
    """Call body: make `target` the PGO binary and `target.prebolt` a copy of it.

    A fresh `make` leaves an un-BOLTed target: copy it aside. A target that carries BOLT's note is
    the result of an earlier run (the build stage was reused): put the kept PGO binary back first.
    """
    def fn(ctx: StageContext) -> None:
        if read_elf(tgt.path, _capture(ctx)).bolted:
            if not tgt.prebolt.exists():
                raise HostpgoError(f"{tgt.path} is BOLT output and {tgt.prebolt} is gone: the PGO binary is lost; "
                                   "rebuild (remove the build stage's stamp)")
            _copy(tgt.prebolt, tgt.path)
            ctx.info["restored_from"] = str(tgt.prebolt)
        else:
            _copy(tgt.path, tgt.prebolt)
        ctx.info["prebolt"] = str(tgt.prebolt)
    return fn


def restore(tgt: Target) -> None:
    """Put the kept PGO binary back in place."""
    if tgt.prebolt.exists():
        _copy(tgt.prebolt, tgt.path)


def failure(results: Mapping[str, StageResult]) -> dict | None:
    """The BOLT failure recorded by an earlier stage of this build, if any."""
    for name in STAGES:
        rec = results.get(name)
        if rec is not None and rec.info.get("bolt", {}).get("applied") is False:
            return rec.info["bolt"]
    return None


def run_action(ctx: StageContext, action: Cmd | Call) -> None:
    """Run one action as the executor would (a Cmd through the stage's runner, a Call in-process)."""
    if isinstance(action, Cmd):
        rc = ctx.runner.run(action.argv, env=action.env, cwd=action.cwd, timeout=action.timeout,
                            ok_codes=action.ok_codes, nice=action.nice)
        if rc != 0:
            ctx.info.setdefault("nonzero_exits", []).append({"command": format_command(action.argv), "exit_code": rc})
    else:
        action.fn(ctx)


def guarded(stage: str, tgt: Target, actions: Iterable[Cmd | Call]) -> tuple[Call, ...]:
    """Each action as a Call that, on failure, records why, restores the PGO binary, and lets the build go on.

    After a failure (here or in an earlier BOLT stage) the remaining BOLT actions do nothing.
    """
    def wrap(action: Cmd | Call) -> Call:
        def fn(ctx: StageContext) -> None:
            earlier = failure(ctx.results)
            if earlier is not None or ctx.info.get("bolt", {}).get("applied") is False:
                ctx.info.setdefault("bolt", {"applied": False, "skipped": True,
                                             "reason": f"BOLT failed in {earlier.get('stage')}" if earlier else ""})
                return
            try:
                run_action(ctx, action)
            except (HostpgoError, OSError) as e:  # a failed tool, or a file that could not be copied
                restore(tgt)
                reason = str(e)
                ctx.info["bolt"] = {"applied": False, "stage": stage, "reason": reason[:4000]}
                with ctx.runner.log_path.open("a") as log:
                    log.write(f"BOLT FAILED in {stage}: keeping the PGO build ({tgt.path} restored from "
                              f"{tgt.prebolt}).\n{reason}\n")
        what = action.describe() if isinstance(action, Cmd) else action.what
        return Call(f"{what}  [on failure: keep the PGO build]", fn)
    return tuple(wrap(a) for a in actions)


def _apply_and_swap(tgt: Target, out: Path) -> Callable[[StageContext], None]:
    def fn(ctx: StageContext) -> None:
        facts = read_elf(out, _capture(ctx))
        check_gnu_stack(facts)
        if not facts.bolted:
            raise HostpgoError(f"{out} has no {BOLT_NOTE}: llvm-bolt did not write it")
        before, after = tgt.prebolt.stat().st_size, out.stat().st_size
        fsutil.move_into_place(out, tgt.path)
        ctx.info["bolt"] = {"applied": True, "target": str(tgt.path), "prebolt": str(tgt.prebolt),
                            "gnu_stack": facts.gnu_stack, "bytes_before": before, "bytes_after": after}
    return fn


def _profiles_written(fdata_dir: Path, pattern: str) -> Callable[[StageContext], None]:
    def fn(ctx: StageContext) -> None:
        files = sorted(fdata_dir.glob(pattern))
        if not files:
            raise HostpgoError(f"training left no {pattern} in {fdata_dir}: the BOLT-instrumented binary wrote no "
                               "profile (did every process exit through exit(), not _exit()?)")
        ctx.info["profiles"] = len(files)
    return fn


def _merge_fdata(tool: str, fdata_dir: Path, out: Path, timeout: float) -> Callable[[StageContext], None]:
    def fn(ctx: StageContext) -> None:
        files = sorted(str(p) for p in fdata_dir.glob("*.fdata"))
        if not files:
            raise HostpgoError(f"no .fdata profiles in {fdata_dir} to merge")
        tmp = out.with_name(out.name + ".tmp")
        ctx.runner.run([tool, "-q", "-o", str(tmp), *files], timeout=timeout)
        fsutil.move_into_place(tmp, out)
        ctx.info.update({"merged_profiles": len(files), "fdata": str(out), "bytes": out.stat().st_size})
    return fn


def _perf2bolt_each(tool: str, tgt: Target, perf_dir: Path, timeout: float) -> Callable[[StageContext], None]:
    def fn(ctx: StageContext) -> None:
        datas = sorted(perf_dir.glob("perf-*.data"))
        if not datas:
            raise HostpgoError(f"no perf-*.data in {perf_dir}: perf record wrote nothing")
        for data in datas:
            ctx.runner.run([tool, "-p", str(data), "-o", str(data.with_suffix(".fdata")), str(tgt.path)],
                           timeout=timeout)
    return fn


def verify_keeping_pgo(checks: Sequence[Cmd | Call], tgt: Target) -> tuple[Call, ...]:
    """Verify actions for a BOLT build: checks on the BOLTed binary; a failure restores the PGO binary and
    the same checks then run on it (and must pass, as for any build)."""
    def applied(ctx: StageContext) -> bool:
        rec = ctx.results.get("bolt-apply")
        return bool(rec and rec.info.get("bolt", {}).get("applied")) and "bolt_rejected" not in ctx.info

    def wrap(action: Cmd | Call) -> Call:
        def fn(ctx: StageContext) -> None:
            if "bolt_rejected" in ctx.info:
                return  # rerun on the PGO binary below
            if not applied(ctx):
                run_action(ctx, action)
                return
            try:
                run_action(ctx, action)
            except HostpgoError as e:
                restore(tgt)
                ctx.info["bolt_rejected"] = {"check": action.describe(), "reason": str(e)[:4000]}
                ctx.info["bolted_workloads"] = ctx.info.pop("workloads", [])
                with ctx.runner.log_path.open("a") as log:
                    log.write(f"BOLTed binary FAILED verification; {tgt.path} restored from {tgt.prebolt}; "
                              f"the same checks run again on the PGO binary.\n")
        what = action.describe() if isinstance(action, Cmd) else action.what
        return Call(what, fn)

    def again(ctx: StageContext) -> None:
        if "bolt_rejected" not in ctx.info:
            ctx.info["bolt"] = {"verified": "bolted" if applied(ctx) else "pgo (BOLT not applied)"}
            return
        for action in checks:
            run_action(ctx, action)
        ctx.info["bolt"] = {"applied": False, "stage": "verify", "verified": "pgo",
                            "reason": "the BOLTed binary failed verification: " + ctx.info["bolt_rejected"]["reason"]}

    return (*(wrap(a) for a in checks),
            Call(f"if a check failed on the BOLTed {tgt.path.name}: it was replaced by {tgt.prebolt.name} (the PGO "
                 "binary); run every check above again on that one", again))


# ---------------------------------------------------------------------------------------------
# The plan.

TrainFn = Callable[[str, Path, dict[str, str], Callable[[list[str]], list[str]]], list[Cmd | Call]]
"""(python, venv dir, env, argv wrapper) -> the actions that run the profile's training tasks."""


@dataclass(frozen=True)
class BoltPlan:
    stages: tuple[Stage, ...]
    key: str
    """The last BOLT stage's key (the verify stage's `prev`)."""
    target: Target
    method: str
    notes: tuple[str, ...]
    summary: dict = field(default_factory=dict)


def plan(*, profile: Profile, comp: Compiler, host: Host, build_dir: Path, version: str,
         work_dir: Path, prev_key: str, train: TrainFn, train_key: dict, sampling: Sampling,
         tgt: Target | None = None) -> BoltPlan:
    """The BOLT stages for one optimized build (pure: the probe result and the training actions come in).

    `tgt` defaults to the build's python (static libpython) or libpython (shared).
    """
    b = profile.bolt
    bolt_tool = comp.tools.get("bolt")
    merge_tool = comp.tools.get("merge-fdata")
    if comp.family == "gcc" or bolt_tool is None or merge_tool is None:
        raise HostpgoError(f"profile '{profile.name}' sets optimize.bolt = true ({profile.files[0]}) and "
                           f"llvm-bolt/merge-fdata were not found next to {comp.cc}; BOLT's tools come with LLVM "
                           "(apt-get install bolt-22); a GCC build takes them from the newest clang's directory")
    bolt_major = comp.major
    method, why = choose_method(b.method, sampling)
    tgt = tgt or target(build_dir, profile.optimize.shared, version)
    skip, skip_notes = skipped_functions(b.skip_functions, bolt_major, host.machine)
    skip_args = (f"-skip-funcs={','.join(skip)}",) if skip else ()
    notes = [f"BOLT target: {tgt.path} ({tgt.why})", f"BOLT profile collection: {method} ({why})",
             *layout_notes(comp, host, method), *skip_notes]
    if skip:
        notes.append(f"BOLT leaves {', '.join(skip)} alone (bolt.skip_functions, llvm-bolt {bolt_major})")
    fdata_dir = work_dir / "fdata"
    merged = work_dir / "merged.fdata"
    venv_dir = work_dir / "venv"
    tools = {"llvm-bolt": bolt_tool, "merge-fdata": merge_tool, "version": comp.version}
    stages: list[Stage] = []
    t = float(b.timeout)

    def clear(d: Path) -> Call:
        return Call(f"clear {d}", lambda ctx: (shutil.rmtree(d, ignore_errors=True), d.mkdir(parents=True)))

    if method == "instrument":
        if tgt.kind == "interpreter":
            # Next to the build's python, so it finds the build tree's stdlib (pybuilddir.txt) as that one does.
            instrumented = tgt.path.with_name(tgt.path.name + "-bolt-instrumented")
            python, env = str(instrumented), {}
        else:
            instrumented = work_dir / "lib" / tgt.path.name
            python, env = str(build_dir / "python"), {"LD_LIBRARY_PATH": str(instrumented.parent)}
        instr_argv = (bolt_tool, str(tgt.prebolt), "-instrument", f"--instrumentation-file={fdata_dir}/prof.fdata",
                      "--instrumentation-file-append-pid", *skip_args, *b.instrument, "-o", str(instrumented))
        ikey = digest({"stage": "bolt-instrument", "prev": prev_key, "target": str(tgt.path), "argv": instr_argv,
                       "tools": tools})
        stages.append(Stage("bolt-instrument", f"keep the PGO {tgt.path.name}, instrument a copy with llvm-bolt",
                            ikey, guarded("bolt-instrument", tgt, (
                                Call(f"keep the PGO binary: {tgt.path} -> {tgt.prebolt} (or put it back from there "
                                     "if the target is an earlier BOLT output)", keep_pgo_binary(tgt)),
                                Call(f"mkdir {instrumented.parent}",
                                     lambda ctx: instrumented.parent.mkdir(parents=True, exist_ok=True)),
                                Cmd(instr_argv, timeout=t))),
                            outputs=(instrumented,), requires=(tgt.prebolt,)))
        train_actions = train(python, venv_dir, env, list)
        tkey = digest({"stage": "bolt-train", "prev": ikey, **train_key})
        stages.append(Stage("bolt-train", "run the training tasks on the BOLT-instrumented binary", tkey,
                            guarded("bolt-train", tgt, (clear(fdata_dir), *train_actions,
                                                        Call(f"count {fdata_dir}/prof.fdata.*.fdata",
                                                             _profiles_written(fdata_dir, "prof.fdata.*.fdata")))),
                            outputs=(fdata_dir,),
                            notes=("one profile per process: --instrumentation-file-append-pid",)))
        mkey = digest({"stage": "bolt-merge", "prev": tkey, "tool": merge_tool})
        stages.append(Stage("bolt-merge", "merge the per-process BOLT profiles", mkey,
                            guarded("bolt-merge", tgt, (Call(f"{merge_tool} -q -o {merged} {fdata_dir}/*.fdata "
                                                              "(via a temp file, then rename)",
                                                              _merge_fdata(merge_tool, fdata_dir, merged, t)),)),
                            outputs=(merged,)))
    else:
        perf_dir = fdata_dir
        counter = iter(range(1, 10_000))

        def under_perf(argv: list[str]) -> list[str]:
            out = f"{perf_dir}/perf-{next(counter):03d}.data"
            return [*(a.format(out=out) for a in PERF_RECORD), *argv]
        keep = Call(f"keep the PGO binary: {tgt.path} -> {tgt.prebolt}", keep_pgo_binary(tgt))
        python = str(build_dir / "python")
        env = {"LD_LIBRARY_PATH": str(build_dir)} if tgt.kind == "libpython" else {}
        train_actions = train(python, venv_dir, env, under_perf)
        tkey = digest({"stage": "bolt-train", "prev": prev_key, "perf": PERF_RECORD, "target": str(tgt.path),
                       **train_key})
        stages.append(Stage("bolt-train", "run the training tasks under perf record (branch stacks)", tkey,
                            guarded("bolt-train", tgt, (keep, clear(perf_dir), *train_actions)),
                            outputs=(perf_dir,), requires=(tgt.prebolt,)))
        perf2bolt = comp.tools.get("perf2bolt", str(Path(bolt_tool).with_name(
            Path(bolt_tool).name.replace("llvm-bolt", "perf2bolt"))))
        mkey = digest({"stage": "bolt-merge", "prev": tkey, "tool": merge_tool, "perf2bolt": perf2bolt})
        stages.append(Stage("bolt-merge", "convert each recording with perf2bolt, then merge-fdata", mkey,
                            guarded("bolt-merge", tgt, (
                                Call(f"{perf2bolt} -p {perf_dir}/perf-NNN.data -o {perf_dir}/perf-NNN.fdata "
                                     f"{tgt.path}, for each recording", _perf2bolt_each(perf2bolt, tgt, perf_dir, t)),
                                Call(f"{merge_tool} -q -o {merged} {perf_dir}/*.fdata",
                                     _merge_fdata(merge_tool, perf_dir, merged, t)))),
                            outputs=(merged,)))
    out = tgt.path.with_name(tgt.path.name + ".bolt.tmp")
    apply_argv = (bolt_tool, str(tgt.prebolt), "-o", str(out), f"-data={merged}", *skip_args, *b.apply)
    akey = digest({"stage": "bolt-apply", "prev": mkey, "argv": apply_argv, "tools": tools})
    stages.append(Stage("bolt-apply", f"rewrite {tgt.path.name} with the profile, check it, swap it in", akey,
                        guarded("bolt-apply", tgt, (
                            Cmd(apply_argv, timeout=t),
                            Call(f"readelf -hlSW {out}: PT_GNU_STACK present and not executable, {BOLT_NOTE} "
                                 f"present; then rename {out} -> {tgt.path} ({tgt.prebolt} stays)",
                                 _apply_and_swap(tgt, out)))),
                        requires=(tgt.path, tgt.prebolt),
                        notes=(f"a failure here or earlier keeps the PGO binary ({tgt.prebolt} -> {tgt.path}) and "
                               "the build goes on; the manifest's `bolt` record says why",)))
    summary = {"method": method, "why": why, "target": str(tgt.path), "skip_functions": list(skip),
               "apply": list(b.apply), "llvm_bolt": f"{bolt_tool} ({comp.version})"}
    return BoltPlan(tuple(stages), akey, tgt, method, tuple(notes), summary)


def outcome(results: Mapping[str, StageResult], summary: Mapping) -> dict:
    """The manifest's `bolt` record: applied or not, and why."""
    rec = {**summary, "applied": False}
    earlier = failure(results)  # the first BOLT stage that failed (the later ones only skipped)
    if earlier is not None:
        rec.update(earlier)
    elif "bolt-apply" in results:
        rec.update(results["bolt-apply"].info.get("bolt", {}))
    else:
        rec["reason"] = "BOLT stages did not run"
    verify = results.get("verify")
    if verify is not None and verify.info.get("bolt", {}).get("applied") is False:
        rec.update(verify.info["bolt"])
    if rec.get("applied"):
        rec.pop("reason", None)
    rec["stages"] = {n: {"seconds": round(results[n].seconds, 1), **{k: v for k, v in results[n].info.items()
                                                                     if k in ("profiles", "merged_profiles")}}
                     for n in STAGES if n in results}
    return rec
