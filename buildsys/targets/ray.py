"""The Ray recipe: the user's checkout built by `pip wheel python/` (Ray's setup.py runs `bazel build //:ray_pkg`)
into a wheel, PGO-trained on Ray actor calls (every worker process writes its own raw profile).

Flags go into a generated .user.bazelrc at the workspace root, which Ray's .bazelrc try-imports last, so its lines
come after Ray's own: `--copt` (C and C++), `--linkopt`, `--host_copt` (the level only: tools Bazel builds and runs
during the build are neither instrumented nor profile-guided), `--config=llvm` for clang and BiSheng (Ray's clang
configuration), and `startup --output_user_root` so Bazel's output tree lives in hostpgo's work area. A checkout
whose .bazelrc lacks the try-import gets the same options through BAZEL_ARGS, which setup.py splits with shlex and
appends to `bazel build`. On each compile line Bazel puts its compilation mode's flags (opt: -O2) before every
--copt, so the profile's level wins; the build stage checks it on every CppCompile action (`bazel aquery`).
SKIP_THIRDPARTY_INSTALL=1 stops setup.py from pip-installing psutil, setproctitle and colorama at build time.
"""

from __future__ import annotations

import re
import shlex
import shutil
from pathlib import Path

from hostpgo import fsutil

from .. import targets as registry
from ..core.stages import Call, ChannelFlag, Cmd, Stage, StageContext, digest
from ..errors import HostpgoError, InputError
from ..pipeline import patches, wheels
from ..toolchain.flags import ResolvedFlags
from . import Request

SPEC = registry.get("ray")
DATA = SPEC.recipe
NOT_REACHED = (
    "--copt/--linkopt reach every C/C++ file Bazel compiles for //:ray_pkg: Ray's own code (_raylet.so, the core "
    "worker, raylet, GCS) and the dependencies it builds from source with Bazel rules (abseil, gRPC, protobuf, "
    "boost, ...); a target's own copts come after --copt, so one that sets a level wins on its lines (the build "
    "stage lists any)",
    "never seen by --copt: libraries Ray builds with their own build systems through rules_foreign_cc or genrules "
    "(RocksDB where it is a cmake() rule, jemalloc's configure_make, redis's make), which get only the flags those "
    "rules pass; prebuilt binaries Bazel downloads; the dashboard's JavaScript",
)


def prepare(req: Request) -> wheels.Inputs:
    """Ray's inputs: the checkout recognised (version from python/ray/_version.py), the interpreter found."""
    need = tuple(DATA["recognise"])
    root = wheels.require_source("ray", req.user_source, need, DATA["version_file"])
    if not ((root / "WORKSPACE").exists() or (root / "WORKSPACE.bazel").exists() or (root / "MODULE.bazel").exists()):
        raise InputError(f"--source {root}: not a Bazel workspace (no WORKSPACE, WORKSPACE.bazel or MODULE.bazel); "
                         f"a Ray checkout has one beside {', '.join(need)}")
    target = DATA["package_target"].split(":")[-1]
    if not re.search(rf'name\s*=\s*"{re.escape(target)}"', (root / "BUILD.bazel").read_text()):
        raise InputError(f"--source {root}: BUILD.bazel defines no {DATA['package_target']} (Ray's setup.py builds it)")
    vfile = root / DATA["version_file"]
    version = wheels.read_version(vfile.read_text(), str(vfile), DATA["version_pattern"])
    python, origin = wheels.optimized_python(req.work, req.profile, req.arg("python"))
    pgo = req.profile.optimize.pgo == "on"
    return wheels.Inputs(
        target="ray", profile=req.profile, compiler=req.compiler, host=req.toolchains.host, work=req.work,
        checkout=wheels.checkout(root, version, need), patches=patches.series("ray", version),
        tasks=wheels.training_tasks(DATA["training"], "ray") if pgo else (), python=python, python_origin=origin,
        jobs=req.jobs, options={"channel": "bazelrc" if uses_bazelrc(root) else "BAZEL_ARGS"},
        environ={"SKIP_THIRDPARTY_INSTALL": "1"}, build_requires=tuple(DATA["build_requires"]),
        compiler_notes=req.compiler_notes, profile_data=req.profile_data)


def uses_bazelrc(root: Path) -> bool:
    """True when the checkout's .bazelrc try-imports .user.bazelrc (then the flags go there)."""
    try:
        return DATA["user_bazelrc_import"] in (root / ".bazelrc").read_text()
    except OSError:
        return False


def has_llvm_config(root: Path) -> bool:
    try:
        return "build:llvm" in (root / ".bazelrc").read_text()
    except OSError:
        return False


