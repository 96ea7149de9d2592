"""Integration: a stripped shared library in a tiny installed package goes through bolt-wheel's stages.

The test builds `libhot.so` with `gcc -O2 -s` (no .symtab, no .rela.text: what a shipped wheel has),
installs it as the package `hotpkg` (a site directory with a .dist-info and RECORD) loaded by a ctypes
driver, and runs the real planner (buildsys.pipeline.wheelbolt.prepare + plan) through the stage executor:
callgrind around the measured call only -> pre-aggregated profile -> perf2bolt -> llvm-bolt (stock,
non-relocation options) -> a new wheel -> pip install --target -> the package imports the rewritten
library and computes the same value. Takes well under a minute.
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import hashlib
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from buildsys.core import stages
from buildsys.pipeline import bolt, wheelbolt
from hostpgo.runner import Runner, which

pytestmark = pytest.mark.integration

HOT_C = r"""
#include <stdint.h>
static uint64_t mix(uint64_t x) { x ^= x >> 13; x *= 0x9E3779B97F4A7C15ull; return x ^ (x >> 29); }
__attribute__((noinline)) static uint64_t rare(uint64_t x) { for (int i = 0; i < 50; i++) x = mix(x + i); return x; }
__attribute__((noinline)) static uint64_t step(uint64_t x, int i) {
  if ((i & 1023) == 7) return rare(x);
  if (x & 1) return mix(x) + 3;
  return (x >> 1) ^ (uint64_t)i;
}
uint64_t hot(int n, uint64_t seed) { uint64_t x = seed; for (int i = 0; i < n; i++) x = step(x, i); return x; }
"""
INIT_PY = '''"""hotpkg: a ctypes driver of libhot.so."""
import ctypes, os
_lib = ctypes.CDLL(os.path.join(os.path.dirname(__file__), "libhot.so"))
_lib.hot.restype = ctypes.c_uint64
_lib.hot.argtypes = (ctypes.c_int, ctypes.c_uint64)

def compute(n, seed=12345):
    return _lib.hot(n, seed)

def setup(n):
    """The measured call for bolt-wheel's driver: set-up done here, the returned callable is measured."""
    n = int(n)
    compute(10)
    return lambda: compute(n)
