"""The OCI image of an optimized build: Debian base + the interpreter prefix + a venv with the runtime + host settings.

Layers, each one `umoci repack` of the same bundle, so each holds only what its step added:

1. base:    `mmdebstrap --variant=minbase` of the host's own suite and mirrors, plus the Debian packages that
            own every shared library the interpreter and the runtime's wheels load from outside themselves
            (found with ldd on this host, mapped with `dpkg -S`), plus the allocator packages;
2. python:  the installed prefix at /opt/hostpgo/python (a static-libpython build finds its stdlib from
            its own location; CPython's test suite is left out, the verify stage already ran it);
3. venv:    /opt/hostpgo/venv from wheels only (`pip --no-index`): this project with its `runtime` extra;
4. runtime: the host settings files at /opt/hostpgo/host, the pre-generated built-in checkpoint under
            /var/lib/hostpgo, precompiled bytecode when the settings ask for it, and hostpgo-image.json.

The entrypoint applies the host settings before the interpreter starts (`python -m runtime.hostenv exec`),
so the allocator preload, its tunables, the launch mode, threads and GC policy are the image's defaults;
`-e HOSTPGO_HOST_SET=...` changes one key at run time. The image is verified the way it will run: unpacked
again from the finished layout and chrooted, it must reproduce every golden token digest of the build's
verify workloads through its own entrypoint, and no shared library may be missing.

Everything needs root (mmdebstrap's root mode, chroot, mounting /proc); podman/docker are not used, so it
also works where containers cannot start. `skopeo` turns the layout into a docker-archive for `docker load`.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

from hostpgo.runner import Runner

from . import allocator as alloc_mod
from .core import manifest as manifest_mod
from .core.paths import REPO_ROOT, REPRODUCIBLE_EPOCH, WorkArea
from .core.stages import BuildPlan, Call, Execution, Stage, StageContext, digest
from .errors import HostpgoError
from .pipeline.sources import sha256_of as _sha256
from .pipeline.training import last_json
from .targets.cpython import runtime_requirements
from .toolchain import Host, detect_host

IMAGE_SCHEMA = 1
ROOT = "/opt/hostpgo"
PYTHON_DIR = f"{ROOT}/python"
VENV_DIR = f"{ROOT}/venv"
HOST_DIR = f"{ROOT}/host"
DATA_DIR = "/var/lib/hostpgo"
IMAGE_TOOLS = {"mmdebstrap": "mmdebstrap", "umoci": "umoci", "chroot": "coreutils", "ldd": "libc-bin",
               "dpkg": "dpkg"}
"""Commands the image stages run, with the Debian package that provides each."""
EXCLUDE_FROM_PREFIX = ("lib/python{minor}/test",)
"""Left out of the image: CPython's own test suite (already run by the build's verify stage)."""
DEFAULT_CMD = ("workload", "serve-mixed", "--json", "--check-golden")
"""What `docker run IMAGE` does without arguments: a serving workload that checks its own golden tokens."""


class ImageError(HostpgoError):
    """The image cannot be built from these inputs or on this host; the message says what would fix it."""


# ------------------------------------------------------------------------------------------ inputs


@dataclass(frozen=True)
class AptSource:
    uri: str
    suite: str
    components: tuple[str, ...]

    def line(self) -> str:
        return f"deb {self.uri} {self.suite} {' '.join(self.components)}"


def apt_sources(etc: Path = Path("/etc/apt")) -> tuple[AptSource, ...]:
    """The host's binary package sources (deb822 `.sources` and one-line `.list`), in file order."""
    found: list[AptSource] = []
    files = ([etc / "sources.list"] if (etc / "sources.list").is_file() else []) + \
        sorted((etc / "sources.list.d").glob("*.list")) + sorted((etc / "sources.list.d").glob("*.sources"))
    for f in files:
        text = f.read_text(errors="replace")
        if f.suffix == ".sources":
            for block in re.split(r"\n\s*\n", text):
                fields: dict[str, str] = {}
                for ln in block.splitlines():
                    if ln.strip().startswith("#") or ":" not in ln:
                        continue
                    k, v = ln.split(":", 1)
                    fields[k.strip().lower()] = v.strip()
                if "deb" not in fields.get("types", "").split() or fields.get("enabled", "yes") == "no":
                    continue
                for uri in fields.get("uris", "").split():
                    for suite in fields.get("suites", "").split():
                        found.append(AptSource(uri, suite, tuple(fields.get("components", "main").split())))
        else:
            for ln in text.splitlines():
                parts = re.sub(r"\[[^]]*\]", "", ln).split()
                if len(parts) >= 3 and parts[0] == "deb":
                    found.append(AptSource(parts[1], parts[2], tuple(parts[3:]) or ("main",)))
    return tuple(found)


