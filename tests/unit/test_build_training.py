"""Unit: workload training tasks, the runtime-deps stage, golden checks, the profile store and reuse."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from buildsys import engine
from buildsys.core import manifest, stages
from buildsys.core.paths import REPO_ROOT, WorkArea
from buildsys.errors import HostpgoError, InputError, TaskError
from buildsys.pipeline import pgo, sources, training
from buildsys.targets import cpython
from buildsys.toolchain import Host, profile


def inputs(tmp_path: Path, name: str, **kw) -> cpython.Inputs:
    prof = profile.load(name, environ={}, overrides=kw.pop("set", ()))
    return cpython.Inputs(profile=prof, compiler=engine.hypothetical_compiler(prof.toolchain.family),
                          host=Host("x86_64", "debian"), work=WorkArea(tmp_path),
                          pin=sources.pinned("cpython", "3.11.2"), patches=(),
                          tasks=training.resolve(prof.pgo.tasks) if prof.optimize.pgo == "on" else (),
                          jobs=2, **kw)


def by_name(plan: stages.BuildPlan) -> dict[str, stages.Stage]:
    return {s.name: s for s in plan.stages}


def test_workloads_task_parses_and_runs_each_workload_in_the_repo() -> None:
    t = training.registry()["runtime-workloads"]
    assert t.kind == "workloads" and t.venv and "decode-b1" in t.workloads
    golden = dataclasses.replace(t, steps=0, check_golden=True)
    cmds = golden.commands(python="/v/bin/python", prefix="/p", repo="/r", venv="/v")
    assert [c[0] for c in cmds][0] == ["/v/bin/python", "-m", "runtime", "workload", "decode-b1", "--json",
                                       "--check-golden"]
    assert all(cwd == "/r" for _, _, cwd in cmds) and len(cmds) == len(t.workloads)
    short = dataclasses.replace(t, steps=5, check_golden=False)
    assert short.commands(python="py", prefix="/p", repo="/r")[0][0][-1] == "--steps=5"
    assert short.digest() != golden.digest()


@pytest.mark.parametrize("data, message", [
    ({"version": 1, "kind": "workloads"}, "needs key 'workloads'"),
    ({"version": 1, "kind": "workloads", "workloads": ["Decode B1"]}, "needs key 'workloads'"),
    ({"version": 1, "kind": "workloads", "workloads": ["decode-b1"], "argv": ["x"]}, "key 'argv' does not apply"),
    ({"version": 1, "kind": "workloads", "workloads": ["decode-b1"], "steps": -1}, "key 'steps' must be >= 0"),
    ({"version": 1, "kind": "command", "argv": ["x"], "workloads": ["decode-b1"]}, "applies only to kind 'workloads'"),
])
def test_bad_workloads_task_is_rejected_naming_file_and_key(data: dict, message: str) -> None:
    with pytest.raises(TaskError, match=message) as e:
        training.parse_task("t", data, "profiles/tasks/t.toml")
    assert "profiles/tasks/t.toml" in str(e.value)


def test_runtime_digest_follows_the_runtime_sources(tmp_path: Path) -> None:
    (tmp_path / "engine.py").write_text("A = 1\n")
    first = training.runtime_digest(tmp_path)
    assert training.runtime_digest(tmp_path) == first
    (tmp_path / "engine.py").write_text("A = 2\n")
    second = training.runtime_digest(tmp_path)
    assert second != first
    (tmp_path / "_hostpath.pyx").write_text("cdef int a = 1\n")  # the compiled host path's source counts too
    assert training.runtime_digest(tmp_path) != second


def test_workload_profile_trains_in_a_venv_that_sees_the_runtime_deps(tmp_path: Path) -> None:
    plan = cpython.plan(inputs(tmp_path, "workload-pgo-lto"))
    st = by_name(plan)
    assert list(st) == list(cpython.STAGE_ORDER)
    deps = st["runtime-deps"]
    assert deps.independent and deps.requires[0].parent == tmp_path / "deps"
    assert "--only-binary=:all:" in deps.actions[0].what and "mindspore==2.10.0" in deps.actions[0].what
    train = st["train"].actions
    instr = f"{tmp_path}/install/cpython-3.11.2-workload-pgo-lto-instrumented/bin/python3"
    venv = f"{tmp_path}/pgo/cpython-3.11.2-workload-pgo-lto/venv"
    assert train[1].argv == (instr, "-m", "venv", "--clear", venv)
    assert "hostpgo-runtime.pth" in train[2].what and str(deps.requires[0]) in train[2].what
    # The task's venv_install (Ray, for ray-decode) goes into the same venv before the first workload runs.
    assert train[3].argv == (f"{venv}/bin/python", "-m", "pip", "install", "ray==2.60.0")
    runs = [a.what for a in train[4:]]
    assert len(runs) == len(training.registry()["runtime-workloads"].workloads)
    assert all(f"{venv}/bin/python -m runtime workload" in w for w in runs)
    assert all("LLVM_PROFILE_FILE=" in w and f"HOSTPGO_HOME={tmp_path}" in w for w in runs)
    # Only the training set differs from the generic profile: everything before training is shared.
    gen = by_name(cpython.plan(inputs(tmp_path, "generic-pgo-lto")))
    def instrumented(plan_stages: dict, build_id: str) -> list[str]:
        return [f.value.replace(build_id, "B") for f in plan_stages["configure-instrumented"].flags]
    assert instrumented(gen, "generic-pgo-lto") == instrumented(st, "workload-pgo-lto")
    assert gen["train"].key != st["train"].key
    # The profile data goes to the store, named by build and key, with its sidecar.
    merge = st["merge"]
    assert merge.outputs[0].parent == tmp_path / "profiles"
    assert merge.outputs[0].name.startswith("cpython-3.11.2-workload-pgo-lto-")
    assert merge.outputs[1].name.endswith(".profdata.json")


def test_verify_runs_every_golden_workload_before_install(tmp_path: Path) -> None:
    st = by_name(cpython.plan(inputs(tmp_path, "baseline")))
    checks = [a for a in st["verify"].actions if isinstance(a, stages.Call)]
    assert len(checks) == 5 and all("--check-golden" in c.what for c in checks)
    assert all(f"PYTHONPATH={st['runtime-deps'].requires[0]}:{REPO_ROOT}" in c.what for c in checks)
    assert all("LD_LIBRARY_PATH=" in c.what for c in checks)  # the shared baseline runs uninstalled
    fewer = by_name(cpython.plan(inputs(tmp_path, "baseline", set=['verify.workloads=["decode-b1"]'])))
    assert fewer["verify"].key != st["verify"].key and fewer["build"].key == st["build"].key


def test_golden_mismatch_fails_the_stage_and_keeps_the_record(tmp_path: Path) -> None:
    fake = tmp_path / "fake.py"
    fake.write_text("import json, sys\nmatch = sys.argv[1] == 'good'\n"
                    "print('[WARNING] noise before the record')\n"
                    "print(json.dumps({'name': sys.argv[1], 'version': 1, 'token_digest': 'abc',\n"
                    "  'golden_digest': 'abc' if match else 'def', 'golden_match': match}, indent=2))\n"
                    "sys.exit(0 if match else 1)\n")
    import sys
    good = training.run_workload([sys.executable, str(fake), "good", "x", "good"], {}, None, 60, "verify of t")
    bad = training.run_workload([sys.executable, str(fake), "bad", "x", "bad"], {}, None, 60, "verify of t")
    ok = stages.Stage("verify", "v", "k", (stages.Call("good", good),))
    ex = stages.execute(stages.BuildPlan("t", (ok,), (), {}), tmp_path / "s", tmp_path / "l", live=False)
    assert ex.results["verify"].info["workloads"][0]["golden_match"] is True
    failing = stages.Stage("verify", "v", "k2", (stages.Call("good", good), stages.Call("bad", bad)))
    with pytest.raises(HostpgoError, match="did not reproduce its pinned token digest .got abc, pinned def"):
        stages.execute(stages.BuildPlan("t2", (failing,), (), {}), tmp_path / "s", tmp_path / "l", live=False)
    assert not (tmp_path / "s" / "t2" / "verify.json").exists()


def test_an_unpinned_kernel_level_is_named_not_reported_as_a_mismatch(tmp_path: Path) -> None:
    import sys
    fake = tmp_path / "fake.py"
    fake.write_text("import json, sys\nprint(json.dumps({'name': 'decode-b8-w8a8', 'token_digest': 'abc',\n"
                    "  'golden_digest': None, 'golden_match': None, 'kernel_level': 'sse4_1'}, indent=2))\n"
                    "sys.exit(1)\n")
    body = training.run_workload([sys.executable, str(fake), "workload", "decode-b8-w8a8"], {}, None, 60, "verify of t")
    st = stages.Stage("verify", "v", "k", (stages.Call("w8a8", body),))
    with pytest.raises(HostpgoError, match="decode-b8-w8a8 has no token digest pinned for this CPU's MindSpore "
                                           "kernel level 'sse4_1' .this run gave abc"):
        stages.execute(stages.BuildPlan("t", (st,), (), {}), tmp_path / "s", tmp_path / "l", live=False)


def test_a_workload_that_crashes_is_not_reported_as_a_digest_mismatch(tmp_path: Path) -> None:
    import sys
    crash = tmp_path / "crash.py"
    crash.write_text("raise SyntaxError('<<<<<<< HEAD')\n")
    body = training.run_workload([sys.executable, str(crash), "workload", "prefill"], {}, None, 60, "training task t")
    stage = stages.Stage("train", "t", "k3", (stages.Call("crash", body),))
    with pytest.raises(HostpgoError, match=r"workload prefill failed with exit code 1 before printing its record") as e:
        stages.execute(stages.BuildPlan("t3", (stage,), (), {}), tmp_path / "s", tmp_path / "l", live=False)
    assert "SyntaxError" in str(e.value) and "pinned token digest" not in str(e.value)


def test_a_workload_on_the_wrong_host_path_fails_when_one_is_required(tmp_path: Path) -> None:
    """A build of runtime._hostpath trains and verifies on the compiled path: a record naming the reference fails."""
    import sys
    fake = tmp_path / "fake.py"  # fake.py workload HOST_PATH: a record as `python -m runtime workload` prints it
    fake.write_text("import json, sys\nprint(json.dumps({'name': 'decode-b8', 'token_digest': 'abc', 'golden_digest':"
                    " 'abc', 'golden_match': True, 'host_path': sys.argv[2], 'host_path_reason': 'why ' + sys.argv[2]},"
                    " indent=2))\n")

    def run(key: str, host_path: str, expect: str | None) -> stages.Execution:
        body = training.run_workload([sys.executable, str(fake), "workload", host_path], {}, None, 60, "verify of t",
                                     expect_host_path=expect)
        st = stages.Stage("verify", "v", key, (stages.Call(host_path, body),))
        return stages.execute(stages.BuildPlan(key, (st,), (), {}), tmp_path / "s", tmp_path / "l", live=False)

    rec = run("t4", "cython", "cython").results["verify"].info["workloads"][0]
    assert (rec["host_path"], rec["host_path_reason"]) == ("cython", "why cython")
    with pytest.raises(HostpgoError, match=r"workload python ran the 'python' host hot path, not 'cython' "
                                           r"\(why python\)"):
        run("t5", "python", "cython")
    # Without a requirement the record is only kept.
    assert run("t6", "python", None).results["verify"].info["workloads"][0]["host_path"] == "python"


def test_last_json_finds_the_record_among_log_lines() -> None:
    lines = ["noise {", "{", '  "a": 1', "}", "more", "{", '  "b": [', "    2", "  ]", "}", "tail"]
    assert training.last_json(lines) == {"b": [2]}
    assert training.last_json(["{", "not json", "}"]) is None and training.last_json([]) is None


def test_independent_stage_does_not_force_later_stages(tmp_path: Path) -> None:
    ran: list[str] = []
    shared = tmp_path / "shared"

    def plan(dep_key: str) -> stages.BuildPlan:
        return stages.BuildPlan("i", (
            stages.Stage("deps", "d", dep_key, (stages.Call("d", lambda c: ran.append("deps")),), independent=True),
            stages.Stage("build", "b", "kb", (stages.Call("b", lambda c: ran.append("build")),)),
        ), (), {})
    stages.execute(plan("k1"), tmp_path / "s", tmp_path / "l", live=False)
    (tmp_path / "s" / "i" / "deps.json").unlink()
    ex = stages.execute(plan("k1"), tmp_path / "s", tmp_path / "l", live=False)
    assert ran == ["deps", "build", "deps"] and ex.results["build"].skipped
    assert stages.would_skip(plan("k2"), tmp_path / "s") == {"deps": False, "build": True}
    assert not shared.exists()


def fake_tool(tmp_path: Path, rc: int, said: str = "") -> str:
    """A stand-in llvm-profdata that prints `said` and exits `rc`."""
    tool = tmp_path / f"fake-profdata-{rc}"
    tool.write_text(f"#!/bin/sh\necho '{said}' >&2\nexit {rc}\n")
    tool.chmod(0o755)
    return str(tool)


def with_profdata_tool(inp: cpython.Inputs, tool: str) -> cpython.Inputs:
    comp = dataclasses.replace(inp.compiler, tools={**inp.compiler.tools, "profdata": tool})
    return dataclasses.replace(inp, compiler=comp)


def _store(tmp_path: Path, compiler: dict) -> Path:
    data = tmp_path / "profiles" / "cpython-3.11.2-workload-pgo-lto-abc.profdata"
    data.parent.mkdir(parents=True)
    data.write_bytes(b"profile bytes")
    pgo._write_sidecar(data, {"schema": pgo.PROFILE_DATA_SCHEMA, "build_id": "cpython-3.11.2-workload-pgo-lto",
                                  "compiler": compiler, "training": [{"name": "runtime-workloads", "version": 1}]},
                           {"profile_data_sha256": sources.sha256_of(data), "raw_profiles": 7})
    return data


def test_profile_data_reuse_skips_instrumenting_and_training(tmp_path: Path) -> None:
    data = _store(tmp_path, {"family": "clang", "version": "0"})
    inp = with_profdata_tool(inputs(tmp_path, "workload-pgo-lto", profile_data=data), fake_tool(tmp_path, 0))
    plan = cpython.plan(inp)
    st = by_name(plan)
    assert list(st) == ["source", "runtime-deps", "profile-data", "configure", "build", "verify", "install"]
    cflags = inp_cflags = [f.value for f in st["configure"].flags if f.channel == "CFLAGS_NODIST"]
    assert f"-fprofile-instr-use={data}" in inp_cflags and cflags
    assert plan.summary["training_tasks"] == [{"name": "runtime-workloads", "version": 1}]
    ex = stages.execute(stages.BuildPlan("r", (st["profile-data"],), (), {}), tmp_path / "s", tmp_path / "l",
                        live=False)
    info = ex.results["profile-data"].info
    assert info["reused"] and info["profile_data_sha256"] == sources.sha256_of(data)
    doc = manifest.build(stages.Execution(plan, ex.results), inp, tmp_path / "install" / "x", [])
    assert doc["profile_data"]["reused"] and doc["profile_data"]["raw_profiles"] == 7
    # Different data, different build.
    data.write_bytes(b"other bytes")
    assert by_name(cpython.plan(inp))["configure"].key != st["configure"].key


def test_profile_data_errors_name_the_flag(tmp_path: Path) -> None:
    with pytest.raises(HostpgoError, match="--profile-data .*no such file"):
        cpython.plan(inputs(tmp_path, "workload-pgo-lto", profile_data=tmp_path / "missing.profdata"))
    data = _store(tmp_path, {"family": "clang", "version": "18.1.8"})
    with pytest.raises(HostpgoError, match="optimize.pgo = \"off\""):
        cpython.plan(inputs(tmp_path, "baseline", profile_data=data))
    st = by_name(cpython.plan(with_profdata_tool(inputs(tmp_path, "workload-pgo-lto", profile_data=data),
                                                 fake_tool(tmp_path, 0))))
    with pytest.raises(HostpgoError, match="made by clang 18.1.8 and this build uses clang 0"):
        stages.execute(stages.BuildPlan("r", (st["profile-data"],), (), {}), tmp_path / "s", tmp_path / "l",
                       live=False)
    side = pgo.sidecar_path(data)
    side.write_text("{broken")
    with pytest.raises(HostpgoError, match="not valid JSON"):
        cpython.plan(inputs(tmp_path, "workload-pgo-lto", profile_data=data))
    side.write_text(json.dumps({"schema": "other"}))
    with pytest.raises(HostpgoError, match="expected 'hostpgo-profile-data/1'"):
        cpython.plan(inputs(tmp_path, "workload-pgo-lto", profile_data=data))


def test_pipeline_measures_baseline_first_then_system_then_builds(tmp_path: Path) -> None:
    def ex(profile_name: str) -> stages.Execution:
        plan = stages.BuildPlan(f"cpython-3.11.2-{profile_name}", (), (),
                                {"profile": profile_name, "prefix": f"/i/{profile_name}"})
        return stages.Execution(plan, {})
    system = tmp_path / "python3.11"
    system.write_text("")
    cmd = engine.measure_command([ex("baseline"), ex("generic-pgo-lto"), ex("workload-pgo-lto"),
                                  ex("workload-pgo-lto-tcmalloc")], run_name="pipeline-x", system=system)
    interps = [cmd[i + 1] for i, c in enumerate(cmd) if c == "--interp"]
    # Debian's interpreter twice: as it is, and with the optimized default's allocator preloaded.
    assert interps == ["baseline=/i/baseline/bin/python3", f"debian={system}", f"debian+tcmalloc={system}@tcmalloc",
                       "generic-pgo-lto=/i/generic-pgo-lto/bin/python3",
                       "workload-pgo-lto=/i/workload-pgo-lto/bin/python3",
                       "workload-pgo-lto-tcmalloc=/i/workload-pgo-lto-tcmalloc/bin/python3"]
    assert cmd[cmd.index("--workloads") + 1] == "decode-b1,decode-b8,serve-mixed,op-dispatch,decode-b8-graph"
    assert cmd[cmd.index("--counter-workloads") + 1] == "pure-python,pure-dispatch,decode-b1"
    assert cmd[cmd.index("--stages") + 1] == "latency,counters,attribute,guard"
    assert "--guard-fast" in cmd  # pyperformance --fast: the guard in minutes, not most of an hour
    no_system = engine.measure_command([ex("baseline")], run_name="r", system=tmp_path / "absent", quick=True)
    assert "debian=" not in " ".join(no_system) and no_system[-1] == "--quick"


def test_profile_data_is_validated_when_prepared(tmp_path: Path) -> None:
    """Random bytes with no sidecar: llvm-profdata cannot read them, and the check says so before any build."""
    junk = tmp_path / "random.profdata"
    junk.write_bytes(bytes(range(256)) * 4)
    clang = dataclasses.replace(engine.hypothetical_compiler("clang"),
                                tools={"profdata": fake_tool(tmp_path, 1, "error: invalid profile data")})
    with pytest.raises(InputError, match=r"--profile-data .*random.profdata: not profile data .* can read "
                                         r"\(.*invalid profile data"):
        pgo.check_profile_data(junk, clang)
    pgo.check_profile_data(junk, dataclasses.replace(clang, tools={"profdata": fake_tool(tmp_path, 0)}))
    with pytest.raises(InputError, match="needs an llvm-profdata file, not a directory"):
        pgo.check_profile_data(tmp_path, clang)
    gcc = engine.hypothetical_compiler("gcc")
    tree = tmp_path / "gcda"
    tree.mkdir()
    with pytest.raises(InputError, match="no .gcda files below it"):
        pgo.check_profile_data(tree, gcc)
    (tree / "a.gcda").write_bytes(b"adcg" + bytes(12))
    pgo.check_profile_data(tree, gcc)
    (tree / "b.gcda").write_bytes(b"random bytes")
    with pytest.raises(InputError, match="b.gcda is not a .gcda file"):
        pgo.check_profile_data(tree, gcc)
    with pytest.raises(InputError, match="gcc needs a directory of .gcda files"):
        pgo.check_profile_data(junk, gcc)


def test_pipeline_default_is_the_best_measured_stack() -> None:
    """workload PGO + LTO + tcmalloc; workload-pgo-lto stays compared (the allocator's share); the image's default
    host settings carry the same allocator."""
    assert engine.DEFAULT_OPTIMIZED_PROFILE == "workload-pgo-lto-tcmalloc"
    assert profile.load(engine.DEFAULT_OPTIMIZED_PROFILE, environ={}).optimize.allocator == "tcmalloc"
    assert "workload-pgo-lto" in engine.DEFAULT_COMPARE_PROFILES
    assert engine.DEFAULT_IMAGE_SETTINGS == "tcmalloc" == engine.SYSTEM_SETTINGS
    assert engine.default_image_settings(engine.DEFAULT_OPTIMIZED_PROFILE) == "tcmalloc"
    assert engine.default_image_settings("workload-pgo-lto") == "default"
    from buildsys import cli
    args = cli.parser().parse_args(["pipeline"])
    assert (args.optimized, args.compare, args.image_settings) == (
        "workload-pgo-lto-tcmalloc", "workload-pgo-lto", "tcmalloc")
