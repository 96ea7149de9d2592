"""The extension recipe: a package's wheel rebuilt from its sdist (setuptools, scikit-build-core, meson-python;
Cython through them) by a chosen interpreter, with the profile's flags through the back end's own channel
(buildsys.systems.pep517) and PGO stages, proven on every compile line; a pure planner plus `prepare`.

    python -m buildsys build extension --package NAME[==VERSION] --profile NAME [--interp PYTHON]
    python -m buildsys build extension --source DIR|SDIST --profile NAME [--interp PYTHON]
    python -m buildsys build extension --package hostpgo --profile NAME [--source CHECKOUT] [--interp PYTHON]

A local project named in extension.toml's [recipe.projects] (hostpgo: this checkout, whose wheel carries
runtime._hostpath) is built from its tree, never from the index: `--package NAME` takes the entry's tree (relative
to the checkout), `--source DIR` another checkout of it; only the entry's `include` paths are copied and digested.

Stages (PGO profiles; without PGO only build -> verify -> install follow build-env):

    source                 the sdist (fetched into .hostpgo/sources/extension/ by prepare: pip download
                           --no-binary NAME --no-deps; its sha256 checked against extension.toml when pinned there,
                           recorded always) or the local tree (a project's `include` only), unpacked or copied
                           into .hostpgo/src/extension-NAME-VER-<key>
    runtime-deps           the runtime's wheels (shared with cpython), when a training task or verify runs workloads
    build-env              a venv of the interpreter with `build` and the back end's requirements from the index
                           (static from pyproject.toml, then the back end's get_requires_for_build_wheel)
    build-instrumented     the pristine tree copied to the FIXED build directory .hostpgo/build/<build id>/, built
                           in place by `python -m build --wheel --no-isolation`; compile lines checked
    install-instrumented   a venv of the interpreter with the instrumented wheel
    train, merge           buildsys.pipeline.pgo: the package's task (profiles/tasks/extension-NAME.toml) or the
                           profile's tasks, one raw profile per process; merged into the profile store
    build                  the same directory, the same path, with -fprofile-instr-use (or -fprofile-use)
    verify                 a venv with the optimized wheel: import, the package's check snippet, its `tests`
                           (pytest, against the installed wheel), the runtime workloads' golden digests (and, with
                           `host_path`, that each record names that host hot path)
    install                the wheel into .hostpgo/wheels/<build id>/ with hostpgo-manifest.json (sdist sha256,
                           flags per stage with channel, profile data digest, compile-line proof)
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import tarfile
import tomllib
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from hostpgo import fsutil
from hostpgo.runner import Runner, format_command

from .. import targets as targets_registry
from ..core import manifest
from ..core.paths import REPO_ROOT, WorkArea
from ..core.stages import BuildPlan, Call, ChannelFlag, Cmd, Stage, StageContext, digest
from ..errors import HostpgoError, InputError
from ..pipeline import pgo as pgomod
from ..pipeline import sources, training
from ..pipeline.training import TrainingTask, runtime_digest
from ..systems import pep517
from ..toolchain import Compiler, Host
from ..toolchain import flags as flagmod
from ..toolchain.profile import Profile
from . import Request

TARGET = "extension"
SPEC = targets_registry.get(TARGET)
"""This target's data (buildsys/targets/extension.toml)."""
PROJECTS: Mapping[str, Mapping[str, Any]] = SPEC.recipe.get("projects", {})
"""Local projects built from a tree by name (extension.toml [recipe.projects.NAME]: tree, include, ships_runtime)."""
LOCAL_SKIP_DIRS = (".git", "build", "__pycache__")
LOCAL_SKIP_SUFFIXES = (".so", ".pyc")
"""What is never copied from a local tree (a compiled module there would shadow the build's own)."""
STAGE_ORDER = ("source", "runtime-deps", "build-env", "build-instrumented", "install-instrumented", "train",
               "merge", "build", "verify", "install")
PACKAGE_RE = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(==([A-Za-z0-9.+!_-]+))?$")
SDIST_RE = re.compile(r"^(?P<name>.+)-(?P<version>[0-9][^-]*)\.(tar\.gz|tgz|zip)$")
INTERP_PROBE = ("import json, sys, sysconfig; print(json.dumps({'version': sys.version.split()[0], "
                "'minor': '%d.%d' % sys.version_info[:2], 'cflags': sysconfig.get_config_var('CFLAGS') or '', "
                "'executable': sys.executable}))")
SETUPTOOLS_KEEP = ("-DNDEBUG", "-fwrapv")
"""Words of the interpreter's sysconfig CFLAGS every setuptools compile line must still carry (when the interpreter
has them): an environment CFLAGS would drop them in setuptools >= 75.7."""



@dataclass(frozen=True)
class Interpreter:
    """The interpreter the wheel is built by (probed once by prepare)."""

    python: Path
    version: str
    minor: str
    cflags: str
    """Its sysconfig CFLAGS (what setuptools puts first on a compile line)."""

    def identity(self) -> dict[str, str]:
        return {"python": str(self.python), "version": self.version, "cflags": self.cflags}


