"""Integration: a tiny setuptools C extension, generated into tmp_path, really goes build-env -> instrumented wheel ->
train -> merge -> optimized wheel -> verify -> install through the extension recipe and the stage executor, with
clang. Asserts that profile data was produced (raw profile, merged data naming the fixture's functions), that it
was consumed (clang's unprofiled/out-of-date diagnostics are errors in the optimized build, and the same
diagnostic does fire for a file the data does not cover), and that the flags won on every compile line.

The build environment's `build` and `setuptools` come from the package index (pip's configured one).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from buildsys import targets, toolchain
from buildsys.core import manifest, stages
from buildsys.core.paths import WorkArea
from buildsys.pipeline.training import TrainingTask
from buildsys.targets import extension
from buildsys.toolchain import flags, profile
from hostpgo.runner import Runner

pytestmark = pytest.mark.integration

C_SOURCE = r"""
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <assert.h>

static long classify(long x) {
    if (x % 15 == 0) return 3;
    if (x % 5 == 0) return 2;
    if (x % 3 == 0) return 1;
    return 0;
}

static PyObject *tally(PyObject *self, PyObject *arg) {
    long n = PyLong_AsLong(arg), total = 0;
    if (n < 0 && PyErr_Occurred()) return NULL;
    for (long i = 0; i < n; i++) total += classify(i);
    assert(0 && "asserts are compiled out: -DNDEBUG must survive");
    return PyLong_FromLong(total);
}

