"""Integration: `build --dry-run` refuses the inputs the real run would refuse (exit 2, naming the flag and
file), with the real toolchain detection and llvm-profdata."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from buildsys import cli

pytestmark = pytest.mark.integration


def dry_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *extra: str) -> int:
    monkeypatch.setenv("HOSTPGO_HOME", str(tmp_path / "work"))
    return cli.main(["build", "cpython", "--profile", "workload-pgo-lto", "--dry-run", *extra])


def test_missing_source(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    assert dry_run(tmp_path, monkeypatch, "--source", str(tmp_path / "absent.tgz")) == 2
    assert f"--source {tmp_path / 'absent.tgz'}: no such file or directory" in capsys.readouterr().err


def test_source_with_the_wrong_checksum(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                        capsys: pytest.CaptureFixture) -> None:
    wrong = tmp_path / "Python-3.11.2.tgz"
    wrong.write_bytes(b"not the release")
    assert dry_run(tmp_path, monkeypatch, "--source", str(wrong)) == 2
    err = capsys.readouterr().err
    assert f"--source {wrong}: sha256" in err and "not the pinned archive" in err


def test_profile_data_of_random_bytes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                      capsys: pytest.CaptureFixture) -> None:
    junk = tmp_path / "random.profdata"
    junk.write_bytes(os.urandom(4096))  # no sidecar: only llvm-profdata can tell
    assert dry_run(tmp_path, monkeypatch, "--profile-data", str(junk)) == 2
    err = capsys.readouterr().err
    assert f"--profile-data {junk}: not profile data" in err and "llvm-profdata" in err


def test_valid_inputs_print_the_plan(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                     capsys: pytest.CaptureFixture) -> None:
    assert dry_run(tmp_path, monkeypatch) == 0
    assert capsys.readouterr().out.startswith("plan cpython-3.11.2-workload-pgo-lto")
