"""bolt-wheel's keep decision: an interleaved A/B of the stock wheel against the rewritten one, and the rule that
reads its comparison.

    python -m buildsys bolt-wheel --package mindspore --profile P --interp V/bin/python --keep-if-faster [--quick]

adds a stage `wheelbolt-decide` after verify. It runs, through the runner (never in-process):

    python -m perf bench --interp stock=V/bin/python --interp bolt=V/bin/python+wheel:<new wheel> \\
        --workloads decode-b1,decode-b8,serve-mixed --stages latency --out <work>/decide/run [--quick]

(each subject in its own venv from one wheelhouse: the stock one with the wheelhouse's MindSpore, the other
with the rewritten wheel in its place) and reads the run's comparison.json (perf/compare.py: medians, ratios,
t-tests per workload and of the geometric mean). The rule (`RULE`):

    kept      the geometric mean of the latency ratios (bolt / stock) is below 1 and significant (95%), and no
              workload is significantly slower;
    mixed     significantly faster on the geometric mean, but some workload significantly slower: not kept;
    slower    significantly slower on the geometric mean: not kept;
    not significant
              the geometric mean does not differ significantly: not kept, whatever its ratio (noise is no win).

The verdict, the figures and the run directory go into hostpgo-wheelbolt.json (`decision`); the pipeline ships
a rewritten wheel only when `decision.kept` is true (`kept_wheel`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from hostpgo.errors import HostpgoError

DECIDE_WORKLOADS = ("decode-b1", "decode-b8", "serve-mixed", "op-dispatch", "decode-b8-graph")
"""What the decision times: every latency workload of the pipeline's own measurement (engine.PIPELINE_WORKLOADS),
so a wheel it keeps cannot be slower there on one it did not time. With decode-b1, decode-b8 and serve-mixed alone
it kept a wheel (geometric mean 0.898) that the pipeline's run pipeline-stack-20261201b then measured 1.140x
slower on op-dispatch, a workload the training does not run."""
STOCK, REWRITTEN = "stock", "bolt"
"""The two subjects' names in the decision's perf run."""
RULE = ("kept only when the rewritten wheel is significantly faster (95%) on the geometric mean of the latency "
        "ratios over the decision workloads and significantly slower on none; a geometric mean that is not "
        "significant keeps the stock wheel")
RULE_VERSION = 1
"""Part of the decide stage's key: a changed rule decides again."""
VERDICTS = ("faster", "mixed", "slower", "not significant")


@dataclass(frozen=True)
class DecideSettings:
    """How bolt-wheel times stock against rewritten (`--keep-if-faster`)."""

    workloads: tuple[str, ...] = DECIDE_WORKLOADS
    """Runtime workloads of the interleaved A/B."""
    quick: bool = False
    """perf bench --quick: fewer rounds and values (minutes instead of tens of minutes; a weaker test)."""
    perf_python: str = ""
    """The interpreter that runs `python -m perf` (this project's, with the perf extra)."""
    home: str = ""
    """HOSTPGO_HOME of the perf run (its venvs and wheelhouse live there)."""
    timeout: float = 6 * 3600.0
    """Seconds the perf run may take."""


@dataclass(frozen=True)
class WorkloadFigure:
    """One workload of the decision's comparison."""

    name: str
    ratio: float
    """Median latency bolt / stock: below 1 is faster."""
    significant: bool
    verdict: str
    """As perf's report words it (`1.042x faster`, `not significant`)."""


@dataclass(frozen=True)
class Decision:
    """Whether the rewritten wheel is kept, and the figures that say so."""

    kept: bool
    verdict: str
    """One of VERDICTS."""
    why: str
    """The verdict in a sentence, with the figures."""
    geomean_ratio: float
    geomean_significant: bool
    geomean_t: float | None
    workloads: tuple[WorkloadFigure, ...]
    rule: str = RULE

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["workloads"] = [asdict(w) for w in self.workloads]
        return data


