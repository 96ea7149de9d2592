"""pipeline --stack: the stack resolved from the profiles, the measure command's subjects, the allocator check on a
workload record, the wheel-failure error, and the default pipeline left as it was (pure: nothing is built)."""

import json
from pathlib import Path

import pytest

from buildsys import cli, engine
from buildsys.core import stages
from buildsys.core.paths import WorkArea
from buildsys.pipeline import stack as stackmod
from hostpgo.errors import CommandError, HostpgoError, InputError
from perf import stack as perfstack
from perf.interpreters import parse_spec

OPT = "workload-pgo-lto-tcmalloc"
BUILD = "tcmalloc-2.10-workload-pgo-lto-tcmalloc"
NUMPY = "/w/extension-numpy-1.26.4-workload-pgo-lto-tcmalloc/numpy-1.26.4-cp311-cp311-linux_x86_64.whl"
MSGSPEC = "/w/extension-msgspec-0.23.0-workload-pgo-lto-tcmalloc/msgspec-0.23.0-cp311-cp311-linux_x86_64.whl"
MSGPACK = "/w/extension-msgpack-1.2.4-workload-pgo-lto-tcmalloc/msgpack-1.2.4-cp311-cp311-linux_x86_64.whl"


def _ex(profile_name: str) -> stages.Execution:
    plan = stages.BuildPlan(f"cpython-3.11.2-{profile_name}", (), (),
                            {"profile": profile_name, "prefix": f"/i/{profile_name}", "version": "3.11.2"})
    return stages.Execution(plan, {})


BUILDS = [_ex("baseline"), _ex("generic-pgo-lto"), _ex("workload-pgo-lto"), _ex(OPT)]


def test_the_default_stack_is_tcmalloc_preloaded_into_the_interpreter_only_build():
    st = stackmod.resolve(OPT)
    assert st == stackmod.Stack(optimized=OPT, interpreter="workload-pgo-lto", allocator="tcmalloc",
                                allocator_build=BUILD, settings="tcmalloc-hostpgo",
                                wheels=("numpy==1.26.4", "msgspec==0.23.0", "msgpack==1.2.4", "hostpgo"))
    assert st.allocator_subject == "workload-pgo-lto+tcmalloc-hostpgo"
    # The wheel list is data: another package is added by name.
    assert stackmod.resolve(OPT, ("msgpack==1.2.4", "hostpgo-hostpath==0.1.0")).wheels == (
        "msgpack==1.2.4", "hostpgo-hostpath==0.1.0")


def test_a_stack_needs_an_allocator_target_and_settings_that_preload_its_build(tmp_path):
    with pytest.raises(InputError, match="profile workload-pgo-lto has optimize.allocator = 'glibc'"):
        stackmod.resolve("workload-pgo-lto")
    with pytest.raises(InputError, match="pass --no-stack to build and measure the interpreter alone"):
        stackmod.resolve("workload-pgo-lto")
    with pytest.raises(InputError, match="--stack-wheels 'numpy': give NAME==VERSION .* or a local project's name "
                                         r"\(hostpgo\)"):
        stackmod.resolve(OPT, ("numpy",))
    host = tmp_path / "host"
    host.mkdir()
    (host / "tcmalloc-hostpgo.toml").write_text('[allocator]\nname = "tcmalloc"\nbuild = "tcmalloc-2.10-other"\n')
    with pytest.raises(InputError, match=f"preloads allocator 'tcmalloc' build 'tcmalloc-2.10-other', not {BUILD}"):
        stackmod.resolve(OPT, host_profiles=host)


def test_step_b_must_be_the_optimized_profile_without_its_allocator(tmp_path):
    """A profile whose chain holds no profile equal to it but for the allocator has no sound step (b)."""
    prof = tmp_path / "o3-tcmalloc.toml"
    prof.write_text(f'extends = "{Path(engine.PROFILES_DIR) / (OPT + ".toml")}"\n[optimize]\nopt = "O2"\n')
    from buildsys.toolchain import profile as profmod
    with pytest.raises(InputError, match="is it without its allocator"):
        stackmod.interpreter_only(profmod.load(str(prof), environ={}))


