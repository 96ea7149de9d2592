"""hostenv.settings: the schema, validation, one precedence, errors naming the real source, JSON/TOML round trips,
and docs/host-settings.md generated from the schema."""

import json
from pathlib import Path

import pytest

import hostenv
from hostenv import settings as hs
from hostenv.settings import HostSettings, HostSettingsError
from hostpgo.errors import SettingsError

REPO = Path(__file__).resolve().parents[2]


def write(tmp_path, name, text):
    p = tmp_path / f"{name}.toml"
    p.write_text(text)
    return p


@pytest.fixture(autouse=True)
def _isolated(monkeypatch):
    for k in (hs.ENV_SET, hs.ENV_LAUNCH_BLOCKING, hs.ENV_SETTINGS, hs.ENV_PROFILES):
        monkeypatch.delenv(k, raising=False)


def test_every_shipped_settings_file_loads():
    names = sorted(p.stem for p in (REPO / "profiles" / "host").glob("*.toml"))
    assert {"default", "jemalloc", "mimalloc", "tcmalloc", "pipelined", "gc-freeze"} <= set(names)
    for name in names:
        s = hostenv.resolve(name, env={})
        assert s.name == name and s.source == str((REPO / "profiles" / "host" / f"{name}.toml").resolve())


def test_defaults_without_a_file():
    s = hostenv.resolve(None, env={})
    assert s == HostSettings()
    assert s.allocator.name == "glibc" and s.mindspore.launch == "blocking" and s.gc.thresholds is None
    assert s.summary() == "defaults"


def test_errors_are_settings_errors_exit_2():
    assert issubclass(HostSettingsError, SettingsError) and HostSettingsError("x").exit_code == 2
    assert issubclass(hostenv.AllocatorNotFound, HostSettingsError)


def test_unknown_keys_name_the_file_and_the_key(tmp_path):
    p = write(tmp_path, "bad", "[allocator]\nname = 'jemalloc'\nnmae = 'x'\n")
    with pytest.raises(HostSettingsError, match=r"bad\.toml: unknown key 'allocator\.nmae'; allowed keys in "
                                                r"\[allocator\]: name, library, build, tunables"):
        hostenv.resolve(p, env={})
    p = write(tmp_path, "bad2", "[threads]\nn = 1\n")
    with pytest.raises(HostSettingsError, match=r"bad2\.toml: unknown key 'threads'; allowed: allocator, gc"):
        hostenv.resolve(p, env={})


@pytest.mark.parametrize("body, key, says", [
    ("[allocator]\nname = 'hoard'", "allocator.name", "allowed values: 'glibc', 'jemalloc', 'mimalloc', 'tcmalloc'"),
    ("[allocator]\nlibrary = 3", "allocator.library", "a path"),
    ("[allocator.tunables]\nnarenas = [1]", "allocator.tunables", "option 'narenas'"),
    ("[mindspore]\nlaunch = 'async'", "mindspore.launch", "allowed values: 'blocking', 'pipelined'"),
    ("[mindspore]\nop_threads = -2", "mindspore.op_threads", "a positive thread count"),
    ("[mindspore]\naffinity_cpus = ['0-x']", "mindspore.affinity_cpus", "'0-x'"),
    ("[mindspore]\naffinity_cpus = ['3-1']", "mindspore.affinity_cpus", "'3-1'"),
    ("[mindspore.affinity_modules]\nworker = [0]", "mindspore.affinity_modules", "module 'worker'"),
    ("[gc]\nthresholds = [1, 2]", "gc.thresholds", "three non-negative integers"),
    ("[gc]\nfreeze_after_warmup = 'maybe'", "gc.freeze_after_warmup", "'maybe'"),
    ("[startup]\nbytecode = 'hash'", "startup.bytecode", "'timestamp', 'checked-hash', 'unchecked-hash'"),
    ("[startup]\nprecompile = 2", "startup.precompile", "has value 2"),
    ("[startup]\nfrozen_modules = 'maybe'", "startup.frozen_modules", "\"default\""),
    ("[startup]\nno_debug_ranges = 'x'", "startup.no_debug_ranges", "'x'"),
])
def test_bad_values_name_file_key_and_what_is_allowed(tmp_path, body, key, says):
    p = write(tmp_path, "v", body + "\n")
    with pytest.raises(HostSettingsError) as exc:
        hostenv.resolve(p, env={})
    assert str(exc.value).startswith(f"{p.resolve()}: key '{key}' ") and says in str(exc.value)


