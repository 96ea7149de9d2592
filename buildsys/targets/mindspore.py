"""The MindSpore recipe: the user's checkout built by its own build.sh into a wheel, PGO-trained on the runtime
workloads.

Entry point: `bash build.sh -e cpu|ascend -j N`, not the CMake it drives: build.sh turns `-e` into the right set of
CMake switches (backend, MindData, glog, SIMD level, ...) for each release, and keeping it means a checkout builds as
its own documentation says. build.sh passes no -D arguments through, so the flags go through the one CMake door it
leaves open: the CMAKE_TOOLCHAIN_FILE environment variable (CMake >= 3.21), whose file sets the compile rule with
the profile's flags *after* <FLAGS> (buildsys.systems.cmake.toolchain_file). That matters because MindSpore's
CMakeLists.txt sets CMAKE_CXX_FLAGS_RELEASE to "$ENV{CXXFLAGS} -O2 ...": a normal variable (a cache entry cannot
override it) with the environment's flags *before* its -O2. On the rule's tail the profile's -O level is the last
one on every compile line of MindSpore's own code, and the build stage checks that on every line of
compile_commands.json before it accepts the wheel.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from hostpgo import fsutil

from .. import targets as registry
from ..core.stages import Call, ChannelFlag, Cmd, Stage, StageContext, digest
from ..errors import HostpgoError, InputError
from ..pipeline import patches, wheels
from ..pipeline import pgo as pgomod
from ..systems import cmake
from ..toolchain.flags import ResolvedFlags
from . import Request

SPEC = registry.get("mindspore")
DATA = SPEC.recipe
NOT_REACHED = (
    "the profile's flags reach MindSpore's own code only (every compile of its CMake project: the rule's tail); they "
    "do not reach the third-party libraries mindspore_add_pkg fetches and builds at configure time (each is its own "
    "CMake or configure run with that package's flags, e.g. its <pkg>_CXXFLAGS with -O2; the toolchain file skips "
    "any CMAKE_SOURCE_DIR but MindSpore's), prebuilt libraries taken from the mirror, kernels AKG or the graph "
    "compiler generate at run time, or CANN's libraries (ascend)",
    "CFLAGS/CXXFLAGS are not set: MindSpore puts $ENV{CXXFLAGS} before its own -O2 in CMAKE_CXX_FLAGS_RELEASE, so "
    "through the environment a level would lose",
)


def _version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split(".")[:3] if x.isdigit())


def prepare(req: Request) -> wheels.Inputs:
    """MindSpore's inputs: the checkout recognised, the offline dependency source checked, the interpreter found."""
    need = tuple(DATA["recognise"])
    root = wheels.require_source("mindspore", req.user_source, need, DATA["version_file"])
    version = wheels.read_version((root / DATA["version_file"]).read_text(), str(root / DATA["version_file"]))
    device = req.arg("device") or "cpu"
    environ = {}
    mirror, cache = DATA["mirror_env"], DATA["cache_env"]
    if os.environ.get(mirror):
        environ[mirror] = os.environ[mirror]
    cache_dir = os.environ.get(cache)
    if cache_dir:
        if not Path(cache_dir).is_dir() or not any(Path(cache_dir).iterdir()):
            raise InputError(f"environment variable {cache}={cache_dir}: not a prepared dependency cache (missing or "
                             "empty directory)")
        environ[cache] = cache_dir
    if not environ:
        raise InputError(f"MindSpore's configure fetches every third-party library (mindspore_add_pkg: URL+MD5 or git) "
                         f"and this build must work offline: set {mirror} to a mirror of those archives, or {cache} to "
                         "a cache a previous build prepared (build/mindspore/.mslib of an online build); neither "
                         "is set")
    if device == "ascend":
        cann = os.environ.get("ASCEND_HOME_PATH") or ("/usr/local/Ascend" if Path("/usr/local/Ascend").is_dir() else "")
        if not cann:
            raise InputError("--device ascend needs CANN: set ASCEND_HOME_PATH (or install it under /usr/local/Ascend)")
        environ["ASCEND_HOME_PATH"] = cann
    python, origin = wheels.optimized_python(req.work, req.profile, req.arg("python"))
    notes = list(req.compiler_notes)
    comp = req.compiler
    if comp.family == "gcc" and _version_tuple(comp.version) > _version_tuple(DATA["gcc_tested_up_to"]):
        notes.append(f"MindSpore warns on GCC newer than {DATA['gcc_tested_up_to']} and this build uses GCC "
                     f"{comp.version}: it is outside the range MindSpore tests with")
    if comp.family != "gcc":
        notes.append(f"MindSpore's -Wall -Werror meets {comp.family} warnings GCC does not give: policy -Wno-error "
                     "(on the compile rule's tail, after MindSpore's -Werror), so warnings stay visible in the log "
                     "and do not stop the build")
    return wheels.Inputs(
        target="mindspore", profile=req.profile, compiler=comp, host=req.toolchains.host, work=req.work,
        checkout=wheels.checkout(root, version, need), patches=patches.series("mindspore", version),
        tasks=wheels.training_tasks(DATA["training"], "mindspore") if req.profile.optimize.pgo == "on" else (),
        python=python, python_origin=origin, jobs=req.jobs, options={"device": device}, environ=environ,
        build_requires=tuple(DATA["build_requires"]), compiler_notes=tuple(notes), profile_data=req.profile_data)


