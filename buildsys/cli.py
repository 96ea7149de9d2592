"""Command line of the build engine: the only place errors become exit codes."""


from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console
from rich.table import Table

from hostpgo import fsutil
from hostpgo.runner import Runner

from . import engine, image, targets, toolchain
from .core import stages
from .core.paths import REPO_ROOT, WorkArea
from .errors import HostpgoError, InputError
from .pipeline import bolt, wheelbolt
from .pipeline import stack as stackmod
from .toolchain import profile as profmod

EXIT_CODES = """\
exit codes:
  0  success
  1  an error of another kind (a stage failed for a reason other than a tool's exit, a bad download, ...)
  2  bad input: an unknown target, profile or key, a bad --set or HOSTPGO_SET item, a --source or
     --profile-data file that does not exist or does not check out
  4  an external tool failed, timed out or was not found (the message names the command and its log)
  130 interrupted
  bolt-check also exits 1 when a file cannot be BOLT-optimized as it is"""


def _common_build_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--jobs", "-j", type=int, default=None, help="parallel make jobs (default: CPU count)")
    p.add_argument("--source", type=Path, default=None,
                   help="the pinned source archive, or a directory holding it (checked against its sha256); for a "
                        "target without a pinned archive (mindspore, ray), the checkout to build")
    p.add_argument("--dry-run", action="store_true", help="print the whole plan and run nothing")


def _target_build_args(p: argparse.ArgumentParser) -> None:
    """The extra options targets declare in their data (`[cli_args.NAME]` in buildsys/targets/NAME.toml), each
    added once; `build` refuses one the chosen target does not declare."""
    seen: dict[str, list[str]] = {}
    for spec in targets.every():
        for name in spec.cli_args:
            seen.setdefault(name, []).append(spec.name)
    for name, owners in seen.items():
        arg = next(s.cli_args[name] for s in targets.every() if s.name == owners[0])
        p.add_argument(f"--{name.replace('_', '-')}", dest=f"target_arg_{name}", default=None,
                       choices=arg.get("choices"), metavar=None if arg.get("choices") else name.upper(),
                       help=f"{arg['help']} (target{'s' if len(owners) > 1 else ''} {', '.join(owners)})")


