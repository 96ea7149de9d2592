"""bolt-wheel's keep decision: the rule on comparison JSON as perf writes it (a significant win, noise, mixed,
slower), the perf command, the decide stage in the plan and its body with a stand-in perf run, the manifest."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pyperf
import pytest
from test_build_wheelbolt import _inputs  # tests/unit is on sys.path (pytest's default prepend import mode)

from buildsys.core.stages import StageContext, StageResult
from buildsys.pipeline import wheelbolt, wheeldecide
from hostpgo.errors import HostpgoError
from perf import report
from perf.compare import compare_suites

WORKLOADS = wheeldecide.DECIDE_WORKLOADS
THREE = ("decode-b1", "decode-b8", "serve-mixed")
"""The rule's tests time three workloads (the decision's list is longer; the rule does not depend on its length)."""
STEADY = [1.00, 1.01, 0.99, 1.02, 0.98, 1.00]
NOISY = [1.03, 0.95, 1.04, 0.97, 1.02, 0.99]


def _bench(name: str, values: list[float]) -> pyperf.Benchmark:
    md = {"name": name, "unit": "second", "loops": 8}
    return pyperf.Benchmark([pyperf.Run(values[i:i + 3], metadata=md, collect_metadata=False)
                             for i in range(0, len(values), 3)])


def comparison(factors: dict[str, float], changed: list[float] | None = None) -> dict:
    """comparison.json as perf's report writes it, for bolt = stock x factor per workload."""
    stock = pyperf.BenchmarkSuite([_bench(w, STEADY) for w in factors])
    bolt = pyperf.BenchmarkSuite([_bench(w, [v * f for v in (changed or STEADY)]) for w, f in factors.items()])
    c = compare_suites(stock, bolt, wheeldecide.STOCK, wheeldecide.REWRITTEN)
    return json.loads(json.dumps({"run": "r", "baseline": "stock", "latency": [report._comparison_json(c)]}))


def test_a_significant_win_on_every_workload_is_kept():
    d = wheeldecide.decide(comparison({"decode-b1": 0.9, "decode-b8": 0.92, "serve-mixed": 0.95}), THREE)
    assert d.kept and d.verdict == "faster"
    assert d.geomean_significant and d.geomean_ratio == pytest.approx((0.9 * 0.92 * 0.95) ** (1 / 3))
    assert [w.name for w in d.workloads] == list(THREE) and all(w.significant for w in d.workloads)
    assert d.why.startswith("significantly faster: geometric mean 0.923 (t = ")


def test_noise_is_not_a_win_even_below_one():
    d = wheeldecide.decide(comparison({"decode-b1": 0.99, "decode-b8": 0.995, "serve-mixed": 0.99}, changed=NOISY),
                           THREE)
    assert d.geomean_ratio < 1 and not d.geomean_significant
    assert not d.kept and d.verdict == "not significant"
    assert "no significant difference on the geometric mean" in d.why and "not a win" in d.why


def test_mixed_faster_on_the_geometric_mean_but_slower_on_one_workload_is_not_kept():
    d = wheeldecide.decide(comparison({"decode-b1": 0.7, "decode-b8": 0.7, "serve-mixed": 1.1}), THREE)
    assert d.geomean_significant and d.geomean_ratio < 1
    assert not d.kept and d.verdict == "mixed"
    assert "significantly slower on serve-mixed" in d.why


def test_significantly_slower_is_not_kept():
    d = wheeldecide.decide(comparison({"decode-b1": 1.1, "decode-b8": 1.08, "serve-mixed": 1.05}), THREE)
    assert not d.kept and d.verdict == "slower"


def test_the_rule_refuses_a_comparison_that_is_not_the_decisions():
    full = comparison({"decode-b1": 0.9, "decode-b8": 0.9})
    with pytest.raises(HostpgoError, match="lacks workload.*serve-mixed"):
        wheeldecide.decide(full)
    old = comparison(dict.fromkeys(WORKLOADS, 0.9))
    del old["latency"][0]["geomean_significant"]
    with pytest.raises(HostpgoError, match="no test of its geometric mean"):
        wheeldecide.decide(old)
    other = comparison(dict.fromkeys(WORKLOADS, 0.9))
    other["latency"][0]["changed"] = "opt"
    with pytest.raises(HostpgoError, match="no latency comparison of bolt against stock"):
        wheeldecide.decide(other)


def test_bench_command():
    cmd = wheeldecide.bench_command("/dev/bin/python", "/v/bin/python", "/w/m-1+bolt.x-py3-none-any.whl",
                                    Path("/w/decide/run"), quick=True)
    assert cmd[cmd.index("--workloads") + 1] == ",".join(WORKLOADS)
    cmd = wheeldecide.bench_command("/dev/bin/python", "/v/bin/python", "/w/m-1+bolt.x-py3-none-any.whl",
                                    Path("/w/decide/run"), workloads=THREE, quick=True)
    assert cmd == ["/dev/bin/python", "-m", "perf", "bench", "--interp", "stock=/v/bin/python",
                   "--interp", "bolt=/v/bin/python+wheel:/w/m-1+bolt.x-py3-none-any.whl",
                   "--workloads", "decode-b1,decode-b8,serve-mixed", "--stages", "latency", "--out", "/w/decide/run",
                   "--quick"]
    assert "--quick" not in wheeldecide.bench_command("p", "i", "w", Path("r"))


