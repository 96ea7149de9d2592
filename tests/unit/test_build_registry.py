"""Unit: the target registry, planning without processes, generated docs, and the CLI's exit codes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from buildsys import cli, engine, targets
from buildsys.core import stages
from buildsys.core.paths import WorkArea
from buildsys.pipeline import bolt, sources, training
from buildsys.targets import cpython
from buildsys.toolchain import Host, Toolchains, facts, profile


def test_registry_lists_cpython_with_its_data() -> None:
    assert "cpython" in targets.names()
    spec = targets.get("cpython")
    assert spec.system == "autotools" and "3.11.2" in spec.sources and spec.bolt["static"] == "python"
    assert spec.module() is cpython
    with pytest.raises(targets.InputError, match="unknown target 'nginx'; targets: cpython"):
        targets.get("nginx")
    # The CLI's `build` choices come from the registry.
    assert cli.parser().parse_args(["build", "cpython", "--profile", "baseline"]).target == "cpython"


def test_availability_says_why_not(monkeypatch: pytest.MonkeyPatch) -> None:
    spec = targets.get("cpython")
    none = Toolchains(Host("x86_64", "debian"), ())
    monkeypatch.setattr(targets, "which", lambda name: None)
    got = targets.availability(spec, none)
    assert not got.ok and "no C compiler found" in got.why and "not on PATH: make, patch" in got.why
    monkeypatch.setattr(targets, "which", lambda name: f"/usr/bin/{name}")
    ok = targets.availability(spec, Toolchains(none.host, (engine.hypothetical_compiler("gcc"),)))
    assert ok.ok


def test_targets_command_lists_system_and_availability(capsys: pytest.CaptureFixture) -> None:
    assert cli.main(["targets", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    cp = next(r for r in rows if r["target"] == "cpython")
    assert cp["system"] == "autotools" and cp["versions"] == ["3.11.2"] and isinstance(cp["buildable"], bool)
    assert cp["why"]


@pytest.mark.parametrize("name", ["baseline", "generic-pgo-lto", "gcc-pgo-lto", "workload-pgo-lto-tcmalloc",
                                  "workload-pgo-lto-bolt"])
def test_planning_starts_no_process(forbid_processes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                    name: str) -> None:
    """Planning is pure: the probed facts come in with the inputs (BOLT's branch sampling too)."""
    prof = profile.load(name, environ={})
    inp = cpython.Inputs(profile=prof, compiler=engine.hypothetical_compiler(prof.toolchain.family),
                         host=Host("x86_64", "debian"), work=WorkArea(tmp_path),
                         pin=sources.pinned("cpython", "3.11.2"), patches=(),
                         tasks=training.resolve(prof.pgo.tasks) if prof.optimize.pgo == "on" else (), jobs=2,
                         bolt_sampling=bolt.Sampling(False, "probed earlier: no branch stacks"))
    forbid_processes()
    plan = engine.plan(inp)
    text = stages.render_plan(plan, stages.would_skip(plan, tmp_path / "stamps"))
    assert text.startswith(f"plan cpython-3.11.2-{name}")
    if prof.optimize.bolt:
        assert "BOLT profile collection: instrument (instrumentation: no LBR/BRBE here (probed earlier" in text


def test_bolt_plan_refuses_to_probe(tmp_path: Path) -> None:
    prof = profile.load("workload-pgo-lto-bolt", environ={})
    inp = cpython.Inputs(profile=prof, compiler=engine.hypothetical_compiler("clang"), host=Host("x86_64", "debian"),
                         work=WorkArea(tmp_path), pin=sources.pinned("cpython", "3.11.2"), patches=(),
                         tasks=training.resolve(prof.pgo.tasks), jobs=2)
    with pytest.raises(cpython.HostpgoError, match="probed host facts"):
        cpython.plan(inp)


def test_host_facts_are_probed_once_and_cached_by_tool_identity(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def fake_probe(runner):
        calls.append(1)
        return facts.Probe(True, "perf record ok"), facts.Probe(False, "<not supported>")

    monkeypatch.setattr(facts, "probe", fake_probe)
    monkeypatch.setattr(facts, "tool_identity", lambda perf: "perf v1")
    first = facts.host_facts(tmp_path)
    again = facts.host_facts(tmp_path)
    assert calls == [1] and not first.cached and again.cached
    assert again.branch_sampling == facts.Probe(True, "perf record ok") and not again.hardware_counters.available
    monkeypatch.setattr(facts, "tool_identity", lambda perf: "perf v2")  # a new perf: probed again
    facts.host_facts(tmp_path)
    assert calls == [1, 1]
    assert again.describe()["probed_with"] == "perf v1 (cached)"


def test_docs_profiles_md_is_generated_from_the_schema() -> None:
    """docs/profiles.md is stale when this fails: run `python -m buildsys docs --write`."""
    assert cli.PROFILES_DOC.read_text() == profile.reference()
    text = profile.reference()
    for sect, keys in profile.SCHEMA.items():
        assert f"## `[{sect}]`" in text
        for name in keys:
            assert f"| `{name}` |" in text
    assert ".hostpgo/profiles/" in text  # merged profile data lives in the profile store, not in pgo/
    assert cli.main(["docs", "--check"]) == 0


def test_exit_codes_follow_the_error_family(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert "2  bad input" in cli.parser().epilog and "4  an external tool failed" in cli.parser().epilog
    assert cli.main(["show-profile", "no-such-profile"]) == 2
    assert cli.main(["build", "cpython", "--profile", "baseline", "--dry-run", "--jobs", "0"]) == 2
    assert cli.main(["bolt-check", str(tmp_path / "absent")]) == 2


def test_a_failed_tool_keeps_exit_code_4_through_the_executor(tmp_path: Path) -> None:
    plan = stages.BuildPlan("t", (stages.Stage("s", "fails", "k", (stages.Cmd(("false",), nice=False),)),), (), {})
    with pytest.raises(cli.HostpgoError) as e:
        stages.execute(plan, tmp_path / "stamps", tmp_path / "logs", live=False)
    assert e.value.exit_code == 4 and "stage 's' of t failed" in str(e.value)
