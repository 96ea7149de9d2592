"""Integration: the image's four layers and its OCI layout, built twice from a tiny fake base tarball and tiny
trees through the same assembly code as a real image (no mmdebstrap, no chroot); same inputs, same digests."""

from __future__ import annotations

import gzip
import io
import json
import os
import py_compile
import shutil
import tarfile
import time
from pathlib import Path

import pytest

from buildsys import image
from buildsys.core.paths import REPRODUCIBLE_EPOCH
from buildsys.image import layers, oci
from hostpgo.fsutil import write_json
from hostpgo.runner import Runner

EPOCH = int(REPRODUCIBLE_EPOCH)
IS_ROOT = os.geteuid() == 0


def _fake_base(path: Path) -> Path:
    """A minbase stand-in: directories, a root-owned file of group shadow, a symlink, a hard link pair."""
    def add(tar: tarfile.TarFile, name: str, kind: bytes = tarfile.REGTYPE, data: bytes = b"", mode: int = 0o644,
            gid: int = 0, link: str = "") -> None:
        ti = tarfile.TarInfo(name)
        ti.type, ti.mode, ti.gid, ti.mtime, ti.linkname = kind, mode, gid, 1_700_000_000, link
        ti.size = len(data) if kind == tarfile.REGTYPE else 0
        tar.addfile(ti, io.BytesIO(data) if kind == tarfile.REGTYPE else None)

    with tarfile.open(path, "w") as tar:
        for d in ("etc", "usr", "usr/bin", "tmp", "var", "var/lib", "opt", "proc", "dev"):
            add(tar, d, tarfile.DIRTYPE, mode=0o1777 if d == "tmp" else 0o755)
        add(tar, "etc/os-release", data=b"ID=debian\n")
        add(tar, "etc/motd", data=b"hello\n")
        add(tar, "etc/shadow", data=b"root:*:1::::::\n", mode=0o640, gid=42)
        add(tar, "usr/bin/tool", data=b"#!/bin/sh\n", mode=0o755)
        add(tar, "usr/bin/tool-again", tarfile.LNKTYPE, link="usr/bin/tool")
        add(tar, "bin", tarfile.SYMTYPE, link="usr/bin")
    return path


def _fake_prefix(root: Path, mtime: float) -> Path:
    """An installed prefix with a timestamp-mode pyc (as `make install` writes them) and a test suite."""
    lib = root / "lib" / "python3.11"
    (lib / "test").mkdir(parents=True)
    (root / "bin").mkdir()
    (root / "bin" / "python3.11").write_text("#!/bin/sh\n")
    (root / "bin" / "python3.11").chmod(0o755)
    (root / "hostpgo-manifest.json").write_text('{"version": "3.11.2"}\n')
    (lib / "test" / "test_x.py").write_text("pass\n")
    src = lib / "os.py"
    src.write_text("sep = '/'\n")
    os.utime(src, (mtime, mtime))
    py_compile.compile(str(src), cfile=str(lib / "__pycache__" / "os.cpython-311.pyc"), doraise=True,
                       invalidation_mode=py_compile.PycInvalidationMode.TIMESTAMP)
    for p in root.rglob("*"):
        if p != src:
            os.utime(p, (mtime, mtime), follow_symlinks=False)
    return root


