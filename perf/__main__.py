"""Command line of perf/: `python -m perf {bench,counters,attribute,guard,report,tune-host,autotune}`;
errors become exit codes."""

# Everything imported here loads without the `perf` extra (pyperf and matplotlib are imported where used, through
# perf.extra), so `--help`, `tune-host --dry-run` and `autotune --dry-run` work without it; the other commands
# check for it first.

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rich.console import Console
from rich.markup import escape

from hostpgo.errors import HostpgoError

from . import catalog, extra, guard, report, session, tune
from . import stack as stackmod
from .interpreters import resolve_all
from .workspace import new_run_dir

console = Console(stderr=True, highlight=False)


def _positive(kind: type):
    """argparse type: a number above zero, so `--budget -5` is refused naming its flag instead of starting work."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'}, "
                                             f"got {text!r}") from None
        if not value > 0:  # NaN too
            raise argparse.ArgumentTypeError(f"must be above 0, got {text}")
        return value

    return parse


def _add_measure_args(p: argparse.ArgumentParser, default_stages: str | None) -> None:
    p.add_argument("--interp", action="append", required=True, metavar="SPEC",
                   help="interpreter under test: NAME=PATH, a path, or a hostpgo build name, optionally "
                        "followed by @SETTINGS (a host settings name under profiles/host/ or a .toml path: "
                        "allocator preload and tunables, MindSpore launch/threads/affinity, GC policy), so one "
                        "interpreter can be several subjects, e.g. --interp glibc=/usr/bin/python3.11 "
                        "--interp je=/usr/bin/python3.11@jemalloc; before any @SETTINGS, +wheel:W.whl (repeatable) "
                        "installs that wheel in the subject's venv instead of the stock build of its distribution "
                        "(its own venv, keyed by the wheel's sha256), e.g. --interp stock=PY "
                        "--interp bolt=PY+wheel:mindspore-2.10.0+bolt.1a2b3c4d-...whl; repeat; the first is the "
                        "baseline")
    p.add_argument("--workloads", default=",".join(catalog.QUICK_DEFAULT),
                   help=f"comma-separated targets (known: {', '.join(catalog.TARGETS)})")
    p.add_argument("--counter-workloads", default=None, metavar="WORKLOADS",
                   help="targets of the counters stage when they should differ from --workloads (each runtime "
                        "target costs minutes per interpreter under valgrind; pure-python and pure-dispatch "
                        "count the interpreter alone in seconds)")
    p.add_argument("--quick", action="store_true", help="fewer rounds, values and units (minutes, noisier)")
    p.add_argument("--out", default=None, help="run name under $HOSTPGO_HOME/results, or a directory path")
    p.add_argument("--no-venv", action="store_true",
                   help="run the interpreters as given instead of in per-interpreter venvs "
                        "(each must import pyperf and hostpgo)")
    p.add_argument("--backend", default="auto", choices=("auto", "perf-stat", "cachegrind"),
                   help="counter backend (auto: perf stat where hardware counters exist, else cachegrind)")
    p.add_argument("--guard-fast", action="store_true",
                   help="pyperformance --fast for the guard (the other stages keep their full settings)")
    p.add_argument("--guard-benchmarks", default=None,
                   help=f"pyperformance subset (default: {','.join(guard.DEFAULT_SUBSET)})")
    p.add_argument("--redo", action="store_true",
                   help="with --out naming an earlier run: measure again the stages it already holds "
                        "(by default a rerun keeps them and measures only what is missing)")
    p.add_argument(stackmod.FLAG, action="append", default=[], metavar="STEP=NAME", dest="stack_steps",
                   help="name a subject as a step of the optimized stack for the report's `stack (a)-(d)` section: "
                        + "; ".join(f"({k}) {v}" for k, v in stackmod.STEPS.items()) + "; repeatable, in order "
                        "from (a) with no step skipped (the first subject of a step is its own, a further one a "
                        "reference measured beside it), e.g. --stack-step a=debian --stack-step b=workload-pgo-lto")
    p.add_argument("--provider", default=None, help=argparse.SUPPRESS)
    if default_stages is not None:
        p.add_argument("--stages", default=default_stages,
                       help=f"comma-separated stages to run (from {', '.join(session.STAGES)})")


def _autotune_doc() -> str:
    from . import autotune

    return autotune.__doc__ or ""


def autotune_rules() -> dict[str, str]:
    from . import autotune

    return autotune.WINNER_RULES


def _autotune(args: argparse.Namespace, argv: list[str]) -> int:
    """`autotune`: the dry-run plan, or the search (which needs the perf extra: pyperf, matplotlib)."""
    from . import autotune

    if args.resume and (args.out or args.space or args.base or args.finalists):
        from hostpgo.errors import InputError

        raise InputError("--resume RUN continues a run with its own space, base, finalists and directory: drop "
                         "--out/--space/--base/--finalists, or start a new run without --resume")
    budget = autotune.parse_budget(args.budget)
    starting = (None if args.starting_points is None
                else [n.strip() for n in args.starting_points.split(",") if n.strip()])
    if args.dry_run:
        for line in autotune.dry_run(budget_s=budget, space_path=Path(args.space) if args.space else None,
                                     base=args.base, starting_points=starting, resume=args.resume,
                                     confirm_quick=False if args.confirm_full else None,
                                     winner=args.winner):
            print(line)
        return 0
    extra.require()
    state = autotune.run(budget_s=budget, space_path=Path(args.space) if args.space else None, base=args.base,
                         out=args.out, resume=args.resume, finalists=args.finalists, starting_points=starting,
                         confirm_quick=False if args.confirm_full else None, winner=args.winner,
                         write_profile=args.write_profile, say=lambda m: console.print(m, markup=False),
                         argv=("python", "-m", "perf", *argv))
    best = state.get("best")
    console.print(f"best: {best['id']} ({best['label']}): {best['file']}" if best else
                  "best: no finalist won by the winner rule (no best.toml)")
    print(Path(state["run_dir"]) / "autotune.md")
    return 0


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m perf", description=__doc__)
    sub = ap.add_subparsers(dest="command", required=True)
    _add_measure_args(sub.add_parser("bench", help="interleaved A/B latency (and, with --stages, the rest)"),
                      "latency,counters,attribute")
    _add_measure_args(sub.add_parser("counters", help="instructions, misses and IPC per unit of work"), None)
    _add_measure_args(sub.add_parser("attribute", help="host time per shared object and hottest functions"), None)
    _add_measure_args(sub.add_parser("guard", help="pyperformance subset on every interpreter"), None)
    tp = sub.add_parser("tune-host", help="search host settings (allocator x launch x threads/affinity x GC) for "
                        "this machine within a budget; keeps the best as a settings file",
                        description=tune.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    tp.add_argument("--interp", required=True, metavar="SPEC",
                    help="the interpreter (NAME=PATH, path or build name); with @SETTINGS the candidates start "
                         "from that settings file instead of the defaults")
    tp.add_argument("--budget", required=True, type=_positive(float), metavar="SECONDS",
                    help="wall-clock budget of the search")
    tp.add_argument("--workloads", default=",".join(tune.DEFAULT_WORKLOADS),
                    help="runtime workloads with golden digests (default: %(default)s)")
    tp.add_argument("--space", default=None, help="search-space file (default: profiles/host/search/default.toml)")
    tp.add_argument("--out", default=None, help="a new run name under $HOSTPGO_HOME/results (never overwritten)")
    tp.add_argument("--full", action="store_true", help="default pyperf rounds instead of the quick ones")
    tp.add_argument("--rounds", type=_positive(int), default=None,
                    help="interleaved pyperf rounds per candidate (default: 4, or 6 with --full)")
    tp.add_argument("--counts", action="store_true",
                    help="where time is not significant, let cachegrind instruction counts decide the "
                         "allocator and GC levers (slow under valgrind; only when the budget allows)")
    tp.add_argument("--no-venv", action="store_true",
                    help="run the interpreter as given (it must import pyperf, hostpgo and the runtime deps)")
    tp.add_argument("--dry-run", action="store_true",
                    help="print the plan for an assumed 8 s per workload process and run nothing")
    ap_ = sub.add_parser("autotune", help="search build options (compiler, LTO, -march, inlining, alignment, BOLT, "
                         "allocator, per-file flags) within a budget; keeps the winner as a build profile",
                         description=_autotune_doc(), formatter_class=argparse.RawDescriptionHelpFormatter)
    ap_.add_argument("--budget", required=True, metavar="TIME",
                     help="wall-clock budget of this session: seconds, 90m, 2h or 1h30m")
    ap_.add_argument("--space", default=None, metavar="FILE",
                     help="search-space file (default: profiles/search/autotune.toml)")
    ap_.add_argument("--base", default=None, metavar="PROFILE",
                     help="the profile candidates extend and are measured against (default: the space's "
                          "[search] base, workload-pgo-lto)")
    ap_.add_argument("--finalists", type=_positive(int), default=None, metavar="N",
                     help="candidates confirmed by the interleaved latency run (default: the space's, 3)")
    ap_.add_argument("--confirm-full", action="store_true",
                     help="confirm with perf bench's full latency settings (6 rounds x 5 values) instead of --quick "
                          "(the space's confirm_quick); also on --resume, where it measures the finalists again "
                          "and that run becomes the evidence")
    ap_.add_argument("--winner", default=None, choices=sorted(autotune_rules()),
                     help="how the confirmation picks the winner (default: the space's [search] winner, latency): "
                          "latency = a significantly lower latency geometric mean; counts = fewer exact "
                          "instructions, the latency or the guard significantly faster and nothing significantly "
                          "slower (for a host whose latency noise hides a few percent); also on --resume, where "
                          "the kept measurements are judged again")
    ap_.add_argument("--starting-points", default=None, metavar="PROFILES",
                     help="comma-separated profiles measured beside the finalists, built if missing (default: the "
                          "space's, gcc-pgo-lto,native; '' for none)")
    ap_.add_argument("--out", default=None, help="a new run name under $HOSTPGO_HOME/results, or a directory "
                                                  "(never overwritten; default autotune-<UTC time>)")
    ap_.add_argument("--resume", default=None, metavar="RUN",
                     help="continue an earlier run (its directory or name): what its autotune.jsonl holds is "
                          "neither rebuilt nor measured again")
    ap_.add_argument("--write-profile", action="store_true",
                     help="also copy the winner's best.toml to profiles/ (never over an existing file)")
    ap_.add_argument("--dry-run", action="store_true",
                     help="print the whole plan (candidates, what each rebuilds, estimates, what the budget "
                          "drops, what is left out and why) and run nothing")
    rp = sub.add_parser("report", help="regenerate report.md, comparison.json and plots from a run's JSON")
    rp.add_argument("run_dir", help="a run directory, or a run name under $HOSTPGO_HOME/results")
    rp.add_argument("--baseline", default=None, metavar="NAME",
                    help="compare against this subject instead of the run's baseline; written beside the main "
                         "report as report-vs-NAME.md (the main report is left as it is)")
    return ap


def _plan(args: argparse.Namespace, argv: list[str]) -> session.Plan:
    stages = session.parse_stages(args.stages) if args.command == "bench" else (args.command,)
    interps = tuple(resolve_all(args.interp))
    return session.Plan(
        interpreters=interps,
        stack=stackmod.parse_steps(args.stack_steps, [i.name for i in interps]),
        targets=tuple(catalog.parse_targets(args.workloads)),
        counter_targets=(None if args.counter_workloads is None
                         else tuple(catalog.parse_targets(args.counter_workloads, "--counter-workloads"))),
        stages=stages,
        run_dir=new_run_dir(args.out),
        quick=args.quick,
        use_venvs=not args.no_venv,
        backend=args.backend,
        guard_benchmarks=guard.parse_subset(args.guard_benchmarks),
        provider=args.provider,
        redo=args.redo,
        guard_fast=args.guard_fast,
        argv=("python", "-m", "perf", *argv),
    )


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    try:
        if args.command == "autotune":
            return _autotune(args, argv)
        if args.command == "tune-host" and args.dry_run:
            for line in tune.dry_run(budget_s=args.budget, space=Path(args.space) if args.space else None,
                                     workloads=[t.name for t in catalog.parse_targets(args.workloads)],
                                     rounds=args.rounds or (6 if args.full else 4)):
                print(line)
            return 0
        extra.require()
        if args.command == "tune-host":
            from .interpreters import parse_spec, resolve

            interp = resolve(parse_spec(args.interp))
            dest = tune.run(interp, budget_s=args.budget,
                            workloads=[t.name for t in catalog.parse_targets(args.workloads)],
                            space=Path(args.space) if args.space else None, out=args.out,
                            use_venv=not args.no_venv, use_counts=args.counts, quick=not args.full, rounds=args.rounds,
                            say=lambda m: console.print(m, markup=False), argv=("python", "-m", "perf", *argv))
        elif args.command == "report":
            run_dir = Path(args.run_dir)
            if not run_dir.exists() and "/" not in args.run_dir:
                run_dir = new_run_dir(args.run_dir)
            dest = report.build(run_dir, baseline=args.baseline)
        else:
            plan = _plan(args, argv)
            for i in plan.interpreters:
                console.print(f"[bold]{i.name}[/]: Python {i.version} at {i.python} "
                              f"(manifest {i.manifest_digest[:12]})")
            console.print(f"run directory: {plan.run_dir}")
            dest = session.execute(plan, say=lambda m: console.print(m))
    except HostpgoError as exc:
        console.print(f"[red]error:[/] {escape(str(exc))}")  # the message's own brackets are not markup
        return exc.exit_code
    except KeyboardInterrupt:
        console.print("[red]interrupted[/]")
        return 130
    console.print(f"report: {dest}")
    print(dest)
    return 0


if __name__ == "__main__":
    sys.exit(main())