def test_measure_command_adds_steps_c_and_d_after_the_pipelines_subjects(tmp_path):
    system = tmp_path / "python3.11"
    system.write_text("")
    plain = engine.measure_command(BUILDS, run_name="r", system=system)
    subjects = engine.stack_subjects(BUILDS, stackmod.resolve(OPT), [Path(NUMPY), Path(MSGSPEC), Path(MSGPACK)],
                                     system=system)
    cmd = engine.measure_command(BUILDS, run_name="r", system=system, stack=subjects)
    interps = [cmd[i + 1] for i, c in enumerate(cmd) if c == "--interp"]
    c = "workload-pgo-lto+tcmalloc-hostpgo"
    d = "workload-pgo-lto+tcmalloc-hostpgo+pgo-numpy"
    assert interps == ["baseline=/i/baseline/bin/python3", f"debian={system}", f"debian+tcmalloc={system}@tcmalloc",
                       "generic-pgo-lto=/i/generic-pgo-lto/bin/python3",
                       "workload-pgo-lto=/i/workload-pgo-lto/bin/python3", f"{OPT}=/i/{OPT}/bin/python3",
                       f"{c}=/i/workload-pgo-lto/bin/python3@tcmalloc-hostpgo",
                       f"{d}=/i/workload-pgo-lto/bin/python3+wheel:{NUMPY}@tcmalloc-hostpgo"]
    # Only numpy is measured: no measured venv installs msgspec or msgpack, so perf could not swap them in.
    assert subjects.unmeasured == (MSGSPEC, MSGPACK)
    spec = parse_spec(interps[-1])
    assert (spec.name, spec.target, spec.wheels, spec.host) == (d, "/i/workload-pgo-lto/bin/python3", (NUMPY,),
                                                                 "tcmalloc-hostpgo")
    assert cmd[cmd.index("--workloads") + 1] == "decode-b1,decode-b8,serve-mixed,op-dispatch,decode-b8-graph," \
                                                "decode-b1-graph"
    steps = [cmd[i + 1] for i, x in enumerate(cmd) if x == "--stack-step"]
    assert steps == ["a=debian", "a=baseline", "b=workload-pgo-lto", f"c={c}", f"c={OPT}", f"d={d}"]
    perfstack.parse_steps(steps, [s.split("=", 1)[0] for s in interps])  # what perf bench accepts
    # Without --stack the command is the default pipeline's, unchanged.
    stack_only = {"--stack-step", *steps, interps[-2], interps[-1]}
    trimmed = [x for x in cmd if x not in stack_only]
    while "--interp" in trimmed and trimmed[trimmed.index("--workloads") - 1] == "--interp":
        trimmed.pop(trimmed.index("--workloads") - 1)
    trimmed[trimmed.index("--workloads") + 1] = plain[plain.index("--workloads") + 1]
    assert trimmed == plain


def test_a_kept_bolt_wheel_is_step_e_the_stack_with_it_beside_the_stack_without(tmp_path):
    system = tmp_path / "python3.11"
    system.write_text("")
    bolt = Path("/w/wheelbolt/mindspore-2.10.0-x/dist/mindspore-2.10.0+bolt.a4289a36-py3-none-any.whl")
    subjects = engine.stack_subjects(BUILDS, stackmod.resolve(OPT), [Path(NUMPY), Path(MSGPACK)], system=system,
                                     bolt_wheels=[bolt])
    cmd = engine.measure_command(BUILDS, run_name="r", system=system, wheels=[bolt], stack=subjects)
    interps = [cmd[i + 1] for i, c in enumerate(cmd) if c == "--interp"]
    d = "workload-pgo-lto+tcmalloc-hostpgo+pgo-numpy"
    e = d + "+bolt-mindspore"
    # (e) is (d)'s venv with the rewritten MindSpore wheel as well; the optimized build alone gets no bolt subject.
    assert interps[-1] == f"{e}=/i/workload-pgo-lto/bin/python3+wheel:{NUMPY}+wheel:{bolt}@tcmalloc-hostpgo"
    assert not any("+bolt-" in i for i in interps[:-1])
    steps = [cmd[i + 1] for i, x in enumerate(cmd) if x == "--stack-step"]
    assert steps[-2:] == [f"d={d}", f"e={e}"]
    parsed = perfstack.parse_steps(steps, [x.split("=", 1)[0] for x in interps])
    assert perfstack.pairs(parsed)[-1][1] == d  # (e) against (d): the stack with and without the wheel
    assert parse_spec(interps[-1]).wheels == (NUMPY, str(bolt))
    # Without measured extension wheels, (e) is (c) with the rewritten wheel.
    bare = engine.stack_subjects(BUILDS, stackmod.resolve(OPT), [Path(MSGPACK)], system=system, bolt_wheels=[bolt])
    assert bare.steps[-1] == ("e", "workload-pgo-lto+tcmalloc-hostpgo+bolt-mindspore")
    # Without --stack, a kept wheel is the optimized build with it, as before.
    plain = engine.measure_command(BUILDS, run_name="r", system=system, wheels=[bolt])
    assert f"{OPT}+bolt-mindspore=/i/{OPT}/bin/python3+wheel:{bolt}" in plain


