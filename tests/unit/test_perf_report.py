"""Report generation from fixture JSON, and the run record's round trip."""

import json
import shutil
from pathlib import Path

import pyperf
import pytest

from perf import SCHEMA, report, results
from perf.errors import ResultsError

FIXTURE = Path(__file__).resolve().parent.parent / "perf" / "fixtures" / "run-small"


@pytest.fixture
def run_dir(tmp_path):
    dest = tmp_path / "run-small"
    shutil.copytree(FIXTURE, dest)
    return dest


def test_report_from_fixture(run_dir):
    dest = report.build(run_dir)
    text = dest.read_text()
    assert text.startswith("# hostpgo measurement: run-small")
    assert "## Interpreters" in text and "base (baseline)" in text
    assert "### opt vs base" in text and "**geometric mean**" in text
    assert "backend: `cachegrind`" in text and "IPC (estimate, model)" in text
    assert "## Host-time attribution by library" in text and "| CPython |" in text
    headline = text.split("## Headline", 1)[1].split("## Latency", 1)[0]
    assert "| opt |" in headline and "decode-b8 instructions" in headline
    for png in ("latency_distribution.png", "latency_speedup.png"):
        assert (run_dir / "plots" / png).read_bytes()[:4] == b"\x89PNG"
        assert f"plots/{png}" in text


def test_comparison_json_matches_the_pyperf_files(run_dir):
    report.build(run_dir)
    comp = json.loads((run_dir / report.COMPARISON).read_text())
    base = pyperf.BenchmarkSuite.load(str(run_dir / "latency" / "base.json"))
    opt = pyperf.BenchmarkSuite.load(str(run_dir / "latency" / "opt.json"))
    (lat,) = comp["latency"]
    assert lat["baseline"] == "base" and lat["changed"] == "opt"
    for row in lat["rows"]:
        want = opt.get_benchmark(row["name"]).median() / base.get_benchmark(row["name"]).median()
        assert row["ratio"] == pytest.approx(want)
        marker = "*not significant*" if not row["significant"] else row["verdict"]
        assert marker in (run_dir / "report.md").read_text()
    counters = comp["counters"]["per_unit"]
    assert counters["decode-b8"]["base"]["instructions"] > 0


def test_report_is_regenerated_identically(run_dir):
    first = report.build(run_dir).read_text()
    assert report.build(run_dir).read_text() == first


def test_record_round_trip_and_errors(tmp_path):
    rec = results.new_record(tmp_path / "r", [{"name": "a"}], ["pure-python"], ["python", "-m", "perf"])
    results.save(tmp_path / "r", rec)
    assert results.load(tmp_path / "r") == rec
    assert rec["schema"] == SCHEMA and rec["baseline"] == "a"
    (tmp_path / "r" / results.RUN_FILE).write_text(json.dumps({**rec, "schema": "other/9"}))
    with pytest.raises(ResultsError, match="schema 'other/9'"):
        results.load(tmp_path / "r")
    (tmp_path / "r" / results.RUN_FILE).write_text("{not json")
    with pytest.raises(ResultsError, match="not valid JSON"):
        results.load(tmp_path / "r")


def test_missing_result_file_is_named(run_dir):
    (run_dir / "latency" / "opt.json").unlink()
    with pytest.raises(ResultsError, match="opt.json"):
        report.build(run_dir)


def test_stamped_metadata_survives_dump_and_load(run_dir, tmp_path):
    suite = pyperf.BenchmarkSuite.load(str(run_dir / "latency" / "opt.json"))
    for b in suite.get_benchmarks():
        b.update_metadata({"hostpgo_manifest_sha256": "f" * 64})
    suite.dump(str(tmp_path / "s.json"))
    again = pyperf.BenchmarkSuite.load(str(tmp_path / "s.json"))
    assert {b.get_metadata()["hostpgo_manifest_sha256"] for b in again.get_benchmarks()} == {"f" * 64}
    assert [b.get_values() for b in again.get_benchmarks()] == [b.get_values() for b in suite.get_benchmarks()]


def test_another_baseline_is_written_beside_the_main_report(run_dir):
    main = report.build(run_dir).read_text()
    dest = report.build(run_dir, baseline="opt")
    assert dest.name == "report-vs-opt.md" and (run_dir / "report.md").read_text() == main
    text = dest.read_text()
    assert "### base vs opt" in text and "opt (baseline)" in text
    (lat,) = json.loads((run_dir / "comparison-vs-opt.json").read_text())["latency"]
    base = pyperf.BenchmarkSuite.load(str(run_dir / "latency" / "base.json"))
    opt = pyperf.BenchmarkSuite.load(str(run_dir / "latency" / "opt.json"))
    for row in lat["rows"]:
        assert row["ratio"] == pytest.approx(base.get_benchmark(row["name"]).median()
                                             / opt.get_benchmark(row["name"]).median())
    assert (run_dir / "plots-vs-opt" / "latency_speedup.png").is_file()
    with pytest.raises(ResultsError, match="--baseline nosuch: not a subject of run run-small"):
        report.build(run_dir, baseline="nosuch")
