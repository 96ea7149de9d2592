"""Error types raised by perf/ library code; only the command line turns them into exit codes."""


class PerfError(Exception):
    """Base class of every error the measurement code raises on purpose."""

    exit_code = 1


class SpecError(PerfError):
    """A user-given specification (interpreter, workload list, run name) cannot be used."""

    exit_code = 2


class IncompatibleResults(PerfError):
    """Two result sets cannot be compared (different benchmark code, parameters or units)."""

    exit_code = 3


class ToolError(PerfError):
    """An external command failed; carries the command and the tail of its output."""

    exit_code = 4

    def __init__(self, message: str, cmd: list[str] | None = None, tail: str = "") -> None:
        self.cmd = cmd or []
        self.tail = tail
        text = message
        if tail:
            text += "\n--- output tail ---\n" + tail
        super().__init__(text)


class ResultsError(PerfError):
    """A results directory or file is missing, malformed or of an unknown schema."""

    exit_code = 5