def base_suite(sources: Sequence[AptSource]) -> str:
    """The release the base is made of: the first source's suite without -updates/-security."""
    if not sources:
        raise ImageError("no `deb` entries in /etc/apt/sources.list or /etc/apt/sources.list.d/; the image's "
                         "base is made from the host's own Debian mirrors")
    return re.sub(r"-(updates|security|backports)$", "", sources[0].suite)


def parse_ldd(text: str) -> tuple[dict[str, str], list[str]]:
    """`ldd` output -> ({soname: resolved path}, [sonames not found])."""
    found: dict[str, str] = {}
    missing: list[str] = []
    for ln in text.splitlines():
        ln = ln.strip()
        if "=>" in ln:
            name, rest = (s.strip() for s in ln.split("=>", 1))
            if rest.startswith("not found"):
                missing.append(name)
            else:
                path = rest.split(" (")[0].strip()
                if path:
                    found[name] = path
        elif ln.startswith("/"):
            found[os.path.basename(ln.split(" (")[0])] = ln.split(" (")[0]
    return found, missing


def is_elf(path: Path) -> bool:
    try:
        with path.open("rb") as fh:
            return fh.read(4) == b"\x7fELF"
    except OSError:
        return False


def elf_files(roots: Sequence[Path]) -> list[Path]:
    """Regular ELF files under the roots (symlinks skipped: their targets are scanned)."""
    out = []
    for root in roots:
        for dirpath, _dirs, files in os.walk(root):
            for f in files:
                p = Path(dirpath) / f
                if not p.is_symlink() and (f.endswith(".so") or ".so." in f or os.access(p, os.X_OK)) and is_elf(p):
                    out.append(p)
    return sorted(out)


def owning_package(path: str) -> str | None:
    """The Debian package that installed `path` (trying the merged-/usr twin too), or None."""
    candidates = [path, os.path.realpath(path)]
    for p in list(candidates):
        if p.startswith("/usr/lib/"):
            candidates.append(p[len("/usr"):])
        elif p.startswith("/lib"):
            candidates.append("/usr" + p)
    for p in dict.fromkeys(candidates):
        done = subprocess.run(["dpkg", "-S", p], capture_output=True, text=True)
        if done.returncode == 0 and done.stdout.strip():
            return done.stdout.split(":", 1)[0].split(",")[0].strip()
    return None


def library_packages(roots: Sequence[Path]) -> tuple[tuple[str, ...], dict[str, list[str]]]:
    """Debian packages owning the libraries the ELF files under `roots` load from outside the roots.

    Returns (sorted packages, {soname ldd cannot find here: [files needing it]}).
    Libraries missing on this host too (MindSpore's Ascend/GPU plugins need CANN, MPI) are recorded, not
    installed: the image is then no less complete than the host that verified the build. A library found
    outside the roots that no package owns is an error naming it: the image could not provide it.
    """
    inside = tuple(str(r.resolve()) + os.sep for r in roots)
    libs: dict[str, str] = {}
    unresolved: dict[str, list[str]] = {}
    for f in elf_files(roots):
        done = subprocess.run(["ldd", str(f)], capture_output=True, text=True)
        if done.returncode != 0:  # "not a dynamic executable": static objects need nothing
            continue
        found, missing = parse_ldd(done.stdout)
        for name in missing:
            unresolved.setdefault(name, []).append(str(f))
        for path in found.values():
            if not os.path.realpath(path).startswith(inside):
                libs.setdefault(path, "")
    problems = []
    for path in list(libs):
        pkg = owning_package(path)
        if pkg is None:
            problems.append(f"{path} is loaded but no Debian package owns it (install it from a package, "
                            "or it cannot be put in the image)")
        else:
            libs[path] = pkg
    if problems:
        raise ImageError("the image would miss shared libraries:\n  " + "\n  ".join(problems[:20]))
    return tuple(sorted(set(libs.values()))), unresolved


def missing_in_image(ldd_lines: Sequence[str], unresolved_on_host: Sequence[str]) -> list[str]:
    """Sonames `ldd` inside the image cannot find, less those the host could not find either."""
    names = set()
    for ln in ldd_lines:
        if "not found" in ln and "=>" in ln:
            names.add(ln.split("=>", 1)[0].strip())
    return sorted(names - set(unresolved_on_host))


