"""Unit: the project's own wheel (runtime._hostpath) as a package of the extension target: `--package hostpgo` names
this checkout, the copied and digested file set, the plan (dry-run) of its PGO build and the flag channel to the
compile line of _hostpath.c (no compiler, no build, no process)."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from buildsys import engine
from buildsys.core import stages
from buildsys.core.paths import REPO_ROOT, WorkArea
from buildsys.errors import InputError
from buildsys.systems import pep517
from buildsys.targets import extension
from buildsys.toolchain import Compiler, Host, Toolchains

CLANG = Compiler("clang", "/usr/bin/clang-22", "/usr/bin/clang++-22", "22.1.8", "clang version 22.1.8",
                 {"profdata": "/usr/bin/llvm-profdata-22", "ar": "/usr/bin/llvm-ar-22", "lld": "/usr/bin/ld.lld-22",
                  "ranlib": "/usr/bin/llvm-ranlib-22", "nm": "/usr/bin/llvm-nm-22"})
TOOLCHAINS = Toolchains(Host("x86_64", "debian"), (CLANG,))
INTERP = extension.Interpreter(Path("/opt/py/bin/python3"), "3.11.7", "3.11", "-DNDEBUG -g -fwrapv -O2 -Wall")
PYPROJECT = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
BUILD_ID = f"extension-hostpgo-{PYPROJECT['project']['version']}-workload-pgo-lto"


@pytest.fixture(autouse=True)
def no_processes(forbid_processes, monkeypatch: pytest.MonkeyPatch) -> None:
    forbid_processes()  # every test here only plans (tests/conftest.py); the interpreter probe answers INTERP
    monkeypatch.setattr(extension, "probe_interpreter", lambda python, runner: INTERP)


def _prepare(tmp_path: Path, package: str = "hostpgo", source: Path | None = None) -> extension.Inputs:
    return engine.prepare("workload-pgo-lto", target="extension", user_source=source,
                          work=WorkArea(tmp_path / "work"), detected=TOOLCHAINS, jobs=2,
                          target_args={"package": package, "interp": str(INTERP.python)})


def _stage(plan: stages.BuildPlan, name: str) -> stages.Stage:
    return next(s for s in plan.stages if s.name == name)


def _settings(plan: stages.BuildPlan, name: str) -> dict[str, str]:
    return {f.name: f.value for f in _stage(plan, name).flags if f.channel == "config-setting"}


def test_package_hostpgo_is_this_checkout_copied_as_its_include_list(tmp_path: Path) -> None:
    inp = _prepare(tmp_path)
    pkg = inp.package
    assert (pkg.name, pkg.version, pkg.backend, pkg.cython) == ("hostpgo", PYPROJECT["project"]["version"],
                                                                "scikit-build-core", True)
    assert pkg.tree == REPO_ROOT and pkg.sdist is None and pkg.ships_runtime
    # What the wheel is built from: pyproject.toml, CMakeLists.txt and every package the wheel carries.
    assert set(pkg.include) == {"pyproject.toml", "CMakeLists.txt",
                                *PYPROJECT["tool"]["scikit-build"]["wheel"]["packages"]}
    files = extension.local_files(REPO_ROOT, pkg.include)
    names = {str(f) for f in files}
    assert {"pyproject.toml", "CMakeLists.txt", "runtime/_hostpath.pyx", "runtime/hostpath.py"} <= names
    assert not any(n.startswith((".venv", ".hostpgo", "tests/", ".git/")) or "__pycache__" in n
                   or n.endswith((".so", ".pyc")) for n in names)
    assert pkg.sha256 == extension.files_digest(REPO_ROOT, files)
    # The training task is the project's own, on the runtime workloads that exercise the host hot path.
    assert [t.name for t in inp.tasks] == ["extension-hostpgo"]
    assert inp.tasks[0].workloads == ("decode-b8", "serve-mixed", "prefix-hit") and inp.tasks[0].steps == 160
    assert inp.verify_workloads == ("decode-b8", "serve-mixed", "prefix-hit")
    # --source of the tree itself is the same package.
    same = _prepare(tmp_path, source=REPO_ROOT)
    assert same.package == pkg


def test_version_and_name_must_match_the_tree(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"hostpgo==9\.9: the tree .* is version"):
        _prepare(tmp_path, "hostpgo==9.9")
    other = tmp_path / "other"
    other.mkdir()
    (other / "pyproject.toml").write_text('[project]\nname = "other"\nversion = "1"\n')
    with pytest.raises(InputError, match="names project 'other', not 'hostpgo'"):
        _prepare(tmp_path, source=other)
    with pytest.raises(InputError, match="both only for a local project: hostpgo"):
        _prepare(tmp_path, "msgpack==1.2.4", source=other)


def test_dry_run_plan_trains_and_verifies_the_wheels_runtime(tmp_path: Path) -> None:
    inp = _prepare(tmp_path)
    plan = engine.plan(inp)
    assert [s.name for s in plan.stages] == ["source", "runtime-deps", "build-env", "build-instrumented",
                                             "install-instrumented", "train", "merge", "build", "verify", "install"]
    work = tmp_path / "work"
    assert plan.build_id == BUILD_ID and plan.summary["prefix"] == str(work / "wheels" / BUILD_ID)
    text = stages.render_plan(plan)
    ivenv = work / "pgo" / BUILD_ID / "venv"
    vvenv = work / "build" / f"{BUILD_ID}-verify"
    # Workloads run from the venvs (the checkout's runtime has no compiled module and must not shadow the wheel's),
    # and each record must say the compiled host hot path ran.
    for name in ("decode-b8", "serve-mixed", "prefix-hit"):
        assert f"cd {ivenv} && env HOSTPGO_HOME={work} LLVM_PROFILE_FILE=" in text
        assert (f"{ivenv}/bin/python -m runtime workload {name} --json --steps=160 (record kept, host_path must be "
                "cython)") in text
        assert (f"cd {vvenv} && env HOSTPGO_HOME={work} {vvenv}/bin/python -m runtime workload {name} --json "
                "--check-golden (must match the pinned digest, host_path cython)") in text
    assert f"cd {REPO_ROOT} && env HOSTPGO_HOME" not in text
    # The property test of the compiled against the reference implementation runs against the installed wheel.
    assert (f"cd {vvenv} && {vvenv}/bin/python -m pytest -q -p no:cacheprovider --junitxml={vvenv}/tests-junit.xml "
            f"{REPO_ROOT}/tests/unit/test_runtime_hostpath.py") in text
    assert f"{vvenv}/bin/python -m pip install 'pytest>=8'" in text
    assert "import runtime._hostpath, sys; print(runtime._hostpath.__file__)" in text
    # Copied, not fetched: the include list of the checkout.
    assert "copy pyproject.toml CMakeLists.txt hostpgo buildsys hostenv runtime perf of " in text


def test_flags_reach_the_compile_line_of_hostpath_c_through_cmake_defines(tmp_path: Path) -> None:
    plan = engine.plan(_prepare(tmp_path))
    inst, opt = _settings(plan, "build-instrumented"), _settings(plan, "build")
    bdir = tmp_path / "work" / "build" / BUILD_ID
    for s in (inst, opt):
        # The level in the per-configuration flags, which CMake puts after CMAKE_C_FLAGS on the compile line.
        assert s["cmake.define.CMAKE_C_FLAGS_RELEASE"] == "-O3 -DNDEBUG" and s["cmake.build-type"] == "Release"
        assert "-O3" not in s["cmake.define.CMAKE_C_FLAGS"].split()
        assert s["build-dir"] == f"{bdir}/.hostpgo-build" and s["build.verbose"] == "true"
        assert s["cmake.define.CMAKE_C_COMPILER"] == "/usr/bin/clang-22"
    assert f"-fprofile-instr-generate={tmp_path}/work/pgo/{BUILD_ID}/raw/" in inst["cmake.define.CMAKE_C_FLAGS"]
    assert "-flto=thin" not in inst["cmake.define.CMAKE_C_FLAGS"]
    c = opt["cmake.define.CMAKE_C_FLAGS"].split()
    assert "-flto=thin" in c and any(w.startswith(f"-fprofile-instr-use={tmp_path}/work/profiles/{BUILD_ID}-")
                                     for w in c)
    assert "-flto=thin" in opt["cmake.define.CMAKE_MODULE_LINKER_FLAGS"].split()
    # The compile line ninja prints for _hostpath.c from those settings (CMake's rule: FLAGS = CMAKE_C_FLAGS then
    # CMAKE_C_FLAGS_RELEASE, then the module's own) passes the proof the build stage runs; one with a later -O2
    # (what CMake's RelWithDebInfo default would add) fails it.
    words, prefixes = extension.compile_requirements(_prepare(tmp_path), "optimized")
    line = (f"[1/2] /usr/bin/clang-22 -D_hostpath_EXPORTS -I/usr/include/python3.11 "
            f"{opt['cmake.define.CMAKE_C_FLAGS']} {opt['cmake.define.CMAKE_C_FLAGS_RELEASE']} -fPIC -MD -MT x.o "
            f"-MF x.o.d -o x.o -c {bdir}/.hostpgo-build/_hostpath.c")
    cmds = pep517.compile_lines([line], ("/usr/bin/clang-22",))
    assert pep517.check_compile_lines(cmds, opt="-O3", required=words, required_prefixes=prefixes).ok
    assert prefixes == ("-fprofile-instr-use=", "-flto")
    late = pep517.compile_lines([line.replace(" -fPIC", " -O2 -g -fPIC")], ("/usr/bin/clang-22",))
    assert not pep517.check_compile_lines(late, opt="-O3", required_prefixes=prefixes).ok


def test_other_packages_keep_their_checkout_and_verify(tmp_path: Path) -> None:
    """msgpack's workloads run from the checkout as before, with no tests and no host_path requirement."""
    pkg = extension.Package(name="msgpack", version="1.2.4", backend="setuptools", requires=("setuptools",),
                            sdist=tmp_path / "msgpack-1.2.4.tar.gz", tree=None, sha256="ab" * 32, origin="cache")
    p = _prepare(tmp_path).profile
    inp = extension.Inputs(profile=p, compiler=CLANG, host=TOOLCHAINS.host, work=WorkArea(tmp_path), package=pkg,
                           interp=INTERP, tasks=extension.training_tasks(p, "msgpack"), jobs=2,
                           verify_workloads=("decode-b1",))
    text = stages.render_plan(extension.plan(inp))
    assert " -m pytest " not in text and "host_path" not in text
    assert f"cd {REPO_ROOT} && env HOSTPGO_HOME={tmp_path} {tmp_path}/build/" in text