def test_precedence_defaults_file_env_cli(tmp_path):
    p = write(tmp_path, "mine", "[allocator]\nname = 'jemalloc'\n[gc]\nenabled = false\nthresholds = [1000, 10, 10]\n")
    env = {hs.ENV_SET: "gc.enabled=true allocator.name=mimalloc", hs.ENV_LAUNCH_BLOCKING: "0"}
    layered = hs.resolve_layered(p, ["allocator.name=tcmalloc"], env=env)
    s = hs.from_layered(layered)
    assert s.allocator.name == "tcmalloc"          # CLI over env over file
    assert s.gc.enabled is True                     # env over file
    assert s.gc.thresholds == (1000, 10, 10)        # file over defaults
    assert s.mindspore.launch == "pipelined"        # the runtime's older switch is an env layer
    assert s.overrides == ("HOSTPGO_RUNTIME_LAUNCH_BLOCKING=0", "HOSTPGO_HOST_SET: gc.enabled=true",
                           "HOSTPGO_HOST_SET: allocator.name=mimalloc", "--set allocator.name=tcmalloc")
    assert str(layered.origins["gc.thresholds"]) == str(p.resolve())
    assert str(layered.origins["gc.enabled"]) == "environment variable HOSTPGO_HOST_SET ('gc.enabled=true')"
    assert str(layered.origins["allocator.name"]) == "command line --set allocator.name=tcmalloc"
    assert str(layered.origins["mindspore.launch"]) == "environment variable HOSTPGO_RUNTIME_LAUNCH_BLOCKING ('0')"
    # HOSTPGO_HOST_SET comes after HOSTPGO_RUNTIME_LAUNCH_BLOCKING; values may be quoted shell words.
    env = {hs.ENV_LAUNCH_BLOCKING: "0", hs.ENV_SET: "mindspore.launch=blocking 'mindspore.affinity_cpus=[\"0-1\"]'"}
    s = hostenv.resolve(None, env=env)
    assert s.mindspore.launch == "blocking" and s.mindspore.affinity_cpus == ("0-1",)


@pytest.mark.parametrize("value, launch", [("0", "pipelined"), ("1", "blocking"), ("", "blocking")])
def test_launch_blocking_switch(value, launch):
    assert hostenv.resolve(None, env={hs.ENV_LAUNCH_BLOCKING: value}).mindspore.launch == launch


def test_a_bad_launch_blocking_value_names_the_variable():
    with pytest.raises(HostSettingsError, match=r"^environment variable HOSTPGO_RUNTIME_LAUNCH_BLOCKING \('yes'\): "
                                                r"must be 0"):
        hostenv.resolve(None, env={hs.ENV_LAUNCH_BLOCKING: "yes"})


def test_a_bad_override_is_blamed_on_its_source_not_the_file(tmp_path):
    """Issue 16: a bad value given by --set or HOSTPGO_HOST_SET was blamed on the settings file."""
    p = write(tmp_path, "fine", "[gc]\nenabled = false\n")
    with pytest.raises(HostSettingsError) as exc:
        hostenv.resolve(p, ["gc.thresholds=[1, 2]"], env={})
    assert str(exc.value).startswith("command line --set gc.thresholds=[1, 2]: key 'gc.thresholds' has value [1, 2]")
    assert "fine.toml" not in str(exc.value)
    with pytest.raises(HostSettingsError) as exc:
        hostenv.resolve(p, env={hs.ENV_SET: "gc.enabled=true mindspore.launch=async"})
    assert str(exc.value).startswith("environment variable HOSTPGO_HOST_SET ('mindspore.launch=async'): key "
                                     "'mindspore.launch' has value 'async'")
    assert "fine.toml" not in str(exc.value)
    with pytest.raises(HostSettingsError, match=r"^environment variable HOSTPGO_HOST_SET: No closing quotation"):
        hostenv.resolve(p, env={hs.ENV_SET: "gc.enabled='true"})


