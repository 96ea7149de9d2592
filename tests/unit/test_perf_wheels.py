"""Subjects with replaced wheels (`--interp NAME=PY+wheel:W.whl`): parsing, identity, venv keying, the check
against the wheelhouse, and the report's interpreter table and per-library shift."""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

from perf import attribute, envs, report
from perf.errors import SpecError
from perf.interpreters import Interpreter, parse_spec, resolve

FIXTURE = Path(__file__).resolve().parent.parent / "perf" / "fixtures" / "run-small"
WHEELBOLT_TOML = Path(__file__).resolve().parents[2] / "buildsys" / "pipeline" / "wheelbolt.toml"


def make_wheel(dest: Path, name: str, version: str, files: dict[str, bytes]) -> Path:
    """A minimal wheel: the files, METADATA and a RECORD with their sha256."""
    di = f"{name}-{version}.dist-info"
    members = {**files, f"{di}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode()}
    rows = []
    for arc, data in members.items():
        h = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        rows.append(f"{arc},sha256={h},{len(data)}")
    rows.append(f"{di}/RECORD,,")
    path = dest / f"{name}-{version}-py3-none-any.whl"
    dest.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as z:
        for arc, data in members.items():
            z.writestr(arc, data)
        z.writestr(f"{di}/RECORD", "\n".join(rows) + "\n")
    return path


def test_parse_wheel_suffix_with_and_without_host_settings():
    spec = parse_spec("bolt=/usr/bin/python3+wheel:/w/mindspore-2.10.0+bolt.1a2b3c4d-cp311-cp311-linux_x86_64.whl")
    assert (spec.name, spec.target) == ("bolt", "/usr/bin/python3")
    assert spec.wheels == ("/w/mindspore-2.10.0+bolt.1a2b3c4d-cp311-cp311-linux_x86_64.whl",)
    assert spec.host is None
    spec = parse_spec("b=/usr/bin/python3+wheel:/w/a-1+x-py3-none-any.whl+wheel:/w/b-2-py3-none-any.whl@jemalloc")
    assert spec.wheels == ("/w/a-1+x-py3-none-any.whl", "/w/b-2-py3-none-any.whl")
    assert (spec.target, spec.host) == ("/usr/bin/python3", "jemalloc")
    assert parse_spec("/usr/bin/python3").wheels == ()


@pytest.mark.parametrize("text,match", [
    ("b=/usr/bin/python3+wheel:", "wheel path after '\\+wheel:' is empty"),
    ("b=/usr/bin/python3+wheel:/w/mindspore.tar.gz", "does not name a .whl file"),
    ("b=/usr/bin/python3+wheel:/w/a-1-py3-none-any.whl+wheel:/v/a-1-py3-none-any.whl", "same wheel is given twice"),
])
def test_parse_wheel_errors_name_the_flag(text, match):
    with pytest.raises(SpecError, match=match) as info:
        parse_spec(text)
    assert "--interp" in str(info.value)


def test_resolve_reads_the_wheel_and_the_venv_is_keyed_by_its_sha256(tmp_path, monkeypatch):
    monkeypatch.setenv("HOSTPGO_HOME", str(tmp_path / "home"))
    one = make_wheel(tmp_path / "one", "MindSpore", "2.10.0+bolt.1a2b3c4d", {"mindspore/lib/libm.so": b"A"})
    two = make_wheel(tmp_path / "two", "MindSpore", "2.10.0+bolt.1a2b3c4d", {"mindspore/lib/libm.so": b"B"})
    stock = resolve(parse_spec(f"stock={sys.executable}"), tmp_path)
    a = resolve(parse_spec(f"bolt={sys.executable}+wheel:{one}"), tmp_path)
    b = resolve(parse_spec(f"bolt={sys.executable}+wheel:{two}"), tmp_path)
    (w,) = a.wheels
    assert (w.distribution, w.version, w.public_version) == ("mindspore", "2.10.0+bolt.1a2b3c4d", "2.10.0")
    assert w.sha256 == hashlib.sha256(one.read_bytes()).hexdigest() and w.path == str(one)
    assert stock.wheels == () and stock.wheels_digest == ""
    # Same name, same executable: the venvs differ by the wheels' digest only; the stock venv has no suffix.
    assert envs.venv_dir(stock).name == f"stock-{stock.exe_sha256[:10]}"
    assert envs.venv_dir(a).name == f"bolt-{a.exe_sha256[:10]}-whl-{a.wheels_digest[:10]}"
    assert envs.venv_dir(a) != envs.venv_dir(b)
    assert Interpreter.from_json(json.loads(json.dumps(a.to_json()))) == a
    # Without a name, the derived one says which wheel the subject runs.
    derived = resolve(parse_spec(f"{sys.executable}+wheel:{one}"), tmp_path)
    assert derived.name.endswith("_mindspore-2.10.0-bolt.1a2b3c4d")


def test_resolve_refuses_a_missing_or_misnamed_wheel(tmp_path):
    with pytest.raises(SpecError, match=r"--interp .*\+wheel:.*is not a file"):
        resolve(parse_spec(f"b={sys.executable}+wheel:{tmp_path}/absent-1-py3-none-any.whl"), tmp_path)
    bad = tmp_path / "notawheel.whl"
    bad.write_bytes(b"")
    with pytest.raises(SpecError, match="not a wheel file name"):
        resolve(parse_spec(f"b={sys.executable}+wheel:{bad}"), tmp_path)


def test_replacement_lists_the_changed_files_and_refuses_what_the_venv_does_not_install(tmp_path):
    house = tmp_path / "house"
    make_wheel(house, "mindspore", "2.10.0", {"mindspore/lib/libmindspore_core.so": b"stock",
                                              "mindspore/lib/libdnnl.so.3": b"same", "mindspore/__init__.py": b""})
    make_wheel(house, "numpy", "1.26.4", {"numpy/__init__.py": b""})
    new = make_wheel(tmp_path / "dist", "mindspore", "2.10.0+bolt.1a2b3c4d",
                     {"mindspore/lib/libmindspore_core.so": b"bolted", "mindspore/lib/libdnnl.so.3": b"same",
                      "mindspore/__init__.py": b""})
    interp = resolve(parse_spec(f"bolt={sys.executable}+wheel:{new}"), tmp_path)
    rec = envs.replacement(interp, interp.wheels[0], house, ("perf", "runtime"))
    assert rec["replaces"] == "mindspore-2.10.0-py3-none-any.whl"
    assert rec["changed_files"] == ["mindspore/lib/libmindspore_core.so"]
    assert rec["only_in_replacement"] == [] and rec["only_in_stock"] == []
    # A distribution outside the requirement set would be added, not swapped: refused, naming the flag.
    other = make_wheel(tmp_path / "other", "ray", "2.9.0+bolt.00000000", {"ray/_raylet.so": b"x"})
    o = resolve(parse_spec(f"o={sys.executable}+wheel:{other}"), tmp_path)
    with pytest.raises(SpecError, match=r"--interp o: \+wheel:.*'ray' is not in this venv's requirement set "
                                        r"\(hostpgo\[perf,runtime\]"):
        envs.replacement(o, o.wheels[0], house, ("perf", "runtime"))
    # Another release of the same distribution is not a rebuild of the stock one.
    later = make_wheel(tmp_path / "later", "mindspore", "2.11.0+bolt.1a2b3c4d", {"mindspore/__init__.py": b""})
    lt = resolve(parse_spec(f"l={sys.executable}+wheel:{later}"), tmp_path)
    with pytest.raises(SpecError, match="would compare two releases"):
        envs.replacement(lt, lt.wheels[0], house, ("perf",))


def test_every_listed_mindspore_library_groups_as_mindspore():
    """bolt-wheel keeps the libraries' names and paths, so attribution groups stock and rewritten alike."""
    libs = tomllib.loads(WHEELBOLT_TOML.read_text())["packages"]["mindspore"]["libraries"]
    names = [Path(p.replace("*", ".cpython-311-x86_64-linux-gnu")).name for p in libs]
    assert names and {attribute.group_of(n) for n in names} == {"MindSpore"}


@pytest.fixture
def replaced_run(tmp_path):
    """run-small with `opt` made a replaced-wheel subject: its venv swapped libmindspore_core.so."""
    dest = tmp_path / "run-small"
    shutil.copytree(FIXTURE, dest)
    rec = json.loads((dest / "run.json").read_text())
    opt = next(i for i in rec["interpreters"] if i["name"] == "opt")
    opt["exe_sha256"] = "cd" * 32  # another executable than base's (the fixture's two share one)
    opt["wheels"] = [{"path": "/w/mindspore-2.10.0+bolt.1a2b3c4d-py3-none-any.whl",
                      "file_name": "mindspore-2.10.0+bolt.1a2b3c4d-py3-none-any.whl", "distribution": "mindspore",
                      "version": "2.10.0+bolt.1a2b3c4d", "sha256": "ab" * 32}]
    rec["venvs"] = {"opt": {"wheels": [{"file": opt["wheels"][0]["file_name"],
                                        "replaces": "mindspore-2.10.0-py3-none-any.whl",
                                        "changed_files": ["mindspore/lib/libmindspore_core.so",
                                                          "mindspore/__init__.py"]}]}}
    for name, share in (("base", 20.0), ("opt", 10.0)):
        for target in rec["attribution"][name]:
            rec["attribution"][name][target]["dso"] = {"libpython3.11.so.1.0": 100.0 - share,
                                                       "libmindspore_core.so": share}
    (dest / "run.json").write_text(json.dumps(rec))
    return dest


def test_report_names_the_replaced_wheel_and_shows_each_replaced_library_shift(replaced_run):
    text = report.build(replaced_run).read_text()
    table = text.split("## Interpreters", 1)[1].split("##", 1)[0]
    assert "| replaced wheels |" in table.splitlines()[2]
    assert "`mindspore 2.10.0+bolt.1a2b3c4d` (sha256 abababababab; 2 files differ from " \
           "`mindspore-2.10.0-py3-none-any.whl`)" in table
    assert "| stock |" in table  # the baseline installs the wheelhouse as it is
    assert "Replaced libraries, opt vs base" in text and "| `libmindspore_core.so` | 20.0% |" in text
    comp = json.loads((replaced_run / report.COMPARISON).read_text())
    medians = {r["name"]: (r["base_median"], r["changed_median"]) for r in comp["latency"][0]["rows"]}
    for target, (b, c) in medians.items():
        shift = comp["replaced_library_shift"][target]["opt"]
        assert shift["stock"] == "base"  # run-small's two subjects are different executables: the baseline
        assert list(shift["libraries"]) == ["libmindspore_core.so"]  # only native libraries, not __init__.py
        assert shift["libraries"]["libmindspore_core.so"] == {"stock": pytest.approx(0.2 * b),
                                                              "changed": pytest.approx(0.1 * c)}


def test_the_shift_compares_against_the_same_interpreter_without_the_wheel(replaced_run):
    rec = json.loads((replaced_run / "run.json").read_text())
    base = next(i for i in rec["interpreters"] if i["name"] == "base")
    opt = next(i for i in rec["interpreters"] if i["name"] == "opt")
    assert report._stock_twin(rec, "opt") == "base" and base["exe_sha256"] != opt["exe_sha256"]
    twin = {**opt, "name": "opt-stock", "wheels": []}
    rec["interpreters"].append(twin)
    assert report._stock_twin(rec, "opt") == "opt-stock"
    twin["host_env"] = {"LD_PRELOAD": "x"}  # other host settings: not the same subject without the wheel
    assert report._stock_twin(rec, "opt") == "base"


def test_report_without_replaced_wheels_keeps_its_interpreter_table(tmp_path):
    dest = tmp_path / "run-small"
    shutil.copytree(FIXTURE, dest)
    text = report.build(dest).read_text()
    assert "replaced wheels" not in text and "Replaced libraries" not in text


def test_the_projects_own_rebuilt_wheel_takes_the_extras_in_place_of_the_wheelhouse_requirement():
    from perf.interpreters import ReplacedWheel

    def wheel(path: str, dist: str, version: str) -> ReplacedWheel:
        return ReplacedWheel(path=path, file_name=Path(path).name, distribution=dist, version=version, sha256="0")

    numpy = wheel("/w/numpy-1.26.4-cp311-cp311-linux_x86_64.whl", "numpy", "1.26.4")
    own = wheel("/w/hostpgo-0.1.0-cp311-cp311-linux_x86_64.whl", "hostpgo", "0.1.0")
    # `hostpgo[perf,runtime]` beside the rebuilt hostpgo wheel is two hostpgo 0.1.0 files: pip's ResolutionImpossible.
    assert envs.install_requirements([numpy, own], ("perf", "runtime")) == [
        numpy.path, f"{own.path}[perf,runtime]"]
    assert envs.install_requirements([numpy], ("perf", "runtime")) == ["hostpgo[perf,runtime]", numpy.path]
    assert envs.install_requirements([], ()) == ["hostpgo"]
