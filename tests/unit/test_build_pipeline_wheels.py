"""pipeline --bolt-wheels: the commands it constructs (the venv bolt-wheel reads, bolt-wheel's options, the extra
measured subject) and the image's venv layer with a kept wheel; all planned, nothing run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_build_image import _inputs as image_inputs  # tests/unit is on sys.path (pytest's prepend mode)

from buildsys import engine, image
from buildsys.cli import parser
from buildsys.core import stages
from buildsys.core.paths import WorkArea
from hostpgo.errors import InputError
from perf.interpreters import parse_spec

WHEEL = "mindspore-2.10.0+bolt.1a2b3c4d-cp311-cp311-linux_x86_64.whl"


def _ex(profile_name: str) -> stages.Execution:
    plan = stages.BuildPlan(f"cpython-3.11.2-{profile_name}", (), (),
                            {"profile": profile_name, "prefix": f"/i/{profile_name}"})
    return stages.Execution(plan, {})


def test_the_kept_wheel_is_one_more_subject_after_the_builds(tmp_path):
    builds = [_ex("baseline"), _ex("workload-pgo-lto-tcmalloc")]
    plain = engine.measure_command(builds, run_name="r", system=tmp_path / "absent")
    cmd = engine.measure_command(builds, run_name="r", system=tmp_path / "absent", wheels=[Path(f"/w/dist/{WHEEL}")])
    interps = [cmd[i + 1] for i, c in enumerate(cmd) if c == "--interp"]
    assert interps == ["baseline=/i/baseline/bin/python3",
                       "workload-pgo-lto-tcmalloc=/i/workload-pgo-lto-tcmalloc/bin/python3",
                       "workload-pgo-lto-tcmalloc+bolt-mindspore=/i/workload-pgo-lto-tcmalloc/bin/python3"
                       f"+wheel:/w/dist/{WHEEL}"]
    # Without kept wheels the command is the one the pipeline always ran.
    at = plain.index("--workloads")
    assert cmd == plain[:at] + ["--interp", interps[-1]] + plain[at:]
    spec = parse_spec(interps[-1])  # perf parses it back into the interpreter and the wheel
    assert (spec.name, spec.target, spec.wheels) == ("workload-pgo-lto-tcmalloc+bolt-mindspore",
                                                     "/i/workload-pgo-lto-tcmalloc/bin/python3", (f"/w/dist/{WHEEL}",))


def test_bolt_wheel_options_and_refusal():
    assert engine.bolt_wheel_argv("mindspore", "workload-pgo-lto-tcmalloc", "/v/bin/python", quick=True) == [
        "--package", "mindspore", "--profile", "workload-pgo-lto-tcmalloc", "--interp", "/v/bin/python",
        "--keep-if-faster", "--quick"]
    assert "--quick" not in engine.bolt_wheel_argv("mindspore", "p", "/v/bin/python")
    with pytest.raises(InputError, match="--bolt-wheels ray: not one of mindspore"):
        engine.bolt_wheel_argv("ray", "p", "/v/bin/python")


def test_the_venv_bolt_wheel_reads_the_stock_wheel_from(tmp_path):
    work = WorkArea(tmp_path / "w")
    py = Path("/i/workload-pgo-lto-tcmalloc/bin/python3")
    plan = engine.wheel_venv_plan(py, "cpython-3.11.2-workload-pgo-lto-tcmalloc", work, ("mindspore==2.10.0",))
    (st,) = plan.stages
    dest = tmp_path / "w" / "wheelbolt" / "venvs" / "cpython-3.11.2-workload-pgo-lto-tcmalloc"
    assert [a.argv for a in st.actions] == [
        (str(py), "-m", "venv", str(dest)),
        (str(dest / "bin/python"), "-m", "pip", "install", "--only-binary=:all:", "--disable-pip-version-check",
         "mindspore==2.10.0")]
    assert plan.summary["python"] == str(dest / "bin" / "python") and st.outputs == (dest,)
    other = engine.wheel_venv_plan(py, "cpython-3.11.2-workload-pgo-lto-tcmalloc", work, ("mindspore==2.11.0",))
    assert other.stages[0].key != st.key
    # The default requirement set is the runtime extra (the set the perf venvs install too).
    default = engine.wheel_venv_plan(py, "b", work)
    assert any(a.startswith("mindspore==") for a in default.stages[0].actions[1].argv)


def test_cli_takes_bolt_wheels_and_the_default_pipeline_rewrites_mindspore():
    args = parser().parse_args(["pipeline", "--bolt-wheels", ""])
    assert args.bolt_wheels == ""
    assert parser().parse_args(["pipeline"]).bolt_wheels == "mindspore" == ",".join(engine.DEFAULT_BOLT_WHEELS)
    assert parser().parse_args(["image", "--wheel", f"/w/{WHEEL}"]).wheel == [Path(f"/w/{WHEEL}")]
    assert parser().parse_args(["image"]).wheel == []


def test_image_venv_installs_the_kept_wheel_and_the_record_names_it(tmp_path):
    dist = tmp_path / "dist"
    dist.mkdir()
    wheel = dist / WHEEL
    wheel.write_bytes(b"wheel bytes")
    (dist / "hostpgo-wheelbolt.json").write_text(json.dumps({"decision": {"verdict": "faster", "kept": True}}))
    plain = image_inputs(tmp_path / "a")
    with_wheel = image_inputs(tmp_path / "b", wheels=(wheel,))
    assert image.venv_install_argv("/opt/hostpgo/venv/bin/python", plain)[-1] == "hostpgo[runtime]"
    assert image.venv_install_argv("/opt/hostpgo/venv/bin/python", with_wheel)[-2:] == [
        "hostpgo[runtime]", f"/tmp/hostpgo-wheels/{WHEEL}"]
    keys = {s.name: s.key for s in image.plan(plain).stages}
    wkeys = {s.name: s.key for s in image.plan(with_wheel).stages}
    assert wkeys["image-base"] == keys["image-base"] and wkeys["image-wheels"] == keys["image-wheels"]
    assert wkeys["image-assemble"] != keys["image-assemble"]
    p = image.plan(with_wheel)
    assert p.summary["replaced_wheels"] == [str(wheel)] and "replaced_wheels" not in image.plan(plain).summary
    assert WHEEL in p.stages[2].actions[0].describe()
    assert image.labels(with_wheel)["io.hostpgo.wheels"] == WHEEL and "io.hostpgo.wheels" not in image.labels(plain)
    (rec,) = image.replaced_wheels(with_wheel)
    assert rec["file"] == WHEEL and rec["distribution"] == "mindspore" and rec["version"] == "2.10.0+bolt.1a2b3c4d"
    assert rec["decision"] == "faster" and len(rec["sha256"]) == 64


def test_an_image_failure_after_the_measurement_names_the_rerun_that_keeps_it(tmp_path: Path) -> None:
    # The fresh-clone run of 2026-12-01 measured for an hour, then the image's pip install hit ENOSPC: a rerun
    # without --out would have measured again under a new run name.
    from buildsys import engine
    from hostpgo.errors import CommandError

    cause = engine.HostpgoError("stage 'image-assemble' of image-x failed (log: L):\nNo space left on device")
    cause.exit_code = CommandError.exit_code
    failed = engine.after_measurement(cause, "pipeline-20261201T181409Z", tmp_path / "report.md")
    text = str(failed)
    assert "No space left on device" in text and f"report {tmp_path / 'report.md'}" in text
    assert "nox -s pipeline -- --out pipeline-20261201T181409Z" in text
    assert failed.exit_code == 4
