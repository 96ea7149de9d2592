"""hostenv.observe and hostenv.precompile: what a process really runs with, the record's verdicts, and pycs."""

import importlib.util
import json
import marshal
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

import hostenv
from hostenv import allocators, observe
from hostenv import precompile as pc

REPO = Path(__file__).resolve().parents[2]
JEMALLOC = "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2"


def maps_file(tmp_path, *paths):
    lines = ["55d0c0000000-55d0c0001000 r--p 00000000 08:01 1 /usr/bin/python3.11",
             "7f0000000000-7f0000001000 rw-p 00000000 00:00 0 "]
    lines += [f"7f00000{i:05x}000-7f00000{i:05x}fff r-xp 00000000 08:01 {i} {p}" for i, p in enumerate(paths, 2)]
    f = tmp_path / "maps"
    f.write_text("\n".join(lines) + "\n")
    return f


def test_mapped_allocators_lists_the_tables_libraries_once(tmp_path):
    f = maps_file(tmp_path, JEMALLOC, JEMALLOC, "/usr/lib/x86_64-linux-gnu/libc.so.6",
                  "/opt/x/libtcmalloc_minimal.so.4.5.10")
    assert observe.mapped_allocators(f) == ["/opt/x/libtcmalloc_minimal.so.4.5.10", JEMALLOC]
    assert observe.observe(f)["allocator_libraries"] == ["/opt/x/libtcmalloc_minimal.so.4.5.10", JEMALLOC]
    assert observe.mapped_allocators(maps_file(tmp_path, "/usr/lib/x86_64-linux-gnu/libc.so.6")) == []
    assert observe.mapped_allocators(tmp_path / "missing") == []


def test_observe_reports_this_processs_threads_and_gc():
    obs = observe.observe()
    assert obs["threads"][next(iter(obs["threads"]))]["count"] >= 1
    assert sum(t["count"] for t in obs["threads"].values()) == len(os.listdir("/proc/self/task"))
    assert obs["gc_enabled"] is True


@pytest.mark.parametrize("asked, mapped, in_effect", [
    ("glibc", [], True), ("glibc", [JEMALLOC], False), ("jemalloc", [JEMALLOC], True), ("jemalloc", [], False),
    ("tcmalloc", [JEMALLOC], False), ("tcmalloc", ["/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4"], True),
])
def test_record_says_whether_the_asked_allocator_is_in_effect(asked, mapped, in_effect):
    s = hostenv.resolve(None, [f"allocator.name={asked}"], env={})
    seen = {**observe.observe(), "allocator_libraries": mapped}
    rec = observe.record(s, [{"api": "x", "status": "applied"}], observed=seen)
    assert rec["allocator_in_effect"] is in_effect
    assert any(w.startswith(f"allocator {asked!r} asked for") for w in rec["warnings"]) is not in_effect
    assert rec["applied"] == [{"api": "x", "status": "applied"}] and rec["summary"] == s.summary()


def _record_in_child(settings_ref, env_extra=(), xopts=()):
    code = ("import json, hostenv; from hostenv import observe; "
            f"print(json.dumps(observe.record(hostenv.resolve({settings_ref!r}, env={{}}))))")
    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", hostenv.ENV_SETTINGS)}
    env.update(dict(env_extra))
    p = subprocess.run([sys.executable, *xopts, "-c", code], check=False, capture_output=True, text=True, env=env,
                       cwd=REPO, timeout=60)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)


def test_a_real_preload_is_seen_and_its_absence_warned_about():
    try:
        lib = allocators.find("jemalloc", query_version=False).library
    except hostenv.AllocatorNotFound as exc:
        pytest.skip(str(exc))
    rec = _record_in_child("jemalloc", {"LD_PRELOAD": str(lib)})
    assert rec["allocator_in_effect"] is True and rec["observed"]["allocator_libraries"] == [str(lib)]
    rec = _record_in_child("jemalloc")
    assert rec["allocator_in_effect"] is False and rec["observed"]["allocator_libraries"] == []
    assert rec["warnings"][0] == "allocator 'jemalloc' asked for, but the process maps no allocator library"


