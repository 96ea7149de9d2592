"""The build engine's errors: subclasses of the one family in hostpgo.errors; only the CLI maps them to exit codes."""

from __future__ import annotations

from hostpgo.errors import CommandError, HostpgoError, InputError, SettingsError

__all__ = ["CommandError", "HostpgoError", "InputError", "PatchError", "ProfileError", "SourceError",
           "TaskError", "ToolchainError"]


class ProfileError(SettingsError):
    """A profile file is missing, malformed, or has an unknown key or a bad value."""


class ToolchainError(HostpgoError):
    """A compiler or companion tool the profile needs is missing or unusable."""


class SourceError(HostpgoError):
    """A source archive could not be found, fetched or verified."""


class PatchError(HostpgoError):
    """A patch from patches/<target>/<version>/ did not apply."""


class TaskError(InputError):
    """A training task definition is malformed or unknown."""
