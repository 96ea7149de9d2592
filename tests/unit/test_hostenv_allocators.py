"""hostenv.allocators: the one table, distribution families, search order, install hints, tunables channels."""

from pathlib import Path

import pytest

from buildsys.toolchain import Host
from hostenv import allocators, settings
from hostenv.errors import AllocatorNotFound, HostSettingsError

DEBIAN = Host("x86_64", "debian")


def test_table_rows_and_the_names_every_list_reads():
    t = allocators.table()
    assert list(t) == ["glibc", "jemalloc", "mimalloc", "tcmalloc"] == list(allocators.names())
    assert t["glibc"].sonames == () and t["jemalloc"].packages["debian"] == "libjemalloc2"
    assert t["tcmalloc"].packages["openeuler"] == "gperftools" and t["mimalloc"].tunables == "env:MIMALLOC_"
    # The host-settings key and the build-profile key both take their allowed values from the table.
    assert settings.SCHEMA["allocator"]["name"].allowed == allocators.names()
    assert allocators.soname_stems() == ("libjemalloc.so", "libmimalloc.so", "libtcmalloc_minimal.so",
                                         "libtcmalloc.so")


def test_bad_table_row_is_named(tmp_path):
    bad = tmp_path / "a.toml"
    bad.write_text('[x]\nsonames = []\n')
    with pytest.raises(HostSettingsError,
                       match=r"a.toml: \[x\] must have exactly the keys packages, sonames, tunables"):
        allocators.table(bad)
    bad.write_text('[x]\nsonames = []\ntunables = "LD_PRELOAD"\npackages = {}\n')
    with pytest.raises(HostSettingsError, match=r"\[x\] tunables = 'LD_PRELOAD'"):
        allocators.table(bad)


def test_platform_of_this_machine_from_os_release(tmp_path):
    cases = (('ID=debian\n', "debian"), ('ID=ubuntu\nID_LIKE=debian\n', "debian"),
             ('ID=linuxmint\nID_LIKE="ubuntu debian"\n', "debian"),
             ('NAME="openEuler"\nID="openEuler"\n', "openeuler"), ('ID=arch\n', "arch"))
    for text, want in cases:
        (tmp_path / "os-release").write_text(text)
        assert allocators.family(allocators.Platform.this(tmp_path / "os-release")) == want
    assert allocators.Platform.this(tmp_path / "missing").os_id == "unknown"
    # The build engine's Host is a machine too.
    assert allocators.family(Host("aarch64", "openEuler")) == "openeuler" and allocators.family(DEBIAN) == "debian"


def test_library_dirs_search_order_per_family():
    deb = allocators.library_dirs(Host("aarch64", "debian"))
    assert deb[:3] == (Path("/usr/lib/aarch64-linux-gnu"), Path("/lib/aarch64-linux-gnu"), Path("/usr/lib64"))
    oe = allocators.library_dirs(Host("aarch64", "openEuler"))
    assert oe[0] == Path("/usr/lib64") and oe[-1] == Path("/lib/aarch64-linux-gnu")
    assert sorted(deb) == sorted(oe)


def test_find_prefers_the_first_soname_then_the_first_dir(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    (b / "libjemalloc.so.2").write_bytes(b"")
    (a / "libjemalloc.so").write_bytes(b"")
    (a / "libtcmalloc.so.4").write_bytes(b"")
    (b / "libtcmalloc.so.4").write_bytes(b"")
    found = allocators.find("jemalloc", DEBIAN, dirs=[a, b], query_version=False)
    assert found.library == b / "libjemalloc.so.2" and found.package == "libjemalloc2" and found.package_version == ""
    assert allocators.find("tcmalloc", DEBIAN, dirs=[a, b], query_version=False).library == a / "libtcmalloc.so.4"
    assert allocators.find("glibc", DEBIAN, dirs=[a]) == allocators.Allocator("glibc", None)


@pytest.mark.parametrize("os_id, name, hint", [
    ("debian", "jemalloc", "install the debian package libjemalloc2 (apt-get install -y libjemalloc2)"),
    ("debian", "mimalloc", "install the debian package libmimalloc2.0 (apt-get install -y libmimalloc2.0)"),
    ("ubuntu", "tcmalloc", "install the debian package libtcmalloc-minimal4 (apt-get install -y libtcmalloc-minimal4)"),
    ("openEuler", "jemalloc", "install the openeuler package jemalloc (dnf install -y jemalloc)"),
    ("openEuler", "tcmalloc", "install the openeuler package gperftools (dnf install -y gperftools)"),
    ("openEuler", "mimalloc", ("no openeuler package is recorded for mimalloc (recorded: debian: libmimalloc2.0); "
                               "install mimalloc and give its shared object's path "
                               "(host settings: allocator.library)")),
])
def test_missing_allocator_names_the_package_one_hint(tmp_path, os_id, name, hint):
    host = Host("aarch64", os_id)
    assert allocators.install_hint(allocators.table()[name], host) == hint
    with pytest.raises(AllocatorNotFound) as exc:
        allocators.find(name, host, dirs=[tmp_path], key="optimize.allocator")
    assert str(exc.value) == (f"optimize.allocator = {name!r}: none of {', '.join(allocators.table()[name].sonames)} "
                              f"found in {tmp_path}; {hint}")


def test_unknown_allocator_names_the_key_and_the_table():
    with pytest.raises(HostSettingsError, match="allocator.name = 'hoard': unknown allocator; known: glibc, jemalloc"):
        allocators.find("hoard", DEBIAN)


def test_tunables_channels():
    assert allocators.tunables_env("mimalloc", [("arena_eager_commit", "1"), ("MIMALLOC_PURGE_DELAY", "0")], {}) == \
        {"MIMALLOC_ARENA_EAGER_COMMIT": "1", "MIMALLOC_PURGE_DELAY": "0"}
    assert allocators.tunables_env("tcmalloc", [("release_rate", "0")], {}) == {"TCMALLOC_RELEASE_RATE": "0"}
    assert allocators.tunables_env("jemalloc", [("narenas", "2")], {"MALLOC_CONF": "abort:true"}) == \
        {"MALLOC_CONF": "abort:true,narenas:2"}
    assert allocators.tunables_env("glibc", [("arena_max", "2"), ("glibc.pthread.rseq", "0")], {}) == \
        {"GLIBC_TUNABLES": "glibc.malloc.arena_max=2:glibc.pthread.rseq=0"}
    assert allocators.tunables_env("jemalloc", [], {}) == {}


def test_link_flags_and_mapped_check():
    alloc = allocators.Allocator("jemalloc", Path("/usr/lib/x86_64-linux-gnu/libjemalloc.so.2"))
    assert allocators.link_flags(alloc) == ("-Wl,--push-state,--no-as-needed",
                                            "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2", "-Wl,--pop-state")
    assert allocators.mapped_check(alloc)[0] == "-c"
    assert "'libjemalloc.so.2' in maps" in allocators.mapped_check(alloc)[1]
    assert allocators.link_flags(allocators.Allocator("glibc", None)) == ()
    assert allocators.mapped_check(allocators.Allocator("glibc", None)) == ()
