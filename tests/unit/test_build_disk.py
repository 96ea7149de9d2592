"""The pipeline's disk check: measured part sizes against what the work area holds and what is free."""

from __future__ import annotations

import os
from types import SimpleNamespace

import pytest

from buildsys import engine
from buildsys.core import disk
from hostpgo.errors import HostpgoError


def _file(path, size):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(os.urandom(size))  # random: no file system can store it sparse or compressed
    return path


def test_tree_size_counts_allocated_blocks_once_and_does_not_follow_links(tmp_path):
    a = _file(tmp_path / "t" / "a", 1 << 20)
    os.link(a, tmp_path / "t" / "hard")
    (tmp_path / "t" / "soft").symlink_to(_file(tmp_path / "outside" / "big", 4 << 20))
    size = disk.tree_size(tmp_path / "t")
    assert 1 << 20 <= size < 2 << 20  # one MiB file (plus its directory), the hard link not counted twice
    assert disk.tree_size(tmp_path / "missing") == 0


def test_what_the_work_area_holds_counts_against_a_parts_measured_size(tmp_path):
    part = disk.Part("the builds", ("build", "install"), 10 << 20)
    _file(tmp_path / "build" / "x", 3 << 20)
    _file(tmp_path / "install" / "y", 2 << 20)
    ((p, n),) = disk.needed(tmp_path, [part])
    assert p is part and 4 << 20 <= n <= 5 << 20
    _file(tmp_path / "install" / "z", 8 << 20)  # more than measured: nothing more is asked for
    assert disk.needed(tmp_path, [part]) == [(part, 0)]


def test_a_shortfall_is_refused_naming_the_parts_the_free_space_and_the_fix(tmp_path):
    parts = (disk.Part("the builds", ("build",), 8 * disk.GB), disk.Part("the image", ("images",), 2 * disk.GB))
    disk.check(tmp_path, parts, free=10 * disk.GB)
    with pytest.raises(HostpgoError) as caught:
        disk.check(tmp_path, parts, free=3 * disk.GB)
    msg = str(caught.value)
    assert f"it may still write 10.0 GB under {tmp_path} (the builds 8.0 GB, the image 2.0 GB;" in msg
    assert "the file system has 3.0 GB free" in msg and "HOSTPGO_HOME=DIR" in msg
    assert disk.describe(tmp_path, parts, free=3 * disk.GB).endswith(
        "3.0 GB free: NOT enough: the run would stop before its first build")


def test_the_pipeline_checks_the_disk_before_any_build(tmp_path, monkeypatch):
    monkeypatch.setenv("HOSTPGO_HOME", str(tmp_path / "h"))
    monkeypatch.setattr(engine, "ensure_toolchain", lambda refs, console: None)
    monkeypatch.setattr(engine.targets, "availability", lambda target, tcs: SimpleNamespace(ok=True, why=""))
    monkeypatch.setattr(disk, "free_bytes", lambda path: 0)

    def no_build(*a, **kw):
        raise AssertionError("a build was prepared before the disk check")

    monkeypatch.setattr(engine, "prepare", no_build)
    with pytest.raises(HostpgoError, match="not enough free disk for this run"):
        engine.pipeline(image=False, live=False)
    # --no-measure --no-image asks only for the builds.
    assert engine.pipeline_disk_parts(measure=False, image=False) == (disk.BUILDS,)
    assert engine.pipeline_disk_parts(measure=True, image=True) == (disk.BUILDS, disk.MEASUREMENT, disk.IMAGE)
    # The default pipeline builds the stack and rewrites MindSpore's wheel: their parts are asked for too.
    assert engine.pipeline_disk_parts(measure=True, image=True, stack=True, bolt_wheels=True) == (
        disk.BUILDS, disk.STACK, disk.BOLT_WHEELS, disk.MEASUREMENT, disk.IMAGE)


def test_the_pipeline_checks_the_disk_again_before_the_image(tmp_path, monkeypatch):
    # The disk is shared: on 2026-12-01 the first check passed with 50 GB free, other work took 10 GB, and the
    # image's pip install hit ENOSPC after an hour of measurement.
    monkeypatch.setenv("HOSTPGO_HOME", str(tmp_path / "h"))
    monkeypatch.setattr(engine, "ensure_toolchain", lambda refs, console: None)
    monkeypatch.setattr(engine.targets, "availability", lambda target, tcs: SimpleNamespace(ok=True, why=""))
    monkeypatch.setattr(engine.imagemod, "check_host", lambda: None)
    frees = iter([10**15])
    monkeypatch.setattr(disk, "free_bytes", lambda path: next(frees, 0))  # room at the start, none later
    monkeypatch.setattr(engine, "prepare", lambda ref, **kw: ref)
    monkeypatch.setattr(engine, "build", lambda inp, **kw: SimpleNamespace(plan=SimpleNamespace(summary={})))

    def no_image(*a, **kw):
        raise AssertionError("the image was prepared without a second disk check")

    monkeypatch.setattr(engine.imagemod, "prepare", no_image)
    with pytest.raises(HostpgoError, match="not enough free disk for this run"):
        engine.pipeline(measure=False, image=True, stack=False, bolt_wheels=(), live=False)
