"""Unit: build systems' channel models and pure argument computation (no build tool runs)."""

from __future__ import annotations

from pathlib import Path

import pytest

from buildsys import engine, systems
from buildsys.systems import autotools, bazel, cmake, meson, pep517
from buildsys.toolchain import Host, flags, profile

HOST = Host("x86_64", "debian")


def resolved(name: str = "generic-pgo-lto", variant: str = "optimized", **kw) -> flags.ResolvedFlags:
    prof = profile.load(name, environ={}, overrides=kw.pop("set", ()))
    return flags.resolve(prof, engine.hypothetical_compiler(prof.toolchain.family), HOST, variant,
                         profdata="/store/x.profdata", **kw)


def test_every_system_module_has_its_channels_and_tools() -> None:
    for name in systems.NAMES:
        mod = systems.get(name)
        assert mod.NAME == name and mod.CHANNELS and isinstance(mod.TOOLS, tuple)
    with pytest.raises(systems.InputError, match="unknown build system 'scons'"):
        systems.get("scons")


def test_autotools_channels_are_cpythons() -> None:
    rf = resolved()
    flagset = autotools.channel_flags(rf, ["--prefix=/p", "--disable-shared"], {})
    assert {f.channel for f in flagset} <= set(autotools.CHANNELS)
    env = autotools.configure_env(rf, {"LDFLAGS": "-Wl,-rpath,/p/lib"})
    assert env["CFLAGS_NODIST"].startswith("-O3 ") and "-flto=thin" in env["LDFLAGS_NODIST"]
    assert "CFLAGS" not in env and env["LDFLAGS"] == "-Wl,-rpath,/p/lib"
    assert autotools.make_argv(4, {"LDFLAGS_NODIST": "-flto"}) == ("make", "-j4", "LDFLAGS_NODIST=-flto")
    assert autotools.install_argv(Path("/d"), {}) == ("make", "install", "DESTDIR=/d")


@pytest.mark.parametrize("config, cmake_default, level", [("Release", "-O3", "O2"), ("RelWithDebInfo", "-O2", "O3")])
def test_cmake_level_goes_into_the_config_flags_so_no_later_level_wins(config: str, cmake_default: str,
                                                                       level: str) -> None:
    rf = resolved(set=[f"optimize.opt={level}"])
    opt = f"-{level}"
    entries = cmake.cache_entries(rf, opt=opt, config=config)
    assert entries["CMAKE_BUILD_TYPE"][0] == config
    for lang in ("C", "CXX"):
        flags_all = entries[f"CMAKE_{lang}_FLAGS"][0].split()
        flags_cfg = entries[f"CMAKE_{lang}_FLAGS_{config.upper()}"][0].split()
        # CMake's compile line is CMAKE_<LANG>_FLAGS then CMAKE_<LANG>_FLAGS_<CONFIG>: the configuration's
        # default (cmake_default) is replaced, and the profile's level is the last -O on the line.
        line = [*flags_all, *flags_cfg]
        assert [f for f in line if f.startswith("-O")] == [opt]
        assert cmake_default not in line and flags_cfg == [opt, "-DNDEBUG"]
        assert "-fprofile-instr-use=/store/x.profdata" in flags_all and "-flto=thin" in flags_all
    assert "-fuse-ld=lld" in entries["CMAKE_SHARED_LINKER_FLAGS"][0]
    assert entries["CMAKE_AR"][0] == "llvm-ar" and entries["CMAKE_C_COMPILER"][0] == "clang"
    argv = cmake.configure_argv(Path("/s"), Path("/b"), entries, prefix=Path("/p"), generator="Ninja")
    assert argv[:7] == ["cmake", "-S", "/s", "-B", "/b", "-G", "Ninja"] and "-DCMAKE_INSTALL_PREFIX=/p" in argv
    assert f"-DCMAKE_C_FLAGS_{config.upper()}={opt} -DNDEBUG" in argv
    assert {f.channel for f in cmake.channel_flags(entries)} == {"cmake-cache"}
    assert cmake.build_argv(Path("/b"), 2) == ["cmake", "--build", "/b", "--config", "Release", "--parallel", "2"]


def test_meson_switches_its_own_levels_off_and_passes_ours() -> None:
    rf = resolved()
    opts = meson.setup_options(rf)
    assert (opts["buildtype"][0], opts["b_lto"][0], opts["b_pgo"][0]) == ("plain", "false", "off")
    assert opts["c_args"][0].split()[0] == "-O3" and "-flto=thin" in opts["c_link_args"][0].split()
    argv = meson.setup_argv(Path("/s"), Path("/b"), opts, prefix=Path("/p"))
    assert argv[:4] == ["meson", "setup", "/b", "/s"] and "-Dbuildtype=plain" in argv and "--prefix=/p" in argv
    chans = {f.channel for f in meson.channel_flags(opts, meson.environment(rf))}
    assert chans == {"setup-arg", "env"}


def test_pep517_environment_and_config_settings() -> None:
    rf = resolved()
    env = pep517.environment(rf, "setuptools")
    # setuptools >= 75.7 replaces sysconfig's CFLAGS with an environment CFLAGS: the flags go in CPPFLAGS.
    assert "CFLAGS" not in env and env["CPPFLAGS"].split()[0] == "-O3" and env["CC"] == "clang"
    assert "-flto=thin" in env["LDFLAGS"]
    assert set(pep517.environment(rf, "meson-python")) == set(rf.tools)
    assert pep517.config_settings("setuptools", rf, opt="-O3") == []
    skb = dict(pep517.config_settings("scikit-build-core", rf, opt="-O3", build_dir=Path("/b")))
    assert skb["cmake.define.CMAKE_C_FLAGS_RELEASE"] == "-O3 -DNDEBUG" and skb["cmake.build-type"] == "Release"
    assert skb["build-dir"] == "/b" and skb["build.verbose"] == "true"
    mp = pep517.config_settings("meson-python", rf, opt="-O3", build_dir=Path("/b"))
    assert ("setup-args", "-Dbuildtype=plain") in mp and ("build-dir", "/b") in mp and ("compile-args", "-v") in mp
    argv = pep517.wheel_argv("/py", Path("/src"), Path("/out"), [("k", "v")])
    assert argv[:5] == ["/py", "-m", "build", "--wheel", "--no-isolation"] and "-Ck=v" in argv
    assert argv[-1] == "/src"
    with pytest.raises(ValueError, match="unknown PEP 517 backend"):
        pep517.config_settings("flit", rf, opt="-O3")


def test_bazel_copts_come_after_its_compilation_mode() -> None:
    rf = resolved()
    args = bazel.argv(rf)
    assert args[0] == "--compilation_mode=opt" and "--copt=-O3" in args and "--linkopt=-flto=thin" in args
    assert args.index("--copt=-O3") > args.index("--compilation_mode=opt")
    rc = bazel.bazelrc(rf, config="hostpgo")
    assert rc.splitlines()[0] == "build:hostpgo --compilation_mode=opt" and "build:hostpgo --copt=-O3\n" in rc
    assert bazel.build_argv(["//:all"], rf)[:2] == ["bazel", "build"]
    assert bazel.build_argv(["//:all"], rf)[-1] == "//:all"
    assert {f.channel for f in bazel.channel_flags(rf)} <= set(bazel.CHANNELS)
