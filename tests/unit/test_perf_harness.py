"""Real runs of the latency harness: tiny pyperf benchmarks in subprocesses of this interpreter."""

import json
import sys
from pathlib import Path

import pyperf
import pytest

from perf import catalog, latency
from perf.__main__ import main
from perf.compare import compare_suites

FAKE_DIR = Path(__file__).resolve().parent.parent / "perf"
TINY = latency.LatencySettings(rounds=2, values=2, warmups=1, min_time=0.005, timeout=120)


def test_round_order_alternates():
    assert latency.round_order(["a", "b", "c"], 3) == [["a", "b", "c"], ["c", "b", "a"], ["a", "b", "c"]]


def test_interleaved_run_merges_per_interpreter(tmp_path):
    subjects = [latency.Subject("one", Path(sys.executable), {"hostpgo_manifest_sha256": "none"}),
                latency.Subject("two", Path(sys.executable), {"hostpgo_manifest_sha256": "abc"})]
    targets = [catalog.TARGETS["decode-b8"]]
    rec = latency.run_interleaved(subjects, targets, tmp_path / "latency", TINY,
                                  provider="fake_workloads", env={"PYTHONPATH": str(FAKE_DIR)})
    assert rec["order"] == [["one", "two"], ["two", "one"]]
    assert set(rec["files"]) == {"one", "two"}
    suites = {n: pyperf.BenchmarkSuite.load(str(tmp_path / f)) for n, f in rec["files"].items()}
    b = suites["two"].get_benchmark("decode-b8")
    assert b.get_nvalue() == TINY.rounds * TINY.values
    md = b.get_metadata()
    assert md["hostpgo_manifest_sha256"] == "abc"
    assert md["hostpgo_tokens_per_step"] == 8
    assert md["hostpgo_provider"] == "fake_workloads"
    assert md["loops"] == rec["loops"]["decode-b8"]
    c = compare_suites(suites["one"], suites["two"], "one", "two")
    assert c.rows[0].name == "decode-b8" and c.rows[0].n_base == 4


def test_only_the_timing_worker_opens_the_workload_and_shuts_it_down(tmp_path):
    # pyperf's manager process spawns the workers: a workload it opened would sit idle beside the timed process
    # (MindSpore's threads, a Ray cluster). Only workers open one, and each shuts down what it opened.
    log = tmp_path / "opens.log"
    subjects = [latency.Subject("one", Path(sys.executable), {})]
    latency.run_interleaved(subjects, [catalog.TARGETS["decode-b1"]], tmp_path / "latency", TINY,
                            provider="fake_workloads",
                            env={"PYTHONPATH": str(FAKE_DIR), "FAKE_WORKLOAD_LOG": str(log)})
    events = [line.split() for line in log.read_text().splitlines()]
    opened = [pid for what, pid, _ in events if what == "open"]
    managers = {ppid for what, _, ppid in events if what == "open"}
    assert len(opened) >= 1 + TINY.rounds and len(managers) >= 1 + TINY.rounds  # one manager per pyperf command
    assert not managers & set(opened)
    assert sorted(pid for what, pid, _ in events if what == "shutdown") == sorted(opened)


def test_cli_bench_and_report_on_pure_python(tmp_path):
    out = tmp_path / "run"
    rc = main(["bench", "--interp", f"a={sys.executable}", "--interp", f"b={sys.executable}",
               "--workloads", "pure-dispatch", "--no-venv", "--quick", "--stages", "latency", "--out", str(out)])
    assert rc == 0
    record = json.loads((out / "run.json").read_text())
    assert record["baseline"] == "a" and record["latency"]["files"]["b"] == "latency/b.json"
    text = (out / "report.md").read_text()
    assert "### b vs a" in text and "pure-dispatch" in text
    assert (out / "plots" / "latency_distribution.png").read_bytes()[:4] == b"\x89PNG"
    (out / "report.md").unlink()
    assert main(["report", str(out)]) == 0
    assert (out / "report.md").read_text() == text


def test_rerun_of_a_run_keeps_measured_stages_unless_redo(tmp_path):
    out = tmp_path / "run"
    argv = ["bench", "--interp", f"a={sys.executable}", "--interp", f"b={sys.executable}",
            "--workloads", "pure-dispatch", "--no-venv", "--quick", "--stages", "latency", "--out", str(out)]
    assert main(argv) == 0
    first = (out / "latency" / "b.json").stat().st_mtime_ns
    assert main(argv) == 0  # an interrupted pipeline rerun measures only what is missing
    assert (out / "latency" / "b.json").stat().st_mtime_ns == first
    record = json.loads((out / "run.json").read_text())
    assert record["stage_done"]["latency"] == {"targets": ["pure-dispatch"], "quick": True}
    assert main([*argv, "--redo"]) == 0
    assert (out / "latency" / "b.json").stat().st_mtime_ns != first


