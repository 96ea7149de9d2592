"""Unit: feature -> flag mapping per family, compiler selection, host/Kunpeng detection (no compiler run)."""

from __future__ import annotations

import pytest

from buildsys import toolchain
from buildsys.errors import ToolchainError
from buildsys.toolchain import Compiler, Host, Toolchains, flags, profile

X86 = Host("x86_64", "debian")
KUNPENG = Host("aarch64", "openEuler", kunpeng="tsv110")
CLANG = Compiler("clang", "/usr/bin/clang-22", "/usr/bin/clang++-22", "22.1.8", "Debian clang version 22.1.8",
                 {r: f"/usr/bin/{n}-22" for r, n in toolchain.LLVM_TOOLS.items()})
BISHENG = Compiler("bisheng", "/opt/bisheng/bin/clang", "/opt/bisheng/bin/clang++", "15.0.4",
                   "BiSheng Enterprise 4.1.0 clang version 15.0.4",
                   {r: f"/opt/bisheng/bin/{n}" for r, n in toolchain.LLVM_TOOLS.items()})
GCC = Compiler("gcc", "/usr/bin/gcc-12", "/usr/bin/g++-12", "12.2.0", "gcc-12 (Debian 12.2.0) 12.2.0",
               {"ar": "/usr/bin/gcc-ar-12", "ranlib": "/usr/bin/gcc-ranlib-12", "nm": "/usr/bin/gcc-nm-12"})


def values(fs) -> list[str]:
    return [f.value for f in fs]


def resolve(name: str, comp: Compiler, variant: str, host: Host = X86, **kw) -> flags.ResolvedFlags:
    return flags.resolve(profile.load(name, environ={}, overrides=kw.pop("set", ())), comp, host, variant,
                         build_dir="/b", raw_pattern="/raw/x-%p-%m.profraw", raw_dir="/raw",
                         profdata="/p/merged", **kw)


def test_clang_pgo_stages() -> None:
    instr = resolve("generic-pgo-lto", CLANG, "instrumented")
    assert "-fprofile-instr-generate=/raw/x-%p-%m.profraw" in values(instr.cflags)
    assert "-fprofile-instr-generate=/raw/x-%p-%m.profraw" in values(instr.ldflags)
    assert "-flto=thin" not in values(instr.cflags)  # no LTO in the instrumented build
    opt = resolve("generic-pgo-lto", CLANG, "optimized")
    # -gdwarf-4 (flags.cflags of lto.toml): debug info valgrind 3.19 can read; code generation unchanged.
    assert values(opt.cflags) == ["-O3", "-flto=thin", "-fprofile-instr-use=/p/merged", "-gdwarf-4"]
    assert values(opt.ldflags) == ["-fuse-ld=lld", "-flto=thin", "-O3"]
    assert opt.tools["AR"].endswith("llvm-ar-22")
    plain = resolve("generic-pgo-lto", CLANG, "plain")
    assert not any("profile" in v for v in values(plain.cflags) + values(plain.ldflags))


def test_gcc_pgo_stages() -> None:
    instr = resolve("gcc-pgo-lto", GCC, "instrumented")
    assert values(instr.cflags) == ["-O3", "-fprofile-generate=/raw", "-fprofile-update=atomic",
                                    "-fprofile-prefix-path=/b"]
    opt = resolve("gcc-pgo-lto", GCC, "optimized")
    assert values(opt.cflags) == ["-O3", "-flto=auto", "-fprofile-use=/p/merged", "-fprofile-partial-training",
                                  "-fprofile-prefix-path=/b"]
    assert opt.tools["AR"] == "/usr/bin/gcc-ar-12"


def test_gcc_thin_lto_is_mapped_with_a_note() -> None:
    r = resolve("generic-pgo-lto", GCC, "optimized", set=["toolchain.family=gcc", "optimize.linker=default"])
    assert "-flto=auto" in values(r.cflags)
    assert any("GCC has no ThinLTO" in n for n in r.notes)