def test_without_the_system_python_or_measured_wheels_the_stack_ends_where_its_subjects_do(tmp_path):
    subjects = engine.stack_subjects(BUILDS, stackmod.resolve(OPT), [Path(MSGPACK)], system=tmp_path / "absent")
    assert subjects.steps == (("a", "baseline"), ("b", "workload-pgo-lto"),
                              ("c", "workload-pgo-lto+tcmalloc-hostpgo"), ("c", OPT))
    assert len(subjects.interps) == 1 and subjects.unmeasured == (MSGPACK,)
    with pytest.raises(InputError, match="step \\(b\\) is build workload-pgo-lto, which this pipeline did not"):
        engine.stack_subjects([_ex("baseline"), _ex(OPT)], stackmod.resolve(OPT), [], system=None)


def test_the_stack_builds_its_interpreter_only_profile_and_is_the_default():
    st = stackmod.resolve(OPT)
    assert engine.pipeline_profiles(OPT, engine.DEFAULT_COMPARE_PROFILES) == ["baseline", "workload-pgo-lto", OPT]
    assert engine.pipeline_profiles(OPT, ("generic-pgo-lto", "workload-pgo-lto"), st) == [
        "baseline", "generic-pgo-lto", "workload-pgo-lto", OPT]
    assert engine.pipeline_profiles(OPT, (), st) == ["baseline", "workload-pgo-lto", OPT]
    args = cli.parser().parse_args(["pipeline"])
    assert args.stack is engine.DEFAULT_STACK is True
    assert args.stack_wheels == "numpy==1.26.4,msgspec==0.23.0,msgpack==1.2.4,hostpgo"
    assert cli.parser().parse_args(["pipeline", "--stack"]).stack is True
    assert cli.parser().parse_args(["pipeline", "--no-stack"]).stack is False


def test_the_stack_image_ships_the_interpreter_only_build_the_allocator_settings_and_every_wheel():
    built = engine.StackResult(stackmod.resolve(OPT), _ex("tcmalloc"), _ex("verify"), (),
                               (Path(NUMPY), Path(MSGSPEC), Path(MSGPACK)))
    assert engine.stack_image_args(built) == {"build": "workload-pgo-lto", "settings": "tcmalloc-hostpgo",
                                              "wheels": (Path(NUMPY), Path(MSGSPEC), Path(MSGPACK))}


def _installed_tcmalloc(install: Path) -> Path:
    prefix = install / BUILD
    lib = prefix / "lib" / "libtcmalloc_minimal.so.4"
    lib.parent.mkdir(parents=True)
    lib.write_bytes(b"\x7fELF")
    (prefix / "hostpgo-manifest.json").write_text(json.dumps(
        {"build_id": BUILD, "allocator": "tcmalloc", "library": str(lib), "prefix": str(prefix)}))
    return lib


def _record(mapped, golden=True, in_effect=True):
    return {"name": "decode-b1", "golden_match": golden, "token_digest": "x", "golden_digest": "y",
            "host_settings": {"observed": {"allocator_libraries": mapped}, "allocator_in_effect": in_effect,
                              "warnings": []}}


def test_stack_verify_needs_the_built_library_mapped_and_the_golden_digest(tmp_path):
    st = stackmod.resolve(OPT)
    lib = _installed_tcmalloc(tmp_path / "install")
    debian = str(tmp_path / "usr-lib" / "libtcmalloc_minimal.so.4")  # the distribution's, same soname
    assert stackmod.check_record(_record([str(lib)]), st, tmp_path / "install") == ""
    assert stackmod.check_record(_record([debian]), st, tmp_path / "install") == (
        f"the process maps ['{debian}'], not only {lib}")
    assert "not only" in stackmod.check_record(_record([str(lib), debian]), st, tmp_path / "install")
    assert stackmod.check_record(_record([str(lib)], golden=False), st, tmp_path / "install") == (
        "token digest x is not the pinned y")
    assert "allocator_in_effect = False" in stackmod.check_record(_record([str(lib)], in_effect=False), st,
                                                                  tmp_path / "install")