def _decide_inputs(tmp_path: Path, quick: bool = True) -> wheelbolt.Inputs:
    return dataclasses.replace(_inputs(tmp_path), decide=wheeldecide.DecideSettings(
        quick=quick, perf_python="/dev/bin/python", home=str(tmp_path / "home")))


def test_the_decide_stage_is_planned_only_when_asked(tmp_path):
    plain = wheelbolt.plan(_inputs(tmp_path))
    asked = wheelbolt.plan(_decide_inputs(tmp_path))
    assert [s.name for s in asked.stages] == [s.name for s in plain.stages] + ["wheelbolt-decide"]
    assert [s.key for s in asked.stages[:-1]] == [s.key for s in plain.stages]  # the other stages keep their keys
    decide = asked.stages[-1]
    text = decide.actions[0].describe()
    assert "HOSTPGO_HOME=" + str(tmp_path / "home") in text and "-m perf bench --interp stock=/v/bin/python" in text
    assert "--quick" in text and wheeldecide.RULE in text
    assert decide.outputs == (tmp_path / "w" / "decide",)
    assert wheelbolt.plan(_decide_inputs(tmp_path, quick=False)).stages[-1].key != decide.key


class _FakePerf:
    """Stands in for the runner: `python -m perf bench` writes the comparison perf would."""

    def __init__(self, comp: dict):
        self.comp, self.calls = comp, []

    def run(self, argv, env=None, cwd=None, timeout=None, **kw):
        self.calls.append((list(argv), env))
        out = Path(argv[argv.index("--out") + 1])
        out.mkdir(parents=True)
        (out / "comparison.json").write_text(json.dumps(self.comp))
        return 0


def test_decide_stage_runs_perf_through_the_runner_and_records_the_verdict(tmp_path):
    inp = _decide_inputs(tmp_path)
    stage = wheelbolt.plan(inp).stages[-1]
    wheel = tmp_path / "w" / "dist" / "mindspore-2.10.0+bolt.1a2b3c4d-py3-none-any.whl"
    fake = _FakePerf(comparison(dict.fromkeys(WORKLOADS, 0.9)))
    packed = StageResult("wheelbolt-pack", "k", False, 1.0, {"wheel": str(wheel)})
    ctx = StageContext(runner=fake, info={}, results={"wheelbolt-pack": packed})
    stage.actions[0].fn(ctx)
    ((argv, env),) = fake.calls
    assert argv == wheeldecide.bench_command("/dev/bin/python", "/v/bin/python", wheel,
                                             tmp_path / "w" / "decide" / "run", quick=True)
    assert env == {"HOSTPGO_HOME": str(tmp_path / "home")}
    rec = ctx.info["decision"]
    assert rec["kept"] is True and rec["verdict"] == "faster" and rec["run"] == str(tmp_path / "w/decide/run")
    assert rec["wheel"] == str(wheel) and rec["quick"] is True


def _manifest(decision: dict | None) -> dict:
    return {"schema": wheelbolt.MANIFEST_SCHEMA, "build_id": "b", "package": "p", "input": {}, "profile": {},
            "collector": {}, "apply": [], "libraries": [], "stages": {}, "written": "t",
            "output": {"wheel": "/w/dist/m.whl"}, "decision": decision}


def test_manifest_decision_and_the_kept_wheel():
    kept = {**wheeldecide.decide(comparison(dict.fromkeys(WORKLOADS, 0.9))).to_json(), "run": "/w/decide/run"}
    wheelbolt.validate_manifest(_manifest(kept))
    assert wheeldecide.kept_wheel(_manifest(kept)) == Path("/w/dist/m.whl")
    noise = {**wheeldecide.decide(comparison(dict.fromkeys(WORKLOADS, 0.995), changed=NOISY)).to_json(), "run": "/r"}
    wheelbolt.validate_manifest(_manifest(noise))
    assert wheeldecide.kept_wheel(_manifest(noise)) is None
    assert wheeldecide.kept_wheel(_manifest(None)) is None  # no decision made: nothing is shipped
    with pytest.raises(HostpgoError, match="keeps the wheel exactly when it is 'faster'"):
        wheelbolt.validate_manifest(_manifest({**noise, "kept": True}))


def test_cli_flags_reach_the_decide_settings():
    args = wheelbolt.arguments(["--package", "mindspore", "--profile", "p", "--keep-if-faster", "--quick",
                                "--decide-workloads", "decode-b1"])
    assert args.keep_if_faster and args.quick and args.decide_workloads == ["decode-b1"]
    assert not wheelbolt.arguments(["--package", "m", "--profile", "p"]).keep_if_faster


def test_the_decision_times_every_workload_the_pipeline_measures():
    from buildsys import engine

    assert wheeldecide.DECIDE_WORKLOADS == engine.PIPELINE_WORKLOADS
