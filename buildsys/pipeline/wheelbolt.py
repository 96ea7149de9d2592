"""bolt-wheel: BOLT the native libraries of an installed wheel, as shipped (stripped), into a new wheel.

    python -m buildsys bolt-wheel --package mindspore --profile workload-pgo-lto-bolt \\
        --interp .venv/bin/python [--workloads decode-b1 --steps 8] [--libraries GLOB ...] \\
        [--set bolt.stock.apply='[...]'] [--dry-run]

Stages (a BuildPlan executed by buildsys.stages.execute, each stamped by its inputs' digest):

    wheelbolt-collect  the profile's training workloads, run by the interpreter the wheel is installed
                       in; exact counts: valgrind --tool=callgrind --instr-atstart=no, instrumentation
                       switched on only around `open_workload(...).run_steps(n)`
                       (buildsys/pipeline/wheelbolt_driver.py);
                       where perf can sample branch stacks (LBR, BRBE): perf record -j any,u instead
    wheelbolt-convert  callgrind -> BOLT's pre-aggregated profile per library (buildsys.callgrind) ->
                       perf2bolt --pa --ba --allow-stripped -> one .fdata per library (perf: perf2bolt
                       of each recording, then merge-fdata)
    wheelbolt-apply    llvm-bolt with the [bolt.stock] apply set: non-relocation mode, the only one a
                       stripped library without .rela.text allows (block reordering and splitting; no
                       function reordering, ICF, --relocs, instrumentation or hugify)
    wheelbolt-pack     a copy of the installed wheel with the rewritten libraries: version
                       `<version>+bolt.<digest8>` (digest8: sha256 over the rewritten libraries' names and
                       output sha256), RECORD with sha256 (urlsafe base64) and sizes; every other file is
                       checked against the installed RECORD (a changed install is refused)
    wheelbolt-verify   the new wheel installed with pip into a scratch directory put first on PYTHONPATH:
                       the package imports, the rewritten libraries are the ones loaded, every runtime
                       workload reproduces its golden token digest
    wheelbolt-decide   only with --keep-if-faster: an interleaved A/B (python -m perf bench, stock vs
                       rewritten wheel, decode-b1/decode-b8/serve-mixed; --quick for fewer rounds) and the
                       keep rule of buildsys/pipeline/wheeldecide.py: kept only when significantly faster on
                       the geometric mean and significantly slower on no workload; the verdict, its figures
                       and the perf run directory go into the manifest's `decision`

`--interp` is the interpreter of the environment the wheel is installed in (a venv's python, not
resolved through its symlink): training and verification run there, so they see the package's own
dependencies; no further venv is made (a fresh one would not have the wheel). The installed
distribution is never written to. Every output directory gets `hostpgo-wheelbolt.json`
(schema hostpgo-wheelbolt/1): each library's input and output sha256, functions BOLT rewrote, the
profile and profile data digests, the collector and why.

A profile from `perf record -e cpu-clock` (timer samples without branch stacks) is never offered: on
these libraries it marked hot code cold and made them slower.

The `[bolt.stock]` keys are part of the build-profile schema (buildsys/toolchain/profile.py, docs/profiles.md).
"""

from __future__ import annotations

import argparse
import base64
import fnmatch
import hashlib
import json
import os
import re
import shutil
import sys
import time
import tomllib
import zipfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from hostpgo import fsutil
from hostpgo.errors import CommandError, HostpgoError, InputError, SettingsError
from hostpgo.runner import Runner, format_command, which

from ..core.paths import REPO_ROOT, REPRODUCIBLE_EPOCH, WorkArea
from ..core.stages import (
    BuildPlan,
    Call,
    Cmd,
    Execution,
    Stage,
    StageContext,
    digest,
    execute,
    render_plan,
)
from ..toolchain import facts as facts_mod
from ..toolchain.profile import BoltStock
from . import callgrind, wheeldecide
from .bolt import BOLT_NOTE, Sampling, check_gnu_stack, read_elf

PACKAGES_FILE = Path(__file__).with_name("wheelbolt.toml")
DRIVER = Path(__file__).with_name("wheelbolt_driver.py")
MANIFEST_SCHEMA = "hostpgo-wheelbolt/1"
MANIFEST_NAME = "hostpgo-wheelbolt.json"
CALLGRIND_OPTIONS = ("--tool=callgrind", "--instr-atstart=no", "--dump-instr=yes", "--compress-strings=no",
                     "--compress-pos=no")
PERF_RECORD = ("perf", "record", "-q", "-e", "cycles:u", "-j", "any,u")
INSTALLER_FILES = ("INSTALLER", "REQUESTED", "direct_url.json", "RECORD")
"""dist-info files an installer writes (or a wheel regenerates): not copied into the new wheel."""
OVERWRITTEN_RE = re.compile(r"BOLT: (\d+) out of (\d+) functions were overwritten")
TOP_OBJECTS = 15
"""How many of the measured window's busiest objects the convert stage records (is a hot library missing
from the package's list?)."""
ZIP_TIME = time.gmtime(int(REPRODUCIBLE_EPOCH))[:6]

# ---------------------------------------------------------------------------------------------
# Inputs: the installed distribution, the libraries, the training runs and checks.

@dataclass(frozen=True)
class RecordEntry:
    path: str
    """As RECORD names it (relative to the site directory; `../` for scripts)."""
    sha256: str
    """Hex digest (empty for RECORD itself and files RECORD lists without a hash)."""
    size: int | None


@dataclass(frozen=True)
class Installed:
    """An installed distribution, as the target interpreter's importlib.metadata sees it."""

    name: str
    version: str
    location: Path
    """The site directory the distribution is installed into."""
    dist_info: str
    """Its .dist-info directory name."""
    record: tuple[RecordEntry, ...]
    wheel_tags: tuple[str, ...]
    """`Tag:` lines of its WHEEL file."""
    console_scripts: tuple[str, ...] = ()
    """Script names the installer generated from entry_points.txt (not copied: pip makes them again)."""


@dataclass(frozen=True)
class Library:
    """One native library BOLT rewrites."""

    name: str
    """Path inside the site directory (as RECORD names it)."""
    path: Path
    sha256: str
    stripped: bool
    """No .symtab: llvm-bolt needs --allow-stripped and finds functions from .eh_frame."""
    code_relocations: bool
    """Has .rela.text: relocation mode would be possible (the stock apply set does not use it)."""

    @property
    def slug(self) -> str:
        return re.sub(r"[^A-Za-z0-9_.-]", "_", self.name.replace("/", "__"))


@dataclass(frozen=True)
class TrainingRun:
    """One measured run of the driver."""

    name: str
    driver_args: tuple[str, ...]
    """After the driver's options: `workload NAME STEPS` or `call MODULE:FUNC ARG...`."""
    env: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Check:
    """One verification command, run by the target interpreter with the new wheel first on PYTHONPATH."""

    what: str
    argv: tuple[str, ...]
    """After the interpreter."""
    env: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Tools:
    """The executables the stages run."""

    llvm_bolt: str
    perf2bolt: str
    """Also converts the pre-aggregated text (--pa)."""
    merge_fdata: str
    """Only the perf collector merges (one recording per training run)."""
    valgrind: str | None
    """None where valgrind is not installed (then only the perf collector is possible)."""
    versions: tuple[tuple[str, str], ...] = ()
    """(tool, its --version text), for the stage keys and the manifest."""


