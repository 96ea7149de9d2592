"""`python -m hostenv`: resolve host settings and print them, or start a process (or precompile) under them."""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from collections.abc import Sequence

from hostpgo.errors import HostpgoError

from . import allocators, launch
from . import precompile as precompile_mod
from .settings import (
    ENV_SETTINGS,
    HostSettings,
    from_layered,
    reference,
    resolve_layered,
    settings_dir,
)

COMMANDS = {
    "show": "print the effective settings, where each value came from, and the environment delta (JSON)",
    "env": "print the environment delta as shell `export` lines",
    "exec": "run CMD ... with the environment delta (allocator preload, tunables, settings) and, when CMD is a "
            "Python interpreter, the settings' interpreter options (-X frozen_modules)",
    "precompile": "compile PATHs (default: this interpreter's site-packages and hostpgo's start-up packages) to "
                  "pycs of startup.bytecode mode when startup.precompile is true; prints a JSON summary",
}


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m hostenv",
                                 description="Resolve host settings (profiles/host/NAME.toml); print them, or run "
                                             "a command under them. Reference: docs/host-settings.md.")
    sub = ap.add_subparsers(dest="command", required=True)
    for cmd, text in COMMANDS.items():
        p = sub.add_parser(cmd, help=text, description=text)
        p.add_argument("settings", help="a name under profiles/host/ (e.g. jemalloc), a path, or `default`")
        p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                       help="override one key (after the file and HOSTPGO_HOST_SET); repeat")
        if cmd == "exec":
            p.add_argument("cmd", nargs=argparse.REMAINDER, help="-- then the command")
        if cmd == "precompile":
            p.add_argument("paths", nargs="*", metavar="PATH", help="directories or files to compile")
            p.add_argument("--workers", type=int, default=None, help="compiling processes (default: one per CPU)")
    sub.add_parser("allocators", help="print the allocator table and what is found on this machine (JSON)")
    sub.add_parser("reference", help="print the host-settings reference (docs/host-settings.md)")
    return ap


def _allocators() -> dict:
    out = {}
    for name, spec in allocators.table().items():
        try:
            found = allocators.find(name, query_version=False).to_json()
        except HostpgoError as exc:
            found = {"error": str(exc)}
        out[name] = {"sonames": list(spec.sonames), "tunables": spec.tunables, "packages": dict(spec.packages),
                     "found": found}
    return out


def _exec(settings: HostSettings, cmd: list[str]) -> int:
    if cmd and cmd[0] == "--":
        cmd = cmd[1:]
    if not cmd:
        print("error: exec: give the command after --", file=sys.stderr)
        return 2
    argv, delta = launch.exec_argv(settings, cmd)
    print("RUN: " + shlex.join(argv) + "  [env: " +
          " ".join(f"{k}={shlex.quote(v)}" for k, v in delta.items() if k != ENV_SETTINGS) +
          f" {ENV_SETTINGS}=<{settings.name}>]", file=sys.stderr)
    sys.stderr.flush()
    try:
        os.execvpe(argv[0], argv, {**os.environ, **delta})
    except OSError as exc:
        print(f"error: cannot execute {argv[0]!r}: {exc.strerror}", file=sys.stderr)
        return 127
    return 0  # not reached


def run(args: argparse.Namespace) -> int:
    """One subcommand; library errors propagate (main maps them)."""
    if args.command == "reference":
        sys.stdout.write(reference())
        return 0
    if args.command == "allocators":
        print(json.dumps(_allocators(), indent=1))
        return 0
    ref = None if args.settings == "default" and not (settings_dir() / "default.toml").is_file() else args.settings
    layered = resolve_layered(ref, args.set)
    settings = from_layered(layered)
    if args.command == "exec":
        return _exec(settings, list(args.cmd))
    if args.command == "precompile":
        if not settings.startup.precompile:
            print(f"precompile: {settings.name}: startup.precompile is false; nothing compiled", file=sys.stderr)
            print(json.dumps({"settings": settings.name, "precompile": False, "files": 0}))
            return 0
        summary = precompile_mod.precompile(settings, args.paths, workers=args.workers)
        for w in summary["warnings"]:
            print(f"warning: {w}", file=sys.stderr)
        print(json.dumps({**summary, "precompile": True}, indent=1))
        return 0
    delta = launch.process_env(settings)
    if args.command == "show":
        origins = {k: str(o) for k, o in sorted(layered.origins.items())}
        print(json.dumps({"settings": settings.to_json(), "summary": settings.summary(), "origins": origins,
                          "env": delta}, indent=1))
        return 0
    for k, v in delta.items():
        print(f"export {k}={shlex.quote(v)}")
    if launch.interpreter_args(settings):
        print(f"# and start the interpreter with: {' '.join(launch.interpreter_args(settings))}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except HostpgoError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
