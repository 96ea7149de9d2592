"""Unit: the [tuning] keys and optimize.compiler_cache on the planned compile and link lines, per family; the
generated compiler wrapper (per-file flags, ccache) compiling a two-file fixture; profile-data reuse; BiSheng's
Autotuner loop in the plan (fake BiSheng compiler) and the note elsewhere."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from buildsys import cli, toolchain
from buildsys.core import stages
from buildsys.core.paths import WorkArea
from buildsys.errors import InputError, ProfileError
from buildsys.pipeline import autotune, pgo, sources, training
from buildsys.targets import cpython
from buildsys.toolchain import Compiler, Host, flags, profile, wrapper

X86 = Host("x86_64", "debian")
CLANG = Compiler("clang", "/usr/bin/clang-22", "/usr/bin/clang++-22", "22.1.8", "Debian clang version 22.1.8",
                 {r: f"/usr/bin/{n}-22" for r, n in toolchain.LLVM_TOOLS.items()})
GCC = Compiler("gcc", "/usr/bin/gcc-12", "/usr/bin/g++-12", "12.2.0", "gcc-12 (Debian 12.2.0) 12.2.0",
               {"ar": "/usr/bin/gcc-ar-12", "ranlib": "/usr/bin/gcc-ranlib-12", "nm": "/usr/bin/gcc-nm-12"})
BISHENG = Compiler("bisheng", "/opt/bisheng/bin/clang", "/opt/bisheng/bin/clang++", "17.0.6",
                   "BiSheng Enterprise 4.1.0 clang version 17.0.6",
                   {r: f"/opt/bisheng/bin/{n}" for r, n in toolchain.LLVM_TOOLS.items()})
CC = shutil.which("gcc") or shutil.which("clang-22") or shutil.which("cc")


def plan_of(tmp_path: Path, name: str, comp: Compiler, sets=(), **kw) -> dict[str, stages.Stage]:
    prof = profile.load(name, environ={}, overrides=sets)
    inp = cpython.Inputs(profile=prof, compiler=comp, host=kw.pop("host", X86), work=WorkArea(tmp_path),
                         pin=sources.pinned("cpython", "3.11.2"), patches=(),
                         tasks=training.resolve(prof.pgo.tasks) if prof.optimize.pgo == "on" else (), jobs=2, **kw)
    plan = cpython.plan(inp)
    return {"_notes": plan.notes, **{s.name: s for s in plan.stages}}


def lines(st: dict, name: str = "configure") -> tuple[list[str], list[str], list[str]]:
    """(compile flags, link flags, link flags of the make variable) of a planned configure+build."""
    env = st[name].actions[-1].env
    build = st[name.replace("configure", "build")].actions[0].argv
    make_link = next((a.split("=", 1)[1] for a in build if a.startswith("LDFLAGS_NODIST=")), "")
    return env["CFLAGS_NODIST"].split(), env["LDFLAGS_NODIST"].split(), make_link.split()


def adjacent(words: list[str], pair: tuple[str, str]) -> bool:
    return any(tuple(words[i:i + 2]) == pair for i in range(len(words) - 1))


# ---------------------------------------------------------------------------------------------
# [tuning] -> compile and link lines.

def test_inline_threshold_reaches_clang_compile_and_thinlto_link(tmp_path: Path) -> None:
    st = plan_of(tmp_path, "workload-pgo-lto", CLANG, ["tuning.inline_threshold=500"])
    cf, lf, make_lf = lines(st)
    assert adjacent(cf, ("-mllvm", "-inline-threshold=500"))
    assert "-Wl,-mllvm,-inline-threshold=500" in lf and "-Wl,-mllvm,-inline-threshold=500" in make_lf
    # The instrumented build compiles with it too (no LTO there, so not on its link).
    icf, ilf, _ = lines(st, "configure-instrumented")
    assert adjacent(icf, ("-mllvm", "-inline-threshold=500")) and not any("-inline-threshold" in f for f in ilf)


def test_inline_threshold_reaches_gcc_compile_and_lto_link(tmp_path: Path) -> None:
    st = plan_of(tmp_path, "gcc-pgo-lto", GCC, ["tuning.inline_threshold=120"])
    cf, lf, make_lf = lines(st)
    params = ["--param=max-inline-insns-auto=120", "--param=max-inline-insns-single=120"]
    assert all(p in cf for p in params) and all(p in lf for p in params) and all(p in make_lf for p in params)
    # Without LTO the link does not inline: the params stay on the compile line only.
    cf, lf, _ = lines(plan_of(tmp_path, "baseline", GCC, ["tuning.inline_threshold=120"]))
    assert all(p in cf for p in params) and not any("max-inline-insns" in f for f in lf)


def test_alignment_and_no_plt_per_family(tmp_path: Path) -> None:
    sets = ["tuning.align_functions=64", "tuning.align_loops=32", "tuning.no_plt=true"]
    cf, lf, _ = lines(plan_of(tmp_path, "workload-pgo-lto", CLANG, sets))
    assert {"-falign-functions=64", "-falign-loops=32", "-fno-plt"} <= set(cf)
    # clang keeps function alignment and -fno-plt in the IR; loop alignment must reach lld.
    assert "-Wl,-mllvm,-align-loops=32" in lf
    assert not {"-falign-functions=64", "-fno-plt", "-falign-loops=32"} & set(lf)
    cf, lf, _ = lines(plan_of(tmp_path, "gcc-pgo-lto", GCC, sets))
    assert {"-falign-functions=64", "-falign-loops=32", "-fno-plt"} <= set(cf)
    assert {"-falign-functions=64", "-falign-loops=32", "-fno-plt"} <= set(lf)


def test_split_machine_functions_only_in_the_optimized_build(tmp_path: Path) -> None:
    st = plan_of(tmp_path, "workload-pgo-lto", CLANG, ["tuning.split_machine_functions=true"])
    cf, lf, make_lf = lines(st)
    assert "-fsplit-machine-functions" in cf and "-fsplit-machine-functions" in lf
    assert "-fsplit-machine-functions" in make_lf
    icf, ilf, _ = lines(st, "configure-instrumented")
    assert "-fsplit-machine-functions" not in icf + ilf
    st = plan_of(tmp_path, "gcc-pgo-lto", GCC, ["tuning.split_machine_functions=true"])
    cf, lf, _ = lines(st)
    assert "-freorder-blocks-and-partition" in cf and "-freorder-blocks-and-partition" in lf
    assert any("already enables at -O2" in n for n in st["_notes"])


def test_profiles_without_the_new_keys_plan_as_before(tmp_path: Path) -> None:
    for name, comp in (("workload-pgo-lto", CLANG), ("gcc-pgo-lto", GCC)):
        st = plan_of(tmp_path, name, comp)
        cf, lf, _ = lines(st)
        assert not [f for f in cf + lf if f.startswith(("-falign", "-fno-plt", "-fsplit", "--param", "-Wl,-mllvm"))
                    or "inline-threshold" in f]
        assert st["configure"].actions[-1].env["CC"] == comp.cc


@pytest.mark.parametrize("item, says", [
    ("tuning.inline_threshold=-1", "an integer >= 0"),
    ("tuning.inline_threshold=\"big\"", "must be int"),
    ("tuning.align_functions=48", "0 or a power of two"),
    ("tuning.align_loops=-8", "0 or a power of two"),
    ("tuning.no_plt=\"yes\"", "must be bool"),
    ("tuning.split_machine_functions=1", "must be bool"),
    ("tuning.per_file={\"../ceval.c\" = [\"-O2\"]}", "relative source paths"),
    ("tuning.per_file={\"Python/ceval.c\" = []}", "relative source paths"),
    ("tuning.per_file={\"Python/ceval.c\" = [\"-O2 -g\"]}", "without whitespace"),
    ("tuning.per_file={\"Python/ceval.h\" = [\"-O2\"]}", "a C/C++ file"),
    ("optimize.compiler_cache=\"sccache\"", "'off', 'ccache'"),
    ("bisheng.autotune=-2", "an integer >= 0"),
])
def test_bad_values_are_exit_2_naming_the_key(item: str, says: str, capsys) -> None:
    key = item.split("=", 1)[0]
    with pytest.raises(ProfileError, match=f"key '{key}'"):
        profile.load("workload-pgo-lto", overrides=[item], environ={})
    assert cli.main(["show-profile", "workload-pgo-lto", "--set", item]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert key in err and says in err


def test_split_machine_functions_without_pgo_says_the_fix(capsys) -> None:
    with pytest.raises(ProfileError, match=r"tuning.split_machine_functions' = true needs profile data.*"
                                           r"set optimize.pgo = \"on\""):
        profile.load("lto", overrides=["tuning.split_machine_functions=true"], environ={})
    assert cli.main(["show-profile", "lto", "--set", "tuning.split_machine_functions=true"]) == 2
    assert "command line --set tuning.split_machine_functions=true" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# tuning.per_file and optimize.compiler_cache: the wrapper as CC, its text in the key.

PER_FILE = 'tuning.per_file={"Python/ceval.c" = ["-O2", "-fno-tree-vectorize"]}'


def test_per_file_puts_the_wrapper_in_cc_and_its_text_in_the_key(tmp_path: Path) -> None:
    base = plan_of(tmp_path, "workload-pgo-lto", CLANG)
    st = plan_of(tmp_path, "workload-pgo-lto", CLANG, [PER_FILE])
    env = st["configure"].actions[-1].env
    build_dir = tmp_path / "build" / "cpython-3.11.2-workload-pgo-lto-optimized"
    assert env["CC"] == f"{build_dir}/.hostpgo-wrap/clang-22"  # the compiler's name kept (configure reads it)
    assert env["CXX"] == f"{build_dir}/.hostpgo-wrap/clang++-22"
    assert "-fno-tree-vectorize" not in env["CFLAGS_NODIST"]  # only the wrapper carries it
    assert any("write the compiler wrapper" in a.describe() for a in st["configure"].actions)
    assert st["configure"].key != base["configure"].key
    other = plan_of(tmp_path, "workload-pgo-lto", CLANG, ['tuning.per_file={"Python/ceval.c" = ["-O1"]}'])
    assert other["configure"].key != st["configure"].key  # a changed flag rebuilds


def test_per_file_refused_where_the_recipe_passes_no_build_dir() -> None:
    prof = profile.load("workload-pgo-lto", overrides=[PER_FILE], environ={})
    with pytest.raises(ProfileError, match="tuning.per_file and optimize.compiler_cache need"):
        flags.resolve(prof, CLANG, X86, "optimized")


def test_compiler_cache_wraps_ccache_and_keeps_a_thinlto_cache(tmp_path: Path) -> None:
    st = plan_of(tmp_path, "workload-pgo-lto", CLANG, ['optimize.compiler_cache="ccache"'])
    env = st["configure"].actions[-1].env
    assert env["CC"].endswith("/.hostpgo-wrap/clang-22")
    _, lf, make_lf = lines(st)
    cache = [f for f in lf if f.startswith("-Wl,--thinlto-cache-dir=")]
    assert len(cache) == 1 and cache[0].startswith(f"-Wl,--thinlto-cache-dir={tmp_path}/thinlto-cache/")
    assert cache[0] in make_lf
    w = flags.resolve(profile.load("workload-pgo-lto", overrides=['optimize.compiler_cache="ccache"'], environ={}),
                      CLANG, X86, "optimized", build_dir="/b", profdata="/p.profdata", work=WorkArea(tmp_path)).wrapper
    assert w is not None and w.launcher == ("ccache",)
    assert dict(w.env) == {"CCACHE_DIR": f"{tmp_path}/ccache", "CCACHE_BASEDIR": str(tmp_path),
                           "CCACHE_NOHASHDIR": "1", "CCACHE_EXTRAFILES": "/b/.hostpgo-wrap/profile-data.sha256"}
    assert w.profile_data == "/p.profdata"
    # Different link flags, different ThinLTO cache directory (no -mllvm option ever shares one).
    st2 = plan_of(tmp_path, "workload-pgo-lto", CLANG, ['optimize.compiler_cache="ccache"',
                                                        "tuning.inline_threshold=400"])
    assert [f for f in lines(st2)[1] if "thinlto-cache" in f] != cache
    # gcc: the wrapper, no ThinLTO cache; full LTO says it has none.
    st = plan_of(tmp_path, "gcc-pgo-lto", GCC, ['optimize.compiler_cache="ccache"'])
    assert not [f for f in lines(st)[1] if "thinlto" in f]
    assert any("full LTO has no link-time cache" in n for n in st["_notes"])
    assert any("ccache 4.7 (Debian 12) runs these compiles uncached" in n for n in st["_notes"])


def test_compiler_cache_needs_ccache_on_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(flags, "which", lambda name: None)
    prof = profile.load("workload-pgo-lto", overrides=['optimize.compiler_cache="ccache"'], environ={})
    tcs = toolchain.Toolchains(X86, (CLANG,))
    with pytest.raises(toolchain.ToolchainError, match="ccache is not on PATH. Install it: apt-get install"):
        flags.select_compiler(prof, tcs)


def _write(w: wrapper.CompilerWrapper, tmp_path: Path) -> None:
    stages.execute(stages.BuildPlan("w", (stages.Stage("wrap", "wrap", "k", (w.write_call(),)),), (), {}),
                   tmp_path / "stamps", tmp_path / "logs", live=False)


def _fixture(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    (src / "Python").mkdir(parents=True)
    (src / "Objects").mkdir()
    # Each file fails to compile unless it got exactly the flags meant for it.
    (src / "Python" / "ceval.c").write_text("#ifndef HOT\n#error per-file flag missing\n#endif\n"
                                            "int hot(void){return HOT;}\n")
    (src / "Objects" / "dictobject.c").write_text("#ifdef HOT\n#error flag leaked\n#endif\n"
                                                  "int cold(void){return 0;}\n")
    return src


@pytest.mark.skipif(CC is None, reason="no C compiler")
def test_wrapper_gives_only_the_named_file_its_flags(tmp_path: Path) -> None:
    src = _fixture(tmp_path)
    build = tmp_path / "build"
    w = wrapper.CompilerWrapper(directory=str(build / ".hostpgo-wrap"), cc=CC, cxx=None,
                                per_file=(("Python/ceval.c", ("-DHOT=7", "-O1")),))
    _write(w, tmp_path)
    cc = w.tools["CC"]
    assert os.path.basename(cc) == os.path.basename(CC) and os.access(cc, os.X_OK)
    # As an out-of-tree build compiles: absolute source paths, objects in the build directory.
    for rel in ("Python/ceval.c", "Objects/dictobject.c"):
        subprocess.run([cc, "-c", str(src / rel), "-o", str(build / (Path(rel).stem + ".o"))], check=True,
                       cwd=build)
    # And as an in-tree (relative) compile line; the flags come last, so -O1 wins over an earlier -O3.
    out = subprocess.run([cc, "-O3", "-c", "Python/ceval.c", "-o", str(build / "rel.o"), "-###"], cwd=src,
                         capture_output=True, text=True)
    said = out.stderr + out.stdout
    assert "HOT=7" in said and said.rindex("-O1") > said.rindex("-O3")
    assert (build / "ceval.o").is_file() and (build / "dictobject.o").is_file()
    assert "m0=1" in w.script(CC) and "-DHOT=7" in w.script(CC)


@pytest.mark.skipif(CC is None or shutil.which("ccache") is None, reason="needs a C compiler and ccache")
def test_ccache_hits_across_build_dirs_and_misses_on_new_profile_data(tmp_path: Path) -> None:
    src = _fixture(tmp_path)
    work = WorkArea(tmp_path)
    data = tmp_path / "merged.profdata"
    data.write_bytes(b"first training")

    def compile_in(build: Path) -> dict:
        wdir = build / ".hostpgo-wrap"
        w = wrapper.CompilerWrapper(directory=str(wdir), cc=CC, cxx=None, launcher=("ccache",),
                                    per_file=(("Python/ceval.c", ("-DHOT=1",)),), profile_data=str(data),
                                    env=wrapper.ccache_env(cache_dir=str(work.ccache), base_dir=str(work.root),
                                                           extra_files=str(wdir / wrapper.PROFILE_DIGEST_FILE)))
        _write(w, build)
        subprocess.run([w.tools["CC"], "-O2", "-g", "-c", str(src / "Python" / "ceval.c"), "-o", "ceval.o"],
                       check=True, cwd=build)
        stats = subprocess.run(["ccache", "--print-stats"], env={**os.environ, "CCACHE_DIR": str(work.ccache)},
                               capture_output=True, text=True, check=True).stdout
        return dict(line.split("\t", 1) for line in stats.splitlines() if "\t" in line)

    (tmp_path / "b1").mkdir()
    (tmp_path / "b2").mkdir()
    (tmp_path / "b3").mkdir()
    first = compile_in(tmp_path / "b1")
    second = compile_in(tmp_path / "b2")  # another build directory, same inputs: a hit
    hits = int(second.get("direct_cache_hit", 0)) + int(second.get("preprocessed_cache_hit", 0))
    assert hits == 1 and int(first.get("cache_miss", 0)) == 1
    data.write_bytes(b"second training")  # new profile data: the same compile misses
    third = compile_in(tmp_path / "b3")
    assert int(third.get("cache_miss", 0)) == 2
    assert (tmp_path / "ccache").is_dir()


# ---------------------------------------------------------------------------------------------
# Profile data reuse.

def _clang_data(tmp_path: Path, family: str = "clang", version: str = "22.1.8") -> Path:
    data = tmp_path / "profiles" / "cpython-3.11.2-workload-pgo-lto-abc.profdata"
    data.parent.mkdir(parents=True, exist_ok=True)
    data.write_bytes(pgo.PROFDATA_MAGIC + b"\0" * 24)
    pgo._write_sidecar(data, {"schema": pgo.PROFILE_DATA_SCHEMA, "compiler": {"family": family, "version": version},
                              "training": [{"name": "runtime-workloads", "version": 1}]},
                       {"profile_data_sha256": sources.sha256_of(data)})
    return data


def _gcc_tree(tmp_path: Path) -> Path:
    tree = tmp_path / "profiles" / "cpython-3.11.2-gcc-pgo-lto-abc.gcda"
    (tree / "Python").mkdir(parents=True)
    (tree / "Python" / "ceval.gcda").write_bytes(b"adcg" + b"\0" * 8)
    return tree


def test_profile_data_reusable_says_where_and_why(tmp_path: Path) -> None:
    clang_data, gcc_tree = _clang_data(tmp_path), _gcc_tree(tmp_path)
    cand = profile.load("workload-pgo-lto", overrides=["tuning.inline_threshold=400"], environ={})
    ok, why = pgo.profile_data_reusable(cand, clang_data)
    assert ok and "fits clang" in why and "runtime-workloads" in why
    assert pgo.profile_data_reusable(cand, clang_data, CLANG)[0]
    ok, why = pgo.profile_data_reusable(profile.load("gcc-pgo-lto", environ={}), clang_data)
    assert not ok and "gcc, which cannot read it" in why and "needs its own training" in why
    ok, why = pgo.profile_data_reusable(cand, gcc_tree)
    assert not ok and "a GCC .gcda tree" in why and "needs its own training" in why
    ok, why = pgo.profile_data_reusable(profile.load("lto", environ={}), clang_data)
    assert not ok and "optimize.pgo = \"off\"" in why
    ok, why = pgo.profile_data_reusable(cand, tmp_path / "nope.profdata")
    assert not ok and "no such file" in why
    old = dataclasses.replace(CLANG, version="18.1.3")
    ok, why = pgo.profile_data_reusable(cand, clang_data, old)
    assert not ok and "major versions" in why
    bisheng_made = _clang_data(tmp_path / "b", family="bisheng", version="17.0.6")
    ok, why = pgo.profile_data_reusable(cand, bisheng_made)
    assert not ok and "made by bisheng" in why


def test_gcc_candidate_with_clang_data_is_an_input_error_naming_the_flag(tmp_path: Path) -> None:
    data = _clang_data(tmp_path)
    with pytest.raises(InputError, match=r"--profile-data .*compiles with gcc.*needs its own training"):
        plan_of(tmp_path, "gcc-pgo-lto", GCC, profile_data=data)
    with pytest.raises(InputError, match=r"--profile-data .*a GCC .gcda tree.*needs its own training"):
        plan_of(tmp_path, "workload-pgo-lto", CLANG, profile_data=_gcc_tree(tmp_path))


def test_reused_profile_data_tolerates_mismatch_warnings(tmp_path: Path) -> None:
    st = plan_of(tmp_path, "workload-pgo-lto", CLANG, ["tuning.inline_threshold=400"],
                 profile_data=_clang_data(tmp_path))
    cf, _, _ = lines(st)
    assert {"-Wno-error=profile-instr-out-of-date", "-Wno-error=profile-instr-unprofiled"} <= set(cf)
    assert f"-fprofile-instr-use={_clang_data(tmp_path)}" in cf
    st = plan_of(tmp_path, "gcc-pgo-lto", GCC, ["tuning.inline_threshold=100"], profile_data=_gcc_tree(tmp_path))
    cf, lf, _ = lines(st)
    assert "-Wno-error=coverage-mismatch" in cf and "-Wno-error=coverage-mismatch" in lf
    # A training of its own: no tolerance flags.
    cf, _, _ = lines(plan_of(tmp_path, "gcc-pgo-lto", GCC))
    assert "-Wno-error=coverage-mismatch" not in cf


# ---------------------------------------------------------------------------------------------
# BiSheng's Autotuner loop.

def test_bisheng_plan_drives_the_autotuner_loop(tmp_path: Path) -> None:
    st = plan_of(tmp_path, "bisheng-kunpeng920", BISHENG, ["bisheng.autotune=2"],
                 host=Host("aarch64", "openEuler", kunpeng="tsv110"))
    names = [n for n in st if n != "_notes"]
    loop = ["autotune-datadir", "configure-autotune-generate", "build-autotune-generate", "autotune-init",
            "configure-autotune",
            "build-autotune", "autotune-1", "autotune-2", "autotune-finalize"]
    assert names[names.index("merge") + 1:names.index("configure")] == loop
    gen_cf = st["configure-autotune-generate"].actions[-1].env["CFLAGS_NODIST"].split()
    assert "-fautotune-generate" in gen_cf and "-fprofile-instr-use" in " ".join(gen_cf)
    datadir = str(tmp_path / "pgo" / "cpython-3.11.2-bisheng-kunpeng920" / "autotune")
    assert st["autotune-init"].actions[0].argv == ("/opt/bisheng/bin/llvm-autotune", "minimize")
    assert st["autotune-init"].actions[0].env == {"AUTOTUNE_DATADIR": datadir}
    it = st["autotune-1"].actions
    assert it[0].argv == ("make", "clean")
    make = " ".join(st["build-autotune"].actions[0].argv)  # the build's make variables (LTO's NOLTO links)
    assert make.startswith("make -j2 LDFLAGS_NODIST=") and it[1].describe().startswith(f"[hostpgo] {make} (in ")
    assert "llvm-autotune feedback <seconds> (9999 when the rebuild or a task fails)" in it[1].describe()
    assert st["autotune-datadir"].outputs == (Path(datadir),)  # emptied before the loop starts
    assert st["autotune-finalize"].actions[0].argv == ("/opt/bisheng/bin/llvm-autotune", "finalize")
    cf, _, _ = lines(st)
    assert "-fautotune" in cf and "-fautotune-generate" not in cf
    assert st["build"].actions[0].env["AUTOTUNE_DATADIR"] == datadir
    # The optimized build follows the loop: its key changes with the iteration count.
    st3 = plan_of(tmp_path, "bisheng-kunpeng920", BISHENG, ["bisheng.autotune=3"],
                  host=Host("aarch64", "openEuler", kunpeng="tsv110"))
    assert st3["configure"].key != st["configure"].key


def test_autotune_left_out_with_a_note_off_bisheng(tmp_path: Path) -> None:
    st = plan_of(tmp_path, "bisheng-kunpeng920", CLANG, ["bisheng.autotune=2"])
    assert not [n for n in st if n.startswith(("autotune", "configure-autotune"))]
    assert any("left out BiSheng's Autotuner loop (bisheng.autotune = 2)" in n and "clang" in n
               for n in st["_notes"])
    assert "-fautotune" not in lines(st)[0]
    base = plan_of(tmp_path, "bisheng-kunpeng920", CLANG)
    assert st["configure"].key == base["configure"].key  # nothing planned, nothing changed
    assert autotune.wanted(profile.load("bisheng-kunpeng920", environ={}), BISHENG) == (False, None)


def test_profile_reference_documents_the_new_keys() -> None:
    ref = profile.reference()
    for key in ("inline_threshold", "align_functions", "align_loops", "no_plt", "split_machine_functions",
                "per_file", "compiler_cache", "autotune"):
        assert f"`{key}`" in ref
    assert json.dumps(profile.load("workload-pgo-lto", overrides=[PER_FILE], environ={}).to_dict()["tuning"])



@pytest.mark.skipif(CC is None or shutil.which("cmake") is None, reason="needs a C compiler and cmake")
def test_cmake_takes_the_wrapper_as_its_c_compiler(tmp_path: Path) -> None:
    src = _fixture(tmp_path)
    (src / "CMakeLists.txt").write_text("cmake_minimum_required(VERSION 3.13)\nproject(fixture C)\n"
                                        "add_library(fixture STATIC Python/ceval.c Objects/dictobject.c)\n")
    build = tmp_path / "build"
    w = wrapper.CompilerWrapper(directory=str(build / ".hostpgo-wrap"), cc=CC, cxx=None,
                                per_file=(("Python/ceval.c", ("-DHOT=1",)),))
    _write(w, tmp_path)
    env = {**os.environ, "CC": w.tools["CC"]}
    subprocess.run(["cmake", "-S", str(src), "-B", str(build), "-DCMAKE_EXPORT_COMPILE_COMMANDS=ON"], check=True,
                   env=env, capture_output=True)
    subprocess.run(["cmake", "--build", str(build)], check=True, env=env, capture_output=True)
    commands = json.loads((build / "compile_commands.json").read_text())
    assert {Path(c["file"]).name for c in commands} == {"ceval.c", "dictobject.c"}
    assert all(c["command"].startswith(w.tools["CC"]) for c in commands)
    assert (build / "libfixture.a").is_file()  # dictobject.c errors if the flag leaked, ceval.c if it is missing


def test_cmake_and_autotools_configure_stages_write_the_wrapper_and_key_it(tmp_path: Path) -> None:
    from buildsys.systems import autotools, cmake

    prof = profile.load("workload-pgo-lto", overrides=[PER_FILE], environ={})
    rf = flags.resolve(prof, CLANG, X86, "optimized", build_dir=str(tmp_path / "b"), profdata="/p",
                       work=WorkArea(tmp_path))
    bare = dataclasses.replace(rf, wrapper=None, tools={"CC": CLANG.cc})
    common = dict(key_inputs={"v": 1}, build_dir=tmp_path / "b")
    for make in (lambda r: cmake.configure_stage("configure", "c", source=tmp_path, prefix=tmp_path / "i", rf=r,
                                                 opt="-O3", defines={}, generator=None, **common),
                 lambda r: autotools.configure_stage("configure", "c", tree=tmp_path, args=[], rf=r, extra_env={},
                                                     **common)):
        with_w, without = make(rf), make(bare)
        described = [a.describe() for a in with_w.actions]
        assert any("write the compiler wrapper" in d for d in described)
        assert not any("write the compiler wrapper" in a.describe() for a in without.actions)
        assert with_w.key != without.key
        changed = dataclasses.replace(rf.wrapper, per_file=(("Python/ceval.c", ("-O1",)),))
        other = dataclasses.replace(rf, wrapper=changed)
        assert make(other).key != with_w.key  # only the wrapper's text differs


def test_autotune_iterations_feed_back_the_time_or_the_worst_value(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bisheng" / "bin"
    bin_dir.mkdir(parents=True)
    log = tmp_path / "autotune.log"
    tool = bin_dir / "llvm-autotune"
    tool.write_text(f'#!/bin/sh\necho "$AUTOTUNE_DATADIR $*" >> {log}\n')
    tool.chmod(0o755)
    comp = dataclasses.replace(BISHENG, cc=str(bin_dir / "clang"))
    tune_dir = tmp_path / "tune"
    tune_dir.mkdir()
    (tune_dir / "Makefile").write_text("clean:\n\ttrue\n")
    prof = profile.load("bisheng-kunpeng920", overrides=["bisheng.autotune=2"], environ={})

    def build(tag: str, prev: str, extra: tuple[str, ...], env: dict[str, str]):
        fails = tag == "-autotune" and (tmp_path / "break").exists()
        return [], f"{prev}{tag}", tune_dir, (("false",) if fails else ("true",))

    def run(make_fails: bool) -> list[str]:
        if make_fails:
            (tmp_path / "break").touch()
        data = tmp_path / ("data-b" if make_fails else "data-a")
        plan = autotune.plan(profile=prof, comp=comp, data_dir=data, prev_key="p", build=build,
                             train=lambda python: [stages.Cmd(("true",))])
        stages.execute(stages.BuildPlan(f"t{make_fails}", plan.stages, (), {}), tmp_path / "st", tmp_path / "lg",
                       live=False)
        return [ln for ln in log.read_text().splitlines() if ln.startswith(str(data))]

    calls = run(make_fails=False)
    assert [c.split()[1] for c in calls] == ["minimize", "feedback", "feedback", "finalize"]
    assert all(float(c.split()[2]) < 60 for c in calls if " feedback " in c)
    calls = run(make_fails=True)  # a configuration that does not build: the worst value, and the loop goes on
    assert [c.split(" ", 1)[1] for c in calls] == ["minimize", "feedback 9999", "feedback 9999", "finalize"]
