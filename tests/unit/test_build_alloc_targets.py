"""Unit: the allocator targets (mimalloc, jemalloc, tcmalloc): registry data, pure plans, the compile-line check,
and hostenv finding a hostpgo-built allocator. No compiler and no build tool runs."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from buildsys import cli, engine, targets
from buildsys.core import stages
from buildsys.core.paths import REPO_ROOT, WorkArea
from buildsys.errors import HostpgoError, InputError
from buildsys.pipeline import preloaded, sources, training
from buildsys.systems import cmake
from buildsys.toolchain import Host, profile
from hostenv import allocators, launch
from hostenv import settings as hsettings
from hostenv.errors import AllocatorNotFound, HostSettingsError

HOST = Host("x86_64", "debian")
PINS = {  # what `apt-get source` fetched on Debian 12 (apt-cache showsrc agrees)
    "mimalloc": ("2.0.9", "mimalloc_2.0.9+ds.orig.tar.xz",
                 "cbc9d207ff105ad1f0cb739c378076143a6452b8d0624309cea0abfb040e972b", "mimalloc", "cmake"),
    "jemalloc": ("5.3.0", "jemalloc_5.3.0.orig.tar.bz2",
                 "2db82d1e7119df3e71b7640219b6dfe84789bc0537983c3b7ac4f7189aecfeaa", "jemalloc", "autotools"),
    "tcmalloc": ("2.10", "google-perftools_2.10.orig.tar.gz",
                 "b0dcfe3aca1a8355955f4b415ede43530e3bb91953b6ffdd75c45891070fe0f1", "google-perftools", "autotools"),
}
PGO_STAGES = ["source", "configure-instrumented", "build-instrumented", "train", "merge", "configure", "build",
              "verify", "install"]
PYTHON = Path("/opt/py/bin/python")


def inputs(tmp_path: Path, target: str, name: str = "workload-pgo-lto-short", sets=()) -> preloaded.Inputs:
    spec = targets.get(target)
    prof = profile.load(name, target=target, environ={}, overrides=sets)
    pin = sources.pinned(target)
    return preloaded.Inputs(
        spec=spec, profile=prof, compiler=engine.hypothetical_compiler(prof.toolchain.family), host=HOST,
        work=WorkArea(tmp_path), pin=pin, patches=(),
        tasks=training.resolve(prof.pgo.tasks) if prof.optimize.pgo == "on" else (),
        interpreter=preloaded.Interpreter(PYTHON, "3.11.2", "given in the test"), jobs=2)


def flags_of(stage: stages.Stage) -> dict[str, str]:
    return {f.name: f.value for f in stage.flags}


@pytest.mark.parametrize("target", sorted(PINS))
def test_registry_holds_the_pinned_debian_orig(target: str) -> None:
    version, file, sha, deb, system = PINS[target]
    spec = targets.get(target)
    assert spec.system == system and spec.module().plan is preloaded.plan
    pin = sources.pinned(target)
    assert (pin.version, pin.file, pin.sha256, pin.deb_source, pin.deb_file) == (version, file, sha, deb, file)
    assert pin.url.startswith("https://deb.debian.org/debian/pool/main/") and pin.url.endswith(file)
    assert spec.outputs["allocator"] == target and spec.outputs["allocator"] in allocators.names()
    assert spec.verify["tests"], "each allocator runs a subset of its own tests"


@pytest.mark.parametrize("target", sorted(PINS))
def test_pgo_plan_is_pure_and_has_every_stage(forbid_processes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              target: str) -> None:
    inp = inputs(tmp_path, target)
    forbid_processes()
    plan = engine.plan(inp)
    assert plan.build_id == f"{target}-{PINS[target][0]}-workload-pgo-lto-short"
    assert [s.name for s in plan.stages] == PGO_STAGES
    by = {s.name: s for s in plan.stages}
    spec = targets.get(target)
    ibuild = tmp_path / "build" / f"{plan.build_id}-instrumented"
    # Training: the instrumented library preloaded into the chosen interpreter, one raw profile per process
    # and binary (%p, %m), the runtime's workloads with their digests checked.
    train = by["train"]
    raw = tmp_path / "pgo" / plan.build_id / "raw"
    assert flags_of(train)["LLVM_PROFILE_FILE"] == str(raw / f"{target}-%p-%m.profraw")
    described = [a.describe() for a in train.actions]
    runs = [d for d in described if "-m runtime workload" in d]
    assert len(runs) == 2 and all(f"LD_PRELOAD={ibuild / spec.outputs['build_library']}" in d for d in runs)
    assert all(d.count(str(PYTHON)) == 1 and "--check-golden" in d for d in runs)
    # Verify: the library's own tests, the library mapped, then each verify workload with it preloaded.
    verify = [a.describe() for a in by["verify"].actions]
    obuild = tmp_path / "build" / f"{plan.build_id}-optimized"
    assert len(verify) == len(spec.verify["tests"]) + 1 + 3
    assert sum("--check-golden" in d and f"LD_PRELOAD={obuild / spec.outputs['build_library']}" in d
               for d in verify) == 3
    assert plan.summary["library"] == str(tmp_path / "install" / plan.build_id / spec.outputs["library"])
    assert inp.record().extra["library"] == plan.summary["library"]
    assert inp.record().extra["allocator"] == target


def test_mimalloc_flags_reach_cmake_with_the_level_last(tmp_path: Path) -> None:
    plan = engine.plan(inputs(tmp_path, "mimalloc"))
    by = {s.name: s for s in plan.stages}
    instr, opt = flags_of(by["configure-instrumented"]), flags_of(by["configure"])
    for f in (instr, opt):
        assert f["CMAKE_C_FLAGS_RELEASE"] == "-O3 -DNDEBUG"
        assert "-O" not in " ".join(t for t in f["CMAKE_C_FLAGS"].split() if t.startswith("-O"))
        assert f["CMAKE_EXPORT_COMPILE_COMMANDS"] == "ON" and f["MI_BUILD_TESTS"] == "ON"
    assert instr["CMAKE_C_FLAGS"].startswith("-fprofile-instr-generate=") and "-flto" not in instr["CMAKE_C_FLAGS"]
    assert "-flto=thin" in opt["CMAKE_C_FLAGS"] and "-fprofile-instr-use=" in opt["CMAKE_C_FLAGS"]
    assert opt["CMAKE_SHARED_LINKER_FLAGS"] == "-fuse-ld=lld -flto=thin -O3"
    check = by["build"].actions[-1].describe()
    assert "compile_commands.json" in check and "ends its -O levels with -O3" in check


def test_jemalloc_flags_travel_in_the_user_variables(tmp_path: Path) -> None:
    plan = engine.plan(inputs(tmp_path, "jemalloc", sets=["optimize.opt=O2"]))
    cfg = next(s for s in plan.stages if s.name == "configure")
    channels = {f.channel for f in cfg.flags}
    assert {"CFLAGS", "CXXFLAGS", "LDFLAGS"} <= channels and "CFLAGS_NODIST" not in channels
    argv = cfg.actions[-1].argv
    assert "--disable-cxx" in argv and argv[1] == f"--prefix={tmp_path / 'install' / plan.build_id}"
    assert next(f for f in cfg.flags if f.value == "--disable-cxx").why == "target data (build.configure)"
    env = cfg.actions[-1].env
    assert env["CFLAGS"].split()[0] == "-O2" and "-fprofile-instr-use=" in env["CFLAGS"]
    assert env["CXXFLAGS"] == env["CFLAGS"] and "-flto=thin" in env["LDFLAGS"]


def test_tcmalloc_bootstraps_the_git_tree(tmp_path: Path) -> None:
    plan = engine.plan(inputs(tmp_path, "tcmalloc"))
    cfg = next(s for s in plan.stages if s.name == "configure-instrumented")
    assert cfg.actions[0].describe().endswith("autoreconf -fi (in " + str(
        next(s for s in plan.stages if s.name == "source").actions[0].what.split("rename into ")[1]) + "/"
        + sources.pinned("tcmalloc").topdir + ")")
    assert "--enable-minimal" in cfg.actions[-1].argv
    verify = [a.describe() for a in next(s for s in plan.stages if s.name == "verify").actions]
    assert "'TESTS=tcmalloc_minimal_unittest tcmalloc_minimal_large_unittest'" in verify[0]


def test_plain_profile_has_no_training_and_no_interpreter_for_own_tests(tmp_path: Path) -> None:
    plan = engine.plan(inputs(tmp_path, "mimalloc", name="lto", sets=["verify.workloads=[]"]))
    assert [s.name for s in plan.stages] == ["source", "configure", "build", "verify", "install"]
    verify = next(s for s in plan.stages if s.name == "verify")
    assert all("runtime" not in a.describe() for a in verify.actions) and len(verify.actions) == 3


def test_library_target_notes_what_does_not_apply(tmp_path: Path) -> None:
    plan = engine.plan(inputs(tmp_path, "mimalloc", name="workload-pgo-lto-tcmalloc"))
    assert any("optimize.allocator = 'tcmalloc' does not apply" in n for n in plan.notes)


def _commands(tmp_path: Path, *lines: list[str]) -> Path:
    src = tmp_path / "src"
    path = tmp_path / "compile_commands.json"
    path.write_text(json.dumps([{"file": f"{src}/f{i}.c", "directory": str(tmp_path), "command": " ".join(argv)}
                                for i, argv in enumerate(lines)]))
    return src


def test_compile_line_check_accepts_the_profile_and_refuses_a_later_level(tmp_path: Path) -> None:
    good = ["cc", "-flto=thin", "-O3", "-DNDEBUG", "-Wall", "-c", "f.c"]
    src = _commands(tmp_path, good, good)
    got = cmake.check_compile_commands(tmp_path / "compile_commands.json", opt="-O3", required=["-flto=thin"],
                                       source_root=src)
    assert got == {"compile_lines_checked": 2, "last_level": "-O3", "required": ["-flto=thin"]}
    src = _commands(tmp_path, good, ["cc", "-flto=thin", "-O3", "-DNDEBUG", "-O2", "-c", "f.c"])
    with pytest.raises(HostpgoError, match="last optimization level is -O2, not the profile's -O3"):
        cmake.check_compile_commands(tmp_path / "compile_commands.json", opt="-O3", required=[], source_root=src)
    src = _commands(tmp_path, ["cc", "-O3", "-c", "f.c"])
    with pytest.raises(HostpgoError, match="lacks the profile's -fprofile-instr-use=x"):
        cmake.check_compile_commands(tmp_path / "compile_commands.json", opt="-O3",
                                     required=["-fprofile-instr-use=x"], source_root=src)


def test_interpreter_choice(tmp_path: Path) -> None:
    work = WorkArea(tmp_path)
    got = preloaded.choose_interpreter(sys.executable, work)
    assert got.python == Path(sys.executable) and got.version == ".".join(map(str, sys.version_info[:3]))
    assert got.pythonpath == (REPO_ROOT,) and "as given" in got.chosen
    with pytest.raises(InputError, match="pgo.interpreter = 'optimized': no optimized CPython build"):
        preloaded.choose_interpreter("optimized", work)
    with pytest.raises(InputError, match="does not exist"):
        preloaded.choose_interpreter(str(tmp_path / "nope" / "python"), work)
    with pytest.raises(profile.ProfileError, match="pgo.interpreter"):
        profile.load("lto", environ={}, overrides=["pgo.interpreter=python3"])


def test_targets_command_lists_the_allocators(capsys: pytest.CaptureFixture) -> None:
    assert cli.main(["targets", "--json"]) == 0
    rows = {r["target"]: r for r in json.loads(capsys.readouterr().out)}
    for target, (version, _f, _s, _d, system) in PINS.items():
        assert rows[target]["system"] == system and rows[target]["versions"] == [version]
        assert isinstance(rows[target]["buildable"], bool) and rows[target]["why"]


def _built(root: Path, allocator: str = "mimalloc") -> Path:
    prefix = root / "mimalloc-2.0.9-p"
    lib = prefix / "lib" / "libmimalloc.so.2"
    lib.parent.mkdir(parents=True)
    lib.write_bytes(b"\x7fELF")
    (prefix / "hostpgo-manifest.json").write_text(json.dumps({
        "build_id": prefix.name, "target": "mimalloc", "version": "2.0.9", "allocator": allocator,
        "library": str(lib)}))
    return lib


def test_hostenv_finds_a_hostpgo_built_allocator(tmp_path: Path) -> None:
    lib = _built(tmp_path)
    got = allocators.find_built("mimalloc", "mimalloc-2.0.9-p", install_root=tmp_path)
    assert got.library == lib and got.package == "hostpgo:mimalloc-2.0.9-p" and got.package_version == "2.0.9"
    assert allocators.find_built("mimalloc", str(lib.parent.parent)).library == lib  # a prefix path
    with pytest.raises(HostSettingsError, match="is a build of 'mimalloc', not of allocator 'jemalloc'"):
        allocators.find_built("jemalloc", "mimalloc-2.0.9-p", install_root=tmp_path)
    with pytest.raises(AllocatorNotFound, match="build it first: python -m buildsys build mimalloc"):
        allocators.find_built("mimalloc", "mimalloc-2.0.9-other", install_root=tmp_path)


def test_host_settings_allocator_build_is_preloaded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    lib = _built(tmp_path / "install")
    monkeypatch.setenv("HOSTPGO_HOME", str(tmp_path))
    s = hsettings.resolve("mimalloc", sets=["allocator.build=mimalloc-2.0.9-p"], env={})
    assert s.allocator.build == "mimalloc-2.0.9-p"
    delta = launch.process_env(s, {}, find=lambda name: pytest.fail("the distribution's was looked up"))
    assert delta["LD_PRELOAD"] == str(lib)
    assert "| `build` |" in hsettings.reference()


def test_optimize_allocator_build_links_the_hostpgo_build_with_an_rpath(tmp_path: Path) -> None:
    from buildsys.targets import cpython
    lib = _built(tmp_path / "install")
    (tmp_path / "install" / "mimalloc-2.0.9-p").rename(tmp_path / "install" / "mimalloc-2.0.9-workload-pgo-lto")
    doc_path = tmp_path / "install" / "mimalloc-2.0.9-workload-pgo-lto" / "hostpgo-manifest.json"
    doc = json.loads(doc_path.read_text())
    lib = tmp_path / "install" / "mimalloc-2.0.9-workload-pgo-lto" / "lib" / "libmimalloc.so.2"
    # The manifest still names the old place: the library is found relative to the prefix it records.
    doc.update(prefix=str(tmp_path / "install" / "mimalloc-2.0.9-p"), build_id="mimalloc-2.0.9-workload-pgo-lto")
    doc_path.write_text(json.dumps(doc))
    found = allocators.find_built_for_profile("mimalloc", "workload-pgo-lto", tmp_path / "install")
    assert found.library == lib and found.package == "hostpgo:mimalloc-2.0.9-workload-pgo-lto"
    assert allocators.link_flags(found)[-1] == f"-Wl,-rpath,{lib.parent}"
    distro = allocators.Allocator("mimalloc", Path("/usr/lib/x86_64-linux-gnu/libmimalloc.so.2"), "libmimalloc2.0")
    assert not any("rpath" in f for f in allocators.link_flags(distro))
    assert str(lib.resolve()) in allocators.mapped_check(found)[1]
    prof = profile.load("workload-pgo-lto", environ={}, overrides=["optimize.allocator=mimalloc",
                                                                   "optimize.allocator_build=workload-pgo-lto"])
    inp = cpython.Inputs(profile=prof, compiler=engine.hypothetical_compiler("clang"), host=HOST,
                         work=WorkArea(tmp_path), pin=sources.pinned("cpython"), patches=(),
                         tasks=training.resolve(prof.pgo.tasks), jobs=2, allocator=found)
    cfg = next(s for s in engine.plan(inp).stages if s.name == "configure")
    ld = [f.value for f in cfg.flags if f.channel == "LDFLAGS_NODIST"]
    assert str(lib) in ld and f"-Wl,-rpath,{lib.parent}" in ld
    with pytest.raises(AllocatorNotFound, match="mimalloc-VERSION-other"):
        allocators.find_built_for_profile("mimalloc", "other", tmp_path / "install")


def test_image_ships_the_allocator_build_its_settings_name(tmp_path: Path) -> None:
    from buildsys import image
    from buildsys.core import manifest as manifest_mod
    work = WorkArea(tmp_path)
    _built(work.install)
    prefix = work.install / "cpython-3.11.2-workload-pgo-lto"
    prefix.mkdir(parents=True)
    doc = {"schema": manifest_mod.SCHEMA, "build_id": prefix.name, "target": "cpython", "version": "3.11.2",
           "prefix": str(prefix), "profile": {"name": "workload-pgo-lto", "optimize": {"shared": False}},
           "toolchain": {}, "source": {}, "patches": [], "flags": {}, "training": [], "profile_data": None,
           "stages": {}, "written": "x"}
    (prefix / manifest_mod.FILE_NAME).write_text(json.dumps(doc))
    (work.deps / "runtime-py3.11-abc").mkdir(parents=True)
    settings = tmp_path / "built-mimalloc.toml"
    settings.write_text('[allocator]\nname = "mimalloc"\nbuild = "mimalloc-2.0.9-p"\n')
    src = (image.AptSource("http://d/debian", "bookworm", ("main",)),)
    inp = image.prepare("workload-pgo-lto", settings=str(settings), work=work, host_check=lambda: None,
                        scan_libraries=False, sources=src)
    assert inp.allocator_builds == ((work.install / "mimalloc-2.0.9-p").resolve(),)
    import dataclasses
    keys = {s.name: s.key for s in image.plan(inp).stages}
    without = {s.name: s.key for s in image.plan(dataclasses.replace(inp, allocator_builds=())).stages}
    assert keys["image-assemble"] != without["image-assemble"] and keys["image-base"] == without["image-base"]
    bad = tmp_path / "path.toml"
    bad.write_text(f'[allocator]\nname = "mimalloc"\nbuild = "{work.install / "mimalloc-2.0.9-p"}"\n')
    with pytest.raises(image.ImageError, match="is a path; name the build"):
        image.prepare("workload-pgo-lto", settings=str(bad), work=work, host_check=lambda: None,
                      scan_libraries=False, sources=src)
    doc["allocator"] = {"name": "mimalloc", "library": "/x/lib/libmimalloc.so.2", "package": "hostpgo:mimalloc-2"}
    (prefix / manifest_mod.FILE_NAME).write_text(json.dumps(doc))
    with pytest.raises(image.ImageError, match="absolute rpath, which the image does not relocate yet"):
        image.prepare("workload-pgo-lto", settings="mimalloc", work=work, host_check=lambda: None,
                      scan_libraries=False, sources=src)


def test_auto_interpreter_prefers_the_pipelines_optimized_build(tmp_path: Path) -> None:
    from buildsys.core import manifest as manifest_mod
    work = WorkArea(tmp_path)
    build = work.install / f"cpython-3.11.2-{engine.DEFAULT_OPTIMIZED_PROFILE}"
    (build / "bin").mkdir(parents=True)
    (build / "bin" / "python3").symlink_to(sys.executable)
    (work.deps / "runtime-py3.11-abc").mkdir(parents=True)
    doc = {"schema": manifest_mod.SCHEMA, "build_id": build.name, "target": "cpython", "version": "3.11.2",
           "prefix": str(build), "profile": {}, "toolchain": {}, "source": {}, "patches": [], "flags": {},
           "training": [], "profile_data": None, "stages": {}, "written": "x",
           "allocator": {"name": "tcmalloc", "library": "/usr/lib/x/libtcmalloc_minimal.so.4"}}
    (build / manifest_mod.FILE_NAME).write_text(json.dumps(doc))
    got = preloaded.choose_interpreter("auto", work)
    assert got.python == build / "bin" / "python3"
    assert got.pythonpath == (work.deps / "runtime-py3.11-abc", REPO_ROOT)
    assert "the pipeline's optimized build" in got.chosen and "it links tcmalloc" in got.chosen
