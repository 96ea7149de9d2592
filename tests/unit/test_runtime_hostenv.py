"""Host settings: parsing and validation, precedence, environment construction, library discovery, applying."""

import gc
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from runtime import hostenv
from runtime.hostenv import HostSettings, HostSettingsError

REPO = Path(__file__).resolve().parents[2]


def write(tmp_path, name, text):
    p = tmp_path / f"{name}.toml"
    p.write_text(text)
    return p


@pytest.fixture(autouse=True)
def _isolated(monkeypatch):
    for k in (hostenv.ENV_SET, hostenv.ENV_LAUNCH_BLOCKING, hostenv.ENV_SETTINGS, "HOSTPGO_HOST_PROFILES"):
        monkeypatch.delenv(k, raising=False)
    hostenv._applied.clear()
    hostenv._warmup.clear()


def test_every_shipped_settings_file_loads():
    names = sorted(p.stem for p in (REPO / "profiles" / "host").glob("*.toml"))
    assert {"default", "jemalloc", "mimalloc", "tcmalloc", "pipelined", "gc-freeze"} <= set(names)
    for name in names:
        s = hostenv.resolve(name, env={})
        assert s.name == name and s.source.endswith(f"{name}.toml")


def test_defaults_without_a_file():
    s = hostenv.resolve(None, env={})
    assert s == HostSettings(overrides=())
    assert s.allocator.name == "glibc" and s.mindspore.launch == "blocking" and s.gc.thresholds is None
    assert s.summary() == "defaults"


def test_unknown_keys_name_the_file_and_the_key(tmp_path):
    p = write(tmp_path, "bad", "[allocator]\nname = 'jemalloc'\nnmae = 'x'\n")
    with pytest.raises(HostSettingsError, match=r"bad\.toml: unknown key allocator\.nmae"):
        hostenv.resolve(p, env={})
    p = write(tmp_path, "bad2", "[threads]\nn = 1\n")
    with pytest.raises(HostSettingsError, match=r"bad2\.toml: unknown key 'threads'"):
        hostenv.resolve(p, env={})


@pytest.mark.parametrize("body, key", [
    ("[allocator]\nname = 'hoard'", "allocator.name"),
    ("[mindspore]\nlaunch = 'async'", "mindspore.launch"),
    ("[mindspore]\nop_threads = -2", "mindspore.op_threads"),
    ("[mindspore]\naffinity_cpus = ['0-x']", "mindspore.affinity_cpus"),
    ("[mindspore.affinity_modules]\nworker = [0]", "mindspore.affinity_modules"),
    ("[gc]\nthresholds = [1, 2]", "gc.thresholds"),
    ("[gc]\nfreeze_after_warmup = 'maybe'", "gc.freeze_after_warmup"),
    ("[startup]\nbytecode = 'hash'", "startup.bytecode"),
    ("[startup]\nprecompile = 2", "startup.precompile"),
    ("[startup]\nfrozen_modules = 'maybe'", "startup.frozen_modules"),
    ("[startup]\nno_debug_ranges = 'x'", "startup.no_debug_ranges"),
])
def test_bad_values_name_file_and_key(tmp_path, body, key):
    p = write(tmp_path, "v", body + "\n")
    with pytest.raises(HostSettingsError, match=rf"v\.toml: {key.replace('.', '[.]')}"):
        hostenv.resolve(p, env={})


def test_precedence_defaults_file_env_cli(tmp_path):
    p = write(tmp_path, "mine", "[allocator]\nname = 'jemalloc'\n[gc]\nenabled = false\nthresholds = [1000, 10, 10]\n")
    env = {hostenv.ENV_SET: "gc.enabled=true allocator.name=mimalloc", hostenv.ENV_LAUNCH_BLOCKING: "0"}
    s = hostenv.resolve(p, ["allocator.name=tcmalloc"], env=env)
    assert s.allocator.name == "tcmalloc"          # CLI over env over file
    assert s.gc.enabled is True                     # env over file
    assert s.gc.thresholds == (1000, 10, 10)        # file over defaults
    assert s.mindspore.launch == "pipelined"        # the runtime's older switch is an env override
    assert s.overrides[0] == "HOSTPGO_RUNTIME_LAUNCH_BLOCKING=0" and s.overrides[-1] == "--set allocator.name=tcmalloc"


