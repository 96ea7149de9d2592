"""Integration: mimalloc really built end to end through the registry, the preloaded-library planner and the stage
executor (source -> instrumented build -> train in this interpreter with the library preloaded -> merge ->
optimized build -> verify -> install), and the proof that the profile's flags win on every compile line.

About a minute here (2 shared cores): mimalloc is small, training is two short runtime workloads, verify one.
Needs clang >= 22 with llvm-profdata and lld, cmake, ninja, the runtime's dependencies in this interpreter, and
the pinned archive (the work area's cache, the repository's .hostpgo/sources, or apt-get source / the URL).
"""

from __future__ import annotations

import json
import re
import shlex
import sys
from pathlib import Path

import pytest

from buildsys import engine, toolchain
from buildsys.core import stages
from buildsys.core.paths import REPO_ROOT, WorkArea
from buildsys.errors import HostpgoError
from buildsys.pipeline import sources
from buildsys.systems import cmake
from buildsys.toolchain import flags, profile
from hostenv import allocators
from hostpgo.runner import Runner, which

pytestmark = [pytest.mark.integration, pytest.mark.runtime]


@pytest.fixture(scope="module")
def detected() -> toolchain.Toolchains:
    return toolchain.detect()


def _need(detected: toolchain.Toolchains) -> toolchain.Compiler:
    comp = detected.find("clang")
    if comp is None or comp.major < 22 or "profdata" not in comp.tools or "lld" not in comp.tools:
        pytest.skip("needs clang >= 22 with llvm-profdata and ld.lld")
    for tool in ("cmake", "ninja"):
        if which(tool) is None:
            pytest.skip(f"needs {tool}")
    pytest.importorskip("mindspore")
    return comp


def _archive() -> Path | None:
    pin = sources.pinned("mimalloc")
    for root in (WorkArea.from_env().sources, REPO_ROOT / ".hostpgo" / "sources"):
        if (root / pin.file).is_file():
            return root / pin.file
    return None


def test_mimalloc_pgo_build_end_to_end(tmp_path: Path, detected: toolchain.Toolchains) -> None:
    _need(detected)
    prof_file = tmp_path / "alloc-it.toml"
    prof_file.write_text('extends = "workload-pgo-lto-short"\n'
                         f'[pgo]\ninterpreter = "{sys.executable}"\n'
                         '[verify]\nworkloads = ["decode-b1"]\n')
    work = WorkArea(tmp_path / "work")
    inp = engine.prepare(str(prof_file), target="mimalloc", jobs=2, work=work, user_source=_archive(),
                         detected=detected)
    ex = engine.build(inp, live=False)
    build_id = "mimalloc-2.0.9-alloc-it"
    assert ex.plan.build_id == build_id
    assert [n for n, r in ex.results.items() if not r.skipped] == [
        "source", "configure-instrumented", "build-instrumented", "train", "merge", "configure", "build",
        "verify", "install"]

    # Training: each process wrote its own raw profile of the library (pattern %p and %m), all merged.
    raws = sorted((work.pgo / build_id / "raw").glob("mimalloc-*-*.profraw"))
    merge = ex.results["merge"].info
    assert raws and merge["raw_profiles"] == len(raws) and Path(merge["profile_data"]).is_file()
    assert all(w["golden_match"] for w in ex.results["train"].info["workloads"])

    # The flags win: every compile line of mimalloc's sources, read from CMake's own compile_commands.json,
    # carries the profile's flags (profile use, ThinLTO) and no -O after the profile's -O3.
    entries = json.loads((work.build / f"{build_id}-optimized" / "compile_commands.json").read_text())
    lib_lines = [shlex.split(e["command"]) for e in entries if "/src/" in e["file"]]
    assert len(lib_lines) >= 10
    for argv in lib_lines:
        levels = [a for a in argv if re.fullmatch(r"-O(\d|s|z|fast|g)?", a)]
        assert levels[-1] == "-O3", argv
        assert f"-fprofile-instr-use={merge['profile_data']}" in argv and "-flto=thin" in argv
        assert argv.index("-O3") > argv.index("-flto=thin")  # CMAKE_C_FLAGS_RELEASE after CMAKE_C_FLAGS
    assert ex.results["build"].info["compile_lines_checked"] == len(entries)

    # Verify ran mimalloc's own tests and the runtime workload with the optimized library preloaded.
    log = (work.logs / build_id / "verify.log").read_text()
    assert "mimalloc-test-api" in log and "mimalloc-test-stress 2 10 4" in log
    assert [w["golden_match"] for w in ex.results["verify"].info["workloads"]] == [True]

    # Installed with a manifest hostenv reads: allocator.build finds the library, and it is preloadable.
    prefix = work.install / build_id
    doc = json.loads((prefix / "hostpgo-manifest.json").read_text())
    assert doc["target"] == "mimalloc" and doc["allocator"] == "mimalloc"
    assert doc["source"]["sha256"] == sources.pinned("mimalloc").sha256
    assert doc["profile_data"]["sha256"] == merge["profile_data_sha256"]
    found = allocators.find_built("mimalloc", build_id, install_root=work.install)
    assert found.library == prefix / "lib" / "libmimalloc.so.2" and found.library.exists()
    out = Runner(None).capture([sys.executable, "-c", "print(open('/proc/self/maps').read())"],
                               env={"LD_PRELOAD": str(found.library)}).stdout
    assert str(found.library.resolve()) in out

    # Built again: every stage is reused from its stamp.
    again = engine.build(engine.prepare(str(prof_file), target="mimalloc", jobs=2, work=work,
                                        user_source=_archive(), detected=detected), live=False)
    assert all(r.skipped for r in again.results.values())


