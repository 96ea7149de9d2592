"""Search host settings (allocator x launch mode x threads/affinity x GC) for this machine within a time budget.

Strategy (the only one, and the output says so): one lever at a time, then the winners combined.

1. Golden check: every candidate runs each chosen workload's pinned default run
   (`python -m runtime workload NAME --check-golden --json`) under its own environment; a candidate that
   changes a token digest, or whose settings cannot be applied here (a MindSpore API that fails, an
   allocator library that is missing), is reported and measured no further. The baseline's golden runs also
   time a workload process, which is what the cost estimate is made of.
2. Stage 1: the defaults and every other choice of every lever, each differing from the defaults in that
   lever only, measured together with interleaved pyperf rounds (`perf.latency.run_interleaved`).
   A choice wins its lever when its geometric-mean time ratio to the defaults is below 1, at least one
   workload is significantly faster (t-test, 95%) and none significantly slower. Where time is not
   significant and the lever's work is visible to instruction counts (`counts = true`: allocator, GC),
   cachegrind instructions per step decide when `--counts` is given and the budget allows (a difference
   of more than 1%); the table says which metric decided.
3. Stage 2: the per-lever winners combined (if more than one lever won), golden-checked and measured
   interleaved against the defaults again; the combination is kept only if it beats the defaults, else the
   best single winner is kept.

When the estimate exceeds the budget, choices are dropped from the end of the longest lever's list (the
search file orders levers and choices by priority; on a tie the later lever loses one) until it fits, so every
lever keeps its first alternative as long as possible; dropped candidates are listed. Results go to a new run
directory (an existing one is never overwritten): tune.json, tune.md, the pyperf JSON of each stage, and
best-host.toml (a host settings file with its measured gain in its header), also copied to
`$HOSTPGO_HOME/host/best-<host>-<run>.toml`.
"""

from __future__ import annotations

import json
import math
import os
import platform
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TypeVar

import hostenv
from hostenv import settings as host_settings
from hostpgo import runner
from hostpgo.layered import Loader, Origin

from . import counters, envs, interpreters, latency, results
from .catalog import TARGETS, Target
from .compare import compare_suites
from .errors import ResultsError, SpecError
from .interpreters import Interpreter
from .workspace import hostpgo_home, safe_name

T = TypeVar("T")
TUNE_SCHEMA = "hostpgo-tune-host/1"
STRATEGY = ("one lever at a time against the defaults (stage 1), then the per-lever winners combined and "
            "measured against the defaults (stage 2)")
DEFAULT_WORKLOADS = ("decode-b1", "decode-b8", "serve-mixed")
COUNT_THRESHOLD = 0.01
"""Instruction-count difference (relative) that decides a lever when time was not significant."""


@dataclass(frozen=True)
class Choice:
    """One value of a lever: a label and the host-settings overrides that select it."""

    label: str
    sets: tuple[str, ...]


@dataclass(frozen=True)
class Lever:
    """One host lever and its choices, the first being the default."""

    name: str
    choices: tuple[Choice, ...]
    counts: bool = False
    """Whether cachegrind instruction counts reflect this lever (False for thread, affinity, launch levers)."""


@dataclass(frozen=True)
class Candidate:
    """Settings to measure: the defaults plus `sets`; `lever`/`choice` say which lever it varies."""

    label: str
    sets: tuple[str, ...]
    lever: str | None = None
    choice: str | None = None


@dataclass(frozen=True)
class Costs:
    """Seconds one action takes here, measured by the baseline's golden runs (or assumed before them)."""

    golden_s: Mapping[str, float]
    """One `--check-golden` workload process, per workload."""
    rounds: int = 3
    count_s: float = 600.0
    """One cachegrind measurement of one candidate (two valgrind runs); an assumption, not measured."""

    def golden(self, workloads: Sequence[str]) -> float:
        return sum(self.golden_s[w] for w in workloads)

    def latency(self, n_candidates: int, workloads: Sequence[str]) -> float:
        """Interleaved latency: per round one pyperf process per candidate and workload, plus one calibration each.

        A pyperf process opens and warms the workload like a golden run and then times a few values, so
        it is estimated at the golden run's time.
        """
        return sum(self.golden_s[w] * (n_candidates * self.rounds + 1) for w in workloads)


