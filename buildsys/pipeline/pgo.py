"""PGO as a planner every target reuses: instrument -> train -> merge -> use for the clang and GCC families,
the profile store (.hostpgo/profiles/), and `--profile-data` reuse. Shaped like buildsys.pipeline.bolt.plan:
pure, with the target's instrumented build and its training commands passed in.

The stages it adds (the instrumented build's own stages come from the target's `instrument` callback):

    <instrumented build>  the target's configure/build/install with the instrument flags (buildsys.toolchain.flags)
    train                 the training tasks on the instrumented build; one raw profile per process and binary
    merge                 llvm-profdata merge (clang, BiSheng) or the .gcda tree libgcov merged (GCC), published
                          into the profile store as <build id>-<key>.profdata|.gcda with a JSON sidecar

or, with `--profile-data FILE`, one `profile-data` stage that checks the given data instead of all three.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hostpgo import fsutil
from hostpgo.errors import CommandError
from hostpgo.runner import Runner

from ..core import manifest
from ..core.paths import WorkArea
from ..core.stages import Call, ChannelFlag, Cmd, Stage, StageContext, digest
from ..errors import HostpgoError, InputError
from ..toolchain import Compiler
from .sources import sha256_of
from .training import TrainingTask, runtime_digest, tasks_digest

if TYPE_CHECKING:
    from ..toolchain.profile import Profile

PROFILE_DATA_SCHEMA = "hostpgo-profile-data/1"
GCDA_MAGIC = (b"adcg", b"gcda")
""".gcda files start with the 32-bit word 'gcda' in the writer's byte order (little-endian: b'adcg')."""
PROFDATA_MAGIC = b"\xfflprofi\x81"
"""llvm-profdata's indexed profile starts with this 64-bit word (little-endian; seen in a clang-22 .profdata)."""


@dataclass(frozen=True)
class PgoPaths:
    """Where one build's PGO files live (the instrumented build's flags need them before the plan exists)."""

    raw_dir: Path
    """Raw per-process profiles (clang .profraw; GCC's .gcda tree)."""
    raw_pattern: str
    """LLVM_PROFILE_FILE / -fprofile-instr-generate pattern: one file per process (%p) and binary (%m)."""
    venv_dir: Path
    """The training venv made from the instrumented interpreter (tasks with `venv = true`)."""


def paths(work: WorkArea, build_id: str, target: str) -> PgoPaths:
    raw = work.pgo / build_id / "raw"
    return PgoPaths(raw, str(raw / f"{target}-%p-%m.profraw"), work.pgo / build_id / "venv")


def is_llvm(comp: Compiler) -> bool:
    """Clang and BiSheng write .profraw and merge with llvm-profdata; GCC writes .gcda trees."""
    return comp.family != "gcc"


def build_time_env(comp: Compiler, build_dir: Path) -> dict[str, str]:
    """The instrumented build's own runs (setup.py, compileall, generators) write their profiles here, out of
    the training data."""
    if is_llvm(comp):
        return {"LLVM_PROFILE_FILE": str(build_dir / ".build-profraw" / "%m-%p.profraw")}
    return {"GCOV_PREFIX": str(build_dir / ".build-gcda")}


def training_env(comp: Compiler, where: PgoPaths) -> dict[str, str]:
    """The training runs' environment: clang's raw profile pattern (GCC's path is compiled in)."""
    return {"LLVM_PROFILE_FILE": where.raw_pattern} if is_llvm(comp) else {}


# ---------------------------------------------------------------------------------------------
# The profile store: merged data plus a sidecar saying what made it.

def sidecar_path(data: Path) -> Path:
    """The JSON record kept next to stored profile data: what made it and what it was trained on."""
    return data.with_name(data.name + ".json")


def read_sidecar(data: Path) -> dict | None:
    side = sidecar_path(data)
    if not side.is_file():
        return None
    try:
        doc = json.loads(side.read_text())
    except ValueError as e:
        raise InputError(f"{side}: not valid JSON ({e}); delete it or restore it from the profile store") from None
    if doc.get("schema") != PROFILE_DATA_SCHEMA:
        raise InputError(f"{side}: schema {doc.get('schema')!r}, expected {PROFILE_DATA_SCHEMA!r}")
    return doc


def _write_sidecar(out: Path, sidecar: dict, info: dict) -> None:
    fsutil.write_json(sidecar_path(out), {
        **sidecar, "sha256": info["profile_data_sha256"], "path": str(out),
        "raw_profiles": info.get("raw_profiles", info.get("gcda_files")),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})