def untimeable(workloads: Sequence[str]) -> list[str]:
    """The workloads `python -m perf bench` cannot time: those without a target in perf/catalog.py (prefix-hit, the
    quantized graph workloads)."""
    from perf.catalog import TARGETS

    return [w for w in workloads if w not in TARGETS]


def bench_command(perf_python: str, interp: str, wheel: Path | str, run_dir: Path, *,
                  workloads: Sequence[str] = DECIDE_WORKLOADS, quick: bool = False) -> list[str]:
    """The `python -m perf bench` line of the decision (pure): stock first, so it is the baseline."""
    cmd = [perf_python, "-m", "perf", "bench", "--interp", f"{STOCK}={interp}",
           "--interp", f"{REWRITTEN}={interp}+wheel:{wheel}", "--workloads", ",".join(workloads),
           "--stages", "latency", "--out", str(run_dir)]
    return cmd + (["--quick"] if quick else [])


def decide(comparison: Mapping[str, Any], workloads: Sequence[str] = DECIDE_WORKLOADS) -> Decision:
    """Apply RULE to a perf run's comparison.json (pure); raise when it is not the decision's comparison."""
    entry = next((c for c in comparison.get("latency", [])
                  if c.get("baseline") == STOCK and c.get("changed") == REWRITTEN), None)
    if entry is None:
        raise HostpgoError(f"the comparison holds no latency comparison of {REWRITTEN} against {STOCK}")
    if "geomean_significant" not in entry:
        raise HostpgoError("the comparison has no test of its geometric mean (written by an older perf/report.py); "
                           "regenerate it: python -m perf report RUN")
    rows = {r["name"]: r for r in entry["rows"]}
    missing = [w for w in workloads if w not in rows]
    if missing:
        raise HostpgoError(f"the comparison lacks workload(s) {', '.join(missing)} of the decision")
    figures = tuple(WorkloadFigure(w, float(rows[w]["ratio"]), bool(rows[w]["significant"]), str(rows[w]["verdict"]))
                    for w in workloads)
    geo = float(entry["geomean_ratio"])
    geo_sig = bool(entry["geomean_significant"])
    t = entry.get("geomean_t")
    slower = [f for f in figures if f.significant and f.ratio > 1]
    faster = [f for f in figures if f.significant and f.ratio < 1]
    figs = f"geometric mean {geo:.3f}" + (f" (t = {t:.2f})" if isinstance(t, (int, float)) else "")
    each = "; ".join(f"{f.name} {f.ratio:.3f} ({f.verdict})" for f in figures)
    if geo_sig and geo < 1 and not slower:
        verdict, why = "faster", f"significantly faster: {figs}; {each}"
    elif geo_sig and geo < 1:
        verdict = "mixed"
        why = (f"faster on the geometric mean ({figs}) but significantly slower on "
               f"{', '.join(f.name for f in slower)}: not kept; {each}")
    elif geo_sig:
        verdict, why = "slower", f"significantly slower: {figs}; {each}"
    else:
        verdict = "not significant"
        also = (f"; workloads alone: {len(faster)} significantly faster, {len(slower)} significantly slower"
                if faster or slower else "")
        why = f"no significant difference on the geometric mean ({figs}): not a win{also}; {each}"
    return Decision(kept=verdict == "faster", verdict=verdict, why=why, geomean_ratio=geo,
                    geomean_significant=geo_sig, geomean_t=t if isinstance(t, (int, float)) else None,
                    workloads=figures)


def kept_wheel(manifest: Mapping[str, Any]) -> Path | None:
    """The rewritten wheel of a hostpgo-wheelbolt.json when its decision kept it; None otherwise (no decision
    made, or not faster)."""
    decision = manifest.get("decision") or {}
    out = manifest.get("output") or {}
    if decision.get("kept") is True and out.get("wheel"):
        return Path(out["wheel"])
    return None