@dataclass(frozen=True)
class Inputs:
    """Everything the plan depends on, gathered before planning."""

    package: str
    python: str
    installed: Installed
    libraries: tuple[Library, ...]
    training: tuple[TrainingRun, ...]
    checks: tuple[Check, ...]
    import_name: str
    stock: BoltStock
    collector: str
    """callgrind or perf (chosen)."""
    collector_why: str
    tools: Tools
    work_dir: Path
    stamps: Path
    logs: Path
    profile_name: str
    profile_digest: str
    """sha256 over the profile's files (its extends chain) and the training definition."""
    repo: Path = REPO_ROOT
    training_digest: str = ""
    """Digest of what the training runs execute (e.g. the runtime's sources)."""
    env: tuple[tuple[str, str], ...] = ()
    """Extra environment for every run (e.g. PYTHONPATH of a test's site directory)."""
    decide: wheeldecide.DecideSettings | None = None
    """With --keep-if-faster: how the decide stage times stock against rewritten; None plans no decide stage."""


def choose_collector(requested: str, sampling: Sampling, *, valgrind: bool) -> tuple[str, str]:
    """(callgrind | perf, why) for bolt.stock.collector = auto | callgrind | perf."""
    if requested == "perf" or (requested == "auto" and sampling.available):
        if not sampling.available:
            raise InputError("bolt.stock.collector = \"perf\" needs branch-stack sampling (LBR, BRBE) and this "
                             f"machine has none: {sampling.detail}; a timer-sampled profile (cpu-clock) made these "
                             "libraries slower, so use callgrind (exact counts) here")
        return "perf", f"branch stacks can be sampled here ({sampling.detail}): perf record -j any,u + perf2bolt"
    if not valgrind:
        raise InputError("the callgrind collector needs valgrind (apt-get install valgrind)")
    why = ("bolt.stock.collector = \"callgrind\"" if requested == "callgrind" else
           f"no branch-stack sampling here ({sampling.detail}): exact instruction counts from callgrind")
    return "callgrind", why


def select_libraries(record: Sequence[RecordEntry], patterns: Sequence[str]) -> tuple[RecordEntry, ...]:
    """The RECORD entries the patterns name (each pattern must match at least one file), in pattern order."""
    out: dict[str, RecordEntry] = {}
    for pat in patterns:
        hits = [e for e in record if fnmatch.fnmatchcase(e.path, pat)]
        if not hits:
            raise InputError(f"library {pat!r} is not in the distribution's RECORD")
        for e in hits:
            out.setdefault(e.path, e)
    return tuple(out.values())


def package_settings(package: str, path: Path = PACKAGES_FILE) -> dict[str, Any]:
    """[packages.NAME] of buildsys/pipeline/wheelbolt.toml."""
    data = tomllib.loads(path.read_text())
    known = data.get("packages", {})
    if package not in known:
        raise InputError(f"{path}: no [packages.{package}]; known: {', '.join(sorted(known))}; or pass --libraries")
    allowed = {"libraries", "import", "workloads", "exclude_workloads"}
    extra = set(known[package]) - allowed
    if extra:
        raise SettingsError(f"{path}: unknown key(s) {', '.join(sorted(extra))} in [packages.{package}]; "
                            f"allowed: {', '.join(sorted(allowed))}")
    own = known[package].get("workloads", True)
    if not (isinstance(own, bool) or (isinstance(own, list) and own and all(isinstance(w, str) for w in own))):
        raise SettingsError(f"{path}: [packages.{package}] workloads = {own!r}: true, false or a non-empty list of "
                            f"workload names")
    ex = known[package].get("exclude_workloads", [])
    if not (isinstance(ex, list) and all(isinstance(w, str) for w in ex)):
        raise SettingsError(f"{path}: [packages.{package}] exclude_workloads = {ex!r}: a list of workload names")
    return known[package]


@dataclass(frozen=True)
class WorkloadSets:
    """The runtime workloads bolt-wheel trains on, verifies with (golden digests) and times for its decision."""

    training: tuple[str, ...]
    verify: tuple[str, ...]
    decide: tuple[str, ...]


def workload_sets(own: bool | list[str], *, training: Sequence[str], verify: Sequence[str],
                  decide: Sequence[str], exclude: Sequence[str] = ()) -> WorkloadSets:
    """[packages.NAME] workloads (pure): true takes the profile's training and verify workloads and the decision's
    defaults, less `exclude` (exclude_workloads: those whose measured process does not run the package); false
    keeps training and decision but verifies by import only; a list is the only workloads that run the package, so
    it is all three."""
    if isinstance(own, list):
        return WorkloadSets(tuple(own), tuple(own), tuple(own))
    keep = [w for w in training if w not in exclude]
    return WorkloadSets(tuple(keep), tuple(w for w in verify if w not in exclude) if own else (),
                        tuple(w for w in decide if w not in exclude))


# ---------------------------------------------------------------------------------------------
# Pure helpers of the stages.

def b64_sha256(data_or_hex: bytes | str) -> str:
    """RECORD's hash text: `sha256=` + urlsafe base64 of the digest, without padding."""
    raw = bytes.fromhex(data_or_hex) if isinstance(data_or_hex, str) else hashlib.sha256(data_or_hex).digest()
    return "sha256=" + base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def parse_record(text: str) -> tuple[RecordEntry, ...]:
    """RECORD rows (csv without quoting in practice; a quoted path is handled)."""
    import csv
    import io

    out = []
    for row in csv.reader(io.StringIO(text)):
        if not row:
            continue
        path, hsh, size = (row + ["", ""])[:3]
        hexd = ""
        if hsh.startswith("sha256="):
            b = hsh[len("sha256="):]
            hexd = base64.urlsafe_b64decode(b + "=" * (-len(b) % 4)).hex()
        out.append(RecordEntry(path, hexd, int(size) if size else None))
    return tuple(out)


def local_version(version: str, label: str) -> str:
    """`2.10.0` -> `2.10.0+bolt.<label>`; an existing local label is kept: `2.10.0+cpu` -> `2.10.0+cpu.bolt.<label>`."""
    return f"{version}.bolt.{label}" if "+" in version else f"{version}+bolt.{label}"


def wheel_file_name(name: str, version: str, tags: Sequence[str]) -> str:
    """PEP 427 file name; several Tag lines are compressed (py2.py3-none-any)."""
    if not tags:
        raise InputError("the installed distribution's WHEEL file has no Tag line")
    parts = [t.split("-") for t in tags]
    comp = [".".join(dict.fromkeys(p[i] for p in parts)) for i in range(3)]
    dist = re.sub(r"[-_.]+", "_", name)
    return f"{dist}-{version.replace('-', '_')}-{'-'.join(comp)}.whl"


