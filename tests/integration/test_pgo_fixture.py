"""Integration: the fixture in tests/fixtures/pgo_demo really goes instrument -> train -> merge -> use.

The stages come from buildsys.pipeline.pgo.plan (the planner the CPython recipe uses: its train and merge
stages, the profile store, --profile-data checks), the flags from buildsys.toolchain.flags, and they run
through the stage executor and hostpgo.runner, for both GCC and clang. Takes seconds, not minutes.
"""

from __future__ import annotations

import re
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from buildsys import toolchain
from buildsys.core import stages
from buildsys.core.paths import WorkArea
from buildsys.errors import InputError
from buildsys.pipeline import pgo
from buildsys.pipeline.training import TrainingTask
from buildsys.toolchain import flags, profile
from hostpgo.runner import Runner

FIXTURE = Path(__file__).resolve().parent.parent / "fixtures" / "pgo_demo"
pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def detected() -> toolchain.Toolchains:
    return toolchain.detect()


def _profile(tmp_path: Path, family: str) -> profile.Profile:
    p = tmp_path / f"fixture-{family}.toml"
    p.write_text(f'[toolchain]\nfamily = "{family}"\n[optimize]\nopt = "O2"\npgo = "on"\n')
    return profile.load(str(p))


def _build(comp: toolchain.Compiler, rf: flags.ResolvedFlags, out: Path, runner: Runner,
           extra_cflags: tuple[str, ...] = ()) -> str:
    """Compile libdemo.so and demo (separate compile and link steps, as real builds do); return stderr text."""
    out.mkdir(parents=True, exist_ok=True)
    cflags = [f.value for f in rf.cflags] + list(extra_cflags)
    ldflags = [f.value for f in rf.ldflags]
    lines: list[str] = []
    for src, obj, pic in (("libdemo.c", "libdemo.o", ["-fPIC"]), ("demo.c", "demo.o", [])):
        runner.run([comp.cc, *cflags, *pic, "-c", str(FIXTURE / src), "-o", obj], cwd=out, collect=lines)
    runner.run([comp.cc, *ldflags, "-shared", "libdemo.o", "-o", "libdemo.so"], cwd=out, collect=lines)
    runner.run([comp.cc, *ldflags, "demo.o", "-L.", "-ldemo", "-Wl,-rpath,$ORIGIN", "-o", "demo"],
               cwd=out, collect=lines)
    return "\n".join(lines)


def _build_actions(comp: toolchain.Compiler, rf: flags.ResolvedFlags, out: Path) -> tuple:
    """The same compile and link steps as _build, as stage actions (for the planner's instrumented build)."""
    cflags = [f.value for f in rf.cflags]
    ldflags = [f.value for f in rf.ldflags]
    return (stages.Call(f"mkdir {out}", lambda ctx: out.mkdir(parents=True, exist_ok=True)),
            *(stages.Cmd((comp.cc, *cflags, *pic, "-c", str(FIXTURE / src), "-o", obj), cwd=out)
              for src, obj, pic in (("libdemo.c", "libdemo.o", ["-fPIC"]), ("demo.c", "demo.o", []))),
            stages.Cmd((comp.cc, *ldflags, "-shared", "libdemo.o", "-o", "libdemo.so"), cwd=out),
            stages.Cmd((comp.cc, *ldflags, "demo.o", "-L.", "-ldemo", "-Wl,-rpath,$ORIGIN", "-o", "demo"), cwd=out))


DEMO_TASK = TrainingTask(name="demo", version=1, kind="command", argv=("{prefix}/demo", "3", "100000"))
"""Two of these runs (two pids), each forking two children."""


def _pgo_plan(tmp_path: Path, prof: profile.Profile, comp: toolchain.Compiler, host: toolchain.Host,
              instr: Path, runs: int) -> tuple[pgo.PgoPlan, WorkArea, pgo.PgoPaths]:
    """The real PGO planner with the fixture as the instrumented build and DEMO_TASK `runs` times as training."""
    work = WorkArea(tmp_path / "work")
    build_id = f"pgo-demo-{comp.family}"
    where = pgo.paths(work, build_id, "demo")

    def instrument(prev: str):
        rf = flags.resolve(prof, comp, host, "instrumented", build_dir=str(instr), raw_pattern=where.raw_pattern,
                           raw_dir=str(where.raw_dir))
        key = stages.digest({"stage": "build-instrumented", "prev": prev, "cflags": [f.value for f in rf.cflags]})
        return [stages.Stage("build-instrumented", "build the fixture (instrumented)", key,
                             _build_actions(comp, rf, instr), outputs=(instr,))], key

    def train(env: dict[str, str]):
        argv, _, _ = DEMO_TASK.command(python="", prefix=str(instr), repo="")
        return [stages.Cmd(tuple(argv), env=env, cwd=instr) for _ in range(runs)]

    plan = pgo.plan(build_id=build_id, profile_name=prof.name, comp=comp, work=work, where=where,
                    prev_key="fixture", tasks=(DEMO_TASK,), instrument=instrument, train=train)
    return plan, work, where


