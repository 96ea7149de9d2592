"""Start-up targets: catalog entries, which stages take them, per-flavour venvs, and a real run through the CLI."""

import json
import sys
from pathlib import Path

import pyperf
import pytest

import hostenv
from perf import catalog, envs, session
from perf.__main__ import main
from perf.benchmarks import latency as bench_latency
from perf.interpreters import Interpreter


def test_startup_targets_are_per_process_commands():
    startup, bare = catalog.parse_targets("startup,startup-bare")
    assert startup.mode == bare.mode == "command" and startup.unit == "process" and startup.per_process
    assert startup.needs_runtime and not bare.needs_runtime
    assert "runtime.engine" in startup.code and "mindspore" not in bare.code
    assert not catalog.TARGETS["decode-b1"].per_process and catalog.TARGETS["decode-b1"].unit == "step"


def _plan(targets, counter_targets=None, stages=("latency", "counters", "attribute")):
    return session.Plan(interpreters=(), targets=tuple(catalog.parse_targets(targets)), stages=stages,
                        run_dir=Path("/nonexistent"),
                        counter_targets=(None if counter_targets is None
                                         else tuple(catalog.parse_targets(counter_targets))))


def test_counters_and_attribution_skip_start_up_targets():
    plan = _plan("startup,decode-b1")
    assert [t.name for t in session.stage_targets(plan, "latency")[0]] == ["startup", "decode-b1"]
    for stage in ("counters", "attribute"):
        kept, skipped = session.stage_targets(plan, stage)
        assert [t.name for t in kept] == ["decode-b1"] and [t.name for t in skipped] == ["startup"]
    plan = _plan("startup", counter_targets="pure-python,startup-bare")
    assert [t.name for t in session.stage_targets(plan, "counters")[0]] == ["pure-python"]
    assert session.stage_targets(plan, "attribute")[0] == ()


def test_counters_and_attribution_skip_ray_targets_and_their_venvs_get_the_ray_extra():
    # ray-decode's model runs in Ray's actor processes: one process's counts or samples would be the driver's alone.
    plan = _plan("ray-decode,decode-b1")
    assert [t.name for t in session.stage_targets(plan, "latency")[0]] == ["ray-decode", "decode-b1"]
    for stage in ("counters", "attribute"):
        kept, skipped = session.stage_targets(plan, stage)
        assert [t.name for t in kept] == ["decode-b1"] and [t.name for t in skipped] == ["ray-decode"]
        assert "Ray" in session.ONE_PROCESS_SKIP[stage]
    assert catalog.venv_extras(plan.all_targets) == ("perf", "runtime", "ray")
    assert catalog.venv_extras(catalog.parse_targets("decode-b1,op-dispatch")) == ("perf", "runtime")
    assert catalog.venv_extras(catalog.parse_targets("pure-python")) == ("perf",)


def _interp(name, settings=None, sha="ab" * 32):
    hs = hostenv.resolve(settings, env={}).to_json() if settings else None
    return Interpreter(name=name, python="/x/python3", version="3.11.2", implementation="cpython",
                       cache_tag="cpython-311", exe_sha256=sha, host_settings=hs)


def test_precompiled_subjects_get_a_venv_per_pyc_flavour(tmp_path, monkeypatch):
    monkeypatch.setenv("HOSTPGO_HOME", str(tmp_path))
    plain, je = _interp("w"), _interp("w", "jemalloc")
    pre, lean = _interp("w", "startup-precompiled"), _interp("w", "startup-lean")
    assert envs.pyc_flavour(plain) is envs.pyc_flavour(je) is None
    assert envs.pyc_flavour(pre) == "unchecked-hash" and envs.pyc_flavour(lean) == "unchecked-hash-no-debug-ranges"
    assert envs.venv_dir(plain) == envs.venv_dir(je) == tmp_path / "perf" / "venvs" / "w-abababab" "ab"
    dirs = {envs.venv_dir(i) for i in (plain, pre, lean)}
    assert len(dirs) == 3 and envs.venv_dir(pre).name.endswith("-pyc-unchecked-hash")
    checked = _interp("w", None)
    checked = Interpreter(**{**checked.__dict__, "host_settings": hostenv.resolve(
        None, ["startup.precompile=true", "startup.bytecode=checked-hash"], env={}).to_json()})
    assert envs.venv_dir(checked).name.endswith("-pyc-checked-hash")