@dataclass(frozen=True)
class ImageInputs:
    """Everything the image plan needs (a unit test makes these up; nothing here runs a command)."""

    build: str
    """The build's profile name (`workload-pgo-lto`)."""
    build_id: str
    prefix: Path
    build_manifest: Mapping[str, Any]
    settings_name: str
    """Host settings the entrypoint applies: a name shipped under /opt/hostpgo/host."""
    settings: Mapping[str, Any]
    """Their resolved values (`python -m runtime.hostenv show`)."""
    settings_files: tuple[Path, ...]
    packages: tuple[str, ...]
    """Debian packages installed into the base beyond minbase."""
    sources: tuple[AptSource, ...]
    requirements: tuple[str, ...]
    work: WorkArea
    tag: str
    verify_workloads: tuple[str, ...]
    unresolved: tuple[str, ...] = ()
    """Sonames some shipped object needs that this host lacks too (device plugins); not a verify failure."""
    archive: Path | None = None
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def minor(self) -> str:
        return ".".join(str(self.build_manifest.get("version", "3.11")).split(".")[:2])


def project_digest(root: Path = REPO_ROOT) -> str:
    """The project's own code and data that go into the venv (the packages and pyproject.toml)."""
    return digest({"pyproject": _sha256(root / "pyproject.toml"),
                   **{pkg: manifest_mod.tree_digest(root / pkg, skip_dirs=("__pycache__",))
                      for pkg in ("buildsys", "runtime", "perf")}})


def entrypoint(settings_name: str) -> list[str]:
    py = f"{VENV_DIR}/bin/python"
    return [py, "-m", "runtime.hostenv", "exec", settings_name, "--", py, "-m", "runtime"]


def image_env(settings: Mapping[str, Any]) -> dict[str, str]:
    env = {"PATH": f"{VENV_DIR}/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
           "LANG": "C.UTF-8", "HOSTPGO_HOME": DATA_DIR, "HOSTPGO_HOST_PROFILES": HOST_DIR}
    if (settings.get("startup") or {}).get("precompile"):
        env["PYTHONDONTWRITEBYTECODE"] = "1"  # the shipped bytecode is what runs; nothing is rewritten
    return env


def labels(inp: ImageInputs) -> dict[str, str]:
    return {"org.opencontainers.image.title": f"hostpgo {inp.build}",
            "org.opencontainers.image.description": f"CPython {inp.build_manifest.get('version')} built with "
                                                    f"hostpgo profile {inp.build}, host settings {inp.settings_name}",
            "org.opencontainers.image.created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "io.hostpgo.build": inp.build_id, "io.hostpgo.profile": inp.build,
            "io.hostpgo.host-settings": inp.settings_name,
            "io.hostpgo.build-manifest-sha256": _sha256(inp.prefix / manifest_mod.FILE_NAME)}


# --------------------------------------------------------------------------------------- mechanics


@contextlib.contextmanager
def mounted(rootfs: Path, runner: Runner) -> Iterator[None]:
    """/proc and /dev inside `rootfs` for the duration (MindSpore reads /proc; pip and Python need /dev)."""
    done: list[Path] = []
    try:
        for what, args in (("proc", ["-t", "proc", "proc"]), ("dev", ["--bind", "/dev"])):
            target = rootfs / what
            target.mkdir(exist_ok=True)
            runner.run(["mount", *args, str(target)], timeout=60)
            done.append(target)
        yield
    finally:
        for target in reversed(done):
            if subprocess.run(["umount", str(target)], capture_output=True).returncode != 0:
                subprocess.run(["umount", "-l", str(target)], capture_output=True)


def chroot_argv(rootfs: Path, env: Mapping[str, str], argv: Sequence[str]) -> list[str]:
    """A command run inside `rootfs` with exactly `env` (nothing leaks in from the host's environment)."""
    return ["chroot", str(rootfs), "/usr/bin/env", "-i", *(f"{k}={v}" for k, v in env.items()), *argv]


def _umoci(runner: Runner, *args: str, timeout: float = 3600) -> None:
    runner.run(["umoci", *args], timeout=timeout)


def _repack(runner: Runner, layout: Path, bundle: Path, comment: str) -> None:
    _umoci(runner, "repack", "--image", f"{layout}:build", "--history.comment", comment,
           "--history.created_by", "hostpgo image", str(bundle))