def _execute(plan: pgo.PgoPlan, work: WorkArea, name: str) -> stages.Execution:
    return stages.execute(stages.BuildPlan(name, plan.stages, (), {}), work.stamps, work.logs, live=False)


def _disasm(obj: Path) -> str:
    objdump = shutil.which("objdump") or shutil.which("llvm-objdump-22")
    assert objdump, "objdump is needed to compare code (apt-get install binutils)"
    text = subprocess.run([objdump, "-d", "--no-show-raw-insn", str(obj)], capture_output=True, text=True,
                          check=True).stdout
    return "\n".join(ln for ln in text.splitlines() if not ln.strip().endswith("file format elf64-x86-64")
                     and "file format" not in ln)


def _run_demo(d: Path, procs: int, env: dict[str, str] | None = None) -> str:
    done = subprocess.run([str(d / "demo"), str(procs), "100000"], capture_output=True, text=True,
                          env=env, check=True, timeout=60)
    return "\n".join(sorted(done.stdout.splitlines()))  # children finish in any order


def _max_counter(gcda: Path) -> int:
    """Largest plausible 64-bit counter in a .gcda (the hot loop's trip count), read without gcov."""
    data = gcda.read_bytes()
    best = 0
    for off in range(0, len(data) - 8, 4):
        lo, hi = struct.unpack_from("<II", data, off)
        if hi == 0 and 10_000 <= lo <= 100_000_000:
            best = max(best, lo)
    return best


def _lines_matching(stderr: str, pattern: str) -> list[str]:
    return [ln for ln in stderr.splitlines() if re.search(pattern, ln, re.I)]


def test_clang_instrument_train_merge_use(tmp_path: Path, detected: toolchain.Toolchains) -> None:
    comp = detected.find("clang")
    assert comp is not None, f"clang not found; install: {toolchain.install_hint(detected.host)}"
    assert "profdata" in comp.tools, "llvm-profdata not found next to clang"
    prof = _profile(tmp_path, "clang")
    runner = Runner(tmp_path / "build.log")
    instr, opt, plain = tmp_path / "instr", tmp_path / "opt", tmp_path / "plain"

    plan, work, where = _pgo_plan(tmp_path, prof, comp, detected.host, instr, runs=2)
    assert [s.name for s in plan.stages] == ["build-instrumented", "train", "merge"]
    ex = _execute(plan, work, "pgo-demo-clang")
    # %m gives each binary (demo, libdemo.so) its own file; %p separates the exec'd runs; forked children
    # merge online into their parent's file (without %m they would overwrite it): 2 runs x 2 binaries.
    raws = sorted(where.raw_dir.glob("*.profraw"))
    assert len(raws) == 4, f"expected one raw profile per run and binary, got {[r.name for r in raws]}"
    merged = Path(plan.profile_data)
    assert merged.parent == work.profiles and merged.suffix == ".profdata"  # the profile store
    assert ex.results["merge"].info["raw_profiles"] == 4
    side = pgo.read_sidecar(merged)
    assert side["build_id"] == "pgo-demo-clang" and side["training"][0]["name"] == "demo"
    shown: list[str] = []
    runner.run([comp.tools["profdata"], "show", "--counts", "--function=demo_score", str(merged)], collect=shown)
    text = "\n".join(shown)
    calls = int(re.search(r"Function count:\s*(\d+)", text).group(1))
    # demo_score runs ~32,000 times per process (x % 97 == 0, or odd x not divisible by 3 or 13);
    # six processes (2 runs x 3) give ~190,000: only reachable if every process's counts were merged.
    assert calls > 150000, text
    total = re.search(r"Total functions:\s*(\d+)", text)
    assert total and int(total.group(1)) >= 1
    out = _run_demo(instr, 3)
    assert out.count("child") == 2

    # --profile-data reuse of the stored file: checked with the real llvm-profdata; random bytes are refused.
    reuse = pgo.reuse_plan(data=merged, comp=comp, prev_key="fixture")
    _execute(reuse, work, "pgo-demo-reuse")
    pgo.check_profile_data(merged, comp)
    junk = tmp_path / "random.profdata"
    junk.write_bytes(bytes(range(256)) * 16)
    with pytest.raises(InputError, match=r"--profile-data .*random.profdata: not profile data"):
        pgo.check_profile_data(junk, comp)

    rf_opt = flags.resolve(prof, comp, detected.host, "optimized", build_dir=str(opt), profdata=plan.profile_data)
    assert any(f.value == f"-fprofile-instr-use={merged}" for f in rf_opt.cflags)
    stderr = _build(comp, rf_opt, opt, runner, extra_cflags=("-Wprofile-instr-missing", "-Wprofile-instr-unprofiled"))
    assert not _lines_matching(stderr, r"profile"), f"profile warnings while using the profile:\n{stderr}"
    _build(comp, flags.resolve(prof, comp, detected.host, "plain", build_dir=str(plain)), plain, runner)

    assert _disasm(opt / "demo.o") != _disasm(plain / "demo.o"), "profile did not change the generated code"
    assert _run_demo(opt, 3) == _run_demo(plain, 3) == out