def bazel_options(inp: wheels.Inputs, rf: ResolvedFlags, output_root: Path) -> list[tuple[str, str, str]]:
    """(channel, option, why) of every Bazel option, in order; `startup` options first."""
    opt = f"-{inp.profile.optimize.opt}"
    out = [("startup", f"--output_user_root={output_root}", "engine: Bazel's output tree in the work area")]
    if inp.compiler.family != "gcc" and has_llvm_config(inp.checkout.root):
        out.append(("--config", "--config=llvm", "Ray's clang configuration (toolchain family "
                                                 f"{inp.compiler.family})"))
    for var in ("CC", "CXX"):
        if var in rf.tools:
            out.append(("--repo_env", f"--repo_env={var}={rf.tools[var]}", "toolchain (detected): Bazel's C++ "
                                                                          "toolchain is configured from it"))
            out.append(("--action_env", f"--action_env={var}={rf.tools[var]}", "toolchain (detected)"))
    out.append(("--compilation_mode", "--compilation_mode=opt", "engine: its -O2 comes before every --copt"))
    out += [("--copt", f"--copt={f.value}", "optimize.opt (after the compilation mode's -O2, so it wins)"
             if f.value == opt else f.why) for f in rf.cflags]
    out.append(("--host_copt", f"--host_copt={opt}", "optimize.opt for tools built and run during the build (not "
                                                     "instrumented, not profile-guided)"))
    out += [("--linkopt", f"--linkopt={f.value}", f.why) for f in rf.ldflags]
    out.append(("--jobs", f"--jobs={inp.jobs}", "engine: --jobs"))
    return out


def user_bazelrc(options: list[tuple[str, str, str]]) -> str:
    lines = ["# Written by hostpgo (buildsys/targets/ray.py); Ray's .bazelrc try-imports this file last."]
    lines += [f"startup {o}" if ch == "startup" else f"build {o}" for ch, o, _why in options]
    return "\n".join(lines) + "\n"


def parse_aquery(text: str) -> list[tuple[str, list[str]]]:
    """(target label, argv) of every action in `bazel aquery --output=text` output."""
    out, target, cmd = [], "", None
    for line in text.splitlines():
        s = line.strip()
        if s.startswith("Target: "):
            target = s[len("Target: "):]
        elif s.startswith("Command Line: (exec "):
            cmd = [s[len("Command Line: (exec "):]]
        elif cmd is not None:
            cmd.append(s)
        if cmd is not None and s.endswith(")"):
            joined = " ".join(part.rstrip("\\").strip() for part in cmd)[:-1]
            out.append((target, shlex.split(joined)))
            cmd = None
    return out


def check_compile_actions(actions: list[tuple[str, list[str]]], opt: str, must_have: str = "") -> dict:
    """Every CppCompile of the main workspace must end at the profile's level (and carry `must_have`); external
    repositories that set their own level are reported, not refused."""
    own = [(t, a) for t, a in actions if t.startswith("//")]
    lost = [t for t, a in own if wheels.last_level(a) != opt]
    missing = [t for t, a in own if must_have and not any(x.startswith(must_have) for x in a)]
    external_lost = sorted({t for t, a in actions if not t.startswith("//") and wheels.last_level(a) != opt})
    if not own or lost or missing:
        raise HostpgoError(f"bazel aquery: {len(own)} CppCompile actions of the workspace; {opt} lost on "
                           f"{', '.join(lost[:5]) or 'none'}; {must_have or '-'} missing on "
                           f"{', '.join(missing[:5]) or 'none'}")
    return {"compile_actions": len(actions), "workspace_actions": len(own), "last_level": opt,
            "checked_flag": must_have, "external_own_level": external_lost[:50]}


