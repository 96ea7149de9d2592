"""The stack steps (a)-(d) of a run: parsing --stack-step, and the report's `stack (a)-(d)` section from run JSON.

The run is made here from the shape of tests/perf/fixtures/run-small (a real small run's pyperf files and
record): its two suites stand for the steps, with values scaled by fixed factors so each step differs. The
figures are test data, not results; the tests check that the section computes what the JSON holds.
"""

import json
import shutil
from pathlib import Path

import pyperf
import pytest

from perf import report, results
from perf import stack as stackmod
from perf.compare import compare_suites
from perf.errors import SpecError

FIXTURE = Path(__file__).resolve().parent.parent / "perf" / "fixtures" / "run-small"
C = "workload-pgo-lto+tcmalloc-hostpgo"
D = "workload-pgo-lto+tcmalloc-hostpgo+pgo-numpy"
SUBJECTS = {  # name -> (fixture suite, factor on its values, instructions factor, CPython / allocator-group shares)
    "baseline": ("base", 1.0, 1.0, (100.0, 0.0)),
    "debian": ("base", 0.97, 0.96, (100.0, 0.0)),
    "workload-pgo-lto": ("opt", 1.0, 1.0, (95.0, 0.0)),
    "workload-pgo-lto-tcmalloc": ("opt", 0.9, 0.85, (80.0, 15.0)),
    C: ("opt", 0.8, 0.8, (75.0, 20.0)),
    D: ("opt", 0.78, 0.79, (74.0, 20.0)),
}
STEPS = ["a=debian", "a=baseline", "b=workload-pgo-lto", f"c={C}", "c=workload-pgo-lto-tcmalloc", f"d={D}"]


def _scaled_suite(src: Path, dest: Path, factor: float, name: str) -> None:
    data = json.loads(src.read_text())
    for bench in data["benchmarks"]:
        for run in bench["runs"]:
            if "values" in run:
                run["values"] = [v * factor for v in run["values"]]
    data["metadata"] = {**data.get("metadata", {}), "hostpgo_interp": name}
    dest.write_text(json.dumps(data))


@pytest.fixture
def stack_run(tmp_path):
    return _make_run(tmp_path, SUBJECTS, STEPS)


def _make_run(tmp_path, subjects, steps):
    dest = tmp_path / "run-stack"
    shutil.copytree(FIXTURE, dest)
    rec = json.loads((dest / "run.json").read_text())
    base_i = {i["name"]: i for i in rec["interpreters"]}
    cnt = rec["counters"]["results"]
    att = rec["attribution"]
    rec["interpreters"], rec["latency"]["files"], rec["counters"]["results"], rec["attribution"] = [], {}, {}, {}
    for name, (src, factor, ifactor, (cpy, tc)) in subjects.items():
        rec["interpreters"].append({**base_i[src], "name": name})
        _scaled_suite(FIXTURE / "latency" / f"{src}.json", dest / "latency" / f"{name}.json", factor, name)
        rec["latency"]["files"][name] = f"latency/{name}.json"
        per = {t: {**r, "per_unit": {**r["per_unit"], "instructions": r["per_unit"]["instructions"] * ifactor}}
               for t, r in cnt[src].items()}
        rec["counters"]["results"][name] = per
        groups = {"CPython": cpy, **({"allocator": tc} if tc else {}), "libc": 100.0 - cpy - tc}
        rec["attribution"][name] = {t: {**r, "groups": {g: v for g, v in groups.items() if v}}
                                    for t, r in att[src].items()}
    rec["baseline"] = "baseline"
    rec["interpreters"].sort(key=lambda i: i["name"] != "baseline")
    rec["stack"] = [s.to_json() for s in stackmod.parse_steps(steps, list(subjects))]
    results.save(dest, rec)
    return dest