def test_rerun_refuses_a_run_whose_interpreter_changed_under_the_same_name(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["bench", "--interp", f"a={sys.executable}", "--interp", f"b={sys.executable}",
            "--workloads", "pure-dispatch", "--no-venv", "--quick", "--stages", "latency", "--out", str(out)]
    assert main(argv) == 0
    record = json.loads((out / "run.json").read_text())
    record["interpreters"][1]["exe_sha256"] = "0" * 64  # as if b had been rebuilt since
    (out / "run.json").write_text(json.dumps(record))
    assert main(argv) == 3
    err = capsys.readouterr().err
    assert "'b'" in err and "exe_sha256" in err and "--out" in err


def test_counter_runs_go_in_parallel_and_count_exactly(tmp_path):
    out = tmp_path / "run"
    assert main(["bench", "--interp", f"a={sys.executable}", "--interp", f"b={sys.executable}",
                 "--workloads", "pure-dispatch", "--no-venv", "--quick", "--stages", "counters",
                 "--backend", "cachegrind", "--out", str(out)]) == 0
    res = json.loads((out / "run.json").read_text())["counters"]["results"]
    assert list(res) == ["a", "b"]  # in interpreter order whatever finished first
    # Start-up differs by a few instructions (the subject's name is in its paths); the per-unit cost,
    # the difference of two runs, is exact even with another valgrind on the other core.
    assert (res["a"]["pure-dispatch"]["per_unit"]["instructions"]
            == res["b"]["pure-dispatch"]["per_unit"]["instructions"])


def test_counter_workloads_choose_the_counted_targets_apart_from_the_timed_ones(tmp_path):
    out = tmp_path / "run"
    assert main(["bench", "--interp", f"a={sys.executable}", "--interp", f"b={sys.executable}",
                 "--workloads", "pure-dispatch", "--counter-workloads", "pure-python", "--no-venv", "--quick",
                 "--stages", "latency,counters", "--backend", "cachegrind", "--out", str(out)]) == 0
    record = json.loads((out / "run.json").read_text())
    assert set(record["targets"]) == {"pure-dispatch", "pure-python"}
    assert list(record["counters"]["results"]["b"]) == ["pure-python"]
    assert record["stage_done"]["counters"]["targets"] == ["pure-python"]
    assert record["stage_done"]["latency"]["targets"] == ["pure-dispatch"]
    text = (out / "report.md").read_text()
    assert "### pure-python (per step" in text and "### pure-dispatch (per dispatch" not in text


@pytest.mark.parametrize("argv,code", [
    (["bench", "--interp", "=x"], 2),
    (["bench", "--interp", "/no/such/python"], 2),
    (["bench", "--interp", sys.executable, "--workloads", "nope"], 2),
    (["bench", "--interp", sys.executable, "--counter-workloads", "decode-b1,nope"], 2),
    (["bench", "--interp", sys.executable, "--stages", "latency,bogus"], 2),
])
def test_cli_spec_errors_exit_with_code(argv, code, tmp_path, capsys):
    assert main(argv + ["--out", str(tmp_path / "r")]) == code
    err = capsys.readouterr().err
    assert "error:" in err


def test_cli_report_of_missing_run(tmp_path, capsys):
    assert main(["report", str(tmp_path / "missing")]) == 5
    assert "run.json" in capsys.readouterr().err


@pytest.mark.runtime
def test_runtime_decode_b1_through_the_harness(tmp_path):
    """The real runtime's decode-b1 under pyperf in a subprocess (needs mindspore)."""
    pytest.importorskip("mindspore")
    subjects = [latency.Subject("here", Path(sys.executable), {"hostpgo_manifest_sha256": "none"})]
    settings = latency.LatencySettings(rounds=1, values=2, warmups=0, timeout=300, loops=1)
    env = {"HOSTPGO_HOME": str(tmp_path / "home")}
    rec = latency.run_interleaved(subjects, [catalog.TARGETS["decode-b1"]], tmp_path / "latency", settings, env=env)
    suite = pyperf.BenchmarkSuite.load(str(tmp_path / rec["files"]["here"]))
    bench = suite.get_benchmark("decode-b1")
    md = bench.get_metadata()
    assert md["hostpgo_provider"] == "runtime.workloads"
    assert md["hostpgo_tokens_per_step"] > 0 and md["hostpgo_dispatches_per_step"] > 0
    assert bench.get_nvalue() == 2 and bench.median() > 0