def _build(work: Path, base_tar: Path, prefix: Path, settings: Path, reverse: bool) -> oci.ImageDigests:
    """One image, through `assemble_layout` with the real base extraction and prefix copy; the venv and runtime
    steps write tiny trees (in reverse order when `reverse`, to show the order does not matter)."""
    runner = Runner(work / "log")

    def venv(rootfs: Path) -> None:
        site = rootfs / "opt/hostpgo/venv/lib/python3.11/site-packages"
        names = ["a.py", "b.py", "c.py"]
        site.mkdir(parents=True)
        for n in reversed(names) if reverse else names:
            (site / n).write_text(f"# {n}\n")
        (rootfs / "opt/hostpgo/venv/bin").mkdir()
        (rootfs / "opt/hostpgo/venv/bin/python").symlink_to("/opt/hostpgo/python/bin/python3.11")
        (rootfs / "tmp/hostpgo-wheels").mkdir()
        (rootfs / "tmp/hostpgo-wheels/x.whl").write_bytes(b"PK")
        shutil.rmtree(rootfs / "tmp/hostpgo-wheels")
        (rootfs / "etc/motd").unlink()

    def runtime(rootfs: Path) -> None:
        host = rootfs / "opt/hostpgo/host"
        host.mkdir()
        shutil.copy2(settings, host / settings.name)
        ckpt = rootfs / "var/lib/hostpgo/runtime/checkpoints/tiny-seed0-w1"
        ckpt.mkdir(parents=True)
        (ckpt / "weights.bin").write_bytes(bytes(range(256)) * 4)
        write_json(rootfs / "opt/hostpgo/hostpgo-image.json", {"schema": image.IMAGE_SCHEMA, "tag": "t"})

    steps = [image.LayerStep("base", "debian bookworm minbase", lambda r: image.extract_base(base_tar, r, runner)),
             image.LayerStep("python", "CPython",
                             lambda r: image.copy_prefix(prefix, r / "opt/hostpgo/python", "3.11")),
             image.LayerStep("venv", "venv", venv),
             image.LayerStep("runtime", "host settings", runtime)]

    def config(done):
        return oci.image_config(done, created=image.epoch_iso(), architecture="amd64",
                                entrypoint=image.entrypoint("default"), cmd=image.DEFAULT_CMD,
                                env=image.image_env({}), workdir=image.DATA_DIR, labels={"io.hostpgo.profile": "p"})

    return image.assemble_layout(work / "rootfs", work / "oci", steps, epoch=EPOCH, tag="default", config=config)


def _members(layout: Path, digest: str) -> dict[str, tarfile.TarInfo]:
    blob = oci.blobs_dir(layout) / digest.split(":", 1)[1]
    with tarfile.open(blob, "r:gz") as tar:
        return {m.name: m for m in tar.getmembers()}


@pytest.fixture
def two_builds(tmp_path: Path):
    base_tar = _fake_base(tmp_path / "base.tar")
    settings = tmp_path / "default.toml"
    settings.write_text('description = "d"\n')
    prefix = tmp_path / "prefix"  # one path for both: a pyc records its source's path
    first = _build(tmp_path / "a", base_tar, _fake_prefix(prefix, time.time() - 86400), settings, reverse=False)
    shutil.rmtree(prefix)  # installed again: same content, other mtimes (and so other pyc headers)
    os.utime(settings, (time.time() + 100, time.time() + 100))
    second = _build(tmp_path / "b", base_tar, _fake_prefix(prefix, time.time()), settings, reverse=True)
    return tmp_path, first, second


def test_same_inputs_give_the_same_manifest_config_and_layer_digests(two_builds) -> None:
    tmp_path, first, second = two_builds
    print("manifest", first.manifest, "config", first.config)
    for a in first.layers:
        print(a.name, a.digest, a.diff_id, a.size, a.entries)
    assert [layer.name for layer in first.layers] == ["base", "python", "venv", "runtime"]
    assert first.manifest == second.manifest and first.config == second.config
    assert ([(x.digest, x.diff_id, x.size) for x in first.layers]
            == [(x.digest, x.diff_id, x.size) for x in second.layers])
    assert len({x.digest for x in first.layers}) == 4
    # The layout files themselves are byte-identical.
    for name in ("index.json", "oci-layout"):
        assert (tmp_path / "a/oci" / name).read_bytes() == (tmp_path / "b/oci" / name).read_bytes()
    assert (sorted(os.listdir(oci.blobs_dir(tmp_path / "a/oci")))
            == sorted(os.listdir(oci.blobs_dir(tmp_path / "b/oci"))))


