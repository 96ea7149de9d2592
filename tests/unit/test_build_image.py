"""Unit: the OCI image plan — apt sources, library scan parsing, keys, entrypoint, and the errors that stop it."""

from __future__ import annotations

import inspect
import json
import subprocess
import sys
from pathlib import Path

import pytest

from buildsys import image
from buildsys.core import manifest
from buildsys.core.paths import REPRODUCIBLE_EPOCH, WorkArea
from buildsys.core.stages import Execution, StageContext, StageResult
from buildsys.toolchain import Host
from hostpgo.runner import Runner, format_command

DEB822 = """Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb-src
URIs: http://deb.debian.org/debian
Suites: bookworm
Components: main

Types: deb
URIs: http://deb.debian.org/debian-security
Suites: bookworm-security
Components: main contrib
"""

LDD = """\tlinux-vdso.so.1 (0x00007ffc)
\tlibtcmalloc_minimal.so.4 => /lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4 (0x00007f01)
\tlibascendcl.so => not found
\tlibm.so.6 => /lib/x86_64-linux-gnu/libm.so.6 (0x00007f02)
\t/lib64/ld-linux-x86-64.so.2 (0x00007f03)
"""


def test_apt_sources_read_deb822_and_one_line_files(tmp_path: Path) -> None:
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list.d" / "debian.sources").write_text(DEB822)
    (tmp_path / "sources.list").write_text("# comment\n"
                                           "deb [arch=amd64] http://mirror.example/debian bookworm main non-free\n"
                                           "deb-src http://mirror.example/debian bookworm main\n")
    got = image.apt_sources(tmp_path)
    assert [s.line() for s in got] == [
        "deb http://mirror.example/debian bookworm main non-free",
        "deb http://deb.debian.org/debian bookworm main",
        "deb http://deb.debian.org/debian bookworm-updates main",
        "deb http://deb.debian.org/debian-security bookworm-security main contrib",
    ]
    assert image.base_suite(got[1:]) == "bookworm"
    assert image.base_suite([image.AptSource("u", "bookworm-security", ("main",))]) == "bookworm"
    with pytest.raises(image.ImageError, match="no `deb` entries"):
        image.base_suite(())


def test_parse_ldd_and_what_counts_as_missing_in_the_image() -> None:
    found, missing = image.parse_ldd(LDD)
    assert found["libtcmalloc_minimal.so.4"] == "/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4"
    assert found["ld-linux-x86-64.so.2"] == "/lib64/ld-linux-x86-64.so.2"
    assert "linux-vdso.so.1" not in found and missing == ["libascendcl.so"]
    # Missing on the build host too (a device plugin's CANN library): not the image's fault.
    assert image.missing_in_image(LDD.splitlines(), ["libascendcl.so"]) == []
    assert image.missing_in_image(LDD.splitlines() + ["\tlibssl.so.3 => not found"], ["libascendcl.so"]) == \
        ["libssl.so.3"]


def test_elf_scan_skips_symlinks_and_non_elf(tmp_path: Path) -> None:
    (tmp_path / "a.so").write_bytes(b"\x7fELF" + b"\0" * 60)
    (tmp_path / "b.so").write_text("not elf")
    (tmp_path / "c.so.1").symlink_to(tmp_path / "a.so")
    assert image.elf_files([tmp_path]) == [tmp_path / "a.so"]


def test_tags() -> None:
    assert image.layout_tag("hostpgo/workload-pgo-lto:default") == "default"
    assert image.layout_tag("registry:5000/hostpgo/x") == "latest"
    assert image.tag_slug("hostpgo/workload-pgo-lto:tcmalloc") == "hostpgo-workload-pgo-lto-tcmalloc"