def test_stack_verify_plan_runs_the_interpreter_only_build_under_the_settings(tmp_path):
    work = WorkArea(tmp_path / "h")
    st = stackmod.resolve(OPT)
    p = stackmod.verify_plan(st, python=Path("/i/workload-pgo-lto/bin/python3"), deps=Path("/d/runtime-py3.11-x"),
                             work=work)
    (stage,) = p.stages
    assert stage.name == "stack-verify" and p.build_id == "stack-verify-workload-pgo-lto+tcmalloc-hostpgo"
    assert [a.what.split(" (")[0] for a in stage.actions] == [
        "/i/workload-pgo-lto/bin/python3 -m runtime workload decode-b1 --json --check-golden --host-settings "
        "tcmalloc-hostpgo"]
    again = stackmod.verify_plan(st, python=Path("/i/workload-pgo-lto/bin/python3"),
                                 deps=Path("/d/runtime-py3.11-x"), work=work)
    assert again.stages[0].key == stage.key  # stamped: a rerun skips it
    _installed_tcmalloc(work.install)  # a (re)built allocator is checked again
    rebuilt = stackmod.verify_plan(st, python=Path("/i/workload-pgo-lto/bin/python3"),
                                   deps=Path("/d/runtime-py3.11-x"), work=work)
    assert rebuilt.stages[0].key != stage.key


def test_a_failed_stack_wheel_is_a_command_error_naming_the_package_stage_and_log(tmp_path):
    work = WorkArea(tmp_path / "h")
    done = stages.Stage("source", "the source", "k1", ())
    failed = stages.Stage("build", "the wheel", "k2", ())
    plan = stages.BuildPlan("extension-numpy-1.26.4-" + OPT, (done, failed), (), {})
    stages.Stamps(work.stamps, plan.build_id).write(done, 1.0, {})
    err = stackmod.build_failed("numpy==1.26.4", plan, work, HostpgoError("stage 'build' ... failed"))
    assert isinstance(err, CommandError) and err.exit_code == 4
    assert err.log_path == work.logs / plan.build_id / "build.log"
    assert str(err).startswith(f"--stack: the wheel of numpy==1.26.4 failed in stage 'build' of {plan.build_id}")


def test_the_wheels_measured_are_those_the_venvs_install():
    measured = stackmod.measured_distributions()
    assert {"numpy", "mindspore", "pyperf", "rich"} <= measured
    assert not {"msgspec", "msgpack"} & measured
    assert stackmod.wheel_dist(NUMPY) == "numpy" and stackmod.dist_name("MindSpore_GS>=1") == "mindspore-gs"