def test_bisheng_options_only_on_bisheng() -> None:
    on_clang = resolve("bisheng-kunpeng920", CLANG, "optimized", host=KUNPENG)
    assert "-force-customized-pipeline=true" not in values(on_clang.cflags)
    assert any("BiSheng-only" in n and "clang" in n for n in on_clang.notes)
    on_bisheng = resolve("bisheng-kunpeng920", BISHENG, "optimized", host=KUNPENG)
    got = values(on_bisheng.cflags)
    at = got.index("-mllvm")
    assert got[at:at + 2] == ["-mllvm", "-force-customized-pipeline=true"]
    assert "-mcpu=tsv110" in values(on_bisheng.cflags) and "-mcpu=tsv110" in values(on_bisheng.ldflags)


def test_kunpeng_tuning_left_out_on_x86_with_reason() -> None:
    r = resolve("bisheng-kunpeng920", CLANG, "optimized", host=X86)
    assert not any("mcpu" in v for v in values(r.cflags))
    assert any("left out -mcpu=tsv110" in n and "x86_64" in n for n in r.notes)


@pytest.mark.parametrize("host, expected", [(X86, "-march=native"), (KUNPENG, "-mcpu=tsv110"),
                                            (Host("aarch64", "debian"), "-mcpu=native")])
def test_host_tuning(host: Host, expected: str) -> None:
    assert expected in values(resolve("native", CLANG, "optimized", host=host).cflags)


@pytest.mark.parametrize("text, name", [
    ("CPU implementer\t: 0x48\nCPU architecture: 8\nCPU part\t: 0xd01\n", "tsv110"),
    ("CPU implementer\t: 0x48\nCPU part\t: 0xd02\n", "hip09"),
    ("CPU implementer\t: 0x41\nCPU part\t: 0xd0c\n", None),  # Arm Neoverse N1
    ("CPU implementer\t: 0x41\nCPU part\t: 0xd01\n", None),  # same part number, other vendor
    ("processor: 0\nvendor_id: GenuineIntel\n", None),
])
def test_kunpeng_from_midr(text: str, name: str | None) -> None:
    assert toolchain.kunpeng_from_cpuinfo(text) == name


def test_classify_version_text() -> None:
    assert toolchain.classify("BiSheng Enterprise 4.1.0.B001 clang version 17.0.6") == "bisheng"
    assert toolchain.classify("Debian clang version 22.1.8") == "clang"
    assert toolchain.classify("gcc (Debian 12.2.0-14) 12.2.0") == "gcc"


def test_select_compiler_fallback_and_errors() -> None:
    tcs = Toolchains(X86, (CLANG, GCC))
    comp, notes = flags.select_compiler(profile.load("bisheng-kunpeng920", environ={}), tcs)
    assert comp is CLANG and "fallback family clang" in notes[0]
    comp, _ = flags.select_compiler(profile.load("bisheng-kunpeng920", environ={}), Toolchains(X86, (BISHENG, CLANG)))
    assert comp is BISHENG
    with pytest.raises(ToolchainError, match=r"apt-get install -y clang-22 lld-22 llvm-22 bolt-22"):
        flags.select_compiler(profile.load("generic-pgo-lto", environ={}), Toolchains(X86, (GCC,)))
    old = Compiler("clang", "/usr/bin/clang-14", None, "14.0.6", "clang 14", dict(CLANG.tools))
    with pytest.raises(ToolchainError, match="clang >= 22"):
        flags.select_compiler(profile.load("generic-pgo-lto", environ={}), Toolchains(X86, (old,)))
    no_profdata = Compiler("clang", "/usr/bin/clang-22", None, "22.1.8", "clang 22", {"ar": "x", "lld": "y"})
    with pytest.raises(ToolchainError, match="needs llvm-profdata"):
        flags.select_compiler(profile.load("generic-pgo-lto", environ={}), Toolchains(X86, (no_profdata,)))


def test_gcc_lto_with_lld_is_rejected() -> None:
    p = profile.load("gcc-pgo-lto", environ={}, overrides=["optimize.linker=lld"])
    with pytest.raises(ToolchainError, match="cannot link GCC LTO"):
        flags.select_compiler(p, Toolchains(X86, (GCC,)))