def data_digest(data: Path) -> str:
    return sha256_of(data) if data.is_file() else manifest.tree_digest(data)


def check_profile_data(data: Path, comp: Compiler, *, flag: str = "--profile-data",
                       runner: Runner | None = None) -> None:
    """Refuse profile data this compiler cannot use: a missing path, the wrong kind, a file llvm-profdata
    cannot read, a directory without .gcda files or with a file that is not one. InputError naming `flag`."""
    if not data.exists():
        raise InputError(f"{flag} {data}: no such file or directory (give a .profdata file kept under "
                         ".hostpgo/profiles/, or a GCC .gcda tree)")
    if is_llvm(comp):
        if not data.is_file():
            raise InputError(f"{flag} {data}: {comp.family} needs an llvm-profdata file, not a directory")
        tool = comp.tools.get("profdata")
        if tool is None:
            raise InputError(f"{flag} {data}: llvm-profdata was not found next to {comp.cc}, so the file "
                             "cannot be checked")
        try:
            (runner or Runner(None)).capture([tool, "show", str(data)], timeout=300)
        except CommandError as e:
            said = " ".join(e.log_tail.split())[:300]
            raise InputError(f"{flag} {data}: not profile data {tool} can read ({said or e})") from None
        return
    if not data.is_dir():
        raise InputError(f"{flag} {data}: gcc needs a directory of .gcda files, not a file")
    gcdas = sorted(data.rglob("*.gcda"))
    if not gcdas:
        raise InputError(f"{flag} {data}: no .gcda files below it")
    for g in gcdas:
        with g.open("rb") as f:
            if f.read(4) not in GCDA_MAGIC:
                raise InputError(f"{flag} {data}: {g} is not a .gcda file (no gcda magic)")


def profile_data_kind(data: Path) -> str:
    """What a --profile-data path holds, from its shape alone: `llvm` (a file: llvm-profdata's format, made by
    clang or BiSheng), `gcc` (a directory: a .gcda tree), or `missing`."""
    if not data.exists():
        return "missing"
    return "llvm" if data.is_file() else "gcc"


def profile_data_reusable(profile: Profile, profile_data: Path, compiler: Compiler | None = None) -> tuple[bool, str]:
    """Whether a candidate profile can build with stored profile data instead of its own training, and why.

    Pure apart from reading the path's shape, its first bytes and its sidecar: no compiler runs. The family is
    `compiler`'s when given (the one the build would select), else the profile's toolchain.family. Not reusable:
    the profile has no PGO; the data is missing; its format is not the family's (GCC cannot read clang's
    .profdata, clang cannot read a .gcda tree); its sidecar names another compiler family or major version
    (profile formats change between them). Reusable data trained with other flags still loses the profile of
    each function whose shape changed (clang warns, GCC's coverage-mismatch is made a warning): the reason says so.
    """
    return _reusable(profile, Path(profile_data), compiler.family if compiler is not None else profile.toolchain.family,
                     compiler.version if compiler is not None else None)


def _reusable(profile: Profile, data: Path, family: str, version: str | None) -> tuple[bool, str]:
    if profile.optimize.pgo != "on":
        return False, (f"profile '{profile.name}' has optimize.pgo = \"off\": profile data does not apply to it")
    kind = profile_data_kind(data)
    if kind == "missing":
        return False, f"{data}: no such file or directory"
    if kind == "gcc" and not any(data.rglob("*.gcda")):
        return False, f"{data}: a directory without .gcda files, not profile data"
    wants = "gcc" if family == "gcc" else "llvm"
    if kind != wants:
        made = "an llvm-profdata file (clang or BiSheng)" if kind == "llvm" else "a GCC .gcda tree"
        return False, (f"{data} is {made} and profile '{profile.name}' compiles with {family}, which cannot read "
                       f"it: this candidate needs its own training (build it without --profile-data, or give "
                       f"data {family} made)")
    if kind == "llvm":
        with data.open("rb") as f:
            head = f.read(len(PROFDATA_MAGIC))
        if head.startswith(b"\xfflprof") and head != PROFDATA_MAGIC:
            return False, (f"{data} is a raw profile (.profraw), not merged data: merge it with llvm-profdata "
                           "merge first, or train")
    try:
        side = read_sidecar(data) or {}
    except InputError as e:
        return False, str(e)
    was = side.get("compiler", {})
    if was:
        was_family = was.get("family")
        if (was_family == "gcc") != (family == "gcc") or (family != "gcc" and was_family != family):
            return False, (f"{data} was made by {was_family} {was.get('version')} and profile '{profile.name}' "
                           f"compiles with {family}: this candidate needs its own training")
        if version is not None and str(was.get("version", "")).split(".")[0] != str(version).split(".")[0]:
            return False, (f"{data} was made by {was_family} {was.get('version')} and the build would use "
                           f"{family} {version}: profile formats differ between major versions; "
                           "this candidate needs its own training")
    trained = ", ".join(t.get("name", "?") for t in side.get("training", [])) or "unknown tasks"
    by = f"{was.get('family')} {was.get('version')}" if was else "an unrecorded compiler (no sidecar)"
    return True, (f"{data} ({kind} format, made by {by}, trained on {trained}) fits {family}; functions whose "
                  "code the candidate's flags change lose their profile with a warning (the optimized build "
                  "tolerates the mismatch), the rest keep it")