def exec_ranges(readelf_l: str) -> tuple[tuple[int, int], ...]:
    """(vaddr, vaddr + memsz) of each executable PT_LOAD in `readelf -lW` output."""
    out = []
    for line in readelf_l.splitlines():
        f = line.split()
        if len(f) >= 7 and f[0] == "LOAD" and "E" in "".join(f[6:-1]):
            vaddr, memsz = int(f[2], 16), int(f[5], 16)
            out.append((vaddr, vaddr + memsz))
    return tuple(out)


def functions_overwritten(bolt_output: str) -> tuple[int, int] | None:
    """(rewritten, total) from llvm-bolt's `BOLT: N out of M functions were overwritten.`"""
    m = OVERWRITTEN_RE.search(bolt_output)
    return (int(m.group(1)), int(m.group(2))) if m else None


def wheel_members(inst: Installed, new_version: str) -> tuple[list[tuple[str, str]], list[str]]:
    """([(archive name, installed path relative to the site dir)], notes) for the new wheel's files.

    Installer files and `__pycache__` are left out; console scripts too (pip writes them from
    entry_points.txt); any other file outside the site directory goes under `.data/`.
    """
    old_di = inst.dist_info
    new_di = f"{re.sub(r'[-_.]+', '_', inst.name)}-{new_version}.dist-info"
    data_dir = f"{re.sub(r'[-_.]+', '_', inst.name)}-{new_version}.data"
    members, notes = [], []
    for e in inst.record:
        p = e.path
        if "__pycache__/" in p or p.endswith(".pyc"):
            continue
        if p.startswith(old_di + "/"):
            base = p[len(old_di) + 1:]
            if base in INSTALLER_FILES:
                continue
            members.append((f"{new_di}/{base}", p))
            continue
        if p.startswith("../"):
            target = os.path.normpath(os.path.join("lib/pythonX/site-packages", p))  # relative to the prefix
            if target.startswith("bin/") and os.path.basename(target) in inst.console_scripts:
                continue
            sub = ("scripts/" + target[4:]) if target.startswith("bin/") else ("data/" + target)
            members.append((f"{data_dir}/{sub}", p))
            notes.append(f"{p} is outside the site directory: packed as {data_dir}/{sub}")
            continue
        members.append((p, p))
    return members, notes


def own_dist_info(names: Iterable[str]) -> str:
    """The wheel's own `.dist-info` directory among its member names: the top-level one. A package may vendor
    other distributions with their own dist-info deeper in its tree (Ray: `ray/thirdparty_files/*.dist-info/`),
    which are files of the package like any other."""
    tops = {n.split("/", 1)[0] for n in names if "/" in n and n.split("/", 1)[0].endswith(".dist-info")}
    if len(tops) != 1:
        raise HostpgoError(f"expected one top-level .dist-info directory, found {sorted(tops) or 'none'}")
    return tops.pop()


def rewrite_metadata(text: str, new_version: str) -> str:
    """METADATA with its Version header replaced."""
    out, done = [], False
    for line in text.split("\n"):
        if not done and line.startswith("Version:"):
            out.append(f"Version: {new_version}")
            done = True
        else:
            out.append(line)
        if line == "" and not done:  # end of headers without a Version: malformed
            break
    if not done:
        raise InputError("METADATA has no Version header")
    return "\n".join(out)


# ---------------------------------------------------------------------------------------------
# The plan.

def _lib_out(inp: Inputs, lib: Library) -> Path:
    return inp.work_dir / "out" / lib.name