@dataclass(frozen=True)
class SearchPlan:
    """The candidates of stage 1, what was dropped to fit the budget, and the estimate."""

    strategy: str
    stage1: tuple[Candidate, ...]
    dropped: tuple[Candidate, ...]
    estimate_s: float
    """Golden checks and latency of stage 1 plus a reserve for stage 2."""
    stage2_reserve_s: float
    budget_s: float
    notes: tuple[str, ...] = ()


SPACE_LOADER = Loader(host_settings.SCHEMA, what="search space", find=host_settings.find_file,
                      error=hostenv.HostSettingsError)
"""The host-settings schema's loader for search-space files: their `set` items are host-settings assignments."""
SPACE_KEYS = {"lever"}
LEVER_KEYS = {"name", "counts", "choices"}
CHOICE_KEYS = {"label", "set"}


def load_space(path: Path) -> tuple[Lever, ...]:
    """A search-space file (profiles/host/search/*.toml): `[[lever]]` with name, counts, choices.

    Read by a hostpgo.layered loader of the host-settings schema, and every `set` item parsed by its
    assignment parser (the one `--set` and HOSTPGO_HOST_SET go through), so a bad item is an error naming the file,
    the lever and the choice.
    """
    data = SPACE_LOADER.read(path)
    unknown = set(data) - SPACE_KEYS
    if unknown:
        raise SpecError(f"{path}: unknown key(s) {', '.join(sorted(unknown))} (known: lever)")
    levers = []
    for i, lv in enumerate(data.get("lever", [])):
        where = f"{path}: lever[{i}]"
        extra = set(lv) - LEVER_KEYS
        if extra:
            raise SpecError(f"{where}: unknown key(s) {', '.join(sorted(extra))} (known: name, counts, choices)")
        if not isinstance(lv.get("name"), str) or not lv.get("choices"):
            raise SpecError(f"{where}: needs a name and at least one choice")
        choices = []
        for c in lv["choices"]:
            extra = set(c) - CHOICE_KEYS
            if extra or not isinstance(c.get("label"), str) or not isinstance(c.get("set", []), list):
                raise SpecError(f"{where} ({lv['name']}): a choice is "
                                "{ label = \"...\", set = [\"key=value\", ...] }")
            origin = Origin("file", f"{path} lever {lv['name']!r} choice {c['label']!r}")
            for item in c.get("set", []):
                if not isinstance(item, str):
                    raise SpecError(f"{origin}: set item {item!r} is not a \"section.key=value\" string")
                SPACE_LOADER.parse_assignment(item, origin)
            choices.append(Choice(c["label"], tuple(c.get("set", []))))
        if choices[0].sets:
            raise SpecError(f"{where} ({lv['name']}): the first choice is the default and must set nothing")
        levers.append(Lever(lv["name"], tuple(choices), bool(lv.get("counts", False))))
    if not levers:
        raise SpecError(f"{path}: no [[lever]] tables")
    return tuple(levers)


def default_space_file() -> Path:
    return Path(__file__).resolve().parent.parent / "profiles" / "host" / "search" / "default.toml"


def stage1_candidates(levers: Sequence[Lever]) -> list[Candidate]:
    """The defaults, then every non-default choice of every lever on its own."""
    out = [Candidate("defaults", ())]
    for lv in levers:
        for c in lv.choices[1:]:
            out.append(Candidate(f"{lv.name}={c.label}", c.sets, lv.name, c.label))
    return out


def drop_longest_first(kept: list[list[T]], over_budget: Callable[[], bool]) -> list[tuple[int, T]]:
    """While `over_budget()`, pop the last item of the longest list (on a tie the later, lower-priority list), so
    every list keeps its first items as long as possible; returns (list index, item) in the order dropped.
    The budget rule of tune-host's levers and of autotune's dimensions."""
    dropped: list[tuple[int, T]] = []
    while over_budget() and any(kept):
        i = max(range(len(kept)), key=lambda j: (len(kept[j]), j))
        dropped.append((i, kept[i].pop()))
    return dropped