@dataclass(frozen=True)
class Package:
    """The package being rebuilt: where its source is and what its pyproject.toml says."""

    name: str
    version: str
    backend: str
    """setuptools, scikit-build-core or meson-python (buildsys.systems.pep517.BACKENDS)."""
    requires: tuple[str, ...]
    """build-system.requires."""
    sdist: Path | None
    """The verified sdist (None for a local tree)."""
    tree: Path | None
    """A local source tree given with --source DIR (None for an sdist)."""
    sha256: str
    """sha256 of the sdist, or the tree digest of a local tree."""
    origin: str
    """index (pip download), cache, or user (--source)."""
    topdir: str = ""
    pinned: bool = False
    """The sha256 was checked against extension.toml's [sources]."""
    cython: bool = False
    """Cython is among its build requirements (it generates C during the build)."""
    include: tuple[str, ...] = ()
    """A local project's paths (relative to its tree) that are copied and digested; empty: the whole tree."""
    ships_runtime: bool = False
    """The wheel holds the runtime itself (hostpgo): its workloads run from the venv, without the checkout on
    sys.path, so the wheel's runtime is the one imported."""

    @property
    def import_name(self) -> str:
        return str(self.verify.get("import", self.name.replace("-", "_")))

    @property
    def verify(self) -> Mapping[str, Any]:
        return SPEC.verify.get("packages", {}).get(self.name.lower(), {})


@dataclass(frozen=True)
class Inputs:
    """Everything the planner needs; all of it can be made up in a unit test (no compiler, no network)."""

    TARGET: ClassVar[str] = TARGET

    profile: Profile
    compiler: Compiler
    host: Host
    work: WorkArea
    package: Package
    interp: Interpreter
    tasks: tuple[TrainingTask, ...]
    jobs: int
    compiler_notes: tuple[str, ...] = ()
    profile_data: Path | None = None
    verify_workloads: tuple[str, ...] = ()

    @property
    def build_id(self) -> str:
        return f"{TARGET}-{self.package.name}-{self.package.version}-{self.profile.name}"

    def record(self) -> manifest.BuildRecord:
        pk = self.package
        return manifest.BuildRecord(
            target=TARGET, version=pk.version, profile=self.profile.to_dict(),
            toolchain={**self.compiler.identity(), "host": {"machine": self.host.machine, "os": self.host.os_id}},
            source={"file": pk.sdist.name if pk.sdist else str(pk.tree), "sha256": pk.sha256,
                    "kind": "sdist" if pk.sdist else "tree", "pinned": pk.pinned,
                    **({"include": list(pk.include)} if pk.include else {})},
            extra={"package": {"name": pk.name, "version": pk.version, "backend": pk.backend,
                               "requires": list(pk.requires), "cython": pk.cython},
                   "interpreter": self.interp.identity()})


# ---------------------------------------------------------------------------------------------
# prepare: the target's facts (the interpreter, the sdist and its pyproject.toml).


def default_interpreter(work: WorkArea) -> Path:
    """The pipeline's optimized interpreter when it is installed, else the running one."""
    from .. import engine
    built = work.install / f"cpython-3.11.2-{engine.DEFAULT_OPTIMIZED_PROFILE}" / "bin" / "python3"
    return built if built.exists() else Path(sys.executable)


def probe_interpreter(python: Path, runner: Runner) -> Interpreter:
    if not python.exists():
        raise InputError(f"--interp {python}: no such file")
    out = runner.capture([str(python), "-c", INTERP_PROBE], timeout=120).stdout
    d = json.loads(out.strip().splitlines()[-1])
    return Interpreter(python=python, version=d["version"], minor=d["minor"], cflags=d["cflags"])


def parse_package(text: str) -> tuple[str, str | None]:
    m = PACKAGE_RE.match(text.strip())
    if not m:
        raise InputError(f"--package {text!r}: expected NAME or NAME==VERSION")
    return m.group(1), m.group(3)


def sdist_name_version(path: Path) -> tuple[str, str]:
    m = SDIST_RE.match(path.name)
    if not m:
        raise InputError(f"{path}: not an sdist name (NAME-VERSION.tar.gz)")
    return m.group("name"), m.group("version")


def read_sdist_pyproject(sdist: Path) -> tuple[str, dict]:
    """(top directory, parsed pyproject.toml or {}) of an sdist, read without unpacking it."""
    with tarfile.open(sdist) as tar:
        names = tar.getnames()
        top = names[0].split("/")[0]
        try:
            f = tar.extractfile(f"{top}/pyproject.toml")
        except KeyError:
            return top, {}
        return top, tomllib.loads(f.read().decode()) if f else {}


def describe_build(data: Mapping[str, Any]) -> tuple[str, tuple[str, ...]]:
    """(back end, build requirements) from a parsed pyproject.toml (none: setuptools' legacy build)."""
    bs = data.get("build-system", {})
    try:
        backend = pep517.backend_of(bs.get("build-backend", ""))
    except ValueError as e:
        raise InputError(str(e)) from None
    return backend, tuple(bs.get("requires", ("setuptools>=40.8", "wheel") if not bs else ()))