def _copy_prefix(prefix: Path, dest: Path, minor: str) -> None:
    skip = {str(prefix / e.format(minor=minor)) for e in EXCLUDE_FROM_PREFIX}

    def ignore(d: str, names: list[str]) -> list[str]:
        return [n for n in names if os.path.join(d, n) in skip]
    shutil.copytree(prefix, dest, symlinks=True, ignore=ignore)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale(images: Path, slug: str, alive=_alive, pattern: str = ".{slug}-*.tmp",
                 rootfs: str = "bundle/rootfs") -> list[Path]:
    """Scratch directories of this image left by runs that died (their pid is gone); a live run's are kept.

    A dead run may have died with /proc or /dev still mounted inside its rootfs: those are unmounted first,
    so removing the directory can never reach into the host's /dev.
    """
    removed = []
    for d in sorted(images.glob(pattern.format(slug=slug))):
        m = re.search(r"\.(\d+)(\.tmp)?$", d.name)
        if not m or alive(int(m.group(1))):
            continue
        for sub in (f"{rootfs}/proc", f"{rootfs}/dev"):
            if os.path.ismount(d / sub):
                subprocess.run(["umount", "-l", str(d / sub)], capture_output=True)
            if os.path.ismount(d / sub):
                raise ImageError(f"{d / sub} is still mounted; unmount it before building this image again")
        shutil.rmtree(d, ignore_errors=True)
        removed.append(d)
    return removed


# ------------------------------------------------------------------------------------------- plan