@pytest.mark.parametrize("option, frozen", [("on", True), ("off", False)])
def test_record_reports_whether_the_stdlib_was_frozen(option, frozen):
    rec = _record_in_child("default", xopts=("-X", f"frozen_modules={option}"))
    assert rec["startup"]["frozen_stdlib"] is frozen and rec["startup"]["xoptions"] == {"frozen_modules": option}
    assert rec["startup"]["debug_ranges"] is True and rec["warnings"] == []
    assert rec["startup"]["pyc_modes"]["packages"] == ["runtime", "hostenv", "hostpgo", "mindspore"]
    rec = _record_in_child("startup-precompiled", xopts=("-X", f"frozen_modules={option}"))
    assert any(w.startswith("startup.frozen_modules = true, but the stdlib was not") for w in rec["warnings"]) \
        is not frozen


def test_startup_warnings_on_mismatch():
    lean = hostenv.resolve("startup-lean", env={})
    seen = {"frozen_stdlib": False, "debug_ranges": True,
            "pyc_modes": {"packages": ["runtime", "mindspore"], "modules": {"timestamp": 3, "unchecked-hash": 7}}}
    warnings = observe.startup_warnings(lean, seen)
    assert len(warnings) == 3
    assert "frozen_modules = true" in warnings[0] and "PYTHONNODEBUGRANGES" in warnings[1]
    assert "3 of 10" in warnings[2] and "{'timestamp': 3}" in warnings[2]
    assert "python -m hostenv precompile SETTINGS" in warnings[2]
    assert observe.startup_warnings(lean, {**seen, "frozen_stdlib": True, "debug_ranges": False,
                                           "pyc_modes": {"packages": ["runtime"],
                                                         "modules": {"unchecked-hash": 9}}}) == []


def test_observe_startup_counts_the_pyc_modes_of_imported_packages():
    import hostenv.launch  # noqa: F401  (imported: its pyc is what the count reads)

    st = observe.observe_startup(("hostenv",))
    mods = [m for n, m in sys.modules.items() if n.partition(".")[0] == "hostenv" and getattr(m, "__cached__", None)]
    assert sum(st["pyc_modes"]["modules"].values()) == len(mods) and len(mods) >= 7


# ------------------------------------------------------------------------------------- precompile


def _pkg(tmp_path):
    pkg = tmp_path / "site" / "pkg"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "mod.py").write_text("def f(a, b):\n    return a.x + b.y\n")
    (pkg / "broken.py").write_text("def (:\n")
    return pkg


def _pyc(pkg, name):
    return next((pkg / "__pycache__").glob(f"{name}.*.pyc"))


@pytest.mark.parametrize("mode, flags", [("timestamp", 0), ("checked-hash", 3), ("unchecked-hash", 1)])
def test_precompile_writes_pycs_of_the_asked_mode(tmp_path, mode, flags):
    pkg = _pkg(tmp_path)
    s = hostenv.resolve(None, ["startup.precompile=true", f"startup.bytecode={mode}"], env={})
    summary = pc.precompile(s, [pkg.parent], workers=2)
    assert summary["mode"] == mode and summary["files"] == 3 and summary["compiled"] == 2
    assert [b["file"] for b in summary["not_python"]] == [str(pkg / "broken.py")]
    data = _pyc(pkg, "mod").read_bytes()
    assert data[:4] == importlib.util.MAGIC_NUMBER
    assert int.from_bytes(data[4:8], "little") == flags          # PEP 552 flags field
    assert observe.pyc_mode(_pyc(pkg, "mod")) == mode
    if mode != "timestamp":
        assert data[8:16] == importlib.util.source_hash((pkg / "mod.py").read_bytes())


def test_precompile_without_debug_ranges_writes_column_free_code(tmp_path):
    pkg = _pkg(tmp_path)
    cols = {}
    for drop in (False, True):
        s = hostenv.resolve(None, ["startup.precompile=true", f"startup.no_debug_ranges={str(drop).lower()}"], env={})
        pc.precompile(s, [pkg], workers=1)
        code = marshal.loads(_pyc(pkg, "mod").read_bytes()[16:])
        fn = next(c for c in code.co_consts if hasattr(c, "co_positions"))
        cols[drop] = {col for _, _, col, _ in fn.co_positions()}
    assert cols[False] - {None} and cols[True] == {None}
    assert os.environ.get("PYTHONNODEBUGRANGES") is None   # restored


