"""The optimized stack step by step: which subjects of a run are steps (a)-(e), and the report section comparing them.

`python -m perf bench ... --stack-step a=debian --stack-step a=baseline --stack-step b=workload-pgo-lto ...` names
the run's subjects that are the steps of the stack (`pipeline --stack` passes them). The first subject given for a
step is that step's own; a further one is a reference measured beside it (the baseline build beside Debian's
interpreter in (a); the build that links the distribution's allocator beside the hostpgo-built one in (c)). The
steps are kept in run.json (`stack`), so `python -m perf report` renders the section again from the JSON alone.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from .errors import SpecError

STEPS: Mapping[str, str] = {
    "a": "the stock stack",
    "b": "the interpreter only",
    "c": "+ the hostpgo-built allocator",
    "d": "+ the extension wheels",
    "e": "+ the BOLT-rewritten framework wheels",
}
"""The steps, in order: each adds one layer that hostpgo rebuilt to the step before it."""
SKIPPABLE = frozenset({"d"})
"""Steps a stack may leave out before a later one: without measured extension wheels, (e) adds the rewritten
framework wheels to (c)."""
FLAG = "--stack-step"


@dataclass(frozen=True)
class StackStep:
    """One subject of the run in one step of the stack."""

    step: str
    """A key of STEPS (`a`-`e`)."""
    subject: str
    """The subject's name in the run (an `--interp` NAME)."""
    reference: bool = False
    """True for a further subject of the step, measured beside the step's own (which comes first)."""

    def to_json(self) -> dict:
        return {"step": self.step, "subject": self.subject, "reference": self.reference}


def parse_steps(texts: Sequence[str], subjects: Sequence[str]) -> tuple[StackStep, ...]:
    """`STEP=NAME` values of --stack-step, checked against the run's subjects (pure): in order, from (a) without a
    gap but SKIPPABLE's (a stack whose wheels are not measured ends at (c), or goes from (c) to (e)), no subject
    twice. SpecError names the value."""
    out: list[StackStep] = []
    seen: dict[str, str] = {}
    order = list(STEPS)
    for text in texts:
        step, eq, name = text.partition("=")
        step, name = step.strip(), name.strip()
        if not eq or step not in STEPS or not name:
            raise SpecError(f"{FLAG} {text!r}: expected STEP=NAME with STEP one of {', '.join(STEPS)}")
        if name not in subjects:
            raise SpecError(f"{FLAG} {text!r}: {name!r} is not a subject of this run ({', '.join(subjects)})")
        if name in seen:
            raise SpecError(f"{FLAG} {text!r}: {name!r} is already step ({seen[name]})")
        if out and order.index(step) < order.index(out[-1].step):
            raise SpecError(f"{FLAG} {text!r}: steps go in order {', '.join(STEPS)}; ({step}) after ({out[-1].step})")
        seen[name] = step
        out.append(StackStep(step, name, reference=any(s.step == step for s in out)))
    named = list(dict.fromkeys(x.step for x in out))
    missing = [m for m in order[:order.index(named[-1])] if m not in named and m not in SKIPPABLE] if named else []
    if missing:
        raise SpecError(f"{FLAG}: no subject for step {', '.join(f'({m})' for m in missing)}; the steps build on "
                        f"each other from (a) ({'; '.join(f'({k}) {v}' for k, v in STEPS.items())})")
    if len(named) == 1:
        raise SpecError(f"{FLAG}: only step (a) is named; a stack needs at least (a) and (b)")
    return tuple(out)


def from_record(record: Mapping) -> tuple[StackStep, ...]:
    """The run's steps as run.json keeps them (empty when the run has none)."""
    return tuple(StackStep(s["step"], s["subject"], bool(s.get("reference"))) for s in record.get("stack") or ())


def own(steps: Sequence[StackStep]) -> dict[str, str]:
    """Step -> the step's own subject (the first given for it)."""
    out: dict[str, str] = {}
    for s in steps:
        out.setdefault(s.step, s.subject)
    return out


