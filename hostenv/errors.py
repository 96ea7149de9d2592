"""The host-settings errors: members of the one family in hostpgo.errors (a CLI maps them to exit codes)."""

from __future__ import annotations

from hostpgo.errors import HostpgoError, SettingsError


class HostSettingsError(SettingsError):
    """A host settings file, override or value cannot be used, or a setting could not be applied (exit 2)."""


class AllocatorNotFound(HostSettingsError):
    """The chosen allocator's shared library is not installed here; the message names the package."""


class PrecompileError(HostpgoError):
    """Precompiling could not be done (a path is missing, a pyc cannot be written); exit 1."""
