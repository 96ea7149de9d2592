"""A/B comparison of pyperf suites: per-benchmark ratio, a t-test, and the geometric mean.

Like `pyperf compare_to`, this is a plain function over loaded suites. Ratios are of medians
(changed / baseline, so below 1 is faster). Significance is a two-tailed t-test at 95%:
Student's when both samples have the same size (pyperf's own test), Welch's otherwise.

The geometric mean of the ratios has a test of its own (`geomean_significance`): a Welch t-test of the
mean over benchmarks of the difference of mean log-values, so "faster on the geometric mean" can be told
from noise as each benchmark's own verdict is.

The unit of both tests is the process, not the value: where either side ran its benchmark in two or more
pyperf processes, each process gives one sample (the geometric mean of its values). Values of one process
share its state (its memory layout, its threads' placement, the host's load while it ran) and are not
independent: on this 2-core VM the values of one decode process agreed within a few percent while processes
differed by up to 3x, and a test over the 30 values of 6 processes called gcc-pgo-lto's op-dispatch 7% faster
in one run and 2% slower in the next, both significant. A benchmark measured in one process each is tested
over its values, as pyperf does (`Row.tested_on` says which).
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import TYPE_CHECKING

from . import extra
from .errors import IncompatibleResults

if TYPE_CHECKING:
    import pyperf

# Metadata that must agree for two runs of a benchmark to be comparable (when both carry it).
MUST_MATCH = ("hostpgo_code_digest", "hostpgo_unit", "hostpgo_target", "hostpgo_provider")
# Loop counts must agree only for the harness's own interleaved runs (fixed loops).
MUST_MATCH_HARNESS = ("loops", "inner_loops")


@dataclass(frozen=True)
class Row:
    name: str
    unit: str
    base_median: float
    base_stdev: float
    changed_median: float
    changed_stdev: float
    ratio: float
    """changed median / baseline median: below 1.0 is faster."""
    significant: bool
    t_score: float | None
    n_base: int
    n_changed: int
    tested_on: str = "values"
    """The test's unit: "processes" (one sample per pyperf process) or "values"."""
    k_base: int = 0
    """Samples the test used on the baseline side (processes, or values)."""
    k_changed: int = 0

    @property
    def speedup(self) -> float:
        return 1.0 / self.ratio

    def verdict(self) -> str:
        if not self.significant:
            return "not significant"
        return f"{self.speedup:.3f}x faster" if self.ratio < 1 else f"{self.ratio:.3f}x slower"


@dataclass(frozen=True)
class Comparison:
    baseline: str
    changed: str
    rows: tuple[Row, ...]
    geomean_ratio: float
    """Geometric mean of the rows' ratios (of medians): below 1.0 is faster."""
    only_baseline: tuple[str, ...]
    only_changed: tuple[str, ...]
    geomean_significant: bool = False
    """Whether the geometric mean differs from 1 at 95% (`geomean_significance`)."""
    geomean_t: float | None = None
    """Its t score, signed as the rows' (baseline minus changed: positive when the changed subject is faster);
    None where it cannot be computed."""
    geomean_df: float | None = None
    """Welch-Satterthwaite degrees of freedom of that test."""

    @property
    def geomean_speedup(self) -> float:
        return 1.0 / self.geomean_ratio


def significance(a: list[float], b: list[float]) -> tuple[bool, float | None]:
    """Two-tailed t-test at 95%: (significant, t score); a single value each is never significant."""
    if len(a) < 2 or len(b) < 2:
        return False, None
    utils = extra.pyperf_utils()
    if len(a) == len(b):
        sig, t = utils.is_significant(a, b)
        return bool(sig), float(t)
    va, vb = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
    if va + vb == 0:
        same = statistics.mean(a) == statistics.mean(b)
        return (not same), (0.0 if same else math.inf)
    t = (statistics.mean(a) - statistics.mean(b)) / math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    return abs(t) >= utils.tdist95conf_level(max(1, round(df))), t