def plan_search(levers: Sequence[Lever], costs: Costs, budget_s: float, workloads: Sequence[str],
                spent_s: float = 0.0) -> SearchPlan:
    """Fit stage 1 (and a stage-2 reserve) into what is left of the budget by dropping low-priority choices.

    Pure: the same levers, costs and budget give the same plan.
    """
    left = budget_s - spent_s
    reserve = costs.golden(workloads) + costs.latency(2, workloads)
    kept = [list(lv.choices[1:]) for lv in levers]
    dropped: list[Candidate] = []

    def estimate() -> float:
        n = 1 + sum(len(k) for k in kept)
        return costs.golden(workloads) * (n - 1) + costs.latency(n, workloads) + reserve

    for i, c in drop_longest_first(kept, lambda: estimate() > left):
        dropped.append(Candidate(f"{levers[i].name}={c.label}", c.sets, levers[i].name, c.label))
    notes = []
    if dropped:
        notes.append(f"budget {budget_s:.0f}s (left {left:.0f}s): dropped {len(dropped)} candidate(s) "
                     "from the end of the longest levers")
    if estimate() > left:
        notes.append(f"even the smallest plan is estimated at {estimate():.0f}s, over the {left:.0f}s left")
    trimmed = [Lever(lv.name, (lv.choices[0], *k), lv.counts) for lv, k in zip(levers, kept)]
    return SearchPlan(STRATEGY, tuple(stage1_candidates(trimmed)), tuple(dropped), estimate(), reserve,
                      budget_s, tuple(notes))


@dataclass(frozen=True)
class Verdict:
    """How one candidate compared with the defaults."""

    label: str
    geomean_ratio: float | None
    per_workload: Mapping[str, dict]
    wins: bool
    metric: str
    """What decided: `time`, `instructions`, `none` (nothing significant), or `failed`."""
    reason: str


def judge(label: str, rows: Sequence[Mapping], count_ratio: float | None = None) -> Verdict:
    """Decide from comparison rows (ratio, significant) and, when time is not significant, an instruction ratio."""
    per = {r["name"]: {"ratio": r["ratio"], "significant": r["significant"]} for r in rows}
    geo = math.exp(sum(math.log(r["ratio"]) for r in rows) / len(rows)) if rows else None
    faster = [r["name"] for r in rows if r["significant"] and r["ratio"] < 1]
    slower = [r["name"] for r in rows if r["significant"] and r["ratio"] > 1]
    if slower:
        return Verdict(label, geo, per, False, "time", f"significantly slower on {', '.join(slower)}")
    if faster and geo is not None and geo < 1:
        return Verdict(label, geo, per, True, "time", f"significantly faster on {', '.join(faster)}")
    if count_ratio is not None:
        if count_ratio < 1 - COUNT_THRESHOLD:
            return Verdict(label, geo, per, True, "instructions",
                           f"time not significant; {count_ratio:.3f}x the defaults' instructions per step")
        where = ("more work than the defaults" if count_ratio > 1 + COUNT_THRESHOLD
                 else f"within {COUNT_THRESHOLD:.0%}")
        return Verdict(label, geo, per, False, "instructions",
                       f"time not significant; instructions {count_ratio:.3f}x ({where})")
    return Verdict(label, geo, per, False, "none", "no significant difference in time")


def combine(levers: Sequence[Lever], winners: Mapping[str, Candidate]) -> Candidate | None:
    """The per-lever winners as one candidate (lever order), or None when fewer than two levers won."""
    chosen = [winners[lv.name] for lv in levers if lv.name in winners]
    if len(chosen) < 2:
        return None
    return Candidate("combined:" + "+".join(c.label for c in chosen), tuple(s for c in chosen for s in c.sets))


def describe(plan: SearchPlan, costs: Costs) -> list[str]:
    """The plan as lines for the terminal (also what --dry-run prints)."""
    lines = [f"strategy: {plan.strategy}",
             f"costs: one workload process {', '.join(f'{w} {s:.1f}s' for w, s in costs.golden_s.items())}; "
             f"{costs.rounds} interleaved round(s)",
             f"stage 1: {len(plan.stage1)} candidates: {', '.join(c.label for c in plan.stage1)}",
             f"estimate {plan.estimate_s:.0f}s (stage-2 reserve {plan.stage2_reserve_s:.0f}s) of a "
             f"{plan.budget_s:.0f}s budget"]
    lines += [f"dropped: {', '.join(c.label for c in plan.dropped)}"] if plan.dropped else []
    return lines + list(plan.notes)