def test_steps_parse_in_order_with_references():
    steps = stackmod.parse_steps(STEPS, list(SUBJECTS))
    assert [(s.step, s.subject, s.reference) for s in steps] == [
        ("a", "debian", False), ("a", "baseline", True), ("b", "workload-pgo-lto", False), ("c", C, False),
        ("c", "workload-pgo-lto-tcmalloc", True), ("d", D, False)]
    # Each subject against the step before (a reference too); (a)'s reference against (a)'s own subject.
    assert [(s.subject, prev) for s, prev in stackmod.pairs(steps)] == [
        ("baseline", "debian"), ("workload-pgo-lto", "debian"), (C, "workload-pgo-lto"),
        ("workload-pgo-lto-tcmalloc", "workload-pgo-lto"), (D, C)]
    # A stack whose wheels are not measured ends at (c).
    assert [s.step for s in stackmod.parse_steps(STEPS[:-1], list(SUBJECTS))] == ["a", "a", "b", "c", "c"]
    # Or goes from (c) to (e), the rewritten framework wheels, which is then compared with (c).
    no_d = stackmod.parse_steps([*STEPS[:-1], f"e={D}"], list(SUBJECTS))
    assert [s.step for s in no_d][-2:] == ["c", "e"] and stackmod.pairs(no_d)[-1][1] == C


@pytest.mark.parametrize("given, message", [
    (["f=debian"], "expected STEP=NAME with STEP one of a, b, c, d, e"),
    (["a=nobody", "b=debian"], "'nobody' is not a subject of this run"),
    (["a=debian", "b=debian"], "'debian' is already step \\(a\\)"),
    (["b=workload-pgo-lto", "a=debian"], "steps go in order a, b, c, d, e; \\(a\\) after \\(b\\)"),
    (["a=debian", "c=" + C], "no subject for step \\(b\\)"),
    (["a=debian"], "only step \\(a\\) is named"),
    (["a=debian", "b=workload-pgo-lto", "e=" + C], "no subject for step \\(c\\)"),
])
def test_bad_steps_are_refused_naming_the_value(given, message):
    with pytest.raises(SpecError, match=message):
        stackmod.parse_steps(given, list(SUBJECTS))


def test_stack_section_compares_each_step_with_the_one_before(stack_run):
    text = report.build(stack_run).read_text()
    section = text.split("## stack (a)-(d)", 1)[1].split("\n## ", 1)[0]
    comp = json.loads((stack_run / report.COMPARISON).read_text())["stack"]
    suites = {n: pyperf.BenchmarkSuite.load(str(stack_run / "latency" / f"{n}.json")) for n in SUBJECTS}
    rows = {(r["subject"], r["against"], r["whole"]): r for r in comp["latency"]}
    assert list(rows) == [("baseline", "debian", False), ("workload-pgo-lto", "debian", False),
                          (C, "workload-pgo-lto", False), ("workload-pgo-lto-tcmalloc", "workload-pgo-lto", False),
                          (D, C, False), (D, "debian", True)]
    for (subject, against, _), row in rows.items():
        want = compare_suites(suites[against], suites[subject], against, subject)
        assert row["geomean_ratio"] == pytest.approx(want.geomean_ratio)
        assert row["geomean_significant"] == want.geomean_significant
        for r, w in zip(row["rows"], want.rows):
            assert (r["name"], r["ratio"], r["significant"]) == (w.name, pytest.approx(w.ratio), w.significant)
    # (c) over (b) is the hostpgo-built allocator alone: the same binary, values scaled by 0.8 in this data.
    assert rows[(C, "workload-pgo-lto", False)]["geomean_ratio"] == pytest.approx(0.8)
    c_line = next(ln for ln in section.splitlines() if ln.startswith("| (c) + the hostpgo-built allocator"))
    assert "0.800 (20.0% faster)" in c_line and f"`{C}` | `workload-pgo-lto`" in c_line
    assert "**(a) → (d): the whole stack**" in section
    for name in ("decode-b8", "geometric mean"):
        assert name in section.split("### Instructions", 1)[0]