def _pin(name: str, version: str) -> sources.PinnedSource | None:
    return sources.load_table(TARGET).get(f"{name}=={version}")


def fetch_sdist(name: str, version: str | None, work: WorkArea, runner: Runner) -> tuple[Path, str]:
    """The sdist of NAME[==VERSION] in the cache (.hostpgo/sources/extension/): a pinned one from the cache or its
    pinned url (sha256 checked by describe_package), anything else by `pip download --no-binary NAME --no-deps`.
    pip prepares the package's metadata, for which meson-python builds the whole wheel: such packages are pinned
    with their url in extension.toml (numpy), or given with --source."""
    cache = work.sources / TARGET
    pin = _pin(name, version) if version else None
    if pin is not None:
        if (cache / pin.file).is_file():
            return cache / pin.file, "cache"
        if pin.url:
            got = sources.from_url(pin, work, runner)
            if sources.sha256_of(got) != pin.sha256:
                got.unlink()
                raise InputError(f"{pin.url}: the download's sha256 is not the pinned {pin.sha256} "
                                 f"({SPEC.data_file}); it was deleted")
            cache.mkdir(parents=True, exist_ok=True)
            return fsutil.move_into_place(got, cache / pin.file), "url"
    tmp = work.tmp / f"sdist-{name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    spec = f"{name}=={version}" if version else name
    runner.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", name, "--dest", str(tmp), spec],
               timeout=1800)
    got = sorted(p for p in tmp.iterdir() if SDIST_RE.match(p.name))
    if len(got) != 1:
        raise HostpgoError(f"pip download {spec} left {[p.name for p in tmp.iterdir()]} in {tmp}, not one sdist")
    cache.mkdir(parents=True, exist_ok=True)
    dest = fsutil.move_into_place(got[0], cache / got[0].name)
    shutil.rmtree(tmp, ignore_errors=True)
    return dest, "index"


def describe_package(*, name: str | None, version: str | None, sdist: Path | None, tree: Path | None,
                     origin: str) -> Package:
    """The package's facts from an sdist (checked against a pin when there is one) or a local tree."""
    if sdist is not None:
        sname, sversion = sdist_name_version(sdist)
        name, version = name or sname, version or sversion
        top, data = read_sdist_pyproject(sdist)
        sha = sources.sha256_of(sdist)
        pin = _pin(name, version)
        if pin is not None and sha != pin.sha256:
            raise InputError(f"{sdist}: sha256 {sha}, pinned {pin.sha256} ({name}=={version} in {SPEC.data_file})")
        backend, requires = describe_build(data)
        return Package(name=name, version=version, backend=backend, requires=requires, sdist=sdist, tree=None,
                       sha256=sha, origin=origin, topdir=top, pinned=pin is not None,
                       cython=any(r.lower().startswith("cython") for r in requires))
    assert tree is not None
    pyproject = tree / "pyproject.toml"
    data = tomllib.loads(pyproject.read_text()) if pyproject.is_file() else {}
    if not data and not (tree / "setup.py").is_file():
        raise InputError(f"--source {tree}: neither pyproject.toml nor setup.py there")
    proj = data.get("project", {})
    declared = proj.get("name") or tree.name
    if name is not None and declared.lower() != name.lower():
        raise InputError(f"--source {tree}: its pyproject.toml names project {declared!r}, not {name!r}")
    name = name or declared
    have = proj.get("version") or _pkg_info_version(tree) or "0+local"
    if version is not None and version != have:
        raise InputError(f"{name}=={version}: the tree {tree} is version {have}")
    backend, requires = describe_build(data)
    entry = PROJECTS.get(name.lower(), {})
    include = tuple(entry.get("include", ()))
    sha = (files_digest(tree, local_files(tree, include)) if include
           else manifest.tree_digest(tree, skip_dirs=LOCAL_SKIP_DIRS))
    return Package(name=name, version=have, backend=backend, requires=requires, sdist=None, tree=tree,
                   sha256=sha, origin="user", cython=any(r.lower().startswith("cython") for r in requires),
                   include=include, ships_runtime=bool(entry.get("ships_runtime", False)))


def local_files(tree: Path, include: tuple[str, ...]) -> list[Path]:
    """The files (relative to `tree`) a local project's build is given: every file of each `include` path, less
    LOCAL_SKIP_DIRS and LOCAL_SKIP_SUFFIXES, sorted."""
    out: list[Path] = []
    for rel in include:
        top = tree / rel
        if not top.exists():
            raise InputError(f"{tree}: {rel!r} (extension.toml [recipe.projects] include) does not exist")
        for p in [top] if top.is_file() else top.rglob("*"):
            r = p.relative_to(tree)
            if p.is_file() and not set(r.parts) & set(LOCAL_SKIP_DIRS) and not p.name.endswith(LOCAL_SKIP_SUFFIXES):
                out.append(r)
    return sorted(set(out))