def plan(inp: Inputs) -> BuildPlan:
    """The bolt-wheel stages for one installed distribution (pure: every fact comes in through `inp`)."""
    w = inp.work_dir
    st = inp.stock
    t = float(st.timeout)
    collect_dir, fdata_dir, out_dir, dist_dir, verify_dir = (w / "collect", w / "fdata", w / "out", w / "dist",
                                                             w / "verify")
    env = dict(inp.env)
    build_id = f"{inp.package}-{inp.installed.version}-{inp.profile_name}"
    libs = {lib.name: {"sha256": lib.sha256, "stripped": lib.stripped} for lib in inp.libraries}
    stages: list[Stage] = []

    # 1. collect
    actions: list[Cmd | Call] = []
    for run in inp.training:
        maps = collect_dir / f"{run.name}.maps.json"
        driver = (inp.python, str(DRIVER), *(("--callgrind",) if inp.collector == "callgrind" else ()),
                  "--maps", str(maps), *run.driver_args)
        if inp.collector == "callgrind":
            argv = (inp.tools.valgrind or "valgrind", *CALLGRIND_OPTIONS,
                    f"--callgrind-out-file={collect_dir}/{run.name}.callgrind", *driver)
        else:
            argv = (*PERF_RECORD, "-o", str(collect_dir / f"{run.name}.perf.data"), "--", *driver)
        actions.append(Cmd(argv, env={**env, **dict(run.env)}, cwd=inp.repo, timeout=t))
    ckey = digest({"stage": "wheelbolt-collect", "libraries": libs, "collector": inp.collector,
                   "runs": [asdict(r) for r in inp.training], "argv": [a.argv for a in actions if isinstance(a, Cmd)],
                   "training": inp.training_digest, "env": env,
                   "tools": [v for v in inp.tools.versions if v[0] in ("valgrind", "perf")],
                   "driver": hashlib.sha256(DRIVER.read_bytes()).hexdigest()})
    stages.append(Stage("wheelbolt-collect", f"profile {len(inp.training)} training run(s) ({inp.collector})", ckey,
                        (Call(f"mkdir {collect_dir}", lambda ctx: collect_dir.mkdir(parents=True)), *actions),
                        outputs=(collect_dir,),
                        notes=(f"collector: {inp.collector} ({inp.collector_why})",
                               *((("only `run_steps` is instrumented: the driver runs callgrind_control -i on/off "
                                   "on its own pid around it"),) if inp.collector == "callgrind" else ()))))

    # 2. convert
    vkey = digest({"stage": "wheelbolt-convert", "prev": ckey, "perf2bolt": inp.tools.perf2bolt,
                   "merge": inp.tools.merge_fdata, "converter": hashlib.sha256(
                       Path(callgrind.__file__).read_bytes()).hexdigest()})
    what = (f"parse {collect_dir}/*.callgrind, map each library's object and addresses, write "
            f"{fdata_dir}/<lib>.preagg, then {inp.tools.perf2bolt} --pa --ba [--allow-stripped] -p <lib>.preagg "
            f"-o <lib>.fdata <lib>" if inp.collector == "callgrind" else
            f"{inp.tools.perf2bolt} -p {collect_dir}/<run>.perf.data -o <run>.<lib>.fdata <lib> for each recording and "
            f"library; {inp.tools.merge_fdata} into {fdata_dir}/<lib>.fdata")
    stages.append(Stage("wheelbolt-convert", "one BOLT profile per library", vkey,
                        (Call(what, _convert(inp, collect_dir, fdata_dir)),), outputs=(fdata_dir,)))

    # 3. apply
    apply_argv = {lib.name: (inp.tools.llvm_bolt, str(lib.path), "-o", str(_lib_out(inp, lib)),
                             f"-data={fdata_dir / (lib.slug + '.fdata')}",
                             *(("--allow-stripped",) if lib.stripped else ()), *st.apply)
                  for lib in inp.libraries}
    akey = digest({"stage": "wheelbolt-apply", "prev": vkey, "argv": apply_argv, "tools": inp.tools.versions})
    stages.append(Stage("wheelbolt-apply", f"rewrite {len(inp.libraries)} libraries with llvm-bolt", akey,
                        (Call("for each library with a profile: " + " ; ".join(
                            format_command(a) for a in list(apply_argv.values())[:2]) +
                            (" ; ..." if len(apply_argv) > 2 else "") + f"; then readelf: PT_GNU_STACK not "
                            f"executable, {BOLT_NOTE} present", _apply(inp, apply_argv, fdata_dir)),),
                        outputs=(out_dir,),
                        notes=((f"bolt.stock.apply: {' '.join(st.apply)} (non-relocation mode: stripped "
                                "libraries without .rela.text)"),)))

    # 4. pack
    pkey = digest({"stage": "wheelbolt-pack", "prev": akey, "record": [asdict(e) for e in inp.installed.record],
                   "tags": inp.installed.wheel_tags})
    stages.append(Stage("wheelbolt-pack", "a copy of the wheel with the rewritten libraries", pkey,
                        (Call(f"zip the installed files of {inp.installed.dist_info} (RECORD) into "
                              f"{dist_dir}/<name>-<version>+bolt.<digest8>-<tags>.whl, the rewritten libraries "
                              "from the apply stage; new RECORD (sha256, sizes)", _pack(inp, dist_dir)),),
                        outputs=(dist_dir,)))

    # 5. verify
    site = verify_dir / "site"
    vfy_env = {**env, "PYTHONPATH": os.pathsep.join([str(site), *filter(None, [env.get("PYTHONPATH")])])}
    checks: list[Cmd | Call] = [
        Call(f"check the wheel in {dist_dir}: every member's sha256 and size as its RECORD says",
             lambda ctx: ctx.info.update(record_checked=check_wheel_record(_built_wheel(ctx, dist_dir)))),
        Call(f"{inp.python} -m pip install --no-deps --no-index --no-compile --target {site} <the wheel>",
             _pip_target(inp, dist_dir, site, t)),
        Call(f"env PYTHONPATH={site} {inp.python} {DRIVER} loaded {inp.import_name}: the rewritten libraries "
             f"loaded are the ones in {site}", _loaded_from_site(inp, site, vfy_env)),
        *(Cmd((inp.python, *c.argv), env={**vfy_env, **dict(c.env)}, cwd=inp.repo, timeout=t) for c in inp.checks),
        Call(f"the installed libraries still have their input sha256; remove {site} (the record stays in "
             f"{verify_dir}/verified.json)", _verified(inp, verify_dir, site)),
    ]
    ykey = digest({"stage": "wheelbolt-verify", "prev": pkey, "checks": [asdict(c) for c in inp.checks],
                   "import": inp.import_name, "training": inp.training_digest})
    stages.append(Stage("wheelbolt-verify", "install the new wheel aside; import it; golden digests", ykey,
                        tuple(checks), outputs=(verify_dir,)))

    # 6. decide (only with --keep-if-faster)
    if inp.decide is not None:
        d = inp.decide
        decide_dir = w / "decide"
        shown = wheeldecide.bench_command(d.perf_python, inp.python, f"{dist_dir}/<the wheel>", decide_dir / "run",
                                          workloads=d.workloads, quick=d.quick)
        dkey = digest({"stage": "wheelbolt-decide", "prev": ykey, "workloads": list(d.workloads), "quick": d.quick,
                       "rule": wheeldecide.RULE_VERSION, "python": inp.python})
        stages.append(Stage("wheelbolt-decide", "interleaved A/B of stock vs rewritten; keep only when faster", dkey,
                            (Call(f"{format_command(shown, {'HOSTPGO_HOME': d.home})}; then the rule on "
                                  f"{decide_dir}/run/comparison.json: {wheeldecide.RULE}",
                                  _decide(inp, dist_dir, decide_dir)),),
                            outputs=(decide_dir,),
                            notes=("a timed A/B on a shared machine is noise unless the t-tests say otherwise: "
                                   "only a significant geometric mean keeps the wheel",)))

    summary = {"package": inp.package, "version": inp.installed.version, "python": inp.python,
               "installed": str(inp.installed.location / inp.installed.dist_info),
               "profile": inp.profile_name, "profile_digest": inp.profile_digest,
               "collector": inp.collector, "collector_why": inp.collector_why,
               "training": [" ".join(r.driver_args) for r in inp.training],
               "libraries": [lib.name for lib in inp.libraries], "apply": list(st.apply),
               "bolt_stock": asdict(st), "work_dir": str(w),
               **({"decide": asdict(inp.decide)} if inp.decide is not None else {})}
    notes = tuple(f"{lib.name}: "
                  f"{'stripped (--allow-stripped; functions from .eh_frame)' if lib.stripped else 'symbols'}"
                  f", {'has' if lib.code_relocations else 'no'} .rela.text" for lib in inp.libraries)
    return BuildPlan(build_id, tuple(stages), notes, summary, finish=lambda ex: write_manifest(ex, inp))


# ---------------------------------------------------------------------------------------------
# Stage bodies.