def pairs(steps: Sequence[StackStep]) -> list[tuple[StackStep, str]]:
    """(subject, what it is compared with), in order: a step's own subject with the previous step's own, a
    reference with the step before its own too (so (c)'s two allocators are both measured against (b)); (a)'s
    references with (a)'s own subject. The first subject has nothing before it."""
    mine = own(steps)
    order = list(STEPS)
    out = []
    for s in steps:
        at = order.index(s.step)
        if at == 0:
            if s.reference:
                out.append((s, mine[s.step]))
            continue
        out.append((s, mine[next(k for k in reversed(order[:at]) if k in mine)]))
    return out


# ----------------------------------------------------------------------------------------------- the section


def _fmt_time(seconds: float) -> str:
    if seconds >= 1:
        return f"{seconds:.3f} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.3f} ms"
    return f"{seconds * 1e6:.1f} us"


def _table(headers: list[str], rows: list[list[str]]) -> list[str]:
    return (["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
            + ["| " + " | ".join(r) + " |" for r in rows])


def _ratio_cell(ratio: float, significant: bool) -> str:
    """A ratio with the step's gain (below 1 is faster): `0.912 (8.8% faster)`, `(n.s.)` when not significant."""
    gain = (1 - ratio) * 100
    word = f"{abs(gain):.1f}% {'faster' if gain >= 0 else 'slower'}"
    return f"{ratio:.3f} ({word})" + ("" if significant else " (n.s.)")


def _label(s: StackStep) -> str:
    return f"({s.step}) reference" if s.reference else f"({s.step}) {STEPS[s.step]}"


def section(run_dir: Path, record: Mapping, out: dict) -> list[str]:
    """`## stack (a)-(d)` (`(a)-(e)` with step (e)): each step's latency against the step before (ratio, gain,
    significance; the geometric mean with its own test), instructions per unit of each step, and the attribution
    by library of (a) against the last step (and of (d) against (e)). Empty when the run names no steps. Writes
    the figures to `out["stack"]` (comparison.json)."""
    steps = from_record(record)
    if not steps:
        return []
    from . import results
    from .compare import compare_suites

    mine = own(steps)
    lines = [f"## stack (a)-({'e' if 'e' in mine else 'd'})", "",
             "The optimized stack built up one layer at a time, all in this run's interleaved measurement: "
             + "; ".join(f"({k}) {v}: `{mine[k]}`" for k, v in STEPS.items() if k in mine) + ". "
             "Each row compares a subject with the step before it (ratio of medians, below 1 is faster; "
             "significance: two-tailed t-test at 95%, `(n.s.)` where not significant; the geometric mean has its "
             "own test); references are measured beside a step's own subject.", ""]
    data: dict = {"steps": [s.to_json() for s in steps], "latency": [], "instructions": {}, "attribution": {}}
    lat = record.get("latency")
    suites = results.load_suites(run_dir, lat["files"]) if lat else {}
    targets: list[str] = []
    rows = []
    comparisons = []
    for s, prev in pairs(steps):
        if s.subject not in suites or prev not in suites:
            continue
        c = compare_suites(suites[prev], suites[s.subject], prev, s.subject)
        comparisons.append((s, c))
        for r in c.rows:
            if r.name not in targets:
                targets.append(r.name)
    top = list(mine)[-1]
    first, last = mine["a"], mine[top]
    whole = (compare_suites(suites[first], suites[last], first, last)
             if first in suites and last in suites else None)
    for s, c in comparisons + ([(StackStep(top, last), whole)] if whole is not None else []):
        by = {r.name: r for r in c.rows}
        label = f"**(a) → ({top}): the whole stack**" if c is whole else _label(s)
        cells = [_ratio_cell(by[t].ratio, by[t].significant) if t in by else "-" for t in targets]
        geo = _ratio_cell(c.geomean_ratio, c.geomean_significant)
        rows.append([label, f"`{c.changed}`", f"`{c.baseline}`", *cells, geo])
        data["latency"].append({"step": s.step, "reference": s.reference, "whole": c is whole,
                                "subject": c.changed, "against": c.baseline, "geomean_ratio": c.geomean_ratio,
                                "geomean_significant": c.geomean_significant,
                                "rows": [{"name": r.name, "ratio": r.ratio, "significant": r.significant,
                                          "t_score": r.t_score, "base_median": r.base_median,
                                          "changed_median": r.changed_median} for r in c.rows]})
    if rows:
        lines += ["### Latency: each step's gain over the one before", ""]
        lines += _table(["step", "subject", "against", *targets, "geometric mean"], rows) + [""]
    lines += _instructions(record, steps, data)
    if whole is not None:
        lines += _attribution(record, first, last, top, whole, data["attribution"])
    # With (e), the layer no rebuild touched (the framework's own libraries) also alone: (e) against the step
    # before it, the stack with and without the rewritten wheels.
    last_step = next((c for s, c in comparisons if s.step == "e" and not s.reference), None)
    if last_step is not None:
        data["attribution_e"] = {}
        lines += _attribution(record, last_step.baseline, last_step.changed, "e", last_step, data["attribution_e"],
                              start=list(mine)[-2])
    out["stack"] = data
    return lines


def _instructions(record: Mapping, steps: Sequence[StackStep], data: dict) -> list[str]:
    """Instructions per unit of work of every step's subject (the counters stage), and the ratio to the step
    before (the same pairs as the latency table)."""
    cnt = (record.get("counters") or {}).get("results") or {}
    names = [s.subject for s in steps if s.subject in cnt]
    if not names:
        return []
    targets: list[str] = []
    for n in names:
        for t in cnt[n]:
            if t not in targets:
                targets.append(t)

    def per(name: str, target: str) -> float | None:
        r = cnt.get(name, {}).get(target)
        return None if r is None else r.get("per_unit", {}).get("instructions")

    against = {s.subject: prev for s, prev in pairs(steps)}
    rows = []
    for s in steps:
        if s.subject not in cnt:
            continue
        cells = []
        for t in targets:
            v, p = per(s.subject, t), per(against.get(s.subject, ""), t)
            ratio = f" ({v / p:.3f}x)" if v and p and v > 1 and p > 1 else ""
            cells.append("-" if v is None else f"{v:,.0f}{ratio}")
            data["instructions"].setdefault(t, {})[s.subject] = v
        rows.append([_label(s), f"`{s.subject}`", f"`{against[s.subject]}`" if s.subject in against else "-", *cells])
    backend = (record.get("counters") or {}).get("backend", "?")
    return ["### Instructions per unit of work", "",
            f"Per step or dispatch of each counter target (backend `{backend}`), with the ratio to the subject in "
            "the `against` column.", ""] + _table(["step", "subject", "against", *targets], rows) + [""]


def _attribution(record: Mapping, first: str, last: str, top: str, whole, data: dict, *,
                 start: str = "a") -> list[str]:
    """Host time per library group of step `start` and the last step `top`: the sampled share x the latency median
    of the same target (`whole`: the comparison of the two). Writes each target's shift to `data`."""
    att = record.get("attribution") or {}
    if first not in att or last not in att:
        return []
    medians = {r.name: (r.base_median, r.changed_median) for r in whole.rows}
    lines = [f"### Attribution shift by library, ({start}) → ({top})", "",
             f"Host time per unit of each library group: its share of the samples (perf record) x the latency "
             f"median; `{first}` is ({start}), `{last}` is ({top}). The rows that move are the layers the stack "
             "rebuilt.", ""]
    for target in att[first]:
        if target not in att[last] or target not in medians:
            continue
        base_m, new_m = medians[target]
        ga, gd = att[first][target]["groups"], att[last][target]["groups"]
        groups = list(dict.fromkeys([*ga, *gd]))
        rows, shift = [], {}
        for g in groups:
            a_t, d_t = ga.get(g, 0.0) / 100 * base_m, gd.get(g, 0.0) / 100 * new_m
            shift[g] = {start: a_t, top: d_t}
            rows.append([g, f"{ga.get(g, 0.0):.1f}%", _fmt_time(a_t), f"{gd.get(g, 0.0):.1f}%", _fmt_time(d_t),
                         ("+" if d_t >= a_t else "-") + _fmt_time(abs(d_t - a_t))])
        rows.append(["**total (median)**", "", _fmt_time(base_m), "", _fmt_time(new_m),
                     ("+" if new_m >= base_m else "-") + _fmt_time(abs(new_m - base_m))])
        data[target] = shift
        lines += [f"#### {target}", ""] + _table(["library", f"({start}) share", f"({start}) per unit",
                                                  f"({top}) share", f"({top}) per unit", "change"], rows) + [""]
    return lines if data else []