CMAKE_PROJECT = """cmake_minimum_required(VERSION 3.13)
project(levels C)
add_library(lv SHARED lv.c)
{extra}
"""


@pytest.mark.parametrize("extra, later", [("", None), ("target_compile_options(lv PRIVATE -O1)", "-O1")])
def test_compile_line_check_catches_a_project_level(tmp_path: Path, detected: toolchain.Toolchains, extra: str,
                                                    later: str | None) -> None:
    """A real CMake configure of a tiny project: the profile's level in CMAKE_C_FLAGS_RELEASE is the last -O,
    unless the project adds its own through target_compile_options, which the check then refuses."""
    comp = detected.find("clang") or detected.find("gcc")
    if comp is None or which("cmake") is None:
        pytest.skip("needs a C compiler and cmake")
    src = tmp_path / "src"
    src.mkdir()
    (src / "lv.c").write_text("int lv(int x) { return x + 1; }\n")
    (src / "CMakeLists.txt").write_text(CMAKE_PROJECT.format(extra=extra))
    p = tmp_path / "p.toml"
    p.write_text(f'[toolchain]\nfamily = "{comp.family}"\n[optimize]\nopt = "O3"\n')
    rf = flags.resolve(profile.load(str(p), environ={}), comp, detected.host, "plain")
    stage = cmake.configure_stage("configure", "configure", key_inputs={}, source=src, build_dir=tmp_path / "b",
                                  prefix=tmp_path / "p", rf=rf, opt="-O3", defines={}, generator=None)
    stages.execute(stages.BuildPlan("levels", (stage,), (), {}), tmp_path / "stamps", tmp_path / "logs", live=False)
    commands = tmp_path / "b" / "compile_commands.json"
    if later is None:
        assert cmake.check_compile_commands(commands, opt="-O3", required=[], source_root=src)[
            "compile_lines_checked"] == 1
    else:
        with pytest.raises(HostpgoError, match=f"last optimization level is {later}, not the profile's -O3"):
            cmake.check_compile_commands(commands, opt="-O3", required=[], source_root=src)
