"""Integration: the fixture in tests/fixtures/pgo_demo really goes instrument -> train -> merge -> use.

The flags come from buildsys.flags (the same table the CPython recipe uses), the commands run
through buildsys.runner, for both GCC and clang. Takes seconds, not minutes.
"""

from __future__ import annotations

import re
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from buildsys.toolchain import flags, profile
from buildsys import toolchain
from hostpgo.runner import Runner

FIXTURE = Path(__file__).resolve().parent.parent / "fixtures" / "pgo_demo"
pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def detected() -> toolchain.Toolchains:
    return toolchain.detect()


def _profile(tmp_path: Path, family: str) -> profile.Profile:
    p = tmp_path / f"fixture-{family}.toml"
    p.write_text(f'[toolchain]\nfamily = "{family}"\n[optimize]\nopt = "O2"\npgo = "on"\n')
    return profile.load(str(p))


def _build(comp: toolchain.Compiler, rf: flags.ResolvedFlags, out: Path, runner: Runner,
           extra_cflags: tuple[str, ...] = ()) -> str:
    """Compile libdemo.so and demo (separate compile and link steps, as real builds do); return stderr text."""
    out.mkdir(parents=True, exist_ok=True)
    cflags = [f.value for f in rf.cflags] + list(extra_cflags)
    ldflags = [f.value for f in rf.ldflags]
    lines: list[str] = []
    for src, obj, pic in (("libdemo.c", "libdemo.o", ["-fPIC"]), ("demo.c", "demo.o", [])):
        runner.run([comp.cc, *cflags, *pic, "-c", str(FIXTURE / src), "-o", obj], cwd=out, collect=lines)
    runner.run([comp.cc, *ldflags, "-shared", "libdemo.o", "-o", "libdemo.so"], cwd=out, collect=lines)
    runner.run([comp.cc, *ldflags, "demo.o", "-L.", "-ldemo", "-Wl,-rpath,$ORIGIN", "-o", "demo"],
               cwd=out, collect=lines)
    return "\n".join(lines)


def _disasm(obj: Path) -> str:
    objdump = shutil.which("objdump") or shutil.which("llvm-objdump-22")
    assert objdump, "objdump is needed to compare code (apt-get install binutils)"
    text = subprocess.run([objdump, "-d", "--no-show-raw-insn", str(obj)], capture_output=True, text=True,
                          check=True).stdout
    return "\n".join(ln for ln in text.splitlines() if not ln.strip().endswith("file format elf64-x86-64")
                     and "file format" not in ln)


def _run_demo(d: Path, procs: int, env: dict[str, str] | None = None) -> str:
    done = subprocess.run([str(d / "demo"), str(procs), "100000"], capture_output=True, text=True,
                          env=env, check=True, timeout=60)
    return "\n".join(sorted(done.stdout.splitlines()))  # children finish in any order


def _max_counter(gcda: Path) -> int:
    """Largest plausible 64-bit counter in a .gcda (the hot loop's trip count), read without gcov."""
    data = gcda.read_bytes()
    best = 0
    for off in range(0, len(data) - 8, 4):
        lo, hi = struct.unpack_from("<II", data, off)
        if hi == 0 and 10_000 <= lo <= 100_000_000:
            best = max(best, lo)
    return best


def _lines_matching(stderr: str, pattern: str) -> list[str]:
    return [ln for ln in stderr.splitlines() if re.search(pattern, ln, re.I)]


