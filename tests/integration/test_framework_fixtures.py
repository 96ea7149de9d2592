"""Integration: the MindSpore and Ray recipes driven for real against fixture trees with the same entry points.

tests/fixtures/mindspore_tree has MindSpore's shape: `build.sh -e cpu -j N` drives a CMake project whose
CMakeLists.txt puts $ENV{CXXFLAGS} before its own -O2 in CMAKE_CXX_FLAGS_RELEASE and compiles with -Wall -Werror.
tests/fixtures/ray_tree has Ray's: `pip wheel python/` runs setup.py, which runs `bazel build //:ray_pkg` with
BAZEL_ARGS split by shlex, and .bazelrc try-imports .user.bazelrc. Each goes source -> build-env ->
build-instrumented -> train -> merge -> build -> verify -> install with clang; the tests check that profile data was
written by every process, merged and used, and that the profile's -O is the last level on every compile line.
"""

from __future__ import annotations

import dataclasses
import json
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from buildsys import engine
from buildsys.core import manifest, stages
from buildsys.core.paths import WorkArea
from buildsys.pipeline import wheels
from buildsys.pipeline.training import parse_task

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
pytestmark = pytest.mark.integration


def _stack(tmp_path: Path) -> Path:
    """A venv standing in for the optimized interpreter's environment (the install stage installs into it)."""
    subprocess.run([sys.executable, "-m", "venv", str(tmp_path / "stack")], check=True)
    return tmp_path / "stack" / "bin" / "python"


def _times(ex: stages.Execution) -> str:
    return ", ".join(f"{n} {r.seconds:.1f}s" for n, r in ex.results.items())


def _nm_has(path: Path, symbol: str) -> bool:
    out = subprocess.run(["nm", "-D", "--defined-only", str(path)], capture_output=True, text=True).stdout
    out += subprocess.run(["nm", str(path)], capture_output=True, text=True).stdout
    return symbol in out


def _wheel_member(wheel_dir: Path, member: str, dest: Path) -> Path:
    import zipfile

    (whl,) = sorted(wheel_dir.glob("*.whl"))
    with zipfile.ZipFile(whl) as z:
        z.extract(member, dest)
    return dest / member


