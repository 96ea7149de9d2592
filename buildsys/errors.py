"""The one family of errors the build engine raises; only the CLI turns them into exit codes."""

from __future__ import annotations

from pathlib import Path


class HostpgoError(Exception):
    """Base of every error the engine raises on purpose (bad input, failed tool, bad download)."""


class ProfileError(HostpgoError):
    """A profile file is missing, malformed, or has an unknown key or a bad value."""


class ToolchainError(HostpgoError):
    """A compiler or companion tool the profile needs is missing or unusable."""


class SourceError(HostpgoError):
    """A source archive could not be found, fetched or verified."""


class PatchError(HostpgoError):
    """A patch from patches/<target>/<version>/ did not apply."""


class TaskError(HostpgoError):
    """A training task definition is malformed or unknown."""


class CommandError(HostpgoError):
    """An external command failed or timed out; carries the command and the tail of its log."""

    def __init__(self, message: str, *, argv: list[str], returncode: int | None,
                 log_path: Path | None, log_tail: str) -> None:
        self.argv = list(argv)
        self.returncode = returncode
        self.log_path = log_path
        self.log_tail = log_tail
        where = f"\n  log: {log_path}" if log_path else ""
        tail = f"\n  last lines of the log:\n{_indent(log_tail)}" if log_tail else ""
        super().__init__(f"{message}{where}{tail}")


def _indent(text: str) -> str:
    return "\n".join("    " + line for line in text.splitlines())
