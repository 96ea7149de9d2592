"""Unit: the MindSpore and Ray recipes' plans (no compiler, no build runs), how they recognise a checkout, the
target build-option door, and what each says its flags do not reach."""

from __future__ import annotations

import shlex
import shutil
from pathlib import Path

import pytest

from buildsys import cli, engine, targets
from buildsys.core import stages
from buildsys.core.paths import WorkArea
from buildsys.errors import HostpgoError, InputError
from buildsys.pipeline import wheels
from buildsys.systems import cmake
from buildsys.targets import mindspore, ray
from buildsys.toolchain import Compiler, Host, Toolchains

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
MS_TREE = FIXTURES / "mindspore_tree"
RAY_TREE = FIXTURES / "ray_tree"
CLANG = Compiler("clang", "/usr/bin/clang-22", "/usr/bin/clang++-22", "22.1.8", "clang version 22.1.8",
                 {"profdata": "/usr/bin/llvm-profdata-22", "ar": "/usr/bin/llvm-ar-22", "lld": "/usr/bin/ld.lld-22",
                  "ranlib": "/usr/bin/llvm-ranlib-22", "nm": "/usr/bin/llvm-nm-22"})
GCC = Compiler("gcc", "/usr/bin/gcc-12", "/usr/bin/g++-12", "12.2.0", "gcc (Debian 12.2.0-14) 12.2.0",
               {"ar": "/usr/bin/gcc-ar-12"})
TOOLCHAINS = Toolchains(Host("x86_64", "debian"), (CLANG, GCC))


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    cache = tmp_path / "mslibs"
    (cache / "pkg").mkdir(parents=True)
    monkeypatch.setenv("MSLIBS_CACHE_PATH", str(cache))
    monkeypatch.delenv("MSLIBS_SERVER", raising=False)
    return cache


def _prepare(tmp_path: Path, target: str, profile: str = "workload-pgo-lto", source: Path | None = None, **args):
    return engine.prepare(profile, target=target, user_source=source, work=WorkArea(tmp_path / "work"),
                          detected=TOOLCHAINS, jobs=4, target_args={"python": "/usr/bin/python3", **args},
                          overrides=["verify.workloads=[]"])


@pytest.mark.parametrize(("target", "files"), [
    ("mindspore", "build.sh, CMakeLists.txt, cmake/options.cmake, version.txt (version.txt states the version)"),
    ("ray", "python/setup.py, python/ray/_version.py, .bazelrc, BUILD.bazel (python/ray/_version.py states the "
            "version)")])