def _inputs(tmp_path: Path, **kw) -> image.ImageInputs:
    prefix = tmp_path / "install" / "cpython-3.11.2-workload-pgo-lto"
    prefix.mkdir(parents=True)
    (prefix / manifest.FILE_NAME).write_text(json.dumps({"version": "3.11.2"}))
    settings = tmp_path / "default.toml"
    settings.write_text('description = "d"\n')
    base = dict(build="workload-pgo-lto", build_id=prefix.name, prefix=prefix, build_manifest={"version": "3.11.2"},
                settings_name="default", settings={"allocator": {"name": "glibc"}}, settings_files=(settings,),
                packages=("libssl3", "zlib1g"), sources=(image.AptSource("http://d/debian", "bookworm", ("main",)),),
                requirements=("mindspore==2.10.0",), work=WorkArea(tmp_path / "w"),
                tag="hostpgo/workload-pgo-lto:default", verify_workloads=("decode-b1",))
    base.update(kw)
    return image.ImageInputs(**base)


def test_plan_stages_keys_and_entrypoint(tmp_path: Path) -> None:
    inp = _inputs(tmp_path)
    p = image.plan(inp)
    assert [s.name for s in p.stages] == ["image-base", "image-wheels", "image-assemble", "image-verify"]
    assert p.summary["entrypoint"] == ["/opt/hostpgo/venv/bin/python", "-m", "hostenv", "exec", "default",
                                       "--", "/opt/hostpgo/venv/bin/python", "-m", "runtime"]
    assert p.summary["layers"] == ["base", "python", "venv", "runtime"]
    # The output directory carries the assembly key: another input never lands on a built image.
    out = Path(p.summary["prefix"])
    assert out.name.startswith("hostpgo-workload-pgo-lto-default-") and p.stages[2].outputs == (out,)
    keys = {s.name: s.key for s in p.stages}
    other = {s.name: s.key for s in image.plan(_inputs(tmp_path / "b", settings_name="jemalloc",
                                                       settings={"allocator": {"name": "jemalloc"}})).stages}
    assert other["image-base"] == keys["image-base"] and other["image-wheels"] == keys["image-wheels"]
    assert other["image-assemble"] != keys["image-assemble"] and other["image-verify"] != keys["image-verify"]
    more = {s.name: s.key for s in image.plan(_inputs(tmp_path / "c", packages=("libssl3",))).stages}
    assert more["image-base"] != keys["image-base"]


def test_archive_stage_and_env(tmp_path: Path) -> None:
    p = image.plan(_inputs(tmp_path, archive=tmp_path / "img.tar"))
    assert p.stages[-1].name == "image-archive"
    assert "docker-archive:" in p.stages[-1].actions[0].describe()
    assert "PYTHONDONTWRITEBYTECODE" not in image.image_env({})
    env = image.image_env({"startup": {"precompile": True}})
    assert env["PYTHONDONTWRITEBYTECODE"] == "1" and env["HOSTPGO_HOST_PROFILES"] == "/opt/hostpgo/host"


def test_chroot_argv_passes_only_the_given_environment(tmp_path: Path) -> None:
    argv = image.chroot_argv(tmp_path, {"A": "1"}, ["python", "-V"])
    assert argv == ["chroot", str(tmp_path), "/usr/bin/env", "-i", "A=1", "python", "-V"]


def test_check_host_names_missing_tools_and_root() -> None:
    debian = Host("x86_64", "debian")
    with pytest.raises(image.ImageError, match="needs root"):
        image.check_host(which=lambda c: "/usr/bin/" + c, euid=1000, host=debian)
    with pytest.raises(image.ImageError, match="missing mmdebstrap, umoci; install with: apt-get install -y "
                                               "mmdebstrap umoci"):
        image.check_host(which=lambda c: None if c in ("mmdebstrap", "umoci") else "/x", euid=0, host=debian)
    with pytest.raises(image.ImageError, match="this host is openEuler, for which no base builder"):
        image.check_host(which=lambda c: "/x", euid=0, host=Host("aarch64", "openEuler"))
    image.check_host(which=lambda c: "/x", euid=0, host=debian)


def _manifest(name: str, shared: bool) -> str:
    doc = {k: kind() if isinstance(kind, type) else None for k, kind in manifest.REQUIRED.items()}
    doc.update({"schema": manifest.SCHEMA, "build_id": f"cpython-3.11.2-{name}", "version": "3.11.2",
                "profile": {"name": name, "optimize": {"shared": shared}}})
    manifest.validate(doc)
    return json.dumps(doc)