def _target_args(args) -> dict[str, str]:
    """The declared target options given on the command line, by name."""
    return {k.removeprefix("target_arg_"): v for k, v in vars(args).items()
            if k.startswith("target_arg_") and v is not None}


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m buildsys", description=__doc__, epilog=EXIT_CODES,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    t = sub.add_parser("toolchain", help="detect compilers, companion tools and CPU tuning")
    t.add_argument("--install", action="store_true", help="install what --for needs (root; apt on Debian/Ubuntu, "
                                                          "dnf elsewhere); nothing when it is all there")
    t.add_argument("--for", dest="purpose", choices=("pipeline", "tests"), default="pipeline",
                   help="pipeline (default): LLVM 22, CPython's build dependencies, the image tools; tests: LLVM 22, "
                        "gcc, valgrind, perf, umoci and the allocator packages the test suite runs")
    t.add_argument("--json", action="store_true")
    s = sub.add_parser("show-profile", help="print a profile's effective settings and per-stage flags")
    s.add_argument("profile", help="a name from profiles/ or a path to a .toml file")
    s.add_argument("--target", default="cpython", choices=targets.names(),
                   help="the target whose [targets.NAME] tables apply (default %(default)s)")
    s.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    tg = sub.add_parser("targets", help="list the registered targets, their build system, and whether they can "
                                        "be built on this machine (and why not)")
    tg.add_argument("--json", action="store_true")
    dc = sub.add_parser("docs", help="render docs/profiles.md from the profile schema")
    mode = dc.add_mutually_exclusive_group(required=True)
    mode.add_argument("--check", action="store_true", help="exit 1 when docs/profiles.md is stale")
    mode.add_argument("--write", action="store_true", help="write docs/profiles.md")
    b = sub.add_parser("build", help="build a target with a profile")
    b.add_argument("target", choices=targets.names(), help="a registered target (see `targets`)")
    b.add_argument("--profile", required=True, help="a name from profiles/ or a path to a .toml file")
    b.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override one profile key (after HOSTPGO_SET from the environment)")
    b.add_argument("--profile-data", type=Path, default=None,
                   help="reuse merged profile data (a .profdata from .hostpgo/profiles/, or a GCC .gcda "
                        "tree) instead of building an instrumented interpreter and training")
    _common_build_args(b)
    _target_build_args(b)
    pl = sub.add_parser("pipeline", help="build baseline, the comparison and the optimized profiles, verify, "
                                         "then measure them against each other and the system python")
    pl.add_argument("--optimized", default=engine.DEFAULT_OPTIMIZED_PROFILE,
                    help=f"optimized profile (default {engine.DEFAULT_OPTIMIZED_PROFILE})")
    pl.add_argument("--compare", default=",".join(engine.DEFAULT_COMPARE_PROFILES),
                    help="comma-separated profiles built and measured beside it (default "
                         f"{','.join(engine.DEFAULT_COMPARE_PROFILES)}; '' for none)")
    pl.add_argument("--no-measure", action="store_true", help="build and verify only")
    pl.add_argument("--no-image", action="store_true", help="skip the optimized build's OCI image (needs root, "
                                                            "mmdebstrap, umoci)")
    pl.add_argument("--image-settings", default=engine.DEFAULT_IMAGE_SETTINGS, metavar="NAME|FILE",
                    help="host settings the image's entrypoint applies (default %(default)s)")
    pl.add_argument("--quick", action="store_true", help="shorter measurement (fewer rounds; noisier)")
    pl.add_argument("--bolt-wheels", default=",".join(engine.DEFAULT_BOLT_WHEELS), metavar="PACKAGES",
                    help="comma-separated (known: " + ",".join(engine.BOLT_WHEEL_PACKAGES) + "; '' for none): after "
                         "the builds, bolt-wheel --keep-if-faster rewrites each package's stock wheel in a venv of the "
                         "optimized build; a wheel the interleaved A/B keeps is measured as one more subject (with "
                         "--stack, step (e)) and installed in the image (default: %(default)s)")
    pl.add_argument("--stack", action=argparse.BooleanOptionalAction, default=engine.DEFAULT_STACK,
                    help="also build the optimized profile's allocator (its target, workload PGO) and the extension "
                         "wheels (--stack-wheels) with it, check the allocator is in effect, and measure in the same "
                         "run (a) the stock stack, (b) the interpreter only, (c) + the hostpgo-built allocator, (d) + "
                         "the wheels (the report's `stack (a)-(d)` section); the image then ships the stack "
                         f"(default: {'on' if engine.DEFAULT_STACK else 'off'})")
    pl.add_argument("--stack-wheels", default=",".join(stackmod.STACK_WHEELS), metavar="PACKAGES",
                    help="with --stack: comma-separated NAME==VERSION rebuilt by the extension target (default "
                         "%(default)s)")
    pl.add_argument("--out", default=None, help="measurement run name under .hostpgo/results (default: "
                                                "pipeline-<UTC time>; an existing run is resumed)")
    pl.add_argument("--system", type=Path, default=engine.SYSTEM_PYTHON,
                    help=f"the distribution's interpreter measured beside the builds (default "
                         f"{engine.SYSTEM_PYTHON}, skipped where absent)")
    _common_build_args(pl)
    im = sub.add_parser("image", help="an OCI image of an installed build: Debian base, the interpreter, a venv "
                                      "with the runtime, host settings applied by the entrypoint; verified by chroot")
    im.add_argument("--build", default=engine.DEFAULT_OPTIMIZED_PROFILE,
                    help="the installed build's profile name (default %(default)s)")
    im.add_argument("--host-settings", default=None, metavar="NAME|FILE",
                    help="host settings the entrypoint applies: a name from profiles/host/ or a .toml file "
                         "(default: the settings of the allocator the build links, `default` for glibc); every "
                         "profiles/host/ file ships too, selectable at run time")
    im.add_argument("--tag", default=None, help="image reference (default hostpgo/<profile>:<settings>)")
    im.add_argument("--archive", type=Path, default=None,
                    help="also write a docker-archive tarball here (skopeo), for `docker load`/`podman load`")
    im.add_argument("--wheel", action="append", type=Path, default=[], metavar="WHEEL",
                    help="a rewritten wheel (bolt-wheel's, e.g. .hostpgo/wheelbolt/<build>/dist/*.whl) the venv "
                         "installs instead of the stock build of its distribution; repeatable; the record names it")
    im.add_argument("--dry-run", action="store_true", help="print the plan and run nothing")
    bw = sub.add_parser("bolt-wheel", help="BOLT an installed wheel's native libraries (as shipped: stripped, "
                                           "non-relocation mode) from exact-count profiles into a new wheel")
    wheelbolt.add_arguments(bw)
    bc = sub.add_parser("bolt-check", help="tell whether ELF files can be BOLT-optimized (exit 0: yes, 1: no, "
                                            "2: bad input)")
    bc.add_argument("files", nargs="+", type=Path, metavar="FILE")
    bc.add_argument("--json", action="store_true")
    return ap