def test_gcc_instrument_train_merge_use(tmp_path: Path, detected: toolchain.Toolchains) -> None:
    comp = detected.find("gcc")
    assert comp is not None, "gcc not found; apt-get install gcc"
    prof = _profile(tmp_path, "gcc")
    runner = Runner(tmp_path / "build.log")
    instr, opt, plain, noprefix = (tmp_path / n for n in ("instr", "opt", "plain", "noprefix"))

    plan, work, where = _pgo_plan(tmp_path, prof, comp, detected.host, instr, runs=1)
    raw = where.raw_dir
    assert {f.name for f in plan.stages[1].flags} == set()  # GCC's profile path is compiled in, no env
    _execute(plan, work, "pgo-demo-gcc")
    # libgcov merges the three processes' counters into one .gcda per object, named relative to the
    # build tree (-fprofile-prefix-path), so a build in another directory finds them.
    store = Path(plan.profile_data)
    assert store.parent == work.profiles and store.suffix == ".gcda" and store.is_dir()
    gcdas = sorted(p.name for p in store.rglob("*.gcda"))
    assert gcdas == ["demo.gcda", "libdemo.gcda"], gcdas
    pgo.check_profile_data(store, comp)
    three_processes = _max_counter(store / "demo.gcda")
    shutil.rmtree(raw)
    _run_demo(instr, 1)
    one_process = _max_counter(raw / "demo.gcda")
    assert one_process >= 10_000 and three_processes >= 2.5 * one_process, (one_process, three_processes)
    out = _run_demo(instr, 3)

    rf_opt = flags.resolve(prof, comp, detected.host, "optimized", build_dir=str(opt), profdata=str(store))
    assert "-fprofile-partial-training" in [f.value for f in rf_opt.cflags]
    stderr = _build(comp, rf_opt, opt, runner, extra_cflags=("-Wmissing-profile",))
    assert not _lines_matching(stderr, r"profile"), f"profile warnings while using the profile:\n{stderr}"

    # The same use-build without the prefix mapping cannot find the profile: GCC says so. This is the
    # warning the check above would have caught.
    no_prefix = [f for f in rf_opt.cflags if not f.value.startswith("-fprofile-prefix-path")]
    stderr_np = _build(comp, flags.ResolvedFlags(tuple(no_prefix), rf_opt.ldflags, rf_opt.tools), noprefix,
                       runner, extra_cflags=("-Wmissing-profile",))
    assert _lines_matching(stderr_np, r"profile"), "expected a missing-profile warning without -fprofile-prefix-path"

    _build(comp, flags.resolve(prof, comp, detected.host, "plain", build_dir=str(plain)), plain, runner)
    assert _disasm(opt / "demo.o") != _disasm(plain / "demo.o"), "profile did not change the generated code"
    assert _run_demo(opt, 3) == _run_demo(plain, 3) == out