def files_digest(tree: Path, files: list[Path]) -> str:
    """sha256 over the relative paths and contents of `files` below `tree` (as manifest.tree_digest does)."""
    import hashlib
    h = hashlib.sha256()
    for r in files:
        h.update(str(r).encode() + b"\0")
        h.update(hashlib.sha256((tree / r).read_bytes()).digest())
    return h.hexdigest()


def project_tree(name: str, source: Path | None) -> Path:
    """The tree of the local project `name` (extension.toml [recipe.projects]): `source` when given, else the
    entry's tree relative to this checkout."""
    entry = PROJECTS[name.lower()]
    tree = source if source is not None else REPO_ROOT / str(entry.get("tree", "."))
    if not tree.is_dir():
        raise InputError(f"project {name}: {tree} is not a directory")
    return tree.resolve()


def _pkg_info_version(tree: Path) -> str | None:
    info = tree / "PKG-INFO"
    if info.is_file():
        for line in info.read_text(errors="replace").splitlines():
            if line.startswith("Version:"):
                return line.split(":", 1)[1].strip()
    return None


def training_tasks(profile: Profile, package: str) -> tuple[TrainingTask, ...]:
    """The package's own task (profiles/tasks/extension-NAME.toml) when there is one, else the profile's."""
    if profile.optimize.pgo != "on":
        return ()
    own = f"{TARGET}-{package.lower()}"
    return training.resolve((own,)) if own in training.registry() else training.resolve(profile.pgo.tasks)


def prepare(req: Request) -> Inputs:
    """The interpreter (probed), the sdist (fetched into the cache when needed) or tree, and its back end."""
    opts = {"package": req.arg("package"), "interp": req.arg("interp")}  # [cli_args] in extension.toml
    runner = Runner(req.work.logs / "extension-prepare.log")
    standin = req.allow_missing and opts.get("package") is None and req.user_source is None
    project = parse_package(opts["package"]) if opts.get("package") else None
    if project is not None and project[0].lower() not in PROJECTS:
        project = None
    if (opts.get("package") is None) == (req.user_source is None) and not standin and project is None:
        raise InputError("build extension needs exactly one of --package NAME[==VERSION] and --source DIR|SDIST "
                         f"(both only for a local project: {', '.join(sorted(PROJECTS)) or 'none'})")
    interp = probe_interpreter(Path(opts.get("interp") or default_interpreter(req.work)).absolute(), runner)
    if standin:  # planning only (show-profile): a setuptools package stands in for the one a build names
        pkg = Package(name="PACKAGE", version="VERSION", backend="setuptools", requires=("setuptools",), sdist=None,
                      tree=Path("<--source DIR>"), sha256="0" * 64, origin="user")
    elif project is not None:
        name, version = project
        tree = project_tree(name, req.user_source.resolve() if req.user_source is not None else None)
        pkg = describe_package(name=name, version=version, sdist=None, tree=tree, origin="user")
    elif req.user_source is not None:
        src = req.user_source.resolve()
        if src.is_dir():
            pkg = describe_package(name=None, version=None, sdist=None, tree=src, origin="user")
        elif src.is_file():
            pkg = describe_package(name=None, version=None, sdist=src, tree=None, origin="user")
        else:
            raise InputError(f"--source {src}: no such file or directory")
    else:
        name, version = parse_package(opts["package"])
        sdist, origin = fetch_sdist(name, version, req.work, runner)
        pkg = describe_package(name=name, version=version, sdist=sdist, tree=None, origin=origin)
    if req.profile_data is not None:
        pgomod.check_profile_data(req.profile_data, req.compiler, flag="--profile-data")
    return Inputs(profile=req.profile, compiler=req.compiler, host=req.toolchains.host, work=req.work, package=pkg,
                  interp=interp, tasks=training_tasks(req.profile, pkg.name), jobs=req.jobs,
                  compiler_notes=req.compiler_notes, profile_data=req.profile_data,
                  verify_workloads=tuple(pkg.verify.get("workloads", SPEC.verify.get("workloads", ()))))


# ---------------------------------------------------------------------------------------------
# Stage bodies (run by the executor).


def _unpack_or_copy(pkg: Package, dest: Path):
    def fn(ctx: StageContext) -> None:
        if dest.is_dir():
            ctx.info.update({"tree": str(dest), "origin": "unpacked tree present", "sha256": pkg.sha256})
            return
        tmp = fsutil.scratch_dir(dest, "unpack")
        if pkg.sdist is not None:
            if sources.sha256_of(pkg.sdist) != pkg.sha256:
                raise HostpgoError(f"{pkg.sdist} changed since the build was planned")
            top = sources.unpack(pkg.sdist, tmp, pkg.topdir)
            for p in top.iterdir():
                p.rename(tmp / p.name)
            top.rmdir()
        elif pkg.include:
            assert pkg.tree is not None
            files = local_files(pkg.tree, pkg.include)
            if files_digest(pkg.tree, files) != pkg.sha256:
                raise HostpgoError(f"{pkg.tree} changed since the build was planned")
            for r in files:
                (tmp / r).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(pkg.tree / r, tmp / r)
        else:
            shutil.rmtree(tmp)
            shutil.copytree(pkg.tree, tmp, ignore=shutil.ignore_patterns(".git", "build", "__pycache__", "*.so"))
        fsutil.move_into_place(tmp, dest)
        ctx.info.update({"tree": str(dest), "origin": pkg.origin, "sha256": pkg.sha256,
                         **({"include": list(pkg.include)} if pkg.include else {})})
    return fn