def test_extends_chain_and_cycle(tmp_path):
    write(tmp_path, "base", "description = 'base'\n[gc]\nfreeze_after_warmup = true\n")
    child = write(tmp_path, "child", "extends = 'base.toml'\n[allocator]\nname = 'jemalloc'\n")
    s = hostenv.resolve(child, env={})
    assert s.gc.freeze_after_warmup and s.allocator.name == "jemalloc" and s.description == "base"
    assert s.name == "child"
    a = write(tmp_path, "a", "extends = 'b.toml'\n")
    write(tmp_path, "b", "extends = 'a.toml'\n")
    with pytest.raises(HostSettingsError, match="'extends' forms a cycle"):
        hostenv.resolve(a, env={})
    bad = write(tmp_path, "bad-base", "extends = 'nowhere.toml'\n")
    with pytest.raises(HostSettingsError, match=r"bad-base\.toml: key 'extends': host settings file 'nowhere.toml'"):
        hostenv.resolve(bad, env={})


def test_override_syntax_errors():
    with pytest.raises(HostSettingsError, match=r"^command line --set gc.bogus=1: unknown key 'gc.bogus'"):
        hostenv.resolve(None, ["gc.bogus=1"], env={})
    with pytest.raises(HostSettingsError, match="section.key=value"):
        hostenv.resolve(None, ["gc"], env={})


def test_named_settings_are_found_and_unknown_names_listed(tmp_path, monkeypatch):
    write(tmp_path, "here", "[gc]\nenabled = false\n")
    monkeypatch.setenv(hs.ENV_PROFILES, str(tmp_path))
    assert hostenv.resolve("here", env={}).gc.enabled is False
    with pytest.raises(HostSettingsError, match=r"no host settings named 'nope'.*known: here"):
        hostenv.resolve("nope", env={})


def test_json_and_toml_round_trip(tmp_path):
    s = hostenv.resolve("affinity-split", ["gc.thresholds=[5000, 10, 10]", "allocator.name=jemalloc",
                                           "allocator.tunables={narenas = \"2\"}"], env={})
    back = HostSettings.from_json(json.loads(json.dumps(s.to_json())))
    assert back == s
    text = s.to_toml(["a header"])
    assert text.startswith("# a header")
    again = hostenv.resolve(write(tmp_path, "again", text), env={})
    assert (again.allocator, again.mindspore, again.gc, again.startup) == (s.allocator, s.mindspore, s.gc, s.startup)


def test_from_json_checks_values_and_names_where():
    data = hostenv.resolve(None, env={}).to_json()
    data["gc"]["thresholds"] = [1]
    with pytest.raises(HostSettingsError, match=r"^perf subject: key 'gc.thresholds'"):
        HostSettings.from_json(data, "perf subject")


def test_active_reads_the_launchers_json_and_falls_back_to_env():
    s = hostenv.resolve("gc-freeze", env={})
    env = {hs.ENV_SETTINGS: json.dumps(s.to_json())}
    assert hostenv.active(env) == s
    assert hostenv.active({hs.ENV_LAUNCH_BLOCKING: "0"}).mindspore.launch == "pipelined"
    assert hostenv.active({}).mindspore.launch == "blocking"
    with pytest.raises(HostSettingsError, match="HOSTPGO_HOST_SETTINGS: not valid JSON"):
        hostenv.active({hs.ENV_SETTINGS: "{oops"})


def test_startup_settings_file_and_overrides():
    s = hostenv.resolve("startup-lean", env={})
    assert s.startup == hostenv.StartupSettings(precompile=True, bytecode="unchecked-hash", frozen_modules=True,
                                                no_debug_ranges=True)
    assert "startup.bytecode=unchecked-hash" in s.summary()
    off = hostenv.resolve("startup-precompiled", ["startup.frozen_modules=off"], env={})
    assert off.startup.frozen_modules is False and off.startup.no_debug_ranges is False
    assert hostenv.resolve("startup-precompiled", ["startup.frozen_modules=default"], env={}).startup.frozen_modules \
        is None
    assert HostSettings.from_json(json.loads(json.dumps(s.to_json()))) == s


def test_docs_host_settings_md_is_generated_from_the_schema():
    """docs/host-settings.md is `python -m hostenv reference`; regenerate it when this fails."""
    text = (REPO / "docs" / "host-settings.md").read_text(encoding="utf-8")
    assert text == hs.reference(), "docs/host-settings.md is stale: python -m hostenv reference > docs/host-settings.md"
    for section, keys in hs.SCHEMA.items():
        assert f"## `[{section}]`" in text
        assert all(f"| `{k}` |" in text for k in keys)
