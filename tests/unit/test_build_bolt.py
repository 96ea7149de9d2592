"""Unit: the BOLT planner, skip rules, the collection choice, ELF facts, bolt-check, PT_GNU_STACK and the fallback."""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from buildsys import cli, engine
from buildsys.core import stages
from buildsys.core.paths import WorkArea
from buildsys.errors import HostpgoError, ProfileError
from buildsys.pipeline import bolt, sources, training
from buildsys.targets import cpython
from buildsys.toolchain import Compiler, Host, profile

NO_LBR = bolt.Sampling(False, "probe: no branch stacks")
LBR = bolt.Sampling(True, "probe: branch stacks work")
CC = shutil.which("clang-22") or shutil.which("clang") or shutil.which("gcc")


def inputs(tmp_path: Path, name: str, **kw) -> cpython.Inputs:
    prof = profile.load(name, environ={}, overrides=kw.pop("set", ()))
    clang22 = dataclasses.replace(engine.hypothetical_compiler(prof.toolchain.family), version="22.1.8")
    return cpython.Inputs(profile=prof, compiler=kw.pop("compiler", clang22),
                          host=kw.pop("host", Host("x86_64", "debian")), work=WorkArea(tmp_path),
                          pin=sources.pinned("cpython", "3.11.2"), patches=(),
                          tasks=training.resolve(prof.pgo.tasks) if prof.optimize.pgo == "on" else (),
                          jobs=2, bolt_sampling=kw.pop("bolt_sampling", NO_LBR), **kw)


def by_name(plan: stages.BuildPlan) -> dict[str, stages.Stage]:
    return {s.name: s for s in plan.stages}


# ---------------------------------------------------------------------------------------------
# bolt = false: nothing changes.

# The bolt = false profiles and their training tasks as they were when BOLT was added, pinned here so
# that only the planner can change the result (the files in profiles/ are data others edit).
PINNED_PROFILES = {
    "baseline": '[toolchain]\nfamily = "gcc"\n[optimize]\nopt = "O3"\nlto = "off"\npgo = "off"\narch = "none"\n'
                'shared = true\n',
    "lto": 'extends = "baseline"\n[toolchain]\nfamily = "clang"\nmin_version = 22\n[optimize]\nlto = "thin"\n'
           'linker = "lld"\nshared = false\n[flags]\ncflags = ["-gdwarf-4"]\n',
    "generic-pgo-lto": 'extends = "lto"\n[optimize]\npgo = "on"\n[pgo]\ntasks = ["cpython-pgo"]\n',
    "workload-pgo-lto": 'extends = "generic-pgo-lto"\n[pgo]\ntasks = ["runtime-workloads"]\n',
    "gcc-pgo-lto": 'extends = "baseline"\n[toolchain]\nfamily = "gcc"\n[optimize]\nlto = "full"\npgo = "on"\n'
                   'shared = false\n[pgo]\ntasks = ["cpython-pgo"]\n',
}
PINNED_TASKS = {
    "cpython-pgo": 'version = 1\nkind = "interpreter"\nargv = ["-m", "test", "--pgo", "--timeout=1200"]\n'
                   'timeout = 5400\nok_codes = [0, 1, 2, 3, 4, 5]\n',
    "runtime-workloads": 'version = 1\nkind = "workloads"\nworkloads = ["decode-b1", "decode-b8", "prefill", '
                         '"serve-mixed", "prefix-hit"]\nsteps = 160\ncheck_golden = false\ntimeout = 3600\n',
}