def test_extends_chain_and_loop(tmp_path):
    write(tmp_path, "base", "description = 'base'\n[gc]\nfreeze_after_warmup = true\n")
    child = write(tmp_path, "child", "extends = 'base.toml'\n[allocator]\nname = 'jemalloc'\n")
    s = hostenv.resolve(child, env={})
    assert s.gc.freeze_after_warmup and s.allocator.name == "jemalloc" and s.description == "base"
    a = write(tmp_path, "a", "extends = 'b.toml'\n")
    write(tmp_path, "b", "extends = 'a.toml'\n")
    with pytest.raises(HostSettingsError, match="loops"):
        hostenv.resolve(a, env={})


def test_override_syntax_errors():
    with pytest.raises(HostSettingsError, match="unknown key 'gc.bogus'"):
        hostenv.resolve(None, ["gc.bogus=1"], env={})
    with pytest.raises(HostSettingsError, match="section.key=value"):
        hostenv.resolve(None, ["gc"], env={})


def test_named_settings_are_found_and_unknown_names_listed(tmp_path, monkeypatch):
    write(tmp_path, "here", "[gc]\nenabled = false\n")
    monkeypatch.setenv("HOSTPGO_HOST_PROFILES", str(tmp_path))
    assert hostenv.resolve("here", env={}).gc.enabled is False
    with pytest.raises(HostSettingsError, match=r"no host settings named 'nope'.*known: here"):
        hostenv.resolve("nope", env={})


def test_json_and_toml_round_trip():
    s = hostenv.resolve("affinity-split", ["gc.thresholds=[5000, 10, 10]", "allocator.name=jemalloc",
                                           "allocator.tunables={narenas = \"2\"}"], env={})
    back = HostSettings.from_json(json.loads(json.dumps(s.to_json())))
    assert back == s
    text = s.to_toml(["a header"])
    assert text.startswith("# a header")
    from_text = hostenv.resolve(None, env={})
    import tomllib
    data = tomllib.loads(text)
    flat = hostenv._flatten(data, "x")
    from_text = hostenv._build(flat, "x")
    assert (from_text.allocator, from_text.mindspore, from_text.gc) == (s.allocator, s.mindspore, s.gc)


def test_active_reads_the_launchers_json_and_falls_back_to_env():
    s = hostenv.resolve("gc-freeze", env={})
    env = {hostenv.ENV_SETTINGS: json.dumps(s.to_json())}
    assert hostenv.active(env) == s
    assert hostenv.active({hostenv.ENV_LAUNCH_BLOCKING: "0"}).mindspore.launch == "pipelined"
    assert hostenv.active({}).mindspore.launch == "blocking"
    with pytest.raises(HostSettingsError, match="not valid JSON"):
        hostenv.active({hostenv.ENV_SETTINGS: "{oops"})


# --------------------------------------------------------------------------- library discovery


def test_distro_family_from_os_release(tmp_path):
    for text, want in (('ID=debian\n', "debian"), ('ID=ubuntu\nID_LIKE=debian\n', "debian"),
                       ('NAME="openEuler"\nID="openEuler"\n', "openeuler"), ('ID=arch\n', "arch")):
        (tmp_path / "os-release").write_text(text)
        assert hostenv.distro_family(tmp_path / "os-release") == want
    assert hostenv.distro_family(tmp_path / "missing") == "unknown"


def test_library_dirs_per_family():
    deb = hostenv.library_dirs("debian", "aarch64")
    assert deb[0] == Path("/usr/lib/aarch64-linux-gnu")
    assert hostenv.library_dirs("openeuler", "aarch64")[0] == Path("/usr/lib64")


