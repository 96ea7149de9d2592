"""The one way perf/ runs external commands: logged, time-limited, raising ToolError on failure."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from .errors import ToolError

TAIL_CHARS = 4000


def which(name: str) -> str | None:
    """Absolute path of an executable on PATH, or None."""
    return shutil.which(name)


def require(name: str, why: str) -> str:
    """Absolute path of an executable, raising ToolError that says what it was needed for."""
    found = shutil.which(name)
    if found is None:
        raise ToolError(f"`{name}` was not found on PATH; it is needed {why}")
    return found


def note(log: Path | None, text: str) -> None:
    """Append one line to the command log (when there is one), for a step that ran no command."""
    if log is not None:
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("a", encoding="utf-8") as fh:
            fh.write(text + "\n")


def run(
    cmd: Sequence[str | os.PathLike[str]],
    *,
    cwd: str | os.PathLike[str] | None = None,
    env_delta: Mapping[str, str] | None = None,
    timeout: float = 3600,
    log: Path | None = None,
    check: bool = True,
) -> subprocess.CompletedProcess[str]:
    """Run `cmd` capturing stdout and stderr as text.

    The shell-quoted command and the environment delta are appended to `log` (with the output)
    when a log file is given. A non-zero exit (when `check`), a missing executable or a timeout
    raise ToolError with the command and the tail of its output.
    """
    argv = [os.fspath(c) for c in cmd]
    env = None
    if env_delta:
        env = dict(os.environ)
        env.update(env_delta)
    line = "RUN: " + shlex.join(argv)
    if env_delta:
        line += "  [env: " + " ".join(f"{k}={shlex.quote(v)}" for k, v in env_delta.items()) + "]"
    if cwd is not None:
        line += f"  [cwd: {os.fspath(cwd)}]"
    started = time.monotonic()
    try:
        proc = subprocess.run(
            argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
        )
    except OSError as exc:  # not found, not executable, a directory
        raise ToolError(f"cannot execute {argv[0]!r}: {exc.strerror}", argv) from exc
    except subprocess.TimeoutExpired as exc:
        out = (exc.stdout or "") if isinstance(exc.stdout, str) else ""
        raise ToolError(f"timed out after {timeout:.0f}s: {shlex.join(argv)}", argv, out[-TAIL_CHARS:]) from exc
    elapsed = time.monotonic() - started
    if log is not None:
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("a", encoding="utf-8") as fh:
            fh.write(f"{line}  [{elapsed:.1f}s, rc={proc.returncode}]\n")
            if proc.stdout:
                fh.write(proc.stdout if proc.stdout.endswith("\n") else proc.stdout + "\n")
            if proc.stderr:
                fh.write(proc.stderr if proc.stderr.endswith("\n") else proc.stderr + "\n")
    if check and proc.returncode != 0:
        tail = (proc.stdout + proc.stderr)[-TAIL_CHARS:]
        raise ToolError(f"exit status {proc.returncode}: {shlex.join(argv)}", argv, tail)
    return proc