# Their stage names and keys (first 16 hex digits), computed with the planner from before BOLT existed
# (commit 2f43ee3; work area /hostpgo-work, no patches, the runtime's digests pinned as in the test).
# A pipeline run reuses these builds' stamps: a change here would rebuild them.
UNCHANGED = {
    "baseline": [("source", "5c8ff56244c4fad2"), ("runtime-deps", "3c0e1c0e54b5655f"),
                 ("configure", "6794aed6ca6a9aaa"), ("build", "2c359bb52e9b74d9"),
                 ("verify", "bcbf23a68e9d40d7"), ("install", "e1812c996fbd315a")],
    "lto": [("source", "5c8ff56244c4fad2"), ("runtime-deps", "3c0e1c0e54b5655f"),
            ("configure", "a6d8de3dc62bd091"), ("build", "7bb8e62eeebfabb0"),
            ("verify", "d613393693d0d282"), ("install", "8a30b387152ea00a")],
    "generic-pgo-lto": [("source", "5c8ff56244c4fad2"), ("runtime-deps", "3c0e1c0e54b5655f"),
                        ("configure-instrumented", "96da9feba55b1ba5"), ("build-instrumented", "2e58d10e5ccedb4e"),
                        ("install-instrumented", "18aeb9155378106a"), ("train", "411582daa0e1c567"),
                        ("merge", "e7214cbe7f3635e1"), ("configure", "b938f089032b1ef8"),
                        ("build", "c905181065cd7d5e"), ("verify", "e92836783d3d83ff"),
                        ("install", "5960be7815fccd83")],
    "workload-pgo-lto": [("source", "5c8ff56244c4fad2"), ("runtime-deps", "3c0e1c0e54b5655f"),
                         ("configure-instrumented", "b190d7b9250ba3a6"), ("build-instrumented", "383bc5dc1191a3d8"),
                         ("install-instrumented", "808e911d5883f132"), ("train", "f8c4c38c56787de1"),
                         ("merge", "45890528423a4946"), ("configure", "3d7f18e135e814bb"),
                         ("build", "383f901610a40a3f"), ("verify", "8d5f85045afef651"),
                         ("install", "27046bb085c12ad3")],
    "gcc-pgo-lto": [("source", "5c8ff56244c4fad2"), ("runtime-deps", "3c0e1c0e54b5655f"),
                    ("configure-instrumented", "00709e70e1d1f740"), ("build-instrumented", "50ae57a722d6588d"),
                    ("install-instrumented", "01b4acadcf523b78"), ("train", "9c5bbff9d18d24ab"),
                    ("merge", "c07f75729a9c2b03"), ("configure", "10e6028dcc9acdec"),
                    ("build", "25eb6bf73ef100d8"), ("verify", "78002e3c8a587f11"),
                    ("install", "7e1d62cdf6ee4b78")],
}


def _pinned_inputs(tmp_path: Path, name: str, monkeypatch: pytest.MonkeyPatch) -> cpython.Inputs:
    # The runtime's sources and requirements change under other work; pin them so only the planner counts.
    monkeypatch.setattr(cpython, "runtime_digest", lambda *a, **k: "runtime-sources")
    monkeypatch.setattr(training, "runtime_digest", lambda *a, **k: "runtime-sources")
    monkeypatch.setattr(cpython, "runtime_requirements", lambda *a, **k: ("mindspore==2.10.0", "numpy<2"))
    (tmp_path / "tasks").mkdir(exist_ok=True)
    for n, text in PINNED_PROFILES.items():
        (tmp_path / f"{n}.toml").write_text(text)
    for n, text in PINNED_TASKS.items():
        (tmp_path / "tasks" / f"{n}.toml").write_text(text)
    prof = profile.load(name, environ={}, profiles_dir=tmp_path)
    return cpython.Inputs(profile=prof, compiler=engine.hypothetical_compiler(prof.toolchain.family),
                          host=Host("x86_64", "debian"), work=WorkArea(Path("/hostpgo-work")),
                          pin=sources.pinned("cpython", "3.11.2"), patches=(),
                          tasks=training.resolve(prof.pgo.tasks, tmp_path / "tasks") if prof.optimize.pgo == "on"
                          else (), jobs=2)