def test_the_timed_command_carries_the_subjects_interpreter_options():
    target = catalog.TARGETS["startup"]
    assert bench_latency.command(target, hostenv.resolve(None, env={})) == \
        [sys.executable, "-c", "import runtime.engine"]
    assert bench_latency.command(target, hostenv.resolve("startup-precompiled", env={})) == \
        [sys.executable, "-X", "frozen_modules=on", "-c", "import runtime.engine"]


def test_cli_bench_times_start_up_under_each_subjects_settings(tmp_path):
    pytest.importorskip("numpy")
    settings = tmp_path / "cold.toml"
    settings.write_text("[startup]\nfrozen_modules = false\nno_debug_ranges = true\n")
    out = tmp_path / "run"
    rc = main(["bench", "--interp", f"a={sys.executable}", "--interp", f"b={sys.executable}@{settings}",
               "--workloads", "startup-bare", "--no-venv", "--quick", "--out", str(out)])
    assert rc == 0
    record = json.loads((out / "run.json").read_text())
    assert any(n.startswith("counters: skipped startup-bare") for n in record["notes"])
    assert any(n.startswith("attribute: skipped startup-bare") for n in record["notes"])
    assert "counters" not in record and "attribution" not in record
    suites = {n: pyperf.BenchmarkSuite.load(str(out / f)) for n, f in record["latency"]["files"].items()}
    md = {n: s.get_benchmark("startup-bare").get_metadata() for n, s in suites.items()}
    assert "-X frozen_modules=off" in md["b"]["command"] and "frozen_modules" not in md["a"]["command"]
    assert md["a"]["hostpgo_unit"] == md["b"]["hostpgo_unit"] == "process"
    assert md["a"]["hostpgo_code_digest"] == md["b"]["hostpgo_code_digest"]
    assert dict(record["interpreters"][1]["host_env"])["PYTHONNODEBUGRANGES"] == "1"
    text = (out / "report.md").read_text()
    assert "### b vs a" in text and "startup-bare" in text


def test_a_venv_is_precompiled_from_inside_it_once_per_install(tmp_path, monkeypatch):
    import subprocess

    calls = []

    def fake_run(cmd, **kw):
        calls.append((cmd, kw))
        summary = {"mode": "unchecked-hash", "files": 3, "compiled": 3, "seconds": 0.1, "no_debug_ranges": False,
                   "paths": ["x"]}
        return subprocess.CompletedProcess(cmd, 0, json.dumps(summary), "")

    monkeypatch.setattr(envs.runner, "capture", fake_run)
    interp = _interp("w", "startup-precompiled")
    root = tmp_path / "venv"
    root.mkdir()
    py = root / "bin" / "python"
    summary = envs._precompile(interp, root, py, "digest1", tmp_path / "log")
    assert summary["files"] == 3 and len(calls) == 1
    cmd, kw = calls[0]
    # From the venv's own directory: `-m` from a source checkout would import the checkout's runtime/.
    assert cmd[:4] == [py, "-m", "hostenv", "precompile"] and kw["cwd"] == root
    again = hostenv.resolve(cmd[4], env={})
    assert again.startup == hostenv.resolve("startup-precompiled", env={}).startup
    envs._precompile(interp, root, py, "digest1", tmp_path / "log")
    assert len(calls) == 1                                   # stamped: the same install is not compiled again
    envs._precompile(interp, root, py, "digest2", tmp_path / "log")
    assert len(calls) == 2                                   # a new wheelhouse reinstalled the venv