def warning_policy(family: str, variant: str) -> list[str]:
    """Flags after MindSpore's -Werror: clang/BiSheng warn where GCC does not; GCC's profile-use warnings too."""
    if family != "gcc":
        return ["-Wno-error"]
    if variant == "optimized":
        return ["-Wno-error=missing-profile", "-Wno-error=coverage-mismatch"]
    return []


def check_compile_lines(commands: Path, opt: str, must_have: str = "") -> dict:
    """Read compile_commands.json: every line's last -O must be the profile's (and carry `must_have`)."""
    try:
        entries = json.loads(commands.read_text())
    except (OSError, ValueError) as e:
        raise HostpgoError(f"{commands}: cannot read the compile lines ({e}); the toolchain file did not take effect "
                           "(CMake < 3.21 ignores the CMAKE_TOOLCHAIN_FILE environment variable)") from None
    import shlex
    lost, missing = [], []
    for e in entries:
        argv = e.get("arguments") or shlex.split(e["command"])
        if wheels.last_level(argv) != opt:
            lost.append(f"{e['file']}: last level {wheels.last_level(argv)}")
        if must_have and not any(a.startswith(must_have) for a in argv):
            missing.append(e["file"])
    if not entries or lost or missing:
        raise HostpgoError(f"{commands}: {len(entries)} compile lines; the profile's {opt} lost on {len(lost)} "
                           f"({'; '.join(lost[:5])}), {must_have or '-'} missing on {len(missing)}")
    return {"compile_lines": len(entries), "last_level": opt, "checked_flag": must_have}