def require_reusable(profile: Profile, data: Path, comp: Compiler) -> None:
    """InputError naming --profile-data when `profile_data_reusable` says no for `comp`'s family (the major
    version is checked when the profile-data stage runs: a plan may be made with a stand-in compiler)."""
    ok, why = _reusable(profile, data, comp.family, None)
    if not ok:
        raise InputError(f"--profile-data {data}: {why}")


def _merge_llvm(comp: Compiler, raw_dir: Path, out: Path, sidecar: dict):
    def fn(ctx: StageContext) -> None:
        raws = sorted(raw_dir.glob("*.profraw"))
        if not raws:
            raise HostpgoError(f"training left no .profraw files in {raw_dir}: the instrumented build "
                               "wrote no profiles (was it built with -fprofile-instr-generate?)")
        listing = out.with_name(out.name + ".inputs")
        fsutil.write_text(listing, "\n".join(str(r) for r in raws) + "\n")
        tmp = out.with_name(out.name + ".tmp")
        tool = comp.tools["profdata"]
        ctx.runner.run([tool, "merge", f"--input-files={listing}", f"--output={tmp}"], timeout=1800)
        lines: list[str] = []
        ctx.runner.run([tool, "show", str(tmp)], collect=lines, timeout=600)
        fsutil.move_into_place(tmp, out)
        listing.unlink()
        ctx.info.update({"raw_profiles": len(raws), "profile_data": str(out),
                         "profile_data_sha256": sha256_of(out),
                         "summary": [ln.strip() for ln in lines if ":" in ln][:6]})
        _write_sidecar(out, sidecar, ctx.info)
    return fn


def _merge_gcc(raw_dir: Path, out: Path, sidecar: dict):
    def fn(ctx: StageContext) -> None:
        files = sorted(raw_dir.rglob("*.gcda"))
        if not files:
            raise HostpgoError(f"training left no .gcda files in {raw_dir}: the instrumented build "
                               "wrote no profiles (was it built with -fprofile-generate?)")
        tmp = fsutil.scratch_dir(out)
        shutil.rmtree(tmp)
        shutil.copytree(raw_dir, tmp)
        fsutil.move_into_place(tmp, out)
        h = manifest.tree_digest(out)
        ctx.info.update({"gcda_files": len(files), "profile_data": str(out), "profile_data_sha256": h})
        _write_sidecar(out, sidecar, ctx.info)
    return fn


# ---------------------------------------------------------------------------------------------
# The plan.

InstrumentFn = Callable[[str], tuple[list[Stage], str]]
"""prev key -> (the instrumented build's stages, the key of its last stage)."""
TrainFn = Callable[[dict[str, str]], list[Cmd | Call]]
"""training env -> the actions that run the training tasks on the instrumented build."""


@dataclass(frozen=True)
class PgoPlan:
    stages: tuple[Stage, ...]
    key: str
    """The last PGO stage's key (the optimized build's `prev`)."""
    profile_data: str
    """The merged data the use-build reads (-fprofile-instr-use= / -fprofile-use=)."""
    training: tuple[dict[str, Any], ...] = ()
    """What the data was trained on (the manifest's `training`; from the sidecar when reused)."""
    notes: tuple[str, ...] = field(default=())


def task_records(tasks: Sequence[TrainingTask]) -> list[dict[str, Any]]:
    return [{"name": t.name, "version": t.version, "kind": t.kind, "digest": t.digest(),
             **({"workloads": list(t.workloads), "steps": t.steps or "default",
                 "runtime_sources": runtime_digest()} if t.kind == "workloads" else {})} for t in tasks]