def build_step(inp: wheels.Inputs):
    """The recipe's build stage for one variant: .user.bazelrc (or BAZEL_ARGS), pip wheel python/, the check."""
    def step(name: str, variant: str, rf: ResolvedFlags, tree: Path, wheel_dir: Path, env: dict[str, str]) -> Stage:
        opt = f"-{inp.profile.optimize.opt}"
        output_root = inp.work.build / f"{inp.build_id}-bazel"
        options = bazel_options(inp, rf, output_root)
        via_rc = inp.options["channel"] == "bazelrc"
        rc_text = user_bazelrc(options)
        run_env = dict(env)
        startup = [o for ch, o, _w in options if ch == "startup"]
        if not via_rc:
            run_env["BAZEL_ARGS"] = shlex.join(o for ch, o, _w in options if ch != "startup")
        venv_python = str(Path(env["VIRTUAL_ENV"]) / "bin" / "python")
        argv = (venv_python, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w",
                str(wheel_dir), str(tree / "python"))
        probe = next((f.value.split("=")[0] for f in rf.cflags if f.value.startswith("-fprofile")), "")
        query = f'mnemonic("CppCompile", deps({DATA["package_target"]}))'
        bazel_rc = [] if via_rc else [o for ch, o, _w in options if ch != "startup"]
        aquery = ("bazel", *([] if via_rc else startup), "aquery", "--output=text", *bazel_rc, query)
        audit = wheel_dir.with_name(wheel_dir.name + "-aquery.txt")

        def prepare_tree(ctx: StageContext) -> None:
            shutil.rmtree(wheel_dir, ignore_errors=True)
            wheel_dir.mkdir(parents=True)
            for d in (tree / "python" / "build",):
                shutil.rmtree(d, ignore_errors=True)
            if via_rc:
                fsutil.write_text(tree / ".user.bazelrc", rc_text)

        def check(ctx: StageContext) -> None:
            lines: list[str] = []
            ctx.runner.run(list(aquery), cwd=tree, env=run_env, collect=lines, timeout=3600)
            fsutil.write_text(audit, "\n".join(lines) + "\n")
            ctx.info.update(check_compile_actions(parse_aquery("\n".join(lines)), opt, probe))
            ctx.info["aquery"] = str(audit)

        flags = (*(ChannelFlag("bazelrc" if via_rc else ("BAZEL_ARGS" if ch != "startup" else "startup"), ch, o, why)
                   for ch, o, why in options),
                 *(ChannelFlag("env", k, v, "offline: no pip install at build time" if k == "SKIP_THIRDPARTY_INSTALL"
                               else "engine") for k, v in sorted(inp.environ.items())))
        key = digest({"stage": name, "argv": argv, "bazelrc": rc_text, "via_rc": via_rc,
                      "env": {k: v for k, v in run_env.items() if k != "PATH"}})
        what = (f"write {tree}/.user.bazelrc ({len(options)} options)" if via_rc
                else "BAZEL_ARGS in the environment (the checkout's .bazelrc does not try-import .user.bazelrc)")
        return Stage(name, f"pip wheel python/ ({variant}: bazel build {DATA['package_target']}) -> wheel", key,
                     (Call(f"clear {wheel_dir}; {what}", prepare_tree),
                      Cmd(argv, env=run_env, cwd=tree, timeout=12 * 3600),
                      Call(f"{' '.join(aquery)}: every CppCompile of the workspace ends at {opt}"
                           + (f" and carries {probe}" if probe else "") + f"; kept as {audit}", check),
                      Cmd(("bazel", *([] if via_rc else startup), "shutdown"), env=run_env, cwd=tree, timeout=300)),
                     outputs=(audit,), flags=flags, notes=NOT_REACHED if variant != "instrumented" else ())
    return step


def smoke(inp: wheels.Inputs):
    """A local cluster's actor round trip with the installed wheel (run outside the source tree)."""
    script, *args = DATA["round_trip"]

    def actions(python: str, tree: Path, env: dict[str, str]) -> list[Cmd | Call]:
        from ..core.paths import REPO_ROOT
        return [Cmd((python, str(REPO_ROOT / script), *args), env=env, cwd=Path(python).parent.parent, timeout=900)]
    return actions


def plan(inp: wheels.Inputs):
    task = inp.tasks[0] if inp.tasks else None
    golden = task.workloads if task is not None and task.kind == "workloads" else ()
    notes = [f"entry point: pip wheel python/ (setup.py runs bazel build {DATA['package_target']}); flags through "
             + (".user.bazelrc (the checkout's .bazelrc try-imports it)" if inp.options["channel"] == "bazelrc"
                else "BAZEL_ARGS (the checkout's .bazelrc does not try-import .user.bazelrc)"),
             *NOT_REACHED,
             "Bazel's action cache keys on the flags, not on the profile file's content: each merge writes a new "
             "file name into the profile store, so a retrained profile rebuilds every action"]
    if task is not None:
        notes.append(f"training: {task.name}" + ("" if golden else " (stand-in: ray-decode, the runtime's Ray "
                                                 "workload, is not registered yet; verify checks no golden digest "
                                                 "until it is)"))
    if inp.compiler.family != "gcc" and not has_llvm_config(inp.checkout.root):
        notes.append("the checkout's .bazelrc has no build:llvm config; clang reaches Bazel through --repo_env=CC only")
    recipe = wheels.Recipe(build=build_step(inp), import_name="ray", smoke=smoke(inp), notes=tuple(notes),
                           summary={"entry_point": "pip wheel python/ -> bazel build " + DATA["package_target"],
                                    "flag_channel": inp.options["channel"]})
    return wheels.plan(inp, recipe, verify_workloads=golden)