static PyMethodDef methods[] = {{"tally", tally, METH_O, "sum of classify(i) for i < n"}, {NULL, NULL, 0, NULL}};
static struct PyModuleDef mod = {PyModuleDef_HEAD_INIT, "hpgodemo", NULL, -1, methods};
PyMODINIT_FUNC PyInit_hpgodemo(void) { return PyModule_Create(&mod); }
"""


def _project(root: Path) -> Path:
    root.mkdir()
    (root / "pyproject.toml").write_text(
        '[build-system]\nrequires = ["setuptools>=70"]\nbuild-backend = "setuptools.build_meta"\n\n'
        '[project]\nname = "hpgodemo"\nversion = "0.1"\n')
    (root / "setup.py").write_text(
        "from setuptools import Extension, setup\nsetup(ext_modules=[Extension('hpgodemo', ['hpgodemo.c'])])\n")
    (root / "hpgodemo.c").write_text(C_SOURCE)
    return root


@pytest.fixture(scope="module")
def clang() -> toolchain.Compiler:
    comp = toolchain.detect().find("clang")
    if comp is None or "profdata" not in comp.tools:
        pytest.skip("needs clang and llvm-profdata")
    return comp


def test_extension_wheel_through_instrument_train_merge_use(tmp_path: Path, clang: toolchain.Compiler) -> None:
    prof_file = tmp_path / "ext-fixture.toml"
    prof_file.write_text('[toolchain]\nfamily = "clang"\n[optimize]\nopt = "O2"\npgo = "on"\n[flags]\n'
                         'cflags = ["-Werror=profile-instr-unprofiled", "-Werror=profile-instr-out-of-date"]\n')
    prof = profile.load(str(prof_file), target="extension", environ={})
    work = WorkArea(tmp_path / "work")
    tree = _project(tmp_path / "hpgodemo")
    pkg = extension.describe_package(name=None, version=None, sdist=None, tree=tree, origin="user")
    assert (pkg.name, pkg.version, pkg.backend) == ("hpgodemo", "0.1", "setuptools")
    interp = extension.probe_interpreter(Path(sys.executable), Runner(None))
    task = TrainingTask(name="hpgodemo-train", version=1, kind="interpreter",
                        argv=("-c", "import hpgodemo; assert hpgodemo.tally(200000) == sum(3 if i % 15 == 0 else "
                              "2 if i % 5 == 0 else 1 if i % 3 == 0 else 0 for i in range(200000))"))
    inp = extension.Inputs(profile=prof, compiler=clang, host=toolchain.detect().host, work=work, package=pkg,
                           interp=interp, tasks=(task,), jobs=2)
    plan = extension.plan(inp)
    assert [s.name for s in plan.stages] == ["source", "build-env", "build-instrumented",
                                             "install-instrumented", "train", "merge", "build", "verify", "install"]
    ex = stages.execute(plan, work.stamps, work.logs, live=False)

    # Produced: a raw profile from the training process, merged data that names the fixture's functions.
    merge = ex.results["merge"].info
    assert merge["raw_profiles"] >= 1
    data = Path(merge["profile_data"])
    shown = Runner(None).capture([clang.tools["profdata"], "show", "--all-functions", str(data)]).stdout
    assert "tally" in shown and "classify" in shown
    # Consumed: the optimized build ran with unprofiled / out-of-date profile diagnostics as errors ...
    proof = ex.results["build"].info["compile_proof"]
    assert proof["ok"] and proof["compile_lines"] == 1
    assert "-fprofile-instr-use=" + str(data) in proof["example"]
    assert "-Werror=profile-instr-unprofiled" in proof["example"]
    # ... and that diagnostic really fires for a file the data does not cover.
    other = tmp_path / "other.c"
    other.write_text("int other(int x) { return x ? 2 * x : 1; }\n")
    said = Runner(None).capture([clang.cc, "-O2", f"-fprofile-instr-use={data}", "-Wprofile-instr-unprofiled",
                                 "-c", str(other), "-o", str(tmp_path / "other.o")])
    assert "no profile data available" in said.stderr
    # The flags won: the profile's -O2 is the last level (after sysconfig's -O3), -DNDEBUG and -fwrapv kept.
    example = proof["example"].split()
    levels = [w for w in example if w.startswith("-O")]
    assert levels[-1] == "-O2" and "-DNDEBUG" in example and "-fwrapv" in example
    assert ex.results["build-instrumented"].info["compile_proof"]["ok"]

    # Installed: the wheel and a manifest recording the channel of every flag and the profile data digest.
    dest = work.root / "wheels" / inp.build_id
    wheels = list(dest.glob("hpgodemo-0.1-*.whl"))
    assert len(wheels) == 1
    doc = manifest.read(dest)
    assert doc["target"] == "extension" and doc["profile_data"]["sha256"] == merge["profile_data_sha256"]
    chans = {(f["channel"], f["name"]) for f in doc["flags"]["build"]}
    assert ("env", "CPPFLAGS") in chans and ("env", "CFLAGS") not in chans
    assert doc["compile_proof"]["build"]["ok"] and doc["source"]["kind"] == "tree"
    # The verify venv imports the optimized module and the assert stayed compiled out.
    vpy = work.build / f"{inp.build_id}-verify" / "bin" / "python"
    out = Runner(None).capture([str(vpy), "-c", "import hpgodemo; print(hpgodemo.tally(30))"]).stdout
    assert out.strip() == str(sum(extension_classify(i) for i in range(30)))
    json.dumps(doc)


def extension_classify(x: int) -> int:
    return 3 if x % 15 == 0 else 2 if x % 5 == 0 else 1 if x % 3 == 0 else 0


def test_cli_door_adds_the_targets_own_options() -> None:
    from buildsys import cli
    args = cli.parser().parse_args(["build", "extension", "--profile", "baseline", "--package", "msgpack==1.2.4"])
    assert cli._target_args(args) == {"package": "msgpack==1.2.4"}  # declared in extension.toml's [cli_args]
    targets.check_target_args(targets.get("extension"), cli._target_args(args))
    args = cli.parser().parse_args(["build", "cpython", "--profile", "baseline", "--package", "x"])
    with pytest.raises(targets.InputError, match="--package does not apply to target 'cpython' .taken by: extension"):
        targets.check_target_args(targets.get("cpython"), cli._target_args(args))
    assert flags.VARIANTS
