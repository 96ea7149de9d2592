"""End to end (slow): the project's own wheel, runtime._hostpath rebuilt by the extension target with the
workload-pgo-lto profile and PGO trained on the runtime workloads, then verified.

    python -m buildsys build extension --profile workload-pgo-lto --package hostpgo --interp <this python>

Builds land in HOSTPGO_HOME (default ./.hostpgo): a stamped, unchanged build is reused, and the assertions read
what it left: the manifest, the stage logs and the merged profile data. Needs clang 22 (the profile's compiler
here) and the runtime extra; a few minutes on two cores.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import re
import shlex
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

from buildsys.core import manifest
from buildsys.core.paths import REPO_ROOT

pytestmark = pytest.mark.slow
WORK = Path(os.environ.get("HOSTPGO_HOME", REPO_ROOT / ".hostpgo")).resolve()
VERSION = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["version"]
BUILD_ID = f"extension-hostpgo-{VERSION}-workload-pgo-lto"
WORKLOADS = ["decode-b8", "serve-mixed", "prefix-hit"]


@pytest.fixture(scope="module")
def doc() -> dict:
    env = {**os.environ, "HOSTPGO_HOME": str(WORK)}
    env.pop("HOSTPGO_RUNTIME_REFERENCE", None)
    done = subprocess.run([sys.executable, "-m", "buildsys", "build", "extension", "--profile", "workload-pgo-lto",
                           "--package", "hostpgo", "--interp", sys.executable], cwd=REPO_ROOT, env=env,
                          timeout=3 * 3600)
    assert done.returncode == 0, f"build failed; logs in {WORK / 'logs' / BUILD_ID}"
    return manifest.read(WORK / "wheels" / BUILD_ID)


def _compile_line(stage: str) -> list[str]:
    """The one compile line of _hostpath.c in a wheel stage's log (ninja -v prints it)."""
    log = (WORK / "logs" / BUILD_ID / f"{stage}.log").read_text()
    lines = [ln for ln in log.splitlines() if " -c " in ln and ln.rstrip().endswith("_hostpath.c")]
    assert len(lines) == 1, lines
    words = shlex.split(re.sub(r"^\s*\[\d+/\d+\]\s*", "", lines[0]))
    assert Path(words[0]).name == "clang-22", words[0]
    return words


def test_stages_manifest_and_wheel(doc: dict) -> None:
    assert list(doc["stages"]) == ["source", "runtime-deps", "build-env", "build-instrumented",
                                   "install-instrumented", "train", "merge", "build", "verify", "install"]
    assert doc["package"]["name"] == "hostpgo" and doc["package"]["backend"] == "scikit-build-core"
    assert doc["source"]["kind"] == "tree" and "runtime" in doc["source"]["include"]
    assert doc["toolchain"]["family"] == "clang" and doc["toolchain"]["version"].startswith("22.")
    wheel = Path(doc["wheel"]["wheel"])
    assert wheel.parent == WORK / "wheels" / BUILD_ID and wheel.name.startswith(f"hostpgo-{VERSION}-cp3")
    assert hashlib.sha256(wheel.read_bytes()).hexdigest() == doc["wheel"]["wheel_sha256"]
    names = zipfile.ZipFile(wheel).namelist()
    assert any(re.fullmatch(r"runtime/_hostpath\.cpython-\d+-.*\.so", n) for n in names), names
    pd = doc["profile_data"]
    assert pd["sha256"] and Path(pd["path"]).is_file() and pd["raw_profiles"] >= len(WORKLOADS)
    for stage in ("build-instrumented", "build"):
        assert doc["compile_proof"][stage]["ok"] and doc["compile_proof"][stage]["compile_lines"] >= 1
    assert "cmake.define.CMAKE_C_FLAGS_RELEASE" in {f["name"] for f in doc["flags"]["build"]}


def test_profile_flags_win_on_the_compile_line_of_hostpath_c(doc: dict) -> None:
    for stage, pgo in (("build-instrumented", "-fprofile-instr-generate="), ("build", "-fprofile-instr-use=")):
        words = _compile_line(stage)
        levels = [w for w in words if re.fullmatch(r"-O(\d|s|z|fast|g)?", w)]
        assert levels and levels[-1] == "-O3", (stage, levels)
        assert "-DNDEBUG" in words and any(w.startswith(pgo) for w in words), (stage, words)
        assert not any(w.startswith(("-fno-profile", "-fprofile-instr-generate" if stage == "build" else "-flto"))
                       for w in words), (stage, words)
    words = _compile_line("build")
    assert f"-fprofile-instr-use={doc['profile_data']['path']}" in words and "-flto=thin" in words


def test_the_profile_covers_the_extension(doc: dict) -> None:
    profdata = doc["toolchain"].get("tools", {}).get("profdata") or "llvm-profdata-22"
    out = subprocess.run([profdata, "show", "--topn=20", doc["profile_data"]["path"]], capture_output=True,
                         text=True, check=True).stdout
    assert int(re.search(r"Total functions: (\d+)", out).group(1)) > 50
    top = [ln.strip() for ln in out.splitlines() if ln.strip().startswith("_hostpath.c:")]
    assert len(top) == 20 and any("__pyx_pf_7runtime_9_hostpath" in ln for ln in top), out[-2000:]


def test_training_and_verify_ran_the_compiled_host_path(doc: dict) -> None:
    train, verify = doc["workload_runs"]["train"], doc["workload_runs"]["verify"]
    assert [r["name"] for r in train] == WORKLOADS and [r["name"] for r in verify] == WORKLOADS
    for rec in train + verify:
        assert rec["host_path"] == "cython" and rec["exit_code"] == 0, rec
        assert "site-packages/runtime/_hostpath" in rec["host_path_reason"], rec
    assert all(r["golden_match"] is True for r in verify), verify
    tests = doc["verify_tests"]
    assert tests["tests"] > 0 and tests["failures"] == tests["errors"] == tests["skipped"] == 0, tests


def test_the_editable_install_is_untouched(doc: dict) -> None:
    spec = importlib.util.find_spec("runtime._hostpath")
    assert spec is not None and not Path(spec.origin).resolve().is_relative_to(WORK), spec.origin
