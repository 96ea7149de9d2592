"""Unit: profile model: extends chain, per-target overrides, env/CLI overrides, strict validation."""

from __future__ import annotations

from pathlib import Path

import pytest

from buildsys import cli
from buildsys.core.paths import PROFILES_DIR
from buildsys.errors import ProfileError
from buildsys.toolchain import profile


def write(d: Path, name: str, text: str) -> Path:
    p = d / f"{name}.toml"
    p.write_text(text)
    return p


def test_every_shipped_profile_loads() -> None:
    names = profile.available()
    for required in ("baseline", "lto", "generic-pgo-lto", "native", "gcc-pgo-lto", "bisheng-kunpeng920"):
        assert required in names
    for n in names:
        profile.load(n, environ={})


def test_extends_chain_and_defaults() -> None:
    p = profile.load("generic-pgo-lto", environ={})
    assert p.files == tuple(str(PROFILES_DIR / f"{n}.toml") for n in ("generic-pgo-lto", "lto", "baseline"))
    assert (p.toolchain.family, p.optimize.lto, p.optimize.pgo, p.optimize.shared) == ("clang", "thin", "on", False)
    assert p.optimize.opt == "O3"  # from baseline
    assert p.optimize.linker == "lld"  # from lto
    base = profile.load("baseline", environ={})
    assert base.optimize.shared is True and base.optimize.lto == "off" and base.optimize.pgo == "off"


def test_profile_by_path_and_relative_extends(tmp_path: Path) -> None:
    write(tmp_path, "mybase", '[optimize]\nopt = "O2"\n')
    child = write(tmp_path, "mine", 'extends = "mybase.toml"\n[optimize]\nlto = "full"\n')
    p = profile.load(str(child), environ={})
    assert p.name == "mine" and p.optimize.opt == "O2" and p.optimize.lto == "full"


def test_per_target_override_applies_only_to_that_target(tmp_path: Path) -> None:
    f = write(tmp_path, "t", '[optimize]\nlto = "thin"\n[targets.ray.optimize]\nlto = "off"\n'
                             '[targets.cpython.flags]\ncflags = ["-fno-plt"]\n')
    names = ("cpython", "ray")  # a second target as the next issues will register it
    cp = profile.load(str(f), target="cpython", environ={}, target_names=names)
    ray = profile.load(str(f), target="ray", environ={}, target_names=names)
    assert cp.optimize.lto == "thin" and cp.flags.cflags == ("-fno-plt",)
    assert ray.optimize.lto == "off" and ray.flags.cflags == ()


def test_env_then_cli_overrides(tmp_path: Path) -> None:
    p = profile.load("generic-pgo-lto", environ={"HOSTPGO_SET": "optimize.lto=full optimize.opt=O2"},
                     overrides=["optimize.lto=off"])
    assert p.optimize.lto == "off"  # command line wins over the environment
    assert p.optimize.opt == "O2"
    assert p.overrides == ("env:optimize.lto=full", "env:optimize.opt=O2", "cli:optimize.lto=off")


def test_unknown_key_names_file_key_and_allowed(tmp_path: Path) -> None:
    f = write(tmp_path, "bad", '[optimize]\nltoo = "thin"\n')
    with pytest.raises(ProfileError) as e:
        profile.load(str(f), environ={})
    msg = str(e.value)
    assert str(f) in msg and "optimize.ltoo" in msg and "lto" in msg and "pgo" in msg


def test_bad_value_names_allowed_values(tmp_path: Path) -> None:
    f = write(tmp_path, "bad", '[optimize]\nlto = "fat"\n')
    with pytest.raises(ProfileError, match=r"bad\.toml: key 'optimize.lto' has value 'fat'; allowed values: "
                                           r"'off', 'thin', 'full'"):
        profile.load(str(f), environ={})