def test_no_source_exits_2_naming_source_and_the_tree(target: str, files: str, capsys: pytest.CaptureFixture) -> None:
    assert cli.main(["build", target, "--profile", "baseline", "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert f"build {target} needs --source DIR" in err and files in err


def test_a_tree_that_is_not_a_checkout_names_what_is_missing(tmp_path: Path, offline: Path) -> None:
    (tmp_path / "tree").mkdir()
    (tmp_path / "tree" / "build.sh").write_text("#!/bin/sh\n")
    with pytest.raises(InputError, match="not a mindspore checkout, missing CMakeLists.txt, cmake/options.cmake, "
                                         "version.txt"):
        _prepare(tmp_path, "mindspore", source=tmp_path / "tree")
    bad = tmp_path / "badver"
    shutil.copytree(MS_TREE, bad)
    (bad / "version.txt").write_text("master\n")
    with pytest.raises(InputError, match="version.txt: no version found"):
        _prepare(tmp_path, "mindspore", source=bad)


def test_mindspore_needs_a_dependency_mirror_or_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MSLIBS_SERVER", raising=False)
    monkeypatch.delenv("MSLIBS_CACHE_PATH", raising=False)
    with pytest.raises(InputError, match="set MSLIBS_SERVER to a mirror of those archives, or MSLIBS_CACHE_PATH"):
        _prepare(tmp_path, "mindspore", source=MS_TREE)
    monkeypatch.setenv("MSLIBS_CACHE_PATH", str(tmp_path / "nothing"))
    with pytest.raises(InputError, match="MSLIBS_CACHE_PATH=.*not a prepared dependency cache"):
        _prepare(tmp_path, "mindspore", source=MS_TREE)
    monkeypatch.setenv("MSLIBS_SERVER", "http://mirror.example/mslibs")
    monkeypatch.delenv("MSLIBS_CACHE_PATH")
    assert _prepare(tmp_path, "mindspore", source=MS_TREE).environ == {"MSLIBS_SERVER": "http://mirror.example/mslibs"}


def test_target_options_are_declared_data(tmp_path: Path, capsys: pytest.CaptureFixture, offline: Path) -> None:
    assert targets.get("mindspore").cli_args["device"]["choices"] == ["cpu", "ascend"]
    args = cli.parser().parse_args(["build", "mindspore", "--profile", "baseline", "--device", "ascend"])
    assert cli._target_args(args) == {"device": "ascend"}
    assert cli.main(["build", "cpython", "--profile", "baseline", "--device", "cpu", "--dry-run"]) == 2
    assert "--device does not apply to target 'cpython' (taken by: mindspore)" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.parser().parse_args(["build", "mindspore", "--profile", "baseline", "--device", "gpu"])
    assert _prepare(tmp_path, "mindspore", source=MS_TREE).options == {"device": "cpu"}  # the declared default
    with pytest.raises(InputError, match="--device ascend needs CANN"):
        _prepare(tmp_path, "mindspore", source=MS_TREE, device="ascend")


def test_the_default_interpreter_is_the_same_profiles_cpython_build(tmp_path: Path, offline: Path) -> None:
    with pytest.raises(InputError, match=r"no optimized interpreter for profile 'workload-pgo-lto': .*"
                                         r"cpython-3.11.2-workload-pgo-lto/bin/python3 does not exist"):
        engine.prepare("workload-pgo-lto", target="mindspore", user_source=MS_TREE, work=WorkArea(tmp_path),
                       detected=TOOLCHAINS)
    py = tmp_path / "install" / "cpython-3.11.2-workload-pgo-lto" / "bin" / "python3"
    py.parent.mkdir(parents=True)
    py.write_text("#!/bin/sh\n")
    inp = engine.prepare("workload-pgo-lto", target="mindspore", user_source=MS_TREE, work=WorkArea(tmp_path),
                         detected=TOOLCHAINS)
    assert inp.python == py and inp.python_origin == "hostpgo build cpython-3.11.2-workload-pgo-lto"


def test_mindspore_plan_stages_flags_and_what_they_do_not_reach(forbid_processes, tmp_path: Path, offline: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    inp = _prepare(tmp_path, "mindspore", source=MS_TREE)
    assert inp.checkout.version == "0.1.0" and [t.name for t in inp.tasks] == ["runtime-workloads"]
    forbid_processes()
    plan = engine.plan(inp)
    assert [s.name for s in plan.stages] == ["source", "runtime-deps", "build-env", "build-instrumented", "train",
                                             "merge", "build", "verify", "install"]
    st = {s.name: s for s in plan.stages}
    rule = [(f.channel, f.name, f.value) for f in st["build"].flags]
    assert ("toolchain-file", "CMAKE_CXX_COMPILE_OBJECT", "-O3") in rule
    assert ("toolchain-file", "CMAKE_CXX_COMPILE_OBJECT", "-Wno-error") in rule  # clang: the -Werror policy
    assert any(v.startswith("-fprofile-instr-use=") and v.endswith(".profdata") for _c, _n, v in rule)
    assert any(c == "env" and n == "CMAKE_TOOLCHAIN_FILE" for c, n, _v in rule)
    assert ("env", "MSLIBS_CACHE_PATH", str(offline)) in rule
    build = next(a for a in st["build"].actions if isinstance(a, stages.Cmd))
    assert build.argv[1:] == (str(next(iter(st["source"].outputs)) / "build.sh"), "-e", "cpu", "-j", "4")
    assert "CXXFLAGS" not in build.env and "CFLAGS" not in build.env
    text = stages.render_plan(plan)
    assert "do not reach the third-party libraries mindspore_add_pkg fetches" in text
    assert "entry point: build.sh" in text and "smoke tests: tests/st/test_cpu_smoke.py" in text
    assert "every compile line's last -O is -O3 and carries -fprofile-instr-use" in text


def test_mindspore_on_gcc_reports_the_tested_range(tmp_path: Path, offline: Path) -> None:
    plan = engine.plan(_prepare(tmp_path, "mindspore", profile="baseline", source=MS_TREE))
    assert "MindSpore warns on GCC newer than 11.3 and this build uses GCC 12.2.0" in " ".join(plan.notes)
    assert [s.name for s in plan.stages] == ["source", "build-env", "build", "verify", "install"]
    build = next(s for s in plan.stages if s.name == "build")
    assert not any(f.value == "-Wno-error" for f in build.flags)  # GCC plain build: MindSpore's -Werror stays


def test_toolchain_file_puts_the_flags_after_the_projects_and_only_on_its_tree(tmp_path: Path) -> None:
    text = cmake.toolchain_file(tools={"CC": "/cc", "CXX": "/cxx"}, compile_tail=["-O3", "-Wno-error"],
                                link=["-fuse-ld=lld"], source_dir=tmp_path)
    assert f'if(CMAKE_SOURCE_DIR STREQUAL "{tmp_path}")' in text
    assert ('set(CMAKE_CXX_COMPILE_OBJECT "<CMAKE_CXX_COMPILER> <DEFINES> <INCLUDES> <FLAGS> -O3 -Wno-error '
            '-o <OBJECT> -c <SOURCE>")') in text
    assert 'set(CMAKE_SHARED_LINKER_FLAGS_INIT "-fuse-ld=lld")' in text
    assert text.index('set(CMAKE_CXX_COMPILER "/cxx")') < text.index("if(CMAKE_SOURCE_DIR")  # compilers for all


def test_compile_line_check_refuses_a_lost_level(tmp_path: Path) -> None:
    cc = tmp_path / "compile_commands.json"
    cc.write_text('[{"file": "a.cc", "command": "clang++ -O3 -fprofile-instr-use=x -O2 -c a.cc"}]')
    with pytest.raises(HostpgoError, match="the profile's -O3 lost on 1 .*a.cc: last level -O2"):
        mindspore.check_compile_lines(cc, "-O3", "-fprofile-instr-use")
    cc.write_text('[{"file": "a.cc", "command": "clang++ -O2 -O3 -fprofile-instr-use=x -c a.cc"}]')
    assert mindspore.check_compile_lines(cc, "-O3", "-fprofile-instr-use")["compile_lines"] == 1


def test_ray_plan_channels_order_and_what_never_sees_copt(forbid_processes, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    inp = _prepare(tmp_path, "ray", source=RAY_TREE)
    assert inp.checkout.version == "0.1.0" and inp.options == {"channel": "bazelrc"}
    assert [t.name for t in inp.tasks] == ["ray-actor-calls"]  # ray-decode is not registered here
    forbid_processes()
    plan = engine.plan(inp)
    st = {s.name: s for s in plan.stages}
    values = [f.value for f in st["build"].flags if f.channel == "bazelrc"]
    assert values.index("--config=llvm") < values.index("--action_env=CC=/usr/bin/clang-22")  # ours after llvm's
    assert values.index("--compilation_mode=opt") < values.index("--copt=-O3")
    assert "--host_copt=-O3" in values and not any(v.startswith("--host_copt=-fprofile") for v in values)
    assert any(v.startswith("--copt=-fprofile-instr-use=") for v in values)
    assert any(v.startswith("--linkopt=-flto=thin") for v in values)
    pip = next(a for a in st["build"].actions if isinstance(a, stages.Cmd))
    assert pip.argv[1:7] == ("-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index")
    assert pip.env["SKIP_THIRDPARTY_INSTALL"] == "1" and "BAZEL_ARGS" not in pip.env
    text = stages.render_plan(plan)
    assert "RocksDB where it is a cmake() rule, jemalloc's configure_make, redis's make" in text
    assert "stand-in: ray-decode, the runtime's Ray workload, is not registered yet" in text
    verify = [a.describe() for a in st["verify"].actions]
    assert any("ray_actor_calls.py --actors 2 --calls 20" in d for d in verify)
    assert not any("runtime workload" in d for d in verify)  # no golden digest until ray-decode lands


def test_ray_without_the_try_import_uses_bazel_args(tmp_path: Path) -> None:
    tree = tmp_path / "ray"
    shutil.copytree(RAY_TREE, tree)
    (tree / ".bazelrc").write_text("build --compilation_mode=opt\n")
    inp = _prepare(tmp_path, "ray", profile="baseline", source=tree)
    assert inp.options == {"channel": "BAZEL_ARGS"}
    st = next(s for s in engine.plan(inp).stages if s.name == "build")
    pip = next(a for a in st.actions if isinstance(a, stages.Cmd))
    args = shlex.split(pip.env["BAZEL_ARGS"])  # what setup.py does with it
    assert "--copt=-O3" in args and "--repo_env=CC=/usr/bin/gcc-12" in args and "--config=llvm" not in args
    assert not any(a.startswith("--output_user_root") for a in args)  # a startup option: not after `build`
    assert {f.channel for f in st.flags} >= {"BAZEL_ARGS", "startup", "env"}


def test_aquery_text_is_parsed_into_target_and_argv() -> None:
    text = """action 'Compiling a.cc'
  Mnemonic: CppCompile
  Target: //:lib
  Command Line: (exec /usr/bin/clang-22 \\
    -O2 \\
    '-frandom-seed=x y' \\
    -O3 \\
    -c \\
    a.cc)
action 'Compiling b.cc'
  Target: @zlib//:z
  Command Line: (exec /usr/bin/clang-22 \\
    -O3 \\
    -O2 \\
    -c \\
    b.cc)
"""
    got = ray.parse_aquery(text)
    assert got == [("//:lib", ["/usr/bin/clang-22", "-O2", "-frandom-seed=x y", "-O3", "-c", "a.cc"]),
                   ("@zlib//:z", ["/usr/bin/clang-22", "-O3", "-O2", "-c", "b.cc"])]
    info = ray.check_compile_actions(got, "-O3")
    assert info["workspace_actions"] == 1 and info["external_own_level"] == ["@zlib//:z"]
    with pytest.raises(HostpgoError, match="-O3 lost on //:lib"):
        ray.check_compile_actions([("//:lib", ["cc", "-O3", "-O2"])], "-O3")


def test_checkout_copy_skips_build_outputs_and_vcs(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    shutil.copytree(MS_TREE, tree)
    (tree / "build" / "mindspore").mkdir(parents=True)
    (tree / ".git").mkdir()
    (tree / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (tree / ".git" / "refs" / "heads").mkdir(parents=True)
    (tree / ".git" / "refs" / "heads" / "main").write_text("0123abcd" * 5 + "\n")
    co = wheels.checkout(tree, "0.1.0", ("version.txt",))
    assert co.revision == "0123abcd" * 5
    before = co.listing
    (tree / "build" / "mindspore" / "junk.o").write_text("x")
    assert wheels.listing_digest(tree) == before  # build/ does not count
    (tree / "ccsrc" / "kernels.cc").write_text("// changed\n")
    assert wheels.listing_digest(tree) != before