def build_step(inp: wheels.Inputs):
    """The recipe's build stage for one variant: toolchain file, build.sh, the compile-line check, the wheel."""
    def step(name: str, variant: str, rf: ResolvedFlags, tree: Path, wheel_dir: Path, env: dict[str, str]) -> Stage:
        opt = f"-{inp.profile.optimize.opt}"
        tail = [f.value for f in rf.cflags] + warning_policy(inp.compiler.family, variant)
        link = [f.value for f in rf.ldflags]
        toolchain = wheel_dir.with_name(wheel_dir.name + "-toolchain.cmake")
        text = cmake.toolchain_file(tools=rf.tools, compile_tail=tail, link=link, source_dir=tree)
        device = inp.options["device"]
        argv = ("bash", str(tree / "build.sh"), "-e", device, "-j", str(inp.jobs))
        run_env = {**env, "CMAKE_TOOLCHAIN_FILE": str(toolchain), **{k: v for k, v in rf.tools.items()
                                                                    if k in ("CC", "CXX")}}
        commands = tree / "build" / "mindspore" / "compile_commands.json"
        audit = wheel_dir.with_name(wheel_dir.name + "-compile_commands.json")
        probe = next((f.value.split("=")[0] for f in rf.cflags if f.value.startswith("-fprofile")), "")

        def clear(ctx: StageContext) -> None:
            for d in (tree / "build", tree / "output", wheel_dir):
                shutil.rmtree(d, ignore_errors=True)
            wheel_dir.mkdir(parents=True)
            fsutil.write_text(toolchain, text)

        def check(ctx: StageContext) -> None:
            ctx.info.update(check_compile_lines(commands, opt, probe))
            shutil.copy2(commands, audit)
            ctx.info["compile_commands"] = str(audit)

        def collect(ctx: StageContext) -> None:
            found = sorted((tree).glob(DATA["wheel_glob"]))
            if len(found) != 1:
                raise HostpgoError(f"build.sh left {len(found)} wheels matching {DATA['wheel_glob']} in {tree}")
            shutil.move(str(found[0]), wheel_dir / found[0].name)
            ctx.info["wheel"] = found[0].name

        flags = (ChannelFlag("env", "CMAKE_TOOLCHAIN_FILE", str(toolchain), "engine: build.sh passes no -D through; "
                             "CMake >= 3.21 reads the toolchain file from this variable"),
                 *(ChannelFlag("toolchain-file", "CMAKE_CXX_COMPILE_OBJECT", f.value,
                               "optimize.opt (the rule's tail: after MindSpore's own -O2, so it wins)"
                               if f.value == opt else f.why) for f in rf.cflags),
                 *(ChannelFlag("toolchain-file", "CMAKE_CXX_COMPILE_OBJECT", v, "warning policy (after -Werror)")
                   for v in warning_policy(inp.compiler.family, variant)),
                 *(ChannelFlag("toolchain-file", "CMAKE_SHARED_LINKER_FLAGS_INIT", f.value, f.why) for f in rf.ldflags),
                 *(ChannelFlag("env", k, v, "offline dependencies / backend") for k, v in sorted(inp.environ.items())),
                 *(ChannelFlag("env", k, v, "engine: build-time runs keep out of the training profile")
                   for k, v in pgomod.build_time_env(inp.compiler, tree).items() if variant == "instrumented"))
        key = digest({"stage": name, "argv": argv, "toolchain": text, "env": {k: v for k, v in run_env.items()
                                                                              if k != "PATH"}})
        return Stage(name, f"build.sh -e {device} ({variant}) -> wheel", key,
                     (Call(f"clear {tree}/build, {tree}/output, {wheel_dir}; write {toolchain}", clear),
                      Cmd(argv, env=run_env, cwd=tree, timeout=12 * 3600),
                      Call(f"check {commands}: every compile line's last -O is {opt}"
                           + (f" and carries {probe}" if probe else "") + f"; keep a copy as {audit}", check),
                      Call(f"move {tree}/{DATA['wheel_glob']} -> {wheel_dir}", collect)),
                     outputs=(audit,), flags=flags, notes=NOT_REACHED if variant != "instrumented" else ())
    return step


def smoke(inp: wheels.Inputs):
    """MindSpore's own CPU checks present in the checkout (run on the installed wheel, outside the source tree)."""
    found = [(path, runner) for path, runner in DATA["smoke"] if (inp.checkout.root / path).is_file()]

    def actions(python: str, tree: Path, env: dict[str, str]) -> list[Cmd | Call]:
        out: list[Cmd | Call] = []
        if any(r == "pytest" for _p, r in found):
            out.append(Cmd((python, "-m", "pip", "install", "pytest"), timeout=900))
        for path, runner in found:
            argv = ((python, str(tree / path)) if runner == "script"
                    else (python, "-m", "pytest", "-q", str(tree / path)))
            out.append(Cmd(argv, env=env, cwd=Path(python).parent.parent, timeout=1800))
        return out
    return actions, found


def plan(inp: wheels.Inputs):
    smoke_actions, found = smoke(inp)
    notes = ("entry point: build.sh (it maps -e to each release's CMake switches; it passes no -D through, so the "
             "flags travel in a toolchain file named by CMAKE_TOOLCHAIN_FILE)",
             *NOT_REACHED,
             "smoke tests: " + (", ".join(p for p, _r in found) if found
                                else "none of the known ones in this checkout"))
    recipe = wheels.Recipe(build=build_step(inp), import_name="mindspore", smoke=smoke_actions, notes=notes,
                           summary={"entry_point": f"bash build.sh -e {inp.options['device']} -j {inp.jobs}",
                                    "dependencies": ", ".join(f"{k}={v}" for k, v in sorted(inp.environ.items()))})
    return wheels.plan(inp, recipe)
