"""Error types raised by the bundled inference runtime (the CLI turns them into exit codes)."""

from hostpgo.errors import HostpgoError


class RuntimeErrorBase(HostpgoError):
    """Base of every error the runtime raises on purpose."""


class ConfigError(RuntimeErrorBase):
    """A config.json is missing a key, has a bad value, or two keys disagree."""


class CheckpointError(RuntimeErrorBase):
    """A checkpoint's tensors do not match its config (missing, unexpected, mis-shaped, bad dtype)."""


class EngineError(RuntimeErrorBase):
    """A request cannot be served (too long for the cache, bad sampling parameters, ...)."""


class WorkloadError(RuntimeErrorBase):
    """An unknown workload name or bad workload arguments."""
