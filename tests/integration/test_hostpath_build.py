"""Integration: the project's wheel builds runtime._hostpath with the flags a PGO driver passes.

What the extension target relies on (CMakeLists.txt): an -O level in CFLAGS replaces the Release default's -O3,
CMAKE_C_FLAGS_RELEASE from a config setting replaces the Release flags, a fixed build directory is honoured,
-ffast-math is refused, and the wheel carries the compiled module. Each build takes 10-30 s.
"""

from __future__ import annotations

import re
import shutil
import sys
import zipfile
from pathlib import Path

import pytest

from hostpgo.runner import capture

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.integration


def _wheel(tmp_path: Path, *settings: str, env: dict[str, str] | None = None, check: bool = True):
    out = tmp_path / "wheels"
    argv = [sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", str(out), *(f"-C{s}" for s in settings),
            str(ROOT)]
    return capture(argv, env=env, timeout=900, check=check), out


def _compile_flags(build_dir: Path) -> str:
    text = (build_dir / "build.ninja").read_text()
    return re.search(r"^\s*FLAGS = (.*)$", text, re.M).group(1)


@pytest.fixture(autouse=True)
def _needs_a_compiler():
    if shutil.which("gcc") is None and shutil.which("cc") is None:
        pytest.skip("no C compiler")


def test_cflags_o_level_wins_and_the_wheel_holds_the_module(tmp_path: Path):
    build = tmp_path / "build"
    _, out = _wheel(tmp_path, f"build-dir={build}", env={"CFLAGS": "-O1"})
    flags = _compile_flags(build)
    assert "-O1" in flags.split() and "-O3" not in flags.split() and "-DNDEBUG" in flags.split(), flags
    (whl,) = out.glob("hostpgo-*.whl")
    names = zipfile.ZipFile(whl).namelist()
    assert any(re.fullmatch(r"runtime/_hostpath\.cpython-\d+-.*\.so", n) for n in names), names
    assert not any(n.endswith((".pyx", ".c", ".md")) for n in names)


def test_release_flags_from_a_config_setting_and_fast_math_refused(tmp_path: Path):
    build = tmp_path / "build"
    _wheel(tmp_path, f"build-dir={build}", "cmake.define.CMAKE_C_FLAGS_RELEASE=-O2 -DNDEBUG")
    assert _compile_flags(build).split()[:2] == ["-O2", "-DNDEBUG"]
    p, _ = _wheel(tmp_path / "fm", env={"CFLAGS": "-O2 -ffast-math"}, check=False)
    assert p.returncode != 0 and "refusing to build with -ffast-math" in p.stdout + p.stderr


def test_cython_output_does_not_name_the_build_location(tmp_path: Path):
    build = tmp_path / "somewhere-else"
    _wheel(tmp_path, f"build-dir={build}")
    (c_file,) = build.glob("**/_hostpath.c")
    text = c_file.read_text()
    assert "runtime/_hostpath.pyx" in text and str(ROOT) not in text and str(build) not in text
    so = next(build.glob("**/_hostpath*.so")).read_bytes()
    assert str(tmp_path).encode() not in so and str(ROOT).encode() not in so
