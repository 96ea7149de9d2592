"""Unit: the extension recipe's plans for each PEP 517 back end (no compiler, no network, no process), and the
compile-line proof parser."""

from __future__ import annotations

from pathlib import Path

import pytest

from buildsys import engine
from buildsys.core import stages
from buildsys.core.paths import WorkArea
from buildsys.systems import pep517
from buildsys.targets import extension
from buildsys.toolchain import Host, profile

INTERP = extension.Interpreter(Path("/opt/py/bin/python3"), "3.11.2", "3.11", "-DNDEBUG -g -fwrapv -O3 -Wall")


def _inputs(tmp_path: Path, backend: str, name: str = "demo", version: str = "1.0",
            prof: str = "workload-pgo-lto", workloads: tuple[str, ...] = ()) -> extension.Inputs:
    p = profile.load(prof, target="extension", environ={})
    pkg = extension.Package(name=name, version=version, backend=backend, requires=("setuptools",),
                            sdist=tmp_path / f"{name}-{version}.tar.gz", tree=None, sha256="ab" * 32, origin="cache",
                            topdir=f"{name}-{version}")
    return extension.Inputs(profile=p, compiler=engine.hypothetical_compiler(p.toolchain.family),
                            host=Host("x86_64", "debian"), work=WorkArea(tmp_path), package=pkg, interp=INTERP,
                            tasks=extension.training_tasks(p, name), jobs=2, verify_workloads=workloads)


def _flags(plan: stages.BuildPlan, stage: str) -> dict[tuple[str, str], str]:
    st = next(s for s in plan.stages if s.name == stage)
    return {(f.channel, f.name): f.value for f in st.flags}


@pytest.fixture(autouse=True)
def no_processes(forbid_processes) -> None:
    forbid_processes()  # every test here only plans (tests/conftest.py)


def test_setuptools_plan_uses_cppflags_not_cflags(tmp_path: Path) -> None:
    plan = extension.plan(_inputs(tmp_path, "setuptools", "msgpack", "1.2.4"))
    assert [s.name for s in plan.stages] == ["source", "build-env", "build-instrumented", "install-instrumented",
                                             "train", "merge", "build", "verify", "install"]
    inst, opt = _flags(plan, "build-instrumented"), _flags(plan, "build")
    assert ("env", "CFLAGS") not in opt and opt[("env", "CPPFLAGS")].split()[0] == "-O3"
    icpp = inst[("env", "CPPFLAGS")]
    assert "-fprofile-instr-generate=" in icpp and "-flto=thin" not in icpp
    assert "-fprofile-instr-use=" in opt[("env", "CPPFLAGS")] and "-flto=thin" in opt[("env", "LDFLAGS")]
    assert "LLVM_PROFILE_FILE" in {n for _c, n in inst}  # the build's own runs stay out of the training data
    # The package's own training task, and the fixed build directory shared by both variants.
    assert plan.summary["training_tasks"][0]["name"] == "extension-msgpack"
    text = stages.render_plan(plan)
    bdir = str(tmp_path / "build" / "extension-msgpack-1.2.4-workload-pgo-lto")
    assert text.count(f"cd {bdir} &&") == 2 and "carries -DNDEBUG -fwrapv -fprofile-instr-use= -flto" in text
    assert plan.summary["prefix"] == str(tmp_path / "wheels" / "extension-msgpack-1.2.4-workload-pgo-lto")


def test_scikit_build_core_plan_passes_cmake_defines(tmp_path: Path) -> None:
    plan = extension.plan(_inputs(tmp_path, "scikit-build-core"))
    opt = _flags(plan, "build")
    rel = opt[("config-setting", "cmake.define.CMAKE_C_FLAGS_RELEASE")]
    assert rel == "-O3 -DNDEBUG"  # the level last, in the per-configuration flags CMake appends
    assert "-fprofile-instr-use=" in opt[("config-setting", "cmake.define.CMAKE_C_FLAGS")]
    assert opt[("config-setting", "build-dir")].endswith("extension-demo-1.0-workload-pgo-lto/.hostpgo-build")
    assert ("env", "CPPFLAGS") not in opt and opt[("config-setting", "cmake.build-type")] == "Release"