@pytest.mark.parametrize("text, fragment", [
    ('[optimize]\nshared = "yes"\n', "key 'optimize.shared' must be bool"),
    ('[optimize]\narch = "-march=native"\n', "one of none, native, host, march=NAME"),
    ('[frobnicate]\nx = 1\n', "unknown key 'frobnicate'"),
    ('[flags]\ncflags = "-O2"\n', "must be a list of strings"),
    ('[targets.nginx.optimize]\nlto = "thin"\n', "unknown key 'targets.nginx'"),
    ('[targets.cpython.optimize]\nlto = "fat"\n', "[targets.cpython]: key 'optimize.lto'"),
    ('[optimize]\nbolt = "yes"\n', "key 'optimize.bolt' must be bool"),
    ('[bolt]\nrelocs = true\n', "unknown key 'bolt.relocs'; allowed keys in [bolt]: method, apply"),
    ('[bolt]\nskip_functions = ["f@llvm>21"]\n', "key 'bolt.skip_functions' has value ['f@llvm>21']"),
    ('extends = "nope"\n', "key 'extends': unknown profile 'nope'"),
    ('[toolchain\n', "not valid TOML"),
])
def test_validation_errors(tmp_path: Path, text: str, fragment: str) -> None:
    f = write(tmp_path, "bad", text)
    with pytest.raises(ProfileError) as e:
        profile.load(str(f), environ={})
    assert fragment in str(e.value) and str(f) in str(e.value)


def test_extends_cycle(tmp_path: Path) -> None:
    write(tmp_path, "a", 'extends = "b.toml"\n')
    write(tmp_path, "b", 'extends = "a.toml"\n')
    with pytest.raises(ProfileError, match="cycle"):
        profile.load(str(tmp_path / "a.toml"), environ={})


def test_bad_override_syntax() -> None:
    with pytest.raises(ProfileError, match="section.key=value"):
        profile.load("baseline", overrides=["lto"], environ={})
    with pytest.raises(ProfileError, match="command line --set optimize.lto=x: key 'optimize.lto' has value 'x'"):
        profile.load("baseline", overrides=["optimize.lto=x"], environ={})


def test_unknown_profile_lists_known() -> None:
    with pytest.raises(ProfileError, match="known profiles: .*baseline"):
        profile.load("does-not-exist", environ={})


def test_cli_turns_profile_error_into_exit_code(tmp_path: Path, capsys) -> None:
    f = write(tmp_path, "bad", '[optimize]\nlto = "fat"\n')
    assert cli.main(["show-profile", str(f)]) == 2
    err = capsys.readouterr().err
    assert "optimize.lto" in err and "'off', 'thin', 'full'" in err


def test_target_scopes_come_from_the_registry(tmp_path: Path) -> None:
    from buildsys import targets
    assert "cpython" in targets.names()
    f = write(tmp_path, "t", '[targets.nginx.optimize]\nlto = "off"\n')
    allowed = ", ".join(targets.names())  # every registered target, in name order
    with pytest.raises(ProfileError, match=rf"unknown key 'targets.nginx'; allowed targets: {allowed}$"):
        profile.load(str(f), environ={})
    assert {"cpython", "mindspore", "ray", "mimalloc", "jemalloc", "tcmalloc"} <= set(targets.names())
    # A registered target's table applies to that target only.
    f = write(tmp_path, "r", 'extends = "lto"\n[targets.ray.optimize]\nlto = "off"\n')
    assert profile.load(str(f), target="ray", environ={}).optimize.lto == "off"
    assert profile.load(str(f), target="cpython", environ={}).optimize.lto == "thin"


def test_env_overrides_are_shell_words_and_errors_name_the_variable() -> None:
    p = profile.load("baseline", environ={"HOSTPGO_SET": "'flags.cflags=[\"-g\", \"-fno-plt\"]'"})
    assert p.flags.cflags == ("-g", "-fno-plt")
    with pytest.raises(ProfileError, match=r"environment variable HOSTPGO_SET \('optimize.lto=fat'\): "
                                           r"key 'optimize.lto' has value 'fat'"):
        profile.load("baseline", environ={"HOSTPGO_SET": "optimize.lto=fat"})