def test_prepare_refuses_missing_shared_and_instrumented_builds(tmp_path: Path) -> None:
    work = WorkArea(tmp_path)

    def ok() -> None:
        return None

    with pytest.raises(image.ImageError, match="--build workload-pgo-lto: no installed build.*build it first: "
                                               "python -m buildsys build cpython --profile workload-pgo-lto"):
        image.prepare("workload-pgo-lto", work=work, host_check=ok)
    shared = work.install / "cpython-3.11.2-baseline"
    shared.mkdir(parents=True)
    (shared / manifest.FILE_NAME).write_text(_manifest("baseline", True))
    with pytest.raises(image.ImageError, match="shared libpython whose RUNPATH is the host prefix"):
        image.prepare("baseline", work=work, host_check=ok, runner=Runner(tmp_path / "log"))
    inst = work.install / "cpython-3.11.2-workload-pgo-lto-instrumented"
    inst.mkdir(parents=True)
    (inst / manifest.FILE_NAME).write_text(_manifest("workload-pgo-lto", False))
    with pytest.raises(image.ImageError, match="instrumented build is not shipped"):
        image.prepare("workload-pgo-lto-instrumented", work=work, host_check=ok)


def test_unknown_host_settings_are_named(tmp_path: Path) -> None:
    with pytest.raises(image.ImageError, match="--host-settings no-such-settings: .*no host settings named"):
        image.resolve_settings("no-such-settings")


def test_requirements_cover_the_project_dependencies_and_runtime_extra(tmp_path: Path) -> None:
    py = tmp_path / "pyproject.toml"
    py.write_text('[project]\nname = "x"\ndependencies = ["rich>=13"]\n'
                  '[project.optional-dependencies]\nruntime = ["mindspore==2.10.0", "rich>=13"]\n')
    assert image.image_requirements(py) == ("rich>=13", "mindspore==2.10.0")
    py.write_text("[tool]\n")
    with pytest.raises(image.ImageError, match="pyproject.toml: cannot read"):
        image.image_requirements(py)


def test_stale_scratch_of_dead_runs_is_removed_live_ones_kept(tmp_path: Path) -> None:
    dead = tmp_path / ".hostpgo-x-default-abc.111.tmp"
    live = tmp_path / ".hostpgo-x-default-abc.222.tmp"
    other = tmp_path / ".hostpgo-y-default-abc.111.tmp"
    for d in (dead, live, other):
        (d / "bundle").mkdir(parents=True)
    got = image.remove_stale(tmp_path, "hostpgo-x-default", alive=lambda pid: pid == 222)
    assert got == [dead] and not dead.exists() and live.exists() and other.exists()
    (tmp_path / ".verify.333" / "rootfs").mkdir(parents=True)
    assert image.remove_stale(tmp_path, "", alive=lambda pid: False, pattern=".verify.*", rootfs="rootfs") == \
        [tmp_path / ".verify.333"]