def cmd_toolchain(args, console: Console) -> int:
    tcs = toolchain.detect()
    if args.install:
        toolchain.install(tcs.host, Runner(WorkArea.from_env().logs / "toolchain-install.log"), args.purpose)
        tcs = toolchain.detect()
    if args.json:
        print(json.dumps({"host": vars(tcs.host) | {"tuning": tcs.host.host_tuning},
                          "compilers": [c.identity() for c in tcs.compilers]}, indent=2))
        return 0
    h = tcs.host
    console.print(f"host: {h.machine} ({h.os_id or 'unknown OS'}); tuning for arch=\"host\": {h.host_tuning}"
                  + (f" (Kunpeng {h.kunpeng} from MIDR part)" if h.kunpeng else ""))
    table = Table("family", "compiler", "version", "companion tools")
    for c in tcs.compilers:
        table.add_row(c.family, c.cc, c.version, "\n".join(f"{k}: {v}" for k, v in sorted(c.tools.items())))
    console.print(table)
    problems = []
    if tcs.find("clang") is None and tcs.find("bisheng") is None:
        problems.append("no clang/BiSheng found")
    llvm = tcs.find("bisheng") or tcs.find("clang")
    if llvm is not None:
        for role in ("profdata", "ar", "lld", "bolt", "merge-fdata"):
            if role not in llvm.tools:
                problems.append(f"{toolchain.LLVM_TOOLS[role]} not found next to {llvm.cc}")
    if tcs.find("gcc") is None:
        problems.append("no gcc found")
    packages = toolchain.missing_packages(h, args.purpose)
    if packages:
        problems.append("packages not installed: " + " ".join(packages))
    if problems:
        console.print("[red]missing:[/] " + "; ".join(problems))
        console.print(f"install with: {toolchain.install_hint(h, args.purpose)}   "
                      f"(or: python -m buildsys toolchain --install --for {args.purpose}, as root)")
        return 1
    console.print("[green]all toolchains and companion tools present[/]")
    return 0


def _print_profile(inp, console: Console) -> None:
    p = inp.profile
    print(f"profile {p.name} (target {p.target})")
    print("  files: " + " <- ".join(p.files))
    if p.description:
        print("  " + " ".join(p.description.split()))
    d = p.to_dict()
    for sect in ("toolchain", "optimize", "flags", *(("tuning",) if p.tuning.used else ()), "bisheng", "pgo", "verify",
                 *(("bolt",) if p.optimize.bolt else ())):
        print(f"  [{sect}] " + ", ".join(f"{k} = {json.dumps(v)}" for k, v in d[sect].items()))
    if p.overrides:
        print("  overrides: " + " ".join(p.overrides))
    print(f"  compiler: {inp.compiler.version_text} ({inp.compiler.cc})")


def cmd_show_profile(args, console: Console) -> int:
    inp = engine.prepare(args.profile, target=args.target, overrides=args.set, allow_missing_compiler=True)
    _print_profile(inp, console)
    plan = engine.plan(inp)
    for n in plan.notes:
        print(f"  note: {n}")
    print("\nper-stage settings (channel, name = value   # where it comes from):")
    for st in plan.stages:
        if not st.flags:
            continue
        print(f"  {st.name}:")
        for f in st.flags:
            print(f"    {f.channel:<15} {f.name} = {f.value}" + (f"   # {f.why}" if f.why else ""))
    return 0


def _check_jobs(args) -> None:
    if args.jobs is not None and args.jobs < 1:
        raise InputError(f"--jobs {args.jobs}: must be at least 1 (parallel make jobs)")