def geomean_significance(samples: list[tuple[list[float], list[float]]]) -> tuple[bool, float | None, float | None]:
    """(significant, t, df): is the geometric mean of changed/baseline different from 1, at 95%?

    For each benchmark (baseline values a, changed values b) d = mean(log a) - mean(log b) with variance
    var(log a)/n_a + var(log b)/n_b; the statistic is the mean of the d over the benchmarks divided by its
    standard error, with Welch-Satterthwaite degrees of freedom (t > 0: the changed subject is faster, as in
    the per-benchmark test). A benchmark with fewer than two values on
    either side makes the whole test impossible: not significant."""
    if not samples or any(len(a) < 2 or len(b) < 2 or min(a + b) <= 0 for a, b in samples):
        return False, None, None
    diffs, parts = [], []
    for a, b in samples:
        la, lb = [math.log(x) for x in a], [math.log(x) for x in b]
        diffs.append(statistics.mean(la) - statistics.mean(lb))  # the rows' sign: positive is faster
        parts += [(statistics.variance(la) / len(la), len(la)), (statistics.variance(lb) / len(lb), len(lb))]
    k = len(samples)
    mean_d = sum(diffs) / k
    var = sum(u for u, _ in parts) / k**2
    if var == 0:
        return mean_d != 0, (0.0 if mean_d == 0 else math.copysign(math.inf, mean_d)), None
    t = mean_d / math.sqrt(var)
    df = sum(u for u, _ in parts) ** 2 / sum(u**2 / (n - 1) for u, n in parts)
    return abs(t) >= extra.pyperf_utils().tdist95conf_level(max(1, round(df))), t, df


def per_process(bench: pyperf.Benchmark) -> list[float]:
    """One sample per pyperf process (run) that has values: the geometric mean of its values (their mean where
    one is not positive)."""
    out = []
    for run in bench.get_runs():
        vals = list(run.values)
        if vals:
            out.append(statistics.geometric_mean(vals) if min(vals) > 0 else statistics.mean(vals))
    return out


def test_samples(base: pyperf.Benchmark, changed: pyperf.Benchmark) -> tuple[list[float], list[float], str]:
    """The samples the significance tests use, and their unit: per process where both sides ran two or more
    processes, else the values."""
    pb, pc = per_process(base), per_process(changed)
    if len(pb) >= 2 and len(pc) >= 2:
        return pb, pc, "processes"
    return list(base.get_values()), list(changed.get_values()), "values"


def _check_compatible(base: pyperf.Benchmark, changed: pyperf.Benchmark, names: tuple[str, str]) -> None:
    name = base.get_name()
    if base.get_unit() != changed.get_unit():
        raise IncompatibleResults(
            f"benchmark {name!r}: unit {base.get_unit()!r} in {names[0]} but "
            f"{changed.get_unit()!r} in {names[1]}")
    mb, mc = base.get_metadata(), changed.get_metadata()
    keys = MUST_MATCH + (MUST_MATCH_HARNESS if "hostpgo_unit" in mb or "hostpgo_unit" in mc else ())
    for key in keys:
        if key in mb and key in mc and mb[key] != mc[key]:
            raise IncompatibleResults(
                f"benchmark {name!r}: metadata {key!r} is {mb[key]!r} in {names[0]} but "
                f"{mc[key]!r} in {names[1]}; these runs did not measure the same thing")
        if (key in mb) != (key in mc) and key in MUST_MATCH:
            raise IncompatibleResults(
                f"benchmark {name!r}: metadata {key!r} is present in only one of {names[0]}, {names[1]}")


def compare_suites(base: pyperf.BenchmarkSuite, changed: pyperf.BenchmarkSuite,
                   base_name: str = "baseline", changed_name: str = "changed") -> Comparison:
    """Compare every benchmark present in both suites; refuse incompatible runs."""
    b_names = base.get_benchmark_names()
    c_names = set(changed.get_benchmark_names())
    common = [n for n in b_names if n in c_names]
    if not common:
        raise IncompatibleResults(f"{base_name} and {changed_name} have no benchmark in common")
    rows = []
    samples = []
    for name in common:
        b, c = base.get_benchmark(name), changed.get_benchmark(name)
        _check_compatible(b, c, (base_name, changed_name))
        bv, cv = list(b.get_values()), list(c.get_values())
        tb, tc, unit = test_samples(b, c)
        samples.append((tb, tc))
        sig, t = significance(tb, tc)
        rows.append(Row(
            name=name, unit=b.get_unit(),
            base_median=b.median(), base_stdev=b.stdev() if len(bv) > 1 else 0.0,
            changed_median=c.median(), changed_stdev=c.stdev() if len(cv) > 1 else 0.0,
            ratio=c.median() / b.median(), significant=sig, t_score=t,
            n_base=len(bv), n_changed=len(cv), tested_on=unit, k_base=len(tb), k_changed=len(tc)))
    geo = statistics.geometric_mean([r.ratio for r in rows])
    geo_sig, geo_t, geo_df = geomean_significance(samples)
    return Comparison(
        baseline=base_name, changed=changed_name, rows=tuple(rows), geomean_ratio=geo,
        only_baseline=tuple(n for n in b_names if n not in c_names),
        only_changed=tuple(sorted(c_names - set(b_names))),
        geomean_significant=geo_sig, geomean_t=geo_t, geomean_df=geo_df)