def test_the_manifest_and_config_describe_four_layers_with_fixed_dates(two_builds) -> None:
    tmp_path, first, _ = two_builds
    digest, manifest, config = oci.read_image(tmp_path / "a/oci", "default")
    assert digest == first.manifest
    assert [m["digest"] for m in manifest["layers"]] == [x.digest for x in first.layers]
    assert {m["mediaType"] for m in manifest["layers"]} == {"application/vnd.oci.image.layer.v1.tar+gzip"}
    assert config["rootfs"]["diff_ids"] == [x.diff_id for x in first.layers]
    assert config["created"] == "1980-01-01T00:00:00Z"
    assert [h["created"] for h in config["history"]] == ["1980-01-01T00:00:00Z"] * 4
    assert config["config"]["Entrypoint"][2:4] == ["hostenv", "exec"]
    for layer in first.layers:  # gzip header: no timestamp, no file name
        head = (oci.blobs_dir(tmp_path / "a/oci") / layer.digest.split(":", 1)[1]).read_bytes()[:10]
        assert head[:3] == b"\x1f\x8b\x08" and head[3] == 0 and head[4:8] == b"\0\0\0\0"
        assert gzip.decompress((oci.blobs_dir(tmp_path / "a/oci") / layer.digest.split(":", 1)[1]).read_bytes())


def test_each_layer_holds_only_what_its_step_changed(two_builds) -> None:
    tmp_path, first, _ = two_builds
    layout = tmp_path / "a/oci"
    base, python, venv, runtime = (_members(layout, x.digest) for x in first.layers)
    assert sorted(base) == sorted(["bin", "dev", "etc", "etc/motd", "etc/os-release", "etc/shadow", "opt", "proc",
                                   "tmp", "usr", "usr/bin", "usr/bin/tool", "usr/bin/tool-again", "var", "var/lib"])
    assert base["bin"].issym() and base["bin"].linkname == "usr/bin"
    assert base["usr/bin/tool-again"].islnk() and base["usr/bin/tool-again"].linkname == "usr/bin/tool"
    assert base["tmp"].mode == 0o1777 and base["etc/shadow"].mode == 0o640
    if IS_ROOT:  # tar keeps the numeric group only when extracting as root
        assert base["etc/shadow"].gid == 42
    assert sorted(python) == ["opt", "opt/hostpgo", "opt/hostpgo/python", "opt/hostpgo/python/bin",
                              "opt/hostpgo/python/bin/python3.11", "opt/hostpgo/python/hostpgo-manifest.json",
                              "opt/hostpgo/python/lib", "opt/hostpgo/python/lib/python3.11",
                              "opt/hostpgo/python/lib/python3.11/__pycache__",
                              "opt/hostpgo/python/lib/python3.11/__pycache__/os.cpython-311.pyc",
                              "opt/hostpgo/python/lib/python3.11/os.py"]  # the test suite is left out
    assert {"opt/hostpgo/venv/bin/python", "opt/hostpgo/venv/lib/python3.11/site-packages/a.py",
            "etc/.wh.motd", "etc"} <= set(venv)
    # Made and removed within the step: neither the wheels nor /tmp (unchanged in the end) are in it.
    assert not any(n.startswith(("opt/hostpgo/python/", "tmp")) for n in venv)
    assert venv["etc/.wh.motd"].size == 0
    assert {"opt/hostpgo/host/default.toml", "opt/hostpgo/hostpgo-image.json",
            "var/lib/hostpgo/runtime/checkpoints/tiny-seed0-w1/weights.bin"} <= set(runtime)
    assert not any(n.startswith("opt/hostpgo/venv") for n in runtime)
    # Normalized entries: clamped mtimes, numeric owners without names, sorted by path components.
    for members in (base, python, venv, runtime):
        assert all(m.mtime <= EPOCH and m.uname == "" and m.gname == "" for m in members.values())
        names = list(members)
        assert names == sorted(names, key=lambda n: n.split("/"))