def tag_slug(tag: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", tag).strip("-")


def layout_tag(tag: str) -> str:
    """The OCI layout's tag: the part after the last `:` of `repo:tag`."""
    return tag.rsplit(":", 1)[-1] if ":" in tag.rsplit("/", 1)[-1] else "latest"


def image_dir(inp: ImageInputs, key: str) -> Path:
    """Never reused for other inputs: the name carries the assembly key."""
    return inp.work.root / "images" / f"{tag_slug(inp.tag)}-{key[:12]}"


def plan(inp: ImageInputs) -> BuildPlan:
    work = inp.work
    sources_lines = [s.line() for s in inp.sources]
    suite = base_suite(inp.sources)
    base_key = digest({"stage": "image-base", "suite": suite, "sources": sources_lines, "packages": inp.packages,
                       "variant": "minbase", "epoch": REPRODUCIBLE_EPOCH})
    base_tar = work.root / "images" / "base" / f"{suite}-minbase-{base_key[:12]}.tar"
    wheels_key = digest({"stage": "image-wheels", "requirements": inp.requirements, "python": inp.minor})
    wheels = work.root / "images" / "wheels" / f"cp{inp.minor.replace('.', '')}-{wheels_key[:12]}"
    settings_digest = {p.name: _sha256(p) for p in inp.settings_files}
    assemble_key = digest({"stage": "image-assemble", "schema": IMAGE_SCHEMA, "base": base_key, "wheels": wheels_key,
                           "build_manifest": _sha256(inp.prefix / manifest_mod.FILE_NAME),
                           "settings_name": inp.settings_name, "settings": dict(inp.settings),
                           "settings_files": settings_digest, "project": project_digest(), "tag": inp.tag})
    out = image_dir(inp, assemble_key)
    layout = out / "oci"
    verify_key = digest({"stage": "image-verify", "assemble": assemble_key, "workloads": inp.verify_workloads,
                         "unresolved": inp.unresolved})
    epoch_env = {"SOURCE_DATE_EPOCH": REPRODUCIBLE_EPOCH}

    def do_base(ctx: StageContext) -> None:
        if base_tar.is_file():  # published by rename, so complete; shared by every image of this base key
            ctx.info.update({"tar": str(base_tar), "origin": "present", "sha256": _sha256(base_tar)})
            return
        base_tar.parent.mkdir(parents=True, exist_ok=True)
        tmp = base_tar.with_name(f".{base_tar.name}.{os.getpid()}.tmp.tar")
        tmp.unlink(missing_ok=True)
        ctx.runner.run(["mmdebstrap", "--mode=root", "--variant=minbase", "--format=tar",
                        f"--include={','.join(inp.packages)}" if inp.packages else "--include=libc-bin",
                        suite, str(tmp), *sources_lines], env=epoch_env, timeout=3600)
        os.replace(tmp, base_tar)
        ctx.info.update({"tar": str(base_tar), "suite": suite, "sources": sources_lines,
                         "packages": list(inp.packages), "sha256": _sha256(base_tar)})

    def do_wheels(ctx: StageContext) -> None:
        if wheels.is_dir():  # published by rename, so complete; shared by every image of these requirements
            ctx.info.update({"dir": str(wheels), "origin": "present",
                             "wheels": sorted(p.name for p in wheels.glob("*.whl"))})
            return
        tmp = wheels.with_name(f".{wheels.name}.{os.getpid()}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        ctx.runner.run([sys.executable, "-m", "pip", "wheel", "--only-binary=:all:", "--wheel-dir", str(tmp),
                        *inp.requirements], timeout=3600)
        os.replace(tmp, wheels)
        ctx.info.update({"dir": str(wheels), "wheels": sorted(p.name for p in wheels.glob("*.whl"))})

    def do_assemble(ctx: StageContext) -> None:
        r = ctx.runner
        removed = remove_stale(out.parent, tag_slug(inp.tag))
        if removed:
            ctx.info["removed_stale"] = [str(p) for p in removed]
        tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        tl, bundle = tmp / "oci", tmp / "bundle"
        rootfs = bundle / "rootfs"
        _umoci(r, "init", "--layout", str(tl))
        _umoci(r, "new", "--image", f"{tl}:build")
        _umoci(r, "unpack", "--image", f"{tl}:build", str(bundle))
        r.run(["tar", "-xpf", str(base_tar), "-C", str(rootfs), "--numeric-owner"], timeout=1800)
        _repack(r, tl, bundle, f"debian {suite} minbase + {len(inp.packages)} runtime library packages")
        _copy_prefix(inp.prefix, rootfs / PYTHON_DIR.lstrip("/"), inp.minor)
        _repack(r, tl, bundle, f"CPython {inp.build_id} (hostpgo profile {inp.build})")
        # The venv, from wheels only; the project's own wheel is built reproducibly for the image.
        stage_dir = rootfs / "tmp" / "hostpgo-wheels"
        shutil.copytree(wheels, stage_dir)
        r.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--wheel-dir",
               str(stage_dir), str(REPO_ROOT)], env=epoch_env, timeout=900)
        cenv = image_env({})
        py = f"{PYTHON_DIR}/bin/python{inp.minor}"
        with mounted(rootfs, r):
            r.run(chroot_argv(rootfs, cenv, [py, "-c", "import sys; print(sys.prefix, sys.version)"]), timeout=120)
            r.run(chroot_argv(rootfs, cenv, [py, "-m", "venv", VENV_DIR]), timeout=600)
            r.run(chroot_argv(rootfs, cenv, [f"{VENV_DIR}/bin/python", "-m", "pip", "install", "--no-index",
                                             "--find-links", "/tmp/hostpgo-wheels", "--no-cache-dir",
                                             "hostpgo[runtime]"]), timeout=3600)
        shutil.rmtree(stage_dir)
        _repack(r, tl, bundle, f"venv: hostpgo[runtime] ({', '.join(inp.requirements)})")
        host_dir = rootfs / HOST_DIR.lstrip("/")
        host_dir.mkdir(parents=True)
        for f in inp.settings_files:
            shutil.copy2(f, host_dir / f.name)
        env = image_env(inp.settings)
        vpy = f"{VENV_DIR}/bin/python"
        with mounted(rootfs, r):
            lines: list[str] = []
            r.run(chroot_argv(rootfs, env, [vpy, "-m", "runtime.hostenv", "show", inp.settings_name]),
                  timeout=300, collect=lines)
            if (inp.settings.get("startup") or {}).get("precompile"):
                r.run(chroot_argv(rootfs, env, [vpy, "-m", "runtime.hostenv", "precompile", inp.settings_name]),
                      timeout=1800)
            r.run(chroot_argv(rootfs, env, [vpy, "-c", "from runtime.workarea import builtin_checkpoint; "
                                                        "print(builtin_checkpoint('tiny', 0))"]), timeout=900)
        packages = subprocess.run(["dpkg-query", f"--admindir={rootfs}/var/lib/dpkg", "-W",
                                   "-f=${Package} ${Version}\n"], capture_output=True, text=True).stdout
        pip_list = subprocess.run(chroot_argv(rootfs, env, [vpy, "-m", "pip", "--disable-pip-version-check",
                                                             "list", "--format=json"]),
                                  capture_output=True, text=True).stdout
        record = {"schema": IMAGE_SCHEMA, "tag": inp.tag, "build": inp.build_id, "profile": inp.build,
                  "build_manifest": f"{PYTHON_DIR}/{manifest_mod.FILE_NAME}",
                  "host_settings": {"name": inp.settings_name, "values": dict(inp.settings)},
                  "entrypoint": entrypoint(inp.settings_name), "env": env,
                  "debian": {"suite": suite, "sources": sources_lines,
                             "packages": dict(ln.split(" ", 1) for ln in packages.splitlines() if " " in ln)},
                  "python_packages": {p["name"]: p["version"] for p in json.loads((pip_list.strip().splitlines() or ["[]"])[0])},
                  "unresolved_on_build_host": list(inp.unresolved)}
        (rootfs / ROOT.lstrip("/") / "hostpgo-image.json").write_text(json.dumps(record, indent=2) + "\n")
        _repack(r, tl, bundle, f"host settings ({inp.settings_name}), built-in checkpoint, image record")
        cfg = ["--config.entrypoint=" + a for a in entrypoint(inp.settings_name)]
        cfg += ["--config.cmd=" + a for a in DEFAULT_CMD]
        cfg += [f"--config.env={k}={v}" for k, v in env.items()]
        cfg += [f"--config.label={k}={v}" for k, v in labels(inp).items()]
        _umoci(r, "config", "--image", f"{tl}:build", "--tag", layout_tag(inp.tag), "--author", "hostpgo",
               "--config.workingdir", DATA_DIR, *cfg)
        _umoci(r, "rm", "--image", f"{tl}:build")
        _umoci(r, "gc", "--layout", str(tl))
        shutil.rmtree(bundle)
        os.replace(tl, tmp / "oci.done")
        out.mkdir(parents=True, exist_ok=True)
        os.replace(tmp / "oci.done", layout)
        (out / "image-record.json").write_text(json.dumps(record, indent=2) + "\n")
        shutil.rmtree(tmp, ignore_errors=True)
        ctx.info.update({"layout": str(layout), "tag": layout_tag(inp.tag), "record": record,
                         "size_bytes": sum(p.stat().st_size for p in layout.rglob("*") if p.is_file())})

    def do_verify(ctx: StageContext) -> None:
        r = ctx.runner
        remove_stale(out, "", pattern=".verify.*", rootfs="rootfs")
        check = out / f".verify.{os.getpid()}"
        shutil.rmtree(check, ignore_errors=True)
        try:
            _umoci(r, "unpack", "--image", f"{layout}:{layout_tag(inp.tag)}", str(check))
            spec = json.loads((check / "config.json").read_text())
            proc = spec["process"]
            env = dict(e.split("=", 1) for e in proc["env"])
            entry = list(proc["args"][:len(proc["args"]) - len(DEFAULT_CMD)])
            rootfs = check / "rootfs"
            results = []
            with mounted(rootfs, r):
                lines: list[str] = []
                r.run(chroot_argv(rootfs, env, ["/bin/sh", "-c",
                                                f"find {ROOT} -name '*.so*' -type f -exec ldd {{}} + "
                                                "2>/dev/null | grep 'not found' || true"]),
                      timeout=900, collect=lines)
                missing = missing_in_image(lines, inp.unresolved)
                if missing:
                    raise ImageError(f"image {layout}: shared libraries found on this host are missing in the "
                                     f"image: {', '.join(missing[:20])}")
                for name in inp.verify_workloads:
                    lines = []
                    rc = r.run(chroot_argv(rootfs, env, [*entry, "workload", name, "--json", "--check-golden"]),
                               timeout=1800, ok_codes=(0, 1), collect=lines)
                    rec = last_json(lines) or {}
                    hs = rec.get("host_settings") or {}
                    results.append({"name": name, "exit_code": rc, "token_digest": rec.get("token_digest"),
                                    "golden_match": rec.get("golden_match"),
                                    "allocator_in_effect": hs.get("allocator_in_effect"),
                                    "host_settings": hs.get("summary")})
                    if hs.get("allocator_in_effect") is False:
                        raise ImageError(f"image {layout}: workload {name} ran without the allocator its host "
                                         f"settings ask for: {'; '.join(hs.get('warnings') or [])}")
                    if rc != 0 or rec.get("golden_match") is not True:
                        raise ImageError(f"image {layout}: workload {name} did not reproduce its golden tokens "
                                         f"through the entrypoint (got {rec.get('token_digest')}); the image is "
                                         "not usable")
            ctx.info.update({"workloads": results, "entrypoint": entry})
        finally:
            shutil.rmtree(check, ignore_errors=True)

    stages = [
        Stage("image-base", f"base rootfs: debian {suite} minbase + runtime libraries", base_key,
              (Call(f"SOURCE_DATE_EPOCH={REPRODUCIBLE_EPOCH} mmdebstrap --mode=root --variant=minbase --format=tar "
                    f"--include={','.join(inp.packages)} {suite} {base_tar} {' '.join(repr(s) for s in sources_lines)}",
                    do_base),), requires=(base_tar,), independent=True),
        Stage("image-wheels", "wheels of the runtime's dependencies", wheels_key,
              (Call(f"{sys.executable} -m pip wheel --only-binary=:all: --wheel-dir {wheels} "
                    f"{' '.join(inp.requirements)}", do_wheels),), requires=(wheels,), independent=True),
        Stage("image-assemble", "assemble the OCI layout (base, python, venv, runtime layers)", assemble_key,
              (Call(f"umoci init/new/unpack; untar base; copy {inp.prefix} -> {PYTHON_DIR}; chroot: venv + "
                    f"pip install --no-index hostpgo[runtime]; host settings -> {HOST_DIR}; checkpoint -> "
                    f"{DATA_DIR}; umoci repack per layer; umoci config; publish {layout}", do_assemble),),
              outputs=(out,)),
        Stage("image-verify", "verify: unpack the image, chroot, golden tokens through the entrypoint", verify_key,
              (Call(f"umoci unpack {layout}; ldd every shared object; then per workload: chroot <entrypoint> "
                    f"workload NAME --json --check-golden ({', '.join(inp.verify_workloads)})", do_verify),)),
    ]
    if inp.archive is not None:
        archive = inp.archive
        akey = digest({"stage": "image-archive", "verify": verify_key, "archive": str(archive)})

        def do_archive(ctx: StageContext) -> None:
            if archive.exists():
                raise ImageError(f"--archive {archive}: the file exists; hostpgo does not overwrite it "
                                 "(remove it or name another file)")
            tmp = archive.with_name(f".{archive.name}.{os.getpid()}.tmp")
            tmp.unlink(missing_ok=True)
            ctx.runner.run(["skopeo", "copy", f"oci:{layout}:{layout_tag(inp.tag)}",
                            f"docker-archive:{tmp}:{inp.tag}"], timeout=3600)
            os.replace(tmp, archive)
            ctx.info.update({"archive": str(archive), "sha256": _sha256(archive)})
        stages.append(Stage("image-archive", "docker-archive for `docker load` / `podman load`", akey,
                            (Call(f"skopeo copy oci:{layout}:{layout_tag(inp.tag)} docker-archive:{archive}",
                                  do_archive),), requires=(archive,)))

    def finish(ex: Execution) -> None:
        if "image-verify" not in ex.results:
            return
        rec = json.loads((out / "image-record.json").read_text())
        rec["stages"] = {n: {"seconds": r.seconds, "reused": r.skipped} for n, r in ex.results.items()}
        rec["verify"] = ex.results["image-verify"].info.get("workloads", [])
        rec["layout"] = str(layout)
        rec["size_bytes"] = ex.results["image-assemble"].info.get("size_bytes")
        if "image-archive" in ex.results:
            rec["archive"] = ex.results["image-archive"].info
        tmp = out / f".hostpgo-image.json.{os.getpid()}"
        tmp.write_text(json.dumps(rec, indent=2) + "\n")
        os.replace(tmp, out / "hostpgo-image.json")

    summary = {"prefix": str(out), "layout": str(layout), "tag": inp.tag, "base": str(base_tar),
               "wheels": str(wheels), "packages": list(inp.packages), "entrypoint": entrypoint(inp.settings_name)}
    return BuildPlan(f"image-{tag_slug(inp.tag)}", tuple(stages), inp.notes, summary, finish)