def test_stack_section_counts_instructions_per_step_and_shifts_attribution(stack_run):
    text = report.build(stack_run).read_text()
    section = text.split("## stack (a)-(d)", 1)[1].split("\n## ", 1)[0]
    comp = json.loads((stack_run / report.COMPARISON).read_text())["stack"]
    rec = results.load(stack_run)
    for target, per in comp["instructions"].items():
        for name, value in per.items():
            assert value == rec["counters"]["results"][name][target]["per_unit"]["instructions"]
    b = comp["instructions"]["decode-b8"]["workload-pgo-lto"]
    table = section.split("### Instructions per unit of work", 1)[1].split("###", 1)[0]
    c_row = next(ln for ln in table.splitlines() if ln.startswith("| (c) + the hostpgo-built allocator"))
    assert f"| {b * 0.8:,.0f} (0.800x) |" in c_row and f"`{C}` | `workload-pgo-lto`" in c_row
    # Attribution: (a) debian has no tcmalloc samples, (d) 20 %; each is share x that target's latency median.
    shift = comp["attribution"]["decode-b8"]
    whole = next(r for r in comp["latency"] if r["whole"])
    med = {r["name"]: (r["base_median"], r["changed_median"]) for r in whole["rows"]}["decode-b8"]
    assert shift["allocator"] == {"a": 0.0, "d": pytest.approx(0.20 * med[1])}
    assert shift["CPython"] == {"a": pytest.approx(1.0 * med[0]), "d": pytest.approx(0.74 * med[1])}
    assert "### Attribution shift by library, (a) → (d)" in section and "| allocator | 0.0% |" in section


def test_step_e_is_the_stack_with_and_without_the_rewritten_framework_wheels(tmp_path):
    e = D + "+bolt-mindspore"
    run = _make_run(tmp_path, {**SUBJECTS, e: ("opt", 0.741, 0.79, (72.0, 20.0))}, [*STEPS, f"e={e}"])
    text = report.build(run).read_text()
    section = text.split("## stack (a)-(e)", 1)[1].split("\n## ", 1)[0]
    comp = json.loads((run / report.COMPARISON).read_text())["stack"]
    rows = {(r["subject"], r["against"], r["whole"]): r for r in comp["latency"]}
    assert rows[(e, D, False)]["geomean_ratio"] == pytest.approx(0.741 / 0.78)
    assert (e, "debian", True) in rows and "**(a) → (e): the whole stack**" in section
    e_line = next(ln for ln in section.splitlines() if ln.startswith("| (e) + the BOLT-rewritten framework wheels"))
    assert "0.950 (5.0% faster)" in e_line
    # The shift by library of (e) alone, against (d): the CPython share is the one that moved in this data.
    shift = comp["attribution_e"]["decode-b8"]
    med = {r["name"]: (r["base_median"], r["changed_median"]) for r in rows[(e, D, False)]["rows"]}["decode-b8"]
    assert shift["CPython"] == {"d": pytest.approx(0.74 * med[0]), "e": pytest.approx(0.72 * med[1])}
    assert "### Attribution shift by library, (d) → (e)" in section


def test_a_run_without_steps_has_no_stack_section(tmp_path):
    dest = tmp_path / "run-small"
    shutil.copytree(FIXTURE, dest)
    assert "## stack (a)-(d)" not in report.build(dest).read_text()


def test_bench_refuses_bad_stack_steps_before_measuring(tmp_path, capsys):
    import sys

    from perf.__main__ import main
    out = tmp_path / "run"
    rc = main(["bench", "--interp", f"stock={sys.executable}", "--interp", f"opt={sys.executable}", "--workloads",
               "pure-dispatch", "--no-venv", "--stack-step", "a=stock", "--stack-step", "c=opt", "--out", str(out)])
    assert rc == 2 and "no subject for step (b)" in capsys.readouterr().err
    assert not (out / results.RUN_FILE).exists()