def _convert(inp: Inputs, collect_dir: Path, fdata_dir: Path):
    def fn(ctx: StageContext) -> None:
        fdata_dir.mkdir(parents=True, exist_ok=True)
        per_lib: dict[str, dict] = {}
        if inp.collector == "perf":
            for lib in inp.libraries:
                parts = []
                for run in inp.training:
                    out = fdata_dir / f"{run.name}.{lib.slug}.fdata"
                    ctx.runner.run([inp.tools.perf2bolt, "-p", str(collect_dir / f"{run.name}.perf.data"), "-o",
                                    str(out), *(["--allow-stripped"] if lib.stripped else []), str(lib.path)],
                                   timeout=inp.stock.timeout)
                    parts.append(str(out))
                ctx.runner.run([inp.tools.merge_fdata, "-q", "-o", str(fdata_dir / f"{lib.slug}.fdata"), *parts],
                               timeout=inp.stock.timeout)
                per_lib[lib.name] = {"fdata_sha256": fsutil.sha256_of(fdata_dir / f"{lib.slug}.fdata")}
            ctx.info["libraries"] = per_lib
            return
        outputs = sorted(collect_dir.glob("*.callgrind*"))
        if not outputs:
            raise HostpgoError(f"no callgrind output in {collect_dir}")
        prof = callgrind.merge(callgrind.parse(p.read_text(errors="replace"), str(p)) for p in outputs)
        loaded: dict[str, str] = {}
        bases: dict[str, int] = {}
        for m in collect_dir.glob("*.maps.json"):
            objs = json.loads(m.read_text()).get("objects", {})
            for lib in inp.libraries:
                for path, base in objs.items():
                    if os.path.basename(path) == lib.path.name and (
                            os.path.realpath(path) == os.path.realpath(lib.path)):
                        loaded[lib.name], bases[lib.name] = path, base
        matches = callgrind.match_objects(prof.counts, {lib.name: str(lib.path) for lib in inp.libraries}, loaded)
        total = prof.grand_total
        for lib, match in zip(inp.libraries, matches):
            rec: dict[str, Any] = {"object": match.obj, "matched_by": match.rule}
            counts = prof.counts.get(match.obj, {}) if match.obj else {}
            rec["instructions"] = sum(counts.values())
            rec["share_of_window"] = round(rec["instructions"] / total, 4) if total else 0.0
            if counts:
                ranges = exec_ranges(ctx.runner.capture(["readelf", "-lW", str(lib.path)], timeout=120).stdout)
                mapping = callgrind.file_bias(counts, ranges, bases.get(lib.name))
                text = callgrind.pre_aggregated(counts, mapping, ranges)
                pre = fsutil.write_text(fdata_dir / f"{lib.slug}.preagg", text)
                out = fdata_dir / f"{lib.slug}.fdata"
                ctx.runner.run([inp.tools.perf2bolt, "--pa", "--ba", *(["--allow-stripped"] if lib.stripped else []),
                                "-p", str(pre), "-o", str(out), str(lib.path)], timeout=inp.stock.timeout)
                rec.update({"addresses": len(counts), "bias": mapping.bias, "dropped_outside_text": mapping.outside,
                            "preagg_sha256": fsutil.sha256_of(pre), "fdata_sha256": fsutil.sha256_of(out)})
            per_lib[lib.name] = rec
        top = sorted(prof.counts, key=prof.total, reverse=True)[:TOP_OBJECTS]
        ctx.info.update({"libraries": per_lib, "window_instructions": total, "event": prof.event,
                         "commands": list(prof.commands),
                         "top_objects": [{"object": o, "instructions": prof.total(o),
                                          "share_of_window": round(prof.total(o) / total, 4) if total else 0.0}
                                         for o in top]})
        if not any(r.get("instructions") for r in per_lib.values()):
            raise HostpgoError("none of the libraries ran an instruction in the measured window: "
                               f"{', '.join(lib.name for lib in inp.libraries)}")
    return fn


def _apply(inp: Inputs, apply_argv: Mapping[str, tuple[str, ...]], fdata_dir: Path):
    def fn(ctx: StageContext) -> None:
        per_lib = {}
        for lib in inp.libraries:
            fdata = fdata_dir / f"{lib.slug}.fdata"
            out = _lib_out(inp, lib)
            if not fdata.exists():
                per_lib[lib.name] = {"rewritten": False, "why": "no instruction ran in it during training",
                                     "input_sha256": lib.sha256}
                continue
            out.parent.mkdir(parents=True, exist_ok=True)
            lines: list[str] = []
            start = time.monotonic()
            ctx.runner.run(apply_argv[lib.name], timeout=inp.stock.timeout, collect=lines)
            seconds = time.monotonic() - start
            facts = read_elf(out, lambda argv: ctx.runner.capture(argv, timeout=120).stdout)
            check_gnu_stack(facts)
            if not facts.bolted:
                raise HostpgoError(f"{out} has no {BOLT_NOTE}: llvm-bolt did not write it")
            done = functions_overwritten("\n".join(lines))
            per_lib[lib.name] = {"rewritten": True, "input_sha256": lib.sha256, "output_sha256": fsutil.sha256_of(out),
                                 "functions_overwritten": done[0] if done else None,
                                 "functions_total": done[1] if done else None,
                                 "apply_seconds": round(seconds, 1), "bytes_before": lib.path.stat().st_size,
                                 "bytes_after": out.stat().st_size, "gnu_stack": facts.gnu_stack}
        if not any(r["rewritten"] for r in per_lib.values()):
            raise HostpgoError("no library was rewritten")
        ctx.info["libraries"] = per_lib
    return fn


def _rewritten(ctx: StageContext) -> dict[str, dict]:
    rec = ctx.results.get("wheelbolt-apply")
    return {k: v for k, v in (rec.info.get("libraries", {}) if rec else {}).items() if v.get("rewritten")}


def _pack(inp: Inputs, dist_dir: Path):
    def fn(ctx: StageContext) -> None:
        rewritten = _rewritten(ctx)
        label = hashlib.sha256("".join(f"{k}:{v['output_sha256']}" for k, v in sorted(rewritten.items()))
                                .encode()).hexdigest()[:8]
        version = local_version(inp.installed.version, label)
        name = wheel_file_name(inp.installed.name, version, inp.installed.wheel_tags)
        members, notes = wheel_members(inp.installed, version)
        by_name = {lib.name: lib for lib in inp.libraries}
        dest = dist_dir / name
        dist_dir.mkdir(parents=True, exist_ok=True)
        recorded = {e.path: e.sha256 for e in inp.installed.record if e.sha256}
        differ: list[str] = []
        scratch = fsutil.scratch_dir(dest)
        try:
            tmp = scratch / name
            record_rows: list[str] = []
            with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED, compresslevel=6) as z:
                own = own_dist_info(a for a, _ in members)
                for arc, rel in sorted(members, key=lambda m: (m[0].startswith(own + "/"), m[0])):
                    src = _lib_out(inp, by_name[rel]) if rel in rewritten else inp.installed.location / rel
                    if arc == f"{own}/METADATA":
                        raw = src.read_bytes()
                        if rel in recorded and hashlib.sha256(raw).hexdigest() != recorded[rel]:
                            differ.append(rel)
                        data = rewrite_metadata(raw.decode("utf-8"), version).encode()
                        _write_member(z, arc, data, 0o644)
                        record_rows.append(f"{arc},{b64_sha256(data)},{len(data)}")
                        continue
                    h, size = _write_file_member(z, arc, src)
                    if rel not in rewritten and rel in recorded and h != recorded[rel]:
                        differ.append(rel)
                    record_rows.append(f"{arc},{b64_sha256(h)},{size}")
                record_name = f"{own}/RECORD"
                record_rows.append(f"{record_name},,")
                _write_member(z, record_name, ("\n".join(record_rows) + "\n").encode(), 0o644)
            if differ:
                raise HostpgoError(f"{len(differ)} installed file(s) differ from {inp.installed.dist_info}/RECORD, so "
                                   f"the installed tree is not the wheel as shipped: {', '.join(differ[:5])}"
                                   f"{' ...' if len(differ) > 5 else ''}; reinstall it")
            fsutil.move_into_place(tmp, dest)
        except OSError as e:  # a file RECORD lists is missing or unreadable
            raise HostpgoError(f"packing {dest.name}: {e}") from e
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        ctx.info.update({"wheel": str(dest), "version": version, "sha256": fsutil.sha256_of(dest),
                         "members": len(members) + 1, "notes": notes})
    return fn