'''


def _record_line(site: Path, rel: str) -> str:
    data = (site / rel).read_bytes()
    b64 = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{rel},sha256={b64},{len(data)}"


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    for tool in ("gcc", "valgrind", "callgrind_control"):
        assert which(tool), f"{tool} not found (apt-get install gcc valgrind)"
    assert wheelbolt.find_tool("llvm-bolt") and wheelbolt.find_tool("perf2bolt"), "apt-get install -y bolt-22"
    root = tmp_path_factory.mktemp("wheelbolt")
    site = root / "site"
    pkg = site / "hotpkg"
    pkg.mkdir(parents=True)
    (root / "hot.c").write_text(HOT_C)
    Runner(root / "build.log").run(["gcc", "-O2", "-fPIC", "-shared", "-s", "-o", str(pkg / "libhot.so"),
                                    str(root / "hot.c")])
    (pkg / "__init__.py").write_text(INIT_PY)
    di = site / "hotpkg-1.0.dist-info"
    di.mkdir()
    (di / "METADATA").write_text("Metadata-Version: 2.1\nName: hotpkg\nVersion: 1.0\n\n")
    (di / "WHEEL").write_text("Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: false\n"
                              "Tag: cp311-cp311-linux_x86_64\n")
    (di / "INSTALLER").write_text("pip\n")
    rows = [_record_line(site, r) for r in ("hotpkg/__init__.py", "hotpkg/libhot.so", "hotpkg-1.0.dist-info/METADATA",
                                            "hotpkg-1.0.dist-info/WHEEL", "hotpkg-1.0.dist-info/INSTALLER")]
    (di / "RECORD").write_text("\n".join([*rows, "hotpkg-1.0.dist-info/RECORD,,"]) + "\n")
    return site


def _compute(site: Path, n: int) -> int:
    done = subprocess.run([sys.executable, "-c", f"import hotpkg; print(hotpkg.compute({n}))"],
                          env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"}, capture_output=True, text=True,
                          check=True, timeout=60)
    return int(done.stdout)


def test_stripped_library_goes_through_collect_convert_apply_pack_verify(site: Path, tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    lib = site / "hotpkg" / "libhot.so"
    facts = bolt.read_elf(lib)
    assert not facts.symbols and not facts.code_relocations  # as shipped: stripped, no .rela.text
    expected = _compute(site, 200_000)
    monkeypatch.setenv("PYTHONPATH", str(site))
    monkeypatch.setenv("HOSTPGO_HOME", str(tmp_path / "home"))
    ap = argparse.ArgumentParser()
    wheelbolt.add_arguments(ap)
    args = ap.parse_args(["--package", "hotpkg", "--profile", "baseline", "--interp", sys.executable,
                                          "--libraries", "hotpkg/libhot.so", "--import", "hotpkg",
                                          "--call", "hotpkg:setup,200000", "--set", "bolt.stock.collector=callgrind"])
    work = wheelbolt.WorkArea.from_env()
    inp = wheelbolt.prepare(args, Runner(None), work)
    assert inp.collector == "callgrind"
    assert [x.stripped for x in inp.libraries] == [True]
    check = wheelbolt.Check("same value", ("-c", f"import hotpkg; assert hotpkg.compute(200000) == {expected}"))
    inp = dataclasses.replace(inp, checks=(*inp.checks, check))
    bp = wheelbolt.plan(inp)
    assert [s.name for s in bp.stages] == ["wheelbolt-collect", "wheelbolt-convert", "wheelbolt-apply",
                                           "wheelbolt-pack", "wheelbolt-verify"]
    ex = stages.execute(bp, inp.stamps, inp.logs, live=False)

    conv = ex.results["wheelbolt-convert"].info["libraries"]["hotpkg/libhot.so"]
    assert conv["matched_by"] == "path" and conv["bias"] == 0 and conv["dropped_outside_text"] == 0
    # Only the measured call was instrumented: the loop body ran 200000 times, set-up's 10 are not counted.
    pre = (inp.work_dir / "fdata" / "hotpkg__libhot.so.preagg").read_text().splitlines()
    assert pre[0] == "E instructions"
    assert max(int(line.split()[2]) for line in pre[1:]) == 200_000

    applied = ex.results["wheelbolt-apply"].info["libraries"]["hotpkg/libhot.so"]
    assert applied["rewritten"] and applied["functions_overwritten"] >= 1
    assert applied["input_sha256"] != applied["output_sha256"]

    pack = ex.results["wheelbolt-pack"].info
    wheel = Path(pack["wheel"])
    label = pack["version"].split("+bolt.")[1]
    assert pack["version"] == f"1.0+bolt.{label}" and len(label) == 8
    assert wheel.name == f"hotpkg-1.0+bolt.{label}-cp311-cp311-linux_x86_64.whl"
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        assert f"hotpkg-1.0+bolt.{label}.dist-info/RECORD" in names
        assert not any(n.endswith("INSTALLER") for n in names)
        assert hashlib.sha256(z.read("hotpkg/libhot.so")).hexdigest() == applied["output_sha256"]
        assert f"Version: 1.0+bolt.{label}" in z.read(f"hotpkg-1.0+bolt.{label}.dist-info/METADATA").decode()
    assert wheelbolt.check_wheel_record(wheel) == len(names)

    ver = ex.results["wheelbolt-verify"].info
    assert ver["checks_passed"] == ["import hotpkg", "same value"]
    assert list(ver["loaded"]) == ["hotpkg/libhot.so"]
    # The installed package is untouched.
    assert hashlib.sha256(lib.read_bytes()).hexdigest() == inp.libraries[0].sha256

    doc = json.loads((wheel.parent / wheelbolt.MANIFEST_NAME).read_text())
    assert doc["schema"] == "hostpgo-wheelbolt/1"
    assert doc["libraries"][0]["input_sha256"] == inp.libraries[0].sha256
    assert doc["libraries"][0]["output_sha256"] == applied["output_sha256"]
    assert doc["output"]["sha256"] == hashlib.sha256(wheel.read_bytes()).hexdigest()
    assert doc["profile"]["digest"] == inp.profile_digest

    again = stages.execute(wheelbolt.plan(inp), inp.stamps, inp.logs, live=False)
    assert all(r.skipped for r in again.results.values())  # stamped: nothing runs twice
