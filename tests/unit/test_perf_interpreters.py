"""Interpreter specs: parsing, errors naming the flag, hostpgo build lookup by name."""

import json
import os
import sys
from pathlib import Path

import pytest

from perf.errors import SpecError
from perf.interpreters import find_builds, parse_spec, resolve, resolve_all


def test_parse_forms():
    assert parse_spec("sys=/usr/bin/python3").name == "sys"
    assert parse_spec("/usr/bin/python3").name is None
    assert parse_spec("cpython-3.11.2-workload-pgo-lto").target == "cpython-3.11.2-workload-pgo-lto"


@pytest.mark.parametrize("text,match", [
    ("", "empty value"),
    ("=/usr/bin/python3", "name before '=' is empty"),
    ("sys=", "path after '=' is empty"),
    ("bad name=/usr/bin/python3", "may hold letters"),
])
def test_parse_errors_name_the_flag(text, match):
    with pytest.raises(SpecError, match=match) as info:
        parse_spec(text)
    assert "--interp" in str(info.value)


def test_missing_path_and_unknown_name(tmp_path):
    with pytest.raises(SpecError, match="does not exist"):
        resolve(parse_spec(str(tmp_path / "nope" / "python")), tmp_path)
    with pytest.raises(SpecError, match="builds found: none"):
        resolve(parse_spec("no-such-build-xyz"), tmp_path)


def _fake_build(home: Path, name: str) -> Path:
    prefix = home / "install" / name
    (prefix / "bin").mkdir(parents=True)
    os.symlink(sys.executable, prefix / "bin" / "python3")
    (prefix / "hostpgo-manifest.json").write_text(json.dumps({"schema": 1, "build_id": f"id-{name}"}))
    return prefix


def test_hostpgo_build_by_name(tmp_path):
    prefix = _fake_build(tmp_path, "cpython-3.11.2-baseline")
    manifest = prefix / "hostpgo-manifest.json"
    assert find_builds(tmp_path) == {"cpython-3.11.2-baseline": manifest, "id-cpython-3.11.2-baseline": manifest}
    interp = resolve(parse_spec("cpython-3.11.2-baseline"), tmp_path)
    assert interp.name == "cpython-3.11.2-baseline"
    assert interp.origin == "hostpgo-build"
    assert interp.python == str(prefix / "bin" / "python3")
    assert len(interp.manifest_digest) == 64 and interp.build_id == "id-cpython-3.11.2-baseline"
    assert resolve(parse_spec("id-cpython-3.11.2-baseline"), tmp_path).python == interp.python
    assert interp.version == f"{sys.version_info[0]}.{sys.version_info[1]}.{sys.version_info[2]}"
    # The prefix directory itself works too, and a path inside a prefix picks up its manifest.
    assert resolve(parse_spec(f"b={prefix}"), tmp_path).manifest_digest == interp.manifest_digest
    assert resolve(parse_spec(f"c={prefix}/bin/python3"), tmp_path).origin == "hostpgo-build"


def test_duplicate_names_are_refused(tmp_path):
    with pytest.raises(SpecError, match="already used"):
        resolve_all([f"x={sys.executable}", f"x={sys.executable}"], tmp_path)
    with pytest.raises(SpecError, match="at least one"):
        resolve_all([], tmp_path)


def test_hostpgo_build_by_profile_name_skips_instrumented(tmp_path):
    for name in ("cpython-3.11.2-generic-pgo-lto", "cpython-3.11.2-generic-pgo-lto-instrumented"):
        prefix = _fake_build(tmp_path, name)
        manifest = prefix / "hostpgo-manifest.json"
        manifest.write_text(json.dumps({"schema": 1, "build_id": name, "profile": {"name": "generic-pgo-lto"}}))
    builds = find_builds(tmp_path)
    assert (builds["generic-pgo-lto"]
            == tmp_path / "install" / "cpython-3.11.2-generic-pgo-lto" / "hostpgo-manifest.json")
    assert resolve(parse_spec("generic-pgo-lto"), tmp_path).build_id == "cpython-3.11.2-generic-pgo-lto"


def test_a_binary_replaced_during_a_run_is_refused(tmp_path):
    import hashlib

    from perf.errors import IncompatibleResults
    from perf.interpreters import Interpreter, assert_unchanged

    exe = tmp_path / "python3"
    exe.write_bytes(b"first build")
    interp = Interpreter(name="opt", python=str(exe), version="3.11.2", implementation="cpython",
                         cache_tag="cpython-311", exe_sha256=hashlib.sha256(b"first build").hexdigest())
    assert_unchanged(interp, "the latency stage")
    exe.write_bytes(b"second build")  # the pipeline reinstalled the prefix meanwhile
    with pytest.raises(IncompatibleResults, match=r"interpreter opt: its executable .*python3 changed during the "
                                                  r"latency stage .*rebuilt or reinstalled"):
        assert_unchanged(interp, "the latency stage")


def test_probe_spots_a_linked_allocator_by_the_tables_shared_object_names(monkeypatch, capsys):
    import io

    from perf import interpreters

    maps = ("7f00-7f01 r-xp 0 08:01 1 /usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4.5.10\n"
            "7f02-7f03 r-xp 0 08:01 2 /usr/lib/x86_64-linux-gnu/libc.so.6\n")
    monkeypatch.delenv("LD_PRELOAD", raising=False)
    exec(interpreters.probe_code(), {"__name__": "probe", "open": lambda *a, **k: io.StringIO(maps)})
    assert json.loads(capsys.readouterr().out)["allocators_linked"] == ["tcmalloc"]