def cmd_build(args, console: Console) -> int:
    _check_jobs(args)
    inp = engine.prepare(args.profile, target=args.target, overrides=args.set, jobs=args.jobs,
                         user_source=args.source, profile_data=args.profile_data, target_args=_target_args(args))
    plan = engine.plan(inp)
    if args.dry_run:
        print(stages.render_plan(plan, stages.would_skip(plan, inp.work.stamps)))
        return 0
    ex = stages.execute(plan, inp.work.stamps, inp.work.logs, console=console, live=console.is_terminal)
    _print_timings([ex], console)
    return 0


def _print_timings(executions, console: Console) -> None:
    """Plain lines (not a table), so logs and narrow terminals keep every figure."""
    for ex in executions:
        prefix = ex.plan.summary["prefix"]
        # A plan's summary may name what the build made (`result`: a wheel, a library target's shared object).
        result = ex.plan.summary.get("result", f"{prefix}/bin/python")
        print(f"{ex.plan.build_id}: {result}  (manifest {prefix}/hostpgo-manifest.json)")
        total = 0.0
        for name, r in ex.results.items():
            print(f"  {name:<24} {r.seconds:8.1f} s  {'reused (stamp)' if r.skipped else 'ran'}")
            total += r.seconds
        print(f"  {'total':<24} {total:8.1f} s")
        if "bolt-apply" in ex.results:
            rec = bolt.outcome(ex.results, ex.plan.summary.get("bolt", {}))
            print("  BOLT: " + (f"applied to {rec['target']}" if rec.get("applied") else
                                f"NOT applied, the PGO build is installed: {rec.get('reason', '')[:300]}"))


def cmd_pipeline(args, console: Console) -> int:
    _check_jobs(args)
    compare = tuple(c.strip() for c in args.compare.split(",") if c.strip())
    bolt_wheels = tuple(dict.fromkeys(c.strip() for c in args.bolt_wheels.split(",") if c.strip()))
    stack_wheels = tuple(dict.fromkeys(c.strip() for c in args.stack_wheels.split(",") if c.strip()))
    if args.dry_run:
        for line in engine.pipeline_dry_run(optimized=args.optimized, compare=compare, jobs=args.jobs,
                                            user_source=args.source, quick=args.quick, system=args.system,
                                            image=not args.no_image, image_settings=args.image_settings,
                                            bolt_wheels=bolt_wheels, stack=args.stack, stack_wheels=stack_wheels):
            print(line)
        return 0
    res = engine.pipeline(optimized=args.optimized, compare=compare, jobs=args.jobs, user_source=args.source,
                          console=console, live=console.is_terminal, measure=not args.no_measure,
                          quick=args.quick, run_name=args.out, system=args.system, image=not args.no_image,
                          image_settings=args.image_settings, bolt_wheels=bolt_wheels, stack=args.stack,
                          stack_wheels=stack_wheels)
    _print_timings(res.builds, console)
    if res.stack is not None:
        _print_timings([res.stack.allocator, res.stack.verify, *res.stack.wheels], console)
    for doc in res.wheels:
        d = doc["decision"]
        print(f"bolt-wheel {doc['package']}: {doc['output']['wheel']} {'KEPT' if d['kept'] else 'not kept'} "
              f"({d['verdict']}; perf run {d['run']})")
    if res.image is not None:
        _print_image(res.image, console)
    if res.report is not None:
        print(f"report: {res.report}")
        print(f"regenerate it with: nox -s report -- {res.report.parent}")
    return 0


def cmd_image(args, console: Console) -> int:
    settings = args.host_settings or engine.default_image_settings(args.build)
    inp = image.prepare(args.build, settings=settings, tag=args.tag, archive=args.archive,
                        scan_libraries=not args.dry_run, wheels=tuple(args.wheel))
    plan = image.plan(inp)
    if args.dry_run:
        print(stages.render_plan(plan, stages.would_skip(plan, inp.work.stamps)))
        return 0
    ex = stages.execute(plan, inp.work.stamps, inp.work.logs, console=console, live=console.is_terminal)
    _print_image(ex, console)
    return 0