def new_tune_dir(out: str | None) -> Path:
    """A run directory that holds no earlier tune result: an existing one is refused, never overwritten."""
    from .workspace import new_run_dir

    run_dir = new_run_dir(out or "tune-" + time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()))
    if run_dir.exists() and any(run_dir.iterdir()):
        raise SpecError(f"--out {run_dir}: already holds results; tune-host never overwrites a run, choose another")
    return run_dir


def unique_path(path: Path) -> Path:
    """`path`, or `path` with -2, -3 ... before the suffix when it exists (an earlier result is kept)."""
    if not path.exists():
        return path
    n = 2
    while path.with_name(f"{path.stem}-{n}{path.suffix}").exists():
        n += 1
    return path.with_name(f"{path.stem}-{n}{path.suffix}")


# ------------------------------------------------------------------------------------------ executor


@dataclass
class _Run:
    python: Path
    base_env: dict[str, str]
    linked: tuple[str, ...]
    run_dir: Path
    log: Path
    say: Callable[[str], None]
    base_settings: str | None = None
    """Settings file the candidates start from (the `--interp ...@SETTINGS` given), None for the defaults."""
    interp: Interpreter | None = None
    """Checked after each measurement: a binary rebuilt during the search would mix two builds."""
    started: float = field(default_factory=time.monotonic)

    def spent(self) -> float:
        return time.monotonic() - self.started

    def settings(self, cand: Candidate) -> hostenv.HostSettings:
        return hostenv.resolve(self.base_settings, cand.sets, env={})

    def env(self, cand: Candidate) -> dict[str, str]:
        return {**self.base_env, **hostenv.process_env(self.settings(cand), {}, linked=self.linked)}

    def golden(self, cand: Candidate, workloads: Sequence[str]) -> dict:
        """Each workload's pinned run under the candidate's settings: digest match, what was applied, seconds."""
        out: dict = {"ok": True, "workloads": {}}
        try:
            env = self.env(cand)
        except hostenv.HostSettingsError as exc:
            return {"ok": False, "error": str(exc), "workloads": {}}
        for w in workloads:
            t0 = time.monotonic()
            proc = runner.capture([self.python, "-m", "runtime", "workload", TARGETS[w].workload, "--check-golden",
                              "--json"], env=env, log=self.log, timeout=1800, check=False)
            secs = time.monotonic() - t0
            entry: dict = {"seconds": round(secs, 2), "exit": proc.returncode}
            try:
                rec = json.loads(proc.stdout)
                hs = rec.get("host_settings", {})
                entry.update({"golden_match": rec.get("golden_match"), "token_digest": rec.get("token_digest"),
                              "host_us_per_token": rec.get("host_us_per_token"),
                              "applied": hs.get("applied"), "warnings": hs.get("warnings"),
                              "allocator_in_effect": hs.get("allocator_in_effect")})
            except ValueError:
                entry["error"] = (proc.stderr or proc.stdout)[-1500:]
            if proc.returncode != 0 or not entry.get("golden_match") or entry.get("allocator_in_effect") is False:
                out["ok"] = False
                out.setdefault("error", entry.get("error") or
                               (f"{w}: token digest differs from golden" if entry.get("golden_match") is False
                                else f"{w}: exit {proc.returncode}: {(proc.stderr or '')[-600:]}"))
            out["workloads"][w] = entry
            if not out["ok"]:
                break
        return out

    def measure(self, cands: Sequence[Candidate], targets: Sequence[Target], name: str,
                settings: latency.LatencySettings) -> dict:
        subjects = [latency.Subject(safe_name(c.label), self.python, {"hostpgo_host_candidate": c.label},
                                    self.env(c)) for c in cands]
        rec = latency.run_interleaved(subjects, list(targets), self.run_dir / name, settings, env=self.base_env,
                                      log=self.log, progress=lambda m: self.say("    " + m))
        if self.interp is not None:
            interpreters.assert_unchanged(self.interp, f"tune-host's {name} measurement")
        suites = results.load_suites(self.run_dir, rec["files"])
        base = safe_name(cands[0].label)
        comps = {}
        for c in cands[1:]:
            comp = compare_suites(suites[base], suites[safe_name(c.label)], cands[0].label, c.label)
            comps[c.label] = [{"name": r.name, "ratio": r.ratio, "significant": r.significant,
                               "base_median": r.base_median, "changed_median": r.changed_median,
                               "t": r.t_score} for r in comp.rows]
        return {"latency": rec, "comparisons": comps}

    def count(self, cand: Candidate, target: Target) -> float:
        backend = counters.select_backend("auto")
        lo = target.count_units[0]
        m = counters.measure(backend, self.python, target.name, (lo, lo + 2),
                             self.run_dir / "counters" / safe_name(cand.label), env=self.env(cand), log=self.log)
        if self.interp is not None:
            interpreters.assert_unchanged(self.interp, f"tune-host's count of {cand.label}")
        return float(m["per_unit"]["instructions"])


