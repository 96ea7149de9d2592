"""Small pure pieces: per-token derivation, stage and subset parsing, run naming, target lists."""

import pyperf
import pytest

from perf import catalog, guard, session, workspace
from perf.errors import SpecError
from perf.plots import per_token_values


def _bench(unit, tps=None):
    md = {"name": "b", "unit": "second", "hostpgo_unit": unit}
    if tps is not None:
        md["hostpgo_tokens_per_step"] = tps
    return pyperf.Benchmark([pyperf.Run([0.008, 0.016], metadata=md, collect_metadata=False)])


def test_per_token_divides_step_time_by_tokens_per_step():
    vals, label = per_token_values(_bench("step", 8.0))
    assert vals == pytest.approx([1000.0, 2000.0]) and label == "us per token"
    vals, label = per_token_values(_bench("dispatch"))
    assert vals == pytest.approx([8000.0, 16000.0]) and label == "us per dispatch"


def test_stage_and_subset_parsing():
    assert session.parse_stages("latency, guard") == ("latency", "guard")
    with pytest.raises(SpecError, match="--stages: unknown stage 'fast'"):
        session.parse_stages("latency,fast")
    assert guard.parse_subset(None) == guard.DEFAULT_SUBSET and len(guard.DEFAULT_SUBSET) == 12
    assert guard.parse_subset("nbody, go") == ("nbody", "go")
    with pytest.raises(SpecError, match="--guard-benchmarks"):
        guard.parse_subset(" , ")


def test_targets_and_run_names(tmp_path, monkeypatch):
    assert [t.name for t in catalog.parse_targets("decode-b1,pure-python,decode-b1")] == ["decode-b1", "pure-python"]
    assert catalog.TARGETS["op-dispatch"].unit == "dispatch" and catalog.TARGETS["op-dispatch"].needs_runtime
    assert not catalog.TARGETS["pure-python"].needs_runtime
    with pytest.raises(SpecError, match="--workloads: unknown workload 'decode-b3'"):
        catalog.parse_targets("decode-b3")
    monkeypatch.setenv("HOSTPGO_HOME", str(tmp_path))
    assert workspace.new_run_dir("ab-1") == tmp_path / "results" / "ab-1"
    assert workspace.new_run_dir(str(tmp_path / "x")) == tmp_path / "x"
    with pytest.raises(SpecError, match="--out"):
        workspace.new_run_dir("a b")