@pytest.mark.parametrize("name", sorted(UNCHANGED))
def test_bolt_false_plans_keep_their_stage_lists_and_keys(name: str, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    inp = _pinned_inputs(tmp_path, name, monkeypatch)
    assert inp.profile.optimize.bolt is False
    got = [(s.name, s.key[:16]) for s in cpython.plan(inp).stages]
    assert got == UNCHANGED[name]


@pytest.mark.parametrize("name", ["generic-pgo-lto", "workload-pgo-lto"])
def test_bolt_on_adds_stages_and_changes_only_what_follows_configure(name: str, tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    inp = _pinned_inputs(tmp_path, name, monkeypatch)
    on = dataclasses.replace(inp, profile=dataclasses.replace(
        inp.profile, optimize=dataclasses.replace(inp.profile.optimize, bolt=True)), bolt_sampling=NO_LBR)
    keys = dict(UNCHANGED[name])
    got = {s.name: s.key[:16] for s in cpython.plan(on).stages}
    assert [n for n in got if not n.startswith("bolt-")] == list(keys)
    same = list(keys)[:list(keys).index("configure")]
    assert {n: got[n] for n in same} == {n: keys[n] for n in same}  # the instrumented side is shared
    assert got["configure"] != keys["configure"]  # --emit-relocs


# ---------------------------------------------------------------------------------------------
# The planner.

def test_bolt_profile_adds_the_stages_after_the_optimized_build(tmp_path: Path) -> None:
    plan = cpython.plan(inputs(tmp_path, "workload-pgo-lto-bolt"))
    st = by_name(plan)
    assert list(st) == list(cpython.BOLT_STAGE_ORDER)
    assert list(st).index("build") < list(st).index("bolt-instrument") < list(st).index("bolt-apply") \
        < list(st).index("verify") < list(st).index("install")
    obuild = tmp_path / "build" / "cpython-3.11.2-workload-pgo-lto-bolt-optimized"
    # --emit-relocs on the optimized link only (both channels), never on the PGO-instrumented one.
    ld = [f.value for f in st["configure"].flags if f.channel == "LDFLAGS_NODIST"]
    assert "-Wl,--emit-relocs" in ld
    assert "--emit-relocs" in st["build"].actions[0].argv[-1]
    assert not any("emit-relocs" in f.value for f in st["configure-instrumented"].flags)
    assert not any("reorder-blocks-and-partition" in f.value for f in st["configure"].flags)  # GCC only
    instr = st["bolt-instrument"].actions[-1].what
    fdata = tmp_path / "pgo" / "cpython-3.11.2-workload-pgo-lto-bolt" / "bolt" / "fdata"
    assert f"{obuild}/python.prebolt -instrument --instrumentation-file={fdata}/prof.fdata " \
           "--instrumentation-file-append-pid" in instr
    assert f"-o {obuild}/python-bolt-instrumented" in instr
    train = [a.what for a in st["bolt-train"].actions]
    venv = tmp_path / "pgo" / "cpython-3.11.2-workload-pgo-lto-bolt" / "bolt" / "venv"
    assert f"{obuild}/python-bolt-instrumented -m venv --clear {venv}" in train[1]
    assert "hostpgo-runtime.pth" in train[2]
    runs = [w for w in train if "-m runtime workload" in w]
    assert len(runs) == len(training.registry()["runtime-workloads"].workloads)
    assert all(f"{venv}/bin/python" in w and "LLVM_PROFILE_FILE" not in w for w in runs)
    apply = st["bolt-apply"].actions[0].what
    assert f"-data={fdata.parent}/merged.fdata" in apply
    assert "-reorder-blocks=ext-tsp -reorder-functions=cdsort -split-functions -split-all-cold" in apply
    assert "-use-gnu-stack" not in apply and "-skip-funcs" not in apply  # LLVM 22 handles computed gotos
    # The verify stage checks what bolt-apply produced, and falls back to the PGO binary.
    assert st["verify"].actions[-1].what.startswith("if a check failed on the BOLTed python")
    assert any("no LBR/BRBE here" in n for n in plan.notes)
    assert any("frame pointers" in n for n in plan.notes) and any("PIE" in n for n in plan.notes)
    assert plan.summary["bolt"]["method"] == "instrument"


def test_bolt_options_are_profile_data_and_enter_the_keys(tmp_path: Path) -> None:
    a = by_name(cpython.plan(inputs(tmp_path, "workload-pgo-lto-bolt")))
    b = by_name(cpython.plan(inputs(tmp_path, "workload-pgo-lto-bolt", set=['bolt.apply=["-reorder-blocks=cache+"]'])))
    assert "-reorder-blocks=cache+" in b["bolt-apply"].actions[0].what
    assert a["bolt-merge"].key == b["bolt-merge"].key and a["bolt-apply"].key != b["bolt-apply"].key
    assert a["verify"].key != b["verify"].key and a["build"].key == b["build"].key
    c = by_name(cpython.plan(inputs(tmp_path, "workload-pgo-lto-bolt",
                                    set=['bolt.instrument=["-conservative-instrumentation"]'])))
    assert c["bolt-instrument"].key != a["bolt-instrument"].key
    assert "-conservative-instrumentation" in c["bolt-instrument"].actions[-1].what


def test_bolt_reuses_stored_pgo_data(tmp_path: Path) -> None:
    data = tmp_path / "profiles" / "cpython-3.11.2-workload-pgo-lto-abc.profdata"
    data.parent.mkdir(parents=True)
    data.write_bytes(b"profile")
    plan = cpython.plan(inputs(tmp_path, "workload-pgo-lto-bolt", profile_data=data))
    names = [s.name for s in plan.stages]
    assert names == ["source", "runtime-deps", "profile-data", "configure", "build", *bolt.STAGES, "verify", "install"]
    # The BOLT training still sees the runtime's dependencies.
    assert any("hostpgo-runtime.pth" in a.what for a in by_name(plan)["bolt-train"].actions)


@pytest.mark.parametrize("major, skipped", [(20, True), (21, False), (22, False)])
def test_computed_goto_functions_are_skipped_before_llvm_21(tmp_path: Path, major: int, skipped: bool) -> None:
    comp = dataclasses.replace(engine.hypothetical_compiler("clang"), version=f"{major}.1.0")
    st = by_name(cpython.plan(inputs(tmp_path, "workload-pgo-lto-bolt", compiler=comp)))
    apply, instr = st["bolt-apply"].actions[0].what, st["bolt-instrument"].actions[-1].what
    want = "-skip-funcs=_PyEval_EvalFrameDefault,sre_ucs1_match/1,sre_ucs2_match/1,sre_ucs4_match/1"
    assert (want in apply and want in instr) is skipped
    assert ("-skip-funcs" in apply) is skipped


def test_skip_rules_parse_versions_and_arches() -> None:
    assert bolt.parse_skip("f@aarch64,llvm<19") == bolt.SkipRule("f", 19, "aarch64")
    rules = ["always", "old@llvm<21", "arm@aarch64", "x86old@x86_64,llvm<21"]
    assert bolt.skipped_functions(rules, 20, "x86_64")[0] == ("always", "old", "x86old")
    assert bolt.skipped_functions(rules, 22, "aarch64")[0] == ("always", "arm")
    notes = bolt.skipped_functions(rules, 22, "x86_64")[1]
    assert "BOLT optimizes old (old@llvm<21: llvm-bolt 22 >= 21)" in notes
    assert any("this host is x86_64, the rule is for aarch64" in n for n in notes)


def test_bolt_section_rejects_unknown_keys_naming_file(tmp_path: Path) -> None:
    f = tmp_path / "p.toml"
    f.write_text('extends = "workload-pgo-lto-bolt"\n[bolt]\napply_flags = []\n')
    with pytest.raises(ProfileError, match=rf"{f}: unknown key 'bolt.apply_flags'; allowed keys in \[bolt\]"):
        profile.load(str(f), environ={})
    f.write_text('[bolt]\nmethod = "lbr"\n')
    with pytest.raises(ProfileError, match="allowed values: 'auto', 'instrument', 'perf'"):
        profile.load(str(f), environ={})


def test_collection_method_follows_the_probe() -> None:
    assert bolt.choose_method("auto", NO_LBR)[0] == "instrument"
    assert "no LBR/BRBE here" in bolt.choose_method("auto", NO_LBR)[1]
    assert bolt.choose_method("auto", LBR)[0] == "perf"
    assert bolt.choose_method("instrument", LBR)[0] == "instrument"
    with pytest.raises(HostpgoError, match="needs branch-stack sampling"):
        bolt.choose_method("perf", NO_LBR)


def test_perf_collection_wraps_each_task_in_perf_record(tmp_path: Path) -> None:
    st = by_name(cpython.plan(inputs(tmp_path, "workload-pgo-lto-bolt", bolt_sampling=LBR)))
    assert "bolt-instrument" not in st
    runs = [a.what for a in st["bolt-train"].actions if "-m runtime workload" in a.what]
    assert len(runs) == len(training.registry()["runtime-workloads"].workloads)
    assert all("perf record -q -e cycles:u -j any,u -o " in w for w in runs)
    assert "perf-001.data" in runs[0] and "perf-005.data" in runs[4]
    assert "perf2bolt" in st["bolt-merge"].actions[0].what


def test_shared_build_rewrites_libpython(tmp_path: Path) -> None:
    st = by_name(cpython.plan(inputs(tmp_path, "workload-pgo-lto-bolt", set=["optimize.shared=true"])))
    obuild = tmp_path / "build" / "cpython-3.11.2-workload-pgo-lto-bolt-optimized"
    assert f"{obuild}/libpython3.11.so.1.0.prebolt -instrument" in st["bolt-instrument"].actions[-1].what
    assert "LD_LIBRARY_PATH=" in st["bolt-train"].actions[1].what


def test_gcc_bolt_flags_and_missing_tools() -> None:
    cflags, ldflags = bolt.build_flags("gcc")
    assert [f.value for f in cflags] == ["-fno-reorder-blocks-and-partition"]
    assert [f.value for f in ldflags] == ["-Wl,--emit-relocs"]
    assert bolt.build_flags("clang")[0] == ()


def test_gcc_profile_with_bolt_names_the_missing_tools(tmp_path: Path) -> None:
    with pytest.raises(HostpgoError, match="llvm-bolt/merge-fdata were not found"):
        cpython.plan(inputs(tmp_path, "gcc-pgo-lto", set=["optimize.bolt=true"]))


# ---------------------------------------------------------------------------------------------
# ELF facts, bolt-check, PT_GNU_STACK: real small files.

def _compile(tmp_path: Path, name: str, *extra: str, shared: bool = False) -> Path:
    if CC is None:
        pytest.skip("no C compiler")
    src = tmp_path / "t.c"
    src.write_text("int twice(int x) { return 2 * x; }\nint main(void) { return twice(0); }\n")
    out = tmp_path / name
    subprocess.run([CC, "-O2", *(["-fPIC", "-shared"] if shared else []), *extra, str(src), "-o", str(out)],
                   check=True, capture_output=True)
    return out


def test_readelf_facts_of_linked_files(tmp_path: Path) -> None:
    with_relocs = bolt.read_elf(_compile(tmp_path, "a", "-Wl,--emit-relocs"))
    assert with_relocs.elf_class == "ELF64" and with_relocs.symbols and ".rela.text" in with_relocs.code_relocations
    assert with_relocs.gnu_stack == "RW" and not with_relocs.bolted
    plain = bolt.read_elf(_compile(tmp_path, "b"))
    assert plain.code_relocations == () and plain.symbols
    lib = bolt.read_elf(_compile(tmp_path, "c.so", shared=True))
    assert lib.kind == "shared library"


@pytest.mark.parametrize("extra, strip, code, fragment", [
    (("-Wl,--emit-relocs",), False, 0, "can be BOLT-optimized"),
    ((), False, 1, "relink from source with -Wl,--emit-relocs"),
    (("-Wl,--emit-relocs",), True, 1, "stripped: no .symtab"),
])
def test_bolt_check_exit_codes_and_reasons(tmp_path: Path, capsys: pytest.CaptureFixture, extra: tuple,
                                           strip: bool, code: int, fragment: str) -> None:
    f = _compile(tmp_path, "prog", *extra)
    if strip:
        subprocess.run(["strip", str(f)], check=True)
    assert cli.main(["bolt-check", str(f)]) == code
    assert fragment in capsys.readouterr().out


def test_bolt_check_bad_input_names_the_file(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("not an ELF file")
    assert cli.main(["bolt-check", str(text)]) == 2
    assert f"{text}: not an ELF file" in capsys.readouterr().err
    assert cli.main(["bolt-check", str(tmp_path / "absent.so")]) == 2
    assert f"{tmp_path / 'absent.so'}: no such file" in capsys.readouterr().err


def test_bolt_check_json_and_several_files(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    good, bad = _compile(tmp_path, "g", "-Wl,--emit-relocs"), _compile(tmp_path, "b")
    assert cli.main(["bolt-check", "--json", str(good), str(bad)]) == 1
    import json
    out = json.loads(capsys.readouterr().out)
    assert [o["ok"] for o in out] == [True, False] and out[0]["code_relocations"] == [".rela.text"]


def test_gnu_stack_check(tmp_path: Path) -> None:
    bolt.check_gnu_stack(bolt.read_elf(_compile(tmp_path, "ok")))
    with pytest.raises(HostpgoError, match=r"PT_GNU_STACK is RWE \(executable stack\)"):
        bolt.check_gnu_stack(bolt.read_elf(_compile(tmp_path, "exec", "-Wl,-z,execstack")))
    none = bolt.ElfFacts("x", "ELF64", "AArch64", "DYN", segments=(bolt.Segment("LOAD", "RE"),))
    with pytest.raises(HostpgoError, match="no PT_GNU_STACK program header.*-use-gnu-stack"):
        bolt.check_gnu_stack(none)


def test_parse_readelf_reads_llvm_style_sections_and_segments() -> None:
    # lld writes PT_GNU_STACK with alignment 0 (readelf prints `0`, not `0x...`): seen on the real build.
    text = """ELF Header:
  Class:                             ELF64
  Type:                              EXEC (Executable file)
  Machine:                           AArch64
Section Headers:
  [Nr] Name              Type            Address          Off    Size   ES Flg Lk Inf Al
  [ 1] .text             PROGBITS        0000000000400100 000100 000400 00  AX  0   0 16
  [ 2] .rela.text        RELA            0000000000000000 001000 000060 18   I  3   1  8
  [ 3] .symtab           SYMTAB          0000000000000000 002000 000120 18      4   3  8
  [ 4] .note.bolt_info   NOTE            0000000000000000 003000 000020 00      0   0  1
Program Headers:
  Type           Offset   VirtAddr           PhysAddr           FileSiz  MemSiz   Flg Align
  LOAD           0x000000 0x0000000000400000 0x0000000000400000 0x000500 0x000500 R E 0x10000
  GNU_STACK      0x000000 0x0000000000000000 0x0000000000000000 0x000000 0x000000 RW  0
"""
    f = bolt.parse_readelf(text, "x")
    assert f.arch == "aarch64" and f.type == "EXEC" and f.kind == "executable (non-PIE)"
    assert f.code_relocations == (".rela.text",) and f.symbols and f.bolted and f.gnu_stack == "RW"
    v = bolt.assess(f)
    assert not v.ok and "already processed by BOLT" in v.reasons[0]


# ---------------------------------------------------------------------------------------------
# The fallback: a BOLT failure (a stage, or the verify of the BOLTed binary) keeps the PGO binary.

FAKE_BOLT = """#!{python}
import shutil, subprocess, sys
args = sys.argv[1:]
out = args[args.index("-o") + 1]
if "-instrument" in args:
    shutil.copy(args[0], out)
elif "{mode}" == "fail-apply":
    sys.exit("BOLT-ERROR: fake failure")
else:
    note = out + ".note"
    open(note, "w").write("bolted")
    subprocess.run(["objcopy", "--add-section", ".note.bolt_info=" + note, args[0], out], check=True)
"""
FAKE_MERGE = """#!{python}
import sys
args = sys.argv[1:]
open(args[args.index("-o") + 1], "w").write("merged")
"""


def _fake_setup(tmp_path: Path, mode: str, train_fails: bool = False):
    if shutil.which("objcopy") is None:
        pytest.skip("objcopy (binutils) is needed to fake a BOLT output")
    tools = {}
    for name, text in (("llvm-bolt", FAKE_BOLT), ("merge-fdata", FAKE_MERGE)):
        p = tmp_path / "tools" / name
        p.parent.mkdir(exist_ok=True)
        p.write_text(text.format(python=sys.executable, mode=mode))
        p.chmod(0o755)
        tools[name.replace("llvm-", "")] = str(p)
    comp = Compiler("clang", "clang", None, "22.1.8", "clang 22", tools)
    build = tmp_path / "build"
    build.mkdir()
    tgt = bolt.Target(_compile(build, "python"), "interpreter", "test")
    pgo_bytes = tgt.path.read_bytes()
    work = tmp_path / "bolt"

    def train(python, venv_dir, env, wrap):
        if train_fails:
            return [stages.Cmd(("sh", "-c", "echo workload crashed; exit 3"), nice=False)]
        return [stages.Call("a process writes its profile",
                            lambda ctx: (work / "fdata" / "prof.fdata.1.fdata").write_text("1 f 0 1 f 4 0 9\n"))]
    prof = profile.load("workload-pgo-lto-bolt", environ={})
    bp = bolt.plan(profile=prof, comp=comp, host=Host("x86_64", "debian"), build_dir=build,
                   version="3.11.2", work_dir=work, prev_key="build-key", train=train, train_key={},
                   sampling=NO_LBR, tgt=tgt)
    # The verify check: passes on the PGO binary, fails on anything carrying BOLT's note.
    check = stages.Cmd(("sh", "-c", f"! grep -q bolt_info {tgt.path}"), nice=False)
    verify = stages.Stage("verify", "verify", "vk", bolt.verify_keeping_pgo((check,), tgt))
    return bp, verify, tgt, pgo_bytes


def test_a_failing_bolt_stage_keeps_the_pgo_binary_and_says_why(tmp_path: Path) -> None:
    bp, verify, tgt, pgo_bytes = _fake_setup(tmp_path, "fail-apply")
    ex = stages.execute(stages.BuildPlan("t", (*bp.stages, verify), (), {}), tmp_path / "s", tmp_path / "l",
                        live=False)
    assert tgt.path.read_bytes() == pgo_bytes and tgt.prebolt.read_bytes() == pgo_bytes
    assert ex.results["bolt-train"].info["profiles"] == 1
    rec = bolt.outcome(ex.results, bp.summary)
    assert rec["applied"] is False and rec["stage"] == "bolt-apply" and "fake failure" in rec["reason"]
    assert ex.results["verify"].info["bolt"]["verified"] == "pgo (BOLT not applied)"
    assert "BOLT FAILED in bolt-apply: keeping the PGO build" in (tmp_path / "l" / "t" / "bolt-apply.log").read_text()


def test_a_bolted_binary_that_fails_verify_is_replaced_by_the_pgo_one(tmp_path: Path) -> None:
    bp, verify, tgt, pgo_bytes = _fake_setup(tmp_path, "ok")
    plan = stages.BuildPlan("t", (*bp.stages, verify), (), {})
    ex = stages.execute(plan, tmp_path / "s", tmp_path / "l", live=False)
    assert ex.results["bolt-apply"].info["bolt"]["applied"] is True
    assert tgt.path.read_bytes() == pgo_bytes  # restored by verify
    rec = bolt.outcome(ex.results, bp.summary)
    assert rec["applied"] is False and rec["stage"] == "verify"
    assert rec["reason"].startswith("the BOLTed binary failed verification")
    # A rerun of the BOLT stages starts from the kept PGO binary, not from BOLT output.
    (tmp_path / "s" / "t" / "bolt-instrument.json").unlink()
    ex = stages.execute(plan, tmp_path / "s", tmp_path / "l", live=False)
    assert not ex.results["bolt-instrument"].skipped and tgt.prebolt.read_bytes() == pgo_bytes


def test_a_bolted_binary_that_passes_verify_stays(tmp_path: Path) -> None:
    bp, _verify, tgt, pgo_bytes = _fake_setup(tmp_path, "ok")
    passing = stages.Stage("verify", "verify", "vk", bolt.verify_keeping_pgo(
        (stages.Cmd(("sh", "-c", "true"), nice=False),), tgt))
    ex = stages.execute(stages.BuildPlan("t", (*bp.stages, passing), (), {}), tmp_path / "s", tmp_path / "l",
                        live=False)
    assert bolt.read_elf(tgt.path).bolted and tgt.prebolt.read_bytes() == pgo_bytes
    rec = bolt.outcome(ex.results, bp.summary)
    assert rec["applied"] is True and "reason" not in rec and rec["gnu_stack"] == "RW"
    # The build stage reused and the BOLT stages run again: the target is BOLT output, so the kept
    # PGO binary is put back first (llvm-bolt refuses its own output).
    for name in bolt.STAGES:
        (tmp_path / "s" / "t" / f"{name}.json").unlink()
    ex = stages.execute(stages.BuildPlan("t", (*bp.stages, passing), (), {}), tmp_path / "s", tmp_path / "l",
                        live=False)
    assert ex.results["bolt-instrument"].info["restored_from"] == str(tgt.prebolt)
    assert bolt.outcome(ex.results, bp.summary)["applied"] is True


def test_bolt_without_pgo_trains_on_the_profiles_tasks(tmp_path: Path) -> None:
    st = by_name(cpython.plan(inputs(tmp_path, "lto", set=["optimize.bolt=true"])))
    assert "train" not in st and "bolt-train" in st
    obuild = tmp_path / "build" / "cpython-3.11.2-lto-plain"
    assert st["bolt-train"].actions[1].what.startswith(f"{obuild}/python-bolt-instrumented -m test --pgo")


def test_a_failure_in_training_skips_the_later_bolt_stages(tmp_path: Path) -> None:
    bp, verify, tgt, pgo_bytes = _fake_setup(tmp_path, "ok", train_fails=True)
    ex = stages.execute(stages.BuildPlan("t", (*bp.stages, verify), (), {}), tmp_path / "s", tmp_path / "l",
                        live=False)
    assert ex.results["bolt-merge"].info["bolt"] == {"applied": False, "skipped": True,
                                                     "reason": "BOLT failed in bolt-train"}
    assert not (tmp_path / "bolt" / "merged.fdata").exists() and tgt.path.read_bytes() == pgo_bytes
    rec = bolt.outcome(ex.results, bp.summary)
    assert rec["stage"] == "bolt-train" and "exit code 3" in rec["reason"] and "skipped" not in rec