def _golden_targets(workloads: Sequence[str]) -> list[Target]:
    """The targets of `--workloads`, each a runtime workload whose golden digest can check a candidate."""
    targets = [TARGETS[w] for w in workloads]
    for t in targets:
        if t.mode != "steps" or not t.needs_runtime:
            raise SpecError(f"--workloads: {t.name} is not a runtime workload with a golden digest")
        if t.needs_ray:
            raise SpecError(f"--workloads: {t.name} runs its model in Ray actor processes, and tune-host counts the "
                            "instructions of one process; choose workloads that run the model in-process")
    return targets


def dry_run(*, budget_s: float, workloads: Sequence[str] = DEFAULT_WORKLOADS, space: Path | None = None,
            rounds: int = 4, process_s: float = 8.0) -> list[str]:
    """The plan for an assumed workload-process time (the real run measures it first); runs nothing."""
    _golden_targets(workloads)  # the same workloads the real run accepts
    costs = Costs({w: process_s for w in workloads}, rounds=rounds)
    return describe(plan_search(load_space(space or default_space_file()), costs, budget_s, workloads), costs)


def run(interp: Interpreter, *, budget_s: float, workloads: Sequence[str] = DEFAULT_WORKLOADS,
        space: Path | None = None, out: str | None = None, use_venv: bool = True, use_counts: bool = False,
        quick: bool = True, rounds: int | None = None, say: Callable[[str], None] = print,
        argv: Sequence[str] = ()) -> Path:
    """Golden-check, measure and choose; returns the path of best-host.toml."""
    levers = load_space(space or default_space_file())
    targets = _golden_targets(workloads)
    run_dir = new_tune_dir(out)
    run_dir.mkdir(parents=True, exist_ok=True)
    log = run_dir / "commands.log"
    if use_venv:
        say("preparing the interpreter's venv (perf,runtime) ...")
        python = envs.prepare([interp], ("perf", "runtime"), log)[0].python
    else:
        python = Path(interp.python)
    base_env = {"HOSTPGO_HOME": str(hostpgo_home())}
    for k in ("PYTHONPATH",):
        if k in os.environ:
            base_env[k] = os.environ[k]
    base_settings = (interp.host_settings or {}).get("source")
    r = _Run(python, base_env, interp.allocators_linked, run_dir, log, say, base_settings, interp)
    if base_settings:
        say(f"candidates start from {base_settings} (the settings given with --interp), not the defaults")
    record: dict = {"schema": TUNE_SCHEMA, "run": run_dir.name, "command": list(argv), "host": results.host_info(),
                    "interpreter": interp.to_json(), "python": str(python), "budget_s": budget_s,
                    "workloads": list(workloads), "strategy": STRATEGY, "base_settings": base_settings,
                    "candidates": {}}

    def save() -> None:
        record["spent_s"] = round(r.spent(), 1)
        (run_dir / "tune.json").write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")

    say(f"strategy: {STRATEGY}")
    defaults = Candidate("defaults", ())
    say("golden check of the defaults (also times one workload process per workload for the estimate) ...")
    g = r.golden(defaults, workloads)
    record["candidates"]["defaults"] = {"sets": [], "golden": g}
    if not g["ok"]:
        save()
        raise ResultsError(f"the defaults fail their golden check: {g.get('error')}")
    rounds = rounds or (latency.LatencySettings.quick().rounds if quick else latency.LatencySettings().rounds)
    costs = Costs({w: g["workloads"][w]["seconds"] for w in workloads}, rounds=rounds)
    plan = plan_search(levers, costs, budget_s, workloads, spent_s=r.spent())
    record["plan"] = {"estimate_s": round(plan.estimate_s), "stage2_reserve_s": round(plan.stage2_reserve_s),
                      "costs": asdict(costs), "stage1": [c.label for c in plan.stage1],
                      "dropped": [c.label for c in plan.dropped], "notes": list(plan.notes)}
    for line in describe(plan, costs)[1:]:
        say("plan: " + line)
    save()

    alive = [defaults]
    for c in plan.stage1[1:]:
        g = r.golden(c, workloads)
        record["candidates"][c.label] = {"sets": list(c.sets), "lever": c.lever, "golden": g}
        say(f"  golden {c.label}: {'ok' if g['ok'] else 'FAILED - ' + str(g.get('error'))[:300]}")
        if g["ok"]:
            alive.append(c)
        save()
    settings = latency.LatencySettings(rounds=rounds, values=3, warmups=1, min_time=0.05)
    say(f"stage 1: {len(alive)} candidates x {len(targets)} workloads, {rounds} interleaved rounds")
    m1 = r.measure(alive, targets, "stage1", settings)
    record["stage1"] = m1
    save()

    winners: dict[str, Candidate] = {}
    best_by_lever: dict[str, tuple[float, Candidate]] = {}
    for c in alive[1:]:
        rows = m1["comparisons"][c.label]
        verdict = judge(c.label, rows)
        lever = next(lv for lv in levers if lv.name == c.lever)
        if verdict.metric == "none" and use_counts and lever.counts:
            est = costs.count_s * 2
            if r.spent() + est < budget_s:
                say(f"  {c.label}: time not significant; counting instructions (cachegrind) ...")
                base_n = record.setdefault("counts", {}).get("defaults")
                if base_n is None:
                    base_n = r.count(defaults, targets[0])
                    record["counts"]["defaults"] = base_n
                n = r.count(c, targets[0])
                record["counts"][c.label] = n
                verdict = judge(c.label, rows, n / base_n)
            else:
                verdict = Verdict(**{**asdict(verdict), "reason": verdict.reason + "; no budget left to count"})
        record["candidates"][c.label]["verdict"] = asdict(verdict)
        say(f"  {c.label}: geomean {verdict.geomean_ratio:.3f} -> {'WINS' if verdict.wins else 'no'} "
            f"({verdict.metric}: {verdict.reason})")
        if verdict.wins:
            score = verdict.geomean_ratio or 1.0
            if c.lever not in best_by_lever or score < best_by_lever[c.lever][0]:
                best_by_lever[c.lever] = (score, c)
    winners = {k: v[1] for k, v in best_by_lever.items()}
    record["winners"] = {k: v.label for k, v in winners.items()}
    save()

    best: Candidate = defaults
    best_ratio: float | None = 1.0
    best_rows: list = []
    decided = "none"
    if winners:
        single = min(best_by_lever.values(), key=lambda sv: sv[0])
        best, best_ratio = single[1], single[0]
        best_rows = m1["comparisons"][best.label]
        decided = record["candidates"][best.label]["verdict"]["metric"]
    combo = combine(levers, winners)
    if combo is not None:
        if r.spent() + plan.stage2_reserve_s > budget_s * 1.1:
            record["stage2"] = {"skipped": f"budget: {r.spent():.0f}s spent of {budget_s:.0f}s"}
            say("stage 2 skipped: " + record["stage2"]["skipped"])
        else:
            g = r.golden(combo, workloads)
            record["candidates"][combo.label] = {"sets": list(combo.sets), "golden": g}
            if g["ok"]:
                say(f"stage 2: {combo.label} against the defaults")
                m2 = r.measure([defaults, combo], targets, "stage2", settings)
                record["stage2"] = m2
                v = judge(combo.label, m2["comparisons"][combo.label])
                record["candidates"][combo.label]["verdict"] = asdict(v)
                say(f"  {combo.label}: geomean {v.geomean_ratio:.3f} ({v.metric}: {v.reason})")
                if v.wins and (v.geomean_ratio or 1) <= (best_ratio or 1):
                    best, best_ratio, best_rows, decided = (combo, v.geomean_ratio, m2["comparisons"][combo.label],
                                                            "time")
            else:
                record["stage2"] = {"skipped": f"golden check failed: {g.get('error')}"}
                say(f"stage 2: {combo.label} failed its golden check: {g.get('error')}")
    save()

    chosen = r.settings(best)
    gain = "no setting beat the defaults significantly; the defaults are kept" if best is defaults else (
        f"{1 / best_ratio:.3f}x faster (geometric mean of median step time over {', '.join(workloads)}; "
        f"decided by {decided})")
    header = [f"hostpgo tune-host {run_dir.name}: best of {len(alive)} golden-clean candidates on {platform.node()}",
              f"interpreter {interp.python} ({interp.name}); measured gain vs the defaults: {gain}"]
    header += [f"  {row['name']}: ratio {row['ratio']:.3f}{'' if row['significant'] else ' (n.s.)'}"
               for row in best_rows]
    header += [f"strategy: {STRATEGY}", f"settings: {chosen.summary()}"]
    text = chosen.to_toml(header)
    dest = run_dir / "best-host.toml"
    dest.write_text(text, encoding="utf-8")
    hostenv.resolve(dest, env={})  # the written file loads back
    copy = unique_path(hostpgo_home() / "host" / f"best-{safe_name(platform.node())}-{run_dir.name}.toml")
    copy.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(dest, copy)
    record["best"] = {"label": best.label, "sets": list(best.sets), "geomean_ratio": best_ratio,
                      "decided_by": decided, "file": str(dest), "copy": str(copy), "summary": chosen.summary()}
    save()
    (run_dir / "tune.md").write_text(render(record), encoding="utf-8")
    say(f"best: {best.label} - {gain}")
    say(f"settings file: {dest}")
    say(f"copy: {copy}")
    return dest