def _write_member(z: zipfile.ZipFile, arc: str, data: bytes, mode: int) -> None:
    zi = zipfile.ZipInfo(arc, ZIP_TIME)
    zi.external_attr = (0o100000 | mode) << 16
    zi.compress_type = zipfile.ZIP_DEFLATED
    z.writestr(zi, data)


def _write_file_member(z: zipfile.ZipFile, arc: str, src: Path) -> tuple[str, int]:
    """Stream a file into the archive; (sha256 hex, size)."""
    zi = zipfile.ZipInfo(arc, ZIP_TIME)
    mode = 0o755 if os.access(src, os.X_OK) else 0o644
    zi.external_attr = (0o100000 | mode) << 16
    zi.compress_type = zipfile.ZIP_DEFLATED
    h = hashlib.sha256()
    size = 0
    with src.open("rb") as f, z.open(zi, "w", force_zip64=True) as out:
        while chunk := f.read(1 << 20):
            h.update(chunk)
            size += len(chunk)
            out.write(chunk)
    return h.hexdigest(), size


def check_wheel_record(wheel: Path) -> int:
    """Every member but RECORD is in RECORD with its sha256 and size, and RECORD lists nothing else."""
    with zipfile.ZipFile(wheel) as z:
        names = [n for n in z.namelist() if not n.endswith("/")]
        try:
            record_name = own_dist_info(names) + "/RECORD"
        except HostpgoError as e:
            raise HostpgoError(f"{wheel}: {e}") from None
        if record_name not in names:
            raise HostpgoError(f"{wheel}: no {record_name}")
        rows = {e.path: e for e in parse_record(z.read(record_name).decode())}
        missing = set(names) - set(rows)
        extra = set(rows) - set(names)
        if missing or extra:
            raise HostpgoError(f"{wheel}: RECORD does not match the members: not listed {sorted(missing)[:5]}, "
                               f"listed but absent {sorted(extra)[:5]}")
        for n in names:
            if n == record_name:
                continue
            h, size = hashlib.sha256(), 0
            with z.open(n) as f:
                while chunk := f.read(1 << 20):
                    h.update(chunk)
                    size += len(chunk)
            if h.hexdigest() != rows[n].sha256 or size != rows[n].size:
                raise HostpgoError(f"{wheel}: {n}: sha256/size differ from RECORD")
        return len(names)


def _built_wheel(ctx: StageContext, dist_dir: Path) -> Path:
    rec = ctx.results.get("wheelbolt-pack")
    if rec is None or "wheel" not in rec.info:
        raise HostpgoError(f"the pack stage recorded no wheel in {dist_dir}")
    return Path(rec.info["wheel"])


def _pip_target(inp: Inputs, dist_dir: Path, site: Path, timeout: float):
    def fn(ctx: StageContext) -> None:
        wheel = _built_wheel(ctx, dist_dir)
        shutil.rmtree(site, ignore_errors=True)
        ctx.runner.run([inp.python, "-m", "pip", "install", "--no-deps", "--no-index", "--no-compile", "-q",
                        "--target", str(site), str(wheel)], env=dict(inp.env), timeout=timeout)
    return fn


def _loaded_from_site(inp: Inputs, site: Path, env: Mapping[str, str]):
    def fn(ctx: StageContext) -> None:
        done = ctx.runner.capture([inp.python, str(DRIVER), "loaded", inp.import_name], env=dict(env),
                                  cwd=inp.repo, timeout=inp.stock.timeout)
        loaded = set(json.loads(done.stdout.strip().splitlines()[-1]))
        rewritten = _rewritten(ctx)
        seen = {}
        for name, rec in rewritten.items():
            want = os.path.realpath(site / name)
            if want not in {os.path.realpath(p) for p in loaded}:
                lib_loaded = sorted(p for p in loaded if os.path.basename(p) == os.path.basename(name))
                raise HostpgoError(f"importing {inp.import_name} with PYTHONPATH={site} did not load {want} "
                                   f"(loaded: {', '.join(lib_loaded) or 'no file of that name'}); "
                                   "the check would not test the rewritten library")
            if fsutil.sha256_of(Path(want)) != rec["output_sha256"]:
                raise HostpgoError(f"{want} is not the rewritten library (sha256 differs)")
            seen[name] = want
        ctx.info["loaded"] = seen
    return fn


def _verified(inp: Inputs, verify_dir: Path, site: Path):
    def fn(ctx: StageContext) -> None:
        changed = [str(lib.path) for lib in inp.libraries if fsutil.sha256_of(lib.path) != lib.sha256]
        if changed:
            raise HostpgoError(f"installed libraries changed during the run: {', '.join(changed)}")
        fsutil.write_json(verify_dir / "verified.json", {"checks": [c.what for c in inp.checks],
                                                         "loaded": ctx.info.get("loaded", {}),
                                                         "record_members": ctx.info.get("record_checked")})
        shutil.rmtree(site, ignore_errors=True)
        ctx.info["checks_passed"] = [c.what for c in inp.checks]
    return fn


def _decide(inp: Inputs, dist_dir: Path, decide_dir: Path):
    def fn(ctx: StageContext) -> None:
        d = inp.decide
        assert d is not None
        wheel = _built_wheel(ctx, dist_dir)
        run_dir = decide_dir / "run"
        decide_dir.mkdir(parents=True, exist_ok=True)
        cmd = wheeldecide.bench_command(d.perf_python, inp.python, wheel, run_dir, workloads=d.workloads,
                                        quick=d.quick)
        ctx.runner.run(cmd, env={"HOSTPGO_HOME": d.home}, cwd=inp.repo, timeout=d.timeout)
        comparison = run_dir / "comparison.json"
        if not comparison.is_file():
            raise HostpgoError(f"python -m perf bench wrote no {comparison}")
        decision = wheeldecide.decide(json.loads(comparison.read_text()), d.workloads)
        ctx.info["decision"] = {**decision.to_json(), "run": str(run_dir), "command": cmd, "quick": d.quick,
                                "wheel": str(wheel)}
    return fn


# ---------------------------------------------------------------------------------------------
# The manifest.

