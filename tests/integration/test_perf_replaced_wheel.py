"""Integration: a perf subject with a replaced wheel gets a venv of its own in which pip really installed that
wheel instead of the wheelhouse's build, while the stock subject's venv keeps the stock one.

The wheelhouse is made up (a stand-in `hostpgo` 0.1.0 that requires `demo==1.0`, and `demo` 1.0), so the test
needs no index and runs in seconds: two `python -m venv` and offline pip installs of three tiny wheels."""

from __future__ import annotations

import base64
import hashlib
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from perf import envs
from perf.errors import SpecError
from perf.interpreters import parse_spec, resolve

pytestmark = pytest.mark.integration


def wheel(dest: Path, name: str, version: str, files: dict[str, bytes], requires: tuple[str, ...] = (),
          extras: tuple[str, ...] = ()) -> Path:
    di = f"{name}-{version}.dist-info"
    meta = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n" + "".join(
        f"Provides-Extra: {e}\n" for e in extras) + "".join(f"Requires-Dist: {r}\n" for r in requires)
    members = {**files, f"{di}/METADATA": meta.encode(),
               f"{di}/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    rows = [f"{a},sha256={base64.urlsafe_b64encode(hashlib.sha256(d).digest()).rstrip(b'=').decode()},{len(d)}"
            for a, d in members.items()] + [f"{di}/RECORD,,"]
    dest.mkdir(parents=True, exist_ok=True)
    path = dest / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as z:
        for a, d in members.items():
            z.writestr(a, d)
        z.writestr(f"{di}/RECORD", "\n".join(rows) + "\n")
    return path


def test_replaced_wheel_is_what_the_subjects_venv_runs(tmp_path, monkeypatch):
    monkeypatch.setenv("HOSTPGO_HOME", str(tmp_path / "home"))
    house = tmp_path / "house"
    wheel(house, "hostpgo", "0.1.0", {"hostpgo_standin/__init__.py": b""}, requires=("demo==1.0",), extras=("perf",))
    wheel(house, "demo", "1.0", {"demo/__init__.py": b"BUILD = 'stock'\n", "demo/libdemo.so": b"stock"})
    new = wheel(tmp_path / "dist", "demo", "1.0+bolt.1a2b3c4d",
                {"demo/__init__.py": b"BUILD = 'stock'\n", "demo/libdemo.so": b"rewritten"})
    monkeypatch.setattr(envs, "build_wheelhouse", lambda py, tag, extras, log: house)
    stock = resolve(parse_spec(f"stock={sys.executable}"))
    bolt = resolve(parse_spec(f"bolt={sys.executable}+wheel:{new}"))
    log = tmp_path / "log"
    s_env, b_env = envs.prepare([stock, bolt], ("perf",), log)
    assert s_env.root != b_env.root and b_env.root.name.endswith(f"-whl-{bolt.wheels_digest[:10]}")

    def lib(env: envs.Env) -> str:
        code = ("import importlib.metadata as m, pathlib, demo; "
                "print(m.version('demo'), pathlib.Path(demo.__file__).with_name('libdemo.so').read_text())")
        return subprocess.run([str(env.python), "-c", code], capture_output=True, text=True, check=True).stdout.strip()

    assert lib(s_env) == "1.0 stock"
    assert lib(b_env) == "1.0+bolt.1a2b3c4d rewritten"
    (rec,) = b_env.wheels
    assert rec["replaces"] == "demo-1.0-py3-none-any.whl" and rec["changed_files"] == ["demo/libdemo.so"]
    assert json.loads((b_env.root / envs.STAMP).read_text())["wheels"] == bolt.wheels_digest
    # Prepared again: the stamps match, nothing is reinstalled (the log has no new pip install).
    before = log.read_text().count("pip install")
    assert before >= 3  # stock: one install + the project's; bolt: one install (with the wheel) + the project's
    envs.prepare([stock, bolt], ("perf",), log)
    assert log.read_text().count("pip install") == before
    # A wheel of a distribution the requirement set lacks is refused before pip installs anything.
    other = wheel(tmp_path / "other", "ray", "2.0+bolt.0", {"ray/__init__.py": b""})
    with pytest.raises(SpecError, match=r"\+wheel:.*'ray' is not in this venv's requirement set"):
        envs.prepare([resolve(parse_spec(f"r={sys.executable}+wheel:{other}"))], ("perf",), log)
