"""Unit: the CPython planner (pure; no compiler), the dry-run rendering, stamps and the executor."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from buildsys import engine
from buildsys.core import stages
from buildsys.core.paths import WorkArea
from buildsys.errors import CommandError, HostpgoError, TaskError
from buildsys.pipeline import patches, sources, training
from buildsys.targets import cpython
from buildsys.toolchain import Host, profile
from hostpgo.runner import Runner


def inputs(tmp_path: Path, name: str, family: str | None = None, **kw) -> cpython.Inputs:
    prof = profile.load(name, environ={}, overrides=kw.pop("set", ()))
    comp = engine.hypothetical_compiler(family or prof.toolchain.family)
    return cpython.Inputs(profile=prof, compiler=comp, host=Host("x86_64", "debian"), work=WorkArea(tmp_path),
                          pin=sources.pinned("cpython", "3.11.2"), patches=(),
                          tasks=training.resolve(prof.pgo.tasks) if prof.optimize.pgo == "on" else (),
                          jobs=2, **kw)


def test_pgo_plan_stage_order_and_channels(tmp_path: Path) -> None:
    plan = cpython.plan(inputs(tmp_path, "generic-pgo-lto"))
    assert [s.name for s in plan.stages] == list(cpython.STAGE_ORDER)
    by = {s.name: s for s in plan.stages}
    cfg_i = {(f.channel, f.value) for f in by["configure-instrumented"].flags}
    assert ("CFLAGS_NODIST", f"-fprofile-instr-generate={tmp_path}/pgo/cpython-3.11.2-generic-pgo-lto/raw/"
                             "cpython-%p-%m.profraw") in cfg_i
    cfg = by["configure"].flags
    # PGO/LTO flags travel only through the *_NODIST channels, never through configure args or CFLAGS.
    for f in cfg:
        if "profile" in f.value or "flto" in f.value:
            assert f.channel in ("CFLAGS_NODIST", "LDFLAGS_NODIST"), f
    assert ("configure-arg", "--disable-shared") in {(f.channel, f.value) for f in cfg}
    configure_cmd = by["configure"].actions[-1]
    assert "-flto=thin" in configure_cmd.env["CFLAGS_NODIST"] and "CFLAGS" not in configure_cmd.env
    assert configure_cmd.argv[0].endswith("Python-3.11.2/configure")
    train = by["train"].actions
    assert train[-1].argv[:4] == (f"{tmp_path}/install/cpython-3.11.2-generic-pgo-lto-instrumented/bin/python3",
                                  "-m", "test", "--pgo")
    assert by["verify"].actions[0].argv[1:4] == ("-m", "test", "--pgo")
    # The link flags also travel as the make variable, for CPython's NOLTO links.
    assert by["build"].actions[0].argv == ("make", "-j2", "LDFLAGS_NODIST=-fuse-ld=lld -flto=thin -O3")
    assert ("make-var", "LDFLAGS_NODIST") in {(f.channel, f.name) for f in by["build"].flags}
    assert [s.name for s in plan.stages].index("verify") < [s.name for s in plan.stages].index("install")


def test_baseline_plan_is_shared_and_has_no_pgo(tmp_path: Path) -> None:
    plan = cpython.plan(inputs(tmp_path, "baseline"))
    assert [s.name for s in plan.stages] == ["source", "runtime-deps", "configure", "build", "verify", "install"]
    cfg = plan.stages[2]
    assert "--enable-shared" in cfg.actions[-1].argv
    assert cfg.actions[-1].env["LDFLAGS"] == f"-Wl,-rpath,{tmp_path}/install/cpython-3.11.2-baseline/lib"
    assert plan.stages[4].actions[0].env == {"LD_LIBRARY_PATH": f"{tmp_path}/build/cpython-3.11.2-baseline-plain"}
    no_check = cpython.plan(inputs(tmp_path, "baseline", set=["verify.workloads=[]"]))
    assert [s.name for s in no_check.stages] == ["source", "configure", "build", "verify", "install"]


def test_gcc_plan_uses_gcda_dir_and_prefix_path(tmp_path: Path) -> None:
    plan = cpython.plan(inputs(tmp_path, "gcc-pgo-lto"))
    by = {s.name: s for s in plan.stages}
    env = by["configure"].actions[-1].env
    assert f"-fprofile-prefix-path={tmp_path}/build/cpython-3.11.2-gcc-pgo-lto-optimized" in env["CFLAGS_NODIST"]
    assert "-fprofile-use=" in env["CFLAGS_NODIST"] and "-fprofile-partial-training" in env["CFLAGS_NODIST"]
    assert by["build-instrumented"].actions[0].env["GCOV_PREFIX"].endswith(".build-gcda")
    # GCC-instrumented objects need libgcov on every link, including CPython's NOLTO ones.
    assert any(a.startswith("LDFLAGS_NODIST=-fprofile-generate=") for a in by["build-instrumented"].actions[0].argv)


def test_keys_change_with_inputs_and_only_downstream(tmp_path: Path) -> None:
    a = {s.name: s.key for s in cpython.plan(inputs(tmp_path, "generic-pgo-lto")).stages}
    assert a == {s.name: s.key for s in cpython.plan(inputs(tmp_path, "generic-pgo-lto")).stages}  # deterministic
    b = {s.name: s.key for s in cpython.plan(inputs(tmp_path, "generic-pgo-lto", set=["optimize.opt=O2"])).stages}
    assert a["source"] == b["source"] and a["configure"] != b["configure"]
    inp = inputs(tmp_path, "generic-pgo-lto")
    new_task = dataclasses.replace(inp.tasks[0], version=inp.tasks[0].version + 1)
    c = {s.name: s.key for s in cpython.plan(dataclasses.replace(inp, tasks=(new_task,))).stages}
    assert c["build-instrumented"] == a["build-instrumented"]  # training change does not rebuild
    assert c["train"] != a["train"] and c["merge"] != a["merge"] and c["install"] != a["install"]
    patched = dataclasses.replace(inp, patches=(patches.Patch(Path("0001-x.patch"), "ab" * 32),))
    d = {s.name: s.key for s in cpython.plan(patched).stages}
    assert d["source"] != a["source"] and d["configure"] != a["configure"]


def test_dry_run_rendering_lists_every_stage_and_command(tmp_path: Path) -> None:
    plan = cpython.plan(inputs(tmp_path, "bisheng-kunpeng920", family="clang"))
    text = stages.render_plan(plan, stages.would_skip(plan, tmp_path / "stamps"))
    for name in cpython.STAGE_ORDER:
        assert f". {name}: " in text
    assert "[would run]" in text and "make -j2" in text and "llvm-profdata" in text
    assert "left out bisheng.options" in text and "left out -mcpu=tsv110" in text


def test_pgo_without_tasks_is_an_error(tmp_path: Path) -> None:
    inp = dataclasses.replace(inputs(tmp_path, "generic-pgo-lto"), tasks=())
    with pytest.raises(HostpgoError, match="pgo.tasks is empty"):
        cpython.plan(inp)


def _plan_with(tmp_path: Path, key: str, log: list[str], fail: bool = False) -> stages.BuildPlan:
    out = tmp_path / "out"

    def make_out(ctx: stages.StageContext) -> None:
        log.append("a")
        out.mkdir(exist_ok=True)
        (out / "f").write_text("x")
        if fail:
            raise HostpgoError("boom")

    st1 = stages.Stage("a", "make out", key, (stages.Call("make out", make_out),), outputs=(out,))
    st2 = stages.Stage("b", "echo", "k2", (stages.Cmd(("sh", "-c", "echo hello $X"), env={"X": "there"},
                                                      nice=False),
                                           stages.Cmd(("sh", "-c", "exit 3"), ok_codes=(0, 3), nice=False)))
    return stages.BuildPlan("demo", (st1, st2), (), {})


def test_executor_skips_unchanged_reruns_changed_and_logs(tmp_path: Path) -> None:
    log: list[str] = []
    ex = stages.execute(_plan_with(tmp_path, "k1", log), tmp_path / "stamps", tmp_path / "logs", live=False)
    assert not ex.results["a"].skipped and log == ["a"]
    blog = (tmp_path / "logs" / "demo" / "b.log").read_text()
    assert "RUN: env X=there sh -c 'echo hello $X'" in blog and "hello there" in blog
    assert ex.results["b"].info["nonzero_exits"] == [{"command": "sh -c 'exit 3'", "exit_code": 3}]
    ex = stages.execute(_plan_with(tmp_path, "k1", log), tmp_path / "stamps", tmp_path / "logs", live=False)
    assert ex.results["a"].skipped and ex.results["b"].skipped and log == ["a"]
    ex = stages.execute(_plan_with(tmp_path, "changed", log), tmp_path / "stamps", tmp_path / "logs", live=False)
    assert not ex.results["a"].skipped and not ex.results["b"].skipped  # downstream reruns too
    (tmp_path / "out" / "f").unlink()
    (tmp_path / "out").rmdir()  # a missing output invalidates the stamp
    ex = stages.execute(_plan_with(tmp_path, "changed", log), tmp_path / "stamps", tmp_path / "logs", live=False)
    assert not ex.results["a"].skipped


def test_retried_command_is_recorded_and_second_failure_fails(tmp_path: Path) -> None:
    flag = tmp_path / "flag"
    once = stages.Cmd(("sh", "-c", f"test -e {flag} || {{ touch {flag}; exit 1; }}"), retries=1, nice=False)
    ex = stages.execute(stages.BuildPlan("r", (stages.Stage("v", "verify", "k", (once,)),), (), {}),
                        tmp_path / "stamps", tmp_path / "logs", live=False)
    assert ex.results["v"].info["retried"][0]["exit_code"] == 1
    always = stages.Cmd(("sh", "-c", "exit 1"), retries=1, nice=False)
    with pytest.raises(HostpgoError, match="stage 'v' of r2 failed"):
        stages.execute(stages.BuildPlan("r2", (stages.Stage("v", "verify", "k", (always,)),), (), {}),
                       tmp_path / "stamps", tmp_path / "logs", live=False)


def test_failed_stage_leaves_no_stamp(tmp_path: Path) -> None:
    log: list[str] = []
    with pytest.raises(HostpgoError, match="stage 'a' of demo failed"):
        stages.execute(_plan_with(tmp_path, "k1", log, fail=True), tmp_path / "stamps", tmp_path / "logs", live=False)
    assert not (tmp_path / "stamps" / "demo" / "a.json").exists()
    ex = stages.execute(_plan_with(tmp_path, "k1", log), tmp_path / "stamps", tmp_path / "logs", live=False)
    assert not ex.results["a"].skipped  # the half-done output was not trusted


def test_runner_errors_carry_command_and_tail(tmp_path: Path) -> None:
    r = Runner(tmp_path / "x.log")
    with pytest.raises(CommandError) as e:
        r.run(["sh", "-c", "echo first; echo last-line; exit 3"])
    assert e.value.returncode == 3 and "last-line" in e.value.log_tail and "exit code 3" in str(e.value)
    with pytest.raises(CommandError, match="timed out after 1s"):
        r.run(["sleep", "30"], timeout=1)
    with pytest.raises(CommandError, match="executable not found: no-such-tool-xyz"):
        r.run(["no-such-tool-xyz"])


def test_runner_children_get_default_sigint_even_if_parent_ignores_it(tmp_path: Path) -> None:
    import signal
    old = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        lines: list[str] = []
        Runner(tmp_path / "s.log").run(["python3", "-c", "import signal; print(signal.getsignal(signal.SIGINT))"],
                                       collect=lines)
    finally:
        signal.signal(signal.SIGINT, old)
    assert lines == ["<built-in function default_int_handler>"]


def test_training_task_registry_and_validation(tmp_path: Path) -> None:
    reg = training.registry()
    t = reg["cpython-pgo"]
    assert t.kind == "interpreter" and t.argv[:3] == ("-m", "test", "--pgo")
    argv, env, cwd = t.command(python="/p/bin/python3", prefix="/p", repo="/r")
    assert argv[:4] == ["/p/bin/python3", "-m", "test", "--pgo"]
    (tmp_path / "wl.toml").write_text('version = 2\nkind = "command"\nvenv = true\n'
                                      'argv = ["{python}", "-m", "runtime", "workload", "decode"]\ncwd = "{repo}"\n')
    wl = training.registry(tmp_path)["wl"]
    argv, env, cwd = wl.command(python="/v/bin/python", prefix="/p", repo="/r", venv="/v")
    assert argv == ["/v/bin/python", "-m", "runtime", "workload", "decode"] and cwd == "/r"
    assert wl.digest() != dataclasses.replace(wl, version=3).digest()
    (tmp_path / "bad.toml").write_text('version = 1\nkind = "shell"\nargv = ["x"]\n')
    with pytest.raises(TaskError, match="key 'kind' has value 'shell'; allowed values: interpreter, command"):
        training.registry(tmp_path)
    with pytest.raises(TaskError, match="unknown training task 'nope'"):
        training.resolve(("nope",))


def test_command_task_runs_in_a_venv_of_the_instrumented_interpreter(tmp_path: Path) -> None:
    wl = training.parse_task("decode", {"version": 1, "kind": "command", "venv": True,
                                        "venv_install": ["-e", "{repo}[runtime]"],
                                        "argv": ["{python}", "-m", "runtime", "workload", "decode"]}, "t.toml")
    inp = dataclasses.replace(inputs(tmp_path, "generic-pgo-lto"), tasks=(training.resolve(("cpython-pgo",))[0], wl))
    train = {s.name: s for s in cpython.plan(inp).stages}["train"]
    cmds = [a for a in train.actions if isinstance(a, stages.Cmd)]
    instr_python = f"{tmp_path}/install/cpython-3.11.2-generic-pgo-lto-instrumented/bin/python3"
    venv_python = f"{tmp_path}/pgo/cpython-3.11.2-generic-pgo-lto/venv/bin/python"
    assert cmds[0].argv[:4] == (instr_python, "-m", "test", "--pgo")
    assert cmds[1].argv == (instr_python, "-m", "venv", "--clear",
                            f"{tmp_path}/pgo/cpython-3.11.2-generic-pgo-lto/venv")
    assert cmds[2].argv[:4] == (venv_python, "-m", "pip", "install") and cmds[2].argv[-1].endswith("[runtime]")
    assert cmds[3].argv == (venv_python, "-m", "runtime", "workload", "decode")
    assert all(c.env["LLVM_PROFILE_FILE"].endswith("cpython-%p-%m.profraw") for c in cmds)