def write_manifest(ex: Execution, inp: Inputs) -> dict:
    """hostpgo-wheelbolt.json beside the wheel (and in the work directory): versioned, validated first."""
    res = ex.results
    conv = res.get("wheelbolt-convert")
    app = res.get("wheelbolt-apply")
    pack = res.get("wheelbolt-pack")
    ver = res.get("wheelbolt-verify")
    dec = res.get("wheelbolt-decide")
    libs = []
    for lib in inp.libraries:
        a = (app.info.get("libraries", {}) if app else {}).get(lib.name, {})
        c = (conv.info.get("libraries", {}) if conv else {}).get(lib.name, {})
        libs.append({"name": lib.name, "input_sha256": lib.sha256, "output_sha256": a.get("output_sha256"),
                     "rewritten": bool(a.get("rewritten")), "why": a.get("why"),
                     "functions_overwritten": a.get("functions_overwritten"),
                     "functions_total": a.get("functions_total"), "apply_seconds": a.get("apply_seconds"),
                     "instructions_profiled": c.get("instructions"), "fdata_sha256": c.get("fdata_sha256"),
                     "stripped": lib.stripped})
    doc = {"schema": MANIFEST_SCHEMA, "build_id": ex.plan.build_id, "package": inp.package,
           "input": {"name": inp.installed.name, "version": inp.installed.version,
                     "location": str(inp.installed.location), "dist_info": inp.installed.dist_info},
           "output": {k: pack.info.get(k) for k in ("wheel", "version", "sha256")} if pack else None,
           "profile": {"name": inp.profile_name, "digest": inp.profile_digest,
                       "training": [" ".join(r.driver_args) for r in inp.training],
                       "training_digest": inp.training_digest},
           "collector": {"method": inp.collector, "why": inp.collector_why},
           "apply": list(inp.stock.apply), "tools": dict(inp.tools.versions), "libraries": libs,
           "verified": ver.info.get("checks_passed") if ver else None,
           "decision": dec.info.get("decision") if dec else None,
           "stages": {n: {"seconds": round(r.seconds, 1), "skipped": r.skipped, "key": r.key} for n, r in res.items()},
           "written": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    validate_manifest(doc)
    fsutil.write_json(inp.work_dir / MANIFEST_NAME, doc)
    if pack:
        fsutil.write_json(Path(pack.info["wheel"]).parent / MANIFEST_NAME, doc)
    return doc


MANIFEST_REQUIRED = {"schema": str, "build_id": str, "package": str, "input": dict, "profile": dict,
                     "collector": dict, "apply": list, "libraries": list, "stages": dict, "written": str}


def validate_manifest(doc: Mapping[str, Any]) -> None:
    for key, kind in MANIFEST_REQUIRED.items():
        if not isinstance(doc.get(key), kind):
            raise HostpgoError(f"wheelbolt manifest: '{key}' missing or not a {kind.__name__}")
    if doc["schema"] != MANIFEST_SCHEMA:
        raise HostpgoError(f"wheelbolt manifest schema {doc['schema']!r}, expected {MANIFEST_SCHEMA!r}")
    for lib in doc["libraries"]:
        if lib.get("rewritten") and not (lib.get("input_sha256") and lib.get("output_sha256")):
            raise HostpgoError(f"wheelbolt manifest: {lib.get('name')} lacks its input or output sha256")
    decision = doc.get("decision")
    if decision is not None:
        if decision.get("verdict") not in wheeldecide.VERDICTS or not isinstance(decision.get("kept"), bool):
            raise HostpgoError(f"wheelbolt manifest: decision verdict {decision.get('verdict')!r} / kept "
                               f"{decision.get('kept')!r} is not one of {wheeldecide.VERDICTS}")
        if decision["kept"] != (decision["verdict"] == "faster") or not decision.get("run"):
            raise HostpgoError("wheelbolt manifest: a decision keeps the wheel exactly when it is 'faster', and "
                               "names its perf run")


# ---------------------------------------------------------------------------------------------
# Gathering the inputs (runs the interpreter and the tools' --version; the plan itself is pure).

_PROBE = r"""
import importlib.metadata as md, json, sys
d = md.distribution(sys.argv[1])
loc = str(d.locate_file(""))
di = next(p for p in (d.files or []) if p.parts[0].endswith(".dist-info")).parts[0]
print(json.dumps({"name": d.metadata["Name"], "version": d.version, "location": loc, "dist_info": di,
                  "record": d.read_text("RECORD") or "", "wheel": d.read_text("WHEEL") or "",
                  "console_scripts": [e.name for e in d.entry_points if e.group == "console_scripts"],
                  "executable": sys.executable}))
"""


def probe_installed(python: str, package: str, runner: Runner, env: Mapping[str, str] = {}) -> Installed:
    done = runner.capture([python, "-c", _PROBE, package], env=dict(env), timeout=120, check=False)
    if done.returncode != 0:
        raise InputError(f"{python} has no distribution {package!r} installed: "
                         f"{(done.stderr or done.stdout).strip().splitlines()[-1:]}")
    d = json.loads(done.stdout)
    tags = tuple(line.split(":", 1)[1].strip() for line in d["wheel"].splitlines() if line.startswith("Tag:"))
    return Installed(d["name"], d["version"], Path(d["location"]), d["dist_info"], parse_record(d["record"]), tags,
                     tuple(d["console_scripts"]))


def find_tool(base: str) -> str | None:
    """`base` on PATH, else the newest `base-NN`."""
    found = which(base)
    if found:
        return found
    for major in range(30, 13, -1):
        found = which(f"{base}-{major}")
        if found:
            return found
    return None


def gather_libraries(inst: Installed, patterns: Sequence[str], runner: Runner) -> tuple[Library, ...]:
    out = []
    for e in select_libraries(inst.record, patterns):
        path = inst.location / e.path
        sha = fsutil.sha256_of(path)
        if e.sha256 and sha != e.sha256:
            raise InputError(f"{path} differs from its RECORD hash: the installed file was modified (an earlier "
                             "BOLT run written over it?); reinstall the wheel")
        facts = read_elf(path, lambda argv: runner.capture(argv, timeout=120).stdout)
        if facts.bolted:
            raise InputError(f"{path} is already BOLT output ({BOLT_NOTE}); reinstall the stock wheel")
        out.append(Library(e.path, path, sha, not facts.symbols, bool(facts.code_relocations)))
    return tuple(out)


def prepare(args: argparse.Namespace, runner: Runner, work: WorkArea) -> Inputs:
    from ..toolchain import profile as profile_mod
    from . import training

    pkg = package_settings(args.package) if not (args.libraries and args.import_name) else {}
    patterns = tuple(args.libraries or pkg.get("libraries", ()))
    import_name = args.import_name or pkg.get("import", args.package)
    prof = profile_mod.load(args.profile, overrides=args.set)
    stock = prof.bolt_stock
    steps = args.steps or stock.steps
    runs: list[TrainingRun] = []
    tasks = training.resolve(prof.pgo.tasks)
    sets = workload_sets(pkg.get("workloads", args.call is None),
                         training=[n for t in tasks if t.kind == "workloads" for n in t.workloads],
                         verify=prof.verify.workloads, decide=wheeldecide.DECIDE_WORKLOADS,
                         exclude=pkg.get("exclude_workloads", ()))
    if args.call:
        runs = [TrainingRun(f"call-{i}", ("call", *c.split(","))) for i, c in enumerate(args.call, 1)]
    else:
        names = args.workloads or sets.training
        if not names:
            raise InputError(f"profile {args.profile!r} has no training task of kind 'workloads' (pgo.tasks = "
                             f"{list(prof.pgo.tasks)}); pass --workloads or --call")
        runs = [TrainingRun(n, ("workload", n, str(steps))) for n in dict.fromkeys(names)]
    if getattr(args, "keep_if_faster", False):
        untimed = wheeldecide.untimeable(args.decide_workloads or sets.decide)
        if untimed:
            raise InputError(f"--keep-if-faster: the decision would time {', '.join(untimed)}, which `python -m perf "
                             f"bench` has no target for (perf/catalog.py); pass --decide-workloads with perf targets, "
                             f"or leave out --keep-if-faster and time the rewritten wheel with the runtime's own "
                             f"`workload {untimed[0]}` records")
    checks: list[Check] = [Check(f"import {import_name}", ("-c", f"import {import_name}"))]
    checks += [Check(f"{w} golden digest", ("-m", "runtime", "workload", w, "--json", "--check-golden"))
               for w in sets.verify]
    python = os.path.abspath(args.interp)  # a venv's python stays itself (no symlink resolution)
    installed = probe_installed(python, args.package, runner)
    libraries = gather_libraries(installed, patterns, runner)
    tools = Tools(llvm_bolt=find_tool("llvm-bolt") or "llvm-bolt", perf2bolt=find_tool("perf2bolt") or "perf2bolt",
                  merge_fdata=find_tool("merge-fdata") or "merge-fdata", valgrind=which("valgrind"))
    missing = [n for n in (tools.llvm_bolt, tools.perf2bolt) if not which(n)]
    if missing:
        raise CommandError(f"{', '.join(missing)} not found (apt-get install -y bolt-22)", argv=missing)
    versions = {"llvm-bolt": runner.capture([tools.llvm_bolt, "--version"], timeout=60).stdout.strip()[:200]}
    if tools.valgrind:
        versions["valgrind"] = runner.capture([tools.valgrind, "--version"], timeout=60).stdout.strip()
    collector, why = choose_collector(stock.collector,
                                   facts_mod.host_facts(work.facts, work.logs / "host-facts.log").branch_sampling,
                                   valgrind=bool(tools.valgrind))
    tools = Tools(tools.llvm_bolt, tools.perf2bolt, tools.merge_fdata, tools.valgrind, tuple(sorted(versions.items())))
    files_digest = hashlib.sha256(b"".join(Path(f).read_bytes() for f in prof.files)).hexdigest()
    training_digest = training.runtime_digest() if not args.call else ""
    build = f"{args.package}-{installed.version}-{prof.name}"
    decide = None
    if getattr(args, "keep_if_faster", False):
        decide = wheeldecide.DecideSettings(workloads=tuple(args.decide_workloads or sets.decide),
                                            quick=bool(args.quick), perf_python=sys.executable, home=str(work.root))
    return Inputs(package=args.package, python=python, installed=installed, libraries=libraries,
                  training=tuple(runs), checks=tuple(checks), import_name=import_name, stock=stock,
                  collector=collector, collector_why=why, tools=tools, work_dir=work.root / "wheelbolt" / build,
                  stamps=work.stamps, logs=work.logs, profile_name=prof.name,
                  profile_digest=digest({"files": files_digest, "stock": asdict(stock),
                                         "runs": [asdict(r) for r in runs]}),
                  training_digest=training_digest, decide=decide)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The `python -m buildsys bolt-wheel` flags."""
    p.add_argument("--package", required=True, help="the installed distribution (e.g. mindspore, ray)")
    p.add_argument("--profile", required=True, help="build profile: its training workloads and [bolt.stock]")
    p.add_argument("--interp", default=sys.executable, help="the interpreter the wheel is installed for "
                                                            "(a venv's python)")
    p.add_argument("--libraries", nargs="+",
                   help="override buildsys/pipeline/wheelbolt.toml's list (RECORD paths, globs)")
    p.add_argument("--import", dest="import_name", help="module the verify stage imports")
    p.add_argument("--workloads", nargs="+", help="training workloads instead of the profile's")
    p.add_argument("--call", action="append", help="train on MODULE:FUNC[,ARG...] instead of workloads")
    p.add_argument("--steps", type=int, help="measured steps per workload (default bolt.stock.steps)")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a profile key, e.g. bolt.stock.steps=8")
    p.add_argument("--keep-if-faster", action="store_true",
                   help="add the decide stage: an interleaved A/B (python -m perf bench) of stock vs rewritten on "
                        f"{','.join(wheeldecide.DECIDE_WORKLOADS)}; the wheel is kept only when significantly faster "
                        "on the geometric mean and significantly slower on no workload (the manifest's `decision`)")
    p.add_argument("--quick", action="store_true", help="with --keep-if-faster: perf bench --quick (fewer rounds)")
    p.add_argument("--decide-workloads", nargs="+", metavar="WORKLOAD",
                   help="with --keep-if-faster: the A/B's workloads (default "
                        f"{' '.join(wheeldecide.DECIDE_WORKLOADS)})")
    p.add_argument("--dry-run", action="store_true", help="print the plan, run nothing")


def arguments(argv: Sequence[str]) -> argparse.Namespace:
    """bolt-wheel's options from a command line (what the pipeline runs in-process), parsed by its own parser."""
    p = argparse.ArgumentParser(prog="python -m buildsys bolt-wheel")
    add_arguments(p)
    return p.parse_args(list(argv))


def build(args: argparse.Namespace, *, live: bool | None = None) -> tuple[Execution, dict, Path]:
    """Prepare, plan and execute: (the execution, the manifest written, its path in the work directory)."""
    work = WorkArea.from_env()
    inp = prepare(args, Runner(None), work)
    ex = execute(plan(inp), inp.stamps, inp.logs, live=sys.stderr.isatty() if live is None else live)
    return ex, json.loads((inp.work_dir / MANIFEST_NAME).read_text()), inp.work_dir / MANIFEST_NAME


def run(args: argparse.Namespace) -> int:
    """Prepare, plan and execute (or print the plan); errors propagate to the CLI, which maps them."""
    if args.dry_run:
        inp = prepare(args, Runner(None), WorkArea.from_env())
        print(render_plan(plan(inp)))
        return 0
    ex, doc, manifest = build(args)
    for lib in doc["libraries"]:
        print(f"{lib['name']}: " + (f"{lib['functions_overwritten']} of {lib['functions_total']} functions "
                                    f"rewritten in {lib['apply_seconds']}s" if lib["rewritten"] else
                                    f"left as shipped ({lib['why']})"))
    conv = ex.results["wheelbolt-convert"].info
    listed = {str(Path(doc["input"]["location"]) / lib["name"]) for lib in doc["libraries"]}
    for o in conv.get("top_objects", []):
        mark = "" if o["object"] in listed else "  (not rewritten)"
        print(f"  window share {o['share_of_window']:7.2%}  {o['object']}{mark}")
    print(f"wheel: {doc['output']['wheel']}  (sha256 {doc['output']['sha256']})")
    print(f"verified: {', '.join(doc['verified'] or [])}")
    decision = doc.get("decision")
    if decision:
        print(f"decision: {'KEPT' if decision['kept'] else 'not kept'} ({decision['verdict']}): {decision['why']}")
        print(f"  rule: {decision['rule']}")
        print(f"  perf run: {decision['run']}" + ("  (--quick: fewer rounds)" if decision.get("quick") else ""))
    print(f"manifest: {manifest}")
    return 0