def reuse_plan(*, data: Path, comp: Compiler, prev_key: str) -> PgoPlan:
    """One `profile-data` stage: the given data is checked (again, before use) and recorded; no training."""
    if not data.exists():
        raise InputError(f"--profile-data {data}: no such file or directory (give a .profdata file kept under "
                         ".hostpgo/profiles/, or a GCC .gcda tree)")
    sha = data_digest(data)
    side = read_sidecar(data)
    key = digest({"stage": "profile-data", "sha256": sha, "prev": prev_key})

    def check(ctx: StageContext) -> None:
        if data_digest(data) != sha:
            raise InputError(f"--profile-data {data} changed while the build was planned")
        check_profile_data(data, comp, runner=ctx.runner)
        was = (side or {}).get("compiler", {})
        if was and (was.get("family"), str(was.get("version", "")).split(".")[0]) != \
                (comp.family, str(comp.version).split(".")[0]):
            raise InputError(f"--profile-data {data} was made by {was.get('family')} {was.get('version')} and "
                             f"this build uses {comp.family} {comp.version}: profile formats differ between "
                             "major versions; retrain, or build with the compiler that made it")
        ctx.info.update({"profile_data": str(data), "profile_data_sha256": sha, "reused": True, "sidecar": side})

    stage = Stage("profile-data", f"reuse profile data {data}", key,
                  (Call(f"check {data} (sha256 {sha[:12]}, readable by this compiler, compiler of its sidecar)",
                        check),), requires=(data,))
    return PgoPlan((stage,), key, str(data.resolve()), tuple(side.get("training", [])) if side else ())


def plan(*, build_id: str, profile_name: str, comp: Compiler, work: WorkArea, where: PgoPaths, prev_key: str,
         tasks: Sequence[TrainingTask], instrument: InstrumentFn, train: TrainFn,
         train_key: dict[str, Any] | None = None, source_sha256: str = "") -> PgoPlan:
    """instrument -> train -> merge for one build (pure). `train_key` adds what else the training depends on
    (e.g. the runtime's dependencies); `source_sha256` is recorded in the stored data's sidecar."""
    if not tasks:
        raise InputError(f"profile '{profile_name}' has optimize.pgo = \"on\" but pgo.tasks is empty; name at "
                         "least one training task")
    llvm = is_llvm(comp)
    stages, ikey = instrument(prev_key)
    stages = list(stages)
    tdig = tasks_digest(tuple(tasks))
    tkey = digest({"stage": "train", "prev": ikey, "tasks": tdig, **(train_key or {})})
    raw_dir = where.raw_dir
    env = training_env(comp, where)
    actions: list[Cmd | Call] = [
        Call(f"clear {raw_dir}", lambda ctx: (shutil.rmtree(raw_dir, ignore_errors=True), raw_dir.mkdir(parents=True))),
        *train(env)]
    records = task_records(tasks)
    stages.append(Stage("train", f"train on {', '.join(t.name for t in tasks)}", tkey, tuple(actions),
                        outputs=(raw_dir,),
                        flags=tuple(ChannelFlag("env", k, v, "engine: one raw profile per process and binary")
                                    for k, v in env.items()),
                        notes=(f"training tasks digest {tdig[:12]}",)))
    mkey = digest({"stage": "merge", "prev": tkey, "tool": comp.tools.get("profdata") if llvm else comp.version_text})
    # Kept in the profile store, named by build and key: later builds can reuse it (--profile-data).
    stem = work.profiles / f"{build_id}-{mkey[:12]}"
    sidecar = {"schema": PROFILE_DATA_SCHEMA, "build_id": build_id, "profile": profile_name,
               "compiler": comp.identity(), "training": records, "training_digest": tdig,
               "source_sha256": source_sha256}
    if llvm:
        data = stem.with_name(stem.name + ".profdata")
        merge = Call(f"{comp.tools.get('profdata', 'llvm-profdata')} merge {raw_dir}/*.profraw -> {data} (via a "
                     "temp file, then rename)", _merge_llvm(comp, raw_dir, data, sidecar))
    else:
        data = stem.with_name(stem.name + ".gcda")
        merge = Call(f"collect {raw_dir}/**/*.gcda (merged across processes by libgcov) -> {data} (copy to a "
                     "temp dir, then rename)", _merge_gcc(raw_dir, data, sidecar))
    stages.append(Stage("merge", "merge the per-process profiles", mkey, (merge,),
                        outputs=(data, sidecar_path(data))))
    return PgoPlan(tuple(stages), mkey, str(data), tuple(records))