@pytest.mark.skipif(shutil.which("clang-22") is None or shutil.which("cmake") is None, reason="needs clang-22, cmake")
def test_mindspore_fixture_instrument_train_merge_use(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = tmp_path / "mslibs"
    (cache / "prepared").mkdir(parents=True)
    monkeypatch.setenv("MSLIBS_CACHE_PATH", str(cache))
    monkeypatch.delenv("MSLIBS_SERVER", raising=False)
    stack = _stack(tmp_path)
    work = WorkArea(tmp_path / "work")
    inp = engine.prepare("workload-pgo-lto", target="mindspore", overrides=["verify.workloads=[]"], jobs=2,
                         user_source=FIXTURES / "mindspore_tree", work=work, target_args={"python": str(stack)})
    task = parse_task("fixture-train", {"version": 1, "kind": "command", "argv": [
        "{python}", str(FIXTURES / "mindspore_tree" / "bench" / "train.py")]}, "test")
    inp = dataclasses.replace(inp, tasks=(task,))
    ex = stages.execute(engine.plan(inp), work.stamps, work.logs, live=False)
    print("mindspore fixture stages:", _times(ex))
    res = ex.results
    assert [n for n in res] == ["source", "build-env", "build-instrumented", "train", "merge", "build", "verify",
                                "install"]
    # Every process of the training run wrote its own raw profile, and all of them were merged.
    assert res["merge"].info["raw_profiles"] == 3
    # The level won on every compile line: the fixture's -O2 comes first, the profile's -O3 last.
    for stage, probe in (("build-instrumented", "-fprofile-instr-generate"), ("build", "-fprofile-instr-use")):
        assert res[stage].info["last_level"] == "-O3" and res[stage].info["checked_flag"] == probe
        lines = json.loads(Path(res[stage].info["compile_commands"]).read_text())
        assert len(lines) == 1
        argv = shlex.split(lines[0]["command"])
        o_flags = [a for a in argv if a.startswith("-O")]
        assert o_flags[-1] == "-O3" and "-O2" in o_flags, o_flags
        assert argv.index("-Werror") < argv.index("-Wno-error")
        print(f"{stage} compile line levels {o_flags}; {probe}: "
              f"{next(a for a in argv if a.startswith(probe))}")
    profdata = res["merge"].info["profile_data"]
    optimized_line = json.loads(Path(res["build"].info["compile_commands"]).read_text())[0]["command"]
    assert f"-fprofile-instr-use={profdata}" in optimized_line
    # Instrumented library carries the profile runtime; the optimized one does not.
    lib = "mindspore/lib/libmindspore_fixture.so"
    assert _nm_has(_wheel_member(work.build / f"{inp.build_id}-instrumented-wheel", lib, tmp_path / "i"),
                   "__llvm_profile")
    assert not _nm_has(_wheel_member(work.build / f"{inp.build_id}-optimized-wheel", lib, tmp_path / "o"),
                       "__llvm_profile")
    # The kernel's counters are in the merged data.
    shown = subprocess.run([inp.compiler.tools["profdata"], "show", "--all-functions", "--counts", profdata],
                           capture_output=True, text=True, check=True).stdout
    assert "ms_fixture_reduce" in shown
    # Installed into the stack; manifest beside the wheel.
    doc = manifest.read(work.install / inp.build_id)
    assert doc["target"] == "mindspore" and doc["profile_data"]["raw_profiles"] == 3
    assert doc["source"]["recognised_by"] == ["build.sh", "CMakeLists.txt", "cmake/options.cmake", "version.txt"]
    out = subprocess.run([str(stack), "-c", "import mindspore; print(mindspore.reduce(10, 0))"], capture_output=True,
                         text=True, check=True, cwd=tmp_path).stdout
    assert out.strip() == "126"


@pytest.mark.skipif(shutil.which("clang-22") is None or shutil.which("bazel") is None,
                    reason="needs clang-22 and bazel (Debian: apt-get install -y bazel-bootstrap)")
def test_ray_fixture_instrument_train_merge_use(tmp_path: Path) -> None:
    stack = _stack(tmp_path)
    work = WorkArea(tmp_path / "work")
    inp = engine.prepare("workload-pgo-lto", target="ray", jobs=2, user_source=FIXTURES / "ray_tree", work=work,
                         target_args={"python": str(stack)})
    assert inp.options["channel"] == "bazelrc" and [t.name for t in inp.tasks] == ["ray-actor-calls"]
    # The fixture's setup.py needs no Cython (Ray's does: it stays in the target data).
    inp = dataclasses.replace(inp, build_requires=("setuptools", "wheel"))
    ex = stages.execute(engine.plan(inp), work.stamps, work.logs, live=False)
    print("ray fixture stages:", _times(ex))
    res = ex.results
    assert [n for n in res] == ["source", "build-env", "build-instrumented", "train", "merge", "build", "verify",
                                "install"]
    # The driver and both actor processes each wrote a raw profile; all three were merged.
    assert res["merge"].info["raw_profiles"] == 3
    for stage, probe in (("build-instrumented", "-fprofile-instr-generate"), ("build", "-fprofile-instr-use")):
        info = res[stage].info
        # Two sources, each with a PIC and a non-PIC compile action in the graph.
        assert info["workspace_actions"] == 4 and info["last_level"] == "-O3" and info["checked_flag"] == probe
        from buildsys.targets import ray as ray_recipe

        for target, argv in ray_recipe.parse_aquery(Path(info["aquery"]).read_text()):
            o_flags = [a for a in argv if a.startswith("-O")]
            assert o_flags[-1] == "-O3" and "-O2" in o_flags, (target, o_flags)
            assert "/usr/bin/clang-22" in argv[0] or argv[0].endswith("clang-22"), argv[0]
            print(f"{stage} {target} levels {o_flags}; {probe}: {next(a for a in argv if a.startswith(probe))}")
    profdata = res["merge"].info["profile_data"]
    assert f"-fprofile-instr-use={profdata}" in Path(res["build"].info["aquery"]).read_text()
    lib = "ray/_raylet.so"
    assert _nm_has(_wheel_member(work.build / f"{inp.build_id}-instrumented-wheel", lib, tmp_path / "i"),
                   "__llvm_profile")
    assert not _nm_has(_wheel_member(work.build / f"{inp.build_id}-optimized-wheel", lib, tmp_path / "o"),
                       "__llvm_profile")
    shown = subprocess.run([inp.compiler.tools["profdata"], "show", "--all-functions", profdata],
                           capture_output=True, text=True, check=True).stdout
    assert "ray_fixture_core_step" in shown and "ray_fixture_execute" in shown
    doc = manifest.read(work.install / inp.build_id)
    assert doc["target"] == "ray" and doc["version"] == "0.1.0" and doc["profile_data"]["raw_profiles"] == 3
    out = subprocess.run([str(stack), str(wheels.REPO_ROOT / "profiles/tasks/scripts/ray_actor_calls.py"),
                          "--calls", "5"], capture_output=True, text=True, check=True, cwd=tmp_path).stdout
    assert json.loads(out)["ok"] is True


@pytest.mark.skipif(shutil.which("g++") is None or shutil.which("cmake") is None, reason="needs g++, cmake")
def test_mindspore_fixture_with_gcc_pgo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """GCC: libgcov merges the three processes into one .gcda per object, named relative to the tree (the
    optimized build compiles in the same tree, so it finds them: no missing-profile warning)."""
    (tmp_path / "mslibs" / "prepared").mkdir(parents=True)
    monkeypatch.setenv("MSLIBS_CACHE_PATH", str(tmp_path / "mslibs"))
    work = WorkArea(tmp_path / "work")
    inp = engine.prepare("gcc-pgo-lto", target="mindspore", overrides=["verify.workloads=[]"], jobs=2,
                         user_source=FIXTURES / "mindspore_tree", work=work,
                         target_args={"python": str(_stack(tmp_path))})
    task = parse_task("fixture-train", {"version": 1, "kind": "command", "argv": [
        "{python}", str(FIXTURES / "mindspore_tree" / "bench" / "train.py")]}, "test")
    ex = stages.execute(engine.plan(dataclasses.replace(inp, tasks=(task,))), work.stamps, work.logs, live=False)
    print("mindspore fixture (gcc) stages:", _times(ex))
    res = ex.results
    assert res["merge"].info["gcda_files"] == 1
    assert res["build"].info["last_level"] == "-O3" and res["build"].info["checked_flag"] == "-fprofile-use"
    line = json.loads(Path(res["build"].info["compile_commands"]).read_text())[0]["command"]
    assert f"-fprofile-use={res['merge'].info['profile_data']}" in line
    log = (work.logs / inp.build_id / "build.log").read_text()
    assert "profile count data file not found" not in log and "missing-profile" not in log