def test_clang_instrument_train_merge_use(tmp_path: Path, detected: toolchain.Toolchains) -> None:
    comp = detected.find("clang")
    assert comp is not None, f"clang not found; install: {toolchain.install_hint(detected.host)}"
    assert "profdata" in comp.tools, "llvm-profdata not found next to clang"
    prof = _profile(tmp_path, "clang")
    runner = Runner(tmp_path / "build.log")
    raw = tmp_path / "raw"
    instr, opt, plain = tmp_path / "instr", tmp_path / "opt", tmp_path / "plain"
    pattern = str(raw / "demo-%m-%p.profraw")

    _build(comp, flags.resolve(prof, comp, detected.host, "instrumented", build_dir=str(instr),
                               raw_pattern=pattern, raw_dir=str(raw)), instr, runner)
    # train: two separate runs (two pids), each forking two children. %m gives each binary (demo,
    # libdemo.so) its own file; %p separates the exec'd runs; forked children merge online into their
    # parent's file (without %m they would overwrite it). So: 2 runs x 2 binaries = 4 raw profiles.
    out = _run_demo(instr, 3)
    assert out.count("child") == 2
    _run_demo(instr, 3)
    raws = sorted(raw.glob("*.profraw"))
    assert len(raws) == 4, f"expected one raw profile per run and binary, got {[r.name for r in raws]}"

    merged = tmp_path / "merged.profdata"
    runner.run([comp.tools["profdata"], "merge", *map(str, raws), f"--output={merged}"])
    shown: list[str] = []
    runner.run([comp.tools["profdata"], "show", "--counts", "--function=demo_score", str(merged)], collect=shown)
    text = "\n".join(shown)
    calls = int(re.search(r"Function count:\s*(\d+)", text).group(1))
    # demo_score runs ~32,000 times per process (x % 97 == 0, or odd x not divisible by 3 or 13);
    # six processes (2 runs x 3) give ~190,000: only reachable if every process's counts were merged.
    assert calls > 150000, text
    total = re.search(r"Total functions:\s*(\d+)", text)
    assert total and int(total.group(1)) >= 1

    rf_opt = flags.resolve(prof, comp, detected.host, "optimized", build_dir=str(opt), profdata=str(merged))
    assert any(f.value == f"-fprofile-instr-use={merged}" for f in rf_opt.cflags)
    stderr = _build(comp, rf_opt, opt, runner, extra_cflags=("-Wprofile-instr-missing", "-Wprofile-instr-unprofiled"))
    assert not _lines_matching(stderr, r"profile"), f"profile warnings while using the profile:\n{stderr}"
    _build(comp, flags.resolve(prof, comp, detected.host, "plain", build_dir=str(plain)), plain, runner)

    assert _disasm(opt / "demo.o") != _disasm(plain / "demo.o"), "profile did not change the generated code"
    assert _run_demo(opt, 3) == _run_demo(plain, 3) == out


def test_gcc_instrument_train_merge_use(tmp_path: Path, detected: toolchain.Toolchains) -> None:
    comp = detected.find("gcc")
    assert comp is not None, "gcc not found; apt-get install gcc"
    prof = _profile(tmp_path, "gcc")
    runner = Runner(tmp_path / "build.log")
    raw = tmp_path / "gcda"
    instr, opt, plain, noprefix = (tmp_path / n for n in ("instr", "opt", "plain", "noprefix"))

    rf_instr = flags.resolve(prof, comp, detected.host, "instrumented", build_dir=str(instr), raw_dir=str(raw))
    values = [f.value for f in rf_instr.cflags]
    assert "-fprofile-update=atomic" in values and f"-fprofile-generate={raw}" in values
    _build(comp, rf_instr, instr, runner)
    _run_demo(instr, 1)
    one_process = _max_counter(raw / "demo.gcda")
    shutil.rmtree(raw)
    out = _run_demo(instr, 3)
    # libgcov merges the three processes' counters into one .gcda per object, named relative to the
    # build tree (-fprofile-prefix-path), so a build in another directory finds them.
    gcdas = sorted(p.name for p in raw.rglob("*.gcda"))
    assert gcdas == ["demo.gcda", "libdemo.gcda"], gcdas
    three_processes = _max_counter(raw / "demo.gcda")
    assert one_process >= 10_000 and three_processes >= 2.5 * one_process, (one_process, three_processes)

    rf_opt = flags.resolve(prof, comp, detected.host, "optimized", build_dir=str(opt), profdata=str(raw))
    assert "-fprofile-partial-training" in [f.value for f in rf_opt.cflags]
    stderr = _build(comp, rf_opt, opt, runner, extra_cflags=("-Wmissing-profile",))
    assert not _lines_matching(stderr, r"profile"), f"profile warnings while using the profile:\n{stderr}"

    # The same use-build without the prefix mapping cannot find the profile: GCC says so. This is the
    # warning the check above would have caught.
    no_prefix = [f for f in rf_opt.cflags if not f.value.startswith("-fprofile-prefix-path")]
    stderr_np = _build(comp, flags.ResolvedFlags(tuple(no_prefix), rf_opt.ldflags, rf_opt.tools), noprefix,
                       runner, extra_cflags=("-Wmissing-profile",))
    assert _lines_matching(stderr_np, r"profile"), "expected a missing-profile warning without -fprofile-prefix-path"

    _build(comp, flags.resolve(prof, comp, detected.host, "plain", build_dir=str(plain)), plain, runner)
    assert _disasm(opt / "demo.o") != _disasm(plain / "demo.o"), "profile did not change the generated code"
    assert _run_demo(opt, 3) == _run_demo(plain, 3) == out