def test_a_timestamp_pyc_stays_valid_for_its_clamped_source(two_builds) -> None:
    tmp_path, first, _ = two_builds
    blob = oci.blobs_dir(tmp_path / "a/oci") / first.layers[1].digest.split(":", 1)[1]
    with tarfile.open(blob, "r:gz") as tar:
        src = tar.getmember("opt/hostpgo/python/lib/python3.11/os.py")
        pyc = tar.extractfile("opt/hostpgo/python/lib/python3.11/__pycache__/os.cpython-311.pyc").read()
    assert int.from_bytes(pyc[4:8], "little") == 0  # timestamp mode
    assert int.from_bytes(pyc[8:12], "little") == src.mtime == EPOCH
    assert int.from_bytes(pyc[12:16], "little") == src.size


def test_changes_lists_parents_and_one_whiteout_per_removed_tree() -> None:
    d, f = (0o040000, 0o755, 0, 0, 0, None, 0, ""), (0o100000, 0o644, 0, 0, 3, 1, 0, "")
    before = {"a": d, "a/b": d, "a/b/c": f, "a/b/d": f, "x": d, "x/y": f}
    after = {"a": d, "x": d, "x/y": (*f[:5], 2, 0, ""), "x/z": f}
    changed, removed = layers.changes(before, after)
    assert changed == ["a", "x", "x/y", "x/z"] and removed == ["a/b"]
    assert layers.whiteout_name("a/b") == "a/.wh.b" and layers.whiteout_name("top") == ".wh.top"


@pytest.mark.skipif(not (IS_ROOT and shutil.which("umoci")), reason="umoci unpack of the layout needs root and umoci")
def test_umoci_unpacks_the_layout_with_all_four_layers_applied(two_builds) -> None:
    tmp_path, _, _ = two_builds
    bundle = tmp_path / "bundle"
    Runner(tmp_path / "umoci.log").run(["umoci", "unpack", "--image", f"{tmp_path / 'a/oci'}:default", str(bundle)])
    rootfs = bundle / "rootfs"
    assert (rootfs / "etc/os-release").read_text() == "ID=debian\n"
    assert not (rootfs / "etc/motd").exists()  # the venv layer's whiteout
    assert (rootfs / "opt/hostpgo/python/bin/python3.11").is_file()
    assert os.readlink(rootfs / "opt/hostpgo/venv/bin/python") == "/opt/hostpgo/python/bin/python3.11"
    assert json.loads((rootfs / "opt/hostpgo/hostpgo-image.json").read_text())["tag"] == "t"
    assert os.stat(rootfs / "etc/shadow").st_gid == 42
    spec = json.loads((bundle / "config.json").read_text())
    assert spec["process"]["args"][:3] == ["/opt/hostpgo/venv/bin/python", "-m", "hostenv"]


def test_other_host_settings_change_only_the_runtime_layer(tmp_path: Path) -> None:
    base_tar = _fake_base(tmp_path / "base.tar")
    prefix = _fake_prefix(tmp_path / "prefix", time.time())
    settings = tmp_path / "default.toml"
    settings.write_text('description = "d"\n')
    first = _build(tmp_path / "a", base_tar, prefix, settings, reverse=False)
    settings.write_text('description = "tcmalloc"\n')
    second = _build(tmp_path / "b", base_tar, prefix, settings, reverse=False)
    assert [x.digest for x in first.layers[:3]] == [x.digest for x in second.layers[:3]]
    assert first.layers[3].digest != second.layers[3].digest and first.manifest != second.manifest


