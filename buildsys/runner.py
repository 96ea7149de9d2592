"""The one way hostpgo runs an external tool: logged, streamed to the stage log, timed out, checked."""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Sequence

from .errors import CommandError

TAIL_LINES = 40


def _default_signals() -> None:
    """In the child: default SIGINT/SIGQUIT handling. A background parent (`cmd &`, nohup, CI) ignores
    them, children inherit that, and CPython's tests that raise SIGINT (test_generators'
    SignalAndYieldFromTest) then fail."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGQUIT, signal.SIG_DFL)


def format_command(argv: Sequence[str], env_delta: Mapping[str, str] | None = None,
                   cwd: Path | None = None) -> str:
    """Shell-quoted rendering of a command with its environment delta, as it appears in logs/plans."""
    parts: list[str] = []
    if cwd is not None:
        parts.append(f"cd {shlex.quote(str(cwd))} &&")
    if env_delta:
        parts.append("env")
        parts.extend(f"{k}={shlex.quote(v)}" for k, v in sorted(env_delta.items()))
    parts.extend(shlex.quote(str(a)) for a in argv)
    return " ".join(parts)


@dataclass
class Runner:
    """Runs commands, appending everything to `log_path`; `on_line` sees each output line (progress)."""

    log_path: Path
    on_line: Callable[[str], None] | None = None
    base_env: Mapping[str, str] = field(default_factory=lambda: dict(os.environ))

    def run(self, argv: Sequence[str], *, env: Mapping[str, str] | None = None,
            cwd: Path | None = None, timeout: float | None = None,
            ok_codes: Sequence[int] = (0,), nice: bool = False,
            collect: list[str] | None = None) -> int:
        """Run `argv`; raise CommandError on a code not in `ok_codes`, a timeout or a missing tool.

        `collect`, if given, receives every output line (for callers that parse the output).
        """
        argv = [str(a) for a in argv]
        env_delta = dict(env or {})
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        exe = argv[0]
        resolved = exe if os.sep in exe else shutil.which(exe, path=env_delta.get("PATH", self.base_env.get("PATH")))
        if resolved is None or not os.access(resolved, os.X_OK):
            with self.log_path.open("a", encoding="utf-8") as log:
                log.write(f"RUN: {format_command(argv, env_delta, cwd)}\nERROR: executable not found: {exe}\n")
            raise CommandError(f"executable not found: {exe}", argv=argv, returncode=None,
                               log_path=self.log_path, log_tail="")
        full_env = dict(self.base_env)
        full_env.update(env_delta)
        real_argv = [resolved, *argv[1:]]
        if nice and shutil.which("nice"):
            real_argv = ["nice", "-n", "10", *real_argv]
        tail: deque[str] = deque(maxlen=TAIL_LINES)
        start = time.monotonic()
        with self.log_path.open("a", encoding="utf-8", errors="replace") as log:
            log.write(f"RUN: {format_command(argv, env_delta, cwd)}\n")
            log.flush()
            proc = subprocess.Popen(real_argv, cwd=cwd, env=full_env, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True, preexec_fn=_default_signals)
            timed_out = threading.Event()
            timer = None
            if timeout is not None:
                timer = threading.Timer(timeout, self._kill, args=(proc, timed_out))
                timer.start()
            try:
                assert proc.stdout is not None
                for raw in proc.stdout:
                    line = raw.decode("utf-8", errors="replace")
                    log.write(line)
                    tail.append(line.rstrip("\n"))
                    if collect is not None:
                        collect.append(line.rstrip("\n"))
                    if self.on_line is not None:
                        self.on_line(line.rstrip("\n"))
                rc = proc.wait()
            except BaseException:
                self._kill(proc, timed_out)
                proc.wait()
                raise
            finally:
                if timer is not None:
                    timer.cancel()
            elapsed = time.monotonic() - start
            log.write(f"EXIT: {rc} after {elapsed:.1f}s\n")
        if timed_out.is_set():
            raise CommandError(f"command timed out after {timeout:.0f}s: {format_command(argv)}",
                               argv=argv, returncode=rc, log_path=self.log_path,
                               log_tail="\n".join(tail))
        if rc not in ok_codes:
            raise CommandError(f"command failed with exit code {rc}: {format_command(argv)}",
                               argv=argv, returncode=rc, log_path=self.log_path,
                               log_tail="\n".join(tail))
        return rc

    def capture(self, argv: Sequence[str], *, env: Mapping[str, str] | None = None,
                cwd: Path | None = None, timeout: float = 60) -> str:
        """Run a short query command and return its stdout (also logged)."""
        argv = [str(a) for a in argv]
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        full_env = dict(self.base_env)
        full_env.update(env or {})
        with self.log_path.open("a", encoding="utf-8") as log:
            log.write(f"RUN: {format_command(argv, env, cwd)}\n")
        try:
            done = subprocess.run(argv, cwd=cwd, env=full_env, capture_output=True, text=True,
                                  timeout=timeout, errors="replace")
        except FileNotFoundError:
            raise CommandError(f"executable not found: {argv[0]}", argv=argv, returncode=None,
                               log_path=self.log_path, log_tail="") from None
        except subprocess.TimeoutExpired:
            raise CommandError(f"command timed out after {timeout:.0f}s: {format_command(argv)}",
                               argv=argv, returncode=None, log_path=self.log_path, log_tail="") from None
        with self.log_path.open("a", encoding="utf-8") as log:
            log.write(done.stdout + done.stderr + f"EXIT: {done.returncode}\n")
        if done.returncode != 0:
            raise CommandError(f"command failed with exit code {done.returncode}: {format_command(argv)}",
                               argv=argv, returncode=done.returncode, log_path=self.log_path,
                               log_tail=(done.stdout + done.stderr)[-3000:])
        return done.stdout

    @staticmethod
    def _kill(proc: subprocess.Popen, flag: threading.Event) -> None:
        flag.set()
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
