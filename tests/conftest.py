"""Fixtures every test directory shares."""

from __future__ import annotations

import subprocess
from collections.abc import Callable

import pytest

import hostpgo.runner


@pytest.fixture
def forbid_processes(monkeypatch: pytest.MonkeyPatch) -> Callable[[], None]:
    """A switch: once called, any process the test starts fails it (planning must run nothing). Call it after
    the set-up that may probe (prepare), right before the code that must be pure (plan)."""
    def refuse(*a, **kw):
        raise AssertionError(f"planning started a process: {a[:1]}")

    def arm() -> None:
        monkeypatch.setattr(subprocess, "Popen", refuse)
        monkeypatch.setattr(subprocess, "run", refuse)
        monkeypatch.setattr(hostpgo.runner.Runner, "run", refuse)
        monkeypatch.setattr(hostpgo.runner.Runner, "capture", refuse)
    return arm