def test_precompile_subcommand_interface(tmp_path):
    pkg = _pkg(tmp_path)
    settings = tmp_path / "pc.toml"
    settings.write_text("[startup]\nprecompile = true\nbytecode = 'unchecked-hash'\n")

    def launcher(*args):
        env = {k: v for k, v in os.environ.items() if k != hostenv.ENV_SETTINGS}
        return subprocess.run([sys.executable, "-m", "hostenv", *args], check=False, capture_output=True, text=True,
                              cwd=REPO, env=env, timeout=120)

    p = launcher("precompile", str(settings), str(pkg), "--workers", "1")
    assert p.returncode == 0, p.stderr
    summary = json.loads(p.stdout)
    assert summary["precompile"] is True and summary["mode"] == "unchecked-hash" and summary["files"] == 3
    assert summary["paths"] == [str(pkg.resolve())] and summary["workers"] == 1
    assert observe.pyc_mode(_pyc(pkg, "mod")) == "unchecked-hash"
    p = launcher("precompile", str(settings), str(tmp_path / "missing"))
    assert p.returncode == 1 and "does not exist" in p.stderr
    off = tmp_path / "off"
    off.mkdir()
    (off / "a.py").write_text("x = 1\n")
    p = launcher("precompile", "default", str(off))
    assert p.returncode == 0 and json.loads(p.stdout)["precompile"] is False
    assert "startup.precompile is false" in p.stderr and not (off / "__pycache__").exists()


def test_default_paths_are_site_packages_and_hostpgos_startup_packages():
    paths = pc.default_paths()
    assert Path(sysconfig.get_paths()["purelib"]).resolve() in paths
    for name in ("runtime", "hostenv", "hostpgo"):
        where = (REPO / name).resolve()
        assert any(where.is_relative_to(p) for p in paths), name
    assert len(paths) == len(set(paths))


def test_unchecked_hash_outside_site_packages_is_warned_about(tmp_path, monkeypatch):
    pkg = _pkg(tmp_path)
    s = hostenv.resolve("startup-precompiled", env={})
    monkeypatch.setattr(pc, "site_packages", lambda: [pkg.parent.resolve()])
    assert pc.precompile(s, [pkg], workers=1)["warnings"] == []
    monkeypatch.setattr(pc, "site_packages", lambda: [tmp_path / "elsewhere"])
    (warning,) = pc.precompile(s, [pkg], workers=1)["warnings"]
    assert str(pkg.resolve()) in warning and "not seen until precompiled again" in warning


def _built_allocator(tmp_path, name="tcmalloc", build="tcmalloc-2.10-workload-pgo-lto-tcmalloc"):
    """An install prefix as `python -m buildsys build tcmalloc` leaves it: the manifest naming the library."""
    prefix = tmp_path / "install" / build
    lib = prefix / "lib" / "libtcmalloc_minimal.so.4"
    lib.parent.mkdir(parents=True)
    lib.write_bytes(b"\x7fELF")
    (prefix / "hostpgo-manifest.json").write_text(json.dumps(
        {"build_id": build, "allocator": name, "library": str(lib), "prefix": str(prefix), "version": "2.10"}))
    return lib


def test_a_hostpgo_built_allocator_counts_only_when_that_file_is_mapped(tmp_path):
    """allocator.build asks for one shared object: Debian's build of the same allocator (same soname) is not it."""
    lib = _built_allocator(tmp_path)
    s = hostenv.resolve(None, ["allocator.name=tcmalloc", "allocator.build=tcmalloc-2.10-workload-pgo-lto-tcmalloc"],
                        env={})
    debian = "/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4"
    rec = observe.record(s, observed={**observe.observe(), "allocator_libraries": [debian]},
                         install_root=tmp_path / "install")
    assert rec["allocator_in_effect"] is False and rec["allocator_library"] == str(lib)
    assert rec["warnings"][0] == (f"allocator 'tcmalloc' from {lib} asked for, but the process maps ['{debian}']")
    rec = observe.record(s, observed={**observe.observe(), "allocator_libraries": [str(lib)]},
                         install_root=tmp_path / "install")
    assert rec["allocator_in_effect"] is True and not any("asked for" in w for w in rec["warnings"])
    # A build that is not installed cannot be in effect; the record names what was looked for.
    gone = hostenv.resolve(None, ["allocator.name=tcmalloc", "allocator.build=tcmalloc-9-none"], env={})
    rec = observe.record(gone, observed={**observe.observe(), "allocator_libraries": [str(lib)]},
                         install_root=tmp_path / "install")
    assert rec["allocator_in_effect"] is False and rec["allocator_library"].startswith("tcmalloc-9-none")
    # The distribution's allocator (no build, no library named) is matched by its soname, as before.
    plain = hostenv.resolve(None, ["allocator.name=tcmalloc"], env={})
    rec = observe.record(plain, observed={**observe.observe(), "allocator_libraries": [debian]})
    assert rec["allocator_in_effect"] is True and "allocator_library" not in rec