def render(record: Mapping) -> str:
    """tune.md: the plan, every candidate's golden check and verdict, and the choice."""
    lines = [f"# tune-host {record['run']}", "", f"Strategy: {record['strategy']}.", "",
             f"Interpreter: `{record['interpreter']['python']}`; workloads: {', '.join(record['workloads'])}; "
             f"budget {record['budget_s']:.0f}s, spent {record.get('spent_s', 0):.0f}s.", ""]
    if record.get("command"):
        lines += ["Command: `" + " ".join(record["command"]) + "`", ""]
    plan = record.get("plan", {})
    if plan:
        lines += [f"Estimate {plan['estimate_s']}s (stage-2 reserve {plan['stage2_reserve_s']}s); "
                  f"dropped to fit: {', '.join(plan['dropped']) or 'none'}.", ""]
    workloads = record["workloads"]
    headers = ["candidate", "golden"] + [f"{w} ratio" for w in workloads] + ["geomean", "decided by", "verdict"]
    rows = []
    for label, c in record["candidates"].items():
        g = c.get("golden", {})
        golden = "ok" if g.get("ok") else "FAILED: " + str(g.get("error", "?")).replace("|", "/")[:120]
        v = c.get("verdict")
        if v is None:
            rows.append([f"`{label}`", golden] + ["-"] * len(workloads) +
                        ["1.000" if label == "defaults" else "-", "-", "reference" if label == "defaults" else "-"])
            continue
        cells = []
        for w in workloads:
            p = v["per_workload"].get(w)
            cells.append("-" if p is None else f"{p['ratio']:.3f}" + ("" if p["significant"] else " (n.s.)"))
        geo = "-" if v["geomean_ratio"] is None else f"{v['geomean_ratio']:.3f}"
        rows.append([f"`{label}`", golden] + cells
                    + [geo, v["metric"], ("**wins**: " if v["wins"] else "") + v["reason"]])
    lines += ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows] + [""]
    lines += ["Ratios are median step time under the candidate / under the defaults (interleaved pyperf, "
              "below 1 is faster; `(n.s.)`: t-test not significant at 95%).", ""]
    best = record.get("best")
    if best:
        lines += [f"**Kept:** `{best['label']}` ({best['summary']}), geomean ratio "
                  f"{best['geomean_ratio']:.3f}, decided by {best['decided_by']}: `{best['file']}` "
                  f"(copy `{best['copy']}`).", ""]
    return "\n".join(lines)
