"""Unit: the OCI image plan — apt sources, library scan parsing, keys, entrypoint, and the errors that stop it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from buildsys import image
from buildsys.core import manifest
from buildsys.core.paths import WorkArea
from buildsys.toolchain import Host
from hostpgo.runner import Runner

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
    (tmp_path / "sources.list").write_text("# comment\ndeb [arch=amd64] http://mirror.example/debian bookworm main non-free\n"
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
    assert p.summary["entrypoint"] == ["/opt/hostpgo/venv/bin/python", "-m", "runtime.hostenv", "exec", "default",
                                       "--", "/opt/hostpgo/venv/bin/python", "-m", "runtime"]
    assert "mmdebstrap --mode=root --variant=minbase" in p.stages[0].actions[0].describe()
    assert "--include=libssl3,zlib1g bookworm" in p.stages[0].actions[0].describe()
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
    ok = lambda: None  # noqa: E731 - the host check is not what these cases test
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
        image.resolve_settings("no-such-settings", Runner(tmp_path / "log"))


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