def test_find_allocator_in_fake_dirs(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    (b / "libjemalloc.so.2").write_bytes(b"")
    (a / "libtcmalloc.so.4").write_bytes(b"")
    assert hostenv.find_allocator("jemalloc", family="debian", dirs=[a, b]) == b / "libjemalloc.so.2"
    assert hostenv.find_allocator("tcmalloc", family="debian", dirs=[a, b]) == a / "libtcmalloc.so.4"
    assert hostenv.find_allocator("glibc", family="debian", dirs=[a]) is None


@pytest.mark.parametrize("family, name, package, how", [
    ("debian", "jemalloc", "libjemalloc2", "apt-get install libjemalloc2"),
    ("debian", "mimalloc", "libmimalloc2.0", "apt-get install libmimalloc2.0"),
    ("debian", "tcmalloc", "libtcmalloc-minimal4", "apt-get install libtcmalloc-minimal4"),
    ("openeuler", "jemalloc", "jemalloc", "dnf install jemalloc"),
    ("openeuler", "tcmalloc", "gperftools", "dnf install gperftools"),
])
def test_missing_allocator_names_the_package(tmp_path, family, name, package, how):
    with pytest.raises(hostenv.AllocatorNotFound, match=rf"package {package} \({how}\)"):
        hostenv.find_allocator(name, family=family, dirs=[tmp_path])


def test_missing_allocator_without_a_recorded_package(tmp_path):
    with pytest.raises(hostenv.AllocatorNotFound, match="no package is recorded for 'openeuler'.*allocator.library"):
        hostenv.find_allocator("mimalloc", family="openeuler", dirs=[tmp_path])


# ------------------------------------------------------------------------- environment construction


def fake_find(name):
    return Path(f"/fake/lib{name}.so")


def test_process_env_preloads_and_carries_the_settings(tmp_path):
    lib = tmp_path / "libjemalloc.so.2"
    lib.write_bytes(b"")
    s = hostenv.resolve("jemalloc-tuned", env={})
    delta = hostenv.process_env(s, {"LD_PRELOAD": "/other.so"}, find=lambda n: lib)
    assert delta["LD_PRELOAD"] == f"{lib} /other.so"
    assert delta["MALLOC_CONF"] == "narenas:2,dirty_decay_ms:30000,muzzy_decay_ms:30000"
    assert HostSettings.from_json(json.loads(delta[hostenv.ENV_SETTINGS])) == s


def test_process_env_glibc_tunables_and_nothing_preloaded():
    s = hostenv.resolve("glibc-tuned", env={})
    delta = hostenv.process_env(s, {"GLIBC_TUNABLES": "glibc.pthread.rseq=0"}, find=fake_find)
    assert "LD_PRELOAD" not in delta
    assert delta["GLIBC_TUNABLES"] == ("glibc.pthread.rseq=0:glibc.malloc.arena_max=2:"
                                       "glibc.malloc.trim_threshold=268435456:glibc.malloc.mmap_threshold=33554432")


def test_tunables_channels():
    assert hostenv.tunables_env("mimalloc", [("arena_eager_commit", "1"), ("MIMALLOC_PURGE_DELAY", "0")], {}) == \
        {"MIMALLOC_ARENA_EAGER_COMMIT": "1", "MIMALLOC_PURGE_DELAY": "0"}
    assert hostenv.tunables_env("tcmalloc", [("release_rate", "0")], {}) == {"TCMALLOC_RELEASE_RATE": "0"}
    assert hostenv.tunables_env("jemalloc", [], {}) == {}


def test_linked_allocator_is_not_preloaded_and_glibc_cannot_be_asked_for():
    s = hostenv.resolve("jemalloc", env={})
    assert "LD_PRELOAD" not in hostenv.process_env(s, {}, linked=("jemalloc",), find=fake_find)
    with pytest.raises(HostSettingsError, match="links jemalloc"):
        hostenv.process_env(hostenv.resolve(None, env={}), {}, linked=("jemalloc",))


def test_explicit_library_path_must_exist(tmp_path):
    s = hostenv.resolve(None, ["allocator.name=jemalloc", f"allocator.library={tmp_path}/none.so"], env={})
    with pytest.raises(hostenv.AllocatorNotFound, match="does not exist"):
        hostenv.process_env(s, {})


# -------------------------------------------------------------------------------- applying


class FakeRuntime:
    def __init__(self, fail=None):
        self.calls = []
        self.fail = fail

    def __getattr__(self, name):
        def call(*args):
            if name == self.fail:
                raise RuntimeError(f"{name} is not supported on CPU")
            self.calls.append((name, args))
        return call


class FakeMs:
    def __init__(self, fail=None):
        self.runtime = FakeRuntime(fail)
        tuning = type("NS", (), {})()
        tuning.op_tuning = self.runtime
        self.device_context = type("NS", (), {"cpu": tuning})()


def test_apply_mindspore_calls_the_apis_in_order():
    ms = FakeMs()
    s = hostenv.resolve("threads-1", env={})
    done = hostenv.apply_mindspore(s, ms)
    assert ms.runtime.calls[0] == ("dispatch_threads_num", (1,))
    assert ms.runtime.calls[1] == ("threads_num", (1,))
    assert ms.runtime.calls[-1] == ("launch_blocking", ())
    assert [d["status"] for d in done][-1] == "applied"
    ms = FakeMs()
    done = hostenv.apply_mindspore(hostenv.resolve("pipelined", env={}), ms)
    assert ms.runtime.calls == [] and "not called" in done[-1]["status"]


def test_a_failing_mindspore_api_is_reported_not_skipped():
    with pytest.raises(HostSettingsError, match=r"dispatch_threads_num\(1\) failed on this device: RuntimeError"):
        hostenv.apply_mindspore(hostenv.resolve("threads-1", env={}), FakeMs(fail="dispatch_threads_num"))


def test_gc_policy_applied_and_restored():
    old = gc.get_threshold()
    try:
        s = hostenv.resolve("gc-freeze", ["gc.enabled=false"], env={})
        hostenv.apply_gc(s)
        assert gc.get_threshold() == (10000, 20, 20) and not gc.isenabled()
        info = hostenv.after_warmup(s)
        assert info["frozen_objects"] > 0 and gc.get_freeze_count() > 0
        rec = hostenv.record(s)
        assert rec["name"] == "gc-freeze" and rec["allocator_in_effect"] in (True, False)
        assert any(a["api"].startswith("gc.set_threshold") for a in rec["applied"])
    finally:
        gc.unfreeze()
        gc.enable()
        gc.set_threshold(*old)


def test_observe_reports_threads_and_preload():
    obs = hostenv.observe()
    assert obs["threads"] and sum(t["count"] for t in obs["threads"].values()) >= 1
    assert isinstance(obs["allocator_libraries"], list)


# -------------------------------------------------------------------------------- launcher


def run_launcher(*args, env=None):
    e = dict(os.environ)
    e.pop(hostenv.ENV_SETTINGS, None)
    e.update(env or {})
    return subprocess.run([sys.executable, "-m", "runtime.hostenv", *args], capture_output=True, text=True,
                          cwd=REPO, env=e, timeout=60)


def test_launcher_show_and_exec():
    p = run_launcher("show", "gc-freeze", "--set", "gc.enabled=false")
    assert p.returncode == 0, p.stderr
    data = json.loads(p.stdout)
    assert data["settings"]["gc"]["enabled"] is False and hostenv.ENV_SETTINGS in data["env"]
    p = run_launcher("exec", "gc-freeze", "--", sys.executable, "-c",
                     f"import os; print(os.environ['{hostenv.ENV_SETTINGS}'])")
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["name"] == "gc-freeze" and p.stderr.startswith("RUN: ")


def test_launcher_errors_exit_2():
    p = run_launcher("show", "gc-freeze", "--set", "gc.nope=1")
    assert p.returncode == 2 and "unknown key 'gc.nope'" in p.stderr


@pytest.mark.runtime
def test_workload_under_preloaded_jemalloc_keeps_its_golden_digest(tmp_path):
    pytest.importorskip("mindspore")
    try:
        hostenv.find_allocator("jemalloc")
    except hostenv.AllocatorNotFound as exc:
        pytest.skip(str(exc))
    p = subprocess.run([sys.executable, "-m", "runtime", "workload", "decode-b1", "--check-golden", "--json",
                        "--host-settings", "jemalloc", "--host-set", "gc.freeze_after_warmup=true"],
                       capture_output=True, text=True, cwd=REPO, timeout=900)
    assert p.returncode == 0, p.stderr[-2000:]
    rec = json.loads(p.stdout)
    hs = rec["host_settings"]
    assert rec["golden_match"] and hs["allocator_in_effect"] and hs["name"] == "jemalloc"
    assert any("libjemalloc" in lib for lib in hs["observed"]["allocator_libraries"])
    assert any(a["api"].startswith("gc.collect") for a in hs["applied"])


# ------------------------------------------------------------------------------------ start-up


def test_startup_defaults_change_nothing():
    s = hostenv.resolve("default", env={})
    assert s.startup == hostenv.StartupSettings() and s.summary() == "defaults"
    assert s.startup.frozen_modules is None and s.startup.bytecode == "timestamp" and not s.startup.precompile
    delta = hostenv.process_env(s, {}, find=fake_find)
    assert set(delta) == {hostenv.ENV_SETTINGS}
    assert hostenv.interpreter_args(s) == []
    assert hostenv.with_interpreter_args(s, ["bash", "-c", "true"]) == ["bash", "-c", "true"]


def test_startup_settings_file_and_overrides(tmp_path):
    s = hostenv.resolve("startup-lean", env={})
    assert s.startup == hostenv.StartupSettings(precompile=True, bytecode="unchecked-hash", frozen_modules=True,
                                                no_debug_ranges=True)
    assert "startup.bytecode=unchecked-hash" in s.summary()
    assert hostenv.process_env(s, {}, find=fake_find)["PYTHONNODEBUGRANGES"] == "1"
    off = hostenv.resolve("startup-precompiled", ["startup.frozen_modules=off"], env={})
    assert off.startup.frozen_modules is False and off.startup.no_debug_ranges is False
    assert "PYTHONNODEBUGRANGES" not in hostenv.process_env(off, {}, find=fake_find)
    assert hostenv.resolve("startup-precompiled", ["startup.frozen_modules=default"], env={}).startup.frozen_modules \
        is None
    back = HostSettings.from_json(json.loads(json.dumps(s.to_json())))
    assert back == s
    import tomllib
    again = hostenv._build(hostenv._flatten(tomllib.loads(s.to_toml()), "x"), "x")
    assert again.startup == s.startup


@pytest.mark.parametrize("program, ok", [
    ("python", True), ("python3", True), ("/usr/bin/python3.11", True), (".venv/bin/python", True),
    ("pypy3", True), ("bash", False), ("/usr/bin/env", False), ("python-config", False), ("nox", False),
])
def test_interpreter_options_go_after_the_interpreter_or_fail_clearly(program, ok):
    s = hostenv.resolve("startup-precompiled", env={})
    if ok:
        assert hostenv.with_interpreter_args(s, [program, "-m", "runtime"]) == \
            [program, "-X", "frozen_modules=on", "-m", "runtime"]
    else:
        with pytest.raises(HostSettingsError, match=rf"startup.frozen_modules.*{program!r} is not a Python interpreter"):
            hostenv.with_interpreter_args(s, [program, "-c", "true"])


def test_launcher_exec_starts_the_interpreter_with_the_startup_options():
    probe = ("import os, sys; from runtime.hostenv import debug_ranges_in_effect; "
             "print(os.__spec__.origin, sys._xoptions.get('frozen_modules'), debug_ranges_in_effect())")
    p = run_launcher("exec", "--set", "startup.frozen_modules=off", "--set", "startup.no_debug_ranges=true",
                     "default", "--", sys.executable, "-c", probe)
    assert p.returncode == 0, p.stderr
    origin, frozen, ranges = p.stdout.split()
    assert origin.endswith("os.py") and frozen == "off" and ranges == "False"
    assert "-X frozen_modules=off" in p.stderr.splitlines()[0]
    p = run_launcher("exec", "--set", "startup.frozen_modules=on", "default", "--", sys.executable, "-c", probe)
    assert p.stdout.split()[:2] == ["frozen", "on"], p.stderr
    p = run_launcher("exec", "--set", "startup.frozen_modules=off", "default", "--", "bash", "-c", "true")
    assert p.returncode == 2 and "'bash' is not a Python interpreter" in p.stderr


def test_runtime_reexecution_carries_the_interpreter_options(monkeypatch):
    from runtime import cli

    seen = {}

    def fake_execve(path, argv, env):
        seen.update(path=path, argv=argv, env=env)
        raise SystemExit(0)

    monkeypatch.setattr(os, "execve", fake_execve)
    args = cli.build_parser().parse_args(["workload", "decode-b1", "--host-settings", "startup-lean"])
    args.argv = ["workload", "decode-b1", "--host-settings", "startup-lean"]
    with pytest.raises(SystemExit):
        cli._enter_host_settings(args)
    assert seen["argv"][:4] == [sys.executable, "-X", "frozen_modules=on", "-m"]
    assert seen["env"]["PYTHONNODEBUGRANGES"] == "1"


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
    summary = hostenv.precompile(s, [pkg.parent], workers=2)
    assert summary["mode"] == mode and summary["files"] == 3 and summary["compiled"] == 2
    assert [b["file"] for b in summary["not_python"]] == [str(pkg / "broken.py")]
    data = _pyc(pkg, "mod").read_bytes()
    import importlib.util
    assert data[:4] == importlib.util.MAGIC_NUMBER
    assert int.from_bytes(data[4:8], "little") == flags          # PEP 552 flags field
    assert hostenv.pyc_mode(_pyc(pkg, "mod")) == mode
    if mode != "timestamp":
        assert data[8:16] == importlib.util.source_hash((pkg / "mod.py").read_bytes())


def test_precompile_without_debug_ranges_writes_column_free_code(tmp_path):
    import marshal
    pkg = _pkg(tmp_path)
    cols = {}
    for drop in (False, True):
        s = hostenv.resolve(None, ["startup.precompile=true", f"startup.no_debug_ranges={str(drop).lower()}"], env={})
        hostenv.precompile(s, [pkg], workers=1)
        code = marshal.loads(_pyc(pkg, "mod").read_bytes()[16:])
        fn = next(c for c in code.co_consts if hasattr(c, "co_positions"))
        cols[drop] = {col for _, _, col, _ in fn.co_positions()}
    assert cols[False] - {None} and cols[True] == {None}
    assert os.environ.get("PYTHONNODEBUGRANGES") is None   # restored


def test_precompile_subcommand_interface(tmp_path):
    pkg = _pkg(tmp_path)
    settings = write(tmp_path, "pc", "[startup]\nprecompile = true\nbytecode = 'unchecked-hash'\n")
    p = run_launcher("precompile", str(settings), str(pkg), "--workers", "1")
    assert p.returncode == 0, p.stderr
    summary = json.loads(p.stdout)
    assert summary["precompile"] is True and summary["mode"] == "unchecked-hash" and summary["files"] == 3
    assert summary["paths"] == [str(pkg.resolve())] and summary["seconds"] >= 0
    assert hostenv.pyc_mode(_pyc(pkg, "mod")) == "unchecked-hash"
    p = run_launcher("precompile", str(settings), str(tmp_path / "missing"))
    assert p.returncode == 1 and "does not exist" in p.stderr
    off = tmp_path / "off"
    off.mkdir()
    (off / "a.py").write_text("x = 1\n")
    p = run_launcher("precompile", "default", str(off))
    assert p.returncode == 0 and json.loads(p.stdout)["precompile"] is False
    assert "startup.precompile is false" in p.stderr and not (off / "__pycache__").exists()


def test_default_precompile_paths_are_site_packages_and_the_runtime():
    import sysconfig
    paths = hostenv.default_precompile_paths()
    assert Path(sysconfig.get_paths()["purelib"]).resolve() in paths
    runtime_dir = Path(hostenv.__file__).resolve().parent
    assert any(runtime_dir.is_relative_to(p) for p in paths)
    assert len(paths) == len(set(paths))


def test_record_reports_the_startup_in_effect_and_warns_on_mismatch():
    rec = hostenv.record(hostenv.resolve(None, env={}))
    st = rec["startup"]
    assert st["frozen_stdlib"] in (True, False) and st["debug_ranges"] is True
    assert sum(st["pyc_modes"]["modules"].values()) >= 1          # runtime.hostenv itself at least
    assert not any("startup" in w for w in rec["warnings"])
    lean = hostenv.resolve("startup-lean", env={})
    seen = {"frozen_stdlib": False, "debug_ranges": True,
            "pyc_modes": {"packages": ["runtime", "mindspore"], "modules": {"timestamp": 3, "unchecked-hash": 7}}}
    warnings = hostenv.startup_warnings(lean, seen)
    assert len(warnings) == 3
    assert "frozen_modules = true" in warnings[0] and "PYTHONNODEBUGRANGES" in warnings[1]
    assert "3 of 10" in warnings[2] and "{'timestamp': 3}" in warnings[2]
    assert hostenv.startup_warnings(lean, {**seen, "frozen_stdlib": True, "debug_ranges": False,
                                           "pyc_modes": {"packages": ["runtime"],
                                                         "modules": {"unchecked-hash": 9}}}) == []


def test_unchecked_hash_outside_site_packages_is_warned_about(tmp_path, monkeypatch):
    pkg = _pkg(tmp_path)
    s = hostenv.resolve("startup-precompiled", env={})
    monkeypatch.setattr(hostenv, "_site_packages", lambda: [pkg.parent.resolve()])
    assert hostenv.precompile(s, [pkg], workers=1)["warnings"] == []
    monkeypatch.setattr(hostenv, "_site_packages", lambda: [tmp_path / "elsewhere"])
    (warning,) = hostenv.precompile(s, [pkg], workers=1)["warnings"]
    assert str(pkg.resolve()) in warning and "not seen until precompiled again" in warning