def _print_image(ex, console: Console) -> None:
    for name, r in ex.results.items():
        print(f"  {name:<16} {r.seconds:8.1f} s  {'reused (stamp)' if r.skipped else 'ran'}")
    s = ex.plan.summary
    print(f"image {s['tag']}: OCI layout {s['layout']} (tag {image.layout_tag(s['tag'])}); "
          f"record {Path(s['prefix']) / 'hostpgo-image.json'}")
    oci_rec = ex.results["image-assemble"].info.get("oci") or {}
    if oci_rec:
        print(f"  manifest {oci_rec['manifest_digest']}  config {oci_rec['config_digest']}")
        for layer in oci_rec["layers"]:
            print(f"  layer {layer['name']:<8} {layer['digest']}  {layer['size']:>12,} bytes  "
                  f"{layer['entries']} entries")
    for w in ex.results["image-verify"].info.get("workloads", []):
        print(f"  verified in chroot: {w['name']} golden_match={w['golden_match']} "
              f"allocator_in_effect={w['allocator_in_effect']} ({w['host_settings']})")
    print(f"run it: skopeo copy oci:{s['layout']}:{image.layout_tag(s['tag'])} docker-daemon:{s['tag']}   "
          f"or unpack: umoci unpack --image {s['layout']}:{image.layout_tag(s['tag'])} DIR && chroot DIR/rootfs ...")


def cmd_bolt_check(args, console: Console) -> int:
    """0: every file can be BOLT-optimized; 1: at least one cannot (reasons printed); 2: bad input."""
    verdicts = [bolt.assess(bolt.read_elf(f)) for f in args.files]
    if args.json:
        print(json.dumps([{"file": v.facts.path, "ok": v.ok, "route": v.route, "kind": v.facts.kind,
                           "machine": v.facts.machine,
                           "symbols": v.facts.symbols, "code_relocations": list(v.facts.code_relocations),
                           "bolted": v.facts.bolted, "reasons": list(v.reasons), "needs": list(v.needs)}
                          for v in verdicts], indent=2))
    else:
        for v in verdicts:
            print(f"{v.facts.path}: {'can be BOLT-optimized' if v.ok else 'cannot be BOLT-optimized as it is'}")
            for n in v.notes:
                print(f"  - {n}")
            print(f"  - symbols: {'present (.symtab)' if v.facts.symbols else 'stripped'}")
            for r in v.reasons:
                print(f"  x {r}")
            for n in v.needs:
                print(f"  needs: {n}")
    return 0 if all(v.ok for v in verdicts) else 1


def cmd_targets(args, console: Console) -> int:
    """Every registered target with its build system and whether it can be built here (no probe runs)."""
    tcs = toolchain.detect()
    rows = [(spec, targets.availability(spec, tcs)) for spec in targets.every()]
    if args.json:
        print(json.dumps([{"target": s.name, "system": s.system, "buildable": a.ok, "why": a.why,
                           "versions": list(s.sources), "description": s.description} for s, a in rows], indent=2))
        return 0
    print(f"{'target':<12} {'system':<10} {'here':<4} {'versions':<12} why")
    for spec, avail in rows:
        versions = ", ".join(spec.sources) or "--source DIR"
        print(f"{spec.name:<12} {spec.system:<10} {'yes' if avail.ok else 'no ':<4} {versions:<12} {avail.why}")
    return 0


PROFILES_DOC = REPO_ROOT / "docs" / "profiles.md"


def cmd_docs(args, console: Console) -> int:
    """docs/profiles.md from the profile schema: --write renders it, --check exits 1 when it is stale."""
    text = profmod.reference()
    if args.write:
        fsutil.write_text(PROFILES_DOC, text)
        print(f"wrote {PROFILES_DOC}")
        return 0
    have = PROFILES_DOC.read_text() if PROFILES_DOC.is_file() else ""
    if have != text:
        print(f"{PROFILES_DOC} is stale: run `python -m buildsys docs --write`", file=sys.stderr)
        return 1
    print(f"{PROFILES_DOC} is up to date")
    return 0


COMMANDS = {"targets": cmd_targets, "docs": cmd_docs, "toolchain": cmd_toolchain, "show-profile": cmd_show_profile,
            "build": cmd_build,
            "pipeline": cmd_pipeline, "image": cmd_image, "bolt-check": cmd_bolt_check,
            "bolt-wheel": lambda args, console: wheelbolt.run(args)}


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    console = Console(stderr=True)
    try:
        return COMMANDS[args.command](args, console)
    except HostpgoError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("interrupted; stages that did not finish left no stamp and will run again", file=sys.stderr)
        return 130
