"""Unit: toolchain detection against fake compilers on a private PATH, and the manifest validator."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from buildsys import toolchain
from buildsys.core import manifest
from buildsys.errors import HostpgoError


def fake(bin_dir: Path, name: str, version_text: str) -> None:
    p = bin_dir / name
    p.write_text(f"#!/bin/sh\necho '{version_text}'\n")
    p.chmod(0o755)


def test_detect_orders_newest_clang_first_and_finds_companions(tmp_path: Path) -> None:
    b = tmp_path / "bin"
    b.mkdir()
    fake(b, "clang-18", "Ubuntu clang version 18.1.3")
    fake(b, "clang-22", "Debian clang version 22.1.8 (1~deb12u1)")
    fake(b, "clang++-22", "Debian clang version 22.1.8")
    fake(b, "llvm-profdata-22", "")
    fake(b, "ld.lld-22", "")
    fake(b, "gcc-12", "gcc-12 (Debian 12.2.0-14) 12.2.0")
    fake(b, "gcc-ar-12", "")
    tcs = toolchain.detect({"PATH": str(b)})
    assert [(c.family, c.version) for c in tcs.compilers] == [("clang", "22.1.8"), ("clang", "18.1.3"),
                                                              ("gcc", "12.2.0")]
    clang = tcs.find("clang")
    assert clang.cxx == str(b / "clang++-22")
    assert clang.tools == {"profdata": str(b / "llvm-profdata-22"), "lld": str(b / "ld.lld-22")}
    assert tcs.find("gcc").tools == {"ar": str(b / "gcc-ar-12")}


def test_detect_bisheng_from_version_text_and_cc_first(tmp_path: Path) -> None:
    b = tmp_path / "opt" / "bin"
    b.mkdir(parents=True)
    fake(b, "clang", "BiSheng Enterprise 4.1.0.B001 clang version 17.0.6 (abc)\nTarget: aarch64-unknown-linux-gnu")
    fake(b, "llvm-profdata", "")
    tcs = toolchain.detect({"PATH": str(b), "CC": str(b / "clang")})
    comp = tcs.compilers[0]
    assert (comp.family, comp.version, comp.major) == ("bisheng", "17.0.6", 17)
    assert "BiSheng" in comp.version_text and comp.tools["profdata"] == str(b / "llvm-profdata")


def test_install_hint_is_the_exact_apt_line() -> None:
    host = toolchain.Host("x86_64", "debian")
    cmd = toolchain.install_command(host)
    assert cmd[:7] == ["apt-get", "install", "-y", "clang-22", "lld-22", "llvm-22", "bolt-22"]
    assert cmd[-3:] == ["mmdebstrap", "umoci", "skopeo"]  # the image stages
    assert "libssl-dev" in cmd


def test_manifest_validation(tmp_path: Path) -> None:
    doc = {"schema": manifest.SCHEMA, "build_id": "b", "target": "cpython", "version": "3.11.2", "prefix": "/p",
           "profile": {}, "toolchain": {}, "source": {}, "patches": [], "flags": {}, "training": [],
           "profile_data": None, "stages": {"build": {"seconds": 1.0, "skipped": False, "key": "k"}},
           "written": "now"}
    path = manifest.write(tmp_path, doc)
    assert manifest.read(tmp_path) == doc and path.name == "hostpgo-manifest.json"
    with pytest.raises(HostpgoError, match="missing 'stages'"):
        manifest.write(tmp_path, {k: v for k, v in doc.items() if k != "stages"})
    with pytest.raises(HostpgoError, match="stage 'build' lacks"):
        manifest.write(tmp_path, {**doc, "stages": {"build": {"seconds": 1}}})
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]


def test_pipeline_toolchain_check_installs_as_root_or_names_the_command(monkeypatch) -> None:
    from rich.console import Console

    from buildsys import engine
    from buildsys.errors import ToolchainError

    host = toolchain.Host("x86_64", "debian")
    gcc = toolchain.Compiler("gcc", "/usr/bin/gcc", "/usr/bin/g++", "12.2.0", "gcc 12", {"ar": "/usr/bin/gcc-ar"})
    clang = toolchain.Compiler("clang", "/usr/bin/clang-22", None, "22.1.8", "clang 22",
                               {r: f"/usr/bin/{n}-22" for r, n in toolchain.LLVM_TOOLS.items()})
    state = {"installed": False, "commands": []}
    monkeypatch.setattr(toolchain, "missing_packages", lambda h, purpose="pipeline": [])
    monkeypatch.setattr(toolchain, "detect", lambda environ=None: toolchain.Toolchains(
        host, (gcc, clang) if state["installed"] else (gcc,)))

    def fake_install(h, runner, purpose="pipeline"):
        state["installed"] = True
        state["commands"].append(toolchain.install_command(h, purpose))

    monkeypatch.setattr(toolchain, "install", fake_install)
    console = Console(file=open(os.devnull, "w"))
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(ToolchainError, match="apt-get install -y clang-22 lld-22 llvm-22 bolt-22"):
        engine.ensure_toolchain(["baseline", "generic-pgo-lto"], console)
    assert state["commands"] == []
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    tcs = engine.ensure_toolchain(["baseline", "generic-pgo-lto"], console)
    assert tcs.find("clang") is clang and state["commands"][0][:4] == ["apt-get", "install", "-y", "clang-22"]


def test_the_tests_purpose_installs_what_the_suite_runs_and_the_allocators_from_hostenvs_table():
    from hostenv import allocators

    debian = toolchain.Host("x86_64", "debian")
    tests = toolchain.wanted_packages(debian, "tests")
    assert {"clang-22", "lld-22", "llvm-22", "bolt-22", "valgrind", "linux-perf", "umoci"} <= set(tests)
    assert {p for spec in allocators.table().values() if (p := spec.packages.get("debian"))} <= set(tests)
    assert {"libjemalloc2", "libtcmalloc-minimal4"} <= set(tests)
    pipeline = toolchain.wanted_packages(debian, "pipeline")
    assert "libssl-dev" in pipeline and "mmdebstrap" in pipeline and "valgrind" not in pipeline
    assert toolchain.install_command(debian, "tests") == ["apt-get", "install", "-y", *tests]
    with pytest.raises(toolchain.ToolchainError, match="--for 'nightly'"):
        toolchain.wanted_packages(debian, "nightly")


def test_the_pipeline_also_installs_what_its_measurement_runs():
    debian = toolchain.Host("x86_64", "debian")
    assert toolchain.wanted_packages(debian, "measure") == ("valgrind", "linux-perf")
    assert toolchain.install_command(debian, "measure") == ["apt-get", "install", "-y", "valgrind", "linux-perf"]
