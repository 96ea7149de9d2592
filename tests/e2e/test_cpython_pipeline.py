"""End to end (slow, `nox -s e2e`): full baseline and generic-pgo-lto CPython builds from the pinned source.

Builds land in HOSTPGO_HOME (default ./.hostpgo), so a later `nox -s pipeline` reuses them through
their stamps. Each build runs its verify stage (`-m test --pgo` must pass) before it installs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from buildsys.core import manifest
from buildsys.core.paths import REPO_ROOT

pytestmark = pytest.mark.slow
WORK = Path(os.environ.get("HOSTPGO_HOME", REPO_ROOT / ".hostpgo")).resolve()
JOBS = os.environ.get("HOSTPGO_JOBS", str(os.cpu_count() or 2))


def build(profile: str) -> dict:
    env = {**os.environ, "HOSTPGO_HOME": str(WORK)}
    done = subprocess.run([sys.executable, "-m", "buildsys", "build", "cpython", "--profile", profile,
                           "--jobs", JOBS], cwd=REPO_ROOT, env=env, timeout=4 * 3600)
    assert done.returncode == 0, f"build of {profile} failed; logs in {WORK / 'logs'}"
    prefix = WORK / "install" / f"cpython-3.11.2-{profile}"
    doc = manifest.read(prefix)
    print(f"\n{profile} stage timings (s): " + json.dumps({k: v["seconds"] for k, v in doc["stages"].items()}))
    return doc


def run_python(prefix: Path, code: str) -> str:
    return subprocess.run([str(prefix / "bin" / "python"), "-c", code], capture_output=True, text=True,
                          check=True, env={"PATH": "/usr/bin:/bin"}).stdout.strip()


def test_baseline_build() -> None:
    doc = build("baseline")
    prefix = Path(doc["prefix"])
    assert list(doc["stages"]) == ["source", "configure", "build", "verify", "install"]
    assert doc["source"]["sha256"] == "2411c74bda5bbcfcddaf4531f66d1adc73f247f529aee981b029513aefdbf849"
    assert (prefix / "lib" / "libpython3.11.so.1.0").exists()  # --enable-shared, as pyenv
    out = run_python(prefix, "import sys, sysconfig, ssl, sqlite3, zlib, ctypes; "
                             "print(sys.version_info[:3], sysconfig.get_config_var('Py_ENABLE_SHARED'))")
    assert out == "(3, 11, 2) 1"
    assert doc["profile_data"] is None and doc["training"] == []


def test_pgo_lto_build() -> None:
    doc = build("generic-pgo-lto")
    prefix = Path(doc["prefix"])
    assert list(doc["stages"]) == ["source", "configure-instrumented", "build-instrumented",
                                   "install-instrumented", "train", "merge", "configure", "build",
                                   "verify", "install"]
    assert doc["toolchain"]["family"] == "clang" and doc["toolchain"]["version"].startswith("22.")
    pd = doc["profile_data"]
    assert pd["sha256"] and Path(pd["path"]).is_file() and pd["raw_profiles"] >= 1
    assert [t["name"] for t in doc["training"]] == ["cpython-pgo"]
    cflags = [f["value"] for f in doc["flags"]["configure"] if f["channel"] == "CFLAGS_NODIST"]
    assert f"-fprofile-instr-use={pd['path']}" in cflags and "-flto=thin" in cflags
    assert not (prefix / "lib" / "libpython3.11.so.1.0").exists()  # static libpython
    out = run_python(prefix, "import sys, sysconfig; print(sys.version_info[:3], "
                             "sysconfig.get_config_var('Py_ENABLE_SHARED'), "
                             "'profile' in sysconfig.get_config_var('CFLAGS'))")
    # NODIST flags reach the interpreter's own build but not what extensions inherit.
    assert out == "(3, 11, 2) 0 False"
    # The profile was really used: the optimized build's compile of ceval.c carried it, and clang did
    # not report the profile as missing or out of date for the interpreter loop.
    log = (WORK / "logs" / "cpython-3.11.2-generic-pgo-lto" / "build.log").read_text(errors="replace")
    ceval = [ln for ln in log.splitlines() if "Python/ceval.c" in ln and " -c " in ln]
    if ceval:  # absent when the build stage was reused from a stamp and the log came from that run
        assert "-fprofile-instr-use=" in ceval[0] and ceval[0].index(" -O3 -flto=thin") > ceval[0].index("-DNDEBUG")
    assert "profile data may be corrupted" not in log


def test_workload_pgo_lto_build() -> None:
    doc = build("workload-pgo-lto")
    prefix = Path(doc["prefix"])
    assert list(doc["stages"]) == ["source", "runtime-deps", "configure-instrumented", "build-instrumented",
                                   "install-instrumented", "train", "merge", "configure", "build", "verify",
                                   "install"]
    (task,) = doc["training"]
    assert task["name"] == "runtime-workloads" and task["kind"] == "workloads" and task["steps"] == 160
    trained = doc["workload_runs"]["train"]
    assert {r["name"] for r in trained} == {"decode-b1", "decode-b8", "prefill", "serve-mixed", "prefix-hit"}
    assert all(r["steps"] == 160 and r["exit_code"] == 0 for r in trained)
    # Verified before install: every workload reproduced its pinned tokens on the optimized build.
    assert all(r["golden_match"] is True for r in doc["workload_runs"]["verify"])
    # The profile data is in the store with a sidecar naming what it was trained on.
    data = Path(doc["profile_data"]["path"])
    assert data.parent == WORK / "profiles" and data.is_file()
    side = json.loads(data.with_name(data.name + ".json").read_text())
    assert side["sha256"] == doc["profile_data"]["sha256"] and side["training"][0]["name"] == "runtime-workloads"
    out = run_python(prefix, "import sys, sysconfig; print(sys.version_info[:3], "
                             "sysconfig.get_config_var('Py_ENABLE_SHARED'))")
    assert out == "(3, 11, 2) 0"


def test_profile_data_reuse_plans_no_training() -> None:
    """A build with --profile-data skips instrumenting and training (planned here; building it is the
    same optimized build as above with another key)."""
    data = next((WORK / "profiles").glob("cpython-3.11.2-workload-pgo-lto-*.profdata"))
    done = subprocess.run([sys.executable, "-m", "buildsys", "build", "cpython", "--profile", "mixed-pgo-lto",
                           "--profile-data", str(data), "--dry-run"], cwd=REPO_ROOT, capture_output=True,
                          text=True, env={**os.environ, "HOSTPGO_HOME": str(WORK)})
    assert done.returncode == 0, done.stderr
    assert "profile-data: reuse profile data" in done.stdout and "train:" not in done.stdout
    assert f"-fprofile-instr-use={data}" in done.stdout


def test_default_optimized_build_links_its_allocator() -> None:
    """The pipeline's default optimized stack (workload PGO + LTO + tcmalloc): the manifest names the allocator
    and the installed interpreter has it mapped."""
    from buildsys import engine
    doc = build(engine.DEFAULT_OPTIMIZED_PROFILE)
    assert doc["profile"]["optimize"]["allocator"] == "tcmalloc" and doc["allocator"]["name"] == "tcmalloc"
    prefix = Path(doc["prefix"])
    maps = run_python(prefix, "print(open('/proc/self/maps').read())")
    assert "tcmalloc" in maps


def test_dry_run_refuses_what_the_build_would(tmp_path: Path) -> None:
    junk = tmp_path / "random.profdata"
    junk.write_bytes(os.urandom(4096))
    for extra in (["--source", str(tmp_path / "absent.tgz")], ["--profile-data", str(junk)]):
        done = subprocess.run([sys.executable, "-m", "buildsys", "build", "cpython", "--profile", "workload-pgo-lto",
                               "--dry-run", *extra], cwd=REPO_ROOT, capture_output=True, text=True,
                              env={**os.environ, "HOSTPGO_HOME": str(WORK)})
        assert done.returncode == 2 and extra[0] in done.stderr and extra[1] in done.stderr, done.stderr