# ------------------------------------------------------------------------------------ preparation


def image_requirements(pyproject: Path = REPO_ROOT / "pyproject.toml") -> tuple[str, ...]:
    """What the image's venv installs besides this project: its dependencies and its `runtime` extra."""
    try:
        base = tuple(tomllib.loads(pyproject.read_text())["project"].get("dependencies", ()))
    except (OSError, KeyError, tomllib.TOMLDecodeError) as e:
        raise ImageError(f"{pyproject}: cannot read [project] dependencies ({e})") from None
    return tuple(dict.fromkeys((*base, *runtime_requirements(pyproject))))


def check_host(which=shutil.which, euid: int | None = None, host: Host | None = None) -> None:
    """A Debian-like host, root and the image tools; the error names each missing command and its package."""
    host = host or detect_host()
    if (host.os_id not in ("debian", "ubuntu")) if host.os_id else not host.is_debian_like:
        raise ImageError(f"the image's base is made by mmdebstrap from the host's Debian/Ubuntu mirrors; this host "
                         f"is {host.os_id or 'unknown'}, for which no base builder is written yet")
    euid = os.geteuid() if euid is None else euid
    if euid != 0:
        raise ImageError("building an image needs root (mmdebstrap --mode=root, chroot, mounting /proc); "
                         "run `nox -s image` as root")
    missing = {cmd: pkg for cmd, pkg in IMAGE_TOOLS.items() if which(cmd) is None}
    if missing:
        raise ImageError(f"missing {', '.join(missing)}; install with: apt-get install -y "
                         f"{' '.join(sorted(set(missing.values())))}")