def test_project_digest_ignores_bytecode_caches(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text("[project]\n")
    for pkg in ("buildsys", "runtime", "perf"):
        (tmp_path / pkg).mkdir()
        (tmp_path / pkg / "m.py").write_text("x = 1\n")
    first = image.project_digest(tmp_path)
    (tmp_path / "runtime" / "__pycache__").mkdir()
    (tmp_path / "runtime" / "__pycache__" / "m.cpython-311.pyc").write_bytes(b"\0")
    assert image.project_digest(tmp_path) == first
    (tmp_path / "runtime" / "m.py").write_text("x = 2\n")
    assert image.project_digest(tmp_path) != first


class RecordingRunner(Runner):
    """Records every command instead of running it; `replies` maps argv[0] (or a full argv tuple) to output."""

    def __init__(self, replies: dict | None = None, on_run=None) -> None:
        super().__init__(None)
        self.calls: list[tuple[list[str], dict]] = []
        self.replies = replies or {}
        self.on_run = on_run

    def _reply(self, argv: list[str]) -> tuple[int, str]:
        got = self.replies.get(tuple(argv), self.replies.get(argv[0], (0, "")))
        return got(argv) if callable(got) else got

    def run(self, argv, *, env=None, collect=None, **kw) -> int:
        argv = [str(a) for a in argv]
        self.calls.append((argv, dict(env or {})))
        if self.on_run:
            self.on_run(argv)
        rc, out = self._reply(argv)
        if collect is not None:
            collect.extend(out.splitlines())
        return rc

    def capture(self, argv, *, env=None, check=True, **kw) -> subprocess.CompletedProcess[str]:
        argv = [str(a) for a in argv]
        self.calls.append((argv, dict(env or {})))
        rc, out = self._reply(argv)
        return subprocess.CompletedProcess(argv, rc, out, "")


def test_the_base_stage_runs_the_command_its_description_shows(tmp_path: Path) -> None:
    for packages, include in ((("libssl3", "zlib1g"), "--include=libssl3,zlib1g"), ((), "--include=libc-bin")):
        p = image.plan(_inputs(tmp_path / include[10:14], packages=packages))
        argv = p.summary["base_command"]
        tmp = Path(argv[6])
        assert argv == ["mmdebstrap", "--mode=root", "--variant=minbase", "--format=tar", include, "bookworm",
                        str(tmp), "deb http://d/debian bookworm main"]
        assert tmp.parent == Path(p.summary["base"]).parent and tmp.name.startswith(".")
        assert format_command(argv, {"SOURCE_DATE_EPOCH": REPRODUCIBLE_EPOCH}) in p.stages[0].actions[0].describe()
        # What the stage runs is that same list, with SOURCE_DATE_EPOCH, then the tarball is published.
        runner = RecordingRunner(on_run=lambda a: Path(a[6]).write_bytes(b"tar"))
        p.stages[0].actions[0].fn(StageContext(runner=runner, info={}, results={}))
        assert runner.calls == [(argv, {"SOURCE_DATE_EPOCH": REPRODUCIBLE_EPOCH})]
        assert Path(p.summary["base"]).read_bytes() == b"tar" and not tmp.exists()


def test_unresolved_packages_are_shown_and_never_built(tmp_path: Path) -> None:
    p = image.plan(_inputs(tmp_path, packages=None))
    assert "--include=<to be resolved at run time" in p.stages[0].actions[0].describe()
    assert p.summary["packages"] is None
    with pytest.raises(image.ImageError, match="not resolved"):
        p.stages[0].actions[0].fn(StageContext(runner=RecordingRunner(), info={}, results={}))


def test_a_dry_run_prepare_runs_no_library_scan(tmp_path: Path) -> None:
    work = WorkArea(tmp_path)
    prefix = work.install / "cpython-3.11.2-workload-pgo-lto"
    prefix.mkdir(parents=True)
    (prefix / manifest.FILE_NAME).write_text(_manifest("workload-pgo-lto", False))
    (prefix / "lib.so").write_bytes(b"\x7fELF" + b"\0" * 60)
    (work.deps / "runtime-py3.11-abc").mkdir(parents=True)
    shown = json.dumps({"settings": {"allocator": {"name": "glibc"}}}, indent=1)
    runner = RecordingRunner({"ldd": (0, LDD), "dpkg": (0, "libtcmalloc-minimal4:amd64: /lib/x\n")})
    runner.replies[sys.executable] = (0, shown)
    inp = image.prepare("workload-pgo-lto", work=work, host_check=lambda: None, runner=runner, scan_libraries=False,
                        sources=(image.AptSource("http://d/debian", "bookworm", ("main",)),))
    assert inp.packages is None and any("to be resolved at run time" in n for n in inp.notes)
    assert runner.calls == []  # the settings are resolved in-process; no library scan
    full = image.prepare("workload-pgo-lto", work=work, host_check=lambda: None, runner=runner,
                         sources=(image.AptSource("http://d/debian", "bookworm", ("main",)),))
    assert full.packages == ("libtcmalloc-minimal4",) and full.unresolved == ("libascendcl.so",)
    assert {c[0][0] for c in runner.calls} == {"ldd", "dpkg"}


def test_library_scan_goes_through_the_runner(tmp_path: Path) -> None:
    (tmp_path / "a.so").write_bytes(b"\x7fELF" + b"\0" * 60)
    (tmp_path / "static.so").write_bytes(b"\x7fELF" + b"\0" * 60)
    owner = {"/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4": (0, "libtcmalloc-minimal4:amd64: /lib/x\n"),
             "/lib/x86_64-linux-gnu/libm.so.6": (0, "libc6:amd64: /lib/x86_64-linux-gnu/libm.so.6\n"),
             "/lib64/ld-linux-x86-64.so.2": (0, "libc6:amd64: /lib64/ld-linux-x86-64.so.2\n")}
    runner = RecordingRunner({"ldd": lambda a: (1, "not a dynamic executable") if a[1].endswith("static.so")
                              else (0, LDD),
                              "dpkg": lambda a: owner.get(a[2], (1, ""))})
    packages, unresolved = image.library_packages([tmp_path], runner)
    assert packages == ("libc6", "libtcmalloc-minimal4")
    assert unresolved == {"libascendcl.so": [str(tmp_path / "a.so")]}
    assert {c[0][0] for c in runner.calls} == {"ldd", "dpkg"}
    runner = RecordingRunner({"ldd": (0, LDD), "dpkg": (1, "")})
    with pytest.raises(image.ImageError, match="no Debian package owns it"):
        image.library_packages([tmp_path], runner)


def test_no_module_of_the_image_package_runs_a_command_by_itself() -> None:
    import buildsys.image as pkg
    for path in Path(pkg.__file__).parent.glob("*.py"):
        assert "subprocess" not in path.read_text(), f"{path.name}: commands go through hostpgo.runner"
        assert "os.replace(" not in path.read_text() or path.name == "layers.py", path.name


def test_the_image_record_holds_each_layer_digest_and_the_manifest_digest(tmp_path: Path) -> None:
    p = image.plan(_inputs(tmp_path))
    out = Path(p.summary["prefix"])
    out.mkdir(parents=True)
    (out / "image-record.json").write_text(json.dumps({"schema": image.IMAGE_SCHEMA, "tag": "t"}))
    oci_rec = {"manifest_digest": "sha256:m", "config_digest": "sha256:c",
               "layers": [{"name": n, "digest": f"sha256:{n}", "diff_id": f"sha256:d{n}", "size": 1, "entries": 1,
                           "comment": n} for n in image.LAYER_NAMES]}
    results = {"image-assemble": StageResult("image-assemble", "k", True, 1.0, {"oci": oci_rec, "size_bytes": 9}),
               "image-verify": StageResult("image-verify", "k", False, 2.0, {"workloads": [{"name": "decode-b1"}]})}
    p.finish(Execution(p, results))
    rec = json.loads((out / image.RECORD_NAME).read_text())
    assert rec["oci"]["manifest_digest"] == "sha256:m" and rec["oci"]["config_digest"] == "sha256:c"
    assert [layer["digest"] for layer in rec["oci"]["layers"]] == [f"sha256:{n}" for n in image.LAYER_NAMES]
    assert rec["verify"] == [{"name": "decode-b1"}] and rec["stages"]["image-assemble"]["reused"] is True


def test_labels_and_config_dates_are_fixed(tmp_path: Path) -> None:
    inp = _inputs(tmp_path)
    assert image.labels(inp)["org.opencontainers.image.created"] == "1980-01-01T00:00:00Z"
    assert image.oci_arch("aarch64") == "arm64" and image.oci_arch("x86_64") == "amd64"
    assert image.build_env()["SOURCE_DATE_EPOCH"] == REPRODUCIBLE_EPOCH
    assert inspect.signature(image.prepare).parameters["scan_libraries"].default is True