def test_build_stack_stops_on_a_failed_wheel_naming_it_and_a_rerun_rebuilds_nothing_done(tmp_path, monkeypatch):
    """The wiring of build_stack with the builds stood in for: the allocator, stack-verify, then each wheel through
    the real stage executor and stamps; msgspec's build fails once."""
    monkeypatch.setenv("HOSTPGO_HOME", str(tmp_path / "h"))
    work = WorkArea.from_env()
    ran: list[str] = []
    broken = {"msgspec==0.23.0"}

    class Inputs:
        def __init__(self, target, package):
            self.TARGET, self.package = target, package

    def fake_prepare(ref, *, target, target_args=None, **kw):
        assert ref == OPT  # the allocator and every wheel are built with the optimized profile
        if target == "extension":
            assert target_args["interp"] == f"/i/{OPT}/bin/python3"  # for the optimized interpreter
        return Inputs(target, (target_args or {}).get("package"))

    def fake_plan(inp):
        name = inp.package.split("==")[0]
        wheel = work.root / "wheels" / name / f"{name}-1-cp311-cp311-linux_x86_64.whl"

        def build(ctx):
            ran.append(inp.package)
            if inp.package in broken:
                raise HostpgoError("the back end failed")

        def install(ctx):
            wheel.parent.mkdir(parents=True, exist_ok=True)
            wheel.write_text("")
            ctx.info["wheel"] = str(wheel)
        return stages.BuildPlan(f"extension-{name}-{OPT}", (
            stages.Stage("build", "wheel", f"b-{name}", (stages.Call("build", build),)),
            stages.Stage("install", "install", f"i-{name}", (stages.Call("install", install),), outputs=(wheel,))),
            (), {"prefix": str(wheel.parent)})

    def fake_build(inp, **kw):
        ran.append(inp.TARGET)
        return _ex(f"{inp.TARGET}-built")

    monkeypatch.setattr(engine, "prepare", fake_prepare)
    monkeypatch.setattr(engine, "plan", fake_plan)
    monkeypatch.setattr(engine, "build", fake_build)
    verify = stages.Stage("stack-verify", "v", "v1", (stages.Call("v", lambda c: ran.append("verify")),))
    monkeypatch.setattr(stackmod, "verify_plan",
                        lambda st, **kw: stages.BuildPlan("stack-verify-x", (verify,), (), {"prefix": "-"}))
    st = stackmod.resolve(OPT)
    with pytest.raises(CommandError) as caught:
        engine.build_stack(st, BUILDS, None, live=False)
    assert str(caught.value).startswith("--stack: the wheel of msgspec==0.23.0 failed in stage 'build' of "
                                        f"extension-msgspec-{OPT}")
    assert caught.value.log_path == work.logs / f"extension-msgspec-{OPT}" / "build.log"
    assert ran == ["tcmalloc", "verify", "numpy==1.26.4", "msgspec==0.23.0"]  # stopped there: msgpack not built
    broken.clear()
    ran.clear()
    got = engine.build_stack(st, BUILDS, None, live=False)
    # numpy's stages and stack-verify are stamped: only what failed and what follows runs again (the
    # allocator build is stood in for here, without stamps; in the pipeline it goes through the same executor).
    assert ran == ["tcmalloc", "msgspec==0.23.0", "msgpack==1.2.4", "hostpgo"]
    assert [w.name.split("-")[0] for w in got.wheel_files] == ["numpy", "msgspec", "msgpack", "hostpgo"]
    assert all(r.skipped for r in got.wheels[0].results.values())


def test_a_stack_wheel_that_cannot_be_prepared_is_named(tmp_path, monkeypatch):
    monkeypatch.setenv("HOSTPGO_HOME", str(tmp_path / "h"))

    def fake_prepare(ref, *, target, target_args=None, **kw):
        if target == "extension":
            raise InputError("--package 'numpy==1.26.4': no such sdist")
        return None

    monkeypatch.setattr(engine, "prepare", fake_prepare)
    monkeypatch.setattr(engine, "build", lambda inp, **kw: _ex("tcmalloc-built"))
    monkeypatch.setattr(stackmod, "verify_plan", lambda st, **kw: stages.BuildPlan("stack-verify-x", (), (), {}))
    with pytest.raises(InputError, match="^--stack: the wheel of numpy==1.26.4: --package 'numpy==1.26.4'") as e:
        engine.build_stack(stackmod.resolve(OPT), BUILDS, None, live=False)
    assert e.value.exit_code == 2


def test_the_projects_own_wheel_is_measured_in_step_d():
    """The perf venvs install this project's wheel (the runtime, with its Cython hot path), so its PGO rebuild
    replaces it in (d), beside numpy; msgspec and msgpack are built but no measured venv installs them."""
    assert "hostpgo" in stackmod.measured_distributions()
    wheels = ["/w/numpy-1.26.4-cp311-cp311-linux_x86_64.whl", "/w/msgspec-0.23.0-cp311-cp311-linux_x86_64.whl",
              "/w/hostpgo-0.1.0-cp311-cp311-linux_x86_64.whl"]
    sub = stackmod.subjects(stackmod.resolve(OPT), interpreter_prefix="/i/workload-pgo-lto", baseline="baseline",
                            system=None, linked_reference=None, wheels=wheels)
    assert sub.steps[-1] == ("d", "workload-pgo-lto+tcmalloc-hostpgo+pgo-numpy-hostpgo")
    assert sub.interps[-1] == ("workload-pgo-lto+tcmalloc-hostpgo+pgo-numpy-hostpgo=/i/workload-pgo-lto/bin/python3"
                               "+wheel:/w/numpy-1.26.4-cp311-cp311-linux_x86_64.whl"
                               "+wheel:/w/hostpgo-0.1.0-cp311-cp311-linux_x86_64.whl@tcmalloc-hostpgo")
    assert sub.unmeasured == ("/w/msgspec-0.23.0-cp311-cp311-linux_x86_64.whl",)
