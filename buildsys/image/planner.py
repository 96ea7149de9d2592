"""The image's stages (base tarball, wheels, assembly, verification, docker-archive), computed without running
anything; each stage's Call runs exactly the commands the plan shows."""

from __future__ import annotations

import json
import os
import platform
import shutil
import sys
from pathlib import Path
from typing import Any

from hostpgo.fsutil import move_into_place, write_json
from hostpgo.runner import Runner, format_command

from ..core import manifest as manifest_mod
from ..core.paths import REPO_ROOT, REPRODUCIBLE_EPOCH
from ..core.stages import BuildPlan, Call, Execution, Stage, StageContext, digest
from ..pipeline.sources import sha256_of
from . import oci
from .assemble import LayerStep, assemble_layout
from .base import base_command, base_suite
from .model import (
    DATA_DIR,
    DEFAULT_CMD,
    HOST_DIR,
    IMAGE_SCHEMA,
    LAYER_NAMES,
    PYTHON_DIR,
    ROOT,
    VENV_DIR,
    ImageError,
    ImageInputs,
    entrypoint,
    epoch_iso,
    image_dir,
    image_env,
    labels,
    layout_tag,
    oci_arch,
    tag_slug,
)
from .rootfs import chroot_argv, copy_prefix, extract_base, mounted, remove_stale
from .verify import check_digests, verify_layout

CHECKPOINT_CODE = "from runtime.workarea import builtin_checkpoint; print(builtin_checkpoint('tiny', 0))"
"""Run in the chroot: generates the built-in checkpoint the default workloads read, so the image ships it."""
RECORD_NAME = "hostpgo-image.json"
"""The image record beside the layout: layers, digests, packages, verification."""


def project_digest(root: Path = REPO_ROOT) -> str:
    """The project's own code and data that go into the venv (the packages, pyproject.toml and CMakeLists.txt,
    which builds the runtime's compiled host path)."""
    cmake = root / "CMakeLists.txt"
    return digest({"pyproject": sha256_of(root / "pyproject.toml"),
                   "cmake": sha256_of(cmake) if cmake.is_file() else None,
                   **{pkg: manifest_mod.tree_digest(root / pkg, skip_dirs=("__pycache__",))
                      for pkg in ("buildsys", "runtime", "perf")}})


def build_env(settings: dict[str, Any] | None = None) -> dict[str, str]:
    """The environment of the assembly's chroot steps: the image's own, plus SOURCE_DATE_EPOCH, so pip and
    ensurepip write hash-based pycs (PEP 552) that do not depend on when the step ran."""
    return {**image_env(settings or {}), "SOURCE_DATE_EPOCH": REPRODUCIBLE_EPOCH}


def venv_install_argv(vpy: str, inp: ImageInputs) -> list[str]:
    """The venv layer's pip command (pure): hostpgo[runtime] from the staged wheels, each rewritten wheel named
    as a requirement of its own so pip installs it instead of the stock build of its distribution."""
    return [vpy, "-m", "pip", "install", "--no-index", "--find-links", "/tmp/hostpgo-wheels", "--no-cache-dir",
            "--disable-pip-version-check", "hostpgo[runtime]", *(f"/tmp/hostpgo-wheels/{w.name}" for w in inp.wheels)]


def replaced_wheels(inp: ImageInputs) -> list[dict[str, str]]:
    """The image record's names of the rewritten wheels, with their sha256 and the bolt-wheel manifest beside each."""
    out = []
    for w in inp.wheels:
        manifest = w.parent / "hostpgo-wheelbolt.json"
        doc = json.loads(manifest.read_text()) if manifest.is_file() else {}
        out.append({"file": w.name, "sha256": sha256_of(w), "distribution": w.name.split("-", 1)[0],
                    "version": w.name.split("-")[1],
                    **({"wheelbolt_manifest_sha256": sha256_of(manifest),
                        "decision": (doc.get("decision") or {}).get("verdict")} if doc else {})})
    return out


