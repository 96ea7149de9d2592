"""Unit: optimize.allocator — the profile key, link flags in the plan, the manifest, the verify check (the table
and discovery are hostenv.allocators', tested in test_hostenv_allocators.py)."""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
from pathlib import Path

import pytest

from buildsys import engine
from buildsys.core import manifest, stages
from buildsys.core.paths import WorkArea
from buildsys.errors import ProfileError
from buildsys.pipeline import sources, training
from buildsys.targets import cpython
from buildsys.toolchain import Host, profile
from hostenv import allocators as allocator

DEBIAN = Host("x86_64", "debian")


def inputs(tmp_path: Path, name: str, alloc: allocator.Allocator | None = None, **kw) -> cpython.Inputs:
    prof = profile.load(name, environ={}, overrides=kw.pop("set", ()))
    return cpython.Inputs(profile=prof, compiler=engine.hypothetical_compiler(prof.toolchain.family), host=DEBIAN,
                          work=WorkArea(tmp_path), pin=sources.pinned("cpython", "3.11.2"), patches=(),
                          tasks=training.resolve(prof.pgo.tasks) if prof.optimize.pgo == "on" else (),
                          jobs=2, allocator=alloc, **kw)


def test_profile_key_takes_its_values_from_the_allocator_table() -> None:
    assert profile.SCHEMA["optimize"]["allocator"].allowed == allocator.names()


def test_profile_key_rejects_unknown_allocator() -> None:
    with pytest.raises(ProfileError, match="optimize.allocator.*allowed values: 'glibc', 'jemalloc'"):
        profile.load("baseline", environ={}, overrides=["optimize.allocator=hoard"])


def test_allocator_is_linked_in_every_variant_and_checked_before_install(tmp_path: Path) -> None:
    lib = Path("/usr/lib/x86_64-linux-gnu/libjemalloc.so.2")
    alloc = allocator.Allocator("jemalloc", lib, "libjemalloc2", "5.3.0-1")
    plain = {s.name: s for s in cpython.plan(inputs(tmp_path, "workload-pgo-lto")).stages}
    linked = {s.name: s for s in cpython.plan(inputs(tmp_path, "workload-pgo-lto", alloc,
                                                       set=["optimize.allocator=jemalloc"])).stages}
    for stage in ("configure-instrumented", "configure"):
        ld = linked[stage].actions[-1].env["LDFLAGS_NODIST"]
        assert f"-Wl,--push-state,--no-as-needed {lib} -Wl,--pop-state" in ld
        assert str(lib) not in plain[stage].actions[-1].env["LDFLAGS_NODIST"]
        assert linked[stage].key != plain[stage].key
    checks = [a for a in linked["verify"].actions if isinstance(a, stages.Cmd) and a.argv[1:2] == ("-c",)]
    assert len(checks) == 1 and "libjemalloc.so.2" in checks[0].argv[2] and "/proc/self/maps" in checks[0].argv[2]
    assert not [a for a in plain["verify"].actions if isinstance(a, stages.Cmd) and a.argv[1:2] == ("-c",)]


def test_manifest_records_the_allocator(tmp_path: Path) -> None:
    alloc = allocator.Allocator("mimalloc", Path("/usr/lib/x86_64-linux-gnu/libmimalloc.so.2"), "libmimalloc2.0",
                                "2.0.9+ds-2")
    inp = inputs(tmp_path, "baseline", alloc, set=["optimize.allocator=mimalloc"])
    plan = cpython.plan(inp)
    doc = manifest.build(stages.Execution(plan, {}), inp, tmp_path / "install" / "x", [])
    assert doc["allocator"] == {"name": "mimalloc", "library": "/usr/lib/x86_64-linux-gnu/libmimalloc.so.2",
                                "package": "libmimalloc2.0", "package_version": "2.0.9+ds-2"}
    doc = manifest.build(stages.Execution(plan, {}), dataclasses.replace(inp, allocator=None),
                         tmp_path / "install" / "x", [])
    assert doc["allocator"]["name"] == "glibc"


@pytest.mark.parametrize("cc", ["gcc", "clang-22"])
def test_link_flags_put_the_allocator_ahead_of_libc_and_it_serves_malloc(tmp_path: Path, cc: str) -> None:
    if shutil.which(cc) is None:
        pytest.skip(f"{cc} not installed")
    try:
        alloc = allocator.find("jemalloc", DEBIAN)
    except allocator.AllocatorNotFound:
        pytest.skip("libjemalloc2 not installed (.ci/run installs it)")
    src = tmp_path / "m.c"
    src.write_text('#include <stdio.h>\n#include <stdlib.h>\n#include <string.h>\n'
                   'int main(void){char *p = malloc(64); strcpy(p, "ok"); FILE *f = fopen("/proc/self/maps", "r");'
                   'char line[512]; int seen = 0; while (fgets(line, sizeof line, f)) seen |= strstr(line, '
                   '"libjemalloc") != 0; printf("%s %d\\n", p, seen); free(p); return 0;}\n')
    exe = tmp_path / "m"
    subprocess.run([cc, "-O2", str(src), "-o", str(exe), *allocator.link_flags(alloc), "-Wl,--as-needed"],
                   check=True)
    needed = [ln.split("[")[1].rstrip("]") for ln in subprocess.run(["readelf", "-dW", str(exe)], check=True,
              capture_output=True, text=True).stdout.splitlines() if "(NEEDED)" in ln]
    assert needed.index("libjemalloc.so.2") < needed.index("libc.so.6")
    assert subprocess.run([str(exe)], capture_output=True, text=True, check=True).stdout == "ok 1\n"