def test_a_pyc_whose_source_is_an_absolute_symlink_is_clamped_by_the_target_inside_the_rootfs(tmp_path: Path) -> None:
    root = tmp_path / "rootfs"
    (root / "etc").mkdir(parents=True)
    (root / "lib/__pycache__").mkdir(parents=True)
    target = root / "etc/sitecustomize.py"
    target.write_text("x = 1\n")
    os.utime(target, (1_700_000_000, 1_700_000_000))
    (root / "lib/sitecustomize.py").symlink_to("/etc/sitecustomize.py")  # resolves inside the image, not here
    pyc = root / "lib/__pycache__/sitecustomize.cpython-311.pyc"
    py_compile.compile(str(target), cfile=str(pyc), doraise=True,
                       invalidation_mode=py_compile.PycInvalidationMode.TIMESTAMP)
    assert layers.resolve_inside(root, root / "lib/sitecustomize.py") == target
    blob = layers.write_layer(root, ["lib", "lib/__pycache__", "lib/__pycache__/sitecustomize.cpython-311.pyc"], [],
                              tmp_path / "blobs", EPOCH, name="python", comment="")
    with tarfile.open(tmp_path / "blobs" / blob.digest.split(":", 1)[1], "r:gz") as tar:
        header = tar.extractfile("lib/__pycache__/sitecustomize.cpython-311.pyc").read()[:16]
    assert int.from_bytes(header[8:12], "little") == EPOCH


def test_the_assemble_stage_publishes_the_layout_and_records_its_digests(tmp_path: Path, monkeypatch) -> None:
    """The plan's own image-assemble and finish, with the two chroot steps (venv, runtime) replaced by tiny trees:
    the layout is published under the keyed directory and hostpgo-image.json holds the digests umoci would read."""
    from buildsys.core import manifest as manifest_mod
    from buildsys.core.paths import WorkArea
    from buildsys.core.stages import Execution, StageContext, StageResult
    from buildsys.image import planner as plan_mod

    prefix = _fake_prefix(tmp_path / "install" / "cpython-3.11.2-workload-pgo-lto", time.time())
    (prefix / manifest_mod.FILE_NAME).write_text('{"version": "3.11.2"}\n')
    settings = tmp_path / "default.toml"
    settings.write_text('description = "d"\n')
    inp = image.ImageInputs(build="workload-pgo-lto", build_id=prefix.name, prefix=prefix,
                            build_manifest={"version": "3.11.2"}, settings_name="default", settings={},
                            settings_files=(settings,), packages=(), requirements=(),
                            sources=(image.AptSource("http://d/debian", "bookworm", ("main",)),),
                            work=WorkArea(tmp_path / "w"), tag="hostpgo/workload-pgo-lto:default",
                            verify_workloads=("decode-b1",))
    p = image.plan(inp)
    base = Path(p.summary["base"])
    base.parent.mkdir(parents=True)
    _fake_base(base)
    real = plan_mod.assemble_layout

    def without_chroot(rootfs, layout, steps, **kw):
        def tree(name):
            return lambda r: (r / "opt/hostpgo" / name).mkdir()
        return real(rootfs, layout, [*steps[:2], image.LayerStep("venv", "v", tree("venv")),
                                     image.LayerStep("runtime", "r", tree("host"))], **kw)
    monkeypatch.setattr(plan_mod, "assemble_layout", without_chroot)
    assemble = next(s for s in p.stages if s.name == "image-assemble")
    ctx = StageContext(runner=Runner(tmp_path / "log"), info={}, results={})
    assemble.actions[0].fn(ctx)
    layout = Path(p.summary["layout"])
    digest, manifest, config = oci.read_image(layout, "default")
    assert ctx.info["oci"]["manifest_digest"] == digest
    assert [x["digest"] for x in ctx.info["oci"]["layers"]] == [m["digest"] for m in manifest["layers"]]
    assert config["config"]["Labels"]["org.opencontainers.image.created"] == "1980-01-01T00:00:00Z"
    assert not any(layout.parent.parent.glob(".*.tmp"))  # the scratch directory was published by rename
    image.check_digests(layout, "default", ctx.info["oci"])
    results = {"image-assemble": StageResult("image-assemble", assemble.key, False, 1.0, ctx.info),
               "image-verify": StageResult("image-verify", "k", False, 1.0, {"workloads": []})}
    p.finish(Execution(p, results))
    rec = json.loads((layout.parent / image.RECORD_NAME).read_text())
    assert rec["oci"]["manifest_digest"] == digest and len(rec["oci"]["layers"]) == 4
