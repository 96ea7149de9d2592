"""The one error family: every package raises a subclass of HostpgoError; only a CLI maps it to an exit code."""

from __future__ import annotations

from pathlib import Path


class HostpgoError(Exception):
    """Base of every error hostpgo raises on purpose (bad input, a failed tool, a bad download, ...)."""

    exit_code = 1
    """What a command-line edge exits with when it has no more specific rule for this error."""


class InputError(HostpgoError):
    """Bad input from the user: a flag, a file, a key or a value that cannot be used as given."""

    exit_code = 2


class SettingsError(InputError):
    """A layered TOML file (build profile, host settings, search space) or an override of it is bad."""


class CommandError(HostpgoError):
    """An external command was missing, failed or timed out; carries the command and the tail of its log."""

    exit_code = 4

    def __init__(self, message: str, *, argv: list[str] | None = None, returncode: int | None = None,
                 log_path: Path | None = None, log_tail: str = "") -> None:
        self.argv = list(argv or [])
        self.returncode = returncode
        self.log_path = log_path
        self.log_tail = log_tail
        where = f"\n  log: {log_path}" if log_path else ""
        tail = f"\n  last lines of the output:\n{_indent(log_tail)}" if log_tail else ""
        super().__init__(f"{message}{where}{tail}")


def _indent(text: str) -> str:
    return "\n".join("    " + line for line in text.splitlines())
