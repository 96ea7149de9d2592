"""Integration: the pgo_demo fixture, linked with --emit-relocs, really goes through BOLT's stages.

The stages come from buildsys.bolt.plan (the same planner the CPython recipe uses) and run through
the stage executor with the real llvm-bolt and merge-fdata: instrument -> run (several processes,
one profile file each) -> merge-fdata -> apply -> PT_GNU_STACK check -> swap. Takes seconds.
"""

from __future__ import annotations

import dataclasses
import subprocess
from pathlib import Path

import pytest

from buildsys import toolchain
from buildsys.core import stages
from buildsys.pipeline import bolt
from buildsys.toolchain import profile
from hostpgo.runner import Runner

FIXTURE = Path(__file__).resolve().parent.parent / "fixtures" / "pgo_demo"
pytestmark = pytest.mark.integration
NO_LBR = bolt.Sampling(False, "not probed (the test uses instrumentation)")


@pytest.fixture(scope="module")
def clang() -> toolchain.Compiler:
    tcs = toolchain.detect()
    comp = tcs.find("clang")
    assert comp is not None, f"clang not found; install: {toolchain.install_hint(tcs.host)}"
    for role in ("bolt", "merge-fdata"):
        assert role in comp.tools, f"{toolchain.LLVM_TOOLS[role]} not found next to {comp.cc} (apt-get install bolt-22)"
    return comp


def _link(comp: toolchain.Compiler, out: Path) -> Path:
    """libdemo.so and demo, -O2, with the link flags a BOLT-bound build gets."""
    out.mkdir(parents=True, exist_ok=True)
    cflags, ldflags = bolt.build_flags("clang")
    runner = Runner(out / "build.log")
    ld = [f.value for f in ldflags]
    runner.run([comp.cc, "-O2", *(f.value for f in cflags), "-fPIC", "-c", str(FIXTURE / "libdemo.c"),
                "-o", "libdemo.o"], cwd=out)
    runner.run([comp.cc, "-O2", "-c", str(FIXTURE / "demo.c"), "-o", "demo.o"], cwd=out)
    runner.run([comp.cc, *ld, "-shared", "libdemo.o", "-o", "libdemo.so"], cwd=out)
    runner.run([comp.cc, *ld, "demo.o", "-L.", "-ldemo", "-Wl,-rpath,$ORIGIN", "-o", "demo"], cwd=out)
    return out / "demo"


def _run(exe: Path) -> str:
    done = subprocess.run([str(exe), "3", "100000"], capture_output=True, text=True, check=True, timeout=60)
    return "\n".join(sorted(done.stdout.splitlines()))  # children finish in any order


def _plan(tmp_path: Path, comp: toolchain.Compiler, exe: Path, apply_extra: tuple[str, ...] = ()) -> bolt.BoltPlan:
    prof = profile.load("workload-pgo-lto-bolt", environ={})
    prof = dataclasses.replace(prof, bolt=dataclasses.replace(prof.bolt, apply=(*prof.bolt.apply, *apply_extra)))

    def train(python: str, venv_dir: Path, env: dict[str, str], wrap) -> list:
        # Two runs of three processes each (the parent forks two children): six profiles.
        return [stages.Cmd(tuple(wrap([python, "3", "100000"])), env=env, nice=False) for _ in range(2)]

    return bolt.plan(profile=prof, comp=comp, host=toolchain.detect_host(), build_dir=exe.parent,
                     version="3.11.2", work_dir=tmp_path / "bolt", prev_key="fixture", train=train, train_key={},
                     sampling=NO_LBR, tgt=bolt.Target(exe, "interpreter", "the fixture program"))


def test_instrument_run_merge_apply(tmp_path: Path, clang: toolchain.Compiler) -> None:
    exe = _link(clang, tmp_path / "build")
    assert bolt.assess(bolt.read_elf(exe)).ok
    expected = _run(exe)
    bp = _plan(tmp_path, clang, exe)
    ex = stages.execute(stages.BuildPlan("demo", bp.stages, bp.notes, {}), tmp_path / "stamps", tmp_path / "logs",
                        live=False)
    rec = bolt.outcome(ex.results, bp.summary)
    assert rec["applied"] is True, rec
    assert ex.results["bolt-train"].info["profiles"] == 6  # one file per process
    assert ex.results["bolt-merge"].info["merged_profiles"] == 6
    facts = bolt.read_elf(exe)
    assert facts.bolted and facts.gnu_stack == "RW"
    assert not bolt.read_elf(bolt.Target(exe, "", "").prebolt).bolted
    assert _run(exe) == expected
    log = (tmp_path / "logs" / "demo" / "bolt-apply.log").read_text()
    assert "BOLT-INFO" in log and "-reorder-functions=cdsort" in log


def test_use_gnu_stack_output_fails_the_check_and_the_original_stays(tmp_path: Path,
                                                                    clang: toolchain.Compiler) -> None:
    exe = _link(clang, tmp_path / "build")
    original = exe.read_bytes()
    expected = _run(exe)
    # llvm-bolt 22 reuses PT_GNU_STACK for its new segment under -use-gnu-stack: the output has none.
    bp = _plan(tmp_path, clang, exe, apply_extra=("-use-gnu-stack",))
    ex = stages.execute(stages.BuildPlan("demo", bp.stages, bp.notes, {}), tmp_path / "stamps", tmp_path / "logs",
                        live=False)
    rec = bolt.outcome(ex.results, bp.summary)
    assert rec["applied"] is False and rec["stage"] == "bolt-apply"
    assert "no PT_GNU_STACK program header" in rec["reason"]
    assert exe.read_bytes() == original and _run(exe) == expected
