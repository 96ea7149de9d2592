"""The one way hostpgo runs an external tool: found on PATH, logged (shell-quoted command, environment
delta, output), time-limited, and checked, raising CommandError with the log tail."""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .errors import CommandError

TAIL_LINES = 40
TAIL_CHARS = 4000
DEFAULT_TIMEOUT = 3600.0


def which(name: str, path: str | None = None) -> str | None:
    """Absolute path of an executable (a bare name is looked up on PATH), or None."""
    if os.sep in name:
        return name if os.access(name, os.X_OK) and not os.path.isdir(name) else None
    return shutil.which(name, path=path)


def require(name: str, why: str) -> str:
    """Absolute path of an executable; CommandError saying what it was needed for when it is missing."""
    found = which(name)
    if found is None:
        raise CommandError(f"`{name}` was not found on PATH; it is needed {why}", argv=[name])
    return found


def format_command(argv: Sequence[str | os.PathLike[str]], env_delta: Mapping[str, str] | None = None,
                   cwd: str | os.PathLike[str] | None = None) -> str:
    """Shell-quoted rendering of a command with its environment delta, as logs and plans show it."""
    parts: list[str] = []
    if cwd is not None:
        parts.append(f"cd {shlex.quote(os.fspath(cwd))} &&")
    if env_delta:
        parts.append("env")
        parts.extend(f"{k}={shlex.quote(v)}" for k, v in sorted(env_delta.items()))
    parts.extend(shlex.quote(os.fspath(a)) for a in argv)
    return " ".join(parts)


