"""Integration: a candidate's [tuning] flags, per-file flags, ccache and ThinLTO cache really compile and link the
tests/fixtures/pgo_demo program with profile data trained by a base profile without them (the autotune case:
one training reused by every candidate), for clang ThinLTO (lld) and GCC LTO. Every compile runs with -Werror,
so a reused profile's mismatch warnings must not fail it. Takes seconds.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from buildsys import toolchain
from buildsys.core import stages
from buildsys.core.paths import WorkArea
from buildsys.pipeline import pgo
from buildsys.pipeline.training import TrainingTask
from buildsys.toolchain import flags, profile

FIXTURE = Path(__file__).resolve().parent.parent / "fixtures" / "pgo_demo"
DEMO_TASK = TrainingTask(name="demo", version=1, kind="command", argv=("{prefix}/demo", "3", "100000"))
pytestmark = pytest.mark.integration

BASE = {"clang": '[toolchain]\nfamily = "clang"\n[optimize]\nopt = "O2"\npgo = "on"\nlto = "thin"\nlinker = "lld"\n',
        "gcc": '[toolchain]\nfamily = "gcc"\n[optimize]\nopt = "O2"\npgo = "on"\nlto = "full"\n'}
CANDIDATE = ('extends = "base.toml"\n[optimize]\ncompiler_cache = "ccache"\n[tuning]\ninline_threshold = 400\n'
             'align_functions = 64\nalign_loops = 32\nno_plt = true\nsplit_machine_functions = true\n'
             '[tuning.per_file]\n"demo.c" = ["-O1", "-fno-inline"]\n')


def _actions(cc: str, rf: flags.ResolvedFlags, out: Path, werror: bool = False) -> tuple:
    """Compile libdemo.so and demo as separate compile and link steps, through `cc` (the wrapper or the compiler)."""
    cflags = [f.value for f in rf.cflags] + (["-Werror"] if werror else [])
    ldflags = [f.value for f in rf.ldflags]
    return (stages.Call(f"mkdir {out}", lambda ctx: out.mkdir(parents=True, exist_ok=True)),
            *((rf.wrapper.write_call(),) if rf.wrapper else ()),
            *(stages.Cmd((cc, *cflags, *pic, "-c", str(FIXTURE / src), "-o", obj), cwd=out)
              for src, obj, pic in (("libdemo.c", "libdemo.o", ["-fPIC"]), ("demo.c", "demo.o", []))),
            stages.Cmd((cc, *ldflags, "-shared", "libdemo.o", "-o", "libdemo.so"), cwd=out),
            stages.Cmd((cc, *ldflags, "demo.o", "-L.", "-ldemo", "-Wl,-rpath,$ORIGIN", "-o", "demo"), cwd=out))


def _run(d: Path) -> str:
    done = subprocess.run([str(d / "demo"), "3", "100000"], capture_output=True, text=True, check=True, timeout=60)
    return "\n".join(sorted(done.stdout.splitlines()))


@pytest.mark.parametrize("family", ["clang", "gcc"])
def test_candidate_builds_with_the_base_training(family: str, tmp_path: Path) -> None:
    if shutil.which("ccache") is None:
        pytest.skip("ccache is not installed (python -m buildsys toolchain --for tests --install)")
    detected = toolchain.detect()
    comp = detected.find(family)
    assert comp is not None, f"{family} not found; install: {toolchain.install_hint(detected.host)}"
    (tmp_path / "base.toml").write_text(BASE[family])
    (tmp_path / "cand.toml").write_text(CANDIDATE)
    base = profile.load(str(tmp_path / "base.toml"), environ={})
    cand = profile.load(str(tmp_path / "cand.toml"), environ={})
    work = WorkArea(tmp_path / "work")
    where = pgo.paths(work, f"demo-{family}", "demo")
    instr = tmp_path / "instr"

    def instrument(prev: str):
        rf = flags.resolve(base, comp, detected.host, "instrumented", build_dir=str(instr),
                           raw_pattern=where.raw_pattern, raw_dir=str(where.raw_dir))
        return [stages.Stage("build-instrumented", "instrumented fixture", "k-instr", _actions(comp.cc, rf, instr),
                             outputs=(instr,))], "k-instr"

    def train(env: dict[str, str]):
        argv, _, _ = DEMO_TASK.command(python="", prefix=str(instr), repo="")
        return [stages.Cmd(tuple(argv), env=env, cwd=instr)]

    trained = pgo.plan(build_id=f"demo-{family}", profile_name=base.name, comp=comp, work=work, where=where,
                       prev_key="fixture", tasks=(DEMO_TASK,), instrument=instrument, train=train)
    stages.execute(stages.BuildPlan(f"demo-{family}", trained.stages, (), {}), work.stamps, work.logs, live=False)
    data = Path(trained.profile_data)
    ok, why = pgo.profile_data_reusable(cand, data, comp)
    assert ok, why

    out = tmp_path / "cand"
    rf = flags.resolve(cand, comp, detected.host, "optimized", build_dir=str(out), profdata=str(data), work=work,
                       profile_reused=True)
    assert rf.wrapper is not None and rf.tools["CC"].startswith(str(out))
    got = [f.value for f in rf.cflags] + [f.value for f in rf.ldflags]
    assert ("-fsplit-machine-functions" if family == "clang" else "-freorder-blocks-and-partition") in got
    ex = stages.execute(stages.BuildPlan(f"cand-{family}", (stages.Stage(
        "build", "candidate", "k-cand", _actions(rf.tools["CC"], rf, out, werror=True), outputs=(out,)),), (), {}),
        work.stamps, work.logs, live=False)
    assert ex.results["build"].info["compiler_wrapper"] == sorted([rf.tools["CC"], rf.tools["CXX"]])
    assert _run(out) == _run(instr)
    assert (work.ccache).is_dir()
    if family == "clang":
        caches = list(work.thinlto_cache.iterdir())
        assert len(caches) == 1 and any(caches[0].iterdir()), "lld wrote no ThinLTO cache entries"
