"""The A/B comparison: significance, geometric mean, and refusal of incompatible runs."""

import math

import pyperf
import pytest

from perf.compare import compare_suites, significance
from perf.errors import IncompatibleResults


def bench(name, values, **metadata):
    md = {"name": name, "unit": "second", "loops": 8, **metadata}
    runs = [pyperf.Run(values[i:i + 3], metadata=md, collect_metadata=False) for i in range(0, len(values), 3)]
    return pyperf.Benchmark(runs)


def suite(*benches):
    return pyperf.BenchmarkSuite(list(benches))


FAST = [1.00, 1.01, 0.99, 1.02, 0.98, 1.00]
SLOW = [1.50, 1.52, 1.49, 1.51, 1.48, 1.50]
NOISY = [1.01, 0.97, 1.03, 0.99, 1.02, 0.98]


def test_clear_difference_is_significant_and_ratio_is_of_medians():
    c = compare_suites(suite(bench("a", SLOW)), suite(bench("a", FAST)), "base", "new")
    (row,) = c.rows
    assert row.significant
    assert row.ratio == pytest.approx(1.00 / 1.50, rel=1e-3)
    assert row.speedup == pytest.approx(1.5, rel=1e-3)
    assert "faster" in row.verdict()


def test_overlapping_samples_are_not_significant():
    c = compare_suites(suite(bench("a", FAST)), suite(bench("a", NOISY)))
    assert not c.rows[0].significant
    assert c.rows[0].verdict() == "not significant"


def test_geometric_mean_of_ratios():
    base = suite(bench("a", [1.0] * 3 + [1.0001] * 3), bench("b", [2.0] * 3 + [2.0001] * 3))
    new = suite(bench("a", [2.0] * 3 + [2.0001] * 3), bench("b", [1.0] * 3 + [1.0001] * 3))
    c = compare_suites(base, new)
    assert [r.name for r in c.rows] == ["a", "b"]
    assert c.geomean_ratio == pytest.approx(1.0, rel=1e-3)
    base2 = suite(bench("a", SLOW), bench("b", SLOW))
    c2 = compare_suites(base2, suite(bench("a", FAST), bench("b", SLOW)))
    assert c2.geomean_ratio == pytest.approx(math.sqrt(1.0 / 1.5), rel=1e-3)


def test_unequal_sample_sizes_use_welch():
    sig, t = significance(SLOW, FAST[:3])
    assert sig and t > 0
    sig, _ = significance(FAST, NOISY[:3])
    assert not sig


def test_single_values_are_never_significant():
    assert significance([1.0], [2.0]) == (False, None)


def test_only_in_one_suite_is_listed():
    c = compare_suites(suite(bench("a", FAST), bench("x", FAST)), suite(bench("a", FAST), bench("y", FAST)))
    assert c.only_baseline == ("x",) and c.only_changed == ("y",)


def test_refuses_different_benchmark_code():
    base = suite(bench("a", FAST, hostpgo_code_digest="aaaa", hostpgo_unit="step"))
    new = suite(bench("a", FAST, hostpgo_code_digest="bbbb", hostpgo_unit="step"))
    with pytest.raises(IncompatibleResults, match="hostpgo_code_digest"):
        compare_suites(base, new, "sys", "opt")


def test_refuses_different_loops_in_harness_runs():
    base = suite(bench("a", FAST, hostpgo_unit="step"))
    new = suite(bench("a", FAST, hostpgo_unit="step", loops=16))
    with pytest.raises(IncompatibleResults, match="loops"):
        compare_suites(base, new)


def test_refuses_different_units_and_disjoint_suites():
    with pytest.raises(IncompatibleResults, match="unit"):
        compare_suites(suite(bench("a", FAST)), suite(bench("a", [100, 101, 102], unit="byte")))
    with pytest.raises(IncompatibleResults, match="no benchmark in common"):
        compare_suites(suite(bench("a", FAST)), suite(bench("b", FAST)))


def test_geometric_mean_significance():
    from perf.compare import geomean_significance

    # Every benchmark a third faster: the geometric mean is, significantly.
    c = compare_suites(suite(bench("a", SLOW), bench("b", SLOW)), suite(bench("a", FAST), bench("b", FAST)))
    assert c.geomean_significant and c.geomean_t > 0 and c.geomean_df > 1  # signed as the rows: faster > 0
    assert c.rows[0].t_score > 0
    # Overlapping samples: not significant, whatever the ratio.
    c = compare_suites(suite(bench("a", FAST), bench("b", FAST)), suite(bench("a", NOISY), bench("b", NOISY)))
    assert not c.geomean_significant and c.geomean_t is not None
    # One faster, one as much slower: the logs cancel, so the geometric mean is not significant.
    half = [v / 1.5 for v in SLOW]
    sig, t, _ = geomean_significance([(SLOW, half), (half, SLOW)])
    assert not sig and abs(t) < 1e-9
    # A single value each cannot be tested.
    assert geomean_significance([([1.0], [0.5])]) == (False, None, None)
    # Hand-checked: d = log 2 for one benchmark, variances zero -> significant, t = +inf (faster).
    sig, t, df = geomean_significance([([2.0, 2.0], [1.0, 1.0])])
    assert sig and t == math.inf and df is None
    # By hand: logs [0, 1] and [1, 2]: d = -1 (slower), variance 0.25 + 0.25, t = 1/sqrt(0.5),
    # df = 0.5**2 / (2 * 0.25**2) = 2.
    sig, t, df = geomean_significance([([1.0, math.e], [math.e, math.e**2])])
    assert t == pytest.approx(-1 / math.sqrt(0.5)) and df == pytest.approx(2.0) and not sig  # t95(2) = 4.30


def runs_of(name, processes):
    """A benchmark whose pyperf processes hold the given values each."""
    md = {"name": name, "unit": "second", "loops": 8}
    return pyperf.Benchmark([pyperf.Run(vals, metadata=md, collect_metadata=False) for vals in processes])


def test_the_process_is_the_unit_of_the_test():
    """Values agree within each process while processes differ by up to 40% (the decode runs on this VM): over
    the 30 values a 10% gap is significant, over the 6 processes it is not."""
    spread = [0.999, 1.0, 1.001, 1.0, 1.0005]
    levels = [1.0, 1.2, 0.9, 1.1, 1.25, 0.95]
    base = runs_of("a", [[lv * f for f in spread] for lv in levels])
    new = runs_of("a", [[lv * 0.9 * f for f in spread] for lv in reversed(levels)])
    assert significance(list(base.get_values()), list(new.get_values()))[0]  # what a test over values says
    (row,) = compare_suites(suite(base), suite(new)).rows
    assert row.tested_on == "processes" and (row.k_base, row.k_changed) == (6, 6)
    assert (row.n_base, row.n_changed) == (30, 30)
    assert not row.significant
    assert compare_suites(suite(base), suite(new)).geomean_significant is False


def test_tight_processes_that_differ_are_significant_per_process():
    base = runs_of("a", [[1.50, 1.51, 1.49]] * 4)
    new = runs_of("a", [[1.00, 1.01, 0.99], [1.02, 1.0, 1.01], [0.99, 1.0, 1.0], [1.0, 1.0, 1.01]])
    (row,) = compare_suites(suite(base), suite(new)).rows
    assert row.tested_on == "processes" and row.significant


def test_one_process_each_is_tested_over_its_values():
    base = runs_of("a", [SLOW])
    new = runs_of("a", [FAST])
    (row,) = compare_suites(suite(base), suite(new)).rows
    assert row.tested_on == "values" and (row.k_base, row.k_changed) == (6, 6) and row.significant
