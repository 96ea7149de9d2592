"""hostenv.launch and `python -m hostenv`: the environment delta, interpreter options, and the launcher CLI."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import hostenv
from hostenv import launch
from hostenv.settings import HostSettings, HostSettingsError

REPO = Path(__file__).resolve().parents[2]


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


def test_linked_allocator_is_not_preloaded_and_glibc_cannot_be_asked_for():
    s = hostenv.resolve("jemalloc", env={})
    assert "LD_PRELOAD" not in hostenv.process_env(s, {}, linked=("jemalloc",), find=fake_find)
    with pytest.raises(HostSettingsError, match="links jemalloc"):
        hostenv.process_env(hostenv.resolve(None, env={}), {}, linked=("jemalloc",))


def test_explicit_library_path_must_exist(tmp_path):
    s = hostenv.resolve(None, ["allocator.name=jemalloc", f"allocator.library={tmp_path}/none.so"], env={})
    with pytest.raises(hostenv.AllocatorNotFound, match="does not exist"):
        hostenv.process_env(s, {})


def test_startup_defaults_change_nothing():
    s = hostenv.resolve("default", env={})
    assert s.startup == hostenv.StartupSettings() and s.summary() == "defaults"
    delta = hostenv.process_env(s, {}, find=fake_find)
    assert set(delta) == {hostenv.ENV_SETTINGS}
    assert hostenv.interpreter_args(s) == []
    assert hostenv.with_interpreter_args(s, ["bash", "-c", "true"]) == ["bash", "-c", "true"]


def test_startup_options_reach_the_environment_and_the_command_line():
    lean = hostenv.resolve("startup-lean", env={})
    assert hostenv.process_env(lean, {}, find=fake_find)["PYTHONNODEBUGRANGES"] == "1"
    off = hostenv.resolve("startup-precompiled", ["startup.frozen_modules=off"], env={})
    assert "PYTHONNODEBUGRANGES" not in hostenv.process_env(off, {}, find=fake_find)
    argv, delta = launch.exec_argv(off, ["python3", "-c", "1"], {})
    assert argv == ["python3", "-X", "frozen_modules=off", "-c", "1"] and hostenv.ENV_SETTINGS in delta


@pytest.mark.parametrize("program, ok", [
    ("python", True), ("python3", True), ("/usr/bin/python3.11", True), (".venv/bin/python", True),
    ("pypy3", True), ("bash", False), ("/usr/bin/env", False), ("python-config", False), ("nox", False),
])
def test_interpreter_options_go_after_the_interpreter_or_fail_clearly(program, ok):
    s = hostenv.resolve("startup-precompiled", env={})
    assert hostenv.is_python_command(program) is ok
    if ok:
        assert hostenv.with_interpreter_args(s, [program, "-m", "runtime"]) == \
            [program, "-X", "frozen_modules=on", "-m", "runtime"]
    else:
        with pytest.raises(HostSettingsError,
                           match=rf"startup.frozen_modules.*{program!r} is not a Python interpreter"):
            hostenv.with_interpreter_args(s, [program, "-c", "true"])


# -------------------------------------------------------------------------------- the launcher


def run_launcher(*args, env=None):
    e = dict(os.environ)
    for k in (hostenv.ENV_SETTINGS, hostenv.ENV_SET, hostenv.ENV_LAUNCH_BLOCKING):
        e.pop(k, None)
    e.update(env or {})
    return subprocess.run([sys.executable, "-m", "hostenv", *args], check=False, capture_output=True, text=True,
                          cwd=REPO, env=e, timeout=60)


def test_launcher_show_and_exec():
    p = run_launcher("show", "gc-freeze", "--set", "gc.enabled=false")
    assert p.returncode == 0, p.stderr
    data = json.loads(p.stdout)
    assert data["settings"]["gc"]["enabled"] is False and hostenv.ENV_SETTINGS in data["env"]
    assert data["origins"]["gc.enabled"] == "command line --set gc.enabled=false"
    assert data["origins"]["gc.freeze_after_warmup"].endswith("profiles/host/gc-freeze.toml")
    p = run_launcher("exec", "gc-freeze", "--", sys.executable, "-c",
                     f"import os; print(os.environ['{hostenv.ENV_SETTINGS}'])")
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["name"] == "gc-freeze" and p.stderr.startswith("RUN: ")


def test_launcher_errors_exit_2_and_name_the_source():
    p = run_launcher("show", "gc-freeze", "--set", "gc.nope=1")
    assert p.returncode == 2
    assert p.stderr.startswith("error: command line --set gc.nope=1: unknown key 'gc.nope'"), p.stderr
    p = run_launcher("show", "gc-freeze", env={hostenv.ENV_SET: "gc.enabled=maybe"})
    assert p.returncode == 2
    assert p.stderr.startswith("error: environment variable HOSTPGO_HOST_SET ('gc.enabled=maybe'): "
                               "key 'gc.enabled' has value 'maybe'"), p.stderr
    assert "Traceback" not in p.stderr


def test_launcher_env_allocators_and_reference():
    p = run_launcher("env", "startup-lean")
    assert p.returncode == 0, p.stderr
    assert "export PYTHONNODEBUGRANGES=1" in p.stdout.splitlines()
    assert "# and start the interpreter with: -X frozen_modules=on" in p.stdout
    p = run_launcher("allocators")
    assert p.returncode == 0 and list(json.loads(p.stdout)) == ["glibc", "jemalloc", "mimalloc", "tcmalloc"]
    p = run_launcher("reference")
    assert p.returncode == 0 and p.stdout == (REPO / "docs" / "host-settings.md").read_text()


def test_launcher_exec_starts_the_interpreter_with_the_startup_options():
    probe = ("import os, sys; from hostenv.observe import debug_ranges_in_effect; "
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
    p = run_launcher("exec", "default")
    assert p.returncode == 2 and "give the command after --" in p.stderr


def test_runtime_reexecution_carries_the_interpreter_options(monkeypatch):
    from runtime import cli

    seen = {}

    def fake_execve(path, argv, env):
        seen.update(path=path, argv=argv, env=env)
        raise SystemExit(0)

    monkeypatch.delenv(hostenv.ENV_SETTINGS, raising=False)
    monkeypatch.setattr(os, "execve", fake_execve)
    args = cli.build_parser().parse_args(["workload", "decode-b1", "--host-settings", "startup-lean"])
    args.argv = ["workload", "decode-b1", "--host-settings", "startup-lean"]
    with pytest.raises(SystemExit):
        cli._enter_host_settings(args)
    assert seen["argv"][:4] == [sys.executable, "-X", "frozen_modules=on", "-m"]
    assert seen["env"]["PYTHONNODEBUGRANGES"] == "1"


def test_runtime_cli_maps_a_bad_host_set_to_exit_2_naming_its_flag(monkeypatch, capsys):
    pytest.importorskip("numpy")
    from runtime import cli

    monkeypatch.delenv(hostenv.ENV_SETTINGS, raising=False)
    assert cli.main(["workload", "decode-b1", "--host-set", "gc.bogus=1"]) == 2
    assert capsys.readouterr().err.startswith("error: command line --host-set gc.bogus=1: unknown key 'gc.bogus'")