def resolve_settings(ref: str, runner: Runner) -> tuple[str, dict[str, Any], tuple[Path, ...]]:
    """(name shipped in the image, resolved values, files to ship) for a host settings name or path.

    buildsys does not import the runtime: the runtime's own loader resolves and validates them.
    """
    lines: list[str] = []
    try:
        runner.run([sys.executable, "-m", "runtime.hostenv", "show", ref], cwd=REPO_ROOT, timeout=120,
                   collect=lines)
    except HostpgoError as e:
        tail = getattr(e, "log_tail", "")
        raise ImageError(f"--host-settings {ref}: {tail.strip().splitlines()[-1] if tail.strip() else e}") from None
    shown = json.loads("\n".join(lines[lines.index("{"):]))
    files = sorted((REPO_ROOT / "profiles" / "host").glob("*.toml"))
    name = ref
    if "/" in ref or ref.endswith(".toml"):
        path = Path(ref).resolve()
        if any(f.name == path.name and f.resolve() != path for f in files):
            raise ImageError(f"--host-settings {ref}: its file name clashes with profiles/host/{path.name}; "
                             "rename the file (the image ships settings by name)")
        files = [f for f in files if f.name != path.name] + [path]
        name = path.stem
    return name, shown["settings"], tuple(files)


def prepare(build: str, *, settings: str = "default", tag: str | None = None, archive: Path | None = None,
            work: WorkArea | None = None, runner: Runner | None = None,
            host_check=check_host, sources: Sequence[AptSource] | None = None) -> ImageInputs:
    work = work or WorkArea.from_env()
    host_check()
    pattern = re.compile(r"cpython-\d+\.\d+\.\d+-" + re.escape(build) + "$")
    candidates = (sorted(p for p in work.install.glob("cpython-*") if pattern.match(p.name))
                  if "/" not in build else [Path(build)])
    if not candidates or not (candidates[-1] / manifest_mod.FILE_NAME).is_file():
        known = sorted(p.name for p in work.install.glob("cpython-*") if (p / manifest_mod.FILE_NAME).is_file())
        raise ImageError(f"--build {build}: no installed build with a manifest under {work.install} "
                         f"(installed: {', '.join(known) or 'none'}); build it first: "
                         f"python -m buildsys build cpython --profile {build}")
    prefix = candidates[-1].resolve()
    man = manifest_mod.read(prefix)
    opt = man.get("profile", {}).get("optimize", {})
    if opt.get("shared"):
        raise ImageError(f"--build {build}: profile {man['profile']['name']} builds a shared libpython whose "
                         f"RUNPATH is the host prefix ({prefix}/lib); the image relocates the interpreter, so it "
                         "ships static-libpython builds (optimize.shared = false), such as workload-pgo-lto")
    if "-instrumented" in prefix.name:
        raise ImageError(f"--build {build}: an instrumented build is not shipped; name the optimized profile")
    runner = runner or Runner(work.logs / "image" / f"prepare-{build}.log")
    sname, svalues, sfiles = resolve_settings(settings, runner)
    minor = ".".join(str(man.get("version", "3.11")).split(".")[:2])
    reqs = image_requirements()
    deps = sorted(work.deps.glob(f"runtime-py{minor}-*"))
    if not deps:
        raise ImageError(f"no runtime dependencies installed under {work.deps} for Python {minor}; the image's "
                         f"library scan reads them: run `python -m buildsys build cpython --profile {build}` "
                         "(its runtime-deps stage installs them)")
    packages, unresolved = library_packages([prefix, deps[-1]])
    table = alloc_mod.table()
    asked, linked = svalues.get("allocator", {}).get("name", "glibc"), opt.get("allocator", "glibc")
    if linked != "glibc" and asked != linked:
        raise ImageError(f"--host-settings {settings}: asks for allocator {asked!r}, but build {prefix.name} links "
                         f"{linked!r}, which cannot be unloaded; ship it with settings whose allocator.name is "
                         f"{linked!r} (e.g. --host-settings {linked}, profiles/host/{linked}.toml)")
    wanted = {asked, linked}
    extra = sorted(table[a].packages["debian"] for a in wanted if a != "glibc" and a in table)
    verify = tuple(man.get("profile", {}).get("verify", {}).get("workloads", ())) or ("decode-b1",)
    stem = str(man.get("profile", {}).get("name", build))
    return ImageInputs(build=stem, build_id=str(man.get("build_id", prefix.name)), prefix=prefix,
                       build_manifest=man, settings_name=sname, settings=svalues, settings_files=sfiles,
                       packages=tuple(sorted(set(packages) | set(extra))),
                       sources=tuple(sources) if sources is not None else apt_sources(),
                       requirements=reqs, work=work,
                       tag=tag or f"hostpgo/{stem}:{sname}", verify_workloads=verify,
                       unresolved=tuple(sorted(unresolved)), archive=archive,
                       notes=(f"{len(unresolved)} sonames needed by shipped objects are missing on this host too "
                              f"(device plugins: {', '.join(sorted(unresolved)[:6])}...); recorded, not installed",)
                       if unresolved else ())