def _default_signals() -> None:
    """In the child: default SIGINT/SIGQUIT handling. A background parent (`cmd &`, nohup, CI) ignores
    them, children inherit that, and CPython's tests that raise SIGINT (test_generators'
    SignalAndYieldFromTest) then fail."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGQUIT, signal.SIG_DFL)


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


@dataclass
class Runner:
    """Runs commands, appending each command line, its output and its exit to `log_path` (no log when None).

    `on_line` sees each output line of a streamed `run` (progress display); `base_env` is the environment
    the deltas apply to.
    """

    log_path: Path | None = None
    on_line: Callable[[str], None] | None = None
    base_env: Mapping[str, str] = field(default_factory=lambda: dict(os.environ))

    # ------------------------------------------------------------------ shared pieces
    def _resolve(self, argv: list[str], env_delta: Mapping[str, str], cwd) -> str:
        exe = argv[0]
        resolved = which(exe, path=env_delta.get("PATH", self.base_env.get("PATH")))
        if resolved is None:
            self.note(f"RUN: {format_command(argv, env_delta, cwd)}\nERROR: executable not found: {exe}")
            raise CommandError(f"executable not found: {exe}", argv=argv, log_path=self.log_path)
        return resolved

    def note(self, text: str) -> None:
        """Append text to the log (for a step that runs no command)."""
        if self.log_path is None:
            return
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("a", encoding="utf-8", errors="replace") as log:
            log.write(text if text.endswith("\n") else text + "\n")

    def _check(self, argv: list[str], rc: int, timed_out: bool, timeout: float, ok_codes: Sequence[int],
               tail: str) -> None:
        if timed_out:
            raise CommandError(f"command timed out after {timeout:.0f}s: {format_command(argv)}",
                               argv=argv, returncode=rc, log_path=self.log_path, log_tail=tail)
        if rc not in ok_codes:
            raise CommandError(f"command failed with exit code {rc}: {format_command(argv)}",
                               argv=argv, returncode=rc, log_path=self.log_path, log_tail=tail)

    # ------------------------------------------------------------------ streamed
    def run(self, argv: Sequence[str | os.PathLike[str]], *, env: Mapping[str, str] | None = None,
            cwd: str | os.PathLike[str] | None = None, timeout: float = DEFAULT_TIMEOUT,
            ok_codes: Sequence[int] = (0,), nice: bool = False, collect: list[str] | None = None) -> int:
        """Run `argv` with stdout and stderr merged and streamed to the log; return its exit code.

        Raises CommandError on a code not in `ok_codes`, a timeout (the whole process group is killed)
        or a missing executable. `collect`, if given, receives every output line.
        """
        argv = [os.fspath(a) for a in argv]
        env_delta = dict(env or {})
        real_argv = [self._resolve(argv, env_delta, cwd), *argv[1:]]
        if nice and shutil.which("nice"):
            real_argv = ["nice", "-n", "10", *real_argv]
        full_env = {**self.base_env, **env_delta}
        tail: deque[str] = deque(maxlen=TAIL_LINES)
        self.note(f"RUN: {format_command(argv, env_delta, cwd)}")
        start = time.monotonic()
        log = self.log_path.open("a", encoding="utf-8", errors="replace") if self.log_path else None
        try:
            proc = subprocess.Popen(real_argv, cwd=cwd, env=full_env, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True, preexec_fn=_default_signals)
            timed_out = threading.Event()

            def expire() -> None:
                timed_out.set()
                _kill_group(proc)

            timer = threading.Timer(timeout, expire)
            timer.start()
            try:
                assert proc.stdout is not None
                for raw in proc.stdout:
                    line = raw.decode("utf-8", errors="replace").rstrip("\n")
                    if log is not None:
                        log.write(line + "\n")
                    tail.append(line)
                    if collect is not None:
                        collect.append(line)
                    if self.on_line is not None:
                        self.on_line(line)
                rc = proc.wait()
            except BaseException:
                _kill_group(proc)
                proc.wait()
                raise
            finally:
                timer.cancel()
            if log is not None:
                log.write(f"EXIT: {rc} after {time.monotonic() - start:.1f}s\n")
        finally:
            if log is not None:
                log.close()
        self._check(argv, rc, timed_out.is_set(), timeout, ok_codes, "\n".join(tail))
        return rc

    # ------------------------------------------------------------------ captured
    def capture(self, argv: Sequence[str | os.PathLike[str]], *, env: Mapping[str, str] | None = None,
                cwd: str | os.PathLike[str] | None = None, timeout: float = DEFAULT_TIMEOUT,
                ok_codes: Sequence[int] = (0,), check: bool = True,
                stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        """Run `argv` capturing stdout and stderr as text (both logged after the command line).

        With `check`, a code not in `ok_codes` raises CommandError; a timeout or a missing executable
        always does.
        """
        argv = [os.fspath(a) for a in argv]
        env_delta = dict(env or {})
        real_argv = [self._resolve(argv, env_delta, cwd), *argv[1:]]
        self.note(f"RUN: {format_command(argv, env_delta, cwd)}")
        start = time.monotonic()
        try:
            done = subprocess.run(real_argv, cwd=cwd, env={**self.base_env, **env_delta}, input=stdin,
                                  capture_output=True, text=True, errors="replace", timeout=timeout,
                                  stdin=None if stdin is not None else subprocess.DEVNULL,
                                  start_new_session=True)
        except subprocess.TimeoutExpired as exc:
            out = exc.stdout if isinstance(exc.stdout, str) else ""
            self.note(f"{out}TIMEOUT after {timeout:.0f}s")
            self._check(argv, -1, True, timeout, ok_codes, (out or "")[-TAIL_CHARS:])
            raise AssertionError("unreachable") from exc
        except OSError as exc:  # not executable, a directory
            self.note(f"ERROR: {exc}")
            raise CommandError(f"cannot execute {argv[0]!r}: {exc.strerror}", argv=argv,
                               log_path=self.log_path) from exc
        out = done.stdout + (done.stderr or "")
        self.note(f"{out}EXIT: {done.returncode} after {time.monotonic() - start:.1f}s")
        done.args = argv
        if check:
            self._check(argv, done.returncode, False, timeout, ok_codes, out[-TAIL_CHARS:])
        return done


def capture(
    argv: Sequence[str | os.PathLike[str]], *, log: Path | None = None, **kw
) -> subprocess.CompletedProcess[str]:
    """`Runner(log).capture(argv, ...)`: a short query or a captured tool run, logged where a log is given."""
    return Runner(log).capture(argv, **kw)