def _build_env(python: Path, venv: Path, requires: tuple[str, ...], tree: Path, settings: list[tuple[str, str]]):
    def fn(ctx: StageContext) -> None:
        ctx.runner.run([str(python), "-m", "venv", "--clear", str(venv)], timeout=600)
        vpy = str(venv / "bin" / "python")
        ctx.runner.run([vpy, "-m", "pip", "install", pep517.BUILD_FRONTEND, *requires], timeout=1800)
        probe = venv / "probe-src"  # get_requires may write metadata (egg-info): keep the pristine tree clean
        shutil.copytree(tree, probe, symlinks=True)
        lines: list[str] = []
        ctx.runner.run(pep517.requires_argv(vpy, probe, settings), collect=lines, timeout=600)
        shutil.rmtree(probe)
        extra = next((json.loads(ln) for ln in reversed(lines) if ln.startswith("[")), [])
        if extra:
            ctx.runner.run([vpy, "-m", "pip", "install", *extra], timeout=1800)
        frozen = ctx.runner.capture([vpy, "-m", "pip", "freeze", "--all"], timeout=120).stdout.split()
        ctx.info.update({"venv": str(venv), "requires": list(requires), "dynamic_requires": extra,
                         "installed": frozen})
    return fn


def _build_wheel(*, tree: Path, build_dir: Path, outdir: Path, argv: list[str], env: dict[str, str],
                 compilers: tuple[str, ...], opt: str, required: tuple[str, ...], prefixes: tuple[str, ...],
                 timeout: float):
    """Copy the pristine tree to the fixed build directory, build the wheel there in place, check the compile
    lines of its log (every one must carry the profile's flags, and they must win), keep the proof."""
    def fn(ctx: StageContext) -> None:
        shutil.rmtree(build_dir, ignore_errors=True)
        shutil.copytree(tree, build_dir, symlinks=True)
        shutil.rmtree(outdir, ignore_errors=True)
        outdir.mkdir(parents=True)
        lines: list[str] = []
        # As in an activated venv: the build environment's tools (cython, meson, ninja, cmake) come first.
        run_env = {**env, "PATH": f"{Path(argv[0]).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
        ctx.runner.run(argv, env=run_env, cwd=build_dir, timeout=timeout, collect=lines, nice=True)
        wheels = sorted(outdir.glob("*.whl"))
        if len(wheels) != 1:
            raise HostpgoError(f"the build left {len(wheels)} wheels in {outdir}, expected one")
        commands = pep517.compile_lines(lines, compilers)
        check = pep517.check_compile_lines(commands, opt=opt, required=required, required_prefixes=prefixes)
        proof = {**check.to_json(), "opt": opt, "required": list(required), "required_prefixes": list(prefixes),
                 "unprofiled_warnings": sum("no profile data available" in ln for ln in lines),
                 "out_of_date_warnings": sum("profile data may be out of date" in ln for ln in lines)}
        ctx.info.update({"wheel": str(wheels[0]), "compile_proof": proof})
        if not check.ok:
            raise HostpgoError(f"the profile's flags did not win on the compile lines of {build_dir} "
                               f"({check.lines} found): " + "; ".join(check.failures[:5]))
    return fn


def _run_tests(argv: list[str], cwd: Path, report: Path, timeout: float):
    """Run the package's tests (pytest) in the verify venv; its JUnit report must show tests, none of them failed,
    errored or skipped (a skip would hide a test that did not run against the wheel)."""
    def fn(ctx: StageContext) -> None:
        import xml.etree.ElementTree as ET
        report.unlink(missing_ok=True)
        rc = ctx.runner.run(argv, cwd=cwd, timeout=timeout, ok_codes=(0, 1), nice=True)
        try:
            root = ET.parse(report).getroot()
        except (OSError, ET.ParseError) as e:
            raise HostpgoError(f"the tests left no readable report {report} ({e}); exit code {rc}") from None
        suite = root if root.tag == "testsuite" else root.find("testsuite")
        counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
        ctx.info["tests"] = {**counts, "exit_code": rc, "report": str(report)}
        if rc != 0 or counts["tests"] == 0 or counts["failures"] or counts["errors"] or counts["skipped"]:
            raise HostpgoError(f"the package's tests against the installed wheel: {counts}, exit code {rc} "
                               f"(log: {ctx.runner.log_path})")
    return fn


def _wheel_of(stage: str):
    def get(ctx: StageContext) -> str:
        return ctx.results[stage].info["wheel"]
    return get


def _venv_with_wheel(python: Path, venv: Path, wheel_stage: str, pth: Path | None, pth_text: str):
    def fn(ctx: StageContext) -> None:
        ctx.runner.run([str(python), "-m", "venv", "--clear", str(venv)], timeout=600)
        wheel = _wheel_of(wheel_stage)(ctx)
        ctx.runner.run([str(venv / "bin" / "python"), "-m", "pip", "install", "--no-deps", "--no-index",
                        "--force-reinstall", wheel], timeout=600)
        if pth is not None:
            fsutil.write_text(pth, pth_text)
        ctx.info.update({"venv": str(venv), "wheel": wheel})
    return fn


def _publish_wheel(wheel_stage: str, dest: Path):
    def fn(ctx: StageContext) -> None:
        wheel = Path(_wheel_of(wheel_stage)(ctx))
        tmp = fsutil.scratch_dir(dest)
        shutil.copy2(wheel, tmp / wheel.name)
        with zipfile.ZipFile(tmp / wheel.name) as z:
            bad = z.testzip()
        if bad is not None:
            raise HostpgoError(f"{wheel}: member {bad} is corrupt")
        fsutil.move_into_place(tmp, dest)
        ctx.info.update({"wheel": str(dest / wheel.name), "wheel_sha256": sources.sha256_of(dest / wheel.name)})
    return fn


# ---------------------------------------------------------------------------------------------
# The plan (pure).


def compile_requirements(inp: Inputs, variant: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(words, word prefixes) every compile line of `variant` must carry."""
    p, llvm = inp.profile, pgomod.is_llvm(inp.compiler)
    words: tuple[str, ...] = ()
    if inp.package.backend == "setuptools":
        words = tuple(w for w in SETUPTOOLS_KEEP if w in inp.interp.cflags.split())
    prefixes: list[str] = []
    if p.optimize.pgo == "on" and variant == "instrumented":
        prefixes.append("-fprofile-instr-generate" if llvm else "-fprofile-generate")
    if p.optimize.pgo == "on" and variant == "optimized":
        prefixes.append("-fprofile-instr-use=" if llvm else "-fprofile-use=")
    if p.optimize.lto != "off" and variant != "instrumented":
        prefixes.append("-flto")
    return words, tuple(prefixes)


def plan(inp: Inputs) -> BuildPlan:
    p, comp, work, pkg, interp = inp.profile, inp.compiler, inp.work, inp.package, inp.interp
    build_id = inp.build_id
    pgo = p.optimize.pgo == "on"
    where = pgomod.paths(work, build_id, pkg.name)
    notes = list(inp.compiler_notes)
    opt = f"-{p.optimize.opt}"
    comp_id = comp.identity()
    stages: list[Stage] = []

    # 1. source: the pristine tree, published by rename (shared by every profile's build of it).
    src_key = digest({"stage": "source", "target": TARGET, "package": pkg.name, "version": pkg.version,
                      "sha256": pkg.sha256})
    tree = work.src / f"{TARGET}-{pkg.name}-{pkg.version}-{src_key[:12]}"
    what = (f"verify {pkg.sdist} (sha256 {pkg.sha256[:12]}…) and unpack" if pkg.sdist
            else f"copy {' '.join(pkg.include)} of {pkg.tree}" if pkg.include else f"copy {pkg.tree}")
    stages.append(Stage("source", f"the source of {pkg.name} {pkg.version}", src_key,
                        (Call(f"{what}; rename into {tree}", _unpack_or_copy(pkg, tree)),), requires=(tree,)))

    # 2. runtime-deps: only when training or verify runs the runtime's workloads.
    wants_runtime = any(t.kind == "workloads" for t in inp.tasks) and inp.profile_data is None
    deps_dir, deps_key = None, ""
    if wants_runtime or inp.verify_workloads:
        from .cpython import runtime_deps_stage
        deps_stage, deps_dir, deps_key = runtime_deps_stage(work, interp.minor)
        stages.append(deps_stage)
    # The venvs see the runtime's dependencies and this checkout's runtime, except when the wheel is the runtime
    # (ships_runtime): then only the dependencies, and workloads run from the venv, so the checkout's runtime
    # (which has no compiled module) cannot shadow the wheel's.
    pth_text = (f"{deps_dir}\n" if pkg.ships_runtime else f"{deps_dir}\n{REPO_ROOT}\n") if deps_dir else ""
    runtime_env = {"HOSTPGO_HOME": str(work.root)}
    expect_host_path = pkg.verify.get("host_path")

    # 3. build-env: the isolated build environment (fixed path, requirements from the index).
    build_dir = work.build / build_id
    env_dir = work.build / f"{build_id}-buildenv"
    env_py = env_dir / "bin" / "python"
    plain_settings = pep517.config_settings(pkg.backend, flagmod.resolve(p, comp, inp.host, "plain"), opt=opt,
                                            build_dir=build_dir / ".hostpgo-build")
    env_key = digest({"stage": "build-env", "src": src_key, "interp": interp.identity(), "requires": pkg.requires,
                      "frontend": pep517.BUILD_FRONTEND})
    stages.append(Stage("build-env", f"build environment: a venv of {interp.python} with the {pkg.backend} back end",
                        env_key, (Call(f"{interp.python} -m venv --clear {env_dir}; pip install "
                                       f"{pep517.BUILD_FRONTEND} {' '.join(pkg.requires)}; then the back end's "
                                       "get_requires_for_build_wheel", _build_env(interp.python, env_dir,
                                                                                    pkg.requires, tree,
                                                                                    plain_settings)),),
                        outputs=(env_dir,),
                        notes=(("Cython is a build requirement: it generates the C during the build",)
                               if pkg.cython else ())))

    def wheel_stage(name: str, variant: str, prev_key: str, profdata: str, outdir: Path) -> Stage:
        rf = flagmod.resolve(p, comp, inp.host, variant, build_dir=str(build_dir), raw_pattern=where.raw_pattern,
                             raw_dir=str(where.raw_dir), profdata=profdata)
        notes.extend(n for n in rf.notes if n not in notes)
        settings = pep517.config_settings(pkg.backend, rf, opt=opt, build_dir=build_dir / ".hostpgo-build")
        env = pep517.environment(rf, pkg.backend)
        run_env = {**env, **(pgomod.build_time_env(comp, build_dir) if variant == "instrumented" else {})}
        argv = pep517.wheel_argv(str(env_py), build_dir, outdir, settings)
        words, prefixes = compile_requirements(inp, variant)
        key = digest({"stage": name, "prev": prev_key, "env_key": env_key, "argv": argv, "env": run_env,
                      "compiler": comp_id})
        compilers = tuple(c for c in (comp.cc, comp.cxx) if c)
        path_flag = ChannelFlag("env", "PATH", f"{env_py.parent}:$PATH", "engine: the build environment's tools "
                                "first, as in an activated venv")
        return Stage(name, f"wheel ({variant}) of {pkg.name} {pkg.version} in {build_dir}", key,
                     (Call(f"copy {tree} -> {build_dir}; {format_command(argv, run_env, build_dir)}; check every "
                           f"compile line: last -O is {opt}, carries {' '.join(words + prefixes) or '-'}",
                           _build_wheel(tree=tree, build_dir=build_dir, outdir=outdir, argv=argv, env=run_env,
                                        compilers=compilers, opt=opt, required=words, prefixes=prefixes,
                                        timeout=4 * 3600)),),
                     outputs=(outdir,), flags=(*pep517.channel_flags(settings, run_env, pkg.backend), path_flag),
                     notes=rf.notes)

    prev = env_key
    profdata = ""
    summary_tasks: list[dict] = []
    pgo_plan = None
    if inp.profile_data is not None and not pgo:
        raise HostpgoError(f"--profile-data {inp.profile_data}: profile '{p.name}' has optimize.pgo = \"off\"")
    if pgo and inp.profile_data is not None:
        pgo_plan = pgomod.reuse_plan(data=inp.profile_data, comp=comp, prev_key=prev)
    elif pgo:
        ivenv = where.venv_dir
        pth = ivenv / "lib" / f"python{interp.minor}" / "site-packages" / "hostpgo-runtime.pth" if deps_dir else None

        def instrument(prev_key: str) -> tuple[list[Stage], str]:
            b = wheel_stage("build-instrumented", "instrumented", prev_key, "", work.pgo / build_id / "wheel")
            ikey = digest({"stage": "install-instrumented", "prev": b.key, "deps": deps_key})
            inst = Stage("install-instrumented", f"a venv of {interp.python} with the instrumented wheel", ikey,
                         (Call(f"{interp.python} -m venv --clear {ivenv}; pip install --no-deps <instrumented wheel>"
                               + (f"; write {pth}" if pth else ""),
                               _venv_with_wheel(interp.python, ivenv, "build-instrumented", pth, pth_text)),),
                         outputs=(ivenv,))
            return [b, inst], ikey

        def train(env: dict[str, str]) -> list[Cmd | Call]:
            vpy = str(ivenv / "bin" / "python")
            acts: list[Cmd | Call] = []
            for t in inp.tasks:
                for argv, tenv, cwd in t.commands(python=vpy, prefix=str(ivenv), repo=str(REPO_ROOT),
                                                  venv=str(ivenv)):
                    if t.kind == "workloads":
                        wenv = {**env, **runtime_env, **tenv}
                        cwd = str(ivenv) if pkg.ships_runtime else cwd
                        note = f", host_path must be {expect_host_path}" if expect_host_path else ""
                        acts.append(Call(f"{format_command(argv, wenv, Path(cwd))} (record kept{note})",
                                         training.run_workload(argv, wenv, cwd, t.timeout, f"training task {t.name}",
                                                               expect_host_path=expect_host_path)))
                    else:
                        acts.append(Cmd(tuple(argv), env={**env, **tenv}, cwd=Path(cwd) if cwd else ivenv,
                                        timeout=t.timeout, ok_codes=t.ok_codes))
            return acts

        pgo_plan = pgomod.plan(build_id=build_id, profile_name=p.name, comp=comp, work=work, where=where,
                               prev_key=prev, tasks=inp.tasks, instrument=instrument, train=train,
                               train_key={"deps": deps_key if wants_runtime else ""}, source_sha256=pkg.sha256)
    if pgo_plan is not None:
        stages.extend(pgo_plan.stages)
        summary_tasks = list(pgo_plan.training)
        profdata = pgo_plan.profile_data
        prev = pgo_plan.key
    variant = "optimized" if pgo else "plain"
    opt_out = work.build / f"{build_id}-wheel"
    bstage = wheel_stage("build", variant, prev, profdata, opt_out)
    stages.append(bstage)

    # verify: import, the package's own check, the runtime workloads' golden digests, with the wheel installed.
    vvenv = work.build / f"{build_id}-verify"
    vpy = str(vvenv / "bin" / "python")
    vpth = vvenv / "lib" / f"python{interp.minor}" / "site-packages" / "hostpgo-runtime.pth" if deps_dir else None
    check = str(pkg.verify.get("check", f"import {pkg.import_name}"))
    vtimeout = float(SPEC.verify.get("timeout", 1800))
    tests = tuple(str(x) for x in pkg.verify.get("tests", ()))
    test_requires = tuple(str(x) for x in pkg.verify.get("test_requires", ()))
    vkey = digest({"stage": "verify", "prev": bstage.key, "check": check, "workloads": list(inp.verify_workloads),
                   "deps": deps_key, "runtime": runtime_digest() if inp.verify_workloads else "",
                   **({"tests": list(tests), "test_requires": list(test_requires),
                       "test_sources": files_digest(REPO_ROOT, [Path(x) for x in tests])} if tests else {}),
                   **({"host_path": expect_host_path} if expect_host_path else {})})
    vactions: list[Cmd | Call] = [
        Call(f"{interp.python} -m venv --clear {vvenv}; pip install --no-deps <optimized wheel>"
             + (f"; write {vpth}" if vpth else ""), _venv_with_wheel(interp.python, vvenv, "build", vpth, pth_text)),
        Cmd((vpy, "-c", f"import {pkg.import_name}, sys; print({pkg.import_name}.__file__)"), cwd=vvenv,
            timeout=300),
        Cmd((vpy, "-c", check), cwd=vvenv, timeout=vtimeout)]
    if tests:
        if test_requires:
            vactions.append(Cmd((vpy, "-m", "pip", "install", *test_requires), cwd=vvenv, timeout=1800))
        report = vvenv / "tests-junit.xml"
        targv = [vpy, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={report}",
                 *(str(REPO_ROOT / x) for x in tests)]
        vactions.append(Call(f"{format_command(targv, {}, vvenv)}; read {report.name}: tests > 0, none failed, "
                             "errored or skipped", _run_tests(targv, vvenv, report, vtimeout)))
    wenv = {**runtime_env}
    wcwd = vvenv if pkg.ships_runtime else REPO_ROOT
    note = f", host_path {expect_host_path}" if expect_host_path else ""
    for name in inp.verify_workloads:
        argv = [vpy, "-m", "runtime", "workload", name, "--json", "--check-golden"]
        vactions.append(Call(f"{format_command(argv, wenv, wcwd)} (must match the pinned digest{note})",
                             training.run_workload(argv, wenv, str(wcwd), vtimeout, f"verify of {build_id}",
                                                   expect_host_path=expect_host_path)))
    stages.append(Stage("verify", f"verify: import {pkg.import_name}, its check, and the runtime workloads' golden "
                        "digests with the wheel installed", vkey, tuple(vactions), outputs=(vvenv,)))

    dest = work.root / str(SPEC.outputs.get("wheels", "wheels")) / build_id
    ikey = digest({"stage": "install", "prev": vkey, "dest": str(dest)})
    stages.append(Stage("install", f"the wheel into {dest}", ikey,
                        (Call(f"copy the optimized wheel into {dest} (staged, then renamed)",
                              _publish_wheel("build", dest)),), outputs=(dest,)))

    summary = {
        "target": TARGET, "package": pkg.name, "version": pkg.version, "profile": p.name,
        "profile_files": list(p.files), "backend": pkg.backend, "cython": pkg.cython,
        "compiler": comp.version_text, "cc": comp.cc, "interpreter": f"{interp.python} ({interp.version})",
        "source": f"{pkg.sdist or pkg.tree} sha256={pkg.sha256} ({pkg.origin})",
        "build_dir": str(build_dir), "training_tasks": summary_tasks or "none (no PGO)",
        "prefix": str(dest), "result": f"{dest}/ (wheel)", "jobs": inp.jobs,
    }

    def finish(ex) -> None:
        if not dest.is_dir():
            return
        manifest.write_for_execution(ex, inp, [dest], summary_tasks)
        doc = manifest.read(dest)
        doc["compile_proof"] = {n: ex.results[n].info.get("compile_proof") for n in ("build-instrumented", "build")
                                if n in ex.results}
        doc["wheel"] = {k: ex.results["install"].info.get(k) for k in ("wheel", "wheel_sha256")}
        if tests and "verify" in ex.results:
            doc["verify_tests"] = ex.results["verify"].info.get("tests")
        manifest.write(dest, doc)

    return BuildPlan(build_id=build_id, stages=tuple(stages), notes=tuple(notes), summary=summary, finish=finish)


__all__ = ["ChannelFlag", "Inputs", "plan", "prepare"]