def plan(inp: ImageInputs) -> BuildPlan:
    work = inp.work
    epoch = int(REPRODUCIBLE_EPOCH)
    sources_lines = [s.line() for s in inp.sources]
    suite = base_suite(inp.sources)
    base_key = digest({"stage": "image-base", "suite": suite, "sources": sources_lines, "packages": inp.packages,
                       "variant": "minbase", "epoch": REPRODUCIBLE_EPOCH})
    base_tar = work.root / "images" / "base" / f"{suite}-minbase-{base_key[:12]}.tar"
    base_tmp = base_tar.with_name(f".{base_tar.name}.{os.getpid()}.tmp.tar")
    epoch_env = {"SOURCE_DATE_EPOCH": REPRODUCIBLE_EPOCH}
    base_argv = base_command(suite, inp.packages, base_tmp, sources_lines)
    wheels_key = digest({"stage": "image-wheels", "requirements": inp.requirements, "python": inp.minor})
    wheels = work.root / "images" / "wheels" / f"cp{inp.minor.replace('.', '')}-{wheels_key[:12]}"
    wheels_tmp = wheels.with_name(f".{wheels.name}.{os.getpid()}.tmp")
    wheels_argv = [sys.executable, "-m", "pip", "wheel", "--only-binary=:all:", "--wheel-dir", str(wheels_tmp),
                   *inp.requirements]
    settings_digest = {p.name: sha256_of(p) for p in inp.settings_files}
    assemble_key = digest({"stage": "image-assemble", "schema": IMAGE_SCHEMA, "base": base_key, "wheels": wheels_key,
                           "build_manifest": sha256_of(inp.prefix / manifest_mod.FILE_NAME),
                           "settings_name": inp.settings_name, "settings": dict(inp.settings),
                           "settings_files": settings_digest, "project": project_digest(), "tag": inp.tag,
                           **({"allocator_builds": {p.name: sha256_of(p / manifest_mod.FILE_NAME)
                                                    for p in inp.allocator_builds}} if inp.allocator_builds else {}),
                           **({"wheels": {w.name: sha256_of(w) for w in inp.wheels}} if inp.wheels else {})})
    out = image_dir(inp, assemble_key)
    layout = out / "oci"
    ltag = layout_tag(inp.tag)
    verify_key = digest({"stage": "image-verify", "assemble": assemble_key, "workloads": inp.verify_workloads,
                         "unresolved": inp.unresolved})
    env = image_env(inp.settings)
    py = f"{PYTHON_DIR}/bin/python{inp.minor}"
    vpy = f"{VENV_DIR}/bin/python"

    def do_base(ctx: StageContext) -> None:
        if base_tar.is_file():  # published by rename, so complete; shared by every image of this base key
            ctx.info.update({"tar": str(base_tar), "origin": "present", "sha256": sha256_of(base_tar)})
            return
        if inp.packages is None:
            raise ImageError("the base's packages were not resolved (prepared for a dry run); prepare the image "
                             "with the library scan to build it")
        base_tar.parent.mkdir(parents=True, exist_ok=True)
        base_tmp.unlink(missing_ok=True)
        ctx.runner.run(base_argv, env=epoch_env, timeout=3600)
        move_into_place(base_tmp, base_tar)
        ctx.info.update({"tar": str(base_tar), "suite": suite, "sources": sources_lines, "command": base_argv,
                         "packages": list(inp.packages), "sha256": sha256_of(base_tar)})

    def do_wheels(ctx: StageContext) -> None:
        if wheels.is_dir():  # published by rename, so complete; shared by every image of these requirements
            ctx.info.update({"dir": str(wheels), "origin": "present",
                             "wheels": sorted(p.name for p in wheels.glob("*.whl"))})
            return
        shutil.rmtree(wheels_tmp, ignore_errors=True)
        ctx.runner.run(wheels_argv, timeout=3600)
        move_into_place(wheels_tmp, wheels)
        ctx.info.update({"dir": str(wheels), "wheels": sorted(p.name for p in wheels.glob("*.whl"))})

    def steps(r: Runner, record: dict[str, Any]) -> list[LayerStep]:
        """The four layers' steps; `record` receives the in-image record (written by the runtime step)."""

        def base(rootfs: Path) -> None:
            extract_base(base_tar, rootfs, r)

        def python(rootfs: Path) -> None:
            copy_prefix(inp.prefix, rootfs / PYTHON_DIR.lstrip("/"), inp.minor)

        def venv(rootfs: Path) -> None:
            # From wheels only; the project's own wheel is built reproducibly for the image.
            stage_dir = rootfs / "tmp" / "hostpgo-wheels"
            shutil.copytree(wheels, stage_dir)
            for w in inp.wheels:  # beside the stock build of the same distribution; named below, so pip takes it
                shutil.copy2(w, stage_dir / w.name)
            r.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--wheel-dir", str(stage_dir), str(REPO_ROOT)],
                  env=epoch_env, timeout=900)
            cenv = build_env()
            with mounted(rootfs, r):
                r.run(chroot_argv(rootfs, {**cenv, "PYTHONDONTWRITEBYTECODE": "1"},
                                  [py, "-c", "import sys; print(sys.prefix, sys.version)"]), timeout=120)
                r.run(chroot_argv(rootfs, cenv, [py, "-m", "venv", VENV_DIR]), timeout=600)
                r.run(chroot_argv(rootfs, cenv, venv_install_argv(vpy, inp)), timeout=3600)
            shutil.rmtree(stage_dir)

        def runtime(rootfs: Path) -> None:
            host_dir = rootfs / HOST_DIR.lstrip("/")
            host_dir.mkdir(parents=True)
            for f in inp.settings_files:
                shutil.copy2(f, host_dir / f.name)
            for build_prefix in inp.allocator_builds:  # allocator.build: found by hostenv under $HOSTPGO_HOME
                shutil.copytree(build_prefix, rootfs / DATA_DIR.lstrip("/") / "install" / build_prefix.name,
                                symlinks=True)
            quiet = {**build_env(inp.settings), "PYTHONDONTWRITEBYTECODE": "1"}
            with mounted(rootfs, r):
                r.run(chroot_argv(rootfs, quiet, [vpy, "-m", "hostenv", "show", inp.settings_name]),
                      timeout=300)
                if (inp.settings.get("startup") or {}).get("precompile"):
                    r.run(chroot_argv(rootfs, build_env(inp.settings),
                                      [vpy, "-m", "hostenv", "precompile", inp.settings_name]), timeout=1800)
                r.run(chroot_argv(rootfs, quiet, [vpy, "-c", CHECKPOINT_CODE]), timeout=900)
            packages = r.capture(["dpkg-query", f"--admindir={rootfs}/var/lib/dpkg", "-W",
                                  "-f=${Package} ${Version}\n"], timeout=300).stdout
            pip_list = r.capture(chroot_argv(rootfs, quiet, [vpy, "-m", "pip", "--disable-pip-version-check",
                                                             "list", "--format=json"]), timeout=300).stdout
            record.update({
                "schema": IMAGE_SCHEMA, "tag": inp.tag, "build": inp.build_id, "profile": inp.build,
                "build_manifest": f"{PYTHON_DIR}/{manifest_mod.FILE_NAME}",
                "host_settings": {"name": inp.settings_name, "values": dict(inp.settings)},
                "entrypoint": entrypoint(inp.settings_name), "env": env,
                "debian": {"suite": suite, "sources": sources_lines,
                           "packages": dict(ln.split(" ", 1) for ln in packages.splitlines() if " " in ln)},
                "python_packages": {p["name"]: p["version"]
                                    for p in json.loads((pip_list.strip().splitlines() or ["[]"])[0])},
                "unresolved_on_build_host": list(inp.unresolved),
                **({"replaced_wheels": replaced_wheels(inp)} if inp.wheels else {})})
            write_json(rootfs / ROOT.lstrip("/") / RECORD_NAME, record)

        n = len(inp.packages or ())
        return [LayerStep("base", f"debian {suite} minbase + {n} runtime library packages", base),
                LayerStep("python", f"CPython {inp.build_id} (hostpgo profile {inp.build})", python),
                LayerStep("venv", f"venv: hostpgo[runtime] ({', '.join(inp.requirements)})"
                          + (f", rewritten: {', '.join(w.name for w in inp.wheels)}" if inp.wheels else ""), venv),
                LayerStep("runtime", f"host settings ({inp.settings_name}), "
                          + "".join(f"allocator build {p.name}, " for p in inp.allocator_builds)
                          + "built-in checkpoint, image record", runtime)]

    def config(layers) -> dict[str, Any]:
        return oci.image_config(layers, created=epoch_iso(), architecture=oci_arch(platform.machine()),
                                entrypoint=entrypoint(inp.settings_name), cmd=DEFAULT_CMD, env=env, workdir=DATA_DIR,
                                labels=labels(inp))

    def do_assemble(ctx: StageContext) -> None:
        r = ctx.runner
        removed = remove_stale(out.parent, tag_slug(inp.tag), r)
        if removed:
            ctx.info["removed_stale"] = [str(p) for p in removed]
        tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        record: dict[str, Any] = {}
        digests = assemble_layout(tmp / "rootfs", tmp / "oci", steps(r, record), epoch=epoch, tag=ltag,
                                  config=config)
        shutil.rmtree(tmp / "rootfs")
        write_json(tmp / "image-record.json", record)
        move_into_place(tmp, out)
        ctx.info.update({"layout": str(layout), "tag": ltag, "record": record, "oci": digests.record(),
                         "size_bytes": sum(p.stat().st_size for p in layout.rglob("*") if p.is_file())})

    def do_verify(ctx: StageContext) -> None:
        remove_stale(out, "", ctx.runner, pattern=".verify.*")
        oci_record = ctx.results["image-assemble"].info.get("oci") if "image-assemble" in ctx.results else None
        if oci_record:
            check_digests(layout, ltag, oci_record)
        ctx.info.update(verify_layout(layout, ltag, out / f".verify.{os.getpid()}", ctx.runner,
                                      workloads=inp.verify_workloads, unresolved=inp.unresolved))

    assemble_what = (f"extract {base_tar} | copy {inp.prefix} -> {PYTHON_DIR} | chroot: {py} -m venv {VENV_DIR}; "
                     f"pip install --no-index hostpgo[runtime]"
                     + "".join(f" {w.name}" for w in inp.wheels) + f" | host settings -> {HOST_DIR}, checkpoint -> "
                     f"{DATA_DIR} | each step one layer (sorted tar, mtimes clamped to {REPRODUCIBLE_EPOCH}, "
                     f"numeric owners, gzip mtime 0) | config, manifest, index.json -> {layout}")
    stages = [
        Stage("image-base", f"base rootfs: debian {suite} minbase + runtime libraries", base_key,
              (Call(f"unless {base_tar} exists: {format_command(base_argv, epoch_env)}; publish {base_tar}",
                    do_base),), requires=(base_tar,), independent=True),
        Stage("image-wheels", "wheels of the runtime's dependencies", wheels_key,
              (Call(f"unless {wheels} exists: {format_command(wheels_argv)}; publish {wheels}", do_wheels),),
              requires=(wheels,), independent=True),
        Stage("image-assemble", "assemble the OCI layout (base, python, venv, runtime layers)", assemble_key,
              (Call(assemble_what, do_assemble),), outputs=(out,)),
        Stage("image-verify", "verify: unpack the image, chroot, golden tokens through the entrypoint", verify_key,
              (Call(f"umoci unpack {layout}:{ltag}; ldd every shared object; then per workload: chroot <entrypoint> "
                    f"workload NAME --json --check-golden ({', '.join(inp.verify_workloads)})", do_verify),)),
    ]
    if inp.archive is not None:
        archive = inp.archive
        akey = digest({"stage": "image-archive", "verify": verify_key, "archive": str(archive)})
        archive_tmp = archive.with_name(f".{archive.name}.{os.getpid()}.tmp")
        archive_argv = ["skopeo", "copy", f"oci:{layout}:{ltag}", f"docker-archive:{archive_tmp}:{inp.tag}"]

        def do_archive(ctx: StageContext) -> None:
            if archive.exists():
                raise ImageError(f"--archive {archive}: the file exists; hostpgo does not overwrite it "
                                 "(remove it or name another file)")
            archive_tmp.unlink(missing_ok=True)
            ctx.runner.run(archive_argv, timeout=3600)
            move_into_place(archive_tmp, archive)
            ctx.info.update({"archive": str(archive), "sha256": sha256_of(archive)})
        stages.append(Stage("image-archive", "docker-archive for `docker load` / `podman load`", akey,
                            (Call(f"{format_command(archive_argv)}; publish {archive}", do_archive),),
                            requires=(archive,)))

    def finish(ex: Execution) -> None:
        if "image-verify" not in ex.results:
            return
        rec = json.loads((out / "image-record.json").read_text())
        rec["oci"] = ex.results["image-assemble"].info.get("oci")
        rec["stages"] = {n: {"seconds": r.seconds, "reused": r.skipped} for n, r in ex.results.items()}
        rec["verify"] = ex.results["image-verify"].info.get("workloads", [])
        rec["layout"] = str(layout)
        rec["size_bytes"] = ex.results["image-assemble"].info.get("size_bytes")
        if "image-archive" in ex.results:
            rec["archive"] = ex.results["image-archive"].info
        write_json(out / RECORD_NAME, rec)

    summary = {"prefix": str(out), "layout": str(layout), "tag": inp.tag, "base": str(base_tar),
               "base_command": base_argv, "wheels": str(wheels),
               "packages": list(inp.packages) if inp.packages is not None else None,
               "layers": list(LAYER_NAMES), "entrypoint": entrypoint(inp.settings_name),
               **({"replaced_wheels": [str(w) for w in inp.wheels]} if inp.wheels else {})}
    return BuildPlan(f"image-{tag_slug(inp.tag)}", tuple(stages), inp.notes, summary, finish)