def test_meson_python_plan_for_numpy_1_26_4(tmp_path: Path) -> None:
    plan = extension.plan(_inputs(tmp_path, "meson-python", "numpy", "1.26.4", workloads=("decode-b1",)))
    names = [s.name for s in plan.stages]
    assert names[:2] == ["source", "runtime-deps"] and "verify" in names
    assert plan.summary["training_tasks"][0]["name"] == "extension-numpy"
    st = next(s for s in plan.stages if s.name == "build")
    args = [f.value for f in st.flags if f.name == "setup-args"]
    assert "-Dbuildtype=plain" in args and "-Db_pgo=off" in args
    c_args = next(a for a in args if a.startswith("-Dc_args="))
    assert c_args.split("=", 1)[1].split()[0] == "-O3" and "-fprofile-instr-use=" in c_args
    assert ("compile-args", "-v") in {(f.name, f.value) for f in st.flags}
    # numpy trains on the runtime's workloads: the instrumented venv sees the runtime's dependencies.
    assert "hostpgo-runtime.pth" in stages.render_plan(plan)


def test_plain_profile_has_no_pgo_stages(tmp_path: Path) -> None:
    plan = extension.plan(_inputs(tmp_path, "setuptools", prof="baseline"))
    assert [s.name for s in plan.stages] == ["source", "build-env", "build", "verify", "install"]
    assert "-fprofile" not in _flags(plan, "build")[("env", "CPPFLAGS")]


def test_package_and_sdist_names() -> None:
    assert extension.parse_package("numpy==1.26.4") == ("numpy", "1.26.4")
    assert extension.parse_package("msgpack") == ("msgpack", None)
    with pytest.raises(extension.InputError, match="expected NAME or NAME==VERSION"):
        extension.parse_package("numpy>=1")
    assert extension.sdist_name_version(Path("msgspec-0.23.0.tar.gz")) == ("msgspec", "0.23.0")
    assert extension.describe_build({"build-system": {"build-backend": "mesonpy", "requires": ["meson-python"]}}) \
        == ("meson-python", ("meson-python",))
    with pytest.raises(extension.InputError, match="build-backend 'flit_core.buildapi'"):
        extension.describe_build({"build-system": {"build-backend": "flit_core.buildapi"}})


LOG = """\
running build_ext
/usr/bin/clang-22 -DNDEBUG -g -fwrapv -O3 -Wall -O2 -fprofile-instr-use=/p.profdata -fPIC -I. -c a.c -o a.o
[3/9] /usr/bin/clang-22 -Ifoo -O2 -fprofile-instr-use=/p.profdata -DNDEBUG -fwrapv -MD -c ../b.c -o b.o
/usr/bin/clang-22 -shared a.o -o a.so
/usr/bin/clang-22 -DNDEBUG -fwrapv -O2 -fprofile-instr-use=/p.profdata -O0 -g -UNDEBUG -c c.c -o c.o
"""


def test_compile_line_proof_finds_a_later_level_and_undone_ndebug() -> None:
    cmds = pep517.compile_lines(LOG.splitlines(), ("/usr/bin/clang-22",))
    assert len(cmds) == 3  # the link line is not a compile line; ninja's [3/9] prefix is dropped
    good = pep517.check_compile_lines(cmds[:2], opt="-O2", required=("-DNDEBUG", "-fwrapv"),
                                      required_prefixes=("-fprofile-instr-use=",))
    assert good.ok and good.lines == 2
    bad = pep517.check_compile_lines(cmds, opt="-O2", required=("-DNDEBUG",))
    assert not bad.ok and any("c.c: last optimization level -O0" in f for f in bad.failures)
    assert any("c.c: -UNDEBUG after -DNDEBUG" in f for f in bad.failures)
    missing = pep517.check_compile_lines(cmds[:1], opt="-O2", required_prefixes=("-flto",))
    assert missing.failures == ("a.c: no -flto...",)
    assert not pep517.check_compile_lines([], opt="-O2").ok  # no compile line found is no proof
